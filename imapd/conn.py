"""A Twisted connection shared by IMAP and POP3: output with back-pressure,
STARTTLS, limits at connect, idle tracking, blocking work off the reactor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from .shared import Shared


@implementer(IPushProducer)
class Connection(Protocol):
    protocol_name = "imap"

    def __init__(self, shared: Shared, *, implicit_tls: bool, starttls: bool) -> None:
        self.shared = shared
        self.implicit_tls = implicit_tls
        self.starttls_allowed = starttls
        self.ip = ""
        self.user: Any = None
        self.client_id: str | None = None
        self.user_claimed = False
        self.credential: str | None = None  # what the login proved (see guard)
        self.auth_epoch = 0
        self.login_time = 0.0  # time.time() of the successful login
        self.last_activity = time.monotonic()
        self.last_keepalive = self.last_activity
        self.closing = False
        self.lost = False
        self._paused = False
        self._resumed: asyncio.Future | None = None
        self.registered = False

    # ----------------------------------------------------------- lifecycle
    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        peer = self.transport.getPeer()
        self.ip = getattr(peer, "host", "") or ""
        try:
            self.transport.setTcpNoDelay(True)  # a tagged reply must not wait for the ACK of the data before it
        except (AttributeError, OSError):
            pass
        self.transport.registerProducer(self, True)
        if not self.shared.registry.add(self, self.ip):
            self.registered = False
            self.refuse_busy()
            return
        self.registered = True
        self.greet()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost = True
        self.closing = True
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)
        if self.registered:
            self.shared.registry.remove(self, self.ip, self.user.id if self.user_claimed and self.user else None)
            self.registered = False
        if self.user_claimed and self.shared.guard is not None:
            self.shared.guard.remove(self)
        self.cleanup()

    def greet(self) -> None:
        raise NotImplementedError

    def refuse_busy(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def timed_out(self) -> None:
        self.close(self.bye_text("Idle for too long"))

    def keepalive(self) -> None:
        pass

    def revoke(self, reason: str) -> None:
        """The credentials this session logged in with no longer hold (see ``guard``): end it, saying why."""
        self.close(self.revoked_text(reason))

    def revoked_text(self, reason: str) -> bytes:
        raise NotImplementedError

    def bye_text(self, text: str) -> bytes:
        raise NotImplementedError

    # -------------------------------------------------------------- output
    def send(self, data: bytes) -> None:
        if not self.closing:
            self.transport.write(data)

    def send_many(self, chunks: list[bytes]) -> None:
        if chunks and not self.closing:
            self.transport.writeSequence(chunks)

    async def drain(self) -> None:
        while self._paused and not self.lost:
            if self._resumed is None or self._resumed.done():
                self._resumed = self.shared.loop.create_future()
            await self._resumed

    # IPushProducer: the transport tells us when its buffer is full or drained
    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def stopProducing(self) -> None:  # noqa: N802
        self.lost = True
        self.resumeProducing()

    def close(self, last: bytes | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        if last and not self.lost:
            self.transport.write(last)
        self.transport.loseConnection()
        # a TLS close waits for the peer's close_notify, which a client may never send
        self.shared.loop.call_later(1.0, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.lost:
            self.transport.abortConnection()

    # ---------------------------------------------------------------- TLS
    @property
    def secure(self) -> bool:
        return self.implicit_tls or ISSLTransport.providedBy(self.transport)

    def start_tls(self) -> None:
        self.transport.startTLS(self.shared.tls_options)

    # ------------------------------------------------------------ blocking
    def run(self, fn: Any, *args: Any) -> asyncio.Future:
        return self.shared.run(fn, *args)


class ConnectionFactory(Factory):
    def __init__(self, cls: type[Connection], shared: Shared, *, implicit_tls: bool, starttls: bool) -> None:
        self.cls = cls
        self.shared = shared
        self.implicit_tls = implicit_tls
        self.starttls = starttls

    def buildProtocol(self, addr: Any) -> Connection:  # noqa: N802
        p = self.cls(self.shared, implicit_tls=self.implicit_tls, starttls=self.starttls)
        p.factory = self
        return p
