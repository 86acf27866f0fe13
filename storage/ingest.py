"""The one ingest path: SMTP delivery, IMAP APPEND, imports and restores.

Every message that enters any mailbox goes through ``Ingest.ingest``, so
encryption, quota, indexing and change notification happen in one place.

Order of a commit, chosen for crash safety (the index commit is the point of
no return):
1. encrypt the message for each recipient account into ``tmp/``, fsync;
2. one index transaction: quota check, UID and MODSEQ allocation, rows;
3. rename ``tmp/`` -> ``cur/`` and fsync the directories;
4. notify watchers (IDLE).
A crash before 2 leaves only tmp files, removed by recovery; a crash after 2
leaves indexed messages whose files recovery moves into place (the reader
also falls back to ``tmp/``). Nothing half-visible, nothing lost once 2 is done.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import insert, select

from . import models as m
from .errors import InvalidInputError, NotFoundError, QuotaExceededError, StoreError
from .flags import split_flags
from .mime import decode_words, scan
from .records import User

if TYPE_CHECKING:
    from .store import Store


@dataclass
class Target:
    user: User
    mailbox: str = "INBOX"
    flags: tuple[str, ...] = ()


@dataclass
class Stored:
    email: str
    mailbox: str
    mailbox_id: int
    uidvalidity: int
    uid: int
    blob_id: str


@dataclass
class IngestReport:
    stored: list[Stored] = field(default_factory=list)
    failed: dict[str, StoreError] = field(default_factory=dict)


def _sent_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
        return dt.timestamp() if dt else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def summarise(meta: dict) -> dict:
    env = meta["env"]
    return {
        "subject": decode_words(env.get("subject")).casefold(),
        "from": decode_words(env.get("from")).casefold(),
        "to": decode_words(env.get("to")).casefold(),
        "cc": decode_words(env.get("cc")).casefold(),
        "bcc": decode_words(env.get("bcc")).casefold(),
        "sent": _sent_date(env.get("date")),
        "message_id": env.get("message-id"),
    }


def index_message(
    store: Store,
    c,  # type: ignore[no-untyped-def]
    user: User,
    mailbox_id: int,
    blob_id: str,
    size: int,
    internal_date: float,
    mask: int,
    keywords: tuple[str, ...],
    meta_json: bytes,
    summary_json: bytes,
) -> int:
    """Insert the index rows of one stored file inside transaction ``c``; returns the new UID."""
    context = blob_id.encode()
    c.execute(
        insert(m.blobs).values(
            blob_id=blob_id,
            user_id=user.id,
            size=size,
            meta=store.keyring.seal(user.uuid, meta_json, b"meta|" + context),
            summary=store.keyring.seal(user.uuid, summary_json, b"summary|" + context),
        )
    )
    uid, modseq = store.mail._allocate_uids(c, mailbox_id, 1)
    c.execute(
        insert(m.messages).values(
            mailbox_id=mailbox_id,
            uid=uid,
            blob_id=blob_id,
            size=size,
            internal_date=internal_date,
            flags=mask,
            keywords=" ".join(keywords) or None,
            modseq=modseq,
        )
    )
    store.mail._account(c, mailbox_id, size, 1)
    return uid


class Ingest:
    def __init__(self, store: Store) -> None:
        self._s = store

    def ingest(
        self,
        targets: list[Target],
        raw: bytes,
        *,
        internal_date: float | None = None,
        source: str = "smtp",
        strict_quota: bool = True,
    ) -> IngestReport:
        """Store ``raw`` for every target; per-target failures in the report.

        Raises QuotaExceededError (or the single failure) when nothing could
        be stored at all.
        """
        if not targets:
            raise InvalidInputError("no recipients")
        if len(raw) > self._s.max_message_size:
            raise QuotaExceededError(f"message too large ({len(raw)} bytes, {self._s.max_message_size} at most)")
        when = internal_date if internal_date is not None else time.time()
        meta = scan(raw, max_depth=self._s.max_mime_depth)
        meta_json = json.dumps(meta, separators=(",", ":")).encode()
        summary_json = json.dumps(summarise(meta), separators=(",", ":")).encode()
        report = IngestReport()
        prepared: list[tuple[Target, str, int, tuple[int, tuple[str, ...]]]] = []
        try:
            for t in targets:
                try:
                    flags = split_flags(t.flags)
                except ValueError as exc:
                    raise InvalidInputError(str(exc)) from exc
                blob_id = self._s.blobs.new_blob_id()
                with self._s.blobs.writer(t.user.uuid, blob_id, {"mailbox": t.mailbox, "internaldate": when, "flags": list(t.flags), "source": source}) as w:
                    w.write(raw)
                    size = w.finish()
                prepared.append((t, blob_id, size, flags))
            published: list[tuple[str, str]] = []
            with self._s.write() as c:
                for t, blob_id, size, (mask, keywords) in prepared:
                    mb = c.execute(
                        select(m.mailboxes.c.id, m.mailboxes.c.uidvalidity).where(
                            m.mailboxes.c.user_id == t.user.id, m.mailboxes.c.name == t.mailbox
                        )
                    ).first()
                    if mb is None:
                        report.failed[t.user.email] = NotFoundError(f"no such mailbox: {t.mailbox}")
                        continue
                    u = c.execute(
                        select(m.users.c.quota_bytes, m.users.c.quota_messages, m.users.c.used_bytes, m.users.c.used_messages, m.users.c.state)
                        .where(m.users.c.id == t.user.id)
                    ).first()
                    if u is None:
                        report.failed[t.user.email] = NotFoundError(f"no such user: {t.user.email}")
                        continue
                    if strict_quota and ((u.quota_bytes and u.used_bytes + size > u.quota_bytes) or (u.quota_messages and u.used_messages + 1 > u.quota_messages)):
                        report.failed[t.user.email] = QuotaExceededError(f"mailbox of {t.user.email} is full")
                        continue
                    uid = index_message(
                        self._s, c, t.user, mb.id, blob_id, size, when, mask, keywords, meta_json, summary_json
                    )
                    report.stored.append(Stored(t.user.email, t.mailbox, mb.id, mb.uidvalidity, uid, blob_id))
                    published.append((t.user.uuid, blob_id))
        except BaseException:
            for t, blob_id, _size, _flags in prepared:
                self._s.blobs.discard_tmp(t.user.uuid, blob_id)
            raise
        self._s.blobs.publish_many(published)
        kept = {b for _, b in published}
        for t, blob_id, _size, _flags in prepared:
            if blob_id not in kept:
                self._s.blobs.discard_tmp(t.user.uuid, blob_id)
        for s in report.stored:
            self._s.notify(s.mailbox_id)
        if not report.stored:
            raise next(iter(report.failed.values()))
        return report


class Delivery:
    """Two-phase delivery (maddy's DeliveryTarget): begin, add recipients, body, commit or abort."""

    def __init__(self, store: Store, sender: str = "", *, source: str = "smtp") -> None:
        self._s = store
        self.sender = sender
        self.source = source
        self._targets: dict[str, Target] = {}
        self._body = bytearray()
        self._done = False

    def add_recipient(self, address: str, *, mailbox: str = "INBOX", flags: tuple[str, ...] = ()) -> User:
        user = self._s.directory.get_user(address)
        if not user.active:
            raise InvalidInputError(f"account {user.email} is disabled")
        if user.email not in self._targets:
            self._targets[user.email] = Target(user, mailbox, flags)
        return user

    @property
    def recipients(self) -> list[str]:
        return list(self._targets)

    def write(self, data: bytes) -> None:
        if self._done:
            raise InvalidInputError("delivery already finished")
        if len(self._body) + len(data) > self._s.max_message_size:
            raise QuotaExceededError("message too large")
        self._body += data

    def commit(self, *, internal_date: float | None = None) -> IngestReport:
        if self._done:
            raise InvalidInputError("delivery already finished")
        self._done = True
        body, self._body = bytes(self._body), bytearray()
        return self._s.ingest.ingest(list(self._targets.values()), body, internal_date=internal_date, source=self.source)

    def abort(self) -> None:
        self._done = True
        self._body = bytearray()
