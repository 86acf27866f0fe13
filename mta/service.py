"""The MTA service: aiosmtpd servers on the shared event loop.

``start(ctx)`` opens one server per listener whose protocol is "smtp" (MX:
port 25, STARTTLS offered, never AUTH) or "submission" (587 with
tls="starttls": STARTTLS required before AUTH and MAIL; 465 with
tls="implicit": TLS from the first byte, AUTH offered there). They are
plain ``loop.create_server`` servers with aiosmtpd's protocol, on the running
loop (not aiosmtpd's threaded Controller).

``stop()`` stops accepting, tells idle sessions 421 and closes them, lets
sessions in the middle of a command (a DATA being stored) finish, for at most
``drain_timeout`` seconds, then aborts what is left.

After each delivery, vacation auto-replies (mta/autoreply.py) go out from
worker threads; forwarding (mta/forward.py) is part of the delivery itself.
The daily maintenance job (appliance/maintenance.py: event log retention,
vacation memory) runs in this service's process, a minute after start and
then daily.

The delivery worker for the outbound queue (mta/outbound.py) runs beside the
listeners unless ``queue.hold`` is set; ``ctx.running["mta"].outbound`` is it
(None when held), ``.queue`` the queue.

With ``smtp.workers`` > 1 (the default "auto" on a machine with several
cores) the listeners live in worker processes instead (mta/workers.py,
``ctx.running["mta"].workers``); this process keeps the outbound queue
worker and the maintenance job. ``start_listeners`` is what each worker runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from appliance.config import ConfigError
from appliance.maintenance import Maintenance

from .autoreply import AutoReplies
from .connector import Connector, Pool
from .delivery import Deliverer, DeliveryLog
from .dkimsign import SigningPool
from .handler import Handler, OutboundGuard, Shared
from .mailauth import MailAuth, configure_dns
from .mtasts import MtaSts, https_fetch
from .mx import MxResolver
from .outbound import Outbound, OutboundSettings
from .policy import Policy
from .protocol import Connections, Limits, MtaSMTP
from .queue import OutboundQueue
from .workers import WorkerPool, worker_count

log = logging.getLogger("mta")

PROTOCOLS = {"smtp": "mx", "submission": "submission"}


def _quiet_aiosmtpd() -> None:
    """aiosmtpd logs every command at INFO and a deprecation per AUTH; keep only errors.

    Its ``sanitized_log`` also runs a regex over every command line before
    the logger drops the record; skip that while the logger is quiet.
    """
    import aiosmtpd.smtp

    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning)
    original = getattr(aiosmtpd.smtp.sanitized_log, "__wrapped__", aiosmtpd.smtp.sanitized_log)

    @functools.wraps(original)
    def sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        if aiosmtpd_log.isEnabledFor(logging.INFO):
            original(func, msg, *args, **kwargs)

    aiosmtpd.smtp.sanitized_log = sanitized_log


class MtaService:
    name = "mta"

    def __init__(self, servers: list[asyncio.AbstractServer], endpoints: list[str], connections: Connections,
                 shared: Shared, *, drain_timeout: float = 20.0, outbound: Outbound | None = None,
                 maintenance: Maintenance | None = None, workers: WorkerPool | None = None) -> None:
        self.servers = servers
        self.endpoints = endpoints
        self.connections = connections
        self.shared = shared
        self.drain_timeout = drain_timeout
        self.outbound = outbound
        self.maintenance = maintenance
        self.workers = workers

    @property
    def queue(self) -> OutboundQueue:
        return self.shared.deliverer.queue

    async def stop(self) -> None:
        if self.maintenance is not None:
            await self.maintenance.stop()
        for srv in self.servers:
            srv.close()
        for session in list(self.connections.sessions):
            session.shutdown()
        stopping = asyncio.ensure_future(self.outbound.stop(timeout=5.0)) if self.outbound is not None else None
        if self.workers is not None:
            try:
                await self.workers.stop()
            except Exception:  # noqa: BLE001 - keep stopping
                log.exception("stopping the SMTP workers")
        if self.connections.sessions:
            try:
                await asyncio.wait_for(self.connections.closed.wait(), self.drain_timeout)
            except TimeoutError:
                log.warning("%d SMTP sessions still open after %ss; aborting them", len(self.connections.sessions), self.drain_timeout)
                for session in list(self.connections.sessions):
                    session.abort()
        if stopping is not None:
            try:
                await stopping
            except Exception:  # noqa: BLE001 - keep stopping
                log.exception("stopping the delivery worker")
        for srv in self.servers:
            await srv.wait_closed()
        loop = asyncio.get_running_loop()
        if self.shared.autoreplies is not None and not await loop.run_in_executor(None, self.shared.autoreplies.close, 10.0):
            log.warning("vacation auto-replies still in progress at stop")
        await loop.run_in_executor(self.shared.executor, self.shared.events.close)


def _shared(ctx: Any, *, worker: bool = False) -> Shared:
    """Blocking. ``worker``: in an SMTP worker process, which leaves the queue's recovery to the service's
    process and tells its queue worker of each message it queues (a kick file)."""
    cfg, store = ctx.cfg, ctx.store
    configure_dns(cfg.dns.resolvers, port=getattr(cfg.dns, "port", 53), timeout=float(cfg.dns.timeout))
    queue = OutboundQueue(store, Path(cfg.instance.data_dir) / "queue", fsync=cfg.storage.fsync)
    if worker:
        queue.on_enqueue = lambda msg: queue.kick(msg.id)
    else:
        removed = queue.recover()
        if removed:
            log.info("outbound queue: removed %d unfinished files", removed)
    events = DeliveryLog(store)
    policy = Policy(store, ttl=float(cfg.smtp.directory_cache_ttl))
    deliverer = Deliverer(store, queue, events)
    autoreplies = AutoReplies(store, queue, events=events)
    deliverer.after_delivery = autoreplies.after_delivery
    return Shared(
        store=store,
        executor=ctx.executor,
        hostname=cfg.instance.hostname,
        max_recipients=cfg.smtp.max_recipients,
        reject_dmarc=cfg.smtp.reject_dmarc,
        policy=policy,
        mailauth=MailAuth(cfg.instance.hostname),
        deliverer=deliverer,
        events=events,
        scanner=_scanner(ctx),
        outbound=_outbound(ctx, policy),
        max_message_size=cfg.smtp.max_message_size,
        autoreplies=autoreplies,
    )


def _scanner(ctx: Any) -> Any:
    """The antispam scanner for port 25 (antispam/__init__.py documents the API), or None."""
    if not ctx.cfg.antispam.enabled:
        return None
    try:
        from antispam import get_scanner

        return get_scanner(ctx)
    except Exception:  # noqa: BLE001 - no spam filter is better than no mail
        log.exception("antispam scanner unavailable; port 25 mail is not scanned")
        return None


def _outbound(ctx: Any, policy: Policy) -> Any:
    try:
        return OutboundGuard(ctx.store, ctx.cfg.limits, policy)
    except Exception:  # noqa: BLE001
        log.exception("outbound limits unavailable")
        return None


def _outbound_worker(ctx: Any, shared: Shared) -> Outbound:
    """The delivery worker (blocking setup: reads the smarthost password file)."""
    cfg = ctx.cfg
    queue = shared.deliverer.queue
    settings = OutboundSettings.from_config(cfg)
    resolver = MxResolver(cfg.dns.resolvers, port=getattr(cfg.dns, "port", 53), timeout=float(cfg.dns.timeout))
    sts = None
    if cfg.queue.mta_sts and settings.connect.smarthost is None:
        fetch = functools.partial(https_fetch, resolver=resolver, ca_file=settings.connect.ca_file)
        sts = MtaSts(resolver, fetch, cache_file=queue.root / "mta-sts.json")
    pool = Pool(Connector(settings.connect, resolver, sts), max_per_domain=settings.max_per_domain,
                max_connections=settings.max_connections, down_time=min(60.0, settings.retry_base))
    guard = shared.outbound

    def is_frozen(email: str) -> bool:
        return guard is not None and guard.frozen_reply(email) is not None

    def record_failures(email: str, count: int) -> None:
        if guard is not None:
            guard.failed(email, count)

    signer = None
    if cfg.dkim.enabled:
        processes = cfg.dkim.sign_processes or max(1, min(4, (os.cpu_count() or 2) - 1))
        signer = SigningPool(cfg.storage.keys_dir, processes)
    return Outbound(queue, ctx.store, settings, pool, executor=ctx.executor, events=shared.events, signer=signer,
                    is_frozen=is_frozen, record_failures=record_failures)


def _factory(ctx: Any, shared: Shared, connections: Connections, limits: Limits, listener: Any) -> Any:
    kind = PROTOCOLS[listener.protocol]
    handler = Handler(shared, kind=kind, listener=listener.name)
    implicit = listener.tls == "implicit"
    starttls = listener.tls == "starttls"
    if kind == "submission" and listener.tls == "none" and ctx.cfg.smtp.require_tls_for_auth:
        raise ConfigError(
            f"{ctx.cfg.path}: listeners.{listener.name}.tls: submission without TLS would send passwords in clear; "
            "use starttls or implicit (or set smtp.require_tls_for_auth = false for a test instance)",
            key=f"listeners.{listener.name}.tls",
        )
    options: dict[str, Any] = {
        "hostname": ctx.cfg.instance.hostname,
        "ident": "ESMTP ready",
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "tls_context": ctx.ssl_context if starttls else None,
        "require_starttls": starttls and kind == "submission",
        "auth_required": kind == "submission",
        "auth_require_tls": kind == "submission" and starttls,
    }
    loop = asyncio.get_running_loop()

    def make() -> MtaSMTP:
        return MtaSMTP(handler, kind=kind, limits=limits, connections=connections, implicit_tls=implicit, loop=loop, **options)

    return make


def _limits(ctx: Any) -> Limits:
    smtp = ctx.cfg.smtp
    return Limits(
        max_message_size=smtp.max_message_size,
        max_line_length=smtp.max_line_length,
        max_header_size=smtp.max_header_size,
        max_errors=smtp.max_errors,
        idle_timeout=float(smtp.idle_timeout),
    )


def _smtp_listeners(ctx: Any) -> list[Any]:
    return [lst for lst in ctx.cfg.listeners.values() if lst.protocol in PROTOCOLS]


async def _listen(ctx: Any, shared: Shared, connections: Connections, *,
                  reuse_port: bool = False) -> tuple[list[asyncio.AbstractServer], list[str]]:
    """Open every SMTP listener on this loop."""
    loop = asyncio.get_running_loop()
    limits = _limits(ctx)
    servers: list[asyncio.AbstractServer] = []
    endpoints: list[str] = []
    try:
        for lst in _smtp_listeners(ctx):
            factory = _factory(ctx, shared, connections, limits, lst)
            ssl = ctx.ssl_context if lst.tls == "implicit" else None
            if lst.tls != "none" and ctx.ssl_context is None:
                raise ConfigError(f"{ctx.cfg.path}: listeners.{lst.name}.tls: TLS is configured but no certificate was loaded",
                                  key=f"listeners.{lst.name}.tls")
            server = await loop.create_server(factory, lst.host, lst.port, ssl=ssl, reuse_address=True,
                                              reuse_port=reuse_port or None, backlog=512)
            servers.append(server)
            endpoints.append(f"{lst.protocol} {lst.bind}")
    except BaseException:
        for srv in servers:
            srv.close()
        raise
    return servers, endpoints


async def start_listeners(ctx: Any, *, connections_table: Any = None) -> MtaService | None:
    """An SMTP worker process (mta/worker.py): the listeners only, with SO_REUSEPORT; no queue worker,
    no maintenance. ``connections_table`` (mta.conncount.SharedCounts) counts connections per IP over
    every worker."""
    if not _smtp_listeners(ctx):
        return None
    _quiet_aiosmtpd()
    loop = asyncio.get_running_loop()
    shared = await loop.run_in_executor(ctx.executor, functools.partial(_shared, ctx, worker=True))
    connections = Connections(ctx.cfg.smtp.max_connections_per_ip, connections_table)
    servers, endpoints = await _listen(ctx, shared, connections, reuse_port=True)
    return MtaService(servers, endpoints, connections, shared)


async def start(ctx: Any) -> MtaService | None:
    if not _smtp_listeners(ctx):
        return None
    _quiet_aiosmtpd()
    loop = asyncio.get_running_loop()
    shared = await loop.run_in_executor(ctx.executor, _shared, ctx)
    connections = Connections(ctx.cfg.smtp.max_connections_per_ip)
    count = worker_count(ctx.cfg.smtp.workers)
    pool: WorkerPool | None = None
    servers: list[asyncio.AbstractServer] = []
    if count > 1:
        pool = WorkerPool(ctx.cfg.path, count)
        await pool.start()
        endpoints = [f"{lst.protocol} {lst.bind}" for lst in _smtp_listeners(ctx)]
    else:
        servers, endpoints = await _listen(ctx, shared, connections)

    def undo() -> None:
        for srv in servers:
            srv.close()

    outbound = None
    if not ctx.cfg.queue.hold:
        try:
            outbound = await loop.run_in_executor(ctx.executor, _outbound_worker, ctx, shared)
            await outbound.start()
        except BaseException:
            undo()
            if pool is not None:
                await pool.stop()
            raise
    maintenance = Maintenance(ctx.store, float(ctx.cfg.log.retention), Path(ctx.cfg.instance.data_dir) / "maintenance.lock",
                              executor=ctx.executor)
    maintenance.start()
    return MtaService(servers, endpoints, connections, shared, outbound=outbound, maintenance=maintenance, workers=pool)
