"""One shared snapshot per mailbox of (UID, flags, MODSEQ): what makes SELECT cheap.

SELECT needs every message's UID and flags. Reading them all from the index
costs ~15 ms per 10,000 messages; instead the process keeps the last
snapshot of each mailbox it opened and brings it up to date with
``changes_since`` (usually nothing, or a few rows). A snapshot's arrays
are never changed in place: catching up makes new ones. So a session's view
starts on the snapshot's arrays themselves and copies them only when its own
view first changes (``Selected._own``); sessions that select a mailbox and
wait (IDLE) share one copy.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from typing import Any

from storage.flags import join_flags


class Snapshot:
    __slots__ = ("uidvalidity", "modseq", "uidnext", "uids", "flags", "modseqs", "lock", "_facts")

    def __init__(self, mailbox: Any, rows: list[tuple]) -> None:
        self.uidvalidity = mailbox.uidvalidity
        self.modseq = mailbox.highestmodseq
        self.uidnext = mailbox.uidnext
        self.uids = array("I", [r[0] for r in rows])
        self.flags = [join_flags(r[1], r[2]) for r in rows]
        self.modseqs = array("Q", [r[3] for r in rows])
        self.lock = threading.Lock()
        self._facts: tuple[frozenset[str], int] | None = None

    def facts(self) -> tuple[frozenset[str], int]:
        """(keywords in use, first unseen sequence number or 0): what SELECT announces, once per state."""
        if self._facts is None:
            keywords: set[str] = set()
            for fs in set(self.flags):
                keywords.update(f for f in fs if not f.startswith("\\"))
            first_unseen = next((i + 1 for i, fs in enumerate(self.flags) if "\\Seen" not in fs), 0)
            self._facts = (frozenset(keywords), first_unseen)
        return self._facts

    def catch_up(self, store: Any, mailbox: Any) -> None:
        """Apply what changed since the snapshot (idempotent; called with ``lock`` held).

        Into new arrays: the old ones may be sessions' views.
        """
        changed, vanished = store.mail.changes_since(mailbox.id, self.modseq)
        uids, flags, modseqs = self.uids, self.flags, self.modseqs
        if vanished:
            gone = set(vanished)
            keep = [i for i, u in enumerate(uids) if u not in gone]
            if len(keep) != len(uids):
                uids = array("I", [uids[i] for i in keep])
                flags = [flags[i] for i in keep]
                modseqs = array("Q", [modseqs[i] for i in keep])
        if changed and uids is self.uids:
            uids, flags, modseqs = array("I", uids), list(flags), array("Q", modseqs)
        last = uids[-1] if uids else 0
        for m in changed:
            if m.uid > last:
                uids.append(m.uid)
                flags.append(m.flags)
                modseqs.append(m.modseq)
                last = m.uid
            else:
                i = bisect.bisect_left(uids, m.uid)
                if i < len(uids) and uids[i] == m.uid:
                    flags[i] = m.flags
                    modseqs[i] = m.modseq
        self.uids, self.flags, self.modseqs = uids, flags, modseqs
        self._facts = None
        self.modseq = mailbox.highestmodseq
        self.uidnext = mailbox.uidnext


class Views:
    def __init__(self, max_messages: int = 2_000_000) -> None:
        self.max_messages = max_messages
        self._snaps: OrderedDict[int, Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, store: Any, mailbox: Any) -> tuple[array, list, array, tuple[frozenset[str], int]]:
        """Blocking: (uids, flags, modseqs, (keywords, first unseen)) of ``mailbox`` as of its row just read.

        The snapshot's own arrays: read-only for the caller (``Selected`` copies them before a change).
        """
        with self._lock:
            snap = self._snaps.get(mailbox.id)
            if snap is not None:
                self._snaps.move_to_end(mailbox.id)
        if snap is None or snap.uidvalidity != mailbox.uidvalidity:
            snap = Snapshot(mailbox, store.mail.uid_flags(mailbox.id))
            with self._lock:
                self._snaps[mailbox.id] = snap
                self._trim()
        with snap.lock:
            if (snap.modseq, snap.uidnext) != (mailbox.highestmodseq, mailbox.uidnext):
                snap.catch_up(store, mailbox)
            return snap.uids, snap.flags, snap.modseqs, snap.facts()

    def _trim(self) -> None:
        total = sum(len(s.uids) for s in self._snaps.values())
        while total > self.max_messages and len(self._snaps) > 1:
            _k, s = self._snaps.popitem(last=False)
            total -= len(s.uids)
