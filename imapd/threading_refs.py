"""THREAD algorithms of RFC 5256: ORDEREDSUBJECT and REFERENCES, and the thread-list output.

Pure functions over small per-message records, no I/O. Every walk over a
tree is iterative (a reply chain may be thousands of messages deep), and the
structures built are one node per message plus one per distinct referenced
Message-ID, whose count per message is capped by ``MAX_REFS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_REFS = 100  # the last this many Message-IDs of a References field are used
DUMMIES_PER_MESSAGE = 10
_MSGID = re.compile(r"<([^<>\s]{1,500})>")


@dataclass(slots=True)
class ThreadMsg:
    """What threading needs of one message: its index in the view and the facts RFC 5256 uses."""

    index: int
    date: tuple[float, int]  # (sent date, else INTERNALDATE; sequence index): ties by sequence number
    subject: str  # base subject
    reply: bool  # the subject was a reply or forward
    msgid: str | None = None
    refs: tuple[str, ...] = ()


def message_id(value: str | None) -> str | None:
    """The Message-ID in a Message-ID field, without angle brackets (None if there is no valid one)."""
    if not value:
        return None
    m = _MSGID.search(value[:2000])
    return m.group(1) if m else None


def references(refs: str | None, in_reply_to: str | None) -> tuple[str, ...]:
    """The parent chain of a message: References, or else the first Message-ID of In-Reply-To."""
    got = _MSGID.findall(refs[:64 * 1024]) if refs else []
    if got:
        return tuple(got[-MAX_REFS:])
    first = message_id(in_reply_to)
    return (first,) if first else ()


class Node:
    __slots__ = ("msg", "parent", "children", "key")

    def __init__(self, msg: ThreadMsg | None = None) -> None:
        self.msg = msg  # None: a dummy (a Message-ID referenced but not among the messages)
        self.parent: Node | None = None
        self.children: list[Node] = []
        self.key: tuple[float, int] = (0.0, 0)


def _sort_siblings(roots: list[Node]) -> list[Node]:
    """Sort every set of siblings by date, the deepest first; a dummy sorts as its first child."""
    order: list[Node] = []
    stack = [n for n in roots if n.children]
    for n in roots:
        if n.msg is not None:
            n.key = n.msg.date
    while stack:
        n = stack.pop()
        order.append(n)
        for c in n.children:
            if c.children:
                stack.append(c)
            elif c.msg is not None:
                c.key = c.msg.date
    for n in reversed(order):  # children before their parents
        n.children.sort(key=_key)
        n.key = n.msg.date if n.msg is not None else n.children[0].key
    roots.sort(key=_key)
    return roots


def _key(n: Node) -> tuple[float, int]:
    return n.key


# ------------------------------------------------------------- ORDEREDSUBJECT


def ordered_subject(msgs: Iterable[ThreadMsg]) -> list[Node]:
    """Threads of messages sharing a base subject: the oldest is the parent of all the others."""
    groups: dict[str, list[ThreadMsg]] = {}
    for m in msgs:
        groups.setdefault(m.subject, []).append(m)
    roots = []
    for members in groups.values():
        members.sort(key=lambda m: m.date)
        root = Node(members[0])
        root.key = members[0].date
        for m in members[1:]:
            child = Node(m)
            child.key = m.date
            root.children.append(child)
        roots.append(root)
    roots.sort(key=_key)
    return roots


# ------------------------------------------------------------------ REFERENCES


def _is_ancestor(a: Node, b: Node) -> bool:
    """True if ``a`` is ``b`` or one of its ancestors (a childless node is nobody's ancestor)."""
    if a is b:
        return True
    if not a.children:
        return False
    p = b.parent
    while p is not None:
        if p is a:
            return True
        p = p.parent
    return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def thread_references(msgs: list[ThreadMsg]) -> list[Node]:
    """The REFERENCES algorithm of RFC 5256 section 3 (steps 1 to 6); ``msgs`` in sequence order.

    Nodes are bounded: once the referenced Message-IDs of no message here
    (dummies) outnumber ``DUMMIES_PER_MESSAGE`` per message, later messages
    link to their direct parent only (their last reference).
    """
    table: dict[str, Node] = {}
    nodes: list[Node] = []
    budget = DUMMIES_PER_MESSAGE * len(msgs) + 1000
    # (1) link messages by their references
    for m in msgs:
        node = table.get(m.msgid) if m.msgid is not None else None
        if node is None or node.msg is not None:  # no Message-ID, or a duplicate: a unique one of its own
            node = Node(m)
            nodes.append(node)
            if m.msgid is not None and m.msgid not in table:
                table[m.msgid] = node
        else:
            node.msg = m  # a dummy made by an earlier reference becomes this message
        prev: Node | None = None
        for ref in (m.refs if len(nodes) < budget else m.refs[-1:]):  # (1A) each reference the parent of the next
            c = table.get(ref)
            if c is None:
                c = table[ref] = Node()
                nodes.append(c)
            if prev is not None and c.parent is None and not _is_ancestor(c, prev):
                _link(prev, c)
            prev = c
        # (1B) the last reference is the parent of this message (it replaces any parent guessed before)
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if prev is not None and not _is_ancestor(node, prev):
            _link(prev, node)
    # (2) the root set
    roots = [n for n in nodes if n.parent is None]
    # (3) prune dummies, deepest first
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):
        if not any(c.msg is None for c in n.children):
            continue
        kept: list[Node] = []
        for c in n.children:
            if c.msg is not None:
                kept.append(c)
            else:
                kept.extend(c.children)  # (3B) a dummy's children take its place; (3A) a childless one goes
        for c in kept:
            c.parent = n
        n.children = kept
    top: list[Node] = []
    for n in roots:
        if n.msg is not None:
            top.append(n)
        elif len(n.children) == 1:
            n.children[0].parent = None
            top.append(n.children[0])  # promoted to the root only when it is the only child
        elif n.children:
            top.append(n)
    # (4) sort the top level by date (a dummy by its first child's)
    for n in top:
        if n.msg is None:
            n.children.sort(key=lambda c: c.msg.date if c.msg is not None else c.key)
            n.key = n.children[0].msg.date if n.children[0].msg is not None else n.children[0].key
        else:
            n.key = n.msg.date
    top.sort(key=_key)
    # (5) gather threads with the same base subject
    top = _merge_subjects(top)
    # (6) sort every set of siblings
    return _sort_siblings(top)


