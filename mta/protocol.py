"""The SMTP protocol: aiosmtpd's ``SMTP`` with our limits and hardening.

What this subclass adds to aiosmtpd 1.4.6 (the handler in ``handler.py``
keeps the mail policy):

* an RFC 3463 enhanced code on every 2xx/4xx/5xx reply, PIPELINING and
  ENHANCEDSTATUSCODES advertised (in the handler's EHLO hook);
* limits from ``[smtp]``: connections per IP (421 4.7.0 at connect), errors
  per session (421 4.7.0, then close), DATA line length (500 5.5.2), header
  size and message size (552 5.3.4), idle timeout (421 4.4.2);
* DATA read in blocks (not line by line): the end is only ever
  ``CRLF.CRLF``; a bare LF is normalised to CRLF (as Postfix's
  ``smtpd_forbid_bare_newline = normalize``), a bare CR rejects the message
  with 550 5.6.11, so no client can make us see two messages where it sent
  one (SMTP smuggling, CVE-2023-51764);
* plaintext pipelined after STARTTLS is discarded (aiosmtpd does it; tested);
* malformed MAIL/RCPT arguments (``<user@x`` without ``>``, NUL) refused;
* no AUTH at all on the MX listener;
* a session whose credentials were revoked since its AUTH gets the reason at
  its next MAIL, then 421 and the connection closed (``close_after_reply``);
* a graceful ``shutdown``: a session idle between commands is told 421 and
  closed at once; one in the middle of a command (DATA, a delivery) finishes
  it first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, syntax

from .replies import R, add_enhanced_code, reply_code, with_text

log = logging.getLogger("mta")

READ_BLOCK = 256 * 1024
STREAM_LIMIT = 64 * 1024  # StreamReader limit: command lines are capped lower by aiosmtpd (512 + extensions)


@dataclass(frozen=True)
class Limits:
    max_message_size: int
    max_line_length: int
    max_header_size: int
    max_errors: int
    idle_timeout: float


class Connections:
    """Live sessions of one process: the per-IP limit and graceful shutdown.

    With worker processes (``smtp.workers``), ``shared`` (mta.conncount) counts
    every worker's connections, so the per-IP limit holds for the service.
    """

    def __init__(self, max_per_ip: int, shared: Any = None) -> None:
        self.max_per_ip = max_per_ip
        self.shared = shared
        self.per_ip: Counter[str] = Counter()
        self.sessions: set[MtaSMTP] = set()
        self.closed = asyncio.Event()

    def add(self, session: MtaSMTP, ip: str) -> bool:
        if self.shared is not None:
            if self.shared.total(ip) >= self.max_per_ip:
                return False
            self.shared.add(ip, 1)
        elif self.per_ip[ip] >= self.max_per_ip:
            return False
        self.per_ip[ip] += 1
        self.sessions.add(session)
        self.closed.clear()
        return True

    def remove(self, session: MtaSMTP, ip: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_ip[ip] -= 1
            if self.shared is not None:
                self.shared.add(ip, -1)
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
        if not self.sessions:
            self.closed.set()


class MtaEnvelope(Envelope):
    """aiosmtpd's envelope plus what our RCPT checks decided."""

    def __init__(self) -> None:
        super().__init__()
        self.declared_size = 0
        self.local: dict[str, Any] = {}  # email -> storage.records.User
        self.remote: dict[str, None] = {}
        self.skipped: dict[str, str] = {}
        self.rejected: list[tuple[str, str]] = []  # (address, reply)
        self.finished = False  # the DATA outcome was logged
        self.identities: tuple[frozenset[str], frozenset[str]] | None = None  # who the sender is, for group policies


_BAD_ARG = re.compile(r"[\x00-\x1f\x7f]")
# "<local@domain> params": the common case, parsed without email._header_value_parser
_SIMPLE_PATH = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,253})>(\s.*)?\Z", re.S)


def _malformed_path(arg: str | None, keyword: str) -> bool:
    """``MAIL FROM:<a@b`` (no ``>``), stray ``>`` or control characters."""
    if arg is None:
        return False
    if _BAD_ARG.search(arg):
        return True
    rest = arg[len(keyword):].lstrip() if arg[: len(keyword)].upper() == keyword else arg
    if rest.startswith("<"):
        return ">" not in rest
    return ">" in rest.split(" ", 1)[0]


