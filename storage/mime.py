"""A bounded scan of a message's MIME structure, done once at ingest.

The result (byte offsets of every part's header and body, content types,
parameters, line counts, the envelope headers) is sealed into the index so
IMAP can answer ENVELOPE, BODYSTRUCTURE and ``BODY[1.2]`` without parsing the
message again, and can read just the bytes of one part from the blob.
Memory and time are linear in the message size; depth and part count are
capped, and anything past a cap is described as an opaque leaf.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header

ENVELOPE_HEADERS = ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to", "message-id")
SUMMARY_HEADERS = ENVELOPE_HEADERS + ("references", "list-id", "content-type", "auto-submitted", "precedence")
_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def split_header(raw: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset where the body starts (after the blank line), or ``end``."""
    end = len(raw) if end is None else end
    if raw[start:start + 2] == b"\r\n":
        return start + 2
    if raw[start:start + 1] == b"\n":
        return start + 1
    m = _HEADER_END.search(raw, start, end)
    return m.end() if m else end


def parse_headers(block: bytes, limit: int = 2000) -> list[tuple[str, str]]:
    """Unfold a header block into (lower-case name, raw value) pairs."""
    text = block.decode("utf-8", "replace")
    out: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", text):
        if not line:
            continue
        if line[0] in " \t" and out:
            name, value = out[-1]
            out[-1] = (name, value + " " + line.strip())
            continue
        if ":" not in line:
            continue
        name, value = line.split(":", 1)
        name = name.strip().lower()
        if not name or " " in name:
            continue
        out.append((name, value.strip()))
        if len(out) >= limit:
            break
    return out


def first(headers: list[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for k, v in _PARAM_RE.findall(";" + rest):
        v = v.strip()
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params[k.lower()] = v
    return main.strip().lower(), params


def decode_words(value: str | None) -> str:
    """RFC 2047 decoding for search and display; never raises."""
    if not value:
        return ""
    if "=?" not in value:  # no encoded word: the email package would hand the value back unchanged
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - hostile headers must not break ingest
        return value


def _lines(raw: bytes, start: int, end: int) -> int:
    """Lines of a body part, counting a last line that has no line end (IMAP's body-fld-lines)."""
    n = raw.count(b"\n", start, end)
    return n + 1 if end > start and raw[end - 1:end] != b"\n" else n


class _Scanner:
    def __init__(self, raw: bytes, max_depth: int, max_parts: int) -> None:
        self.raw = raw
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.parts = 0

    def part(self, start: int, end: int, depth: int, default_type: str = "text/plain") -> dict:
        self.parts += 1
        body = split_header(self.raw, start, end)
        headers = parse_headers(self.raw[start:body])
        ctype_raw = first(headers, "content-type")
        ctype, params = parse_params(ctype_raw) if ctype_raw else (default_type, {})
        if "/" not in ctype:
            ctype, params = "text/plain", ({"charset": "us-ascii"} if not ctype_raw else params)
        maintype, subtype = ctype.split("/", 1)
        if maintype == "text" and "charset" not in params:
            params["charset"] = "us-ascii"
        disp = first(headers, "content-disposition")
        node: dict = {
            "h": [start, body],
            "e": end,
            "type": maintype,
            "sub": subtype,
            "params": params,
            "id": first(headers, "content-id"),
            "desc": first(headers, "content-description"),
            "enc": (first(headers, "content-transfer-encoding") or "7bit").strip().lower(),
            "md5": first(headers, "content-md5"),
            "disp": list(parse_params(disp)) if disp else None,
            "lang": first(headers, "content-language"),
            "loc": first(headers, "content-location"),
        }
        too_deep = depth >= self.max_depth or self.parts >= self.max_parts
        if maintype == "multipart" and params.get("boundary") and not too_deep:
            child_default = "message/rfc822" if subtype == "digest" else "text/plain"
            node["parts"] = [
                self.part(s, e, depth + 1, child_default) for s, e in self._split(body, end, params["boundary"])
            ]
            if not node["parts"]:
                node["parts"] = [self._empty(body)]
        elif maintype == "message" and subtype in ("rfc822", "global") and not too_deep:
            inner = self.part(body, end, depth + 1)
            node["msg"] = {"env": envelope(parse_headers(self.raw[body:inner["h"][1]])), "part": inner}
            node["lines"] = _lines(self.raw, body, end)
        elif maintype == "multipart":
            node["type"], node["sub"] = "application", "octet-stream"
        if maintype == "text":
            node["lines"] = _lines(self.raw, body, end)
        return node

    def _empty(self, at: int) -> dict:
        return {"h": [at, at], "e": at, "type": "text", "sub": "plain", "params": {"charset": "us-ascii"},
                "id": None, "desc": None, "enc": "7bit", "md5": None, "disp": None, "lang": None, "loc": None, "lines": 0}

    def _split(self, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
        """Body ranges between delimiter lines; the CRLF before a delimiter belongs to it."""
        delim = b"--" + boundary.encode("utf-8", "replace")
        ranges: list[tuple[int, int]] = []
        pos = start
        part_start: int | None = None
        raw = self.raw
        while pos < end:
            i = raw.find(delim, pos, end)
            if i < 0:
                break
            at_line_start = i == start or raw[i - 1:i] == b"\n"
            if not at_line_start:
                pos = i + len(delim)
                continue
            after = i + len(delim)
            closing = raw[after:after + 2] == b"--"
            line_end = raw.find(b"\n", after, end)
            line_end = end if line_end < 0 else line_end + 1
            if part_start is not None:
                stop = i
                if stop > part_start and raw[stop - 1:stop] == b"\n":
                    stop -= 1
                    if stop > part_start and raw[stop - 1:stop] == b"\r":
                        stop -= 1
                ranges.append((part_start, max(stop, part_start)))
            if closing or len(ranges) >= self.max_parts:
                return ranges
            part_start = line_end
            pos = line_end
        if part_start is not None and part_start < end:
            ranges.append((part_start, end))
        return ranges


def envelope(headers: list[tuple[str, str]]) -> dict[str, str | None]:
    return {name: first(headers, name) for name in ENVELOPE_HEADERS}


def scan(raw: bytes, *, max_depth: int = 64, max_parts: int = 5000) -> dict:
    """Describe a message: envelope, summary headers, part tree with offsets."""
    scanner = _Scanner(raw, max_depth, max_parts)
    root = scanner.part(0, len(raw), 0)
    headers = parse_headers(raw[: root["h"][1]])
    return {
        "env": envelope(headers),
        "hdr": {n: first(headers, n) for n in SUMMARY_HEADERS if first(headers, n) is not None},
        "struct": root,
    }
