"""LIST / LSUB: pattern matching and mailbox attributes (RFC 3501, 5258, 6154)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DELIM = "/"


MAX_PATTERN = 500


class Pattern:
    """A LIST pattern: ``*`` matches anything, ``%`` anything but the delimiter.

    Matched with bit sets of reachable positions (linear in pattern times
    name length), never a backtracking regex: a hostile ``*a*a*a*...``
    costs no more than any other pattern. INBOX is case-insensitive.
    """

    def __init__(self, reference: str, pattern: str) -> None:
        full = reference + pattern
        if full[:5].upper() == "INBOX" and full[5:6] in ("", DELIM):
            full = "INBOX" + full[5:]
        self.text = full[:MAX_PATTERN]

    def match(self, name: str) -> bool:
        n = len(name)
        full = (1 << (n + 1)) - 1
        state = 1  # bit i: the first i characters of name are consumed
        masks: dict[str, int] = {}
        for ch in self.text:
            if not state:
                return False
            if ch == "*":
                low = state & -state
                state = full & ~(low - 1)
            elif ch == "%":
                out = 0
                start = 0
                while start <= n:
                    stop = name.find(DELIM, start)
                    stop = n if stop < 0 else stop
                    seg = ((1 << (stop + 1)) - 1) & ~((1 << start) - 1)
                    hit = state & seg
                    if hit:
                        low = hit & -hit
                        out |= seg & ~(low - 1)
                    start = stop + 1
                state = out
            else:
                m = masks.get(ch)
                if m is None:
                    m = 0
                    for k, c in enumerate(name):
                        if c == ch:
                            m |= 1 << k
                    masks[ch] = m
                state = (state & m) << 1
        return bool(state >> n & 1)


@dataclass
class Entry:
    name: str
    attrs: list[str]
    exists: bool
    mailbox: Any = None


def entries(mailboxes: list[Any], *, subscribed_only: bool = False, special_only: bool = False,
            want_subscribed: bool = False) -> list[Entry]:
    """Every mailbox with its attributes, plus parents that exist only as hierarchy."""
    names = {mb.name: mb for mb in mailboxes}
    children: set[str] = set()
    implied: set[str] = set()
    for name in names:
        parts = name.split(DELIM)
        for k in range(1, len(parts)):
            parent = DELIM.join(parts[:k])
            children.add(parent)
            if parent not in names:
                implied.add(parent)
    out = []
    for name, mb in names.items():
        if subscribed_only and not mb.subscribed:
            continue
        if special_only and not mb.special_use:
            continue
        attrs = ["\\HasChildren" if name in children else "\\HasNoChildren"]
        if mb.special_use:
            attrs.append(mb.special_use)
        if (want_subscribed or subscribed_only) and mb.subscribed:
            attrs.append("\\Subscribed")
        out.append(Entry(name, attrs, True, mb))
    if not subscribed_only and not special_only:
        for name in implied:
            out.append(Entry(name, ["\\Noselect", "\\HasChildren"], False))
    out.sort(key=lambda e: (e.name != "INBOX", e.name))
    return out
