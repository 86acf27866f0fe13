"""The daily maintenance job: what the store keeps, pruned once a day.

``run(store, configured_retention)`` (blocking) deletes events older than the
retention (the panel's policy ``log_retention_days`` when set, else
``log.retention``: ``storage.retention.retention_seconds``) and vacation
replies older than the longest vacation period (``storage.vacation.prune``,
through ``storage.retention.prune``), logs what it removed and, when it removed
anything, records it in the event log (an admin event ``log.prune`` by
``maintenance``, like ``appliance log prune``).

``Maintenance`` runs it on the event loop's executor a minute after start
and then every day. It is started by the MTA service, which runs under
``appliance up`` and as the ``appliance-mta`` unit, so exactly one process
of an instance runs it; ``<data_dir>/maintenance.lock`` (flock) makes a
second MTA process on the same machine skip its turn. Expired panel sessions
are pruned by the panel itself (panel/service.py), every ten minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storage import retention

log = logging.getLogger("appliance.maintenance")

DAY = 86400.0
FIRST_RUN_AFTER = 60.0


def run(store: Any, configured_retention: float, *, now: float | None = None) -> dict[str, Any]:
    """Prune the event log and the vacation memory now. Blocking. Returns what was removed."""
    seconds = retention.retention_seconds(store, configured_retention)
    done = retention.prune(store, retention=seconds, now=now)
    result = {"events": done["events"], "vacation_replies": done["vacation_replies"], "cutoff": done["cutoff"],
              "retention_days": round(seconds / DAY, 2)}
    log.info("maintenance: removed %d events older than %s (retention %s days) and %d vacation reply records",
             done["events"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(done["cutoff"])),
             result["retention_days"], done["vacation_replies"])
    if done["events"] or done["vacation_replies"]:  # a run that removed nothing leaves no trace in the audit log
        store.events.admin("maintenance", "log.prune", None, detail={
            "retention_days": result["retention_days"], "events": done["events"],
            "vacation_replies": done["vacation_replies"]})
    return result


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def run_locked(store: Any, configured_retention: float, lock_file: Path) -> dict[str, Any] | None:
    """``run`` unless another process holds ``lock_file`` (then None)."""
    with _lock(lock_file) as mine:
        if not mine:
            log.info("maintenance: another process is running it; skipped")
            return None
        return run(store, configured_retention)


class Maintenance:
    """The daily job as an asyncio task; ``stop`` cancels it (a run in progress finishes in its thread)."""

    def __init__(self, store: Any, configured_retention: float, lock_file: Path, *, executor: Any = None,
                 first_after: float = FIRST_RUN_AFTER, every: float = DAY) -> None:
        self.store = store
        self.configured_retention = float(configured_retention)
        self.lock_file = Path(lock_file)
        self.executor = executor
        self.first_after = first_after
        self.every = every
        self.runs = 0
        self.last: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="maintenance")

    async def _loop(self) -> None:
        delay = self.first_after
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(delay)
            delay = self.every
            try:
                done = await loop.run_in_executor(self.executor, functools.partial(
                    run_locked, self.store, self.configured_retention, self.lock_file))
            except Exception:  # noqa: BLE001 - try again tomorrow; the log says why
                log.exception("maintenance failed")
                continue
            if done is not None:
                self.runs += 1
                self.last = done

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