class MtaSMTP(SMTP):
    """One SMTP session. ``kind`` is "mx" or "submission"."""

    line_length_limit = STREAM_LIMIT

    def __init__(self, handler: Any, *, kind: str, limits: Limits, connections: Connections, implicit_tls: bool = False,
                 **kwargs: Any) -> None:
        self.kind = kind
        self.limits = limits
        self.connections = connections
        self.implicit_tls = implicit_tls
        self._errors = 0
        self._busy = False
        self._closing = False
        self._counted_ip: str | None = None
        self._refused = False
        self._plain_replies = False  # greeting and EHLO/HELO answers carry no enhanced code
        self._deadline = 0.0
        self._timer_armed = False
        self._close_after: str | None = None
        # (not "auth_*": aiosmtpd takes such attributes for AUTH mechanisms)
        #: what an AUTH proved ("password:<fingerprint>" or "app:<id>") and the user's credential epoch then
        self.login_credential: str | None = None
        self.login_epoch = 0
        super().__init__(handler, timeout=limits.idle_timeout, data_size_limit=limits.max_message_size, **kwargs)
        self._smtp_methods = {name: self._tracked(method) for name, method in self._smtp_methods.items()}

    # ------------------------------------------------------------- plumbing
    def _create_envelope(self) -> MtaEnvelope:
        return MtaEnvelope()

    def _set_post_data_state(self) -> None:
        old = self.envelope
        super()._set_post_data_state()
        if isinstance(old, MtaEnvelope):
            self.event_handler.envelope_done(self, old)

    def _tracked(self, method: Any) -> Any:
        @functools.wraps(method)
        async def run(arg: str | None) -> None:
            self._busy = True
            try:
                await method(arg)
            finally:
                self._busy = False
                if self._close_after is not None:
                    self._close_with(self._close_after)
                elif self._closing:
                    self._close_with(R.SHUTDOWN)

        return run

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    def tls_info(self) -> tuple[str, str, int] | None:
        """(version, cipher, bits) of the TLS layer, if any."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher() or ("unknown", ssl_object.version() or "TLS", 0)
        return (ssl_object.version() or cipher[1], cipher[0], cipher[2])

    @property
    def secure(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            ip = self.peer_ip
            if self.connections.add(self, ip):
                self._counted_ip = ip
            else:
                self._refused = True

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted_ip is not None:
            self.connections.remove(self, self._counted_ip)
            self._counted_ip = None
        if isinstance(self.envelope, MtaEnvelope):
            self.event_handler.envelope_done(self, self.envelope)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refused:
            log.info("%s refused: over %d connections", self.peer_ip, self.connections.max_per_ip)
            self._close_with(R.TOO_MANY_CONNECTIONS)
            return
        self._plain_replies = True
        await super()._handle_client()

    def _close_with(self, status: str) -> None:
        """Send a final reply and close (the transport flushes it first)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            self._writer.write(status.encode() + b"\r\n")
        except (RuntimeError, OSError):
            pass
        transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline; the timer is rescheduled only when it fires early (not per command)."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        if not self._timer_armed:
            self._timer_armed = True
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)

    def _timeout_check(self) -> None:
        self._timer_armed = False
        if self._deadline - self.loop.time() > 0.01:
            self._reset_timeout(self._deadline - self.loop.time())
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        self._close_with(R.TIMEOUT)
        if self.transport is not None:
            super()._timeout_cb()

    def shutdown(self) -> None:
        """Stop this session: now if idle, after the current command if busy."""
        self._closing = True
        if not self._busy:
            self._close_with(R.SHUTDOWN)

    def close_after_reply(self, status: str) -> None:
        """End the session once the command in progress has answered: ``status`` (a 421) comes last."""
        self._close_after = status

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def push(self, status: Any) -> None:
        if isinstance(status, bytes):  # AUTH challenges
            await super().push(status)
            return
        if self._plain_replies and status.startswith("220 "):
            await super().push(status)  # the greeting
            self._plain_replies = False
            return
        if not self._plain_replies:
            status = add_enhanced_code(status)
        await super().push(status)
        if reply_code(status) >= 400 and not status.startswith("421"):
            self._errors += 1
            if self._errors >= self.limits.max_errors:
                log.info("%s: %d errors, closing", self.peer_ip, self._errors)
                self._close_with(R.TOO_MANY_ERRORS)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's parser builds a typing.Protocol class per call; skip it for plain paths."""
        m = _SIMPLE_PATH.match(arg) if arg else None
        if m is not None and ".." not in m.group(1):
            return m.group(1), m.group(2) or ""
        return super()._getaddr(arg)

    # ------------------------------------------------------------- commands
    async def _refresh_size_limit(self) -> None:
        """The largest message for this transaction: the policy's when the admin set one (panel), else the config's.

        Asked at EHLO/HELO (EHLO announces it as SIZE) and again at MAIL, so a
        change made in the panel applies to the next transaction.
        """
        size_limit = getattr(self.event_handler, "size_limit", None)
        if size_limit is None:
            return
        try:
            self.data_size_limit = int(await size_limit())
        except Exception:  # noqa: BLE001 - keep the config's limit
            log.exception("message size policy unavailable")
            self.data_size_limit = self.limits.max_message_size

    @property
    def max_message_size(self) -> int:
        return self.data_size_limit or self.limits.max_message_size

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._refresh_size_limit()
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        await self._refresh_size_limit()
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.kind == "mx":
            await self.push(R.AUTH_NOT_HERE)
            return
        await super().smtp_AUTH(arg)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if _malformed_path(arg, "FROM:"):
            await self.push("501 5.5.4 Syntax error in MAIL FROM parameters")
            return
        if self.session is not None and self.session.host_name and not (self.envelope and self.envelope.mail_from):
            await self._refresh_size_limit()
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if _malformed_path(arg, "TO:"):
            await self.push("501 5.5.4 Syntax error in RCPT TO parameters")
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body, total = await self._read_data()
        problem = self._check_data(body, total)
        if problem is not None:
            self.event_handler.data_refused(self, self.envelope, problem, total)
            self._set_post_data_state()
            await self.push(problem)
            return
        assert body is not None
        content = _unstuff(body)
        if b"\n" in content and content.count(b"\n") != content.count(b"\r\n"):
            content = re.sub(rb"(?<!\r)\n", b"\r\n", content)
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> tuple[bytearray | None, int]:
        """Read up to CRLF.CRLF; returns (dot-stuffed body with its final CRLF, bytes read).

        The body is None when it exceeded the size limit (it is read and
        dropped so the session stays in step). What follows the end marker
        (pipelined commands) goes back to the reader.
        """
        reader = self._reader
        limit = self.max_message_size
        buf = bytearray(b"\r\n")  # so an empty message's "." line matches CRLF.CRLF too
        scan = 0
        total = 0
        dropped = False
        while True:
            chunk = await reader.read(READ_BLOCK)
            if not chunk:
                raise ConnectionResetError("connection closed during DATA")
            self._reset_timeout()
            buf += chunk
            total += len(chunk)
            end = buf.find(b"\r\n.\r\n", scan)
            if end >= 0:
                rest = bytes(buf[end + 5:])
                if rest:
                    _unread(reader, rest)
                total -= len(rest)
                if dropped or end > limit:
                    return None, total
                del buf[end + 2:]
                del buf[:2]
                return buf, total
            scan = max(0, len(buf) - 4)
            if total > limit + 5:
                dropped = True
                del buf[:-4]
                scan = 0

    def _check_data(self, body: bytearray | None, total: int) -> str | None:
        lim = self.limits
        if body is None:
            return with_text(R.DATA_TOO_BIG, f"limit {self.max_message_size} bytes")
        if body and max(map(len, body.split(b"\n"))) + 1 > lim.max_line_length:
            return with_text(R.DATA_LINE_TOO_LONG, f"limit {lim.max_line_length} bytes per line")
        if body.count(b"\r") != body.count(b"\r\n"):
            return R.DATA_BARE_CR
        head = body.find(b"\r\n\r\n")
        head_size = len(body) if head < 0 else head + 2
        if not body.startswith(b"\r\n") and head_size > lim.max_header_size:
            return with_text(R.DATA_HEADER_TOO_BIG, f"limit {lim.max_header_size} bytes")
        return None


def _unstuff(body: bytearray) -> bytes:
    """RFC 5321 4.5.2: drop the leading dot of every line that starts with one."""
    if body.startswith(b"."):
        del body[0]
    if b"\r\n." in body:
        return bytes(body.replace(b"\r\n.", b"\r\n"))
    return bytes(body)


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Give back bytes read past the end of DATA (pipelined commands).

    StreamReader has no public unread; aiosmtpd itself works on ``_buffer``
    (it clears it after STARTTLS), so this stays within what it relies on.
    """
    reader._buffer[0:0] = data  # type: ignore[attr-defined]
