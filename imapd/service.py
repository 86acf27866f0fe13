"""The IMAP and POP3 service: Twisted listeners on the shared event loop.

``start(ctx)`` listens on every listener whose protocol is "imap" or "pop3":
tls="implicit" is TLS from the first byte (``listenSSL``); tls="starttls"
offers STARTTLS/STLS and refuses LOGIN, AUTHENTICATE, USER/PASS before it
(LOGINDISABLED advertised); tls="none" allows plaintext logins (for a
loopback-only test or benchmark listener). One change watcher per process
serves IDLE; one sweeper logs out idle connections; one guard ends the
sessions whose credentials were revoked (see ``guard``); one trimmer gives
freed heap memory back after bursts of work (see ``memtrim``).

When the antispam service does not run in this process (the systemd layout:
``appliance up --service imapd``), ``start`` attaches a learner of its own
(``antispam.attach_learning``) so moves into and out of Junk made here still
teach rspamd; ``stop`` stops it.

``stop()`` stops listening, says BYE to every session, waits a little for
the commands in flight, then drops what is left.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from appliance.config import ConfigError

from .conn import ConnectionFactory
from .guard import SessionGuard
from .imap import ImapConnection
from .memtrim import Trimmer
from .pop3 import Pop3Connection
from .shared import Limits, Registry, Shared
from .watcher import Watcher

log = logging.getLogger("imapd")

PROTOCOLS = {"imap": ImapConnection, "pop3": Pop3Connection}


def limits_from_config(cfg: Any) -> Limits:
    c = cfg.imap
    return Limits(
        max_line_length=c.max_line_length,
        max_literal_size=c.max_literal_size,
        max_connections_per_user=c.max_connections_per_user,
        max_connections_per_ip=c.max_connections_per_ip,
        idle_timeout=float(c.idle_timeout),
        max_search_depth=c.max_search_depth,
        max_mime_depth=c.max_mime_depth,
    )


class ImapService:
    name = "imapd"

    def __init__(self, shared: Shared, ports: list[Any], endpoints: list[str], sweeper: asyncio.Task,
                 learner: Any = None) -> None:
        self.shared = shared
        self.ports = ports
        self.endpoints = endpoints
        self._sweeper = sweeper
        #: the spam learner this service attached itself (None when the antispam service owns it)
        self.learner = learner

    async def stop(self, drain_timeout: float = 5.0) -> None:
        for port in self.ports:
            d = port.stopListening()
            if d is not None:
                await d.asFuture(self.shared.loop)
        self._sweeper.cancel()
        if self.shared.trimmer is not None:
            self.shared.trimmer.close()
        registry = self.shared.registry
        for conn in list(registry.conns):
            conn.close(conn.bye_text("Server shutting down"))
        if registry.conns:
            try:
                await asyncio.wait_for(registry.empty.wait(), drain_timeout)
            except TimeoutError:
                for conn in list(registry.conns):
                    conn.transport.abortConnection()
        await self.shared.watcher.close()
        await self.shared.guard.close()
        if self.learner is not None:
            await detach_learning(self.shared.store, self.learner)
            self.learner = None


async def _sweep(registry: Registry, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            registry.sweep()
        except Exception:  # noqa: BLE001
            log.exception("idle sweep")


def attach_learning(ctx: Any) -> Any:
    """The spam learner this service must stop itself, or None (no antispam, or its service owns it).

    A learner that cannot be made (a bad antispam setting) leaves IMAP
    running without learning, with a warning: mail access matters more.
    """
    try:
        import antispam
    except ImportError:
        return None
    try:
        learner = antispam.attach_learning(ctx)
    except Exception as exc:  # noqa: BLE001 - IMAP must start even when learning cannot
        log.warning("moves into and out of Junk will not teach the spam filter: %s", exc)
        return None
    service = ctx.running.get("antispam")
    if learner is None or (service is not None and getattr(service, "learner", None) is learner):
        return None
    return learner


async def detach_learning(store: Any, learner: Any) -> None:
    store.remove_move_hook(learner.hook)
    if getattr(store, "_antispam_learner", None) is learner:
        store._antispam_learner = None
    try:
        await learner.stop(timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - keep stopping
        log.warning("stopping the spam learner: %s", exc)


async def start(ctx: Any) -> ImapService | None:
    listeners = [lst for lst in ctx.cfg.listeners.values() if lst.protocol in PROTOCOLS]
    if not listeners:
        return None
    from twisted.internet import reactor

    loop = asyncio.get_running_loop()
    tls_options = None
    if any(lst.tls != "none" for lst in listeners):
        from .tls import from_config

        try:
            tls_options = await loop.run_in_executor(ctx.executor, from_config, ctx.cfg)
        except Exception as exc:  # noqa: BLE001 - an unreadable certificate is a config error, not a traceback
            raise ConfigError(f"{ctx.cfg.path}: tls.cert_file: cannot load the certificate and key for IMAP/POP3 ({exc})",
                              key="tls.cert_file") from None
    limits = limits_from_config(ctx.cfg)
    registry = Registry(limits)
    shared = Shared(store=ctx.store, executor=ctx.executor, loop=loop, limits=limits,
                    hostname=ctx.cfg.instance.hostname, tls_options=tls_options, registry=registry)
    shared.watcher = Watcher(ctx.store, ctx.executor, loop)
    shared.guard = SessionGuard(ctx.store, ctx.executor, loop)
    shared.inline_reads = ctx.store.engine.dialect.name == "sqlite"
    ports: list[Any] = []
    endpoints: list[str] = []
    try:
        for lst in listeners:
            factory = ConnectionFactory(PROTOCOLS[lst.protocol], shared, implicit_tls=lst.tls == "implicit",
                                        starttls=lst.tls == "starttls")
            if lst.tls == "implicit":
                port = reactor.listenSSL(lst.port, factory, tls_options, backlog=512, interface=lst.host)
            else:
                port = reactor.listenTCP(lst.port, factory, backlog=512, interface=lst.host)
            ports.append(port)
            endpoints.append(f"{lst.protocol} {lst.bind} ({lst.name}, tls={lst.tls})")
            if lst.tls == "none" and lst.host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("listeners.%s: %s without TLS on %s: passwords travel in clear", lst.name, lst.protocol, lst.host)
    except BaseException:
        for port in ports:
            port.stopListening()
        raise
    shared.trimmer = Trimmer(loop, ctx.executor)
    sweeper = loop.create_task(_sweep(registry, min(30.0, max(1.0, limits.idle_timeout / 4))))
    return ImapService(shared, ports, endpoints, sweeper, attach_learning(ctx))
