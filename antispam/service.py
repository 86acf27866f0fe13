"""The antispam service: rspamd and its helpers, the scanner, learning, quarantine upkeep.

``start(ctx)`` (``appliance up``, or ``appliance up --service antispam``):

* returns None when ``antispam.enabled`` is false;
* with ``antispam.managed`` (the default) generates the configuration of
  rspamd, redis and unbound into ``<data_dir>/spam`` and starts and
  supervises them (``daemons.DaemonSet``); it waits for them a little
  (``STARTUP_WAIT``) and goes on while rspamd finishes starting (its first
  start compiles its rules for about a minute; mail meanwhile follows
  ``antispam.on_failure``);
* when rspamd is not installed, the service still starts but reports itself
  unavailable: the scanner accepts mail with ``X-Spam-Status: unchecked``;
* registers the learning hook on the store (moves into and out of Junk);
* purges expired quarantine every hour.

Other services find it as ``ctx.running["antispam"]``; the MTA uses
``antispam.get_scanner(ctx)``, which also works when this service runs in
another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from appliance.i18n import _

from .client import RspamdClient, Scanner
from .daemons import DaemonSet, missing_programs
from .generate import generate
from .layout import Layout
from .learning import Learner
from .quarantine import Quarantine

log = logging.getLogger("antispam")

STARTUP_WAIT = 20.0
PURGE_INTERVAL = 3600.0


class AntispamService:
    name = "antispam"

    def __init__(self, ctx: Any) -> None:
        cfg = ctx.cfg
        a = cfg.antispam
        self.ctx = ctx
        self.cfg = cfg
        self.layout = Layout.from_config(cfg)
        self.endpoints: list[str] = []
        self.daemons: DaemonSet | None = None
        self.problem: str | None = None
        if a.managed:
            missing = missing_programs()
            if missing:
                self.problem = _("not installed: {packages} (apt install {packages})").format(packages=" ".join(missing))
        self.client = RspamdClient(a.url, a.controller_url, password_file=self.layout.password_file, timeout=a.timeout)
        self.quarantine = Quarantine(ctx.store, self.layout.quarantine)
        self.scanner = Scanner(cfg, ctx.store, client=self.client, available=self.problem is None, problem=self.problem,
                               quarantine=self.quarantine, executor=ctx.executor)
        self.learner: Learner | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def available(self) -> bool:
        return self.problem is None

    async def start(self) -> None:
        a = self.cfg.antispam
        loop = asyncio.get_running_loop()
        if self.problem:
            log.warning("antispam unavailable: %s; mail is accepted with X-Spam-Status: unchecked", self.problem)
            return
        if a.managed:
            await loop.run_in_executor(self.ctx.executor, generate, self.cfg, self.layout)
            self.daemons = DaemonSet(self.cfg, self.layout)
            ready = await self.daemons.start(STARTUP_WAIT)
            if not ready:
                log.warning("rspamd is still starting (its first start compiles its rules, about a minute); "
                            "until then mail follows antispam.on_failure = %s", a.on_failure)
        self.endpoints = [f"rspamd {_hostport(a.url)}", f"rspamd-controller {_hostport(a.controller_url)}"]
        self.learner = Learner(self.ctx.store, self.client, loop=loop, executor=self.ctx.executor, max_size=a.max_scan_size)
        self.learner.start()
        self.ctx.store.add_move_hook(self.learner.hook)
        self._tasks.append(loop.create_task(self._purge_loop(), name="antispam-quarantine-purge"))

    async def _purge_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                n = await loop.run_in_executor(self.ctx.executor, self.quarantine.purge)
                if n:
                    log.info("quarantine: %d expired message(s) deleted", n)
            except Exception as exc:  # noqa: BLE001 - try again next time
                log.warning("quarantine purge: %s", exc)
            await asyncio.sleep(PURGE_INTERVAL)

    def state(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "problem": self.problem,
            "daemons": self.daemons.state() if self.daemons else [],
            "scanner": dict(self.scanner.stats),
            "learning": dict(self.learner.stats) if self.learner else {},
        }

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.learner is not None:
            await self.learner.stop(timeout=5.0)
        if self.daemons is not None:
            await self.daemons.stop()
        await self.scanner.close()


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 80}"


async def start(ctx: Any) -> AntispamService | None:
    if not ctx.cfg.antispam.enabled:
        return None
    service = AntispamService(ctx)
    await service.start()
    return service
