"""The IMAP command grammar: tokens, sequence sets.

A command arrives from the framer as segments: text, literal, text, ...
(the ``{n}`` markers removed). ``tokenize`` turns them into nested Python
values: ``str`` for an atom (``NIL``, ``\\Seen``, ``BODY[HEADER.FIELDS (To)]<0.10>``),
``bytes`` for a string (quoted or literal), ``list`` for a parenthesised list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_NUMBER = 0xFFFFFFFF
MAX_LIST_DEPTH = 64


class ParseError(ValueError):
    """Malformed command: answered with a tagged BAD."""


_TAG_CMD = re.compile(rb"^([\x21\x23\x24\x26\x27\x2c-\x5b\x5e-\x7a\x7c\x7e]{1,64}) ([A-Za-z]{1,32})(?: ([A-Za-z]{1,32}))?")


def split_tag(line: bytes) -> tuple[str, str, str]:
    """(tag, COMMAND, SUBCOMMAND or "") from the first line; ParseError if there is no tag."""
    m = _TAG_CMD.match(line)
    if not m:
        raise ParseError("Missing tag or command")
    return m.group(1).decode(), m.group(2).decode().upper(), (m.group(3) or b"").decode().upper()


class _Tokenizer:
    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def run(self) -> list:
        root: list = []
        stack = [root]
        parts = self.parts
        for k in range(0, len(parts), 2):
            text = parts[k]
            self._text(text, stack)
            if k + 1 < len(parts):
                stack[-1].append(bytes(parts[k + 1]))
        if len(stack) != 1:
            raise ParseError("Unbalanced parentheses")
        return root

    def _text(self, text: bytes, stack: list[list]) -> None:
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == 0x20:
                i += 1
            elif c == 0x28:  # (
                new: list = []
                stack[-1].append(new)
                stack.append(new)
                if len(stack) > MAX_LIST_DEPTH:
                    raise ParseError("Lists nested too deeply")
                i += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise ParseError("Unbalanced parentheses")
                stack.pop()
                i += 1
            elif c == 0x22:  # "
                out = bytearray()
                i += 1
                while True:
                    if i >= n:
                        raise ParseError("Unterminated quoted string")
                    c = text[i]
                    if c == 0x5C:  # backslash
                        if i + 1 >= n or text[i + 1] not in (0x22, 0x5C):
                            raise ParseError("Bad escape in quoted string")
                        out.append(text[i + 1])
                        i += 2
                    elif c == 0x22:
                        i += 1
                        break
                    elif c in (0x0D, 0x0A, 0x00):
                        raise ParseError("Control character in quoted string")
                    else:
                        out.append(c)
                        i += 1
                stack[-1].append(bytes(out))
            else:
                start = i
                while i < n:
                    c = text[i]
                    if c in (0x20, 0x28, 0x29):
                        break
                    if c == 0x5B:  # [ ... ] may hold spaces and parens
                        depth = 0
                        while i < n:
                            if text[i] == 0x5B:
                                depth += 1
                            elif text[i] == 0x5D:
                                depth -= 1
                                if depth == 0:
                                    break
                            i += 1
                        if i >= n:
                            raise ParseError("Unterminated [")
                    elif c < 0x20 or c == 0x7F:
                        raise ParseError("Control character in command")
                    i += 1
                stack[-1].append(text[start:i].decode("utf-8", "surrogateescape"))


def tokenize(parts: list[bytes]) -> list:
    return _Tokenizer(parts).run()


# ------------------------------------------------------------------ arguments


class Args:
    """A cursor over a command's tokens with typed getters (each raises ParseError)."""

    def __init__(self, tokens: list, start: int = 0) -> None:
        self.t = tokens
        self.i = start

    def more(self) -> bool:
        return self.i < len(self.t)

    def peek(self) -> object:
        return self.t[self.i] if self.i < len(self.t) else None

    def next(self, what: str = "argument") -> object:
        if self.i >= len(self.t):
            raise ParseError(f"Missing {what}")
        v = self.t[self.i]
        self.i += 1
        return v

    def atom(self, what: str = "argument") -> str:
        v = self.next(what)
        if not isinstance(v, str):
            raise ParseError(f"Expected an atom for {what}")
        return v

    def astring(self, what: str = "argument") -> bytes:
        v = self.next(what)
        if isinstance(v, list):
            raise ParseError(f"Expected a string for {what}")
        return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")

    def string(self, what: str = "argument") -> bytes:
        v = self.next(what)
        if isinstance(v, bytes):
            return v
        if isinstance(v, str) and v.upper() != "NIL":
            return v.encode("utf-8", "surrogateescape")  # lenient: an atom as a string
        raise ParseError(f"Expected a string for {what}")

    def number(self, what: str = "number") -> int:
        v = self.next(what)
        if isinstance(v, str) and v.isdigit() and len(v) <= 20:
            n = int(v)
            if n <= 0xFFFFFFFFFFFFFFFF:
                return n
        raise ParseError(f"Expected a number for {what}")

    def list(self, what: str = "list") -> list:
        v = self.next(what)
        if not isinstance(v, list):
            raise ParseError(f"Expected a parenthesised {what}")
        return v

    def end(self) -> None:
        if self.more():
            raise ParseError("Unexpected extra arguments")


def upper_atoms(items: list) -> list[str]:
    out = []
    for v in items:
        if not isinstance(v, str):
            raise ParseError("Expected atoms")
        out.append(v.upper())
    return out


# --------------------------------------------------------------- sequence sets


@dataclass(frozen=True)
class SeqSet:
    """``1:3,5,7:*``: ranges with ``None`` for ``*``; resolved against a mailbox later."""

    ranges: tuple[tuple[int | None, int | None], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Normalised (lo, hi) pairs with ``*`` = largest (0 for an empty mailbox)."""
        out = []
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            if a > b:
                a, b = b, a
            out.append((a, b))
        return out

    @property
    def has_star(self) -> bool:
        return any(a is None or b is None for a, b in self.ranges)

    def max_explicit(self) -> int:
        return max((x for r in self.ranges for x in r if x is not None), default=0)


_SEQ_RE = re.compile(r"^(?:\d+|\*)(?::(?:\d+|\*))?(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*$")


def parse_seqset(text: object) -> SeqSet:
    if not isinstance(text, str) or not _SEQ_RE.match(text):
        raise ParseError("Invalid sequence set")
    ranges = []
    for item in text.split(","):
        lo, _, hi = item.partition(":")
        a = None if lo == "*" else int(lo)
        b = a if not hi else (None if hi == "*" else int(hi))
        for x in (a, b):
            if x is not None and not (1 <= x <= MAX_NUMBER):
                raise ParseError("Invalid sequence number")
        ranges.append((a, b))
    if len(ranges) > 100_000:
        raise ParseError("Sequence set too long")
    return SeqSet(tuple(ranges))


def format_uidset(uids: list[int]) -> str:
    """Compact ``1:3,7`` form of sorted UIDs."""
    if not uids:
        return ""
    out = []
    start = prev = uids[0]
    for u in uids[1:]:
        if u == prev + 1:
            prev = u
            continue
        out.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = u
    out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)
