"""SMTP dialogues over a raw socket, for tests that must control every byte.

    with Chat(port) as c:
        c.expect("220 ")
        c.send("EHLO test.example")
        c.expect("250 ")
        c.send("MAIL FROM:<a@b.example>")
        c.expect(r"250 2\\.1\\.0")

``expect`` reads one whole reply (all its lines) and matches a regular
expression against its last line; it returns the reply text. ``starttls``
upgrades the socket with an unverified client context (self-signed certs).
"""

from __future__ import annotations

import re
import socket
import ssl

ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def client_tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Chat:
    def __init__(self, port: int, host: str = "127.0.0.1", *, tls: bool = False, timeout: float = 15.0) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        if tls:
            self.sock = client_tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.replies: list[str] = []

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode()
        self.sock.sendall(data + b"\r\n")

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> str:
        """One whole reply (multi-line replies joined with newlines)."""
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        text = "\n".join(lines)
        self.replies.append(text)
        return text

    def expect(self, pattern: str) -> str:
        text = self.reply()
        last = text.rsplit("\n", 1)[-1]
        assert re.match(pattern, last), f"expected {pattern!r}, got {text!r}"
        return text

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server has closed the connection (after any pending replies)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def ehlo(self, name: str = "client.example") -> str:
        self.send(f"EHLO {name}")
        return self.expect("250 ")

    def starttls(self) -> None:
        self.send("STARTTLS")
        self.expect(r"220 2\.0\.0")
        assert not self.buf, "server sent data after 220 to STARTTLS"
        self.sock = client_tls_context().wrap_socket(self.sock, server_hostname="localhost")
