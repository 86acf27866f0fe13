"""IMAP wire formats: strings, literals, flag lists, dates and modified UTF-7 names."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterable

_SAFE_QUOTED = re.compile(rb'^[\x20\x21\x23-\x5b\x5d-\x7e]*$')  # printable ASCII except " and \
_ATOM_BAD = re.compile(rb'[\x00-\x20\x7f-\xff(){%*"\\\]]')
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTH_NUM = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}


def quote(data: bytes | str | None) -> bytes:
    """An IMAP string: quoted when it can be, else a literal; None is NIL."""
    if data is None:
        return b"NIL"
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) < 1024 and _SAFE_QUOTED.match(data):
        return b'"' + data + b'"'
    if len(data) < 1024 and b"\r" not in data and b"\n" not in data and b"\0" not in data and data.isascii():
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def astring(data: bytes | str) -> bytes:
    """An atom when it is one, else a string (for mailbox names)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if data and not _ATOM_BAD.search(data) and data.upper() != b"NIL":
        return data
    return quote(data)


def flag_list(flags: Iterable[str]) -> bytes:
    return ("(" + " ".join(sorted(flags)) + ")").encode()


def internal_date(ts: float) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` in the server's local zone."""
    t = time.localtime(ts)
    off = t.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off) // 60
    return (
        f'"{t.tm_mday:2d}-{MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} '
        f'{sign}{off // 60:02d}{off % 60:02d}"'
    ).encode()


_DATE_TIME = re.compile(r"^\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$")
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


def parse_date_time(text: str) -> float:
    """APPEND's date-time into a POSIX time; ValueError if malformed."""
    m = _DATE_TIME.match(text)
    if not m or m.group(2).lower() not in MONTH_NUM:
        raise ValueError("bad date-time")
    import calendar

    day, mon, year = int(m.group(1)), MONTH_NUM[m.group(2).lower()], int(m.group(3))
    hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61 and 1900 <= year <= 9999):
        raise ValueError("bad date-time")
    off = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    if m.group(7) == "-":
        off = -off
    return calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0)) - off


def parse_date(text: str) -> tuple[int, int, int]:
    """SEARCH's date (``1-Feb-1994``) as (year, month, day); ValueError if malformed."""
    m = _DATE.match(text.strip('"'))
    if not m or m.group(2).lower() not in MONTH_NUM:
        raise ValueError("bad date")
    y, mo, d = int(m.group(3)), MONTH_NUM[m.group(2).lower()], int(m.group(1))
    import datetime

    datetime.date(y, mo, d)  # validates
    return y, mo, d


# ------------------------------------------------------------ modified UTF-7 (RFC 3501 5.1.3)


def _b64_mod(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=").replace(b"/", b",")


def encode_mailbox(name: str) -> bytes:
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.extend(b"&" + _b64_mod("".join(pending).encode("utf-16-be")) + b"-")
            pending.clear()

    for ch in name:
        o = ord(ch)
        if 0x20 <= o <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode())
        else:
            pending.append(ch)
    flush()
    return bytes(out)


_MUTF7_RUN = re.compile(rb"&([A-Za-z0-9+,]*)-")


def decode_mailbox(raw: bytes) -> str:
    """Modified UTF-7 to text; raw 8-bit UTF-8 is accepted as is. ValueError if malformed."""
    if any(b > 0x7E for b in raw):
        return raw.decode("utf-8")  # strict: raises UnicodeDecodeError (a ValueError)
    out: list[str] = []
    pos = 0
    while True:
        i = raw.find(b"&", pos)
        if i < 0:
            out.append(raw[pos:].decode("ascii"))
            break
        out.append(raw[pos:i].decode("ascii"))
        m = _MUTF7_RUN.match(raw, i)
        if not m:
            raise ValueError("bad modified UTF-7")
        b = m.group(1)
        if not b:
            out.append("&")
        else:
            data = base64.b64decode(b.replace(b",", b"/") + b"=" * (-len(b) % 4))
            if len(data) % 2:
                raise ValueError("bad modified UTF-7")
            out.append(data.decode("utf-16-be"))
        pos = m.end()
    return "".join(out)
