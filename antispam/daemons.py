"""Start and supervise redis, unbound and rspamd without systemd.

Each ``Daemon`` runs one foreground program in its own process group (so a
killed rspamd main process cannot leave its workers holding the ports),
writes its output to ``<data_dir>/log/NAME.log``, is ready when its probe
answers, and is restarted with exponential backoff (1 s doubling to 60 s,
back to 1 s after a minute of good health) when it exits or stops answering.
``stop()`` sends SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .generate import rspamd_argv
from .http import HttpError, HttpPool
from .layout import Layout, read_or_create_secret, write_if_changed

log = logging.getLogger("antispam")

Probe = Callable[[], Awaitable[bool]]
REQUIRED_PROGRAMS = {"rspamd": "rspamd", "redis": "redis-server", "unbound": "unbound"}
CLAMD = "clamd"  # Debian's clamav-daemon; only with antispam.virus_scan


def _which(prog: str) -> str | None:
    # /usr/sbin is not on an ordinary user's PATH on Debian, and unbound lives there
    return shutil.which(prog) or shutil.which(prog, path="/usr/sbin:/sbin")


def missing_programs() -> list[str]:
    """The Debian packages whose programs are not installed (rspamd, redis-server, unbound)."""
    return [prog for prog in REQUIRED_PROGRAMS.values() if not _which(prog)]


def program(name: str) -> str:
    prog = REQUIRED_PROGRAMS.get(name, name)
    return _which(prog) or prog


def virus_scanner_missing(cfg: Any) -> bool:
    """Virus scanning is on but clamd (Debian's clamav-daemon) is not installed."""
    return bool(cfg.antispam.virus_scan) and not _which(CLAMD)


def _child_env() -> dict[str, str]:
    """Our environment without systemd's per-service variables: the daemons are not the unit's main process."""
    drop = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
    return {k: v for k, v in os.environ.items() if k not in drop}


class Daemon:
    def __init__(self, name: str, argv: list[str], log_path: Path, probe: Probe, *, pidfile: Path | None = None,
                 start_timeout: float = 120.0, health_interval: float = 5.0, max_probe_failures: int = 3) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.probe = probe
        self.pidfile = pidfile
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.max_probe_failures = max_probe_failures
        self.proc: asyncio.subprocess.Process | None = None
        self.on_spawn: Callable[[], None] | None = None  # the DaemonSet records the new pid
        self.ready = asyncio.Event()
        self.restarts = 0
        self.last_error: str | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()
        self._paused.set()  # set = may run

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"antispam-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)  # a stale pid file from a crash stops rspamd from starting
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with os.fdopen(fd, "ab", buffering=0) as out:
                out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: {' '.join(self.argv)}\n".encode())
                return await asyncio.create_subprocess_exec(
                    *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                    env=_child_env())
        except OSError as exc:
            raise RuntimeError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from None

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            await self._paused.wait()
            if self._stopping:
                break
            started = time.monotonic()
            try:
                self.proc = await self._spawn()
            except RuntimeError as exc:
                self.last_error = str(exc)
                log.error("%s", exc)
            else:
                if self.on_spawn is not None:
                    self.on_spawn()
                reason = await self._watch(self.proc)
                self.ready.clear()
                self._kill_group(self.proc, signal.SIGKILL)
                if self._stopping or not self._paused.is_set():
                    continue
                self.last_error = reason
                self.restarts += 1
                log.warning("%s %s; restarting in %.0fs", self.name, reason, backoff)
            if time.monotonic() - started > 60:
                backoff = 1.0
            try:
                await asyncio.sleep(backoff)
            except asyncio.CancelledError:
                break
            backoff = min(backoff * 2, 60.0)

    async def _watch(self, proc: asyncio.subprocess.Process) -> str:
        """Wait for readiness, then watch health; return why the process is to be restarted."""
        deadline = time.monotonic() + self.start_timeout
        exited = asyncio.ensure_future(proc.wait())
        try:
            while not self.ready.is_set():
                if exited.done():
                    return f"exited with status {proc.returncode} while starting (see {self.log_path})"
                if await self._probe():
                    self.ready.set()
                    log.info("%s ready (pid %s)", self.name, proc.pid)
                    break
                if time.monotonic() > deadline:
                    return f"not answering {self.start_timeout:.0f}s after start"
                await asyncio.wait([exited], timeout=0.2)
            failures = 0
            while True:
                done, _pending = await asyncio.wait([exited], timeout=self.health_interval)
                if done or self._stopping or not self._paused.is_set():
                    return f"exited with status {proc.returncode}" if done else "stopped"
                failures = 0 if await self._probe() else failures + 1
                if failures >= self.max_probe_failures:
                    return f"stopped answering ({failures} health checks failed)"
        finally:
            if not exited.done():
                exited.cancel()

    async def _probe(self) -> bool:
        try:
            return await asyncio.wait_for(self.probe(), 2.0)
        except Exception:  # noqa: BLE001 - any failure of a probe means "not ready"
            return False

    def _kill_group(self, proc: asyncio.subprocess.Process, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def _terminate(self, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            # the main process only: rspamd's main stops its workers and saves its caches itself
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.warning("%s did not stop in %.0fs; killing it", self.name, grace)
        self._kill_group(proc, signal.SIGKILL)  # stragglers of the group (rspamd workers)
        with contextlib.suppress(ProcessLookupError):
            if proc.returncode is None:
                proc.kill()
        await proc.wait()

    async def pause(self, grace: float = 10.0) -> None:
        """Stop the process and do not restart it until ``resume()`` (tests, maintenance)."""
        self._paused.clear()
        await self._terminate(grace)
        self.ready.clear()

    def resume(self) -> None:
        self._paused.set()

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        self._paused.set()
        await self._terminate(grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.ready.clear()

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "ready": self.ready.is_set(), "restarts": self.restarts,
                "last_error": self.last_error}


# ---------------------------------------------------------------- probes


async def _redis_probe(port: int, password: str) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"AUTH {password}\r\nPING\r\n".encode())
        await writer.drain()
        auth = await reader.readline()
        pong = await reader.readline()
        return auth.startswith(b"+OK") and pong.startswith(b"+PONG")
    finally:
        writer.close()


async def _clamd_probe(path: Path) -> bool:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b"zPING\0")
        await writer.drain()
        return (await reader.read(16)).rstrip(b"\0") == b"PONG"
    finally:
        writer.close()


async def _dns_probe(port: int) -> bool:
    import dns.asyncquery
    import dns.message

    query = dns.message.make_query("localhost.", "A")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1.0)
    return answer.rcode() == 0


