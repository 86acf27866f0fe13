"""A minimal HTTP/1.1 client on asyncio streams, for rspamd on the loopback.

rspamd's protocol is a POST of the raw message with a few headers and a JSON
answer; no client library is packaged here and a general one would be a new
dependency, so this is the small part we need: keep-alive connections in a
pool, Content-Length or chunked answers, one retry when a pooled connection
turns out to be closed, and one deadline for the whole exchange.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RESPONSE = 16 * 1024 * 1024
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HttpError(Exception):
    """Connecting, sending or reading failed (the peer may be down); ``str()`` says how."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def clean_header_value(value: str) -> str:
    """A header value with CR, LF and other control characters replaced: SMTP input is untrusted."""
    return "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(value)).strip()


class HttpPool:
    """Keep-alive connections to one ``http://host:port``."""

    def __init__(self, base_url: str, *, max_idle: int = 32) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs are supported, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self._max_idle = max_idle
        self._host_header = f"{self.host}:{self.port}"

    async def request(self, method: str, path: str, *, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"", timeout: float = 10.0) -> Response:
        """One exchange within ``timeout`` seconds; HttpError on any transport problem."""
        try:
            async with asyncio.timeout(timeout):
                return await self._request(method, path, headers or [], body)
        except TimeoutError:
            raise HttpError(f"no answer from {self._host_header} within {timeout:g}s") from None

    async def _request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        head = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self._host_header}", f"Content-Length: {len(body)}"]
        for name, value in headers:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"bad header name {name!r}")
            head.append(f"{name}: {clean_header_value(value)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body
        for attempt in (0, 1):
            conn, reused = self._take()
            if conn is None:
                try:
                    conn = await asyncio.open_connection(self.host, self.port)
                except OSError as exc:
                    raise HttpError(f"cannot connect to {self._host_header}: {exc.strerror or exc}") from None
            reader, writer = conn
            try:
                writer.write(data)
                await writer.drain()
                response, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
                writer.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection: once more on a new one
                if isinstance(exc, HttpError):
                    raise
                raise HttpError(f"connection to {self._host_header} failed: {exc}") from None
            except BaseException:
                writer.close()
                raise
            if keep and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                writer.close()
            return response
        raise HttpError(f"connection to {self._host_header} failed")  # pragma: no cover

    def _take(self) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return (reader, writer), True
            writer.close()
        return None, False

    async def close(self) -> None:
        while self._idle:
            _reader, writer = self._idle.pop()
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise HttpError("connection closed before an answer")
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP answer: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            raise HttpError("connection closed in the answer's headers")
        if line in (b"\r\n", b"\n"):
            break
        if len(headers) > 100:
            raise HttpError("too many headers in the answer")
        name, _sep, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError("bad chunk size in the answer") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            if len(body) + size > MAX_RESPONSE:
                raise HttpError("answer too large")
            body += await reader.readexactly(size)
            await reader.readline()
        return Response(status, headers, bytes(body)), keep
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HttpError("bad Content-Length in the answer") from None
        if length < 0 or length > MAX_RESPONSE:
            raise HttpError("answer too large")
        return Response(status, headers, await reader.readexactly(length)), keep
    rest = bytearray()
    while chunk := await reader.read(65536):
        rest += chunk
        if len(rest) > MAX_RESPONSE:
            raise HttpError("answer too large")
    return Response(status, headers, bytes(rest)), False
