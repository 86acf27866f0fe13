"""Helpers for tests and benchmarks: the antispam service on its own event loop thread.

``Harness`` starts the real service (redis, unbound, rspamd) for an instance
in a background thread's event loop, so a test can call the blocking store
API on the main thread (which fires the move hooks) and run coroutines on
the service's loop with ``harness.run(coro)``.

rspamd compiles its regular expressions on a first start (about a minute
here); ``seed_cache``/``save_cache`` copy the compiled files between a
persistent cache directory (pytest's cache) and an instance, so later starts
take seconds.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_CACHE_GLOBS = ("*.hs", "*.hs.unser", "*.hsmp", "*.hsmp.unser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(**extra: Any) -> dict[str, Any]:
    """Config overrides enabling antispam on free loopback ports, Bayes in memory only."""
    ports = [free_port() for _ in range(4)]
    values: dict[str, Any] = {
        "antispam.enabled": True,
        "antispam.url": f"http://127.0.0.1:{ports[0]}",
        "antispam.controller_url": f"http://127.0.0.1:{ports[1]}",
        "antispam.redis_port": ports[2],
        "antispam.dns_port": ports[3],
        "antispam.bayes_persist": False,
    }
    values.update(extra)
    return values


def seed_cache(data_dir: Path, cache: Path) -> int:
    db = Path(data_dir) / "spam" / "db"
    db.mkdir(parents=True, exist_ok=True)
    n = 0
    for pattern in _CACHE_GLOBS:
        for f in Path(cache).glob(pattern):
            shutil.copy2(f, db / f.name)
            n += 1
    return n


def save_cache(data_dir: Path, cache: Path) -> int:
    db = Path(data_dir) / "spam" / "db"
    Path(cache).mkdir(parents=True, exist_ok=True)
    n = 0
    for pattern in _CACHE_GLOBS:
        for f in db.glob(pattern):
            if not (Path(cache) / f.name).exists():
                shutil.copy2(f, Path(cache) / f.name)
                n += 1
    return n


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="antispam-test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Harness:
    """The antispam service of ``cfg`` running for a test module."""

    def __init__(self, cfg: Any, *, ready_timeout: float = 300.0) -> None:
        from appliance.services import ServiceContext
        from storage.store import Store

        from .service import start

        self.cfg = cfg
        self.store = Store.from_config(cfg)
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="antispam-test")
        self.lt = LoopThread()
        self.lt.loop.set_default_executor(self.executor)
        self.ctx = ServiceContext(cfg=cfg, store=self.store, executor=self.executor, ssl_context=None,
                                  log=logging.getLogger("appliance"))
        self.service = self.run(start(self.ctx))
        if self.service is None:
            raise RuntimeError("antispam is disabled in this configuration")
        if self.service.daemons is not None and not self.run(self.service.daemons["rspamd"].wait_ready(ready_timeout),
                                                              ready_timeout + 5):
            raise RuntimeError("rspamd did not become ready")

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return self.lt.run(coro, timeout)

    @property
    def scanner(self) -> Any:
        return self.service.scanner

    def check(self, raw: bytes, **kw: Any) -> Any:
        return self.run(self.service.scanner.check(raw, **kw))

    def stat(self) -> dict:
        return self.run(self.service.client.stat())

    def close(self) -> None:
        try:
            if self.service is not None:
                self.run(self.service.stop(), 60)
        finally:
            self.lt.close()
            self.store.close()
            self.executor.shutdown(wait=True)
