"""A small asyncio SMTP client for relaying (RFC 5321), with bounded timeouts everywhere.

    client, greeting = await SmtpClient.connect(ip, 25, host="mx.example.org", connect_timeout=30, timeout=300)
    await client.ehlo("mail.example.test")
    if client.has("STARTTLS"):
        await client.starttls(ctx, "mx.example.org"); await client.ehlo("mail.example.test")
    result = await client.send("a@example.test", ["b@example.org"], raw)
    result.replies["b@example.org"]  # Reply(250, ...) when the final reply accepted it

MAIL, RCPT and DATA are pipelined (RFC 2920) when the server offers
PIPELINING. SIZE, 8BITMIME and SMTPUTF8 are used when offered; a message that
needs SMTPUTF8 fails permanently at a server without it (RFC 6531 3.4). A
connection stays usable after a transaction (``RSET`` after a failed one), so
the caller can send several messages over it.

Errors: ``SmtpError`` (with the reply when there was one, and whether it is
temporary); a dropped connection or a timeout is a temporary ``SmtpError``
with ``reply=None``. Replies longer than 200 lines or lines over 64 KB are
refused.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")
MAX_REPLY_LINES = 200


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def text(self) -> str:
        return " ".join(line.strip() for line in self.lines).strip()

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced status code, from the reply or its class."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and m.group(1)[0] == str(self.code)[0]:
            return m.group(1)
        return f"{str(self.code)[0]}.0.0" if self.code >= 400 else "2.0.0"

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class SmtpError(Exception):
    def __init__(self, message: str, *, reply: Reply | None = None, temporary: bool = True, stage: str = "") -> None:
        super().__init__(message)
        self.reply = reply
        self.temporary = temporary if reply is None else reply.temporary
        self.stage = stage

    @property
    def status(self) -> str:
        if self.reply is not None:
            return self.reply.status
        if not self.temporary:
            return "5.0.0"
        return "4.4.1" if self.stage == "connect" else "4.7.5" if self.stage == "starttls" else "4.4.2"


@dataclass
class SendResult:
    replies: dict[str, Reply] = field(default_factory=dict)  # per recipient: the reply that decided it
    final: Reply | None = None  # the reply after the data, when data was sent

    def delivered(self) -> list[str]:
        return [r for r, rep in self.replies.items() if rep.code // 100 == 2]


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: dot-stuffed, CRLF-terminated, with the final ``.``."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


def needs_smtputf8(sender: str, recipients: list[str]) -> bool:
    return not all(a.isascii() for a in (sender, *recipients))


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, host: str, ip: str, port: int,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.ip = ip
        self.port = port
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.broken = False
        self.transactions = 0

    # ---------------------------------------------------------- connect
    @classmethod
    async def connect(cls, ip: str, port: int, *, host: str, connect_timeout: float, timeout: float,
                      ssl_context: ssl.SSLContext | None = None) -> tuple[SmtpClient, Reply]:
        """Open a connection (TLS from the first byte with ``ssl_context``) and read the greeting."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ip, port, ssl=ssl_context, server_hostname=host if ssl_context else None,
                                        limit=65536),
                connect_timeout,
            )
        except TimeoutError:
            raise SmtpError(f"connection to {host}[{ip}]:{port} timed out", stage="connect") from None
        except ssl.SSLError as exc:
            raise SmtpError(f"TLS with {host}[{ip}]:{port} failed: {exc.reason or exc}", stage="connect") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SmtpError(f"connection to {host}[{ip}]:{port} failed: {reason}", stage="connect") from None
        client = cls(reader, writer, host=host, ip=ip, port=port, timeout=timeout)
        try:
            greeting = await client.read_reply("greeting")
        except BaseException:
            client.close()
            raise
        if greeting.code != 220:
            client.close()
            raise SmtpError(f"{host}[{ip}] greeted with {greeting}", reply=greeting, stage="greeting")
        return client, greeting

    @property
    def label(self) -> str:
        return f"{self.host}[{self.ip}]"

    @property
    def tls(self) -> tuple[str, str] | None:
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return (obj.version() or "", cipher[0] if cipher else "")

    @property
    def usable(self) -> bool:
        return not self.broken and not self.reader.at_eof() and not self.writer.is_closing()

    def has(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    # ---------------------------------------------------------- wire
    async def read_reply(self, stage: str, timeout: float | None = None) -> Reply:
        lines: list[str] = []
        code = 0
        try:
            while True:
                raw = await asyncio.wait_for(self.reader.readline(), timeout or self.timeout)
                if not raw:
                    raise SmtpError(f"{self.label} closed the connection ({stage})", stage=stage)
                if not raw.endswith(b"\n"):
                    raise SmtpError(f"{self.label} sent an overlong line ({stage})", stage=stage)
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                    raise SmtpError(f"{self.label} sent a malformed reply {line[:80]!r} ({stage})", stage=stage)
                code = int(line[:3])
                lines.append(line[4:])
                if len(lines) > MAX_REPLY_LINES:
                    raise SmtpError(f"{self.label} sent an endless reply ({stage})", stage=stage)
                if len(line) == 3 or line[3] == " ":
                    return Reply(code, tuple(lines))
        except TimeoutError:
            self.broken = True
            raise SmtpError(f"{self.label} did not answer within {timeout or self.timeout:g}s ({stage})", stage=stage) from None
        except ValueError:  # LimitOverrunError: a line over 64 KB
            self.broken = True
            raise SmtpError(f"{self.label} sent an overlong line ({stage})", stage=stage) from None
        except (OSError, ssl.SSLError) as exc:
            self.broken = True
            raise SmtpError(f"{self.label}: {exc} ({stage})", stage=stage) from None
        except SmtpError:
            self.broken = True
            raise

    async def _write(self, data: bytes, stage: str) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            self.broken = True
            raise SmtpError(f"{self.label}: sending timed out ({stage})", stage=stage) from None
        except (OSError, ssl.SSLError) as exc:
            self.broken = True
            raise SmtpError(f"{self.label}: {exc} ({stage})", stage=stage) from None

    async def command(self, line: str, stage: str, timeout: float | None = None) -> Reply:
        await self._write(line.encode("utf-8") + b"\r\n", stage)
        reply = await self.read_reply(stage, timeout)
        if reply.code == 421:
            self.broken = True
        return reply

    # ---------------------------------------------------------- session
    async def ehlo(self, name: str) -> Reply:
        reply = await self.command(f"EHLO {name}", "ehlo")
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _sp, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params
            return reply
        if reply.code >= 500 and reply.code != 554:
            reply = await self.command(f"HELO {name}", "helo")
            if reply.code == 250:
                self.extensions = {}
                return reply
        raise SmtpError(f"{self.label} refused EHLO: {reply}", reply=reply, stage="ehlo")

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        reply = await self.command("STARTTLS", "starttls")
        if reply.code != 220:
            raise SmtpError(f"{self.label} refused STARTTLS: {reply}", reply=Reply(451, reply.lines) if reply.code >= 500 else reply,
                            stage="starttls")
        try:
            await self.writer.start_tls(context, server_hostname=server_hostname, ssl_handshake_timeout=self.timeout)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self.broken = True
            raise SmtpError(f"TLS with {self.label} failed: {getattr(exc, 'reason', None) or exc}", stage="starttls") from None
        except (OSError, TimeoutError) as exc:
            self.broken = True
            raise SmtpError(f"TLS with {self.label} failed: {exc}", stage="starttls") from None
        self.extensions = {}

    async def auth(self, user: str, password: str) -> None:
        mechanisms = set(self.extensions.get("AUTH", "").upper().split())
        if "PLAIN" in mechanisms or not mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}", "auth")
        elif "LOGIN" in mechanisms:
            reply = await self.command("AUTH LOGIN", "auth")
            if reply.code == 334:
                reply = await self.command(base64.b64encode(user.encode()).decode(), "auth")
            if reply.code == 334:
                reply = await self.command(base64.b64encode(password.encode()).decode(), "auth")
        else:
            raise SmtpError(f"{self.label} offers no AUTH mechanism we know ({' '.join(sorted(mechanisms))})",
                            temporary=True, stage="auth")
        if reply.code != 235:
            # a refused login is our configuration's problem, not the message's: retry later
            raise SmtpError(f"{self.label} refused our login: {reply}", reply=Reply(454, reply.lines), stage="auth")

    async def rset(self) -> None:
        try:
            reply = await self.command("RSET", "rset")
        except SmtpError:
            return
        if reply.code != 250:
            self.broken = True

    async def quit(self) -> None:
        if self.usable:
            try:
                await asyncio.wait_for(self.command("QUIT", "quit"), 5)
            except (SmtpError, TimeoutError):
                pass
        self.close()

    def close(self) -> None:
        self.broken = True
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass

    # ---------------------------------------------------------- mail
    def _mail_command(self, sender: str, data: bytes, utf8: bool) -> str:
        opts = []
        if self.has("SIZE"):
            opts.append(f"SIZE={len(data)}")
        if self.has("8BITMIME") and not data.isascii():
            opts.append("BODY=8BITMIME")
        if utf8:
            opts.append("SMTPUTF8")
        return f"MAIL FROM:<{sender}>" + "".join(" " + o for o in opts)

    async def send(self, sender: str, recipients: list[str], data: bytes) -> SendResult:
        """One transaction. Per-recipient replies in the result; raises SmtpError when the session fails."""
        result = SendResult()
        utf8 = needs_smtputf8(sender, recipients)
        if utf8 and not self.has("SMTPUTF8"):
            reply = Reply(553, ("5.6.7 the receiving server does not support SMTPUTF8 (non-ASCII addresses)",))
            result.replies = dict.fromkeys(recipients, reply)
            return result
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and int(limit) and len(data) > int(limit):
            reply = Reply(552, (f"5.3.4 message too big for {self.host} (limit {limit} bytes)",))
            result.replies = dict.fromkeys(recipients, reply)
            return result
        self.transactions += 1
        mail = self._mail_command(sender, data, utf8)
        rcpts = [f"RCPT TO:<{r}>" for r in recipients]
        if self.has("PIPELINING"):
            await self._write(("\r\n".join([mail, *rcpts, "DATA"]) + "\r\n").encode("utf-8"), "mail")
            mail_reply = await self.read_reply("mail")
            rcpt_replies = [await self.read_reply("rcpt") for _ in recipients]
            data_reply = await self.read_reply("data")
        else:
            mail_reply = await self.command(mail, "mail")
            rcpt_replies, data_reply = [], None
            if mail_reply.ok:
                for line in rcpts:
                    rcpt_replies.append(await self.command(line, "rcpt"))
                    if rcpt_replies[-1].code == 421:
                        break
            if rcpt_replies and any(r.ok for r in rcpt_replies):
                data_reply = await self.command("DATA", "data")
        for reply in (mail_reply, *rcpt_replies, *([data_reply] if data_reply else [])):
            if reply.code == 421:
                self.broken = True
        if not mail_reply.ok:
            result.replies = dict.fromkeys(recipients, mail_reply)
            await self._abandon(data_reply)
            return result
        for rcpt, reply in zip(recipients, rcpt_replies, strict=False):
            result.replies[rcpt] = reply
        for rcpt in recipients[len(rcpt_replies):]:
            result.replies[rcpt] = Reply(451, ("4.4.2 connection ended before this recipient",))
        accepted = [r for r in recipients if result.replies[r].ok]
        if not accepted:
            await self._abandon(data_reply)
            return result
        if data_reply is None or data_reply.code != 354:
            reply = data_reply or Reply(451, ("4.4.2 no reply to DATA",))
            for r in accepted:
                result.replies[r] = reply
            await self.rset()
            return result
        await self._write(dot_stuff(data), "data")
        final = await self.read_reply("end of data", max(self.timeout, 600.0) if self.timeout >= 60 else self.timeout)
        result.final = final
        for r in accepted:
            result.replies[r] = final
        if final.code == 421:
            self.broken = True
        elif not final.ok:
            await self.rset()
        return result

    async def _abandon(self, data_reply: Reply | None) -> None:
        """After a refused MAIL or every RCPT refused: end a DATA the server accepted anyway, then RSET."""
        if self.broken:
            return
        if data_reply is not None and data_reply.code == 354:
            await self._write(b".\r\n", "data")
            await self.read_reply("end of data")
        await self.rset()
