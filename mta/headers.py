"""Header work on raw messages (CRLF line ends): Received, trace, fix-ups, From:.

Only the header section is touched; bodies are passed through as bytes.
"""

from __future__ import annotations

import email.utils
import re
import time

_SAFE_HELO = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def header_end(raw: bytes) -> int:
    """Offset of the blank line ending the header section (len(raw) if none)."""
    if raw.startswith(b"\r\n"):
        return 0
    i = raw.find(b"\r\n\r\n")
    return i + 2 if i >= 0 else len(raw)


def fields(raw: bytes) -> list[bytes]:
    """The header fields, each with its folded continuation lines and CRLF."""
    end = header_end(raw)
    out: list[bytes] = []
    lines = raw[:end].split(b"\r\n") if end else []
    if lines and not lines[-1]:
        lines.pop()
    for line in lines:
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line + b"\r\n"
        else:
            out.append(line + b"\r\n")
    return out


def field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def field_values(raw: bytes, name: str) -> list[str]:
    want = name.lower().encode()
    out = []
    for f in fields(raw):
        if field_name(f) == want:
            value = f.split(b":", 1)[1] if b":" in f else b""
            out.append(re.sub(r"\r\n[ \t]", " ", value.decode("utf-8", "surrogateescape")).strip())
    return out


def remove_fields(raw: bytes, names: tuple[str, ...] | list[str]) -> bytes:
    """Remove every header field with one of ``names`` (case-insensitive)."""
    end = header_end(raw)
    head = raw[:end].lower()
    wanted = {n.lower().encode() for n in names}
    if not any(n in head for n in wanted):
        return raw
    kept = [f for f in fields(raw) if field_name(f) not in wanted]
    return b"".join(kept) + raw[end:]


def strip_auth_results(raw: bytes, authserv_id: str) -> bytes:
    """Remove Authentication-Results fields that claim our authserv-id (RFC 8601 section 5)."""
    end = header_end(raw)
    if b"authentication-results" not in raw[:end].lower():
        return raw
    ours = authserv_id.lower().encode()
    kept = []
    for f in fields(raw):
        if field_name(f) == b"authentication-results":
            value = f.split(b":", 1)[1].strip().lower()
            ident = re.split(rb"[\s;]", value, maxsplit=1)[0] if value else b""
            if ident == ours:
                continue
        kept.append(f)
    return b"".join(kept) + raw[end:]


_date_cache: tuple[int, str] = (0, "")


def _now_rfc5322() -> str:
    """formatdate(localtime=True), computed at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


def received(
    *,
    helo: str,
    ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    tls: tuple[str, str, int] | None = None,
    recipient: str | None = None,
) -> bytes:
    """A Received field (RFC 5321 4.4) with the TLS version and cipher when there was TLS."""
    helo = _SAFE_HELO.sub("?", helo or "unknown")[:255]
    lines = [f"Received: from {helo} ([{ip}])", f"\tby {hostname} (appliance) with {protocol} id {queue_id}"]
    if tls:
        version, cipher, bits = tls
        lines.append(f"\t(version={version} cipher={cipher} bits={bits})")
    when = _now_rfc5322()
    if recipient:
        lines.append(f"\tfor <{recipient}>; {when}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{when}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def from_addresses(raw: bytes) -> list[str] | None:
    """Addresses in the From: field(s); None when there is none or one is unparsable."""
    values = field_values(raw, "from")
    if not values:
        return None
    pairs = email.utils.getaddresses(values)
    addresses = [addr for _name, addr in pairs]
    if not addresses or any("@" not in a for a in addresses):
        return None
    return addresses


def submission_fixups(raw: bytes, *, hostname: str, queue_id: str) -> bytes:
    """RFC 6409 8.2/8.3: add Date: and Message-ID: when the client left them out."""
    names = {field_name(f) for f in fields(raw)}
    add = b""
    if b"date" not in names:
        add += f"Date: {_now_rfc5322()}\r\n".encode()
    if b"message-id" not in names:
        add += f"Message-ID: <{queue_id}@{hostname}>\r\n".encode()
    if not add:
        return raw
    end = header_end(raw)
    return raw[:end] + add + raw[end:]
