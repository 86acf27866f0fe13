"""One SMTP worker process: ``python -m mta.worker`` (started by mta.workers.WorkerPool, never by hand).

It loads the same appliance.toml as the service, opens every SMTP listener
with SO_REUSEPORT, and accepts and delivers mail until SIGTERM, its parent's
death (PR_SET_PDEATHSIG) or EOF on stdin (the parent's lifeline pipe); then it
drains its sessions as the single-process service does. It says "ready" or
why it could not start on the status pipe (``--status-fd``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("mta.worker")

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies; exit now if it already did (the race before prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the stdin lifeline still stops us
    if os.getppid() != parent:
        sys.exit(0)


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        os.close(fd)
    except OSError:
        pass


async def _serve(cfg, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from appliance.config import ConfigError
    from appliance.keys import ssl_server_context
    from appliance.runner import _tune_store
    from appliance.services import ServiceContext
    from storage.store import Store

    from .conncount import SharedCounts
    from .service import start_listeners

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def lifeline() -> None:
        try:
            data = os.read(0, 512)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, lifeline)
    threads = cfg.tuning.workers or max(4, (os.cpu_count() or 2) * 4)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
    loop.set_default_executor(executor)
    store = None
    service = None
    counts = None
    try:
        try:
            store = Store.from_config(cfg)
            _tune_store(cfg, store)
            ctx = ServiceContext(cfg=cfg, store=store, executor=executor,
                                 ssl_context=ssl_server_context(cfg) if cfg.uses_tls else None, log=log)
            counts = SharedCounts(args.table_fd, args.slots, args.slot)
            service = await start_listeners(ctx, connections_table=counts)
        except ConfigError as exc:
            _report(args.status_fd, f"config {exc}")
            return 78
        except Exception as exc:  # noqa: BLE001 - the parent shows the reason; no traceback for operators
            log.debug("worker start failed", exc_info=True)
            _report(args.status_fd, f"error {exc}")
            return 1
        _report(args.status_fd, "ready")
        await stop.wait()
        return 0
    finally:
        if service is not None:
            try:
                await asyncio.wait_for(service.stop(), timeout=25)
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping SMTP worker %d: %s", args.slot, exc)
        if store is not None:
            store.close()
        executor.shutdown(wait=True, cancel_futures=False)
        if counts is not None:
            counts.clear(args.slot)
            counts.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mta.worker")
    p.add_argument("--config", required=True)
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--table-fd", type=int, required=True)
    p.add_argument("--status-fd", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    from appliance.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _report(args.status_fd, f"config {exc}")
        return 78
    logging.basicConfig(level=getattr(logging, str(cfg.log.level).upper(), logging.INFO),
                        format=f"%(asctime)s %(name)s[{args.slot}] %(levelname)s %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(cfg, args))
    finally:
        loop.close()


if __name__ == "__main__":
    raise SystemExit(main())
