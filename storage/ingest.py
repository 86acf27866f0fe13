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
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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


# The parent chain THREAD=REFERENCES uses (RFC 5256), kept in the summary so a THREAD need not
# parse each message's whole structure record. Same reading as imapd/threading_refs.py
# (its regex, its 64 KiB and 2,000-character windows, its last-100 rule), with tighter bounds on
# what is stored: a chain that does not fit is left out, and THREAD reads it as before.
_MSGID = re.compile(r"<([^<>\s]{1,500})>")
MAX_REFS = 100  # message-ids kept of a References field: the last ones
MAX_REF_CHARS = 250  # characters of one kept message-id
MAX_REFS_TOTAL = 8192  # characters of the whole kept chain


def thread_links(hdr: dict, env: dict) -> dict:
    """``{"in_reply_to": id | None, "references": [ids]}`` for the summary; ``{}`` if over the bounds."""
    refs = hdr.get("references")
    chain = _MSGID.findall(refs[:64 * 1024])[-MAX_REFS:] if refs else []
    irt_value = env.get("in-reply-to")
    m = _MSGID.search(irt_value[:2000]) if irt_value else None
    irt = m.group(1) if m else None
    if (irt is not None and len(irt) > MAX_REF_CHARS) or any(len(r) > MAX_REF_CHARS for r in chain) \
            or sum(len(r) for r in chain) > MAX_REFS_TOTAL:
        return {}
    return {"in_reply_to": irt, "references": chain}


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
        **thread_links(meta.get("hdr") or {}, env),
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
    """Insert the index rows of one stored file inside transaction ``c``; returns the new UID.

    Raw DBAPI statements: this is the hot path of every delivery, and
    SQLAlchemy's statement building costs more than SQLite's work here.
    """
    context = blob_id.encode()
    q = _Sql(c)
    q.execute(
        "INSERT INTO blobs (blob_id, user_id, size, meta, summary) VALUES (?, ?, ?, ?, ?)",
        (blob_id, user.id, size, store.keyring.seal(user.uuid, meta_json, b"meta|" + context),
         store.keyring.seal(user.uuid, summary_json, b"summary|" + context)),
    )
    uidnext, modseq = q.one(
        "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 WHERE id = ?"
        " RETURNING uidnext, highestmodseq",
        (mailbox_id,),
    )
    uid = uidnext - 1
    q.execute(
        "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, keywords, modseq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (mailbox_id, uid, blob_id, size, internal_date, mask, " ".join(keywords) or None, modseq),
    )
    q.execute("UPDATE users SET used_bytes = used_bytes + ?, used_messages = used_messages + 1 WHERE id = ?", (size, user.id))
    return uid


_libc = None


