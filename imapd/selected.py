"""The selected mailbox as one session sees it: sequence numbers, flags, and what changed.

The view holds, per message in sequence order, its UID, flags and MODSEQ
(compact arrays; flags are shared frozensets). It is read once at SELECT and
then kept current from ``MailStore.changes_since``, so FETCH FLAGS, STORE
replies and flag SEARCH keys need no index query. Changes by anyone (this
session included) become untagged responses at the points RFC 3501 7.4.1
allows: EXISTS and flag FETCHes after any command, EXPUNGE (or VANISHED with
QRESYNC) only when no FETCH, STORE or SEARCH is running; until then an
expunged message keeps its sequence number.

Not thread-safe by itself: a session runs one command at a time, and the
worker running that command's job is the only one touching the view (the
change watcher only sets ``dirty``).

At SELECT the three arrays are the process-wide snapshot's own (see
``views``), shared by every session that selected the mailbox in the same
state and never changed in place; a session copies them the first time its
view changes (``_own``). A thousand sessions on one mailbox cost one copy.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from typing import Any

from .parser import ParseError, SeqSet, format_uidset
from .wire import flag_list


class MailboxGone(Exception):
    """The selected mailbox was deleted by another session."""


@dataclass
class Changes:
    version: tuple[int, int] | None  # None: the mailbox is gone
    changed: list = field(default_factory=list)  # MessageInfo
    vanished: list[int] = field(default_factory=list)


def read_changes(store: Any, mailbox_id: int, modseq: int, known: tuple[int, int]) -> Changes:
    """Blocking: what changed since ``modseq`` (nothing to read if the version is still ``known``)."""
    v = store.mail.versions([mailbox_id]).get(mailbox_id)
    if v is None:
        return Changes(None)
    if v == known:
        return Changes(v)
    changed, vanished = store.mail.changes_since(mailbox_id, modseq)
    return Changes(v, changed, vanished)


class Selected:
    def __init__(self, mailbox: Any, readonly: bool, uids: array, flags: list[frozenset[str]], modseqs: array, *,
                 condstore: bool, qresync: bool, shared: bool = False) -> None:
        self.mailbox = mailbox
        self.id: int = mailbox.id
        self.uidvalidity: int = mailbox.uidvalidity
        self.readonly = readonly
        self.uids = uids
        self.flags = flags
        self.modseqs = modseqs
        #: the arrays belong to the mailbox's shared snapshot: copy before the first change
        self.shared = shared
        self.modseq: int = mailbox.highestmodseq
        self.uidnext: int = mailbox.uidnext
        self.max_uid: int = max(mailbox.uidnext - 1, self.uids[-1] if self.uids else 0)
        self.pending_expunge: set[int] = set()
        self.recent: set[int] = set()
        self.reported: dict[int, int] = {}
        self.condstore = condstore
        self.qresync = qresync
        self.dirty = False
        self.announced_exists = len(self.uids)
        #: per-message values aligned with ``uids`` that searches reuse (summary fields);
        #: dropped whenever the list of messages changes
        self.aligned: dict[str, list] = {}

    # ------------------------------------------------------------- lookups
    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def version(self) -> tuple[int, int]:
        return self.modseq, self.uidnext

    def index_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else None

    def seq_of(self, uid: int) -> int | None:
        i = self.index_of(uid)
        return None if i is None else i + 1

    def by_seq(self, seqset: SeqSet) -> list[int]:
        """Indexes (sequence number - 1) of a sequence set, ascending; ParseError past the end."""
        n = len(self.uids)
        ranges = []
        for a, b in seqset.ranges:
            if a is None or b is None:  # "n:*" means n..last; past the end it is just the last
                lo = n if a is None else min(a, n)
                hi = n if b is None else min(b, n)
                lo, hi = min(lo, hi), max(lo, hi)
            else:
                lo, hi = min(a, b), max(a, b)
                if hi > n:
                    raise ParseError("Invalid message sequence number" if n else "Invalid message sequence number (mailbox is empty)")
            if hi >= 1:
                ranges.append((max(lo, 1), hi))
        if not ranges:
            return []
        if len(ranges) == 1:
            a, b = ranges[0]
            return list(range(a - 1, b))
        picked: set[int] = set()
        for a, b in ranges:
            picked.update(range(a - 1, b))
        return sorted(picked)

    def by_uid(self, seqset: SeqSet) -> list[int]:
        """Indexes of the messages whose UIDs are in a UID set, ascending."""
        uids = self.uids
        if not uids:
            return []
        ranges = seqset.resolve(uids[-1])
        spans = [(bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)) for a, b in ranges]
        if len(spans) == 1:
            return list(range(*spans[0]))
        picked: set[int] = set()
        for lo, hi in spans:
            picked.update(range(lo, hi))
        return sorted(picked)

    # ------------------------------------------------------------- changes
    def _own(self) -> None:
        """Make the arrays this view's own before changing them (they may be the shared snapshot's)."""
        if self.shared:
            self.uids = array("I", self.uids)
            self.flags = list(self.flags)
            self.modseqs = array("Q", self.modseqs)
            self.shared = False

    def set_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        i = self.index_of(uid)
        if i is not None:
            self._own()
            self.flags[i] = flags
            self.modseqs[i] = modseq

    def own_change(self, changed: list[tuple[int, frozenset[str], int]]) -> None:
        """Record the result of this session's own STORE (already answered with FETCHes)."""
        for uid, flags, ms in changed:
            self.set_flags(uid, flags, ms)
            self.reported[uid] = ms
        modseqs = {c[2] for c in changed}
        if len(modseqs) == 1 and next(iter(modseqs)) == self.modseq + 1:
            self.modseq += 1  # nothing else happened in between: no need to read it back

    def apply(self, ch: Changes, *, allow_expunge: bool, claim_recent: Any) -> list[bytes]:
        """Update the view from ``ch``; return the untagged responses to send now."""
        if ch.version is None:
            raise MailboxGone()
        out: list[bytes] = []
        for u in ch.vanished:
            if u <= self.max_uid and self.index_of(u) is not None:
                self.pending_expunge.add(u)
        if allow_expunge and self.pending_expunge:
            out += self.flush_expunges()
        new_uids: list[int] = []
        flag_changes: list[Any] = []
        if ch.changed:
            self._own()
        for m in ch.changed:
            if m.uid > self.max_uid:
                new_uids.append(m.uid)
                self.uids.append(m.uid)
                self.flags.append(m.flags)
                self.modseqs.append(m.modseq)
                self.max_uid = m.uid
            elif self.reported.get(m.uid) != m.modseq:
                i = self.index_of(m.uid)
                if i is not None:
                    self.flags[i] = m.flags
                    self.modseqs[i] = m.modseq
                    if m.uid not in self.pending_expunge:
                        flag_changes.append(m)
        if new_uids:
            self.aligned.clear()
            if not self.readonly:
                self.recent.update(claim_recent(self.id, new_uids, self.uidnext))
        if len(self.uids) != self.announced_exists:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
            self.announced_exists = len(self.uids)
        for m in flag_changes:
            seq = self.seq_of(m.uid)
            if seq is not None:
                out.append(self.flags_line(seq, m.uid, m.flags, m.modseq))
        self.reported.clear()
        self.modseq = max(self.modseq, ch.version[0])
        self.uidnext = max(self.uidnext, ch.version[1])
        return out

    def flags_line(self, seq: int, uid: int, flags: frozenset[str], modseq: int) -> bytes:
        fl = flag_list([*flags, "\\Recent"] if uid in self.recent else flags)
        if self.condstore:
            return b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, fl, modseq)
        return b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, fl)

    def remove(self, uids: list[int]) -> list[bytes]:
        """Drop expunged UIDs now; EXPUNGE (or one VANISHED) responses for them."""
        self.pending_expunge.difference_update(uids)
        idx = sorted({i for i in (self.index_of(u) for u in uids) if i is not None})
        if not idx:
            return []
        gone = [self.uids[i] for i in idx]
        self.aligned.clear()
        for u in gone:
            self.recent.discard(u)
            self.reported.pop(u, None)
        if self.qresync:
            out = [b"* VANISHED " + format_uidset(gone).encode() + b"\r\n"]
        else:
            # highest first: each number is right as sent, no renumbering on either side
            out = [b"* %d EXPUNGE\r\n" % (i + 1) for i in reversed(idx)]
        if len(idx) > 64:
            drop = set(idx)
            keep = [i for i in range(len(self.uids)) if i not in drop]
            self.uids = array("I", [self.uids[i] for i in keep])
            self.flags = [self.flags[i] for i in keep]
            self.modseqs = array("Q", [self.modseqs[i] for i in keep])
            self.shared = False
        else:
            self._own()
            for i in reversed(idx):
                del self.uids[i]
                del self.flags[i]
                del self.modseqs[i]
        self.announced_exists = len(self.uids)
        return out

    def flush_expunges(self) -> list[bytes]:
        if not self.pending_expunge:
            return []
        return self.remove(sorted(self.pending_expunge))
