"""What never changes about a stored message, cached per process.

A message's UID, file, size, INTERNALDATE, ENVELOPE and BODYSTRUCTURE never
change while it exists (only flags and MODSEQ do, and those live in each
session's view). So they are read from the index once and kept here, keyed by
(mailbox id, UIDVALIDITY) and UID, shared by every session of the process; a
mailbox deleted and re-created gets a new UIDVALIDITY, so a stale entry is
never found. Bounded by a message count; least recently used mailboxes go
first.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from typing import Any


class Msg:
    """Duck-types as ``storage.records.MessageInfo`` for ``meta``, ``open_blob`` and ``summaries``."""

    __slots__ = ("id", "uid", "blob_id", "size", "internal_date", "env", "bs", "body", "summary")

    def __init__(self, info: Any) -> None:
        self.id = info.id
        self.uid = info.uid
        self.blob_id = info.blob_id
        self.size = info.size
        self.internal_date = info.internal_date
        self.env: bytes | None = None
        self.bs: bytes | None = None
        self.body: bytes | None = None
        self.summary: dict | None = None


class MessageCache:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._boxes: OrderedDict[tuple[int, int], dict[int, Msg]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def box(self, mailbox_id: int, uidvalidity: int) -> dict[int, Msg]:
        key = (mailbox_id, uidvalidity)
        with self._lock:
            d = self._boxes.get(key)
            if d is None:
                d = self._boxes[key] = {}
            else:
                self._boxes.move_to_end(key)
        return d

    def peek(self, mailbox_id: int, uidvalidity: int) -> dict[int, Msg] | None:
        """The cached entries of a mailbox, if any (no index read)."""
        return self._boxes.get((mailbox_id, uidvalidity))

    def load(self, store: Any, mailbox_id: int, uidvalidity: int, uids: list[int]) -> dict[int, Msg]:
        """Blocking: the entries of ``uids`` that still exist (misses read from the index)."""
        d = self.box(mailbox_id, uidvalidity)
        missing = [u for u in uids if u not in d]
        if missing:
            added = 0
            for k in range(0, len(missing), 20000):
                for info in store.mail.messages(mailbox_id, missing[k:k + 20000]):
                    if info.uid not in d:
                        d[info.uid] = Msg(info)
                        added += 1
            self._grew(added, (mailbox_id, uidvalidity))
        return d

    def _grew(self, n: int, keep: tuple[int, int]) -> None:
        with self._lock:
            self._count += n
            while self._count > self.max_entries and self._boxes:
                key, d = next(iter(self._boxes.items()))
                if key == keep:
                    if len(self._boxes) == 1:
                        # one mailbox larger than the cache: drop its oldest half
                        for u in list(d)[: len(d) // 2]:
                            del d[u]
                        self._count = len(d)
                        return
                    self._boxes.move_to_end(key)
                    continue
                del self._boxes[key]
                self._count -= len(d)

    def forget(self, mailbox_id: int, uidvalidity: int, uids: list[int]) -> None:
        """Drop expunged messages (they cannot come back under the same UID)."""
        with self._lock:
            d = self._boxes.get((mailbox_id, uidvalidity))
            if d is None:
                return
            for u in uids:
                if d.pop(u, None) is not None:
                    self._count -= 1


class TextCache:
    """Decoded, casefolded text of messages for BODY/TEXT searches, compressed, bounded in bytes.

    Plain text kept in memory only (never written anywhere), zlib-compressed
    (about a third of the text), so a repeated body search neither decrypts
    nor parses every message again. Keyed by the stored file, which never
    changes. Texts are UTF-8 bytes: a casefolded needle is searched for as
    bytes.

    Least recently used first out, but scan-resistant: a search passes the
    ``mark()`` taken when it started, and an entry it read or added itself is
    never evicted to make room for the rest of the same search. Plain LRU would
    have a mailbox larger than the cache miss on every message of every search;
    this way the part that fits stays and keeps hitting.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, list] = OrderedDict()  # blob id -> [header, body, last use]
        self._size = 0
        self._clock = 0
        self._lock = threading.Lock()

    def mark(self) -> int:
        """A point in time: entries used after it belong to the search that took it."""
        with self._lock:
            self._clock += 1
            return self._clock

    def get(self, blob_id: str) -> list | None:
        """[header text or None, body text] as bytes (the header is decoded only once TEXT needs it)."""
        with self._lock:
            got = self._d.get(blob_id)
            if got is not None:
                self._d.move_to_end(blob_id)
                self._clock += 1
                got[2] = self._clock
                head, body = got[0], got[1]
        if got is None:
            return None
        return [zlib.decompress(head) if head is not None else None, zlib.decompress(body)]

    def has(self, blob_id: str) -> bool:
        return blob_id in self._d

    @staticmethod
    def _cost(head: bytes | None, body: bytes) -> int:
        return len(head or b"") + len(body) + 150

    def put(self, blob_id: str, header: bytes | None, body: bytes, since: int | None = None) -> None:
        zh = zlib.compress(header, 1) if header is not None else None
        zb = zlib.compress(body, 1)
        cost = self._cost(zh, zb)
        if cost > self.max_bytes // 8:
            return
        with self._lock:
            self._clock += 1
            old = self._d.get(blob_id)
            if old is not None:
                if zh is not None and old[0] is None:
                    old[0] = zh
                    self._size += len(zh)
                old[2] = self._clock
                return
            while self._size + cost > self.max_bytes and self._d:
                _k, oldest = next(iter(self._d.items()))
                if since is not None and oldest[2] >= since:
                    return  # full of this search's own entries: keep them, skip this one
                self._d.popitem(last=False)
                self._size -= self._cost(oldest[0], oldest[1])
            self._d[blob_id] = [zh, zb, self._clock]
            self._size += cost
