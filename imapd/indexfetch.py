"""FETCH of index items only (UID, FLAGS, MODSEQ, RFC822.SIZE, INTERNALDATE), rendered on the reactor.

``UID FETCH 1:* (FLAGS)`` is what every client sends to resynchronise, over
the whole mailbox. Everything it needs is already in memory: flags and
MODSEQ in the session's view (``selected``), size and INTERNALDATE in the
process-wide message cache. Rendering 10,000 lines takes a few milliseconds
of CPU; a trip to a worker thread and back costs more than that on a busy
machine (each hop waits for the scheduler and the GIL). So these lines are
made on the reactor, ``CHUNK`` messages at a time, with a turn of the loop
between chunks (other sessions are not starved, and the transport sends one
chunk while the next is made).

The general path (``message_items``) renders the same items in the same
order; ``tests/test_imap_perf_units.py`` holds the two to identical bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fetch import INDEX_ITEMS, FetchPlan, date_item, flags_item
from .wire import flag_list

#: messages rendered per turn of the event loop (~3 ms of CPU, ~180 KB of output); the first
#: chunk is smaller so the client starts reading (its parsing is the slow side) sooner
CHUNK = 5000
FIRST_CHUNK = 500
#: the items that need the message cache (size and date); the others come from the view
FACT_ITEMS = frozenset({"RFC822.SIZE", "INTERNALDATE"})


def index_only(plan: FetchPlan) -> bool:
    """True when every item of ``plan`` is an index item (no structure, no body, nothing that sets \\Seen)."""
    return all(isinstance(it, str) and it in INDEX_ITEMS for it in plan.items)


def needs_facts(plan: FetchPlan) -> bool:
    return any(it in FACT_ITEMS for it in plan.items)


def changed_since(sel: Any, idxs: list[int], modseq: int | None) -> list[int]:
    """The indexes among ``idxs`` whose MODSEQ is above ``modseq`` (CHANGEDSINCE); all of them for None."""
    if modseq is None:
        return idxs
    modseqs = sel.modseqs
    return [i for i in idxs if modseqs[i] > modseq]


class FlagItems:
    """``FLAGS (...)`` of a message, made once per distinct (flags, recent) pair of a mailbox.

    Holds the view's arrays as they are when made: make it after any change to the view.
    """

    __slots__ = ("_cache", "flags", "recent", "uids")

    def __init__(self, sel: Any) -> None:
        self.flags = sel.flags
        self.uids = sel.uids
        self.recent = sel.recent
        self._cache: dict[tuple[frozenset[str], bool], bytes] = {}

    def __call__(self, i: int) -> bytes:
        key = (self.flags[i], self.uids[i] in self.recent)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = flags_item(*key)
        return got


def render(sel: Any, idxs: Sequence[int], items: list, facts: Sequence[Any] | None = None,
           flag_item: FlagItems | None = None) -> list[bytes]:
    """The ``* n FETCH (...)`` lines of the messages at ``idxs`` (view indexes).

    ``items`` are index items in response order (UID first when present).
    ``facts`` is aligned with ``idxs`` (message cache entries) when SIZE or
    INTERNALDATE is asked for; a message with no entry (expunged meanwhile by
    another session) gets no line, as on the general path.
    """
    uids, flags, modseqs, recent = sel.uids, sel.flags, sel.modseqs, sel.recent
    out: list[bytes] = []
    append = out.append
    if items == ["UID", "FLAGS"] or items == ["UID", "FLAGS", "MODSEQ"]:
        # what every client sends to resynchronise: one format per line, one flag list per distinct set
        lists: dict[frozenset[str], bytes] = {}
        with_modseq = len(items) == 3
        for i in idxs:
            f, u = flags[i], uids[i]
            fl = lists.get(f)
            if fl is None:
                fl = lists[f] = flag_list(f)
            if recent and u in recent:
                fl = flag_list([*f, "\\Recent"])
            if with_modseq:
                append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (i + 1, u, fl, modseqs[i]))
            else:
                append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (i + 1, u, fl))
        return out
    if flag_item is None:
        flag_item = FlagItems(sel)
    for n, i in enumerate(idxs):
        m = facts[n] if facts is not None else None
        if facts is not None and m is None:
            continue
        parts = []
        for it in items:
            if it == "UID":
                parts.append(b"UID %d" % uids[i])
            elif it == "FLAGS":
                parts.append(flag_item(i))
            elif it == "MODSEQ":
                parts.append(b"MODSEQ (%d)" % modseqs[i])
            elif it == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % m.size)
            else:  # INTERNALDATE
                parts.append(date_item(m.internal_date))
        append(b"* %d FETCH (" % (i + 1) + b" ".join(parts) + b")\r\n")
    return out