def _subject_of(n: Node) -> tuple[str, bool]:
    m = n.msg if n.msg is not None else (n.children[0].msg if n.children else None)
    return (m.subject, m.reply) if m is not None else ("", False)


def _merge_subjects(top: list[Node]) -> list[Node]:
    table: dict[str, Node] = {}
    subjects = [_subject_of(n) for n in top]
    for n, (subj, reply) in zip(top, subjects, strict=True):  # (5A-C) the subject table
        if not subj:
            continue
        t = table.get(subj)
        if t is None or (t.msg is not None and (n.msg is None or (t.msg.reply and not reply))):
            table[subj] = n
    out: list[Node] = []
    where: dict[int, int] = {}
    for n, (subj, reply) in zip(top, subjects, strict=True):  # (5D) merge
        t = table.get(subj) if subj else None
        if t is None or t is n:
            where[id(n)] = len(out)
            out.append(n)
            continue
        if t.msg is None and n.msg is None:
            t.children.extend(n.children)
        elif t.msg is None or (reply and t.msg is not None and not t.msg.reply):
            t.children.append(n)
        else:
            dummy = Node()
            dummy.children = [t, n]
            table[subj] = dummy
            pos = where.pop(id(t), None)
            if pos is None:  # cannot happen (the table's message comes first), but never lose a thread
                pos = len(out)
                out.append(dummy)
            where[id(dummy)] = pos
            out[pos] = dummy
    return out


# ---------------------------------------------------------------------- output


def render(roots: list[Node], number: Callable[[int], int]) -> bytes:
    """The thread-list of the THREAD response: ``(1 2 (3)(4))((5)(6))``; ``number`` maps an index to its id."""
    out: list[bytes] = []
    for root in roots:
        if not root.children and root.msg is not None:  # most threads: one message
            out.append(b"(%d)" % number(root.msg.index))
            continue
        stack: list[Node | bytes] = [b")", root, b"("]
        while stack:
            item = stack.pop()
            if isinstance(item, bytes):
                out.append(item)
                continue
            kids = item.children
            if item.msg is not None:
                out.append(b"%d" % number(item.msg.index))
                if kids:
                    out.append(b" ")
            if len(kids) == 1:
                stack.append(kids[0])
            else:
                for k in reversed(kids):
                    stack += [b")", k, b"("]
    return b"".join(out)
