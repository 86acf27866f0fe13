"""SMTP worker processes (``smtp.workers``), seen from the MTA service's own process.

One Python process is one core: with ``smtp.workers`` > 1 the service starts
that many ``python -m mta.worker`` processes. Each opens every SMTP listener
with SO_REUSEPORT (the kernel spreads new connections over them), accepts,
checks and delivers inbound and submitted mail; the service's process keeps
the outbound queue worker and the daily maintenance and opens no SMTP
socket itself. Mail a worker queues for remote delivery is announced to the
queue worker through the queue's kick files (``OutboundQueue.kick``).

Supervision, from the service's event loop:

* start: every worker says "ready" (its listeners are open) or why it could
  not start, on a pipe; one failure stops the others and fails the start
  with the worker's reason (a port in use, a bad certificate...).
* a worker that dies is started again (at once, then with a growing pause
  while it keeps dying young); its connections stop counting against the
  per-IP limit (mta.conncount) at once.
* stop: SIGTERM to each (a worker drains its sessions like the single
  process does), SIGKILL to what is left after ``stop_timeout``.
* no orphans: a worker asks the kernel for SIGTERM when the thread that
  started it (this event loop's) dies (PR_SET_PDEATHSIG), and also stops when
  its stdin, a pipe whose other end only this process holds, reaches EOF, so
  a kill -9 of the service ends its workers too.

Workers log to the same stdout/stderr (journal) as the service and never talk
to systemd (NOTIFY_SOCKET and the watchdog stay with the service's process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.config import ConfigError

from .conncount import SharedCounts, create_table

log = logging.getLogger("mta.workers")

#: what systemd gives the service's process and no worker may use
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
MAX_AUTO = 8


def worker_count(configured: int) -> int:
    """``smtp.workers``: 0 ("auto") is one per CPU core, at most ``MAX_AUTO``."""
    if configured:
        return configured
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_AUTO, cpus))


class WorkerStartError(OSError):
    """A worker could not open its listeners; the text is the worker's reason."""


class _Worker:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.lifeline: int | None = None  # our end of the worker's stdin pipe
        self.status: int | None = None  # read end of the worker's status pipe
        self.started = 0.0
        self.failures = 0  # deaths in a row soon after a start
        self.next_start = 0.0


class WorkerPool:
    def __init__(self, config_path: Path, count: int, *, ready_timeout: float = 60.0, stop_timeout: float = 25.0) -> None:
        self.config_path = Path(config_path)
        self.count = count
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.table_fd = create_table(count)
        self.counts = SharedCounts(self.table_fd, count, None)
        self.workers = [_Worker(i) for i in range(count)]
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None and w.proc.poll() is None]

    # ------------------------------------------------------------ start
    def _spawn(self, w: _Worker) -> None:
        """Start the worker of ``w.slot``. On the event loop's thread: PR_SET_PDEATHSIG follows that thread."""
        status_r, status_w = os.pipe()
        life_r, life_w = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        cmd = [sys.executable, "-m", "mta.worker", "--config", str(self.config_path), "--slot", str(w.slot),
               "--slots", str(self.count), "--table-fd", str(self.table_fd), "--status-fd", str(status_w),
               "--parent", str(os.getpid())]
        try:
            w.proc = subprocess.Popen(cmd, stdin=life_r, pass_fds=(self.table_fd, status_w), env=env)
        finally:
            os.close(status_w)
            os.close(life_r)
        w.lifeline, w.status = life_w, status_r
        w.started = time.monotonic()

    def _read_status(self, w: _Worker, timeout: float) -> str | None:
        """Blocking: None once the worker says ready, else why it did not start."""
        fd = w.status
        if fd is None:
            return None
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return f"SMTP worker {w.slot} did not start within {timeout:.0f}s"
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
            w.status = None
        line = data.decode("utf-8", "replace").strip()
        if line == "ready":
            return None
        return line or f"SMTP worker {w.slot} exited at start (code {w.proc.wait() if w.proc else '?'})"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self.workers:
            self._spawn(w)
        results = await asyncio.gather(*(loop.run_in_executor(None, self._read_status, w, self.ready_timeout)
                                         for w in self.workers))
        problems = [r for r in results if r]
        if problems:
            await self.stop()
            kind, _, text = problems[0].partition(" ")
            if kind == "config":
                raise ConfigError(text)
            raise WorkerStartError(text if kind == "error" else problems[0])
        log.info("%d SMTP workers started: pids %s", self.count, " ".join(map(str, self.pids)))
        self._task = loop.create_task(self._supervise(), name="smtp-workers")

    # ------------------------------------------------------------ supervision
    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for w in self.workers:
                if self._stopping:
                    return
                if w.proc is not None and w.proc.poll() is not None:
                    self._died(w, now)
                if w.proc is None and now >= w.next_start:
                    self._restart(w)

    def _died(self, w: _Worker, now: float) -> None:
        assert w.proc is not None
        code = w.proc.returncode
        self.counts.clear(w.slot)
        if w.lifeline is not None:
            os.close(w.lifeline)
            w.lifeline = None
        w.failures = w.failures + 1 if now - w.started < 10 else 0
        pause = 0.0 if w.failures <= 1 else min(30.0, 0.5 * 2 ** (w.failures - 1))
        w.next_start = now + pause
        how = f"signal {-code}" if code < 0 else f"code {code}"
        log.warning("SMTP worker %d (pid %d) exited with %s; starting it again%s", w.slot, w.proc.pid, how,
                    f" in {pause:.0f}s" if pause else "")
        w.proc = None

    def _restart(self, w: _Worker) -> None:
        try:
            self._spawn(w)
        except OSError as exc:
            log.error("cannot start SMTP worker %d: %s", w.slot, exc)
            w.next_start = time.monotonic() + 5
            return
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._restarted(w))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _restarted(self, w: _Worker) -> None:
        problem = await asyncio.get_running_loop().run_in_executor(None, self._read_status, w, self.ready_timeout)
        if problem:
            log.error("SMTP worker %d: %s", w.slot, problem)
        else:
            log.info("SMTP worker %d started again (pid %d)", w.slot, w.proc.pid if w.proc else 0)

    # ------------------------------------------------------------ stop
    def _terminate_and_wait(self) -> None:
        """Blocking: SIGTERM, wait up to ``stop_timeout``, then SIGKILL."""
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("SMTP worker pid %d did not stop in %.0fs; killing it", p.pid, self.stop_timeout)
                p.kill()
                p.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self._terminate_and_wait)
        for t in list(self._pending):
            t.cancel()
        for w in self.workers:
            for fd in (w.lifeline, w.status):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            w.lifeline = w.status = None
        self.counts.close()
        with contextlib.suppress(OSError):
            os.close(self.table_fd)
