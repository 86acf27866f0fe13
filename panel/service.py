"""The panel service: one uvicorn server per listener with protocol "http".

uvicorn runs on the runner's loop (``Server.serve`` in a task) with its
signal handling switched off: the runner owns SIGTERM/SIGINT and calls
``stop()``. A listener with ``tls = "implicit"`` serves HTTPS with the
instance certificate, and then the session cookies are Secure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Iterator

import uvicorn

from appliance.services import ServiceContext
from storage import db

from .app import create_app, make_context

log = logging.getLogger("panel")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn releases
        pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class PanelService:
    name = "panel"

    def __init__(self) -> None:
        self.endpoints: list[str] = []
        self._servers: list[tuple[_Server, asyncio.Task, socket.socket]] = []
        self._pruner: asyncio.Task | None = None

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        for server, _task, _sock in self._servers:
            server.should_exit = True
        for server, task, sock in self._servers:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
            except (TimeoutError, Exception):  # noqa: BLE001 - keep stopping
                server.force_exit = True
                task.cancel()
            sock.close()
        self._servers.clear()


async def _prune_sessions(ctx: ServiceContext, pc, every: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    """Delete expired panel sessions now and then (they are refused anyway; this keeps the table small)."""
    from . import policies, security

    loop = asyncio.get_running_loop()
    while True:
        try:
            idle = (await loop.run_in_executor(ctx.executor, policies.load, ctx.store))["idle_timeout_minutes"] * 60
            now = time.time()
            await loop.run_in_executor(
                ctx.executor,
                functools.partial(pc.web.prune_sessions, idle_before=now - idle, created_before=now - security.MAX_SESSION_AGE),
            )
        except Exception as exc:  # noqa: BLE001 - try again later
            log.warning("pruning panel sessions: %s", exc)
        await asyncio.sleep(every)


async def start(ctx: ServiceContext) -> PanelService | None:
    listeners = [lst for lst in ctx.cfg.listeners.values() if lst.protocol == "http"]
    if not listeners:
        return None
    if db.current_revision(ctx.store.engine) != db.head_revision(ctx.store.engine):
        raise RuntimeError("the database schema is older than this panel needs; run 'appliance migrate'")
    service = PanelService()
    apps = {}
    for lst in listeners:
        tls = lst.tls == "implicit"
        if tls and ctx.ssl_context is None:
            raise RuntimeError(f"listeners.{lst.name}: TLS requested but no certificate is loaded")
        if tls not in apps:
            apps[tls] = create_app(make_context(ctx.store, ctx.cfg, secure_cookies=tls))
        sock = _bind(lst.host, lst.port)
        ssl_ctx = ctx.ssl_context if tls else None
        config = uvicorn.Config(
            apps[tls],
            lifespan="off",
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            http="h11",
            ws="none",
            timeout_keep_alive=15,
            ssl_context_factory=(lambda _cfg, _default, c=ssl_ctx: c) if tls else None,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"panel-{lst.name}")
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            sock.close()
            task.result()
            raise RuntimeError(f"listeners.{lst.name}: the web server did not start")
        service._servers.append((server, task, sock))
        service.endpoints.append(f"{'https' if tls else 'http'} {lst.bind}")
    pc = next(iter(apps.values())).pc  # type: ignore[attr-defined]
    service._pruner = asyncio.create_task(_prune_sessions(ctx, pc), name="panel-prune")
    return service
