"""``appliance up``: every service in one process, on one event loop.

Twisted is installed on the asyncio loop before anything imports the
reactor, so aiosmtpd, the Twisted IMAP/POP3 servers and the web panel share
it. This module alone owns the signals: SIGTERM/SIGINT stop the services in
reverse order and the process exits 0.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

from .i18n import _
from .services import SERVICE_MODULES, ServiceContext

log = logging.getLogger("appliance")


def sd_notify(message: str) -> None:
    """Tell systemd about readiness/stopping (Type=notify); silent without systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError:
        pass


async def watchdog(interval: float) -> None:
    """Ping systemd's watchdog (WatchdogSec=) every ``interval`` seconds while the loop is alive."""
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds when systemd asks this process for pings, else None."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


def _tune_store(cfg, store) -> None:  # type: ignore[no-untyped-def]
    """Apply [tuning] db_cache_size to every new SQLite connection of this process."""
    if store.engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    kib = max(1, cfg.tuning.db_cache_size // 1024)

    @event.listens_for(store.engine, "connect")
    def _cache(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.execute(f"PRAGMA cache_size=-{kib}")


def install_reactor(loop: asyncio.AbstractEventLoop) -> None:
    import sys

    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)


async def serve(cfg, *, only: list[str] | None = None, ready: asyncio.Event | None = None) -> int:  # type: ignore[no-untyped-def]
    from storage.store import Store

    from .keys import ssl_server_context

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    workers = cfg.tuning.workers or max(4, (os.cpu_count() or 2) * 4)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
    loop.set_default_executor(executor)
    store = Store.from_config(cfg)
    _tune_store(cfg, store)
    from .licence_hook import startup_check

    startup_check(store, log)
    recovered = store.recover()
    if recovered["published"] or recovered["removed"]:
        log.info("recovery: %s", recovered)
    ctx = ServiceContext(
        cfg=cfg,
        store=store,
        executor=executor,
        ssl_context=ssl_server_context(cfg) if cfg.uses_tls else None,
        log=log,
    )
    started = []
    pinger: asyncio.Task[None] | None = None
    try:
        for name, module_name in SERVICE_MODULES.items():
            if only and name not in only:
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:
                    continue  # that service is not built yet
                raise
            service = await module.start(ctx)
            if service is None:
                continue
            ctx.running[name] = service
            started.append(service)
            for endpoint in service.endpoints:
                print(_("listening: {service} {endpoint}").format(service=name, endpoint=endpoint), flush=True)
        sd_notify("READY=1")
        interval = watchdog_interval()
        pinger = loop.create_task(watchdog(interval)) if interval else None
        print(_("ready; press Ctrl-C to stop"), flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        if pinger is not None:
            pinger.cancel()
        sd_notify("STOPPING=1")
        for service in reversed(started):
            try:
                await asyncio.wait_for(service.stop(), timeout=30)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log.warning("stopping %s: %s", service.name, exc)
        store.close()
        executor.shutdown(wait=True, cancel_futures=False)
    print(_("stopped"), flush=True)
    return 0


def tune_malloc() -> None:
    """Hand large buffers (Argon2's, big messages) back to the kernel when they are freed.

    glibc raises its mmap threshold after the first large free, so from then
    on every worker thread's malloc arena keeps an Argon2 buffer of its own:
    1,000 logins left ~75 MiB behind. A fixed threshold (1 MiB) keeps such
    buffers mmapped. An operator's own MALLOC_* or GLIBC_TUNABLES setting wins.
    """
    if any(k.startswith("MALLOC_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run(cfg, *, only: list[str] | None = None) -> int:  # type: ignore[no-untyped-def]
    tune_malloc()
    logging.basicConfig(level=getattr(logging, str(cfg.log.level).upper(), logging.INFO), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    install_reactor(loop)
    try:
        return loop.run_until_complete(serve(cfg, only=only))
    finally:
        loop.close()
