"""IMAP flags in the index: system flags as a bit mask, keywords as text."""

from __future__ import annotations

import re
from functools import lru_cache

SYSTEM_FLAGS = {"\\seen": 1, "\\answered": 2, "\\flagged": 4, "\\deleted": 8, "\\draft": 16}
CANONICAL = {"\\seen": "\\Seen", "\\answered": "\\Answered", "\\flagged": "\\Flagged", "\\deleted": "\\Deleted", "\\draft": "\\Draft"}
SEEN, ANSWERED, FLAGGED, DELETED, DRAFT = 1, 2, 4, 8, 16
_KEYWORD_RE = re.compile(r"^[!#-'*+\-.0-9:;<=>?@A-Z^-z|~$_]{1,100}$")
MAX_KEYWORDS = 50


def split_flags(flags: object) -> tuple[int, tuple[str, ...]]:
    """(mask, sorted keywords) from an iterable of flag names; bad names raise ValueError."""
    mask = 0
    keywords: set[str] = set()
    for f in flags or ():  # type: ignore[attr-defined]
        name = f.decode() if isinstance(f, bytes) else str(f)
        low = name.lower()
        if low in SYSTEM_FLAGS:
            mask |= SYSTEM_FLAGS[low]
        elif low == "\\recent":
            continue
        elif name.startswith("\\"):
            raise ValueError(f"unknown system flag {name}")
        elif _KEYWORD_RE.match(name):
            keywords.add(name)
        else:
            raise ValueError(f"invalid keyword {name!r}")
    if len(keywords) > MAX_KEYWORDS:
        raise ValueError("too many keywords")
    return mask, tuple(sorted(keywords))


@lru_cache(maxsize=4096)
def join_flags(mask: int, keywords: str | None) -> frozenset[str]:
    out = {CANONICAL[name] for name, bit in SYSTEM_FLAGS.items() if mask & bit}
    if keywords:
        out.update(keywords.split(" "))
    return frozenset(out)


def keywords_text(keywords: tuple[str, ...] | set[str]) -> str | None:
    return " ".join(sorted(keywords)) or None
