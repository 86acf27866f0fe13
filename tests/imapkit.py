"""Helpers for the IMAP and POP3 end-to-end tests: accounts, clients, a raw dialogue.

``account(inst, "fetch")`` makes (once per test session) a user of its own
for a test module, so modules sharing the one ``server`` never see each
other's mail. ``Chat`` speaks raw IMAP/POP3 for the cases imaplib cannot
express (literals, pipelining, hostile input), in the dialogue style of
maddy's and aiosmtpd's tests.
"""

from __future__ import annotations

import atexit
import imaplib
import poplib
import re
import socket
import ssl
import time
import uuid
from email.utils import formatdate

PASSWORD = "imap-test-Pa55word"
_store = {}
_accounts: dict[tuple[str, str], str] = {}


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def store_of(inst):  # type: ignore[no-untyped-def]
    """One Store per instance in this (test) process: another process from the server's view."""
    key = str(inst.config_path)
    if key not in _store:
        _store[key] = inst.store()
        atexit.register(_store[key].close)
    return _store[key]


def account(inst, name: str, **fields) -> str:  # type: ignore[no-untyped-def]
    """The address of a test user of its own (password PASSWORD), created on first use."""
    key = (str(inst.config_path), name)
    if key not in _accounts:
        email = f"imap-{name}@{inst.domain}"
        store = store_of(inst)
        if store.directory.find_user(email) is None:
            store.create_user(email, password=PASSWORD)
        if fields:
            store.directory.update_user(email, **fields)
        _accounts[key] = email
    return _accounts[key]


def user_of(inst, email: str):  # type: ignore[no-untyped-def]
    return store_of(inst).directory.get_user(email)


def imap(inst, email: str, password: str = PASSWORD, *, implicit: bool = True) -> imaplib.IMAP4:
    """A logged-in imaplib client over TLS (implicit, or STARTTLS on the plain port)."""
    if implicit:
        c = imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=tls_context(), timeout=30)
    else:
        c = imaplib.IMAP4("127.0.0.1", inst.ports["imap"], timeout=30)
        c.starttls(ssl_context=tls_context())
    typ, data = c.login(email, password)
    assert typ == "OK", data
    return c


def pop3(inst, email: str, password: str = PASSWORD) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL("127.0.0.1", inst.ports["pop3s"], context=tls_context(), timeout=30)
    p.user(email)
    p.pass_(password)
    return p


def ok(result):  # type: ignore[no-untyped-def]
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def new_box(c: imaplib.IMAP4, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ok(c.create(name))
    return name


def message(subject: str = "hello", body: str = "Body text.\r\n", *, sender: str = "Alice <alice@example.test>",
            to: str = "bob@example.test", extra: str = "", date: float | None = None) -> bytes:
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate(date or 1700000000)}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n{extra}")
    return (head + "\r\n" + body).encode()


def multipart() -> bytes:
    return (
        b"From: Carol <carol@example.test>\r\nTo: dave@example.test, \"Eve E.\" <eve@example.test>\r\n"
        b"Cc: team: frank@example.test, grace@example.test;\r\n"
        b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= report\r\nDate: Tue, 2 Jan 2024 08:30:00 +0100\r\n"
        b"Message-ID: <mp1@example.test>\r\nIn-Reply-To: <orig@example.test>\r\nX-Custom: Zebra stripes\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
        b"preamble\r\n--outer\r\n"
        b"Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
        b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Plain caf=C3=A9 text with pineapple\r\n"
        b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML <b>mango</b> text</p>\r\n"
        b"--inner--\r\n"
        b"--outer\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
        b"Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"AAECAwQFBgcICQ==\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: Inner <inner@example.test>\r\nSubject: inner message\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Content-Type: text/plain\r\n\r\nInner body line\r\n"
        b"--outer--\r\nepilogue\r\n"
    )


def fetch_map(data: list) -> dict[int, dict[str, object]]:
    """imaplib FETCH data -> {seq: {ITEM: value}} with literals attached to the item before them."""
    out: dict[int, dict[str, object]] = {}
    for part in data:
        if part is None or part == b")":
            continue
        if isinstance(part, tuple):
            head, lit = part
            m = re.match(rb"(\d+) \(", head)
            if m:
                seq = int(m.group(1))
                rest = head[m.end():]
            else:
                rest = head.lstrip()
            out.setdefault(seq, {})
            _items(rest, out[seq], lit)
        else:
            m = re.match(rb"(\d+) \((.*)\)$", part)
            if m:
                seq = int(m.group(1))
                out.setdefault(seq, {})
                _items(m.group(2), out[seq], None)
            else:
                _items(part, out[seq], None)
    return out


def _items(text: bytes, into: dict, lit: bytes | None) -> None:
    for m in re.finditer(rb"(UID|RFC822\.SIZE|MODSEQ) \(?(\d+)\)?", text):
        into[m.group(1).decode()] = int(m.group(2))
    m = re.search(rb"FLAGS \(([^)]*)\)", text)
    if m:
        into["FLAGS"] = set(m.group(1).decode().split())
    if lit is not None:
        m = re.search(rb"([A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?) ~?\{\d+\}$", text)
        if m:
            into[m.group(1).decode()] = lit


class Chat:
    """A raw line dialogue with a server: ``send`` lines, ``expect`` a matching line."""

    def __init__(self, port: int, *, tls: bool = False, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""
        self.lines: list[bytes] = []

    def starttls(self) -> None:
        self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        if not data.endswith(b"\n"):
            data += b"\r\n"
        self.sock.sendall(data)

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; last lines: {self.lines[-5:]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.rstrip(b"\r")
        self.lines.append(line)
        return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def expect(self, pattern: str | bytes) -> bytes:
        """Read lines until one matches ``pattern`` (a regex, from the line's start)."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        while True:
            line = self.readline()
            if rx.match(line):
                return line

    def tagged(self, tag: str) -> tuple[bytes, list[bytes]]:
        """(the tagged line, the untagged lines before it) — literals are read and kept inline."""
        untagged: list[bytes] = []
        while True:
            line = self.readline()
            m = re.search(rb"\{(\d+)\}$", line)
            if m:
                line += b"\r\n" + self.read_exact(int(m.group(1))) + self.readline()
            if line.startswith(tag.encode() + b" "):
                return line, untagged
            untagged.append(line)

    def closed(self, timeout: float = 5) -> bool:
        """True if the server closes the connection within ``timeout`` (pending lines are read)."""
        self.sock.settimeout(timeout)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def login(self, email: str, password: str = PASSWORD) -> None:
        self.expect(r"\* OK")
        self.send(f'L1 LOGIN "{email}" "{password}"')
        line, _ = self.tagged("L1")
        assert line.startswith(b"L1 OK"), line
