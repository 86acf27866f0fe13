"""The sort keys of RFC 5256 (SORT, THREAD) and RFC 5957 (DISPLAYFROM/DISPLAYTO).

Everything here works on the cached search summaries: the subject and the
From/To/Cc fields are already RFC 2047 decoded and casefolded there (the
``i;unicode-casemap`` comparator of RFC 5255 folds case the same way), so no
message is opened to sort it. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from functools import lru_cache

_WS = re.compile(r"\s+")
_MULTI_WS = re.compile(r"\s\s|[^\S ]")
_LEAD = frozenset("rf[ \t")  # what a removable leader starts with (the subject is casefolded)
_TAIL = (")", " ", "]")
_TRAILER = re.compile(r"(?:\s*\(fwd\))+\s*$|\s+$")
# subj-blob = "[" *BLOBCHAR "]" *WSP ;  subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(r"^(?:[ \t]+|(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:[ \t]*)")
_BLOB_ONLY = re.compile(r"^" + _BLOB)
_FWD_WRAP = re.compile(r"^\[fwd:(.*)\]$", re.S)


MEMO_MAX = 300  # longer values are not memoised (a memo's memory stays bounded)


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject, whether it was a reply or forward) of a decoded, casefolded subject (RFC 5256 2.1)."""
    return _base_subject(subject) if len(subject) <= MEMO_MAX else _base_subject.__wrapped__(subject)


@lru_cache(maxsize=100_000)  # subjects repeat, and every session of the process sorts the same mail
def _base_subject(subject: str) -> tuple[str, bool]:
    """Steps (1) to (6) of RFC 5256 2.1.

    The loops are bounded by the subject's length: each pass removes text.
    """
    s = _WS.sub(" ", subject) if _MULTI_WS.search(subject) else subject  # (1) one space for tabs, folding, runs
    if s[:1] not in _LEAD and not s.endswith(_TAIL):
        return s, False  # most subjects: nothing to remove
    reply = False
    while True:
        # (2) every trailing "(fwd)" and the white space around it
        t = _TRAILER.sub("", s)
        if t != s and "(fwd)" in s[len(t):]:
            reply = True
        s = t
        while True:
            # (3) leaders: blobs then "re:"/"fw:"/"fwd:", or white space
            changed = False
            m = _LEADER.match(s)
            if m and m.end():
                if m.group(0).strip():
                    reply = True
                s = s[m.end():]
                changed = True
            # (4) a leading blob, if something is left after it
            m = _BLOB_ONLY.match(s)
            if m and s[m.end():]:
                s = s[m.end():]
                changed = True
            if not changed:  # (5)
                break
        # (6) "[fwd: subject]": unwrap and start again at (2)
        m = _FWD_WRAP.match(s)
        if not m:
            break
        s = m.group(1)
        reply = True
    return s.strip(), reply


# ---------------------------------------------------------------- addresses


# a quoted string, a comment, an angle address, a run of other text, or one character (a separator)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|<[^<>]*>?|[^"(<,:]+|.', re.S)


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` (``,`` or ``:``) outside quotes, angle brackets and comments."""
    out: list[str] = []
    cur: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(tok)
    out.append("".join(cur))
    return out


_ANGLE = re.compile(r"<([^<>]*)>")
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_ROUTE = re.compile(r"^(?:@[^,:]*,?)+:")


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = re.sub(r"\\(.)", r"\1", s[1:-1])
    return s.strip()


def first_mailbox(header: str) -> tuple[str, str] | None:
    """(display name, addr-spec) of the first mailbox of an address header; None if it has none.

    The text is already RFC 2047 decoded, so a decoded display name may hold
    a comma: pieces with neither ``@`` nor ``<`` are joined to the next one.
    Group syntax (``team: a@x, b@y;``) yields the group's first member.
    """
    if not header or not header.strip():
        return None
    header = header[:4096]
    plain = not any(c in header for c in '"(:')  # no quotes, comments, groups or routes: a plain split will do
    pieces = header.split(",") if plain else _split_top(header, ",")
    pending = ""
    for piece in pieces:
        part = pending + ("," if pending else "") + piece
        if not plain:
            colon = _split_top(part, ":")
            if len(colon) > 1 and "@" not in colon[0] and "<" not in colon[0]:
                part = ":".join(colon[1:])  # "group: first member" -> the member
        part = part.strip().rstrip(";").strip()
        if not part:
            pending = ""
            continue
        if "@" not in part and "<" not in part:
            pending = part if len(part) < 1024 else ""
            continue
        pending = ""
        m = _ANGLE.search(part)
        if m:
            addr = _ROUTE.sub("", m.group(1).strip()).strip()
            name = _unquote(_COMMENT.sub("", part[:m.start()]))
        else:
            comments = _COMMENT.findall(part)
            addr = _COMMENT.sub("", part).strip()
            name = _unquote(comments[0][1:-1]) if comments else ""
        return name, addr
    if pending:  # only a bare word: take it as the local part
        return "", pending.strip()
    return None


def addr_mailbox(header: str) -> str:
    """RFC 5256 FROM/TO/CC key: the local part of the first address ("" if none)."""
    return _addr_mailbox(header) if len(header) <= MEMO_MAX else _addr_mailbox.__wrapped__(header)


@lru_cache(maxsize=50_000)
def _addr_mailbox(header: str) -> str:
    got = first_mailbox(header)
    if got is None:
        return ""
    addr = got[1]
    local = addr.rsplit("@", 1)[0] if "@" in addr else addr
    return _unquote(local)


def display_key(header: str) -> str:
    """RFC 5957 DISPLAYFROM/DISPLAYTO key: the first address's display name, else its addr-spec."""
    return _display_key(header) if len(header) <= MEMO_MAX else _display_key.__wrapped__(header)


@lru_cache(maxsize=50_000)
def _display_key(header: str) -> str:
    got = first_mailbox(header)
    if got is None:
        return ""
    name, addr = got
    if name:
        return _WS.sub(" ", name)
    if "@" in addr:
        local, _, host = addr.rpartition("@")
        return _unquote(local) + "@" + host
    return _unquote(addr)