def sync_filesystem(path: Path) -> None:
    """syncfs(2) on the file system holding ``path``: data and metadata, one journal commit.

    Cheaper than an fsync per file and per directory when a batch touches
    many of them. Falls back to os.sync() where syncfs is unavailable.
    """
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class _Sql:
    """A DBAPI cursor on a SQLAlchemy connection, with ``?`` placeholders on every driver."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        self._cur = conn.connection.cursor()
        self._pyformat = conn.dialect.paramstyle != "qmark"

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._cur.execute(sql.replace("?", "%s") if self._pyformat else sql, params)

    def one(self, sql: str, params: tuple = ()) -> tuple:
        self.execute(sql, params)
        row = self._cur.fetchone()
        if row is None:
            raise NotFoundError("row vanished during delivery")
        return tuple(row)

    def first(self, sql: str, params: tuple = ()) -> tuple | None:
        self.execute(sql, params)
        row = self._cur.fetchone()
        return tuple(row) if row is not None else None


@dataclass
class _Prepared:
    target: Target
    blob_id: str
    size: int
    mask: int
    keywords: tuple[str, ...]


@dataclass
class _Job:
    prepared: list[_Prepared]
    when: float
    meta_json: bytes
    summary_json: bytes
    strict_quota: bool
    report: IngestReport = field(default_factory=IngestReport)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class GroupCommitter:
    """Commits the index rows of concurrent deliveries in one transaction.

    Each delivery encrypts and fsyncs its files in its own thread, then hands
    a job here and waits. One committer thread takes every waiting job, fsyncs
    the tmp directories once, runs one transaction (one WAL sync for the whole
    batch), renames the files into place and fsyncs each directory once, then
    wakes the callers. Under load the cost of durability is shared; alone, a
    delivery waits for nobody.
    """

    def __init__(self, store: Store, max_batch: int = 64) -> None:
        self._s = store
        self._max = max_batch
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: the committer thread's own connection, kept between batches: no pool checkout, liveness
        #: ping and reset per batch (dropped after any failure, so a broken one is not reused)
        self._conn = None  # type: ignore[var-annotated]

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise StoreError("the store is closed")
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ingest-commit", daemon=True)
                self._thread.start()
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    self._drop_connection()
                    return
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - isolate the job at fault
                self._drop_connection()
                if len(batch) == 1:
                    batch[0].error = exc
                else:
                    for job in batch:
                        try:
                            self._commit([job])
                        except BaseException as one:  # noqa: BLE001
                            self._drop_connection()
                            job.error = one
            for job in batch:
                job.done.set()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken: the pool discards it
                pass

    def _transaction(self):  # type: ignore[no-untyped-def]
        """``Store.write()`` on the committer's kept connection (BEGIN IMMEDIATE on SQLite, as there)."""
        if self._conn is None:
            self._conn = self._s.engine.connect().execution_options(immediate=True)
        return self._conn.begin()

    def _commit(self, batch: list[_Job]) -> None:
        store = self._s
        if store.blobs.fsync:
            # the files' data and their tmp/ entries, for every job, in one go
            sync_filesystem(store.blobs.root)
        published: list[tuple[str, str]] = []
        for job in batch:
            job.report = IngestReport()
        with self._transaction():
            c = self._conn
            q = _Sql(c)
            for job in batch:
                for p in job.prepared:
                    t = p.target
                    mb = q.first("SELECT id, uidvalidity FROM mailboxes WHERE user_id = ? AND name = ?", (t.user.id, t.mailbox))
                    if mb is None:
                        job.report.failed[t.user.email] = NotFoundError("no such mailbox: {mailbox}", mailbox=t.mailbox)
                        continue
                    u = q.first("SELECT quota_bytes, quota_messages, used_bytes, used_messages FROM users WHERE id = ?", (t.user.id,))
                    if u is None:
                        job.report.failed[t.user.email] = NotFoundError("no such user: {email}", email=t.user.email)
                        continue
                    qb, qm, ub, um = u
                    if job.strict_quota and ((qb and ub + p.size > qb) or (qm and um + 1 > qm)):
                        job.report.failed[t.user.email] = QuotaExceededError("mailbox of {email} is full", email=t.user.email)
                        continue
                    uid = index_message(store, c, t.user, mb[0], p.blob_id, p.size, job.when, p.mask, p.keywords,
                                        job.meta_json, job.summary_json)
                    job.report.stored.append(Stored(t.user.email, t.mailbox, mb[0], mb[1], uid, p.blob_id))
                    published.append((t.user.uuid, p.blob_id))
        # Not synced here: the index commit is the point of no return and the
        # tmp/ files are durable, so a rename lost in a crash is redone by
        # Store.recover() (and readers fall back to tmp/). The next batch's
        # sync makes these renames durable too.
        store.blobs.publish_many(published, sync=False)


class Ingest:
    def __init__(self, store: Store) -> None:
        self._s = store
        self.committer = GroupCommitter(store)

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

        Blocking (call from a worker thread). Raises QuotaExceededError (or
        the single failure) when nothing could be stored at all.
        """
        if not targets:
            raise InvalidInputError("no recipients")
        if len(raw) > self._s.max_message_size:
            raise QuotaExceededError("message too large ({size} bytes, {max_message_size} at most)", size=len(raw), max_message_size=self._s.max_message_size)
        when = internal_date if internal_date is not None else time.time()
        meta = scan(raw, max_depth=self._s.max_mime_depth)
        job = _Job([], when, json.dumps(meta, separators=(",", ":")).encode(),
                   json.dumps(summarise(meta), separators=(",", ":")).encode(), strict_quota)
        try:
            for t in targets:
                try:
                    mask, keywords = split_flags(t.flags)
                except ValueError as exc:
                    raise InvalidInputError(str(exc)) from exc
                blob_id = self._s.blobs.new_blob_id()
                file_meta = {"mailbox": t.mailbox, "internaldate": when, "flags": list(t.flags), "source": source}
                with self._s.blobs.writer(t.user.uuid, blob_id, file_meta, fsync=False) as w:
                    w.write(raw)
                    size = w.finish()
                job.prepared.append(_Prepared(t, blob_id, size, mask, keywords))
            self.committer.submit(job)
        except BaseException:
            for p in job.prepared:
                self._s.blobs.discard_tmp(p.target.user.uuid, p.blob_id)
            raise
        report = job.report
        kept = {s.blob_id for s in report.stored}
        for p in job.prepared:
            if p.blob_id not in kept:
                self._s.blobs.discard_tmp(p.target.user.uuid, p.blob_id)
        for s in {s.mailbox_id for s in report.stored}:
            self._s.notify(s)
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
            raise InvalidInputError("account {email} is disabled", email=user.email)
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
