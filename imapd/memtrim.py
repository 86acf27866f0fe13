"""Give freed heap memory back to the kernel after bursts of work.

Logins (Argon2), searches that decrypt a mailbox and large FETCHes run in the
worker threads; what they free stays in those threads' malloc arenas, in the
middle of heaps that glibc only trims at the top. Once work has run and the
thread pool has then been quiet for ``quiet`` seconds (or, under steady load,
at most every ``interval`` seconds), ``malloc_trim(0)`` (in a worker: it walks
every arena) returns the free pages: after a busy spell, 1,000 idle sessions
then cost what they hold, not what the busiest minute left behind. A few
milliseconds of CPU each time; nothing where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from typing import Any

log = logging.getLogger("imapd")


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class Trimmer:
    def __init__(self, loop: asyncio.AbstractEventLoop, executor: Any, interval: float = 30.0,
                 quiet: float = 1.0) -> None:
        self.loop = loop
        self.executor = executor
        self.interval = interval
        self.quiet = quiet
        self.active = False  # work ran since the last look (set by Shared.run)
        self._trim = _malloc_trim()
        self._task: asyncio.Task | None = None
        if self._trim is not None:
            self._task = loop.create_task(self._run(), name="imapd-malloc-trim")

    async def _run(self) -> None:
        last = self.loop.time()
        pending = False  # work ran since the last trim
        while True:
            await asyncio.sleep(self.quiet)
            if self.active:  # still busy: wait for a quiet moment, unless that has taken too long
                self.active = False
                pending = True
                if self.loop.time() - last < self.interval:
                    continue
            if not pending:
                continue
            pending = False
            last = self.loop.time()
            try:
                await self.loop.run_in_executor(self.executor, self._trim, 0)
            except Exception as exc:  # noqa: BLE001 - never worth stopping the service for
                log.warning("malloc_trim: %s", exc)
                return

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
