"""POP3 (RFC 1939, 2449 CAPA, 2595 STLS, 5034 SASL PLAIN) on the INBOX.

At login the session takes a snapshot of INBOX (UIDs and sizes, index rows
only). RETR and TOP decrypt in the thread pool; RETR sets \\Seen. DELE only
marks; QUIT flags the marked messages \\Deleted and expunges exactly those
UIDs, so mail that arrived or was changed through IMAP meanwhile is left
alone. UIDL is ``<UIDVALIDITY>.<UID>``, stable across sessions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Any

from storage.errors import StoreError

from .conn import Connection
from .login import FAILURE_TEXT, REVOKED_TEXT, decode_plain, login

log = logging.getLogger("imapd.pop3")

MAX_LINE = 4096
_DOT = re.compile(rb"(?m)^\.")
_EOL = re.compile(rb"\r?\n")


class Pop3Connection(Connection):
    protocol_name = "pop3"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._buf = bytearray()
        self._lines: deque[bytes] = deque()
        self._running = False
        self._hold = False
        self._want_line: asyncio.Future | None = None
        self.username: str | None = None
        self.mailbox: Any = None
        self.msgs: list[tuple[int, int]] = []  # (uid, size)
        self.deleted: set[int] = set()  # message numbers
        self.errors = 0
        self.auth_failures = 0

    # ------------------------------------------------------------ plumbing
    def greet(self) -> None:
        self.send(b"+OK " + self.shared.hostname.encode() + b" POP3 ready\r\n")

    def refuse_busy(self) -> None:
        self.close(b"-ERR [SYS/TEMP] Too many connections from your address\r\n")

    def bye_text(self, text: str) -> bytes:
        return b"-ERR " + text.encode() + b"\r\n"

    def revoked_text(self, reason: str) -> bytes:
        code = b"[SYS/PERM] " if reason in ("disabled", "deleted") else b"[AUTH] "
        return b"-ERR " + code + REVOKED_TEXT.get(reason, REVOKED_TEXT["ended"])[1].encode() + b"\r\n"

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.last_activity = time.monotonic()
        if self.closing:
            return
        self._buf += data
        self._frame()

    def _frame(self) -> None:
        while not self.closing and not (self._hold and self._want_line is None):
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self.close(b"-ERR Line too long\r\n")
                break
            line = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[:nl + 1]
            if len(line) > MAX_LINE:
                self.close(b"-ERR Line too long\r\n")
                break
            if self._want_line is not None:
                fut, self._want_line = self._want_line, None
                fut.set_result(line)
                continue
            self._lines.append(line)
            verb = line.split(b" ", 1)[0].upper()
            if verb in (b"STLS", b"AUTH"):
                self._hold = True
            if len(self._lines) > 100:
                self.close(b"-ERR Too many pipelined commands\r\n")
                return
            if not self._running:
                self._running = True
                self.shared.loop.create_task(self._run())

    def read_line(self) -> asyncio.Future:
        fut = self.shared.loop.create_future()
        self._want_line = fut
        self._frame()
        return fut

    async def _run(self) -> None:
        try:
            while self._lines and not self.closing:
                line = self._lines.popleft()
                await self._command(line)
                await self.drain()
        except ConnectionError:
            pass
        except Exception:  # noqa: BLE001
            log.exception("POP3 session failed")
            self.close(b"-ERR [SYS/TEMP] Internal error\r\n")
        finally:
            self._running = False

    def ok(self, text: bytes = b"") -> None:
        self.send(b"+OK" + (b" " + text if text else b"") + b"\r\n")

    def err(self, text: bytes) -> None:
        self.send(b"-ERR " + text + b"\r\n")
        self.errors += 1
        if self.errors > 20:
            self.close(b"-ERR Too many errors\r\n")

    # ------------------------------------------------------------ commands
    async def _command(self, line: bytes) -> None:
        verb, _, rest = line.partition(b" ")
        verb_s = verb.decode("ascii", "replace").upper()
        args = rest.decode("utf-8", "replace").split() if verb_s not in ("PASS",) else [rest.decode("utf-8", "replace")]
        try:
            handler = getattr(self, "p_" + verb_s.lower(), None) if verb_s.isalpha() else None
            if handler is None:
                self.err(b"Unknown command")
                return
            if verb_s in ("STAT", "LIST", "RETR", "DELE", "RSET", "TOP", "UIDL") and self.mailbox is None:
                self.err(b"Log in first")
                return
            await handler(args)
        finally:
            if verb_s in ("STLS", "AUTH"):
                self._hold = False
                self._frame()

    async def p_capa(self, args: list[str]) -> None:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.mailbox is None:
            if self.secure or not self.starttls_allowed:
                caps += [b"USER", b"SASL PLAIN"]
            else:
                caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION mail-appliance")
        self.send(b"+OK Capability list follows\r\n" + b"".join(c + b"\r\n" for c in caps) + b".\r\n")

    async def p_noop(self, args: list[str]) -> None:
        self.ok()

    async def p_stls(self, args: list[str]) -> None:
        if self.secure or not self.starttls_allowed or self.shared.tls_options is None:
            self.err(b"STLS not available")
            return
        if self.mailbox is not None:
            self.err(b"Already logged in")
            return
        self.ok(b"Begin TLS negotiation")
        self._buf.clear()  # plaintext pipelined after STLS is discarded
        self._lines.clear()
        self.start_tls()

    def _plaintext_refused(self) -> bool:
        if not self.secure and self.starttls_allowed:
            self.err(b"[AUTH] Plaintext authentication disallowed; use STLS first")
            return True
        return False

    async def p_user(self, args: list[str]) -> None:
        if self.mailbox is not None:
            self.err(b"Already logged in")
        elif self._plaintext_refused():
            pass
        elif len(args) != 1:
            self.err(b"USER needs a name")
        else:
            self.username = args[0]
            self.ok()

    async def p_pass(self, args: list[str]) -> None:
        if self.mailbox is not None:
            self.err(b"Already logged in")
        elif self._plaintext_refused():
            pass
        elif self.username is None:
            self.err(b"USER first")
        else:
            name, self.username = self.username, None
            await self._login(name, args[0] if args else "")

    async def p_auth(self, args: list[str]) -> None:
        if not args:
            self.send(b"+OK\r\nPLAIN\r\n.\r\n")
            return
        if self.mailbox is not None:
            self.err(b"Already logged in")
            return
        if args[0].upper() != "PLAIN":
            self.err(b"Unsupported mechanism")
            return
        if self._plaintext_refused():
            return
        if len(args) > 1:
            initial = args[1].encode()
            if initial == b"=":
                initial = b""
        else:
            self.send(b"+ \r\n")
            initial = await self.read_line()
        if initial == b"*":
            self.err(b"Authentication cancelled")
            return
        creds = decode_plain(initial)
        if creds is None:
            self.err(b"Malformed PLAIN response")
            return
        await self._login(*creds)

    async def _login(self, username: str, secret: str) -> None:
        result = await login(self, "pop3", username, secret)
        if not result.ok:
            if result.reason in FAILURE_TEXT:
                code = b"[SYS/TEMP] " if result.reason in ("locked", "ip_blocked", "limit") else b"[SYS/PERM] "
                self.err(code + FAILURE_TEXT[result.reason].encode())
            else:
                self.err(b"[AUTH] Authentication failed")
            self.auth_failures += 1
            if self.auth_failures >= self.shared.limits.max_auth_failures:
                self.close(b"-ERR Too many failed logins\r\n")
            return
        store, user = self.shared.store, self.user

        def snapshot() -> tuple[Any, list[tuple[int, int]]]:
            mb = store.mail.get_mailbox(user.id, "INBOX")
            return mb, [(m.uid, m.size) for m in store.mail.messages(mb.id)]

        try:
            self.mailbox, self.msgs = await self.run(snapshot)
        except StoreError as exc:
            log.warning("POP3 maildrop of %s: %s", user.email, exc)
            self.err(b"[SYS/TEMP] Mailbox unavailable")
            self.close()
            return
        self.ok(b"Logged in, %d messages" % len(self.msgs))

    def _msg(self, arg: str) -> int | None:
        if not arg.isdigit() or not 1 <= int(arg) <= len(self.msgs):
            self.err(b"No such message")
            return None
        n = int(arg)
        if n in self.deleted:
            self.err(b"Message already deleted")
            return None
        return n

    async def p_stat(self, args: list[str]) -> None:
        live = [s for i, (_, s) in enumerate(self.msgs, 1) if i not in self.deleted]
        self.ok(b"%d %d" % (len(live), sum(live)))

    async def p_list(self, args: list[str]) -> None:
        if args:
            n = self._msg(args[0])
            if n is not None:
                self.ok(b"%d %d" % (n, self.msgs[n - 1][1]))
            return
        body = b"".join(b"%d %d\r\n" % (i, s) for i, (_, s) in enumerate(self.msgs, 1) if i not in self.deleted)
        self.send(b"+OK scan listing follows\r\n" + body + b".\r\n")

    async def p_uidl(self, args: list[str]) -> None:
        v = self.mailbox.uidvalidity
        if args:
            n = self._msg(args[0])
            if n is not None:
                self.ok(b"%d %d.%d" % (n, v, self.msgs[n - 1][0]))
            return
        body = b"".join(b"%d %d.%d\r\n" % (i, v, u) for i, (u, _) in enumerate(self.msgs, 1) if i not in self.deleted)
        self.send(b"+OK unique-id listing follows\r\n" + body + b".\r\n")

    async def p_dele(self, args: list[str]) -> None:
        n = self._msg(args[0]) if args else None
        if not args:
            self.err(b"DELE needs a message number")
        if n is not None:
            self.deleted.add(n)
            self.ok(b"Message %d deleted" % n)

    async def p_rset(self, args: list[str]) -> None:
        self.deleted.clear()
        self.ok()

    async def p_retr(self, args: list[str]) -> None:
        n = self._msg(args[0]) if args else None
        if not args:
            self.err(b"RETR needs a message number")
        if n is not None:
            await self._send_message(n, None)

    async def p_top(self, args: list[str]) -> None:
        if len(args) != 2 or not args[1].isdigit():
            self.err(b"TOP needs a message number and a line count")
            return
        n = self._msg(args[0])
        if n is not None:
            await self._send_message(n, int(args[1]))

    async def _send_message(self, n: int, lines: int | None) -> None:
        store, user, mb = self.shared.store, self.user, self.mailbox
        uid = self.msgs[n - 1][0]

        def work() -> bytes | None:
            found = store.mail.messages(mb.id, [uid])
            if not found:
                return None
            with store.mail.open_blob(user, found[0]) as r:
                data = r.read_all()
            if lines is None:
                if "\\Seen" not in found[0].flags:
                    store.mail.store_flags(mb.id, [uid], ["\\Seen"], "add", durable=False)
            else:
                data = _top(data, lines)
            data = _EOL.sub(b"\r\n", data)
            if not data.endswith(b"\r\n"):
                data += b"\r\n"
            return _DOT.sub(b"..", data)

        data = await self.run(work)
        if data is None:
            self.err(b"Message was removed by another session")
            return
        self.send(b"+OK %d octets\r\n" % self.msgs[n - 1][1])
        for k in range(0, len(data), 256 * 1024):
            self.send(data[k:k + 256 * 1024])
            await self.drain()
        self.send(b".\r\n")

    async def p_quit(self, args: list[str]) -> None:
        if self.mailbox is not None and self.deleted:
            uids = [self.msgs[i - 1][0] for i in sorted(self.deleted)]
            store, mb = self.shared.store, self.mailbox

            def update() -> None:
                store.mail.store_flags(mb.id, uids, ["\\Deleted"], "add")
                store.mail.expunge(mb.id, uids)

            try:
                await self.run(update)
            except StoreError as exc:
                log.warning("POP3 update: %s", exc)
                self.close(b"-ERR [SYS/TEMP] Some messages could not be deleted\r\n")
                return
        self.close(b"+OK Bye\r\n")


def _top(data: bytes, lines: int) -> bytes:
    m = re.search(rb"\r?\n\r?\n", data)
    if not m:
        return data
    head, body = data[:m.end()], data[m.end():]
    if lines == 0:
        return head
    parts = body.split(b"\n", lines)
    return head + b"\n".join(parts[:lines]) + (b"\n" if len(parts) > lines else b"")