def _http_probe(url: str) -> Probe:
    pool = HttpPool(url, max_idle=0)

    async def probe() -> bool:
        try:
            r = await pool.request("GET", "/ping", timeout=1.5)
        except HttpError:
            return False
        return r.status == 200 and r.body.strip() == b"pong"

    return probe


class DaemonSet:
    """redis, unbound and rspamd for one instance, in that order."""

    def __init__(self, cfg: Any, layout: Layout) -> None:
        a = cfg.antispam
        self.ports = {"antispam.url": urlsplit(a.url).port or 80, "antispam.controller_url": urlsplit(a.controller_url).port or 80,
                      "antispam.redis_port": a.redis_port, "antispam.dns_port": a.dns_port}
        redis_password = read_or_create_secret(layout.redis_password_file)
        self.daemons: dict[str, Daemon] = {
            "redis": Daemon("redis", [program("redis"), str(layout.redis_conf)], layout.log / "antispam-redis.log",
                            lambda: _redis_probe(a.redis_port, redis_password), start_timeout=30),
            "unbound": Daemon("unbound", [program("unbound"), "-d", "-c", str(layout.unbound_conf)],
                              layout.log / "antispam-unbound.log", lambda: _dns_probe(a.dns_port), start_timeout=30),
            "rspamd": Daemon("rspamd", rspamd_argv(layout, as_root=os.geteuid() == 0), layout.log / "antispam-rspamd.log",
                             _http_probe(a.url), pidfile=layout.rspamd_run / "rspamd.pid", start_timeout=300,
                             health_interval=10.0),
        }

        if a.virus_scan:
            if virus_scanner_missing(cfg):
                log.warning("antispam.virus_scan is on but clamd is not installed (apt install clamav-daemon): "
                            "mail is not scanned for viruses")
            else:
                # loading the full signatures takes a minute or more; rspamd does not wait for it
                self.daemons["clamd"] = Daemon("clamd", [program(CLAMD), "-c", str(layout.clamd_conf)],
                                               layout.log / "antispam-clamd.log",
                                               lambda: _clamd_probe(layout.clamd_socket), start_timeout=600,
                                               health_interval=30.0)

        self.layout = layout
        for d in self.daemons.values():
            d.on_spawn = self._record

    def _record(self) -> None:
        """Write who our daemons are, so status and doctor can tell them from a foreign rspamd on our ports."""
        import json

        import psutil

        pids: dict[str, list[float]] = {}
        for name, d in self.daemons.items():
            if d.pid is not None:
                try:
                    pids[name] = [d.pid, psutil.Process(d.pid).create_time()]
                except psutil.Error:
                    pass
        try:
            write_if_changed(self.layout.daemons_file, json.dumps(pids, sort_keys=True) + "\n", 0o644)
        except OSError as exc:
            log.warning("cannot record the antispam daemons' pids: %s", exc)

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    def busy_ports(self) -> list[str]:
        """Our ports that another program already listens on (Debian's own rspamd.service, say)."""
        busy = []
        for name, port in self.ports.items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(f"{name} {port}")
        return busy

    async def start(self, wait: float) -> bool:
        """Start all; wait up to ``wait`` seconds for them to answer. True if all are ready."""
        busy = self.busy_ports()
        if busy:
            log.error("antispam: ports already in use by another program: %s; if that is Debian's own rspamd, "
                      "redis or unbound, stop it (systemctl disable --now rspamd redis-server) or choose other "
                      "ports in [antispam]", ", ".join(busy))
        for name in ("redis", "unbound", "clamd"):
            if name in self.daemons:
                self.daemons[name].start()
        deadline = time.monotonic() + wait
        for name in ("redis", "unbound"):
            await self.daemons[name].wait_ready(max(0.1, min(15.0, deadline - time.monotonic())))
        self.daemons["rspamd"].start()
        return await self.daemons["rspamd"].wait_ready(max(0.1, deadline - time.monotonic())) and self.ready

    @property
    def ready(self) -> bool:
        """redis, unbound and rspamd answer (clamd may still be loading its signatures)."""
        return all(d.ready.is_set() for name, d in self.daemons.items() if name != "clamd")

    async def stop(self) -> None:
        for name in ("rspamd", "clamd", "unbound", "redis"):
            if name not in self.daemons:
                continue
            try:
                await self.daemons[name].stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log.warning("stopping %s: %s", name, exc)
        self.layout.daemons_file.unlink(missing_ok=True)

    def state(self) -> list[dict[str, Any]]:
        return [d.state() for d in self.daemons.values()]
