"""Helpers for the outbound tests: scripted SMTP peers, and an in-process delivery worker.

    peer = Peer("127.0.0.3", port, replies=["451 4.3.0 later"])  # first DATA deferred, then 250
    ...
    peer.messages  # [(mail_from, rcpt_tos, content bytes)]
    peer.close()

``run_worker(store, queue, dns_port, ...)`` runs ``mta.outbound.Outbound`` on
an event loop in a thread until ``stop()``; ``wait_for(predicate)`` polls.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mta.connector import Connector, ConnectSettings, Pool
from mta.mtasts import MtaSts
from mta.mx import MxResolver
from mta.outbound import Outbound, OutboundSettings


class _Handler:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        reply = self.peer.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.peer.lock:
            if self.peer.replies:
                return self.peer.replies.pop(0)
            self.peer.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
            self.peer.tls.append(session.ssl is not None)
        return "250 2.0.0 Ok: stored"


class Peer:
    """An aiosmtpd server in a thread. ``replies`` are answered to DATA in turn before it accepts;
    ``rcpt_replies`` maps addresses to a RCPT reply (e.g. a 550)."""

    def __init__(self, host: str, port: int, *, replies: list[str] | None = None,
                 rcpt_replies: dict[str, str] | None = None, cert: tuple[Path, Path] | None = None,
                 logins: dict[str, str] | None = None, implicit_tls: bool = False) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.tls: list[bool] = []
        self.replies = list(replies or [])
        self.rcpt_replies = dict(rcpt_replies or {})
        self.lock = threading.Lock()
        self.logins: list[str] = []
        kwargs: dict[str, Any] = {"decode_data": False, "enable_SMTPUTF8": True}
        ctx = None
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            if implicit_tls:
                kwargs["ssl_context"] = ctx
            else:
                kwargs["tls_context"] = ctx
        if logins is not None:
            def authenticate(server, session, envelope, mechanism, data):  # type: ignore[no-untyped-def]
                if isinstance(data, LoginPassword) and logins.get(data.login.decode()) == data.password.decode():
                    self.logins.append(data.login.decode())
                    return AuthResult(success=True)
                return AuthResult(success=False, handled=False)

            kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=True)
        self.controller = Controller(_Handler(self), hostname=host, port=port, server_hostname="peer.test",
                                     ready_timeout=10, **kwargs)
        if implicit_tls:
            # the readiness probe of Controller speaks plain SMTP; skip it for implicit TLS
            self.controller._trigger_server = lambda: None  # type: ignore[method-assign]
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class Worker:
    """An ``Outbound`` on its own event loop in a thread."""

    def __init__(self, store: Any, queue: Any, dns_port: int, *, remote_port: int = 25, hostname: str = "mail.example.test",
                 fetcher: Any = None, signer: Any = None, connect: dict[str, Any] | None = None,
                 config: Any = None, **settings: Any) -> None:
        """Settings from ``config`` (a loaded appliance.toml) when given, else from the arguments."""
        self.loop = asyncio.new_event_loop()
        if config is not None:
            self.settings = OutboundSettings.from_config(config)
            conn = self.settings.connect
        else:
            conn = ConnectSettings(hostname=hostname, remote_port=remote_port, connect_timeout=2.0, command_timeout=5.0,
                                   **(connect or {}))
            opts: dict[str, Any] = {"retry_base": 1.0, "retry_max": 2.0, "max_lifetime": 3600.0, "delay_notice_after": 0.0}
            opts.update(settings)
            self.settings = OutboundSettings(hostname=hostname, connect=conn, **opts)
        resolver = MxResolver(["127.0.0.1"], port=dns_port, timeout=2.0)
        sts = MtaSts(resolver, fetcher) if fetcher is not None else None
        pool = Pool(Connector(conn, resolver, sts), max_per_domain=self.settings.max_per_domain,
                    max_connections=self.settings.max_connections, down_time=min(60.0, self.settings.retry_base))
        self.outbound = Outbound(queue, store, self.settings, pool, signer=signer)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.outbound.start(), self.loop).result(10)
        wait_for(lambda: self.outbound.loaded)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.outbound.stop(timeout=2), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
