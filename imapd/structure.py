"""ENVELOPE and BODYSTRUCTURE from the structure cached in the index (``storage.mime``).

Nothing here reads a message: the scan done at ingest holds the envelope
header values, every part's content type and parameters, byte offsets and
line counts. Rendering is linear in the size of that structure and bounded
in depth.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .wire import quote

MAX_RENDER_DEPTH = 100
MAX_ADDRESSES = 1000
_STD_ENCODINGS = {"7bit", "8bit", "binary", "base64", "quoted-printable"}

# ------------------------------------------------------------------ addresses


_TOKEN = re.compile(r"""
      (?P<ws>[ \t\r\n]+)
    | "(?P<q>(?:[^"\\]|\\.)*)"?
    | (?P<c>\()
    | (?P<s>[)<>@,;:.\[\]\\])
    | (?P<a>[^ \t\r\n()<>@,;:\\".\[\]]+)
""", re.X | re.S)
_UNQUOTE = re.compile(r"\\(.)", re.S)


def _tokens(text: str) -> list[tuple[str, str]]:
    """RFC 5322 lexical tokens: ("q", quoted), ("a", atom), ("s", special); comments dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    match = _TOKEN.match
    while i < n:
        m = match(text, i)
        if m is None:  # cannot happen: every character matches one branch
            break
        kind = m.lastgroup
        if kind == "c":
            depth, j = 0, i
            while j < n:
                ch = text[j]
                if ch == "\\":
                    j += 2
                    continue
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            i = j + 1
            continue
        if kind == "q":
            v = m.group("q")
            out.append(("q", _UNQUOTE.sub(r"\1", v) if "\\" in v else v))
        elif kind == "a":
            out.append(("a", m.group("a")))
        elif kind == "s":
            out.append(("s", m.group("s")))
        i = m.end()
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    words = []
    for kind, v in tokens:
        if kind == "s" and v == ".":
            if words:
                words[-1] += "."
            continue
        words.append(v)
    return " ".join(words) if words else None


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str | None, str | None, str | None]:
    """(adl, mailbox, host) from the tokens of an addr-spec, possibly with a route."""
    adl = None
    if tokens and tokens[0] == ("s", "@"):
        # obsolete route: @a,@b:local@domain
        for k, t in enumerate(tokens):
            if t == ("s", ":"):
                adl = "".join(v for _, v in tokens[:k])
                tokens = tokens[k + 1 :]
                break
    at = None
    for k in range(len(tokens) - 1, -1, -1):
        if tokens[k] == ("s", "@"):
            at = k
            break
    def join(ts: list[tuple[str, str]]) -> str:
        return "".join(v if kind != "q" else v for kind, v in ts)

    if at is None:
        local = join(tokens)
        return adl, local or None, "MISSING_DOMAIN" if local else None
    return adl, join(tokens[:at]) or None, join(tokens[at + 1 :]) or "MISSING_DOMAIN"


def parse_addresses(value: str | None) -> list[tuple[str | None, str | None, str | None, str | None]]:
    """(name, adl, mailbox, host) per address; groups as RFC 3501 start/end markers."""
    if not value:
        return []
    out: list[tuple[str | None, str | None, str | None, str | None]] = []
    toks = _tokens(value)
    phrase: list[tuple[str, str]] = []
    angle: list[tuple[str, str]] | None = None
    in_angle = False
    in_group = False

    def finish() -> None:
        nonlocal phrase, angle
        if angle is not None:
            adl, mbox, host = _addr_spec(angle)
            if mbox or host:
                out.append((_phrase(phrase), adl, mbox, host))
        elif phrase:
            adl, mbox, host = _addr_spec(phrase)
            if mbox or host:
                out.append((None, adl, mbox, host))
        phrase, angle = [], None

    for tok in toks:
        if len(out) >= MAX_ADDRESSES:
            break
        if in_angle:
            if tok == ("s", ">"):
                in_angle = False
            else:
                assert angle is not None
                angle.append(tok)
            continue
        if tok == ("s", "<"):
            in_angle = True
            angle = []
        elif tok == ("s", ","):
            finish()
        elif tok == ("s", ":") and not in_group and angle is None and "@" not in [v for _, v in phrase]:
            out.append((None, None, _phrase(phrase) or "", None))
            phrase = []
            in_group = True
        elif tok == ("s", ";") and in_group:
            finish()
            out.append((None, None, None, None))
            in_group = False
        else:
            phrase.append(tok)
    finish()
    if in_group:
        out.append((None, None, None, None))
    return out


# The common shapes of an address list, parsed with one regular expression:
# ``local@domain``, ``Name Words <local@domain>`` and ``"Quoted Name" <local@domain>``,
# comma-separated. Anything else (comments, groups, routes, escapes, dots in a
# phrase, a missing domain) takes the full tokenizer. Both give the same result.
_ATEXT = r"""[^ \t\r\n()<>@,;:\\".\[\]]+"""
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_WORD = rf'(?:"[^"\\]*"|{_ATEXT})'
_SIMPLE_ADDR = re.compile(
    rf"""[ \t\r\n]*(?:(?P<l1>{_DOT_ATOM})@(?P<d1>{_DOT_ATOM})"""
    rf"""|(?P<name>{_WORD}(?:[ \t\r\n]+{_WORD})*)?[ \t\r\n]*<[ \t\r\n]*(?P<l2>{_DOT_ATOM})@(?P<d2>{_DOT_ATOM})[ \t\r\n]*>)"""
    rf"""[ \t\r\n]*(?:,|\Z)"""
)
_NAME_WORD = re.compile(r'"([^"\\]*)"|([^ \t\r\n"]+)')


def _simple_addresses(value: str) -> list[tuple[str | None, None, str, str]] | None:
    """``parse_addresses`` for the common shapes only; None when the value needs the full parser."""
    out: list[tuple[str | None, None, str, str]] = []
    pos, n = 0, len(value)
    match = _SIMPLE_ADDR.match
    while pos < n:
        m = match(value, pos)
        if m is None or m.end() == pos:
            return None
        if m.group("l1") is not None:
            out.append((None, None, m.group("l1"), m.group("d1")))
        else:
            name = m.group("name")
            if name is not None:
                name = " ".join(w or q for q, w in _NAME_WORD.findall(name))
            out.append((name, None, m.group("l2"), m.group("d2")))
        pos = m.end()
        if value[pos - 1:pos] == "," and not value[pos:].strip(" \t\r\n"):
            return None  # a trailing comma: leave the oddity to the full parser
        if len(out) >= MAX_ADDRESSES:
            return None
    return out


@lru_cache(maxsize=8192)
def _address_list(value: str | None) -> bytes:
    addrs = (_simple_addresses(value) if value else None) or parse_addresses(value)
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(
        b"(" + b" ".join(quote(x) for x in a) + b")" for a in addrs
    ) + b")"


def envelope(env: dict) -> bytes:
    g = env.get
    frm = _address_list(g("from"))
    sender = _address_list(g("sender"))
    reply_to = _address_list(g("reply-to"))
    return b"(" + b" ".join((
        quote(g("date")),
        quote(g("subject")),
        frm,
        frm if sender == b"NIL" else sender,
        frm if reply_to == b"NIL" else reply_to,
        _address_list(g("to")),
        _address_list(g("cc")),
        _address_list(g("bcc")),
        quote(g("in-reply-to")),
        quote(g("message-id")),
    )) + b")"


# ------------------------------------------------------------- body structure


def _params(params: dict | None) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(quote(k.upper()) + b" " + quote(v) for k, v in params.items()) + b")"


def _disposition(disp: list | None) -> bytes:
    if not disp:
        return b"NIL"
    kind, params = disp[0], disp[1] if len(disp) > 1 else None
    return b"(" + quote(kind.upper() if kind else kind) + b" " + _params(params) + b")"


def _lang(lang: str | None) -> bytes:
    if not lang:
        return b"NIL"
    items = [x.strip() for x in lang.split(",") if x.strip()]
    if len(items) == 1:
        return quote(items[0])
    return b"(" + b" ".join(quote(x) for x in items) + b")"


def _encoding(enc: str) -> bytes:
    return quote(enc.upper() if enc in _STD_ENCODINGS else enc)


def body_structure(node: dict, extended: bool = True, depth: int = 0) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of one part tree."""
    if depth > MAX_RENDER_DEPTH:
        size = max(0, node["e"] - node["h"][1])
        return b'("application" "octet-stream" NIL NIL NIL "7BIT" %d)' % size
    if "parts" in node:
        inner = b"".join(body_structure(p, extended, depth + 1) for p in node["parts"])
        out = inner + b" " + quote(node["sub"])
        if extended:
            out += b" " + b" ".join((_params(node.get("params")), _disposition(node.get("disp")),
                                    _lang(node.get("lang")), quote(node.get("loc"))))
        return b"(" + out + b")"
    size = max(0, node["e"] - node["h"][1])
    fields = [
        quote(node["type"]),
        quote(node["sub"]),
        _params(node.get("params")),
        quote(node.get("id")),
        quote(node.get("desc")),
        _encoding(node.get("enc") or "7bit"),
        b"%d" % size,
    ]
    if "msg" in node:
        fields.append(envelope(node["msg"]["env"]))
        fields.append(body_structure(node["msg"]["part"], extended, depth + 1))
        fields.append(b"%d" % node.get("lines", 0))
    elif node["type"] == "text":
        fields.append(b"%d" % node.get("lines", 0))
    if extended:
        fields += [quote(node.get("md5")), _disposition(node.get("disp")), _lang(node.get("lang")), quote(node.get("loc"))]
    return b"(" + b" ".join(fields) + b")"


# ------------------------------------------------------------------ sections


class SectionError(ValueError):
    pass


def find_part(struct: dict, path: list[int]) -> dict:
    """The node of part ``1.2.3`` (RFC 3501 6.4.5 numbering); SectionError if absent.

    A non-multipart message is its own part 1; the parts of a message/rfc822
    part are those of the message it encapsulates.
    """
    node = struct
    for k, n in enumerate(path):
        is_root = k == 0
        if k > 0 and "msg" in node:
            node = node["msg"]["part"]
            is_root = True
        if "parts" in node:
            if not 1 <= n <= len(node["parts"]):
                raise SectionError("no such part")
            node = node["parts"][n - 1]
        elif not (is_root and n == 1):
            raise SectionError("no such part")
    return node
