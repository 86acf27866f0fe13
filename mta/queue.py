"""The outbound queue: mail for remote recipients, stored durably, encrypted.

The MTA calls ``enqueue`` before it answers 250; delivery to remote MX hosts
(issue 4) reads the queue through ``ids`` / ``load`` / ``remove``. Only this
module knows the files.

On-disk format (version 1)::

    <data_dir>/queue/tmp/<id>    being written; never read; recovery removes
                                 ones older than an hour
    <data_dir>/queue/ready/<id>  complete and durable: waiting for delivery

A queue id is 20 lowercase hex digits (milliseconds since 1970 in 11
digits, then 9 random digits), so ids sort by arrival; readers accept any
20 characters of ``[0-9a-z]``. A file is::

    b"APQ1" | sealed record

where the sealed record is ``store.keyring.seal(queue_key_uuid, plaintext,
b"queue|" + id)`` (AES-256-GCM with a key of the queue pseudo-account, whose
uuid is kept in the settings table under ``mta.queue_key_uuid``; the
context binds a file to its id, so renamed or swapped files do not open)
and the plaintext is::

    4-byte big-endian length N | N bytes of JSON envelope | raw message

The JSON envelope: ``{"v": 1, "id", "sender", "recipients": [...],
"created": unix time, "meta": {...}}``; ``meta`` carries what the MTA knew
(client IP, authenticated user, listener, original queue id).

Writes are tmp + fsync + rename into ``ready/`` + fsync of ``ready/``, so a
file in ``ready/`` is always whole. Removal unlinks and fsyncs ``ready/``.

Delivery state (mta/outbound.py) lives beside the message, never inside it::

    <data_dir>/queue/state/<id>  b"APS1" | sealed JSON, context b"queue-state|" + id

written tmp + rename (the rename happens right after the remote 250, on the
event loop, before anything else; the fsync of the file and of ``state/``
follows in a worker thread). The JSON: ``{"v": 1, "attempts", "next",
"last_attempt", "last_error", "delay_notified", "rcpts": {address: {"s":
"sent" | "failed" | "deferred", "reply", "mx", "ts"}}}``; a recipient
without an entry, or "deferred", is still to be delivered. A recipient
marked "sent" is never sent again, so a crash after a remote 250 repeats
nothing that the remote side acknowledged (the window left is the time
between reading the 250 and the rename). A message whose recipients are
all done is removed (message and state), which is its own record. A state
file that cannot be read (a crash during a power loss) counts as no state:
the message is retried for every recipient rather than lost.

``<data_dir>/queue/kick/`` holds requests from ``appliance queue``: an
empty file ``<id>`` (retry now), ``<id>.delete`` or ``all`` (flush); the
delivery worker takes them within a second. ``worker.lock`` is held
(flock) by the one process delivering from this queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.crypto import fsync_dir
from storage.errors import CryptoError, NotFoundError

MAGIC = b"APQ1"
STATE_MAGIC = b"APS1"
SETTING = "mta.queue_key_uuid"
_ALPHABET = string.digits + string.ascii_lowercase


def new_queue_id() -> str:
    """20 characters, sortable by time: 11 hex digits of milliseconds since 1970, 9 random hex digits."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(5)[:9]}"


def _check_id(queue_id: str) -> str:
    if len(queue_id) != 20 or any(c not in _ALPHABET for c in queue_id):
        raise NotFoundError("invalid queue id {id}", id=repr(queue_id))
    return queue_id


def arrival_time(queue_id: str) -> float | None:
    """When a message with an id from ``new_queue_id`` arrived (unix time), or None for other ids."""
    try:
        return int(queue_id[:11], 16) / 1000.0
    except ValueError:
        return None


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    sender: str
    recipients: list[str]
    raw: bytes
    created: float
    meta: dict[str, Any] = field(default_factory=dict)


class OutboundQueue:
    """Durable, encrypted outbound queue. Blocking methods: call them in an executor."""

    def __init__(self, store: Any, root: Path | str, *, fsync: bool = True) -> None:
        self._s = store
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.ready_dir = self.root / "ready"
        self.state_dir = self.root / "state"
        self.kick_dir = self.root / "kick"
        self.fsync = fsync
        self._key_uuid: str | None = None
        self._lock = threading.Lock()
        #: called as ``on_enqueue(QueuedMessage without raw)`` after each enqueue (the delivery worker)
        self.on_enqueue: Callable[[QueuedMessage], None] | None = None
        for d in (self.root, self.tmp_dir, self.ready_dir, self.state_dir, self.kick_dir):
            if not d.is_dir():
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                if fsync:
                    fsync_dir(d.parent)

    # -------------------------------------------------------------- key
    def _key(self) -> str:
        if self._key_uuid is None:
            with self._lock:
                if self._key_uuid is None:
                    kid = self._s.get_setting(SETTING)
                    if kid is None or not self._s.keyring.has(kid):
                        kid = uuid.uuid4().hex
                        self._s.keyring.create(kid)
                        self._s.set_setting(SETTING, kid)
                    self._key_uuid = kid
        return self._key_uuid

    # ------------------------------------------------------------ write
    def enqueue(self, sender: str, recipients: list[str], raw: bytes, *, meta: dict[str, Any] | None = None,
                queue_id: str | None = None) -> str:
        """Store a message for remote delivery; durable when this returns. Returns its queue id."""
        if not recipients:
            raise ValueError("enqueue needs at least one recipient")
        qid = _check_id(queue_id) if queue_id else new_queue_id()
        created = time.time()
        envelope = json.dumps(
            {"v": 1, "id": qid, "sender": sender, "recipients": list(recipients), "created": created, "meta": meta or {}},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        plaintext = len(envelope).to_bytes(4, "big") + envelope + raw
        sealed = self._s.keyring.seal(self._key(), plaintext, b"queue|" + qid.encode())
        tmp = self.tmp_dir / qid
        final = self.ready_dir / qid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(MAGIC + sealed)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            fsync_dir(self.ready_dir)
        if self.on_enqueue is not None:
            try:
                self.on_enqueue(QueuedMessage(qid, sender, list(recipients), b"", created, dict(meta or {})))
            except Exception:  # noqa: BLE001 - the message is queued; the worker also rescans
                pass
        return qid

    # ------------------------------------------------------------- read
    def ids(self) -> list[str]:
        """Queue ids waiting for delivery, oldest first."""
        try:
            return sorted(n for n in os.listdir(self.ready_dir) if len(n) == 20)
        except FileNotFoundError:
            return []

    def load(self, queue_id: str) -> QueuedMessage:
        path = self.ready_dir / _check_id(queue_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError("no queued message {id}", id=queue_id) from None
        if data[:4] != MAGIC:
            raise CryptoError(f"queue file {path} is not a queue file (bad magic)")
        plain = self._s.keyring.open(self._key(), data[4:], b"queue|" + queue_id.encode())
        n = int.from_bytes(plain[:4], "big")
        env = json.loads(plain[4:4 + n])
        return QueuedMessage(env["id"], env["sender"], env["recipients"], plain[4 + n:], env["created"], env.get("meta", {}))

    def exists(self, queue_id: str) -> bool:
        return (self.ready_dir / _check_id(queue_id)).exists()

    def remove(self, queue_id: str, *, sync: bool = True) -> bool:
        """Drop a message (delivered or bounced) and its state. A missing file is fine; True if it was there.

        ``sync=False`` leaves the fsync of the directories to a later ``sync_dirs``
        (the delivery worker batches them); the unlink itself is done at once.
        """
        _check_id(queue_id)
        try:
            os.unlink(self.ready_dir / queue_id)
        except FileNotFoundError:
            existed = False
        else:
            existed = True
        try:
            os.unlink(self.state_dir / queue_id)
        except FileNotFoundError:
            pass
        if existed and sync and self.fsync:
            self.sync_dirs()
        return existed

    def sync_dirs(self) -> None:
        if self.fsync:
            fsync_dir(self.ready_dir)
            fsync_dir(self.state_dir)

    # ------------------------------------------------------------ state
    def load_state(self, queue_id: str) -> dict[str, Any] | None:
        """The delivery state of a message, or None (no state yet, or unreadable: start afresh)."""
        try:
            data = (self.state_dir / _check_id(queue_id)).read_bytes()
        except FileNotFoundError:
            return None
        if data[:4] != STATE_MAGIC:
            return None
        try:
            state = json.loads(self._s.keyring.open(self._key(), data[4:], b"queue-state|" + queue_id.encode()))
        except (CryptoError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("v") == 1 else None

    def save_state(self, queue_id: str, state: dict[str, Any], *, sync: bool = True) -> bool:
        """Write the delivery state: tmp + rename (+ fsync of file and directory with ``sync``).

        Returns False, writing nothing, when the message is no longer queued
        (deleted meanwhile).
        """
        _check_id(queue_id)
        if not (self.ready_dir / queue_id).exists():
            return False
        plain = json.dumps({**state, "v": 1}, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = STATE_MAGIC + self._s.keyring.seal(self._key(), plain, b"queue-state|" + queue_id.encode())
        tmp = self.state_dir / f".{queue_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(sealed)
            while view:
                view = view[os.write(fd, view):]
            if sync and self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.state_dir / queue_id)
        if sync and self.fsync:
            fsync_dir(self.state_dir)
        return True

    def sync_state(self, queue_id: str) -> None:
        """fsync a state file written with ``sync=False``, and its directory."""
        if not self.fsync:
            return
        try:
            fd = os.open(self.state_dir / _check_id(queue_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.state_dir)

    # ------------------------------------------------- requests (CLI)
    def kick(self, queue_id: str | None = None, *, delete: bool = False) -> None:
        """Ask the delivery worker to retry ``queue_id`` now (None: every message), or to delete it."""
        name = "all" if queue_id is None else _check_id(queue_id) + (".delete" if delete else "")
        (self.kick_dir / name).touch(mode=0o600)

    def take_kicks(self) -> tuple[bool, set[str], set[str]]:
        """(flush everything?, ids to retry now, ids to delete); the request files are consumed."""
        everything, retry, delete = False, set(), set()
        try:
            names = os.listdir(self.kick_dir)
        except FileNotFoundError:
            return everything, retry, delete
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.kick_dir / name)
            if name == "all":
                everything = True
            elif name.endswith(".delete") and len(name) == 27:
                delete.add(name[:20])
            elif len(name) == 20:
                retry.add(name)
        return everything, retry, delete

    @contextlib.contextmanager
    def worker_lock(self) -> Iterator[bool]:
        """Hold ``worker.lock`` (non-blocking); yields False when another process holds it."""
        fd = os.open(self.root / "worker.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def worker_running(self) -> bool:
        """Does some process deliver from this queue now?"""
        with self.worker_lock() as mine:
            return not mine

    def recover(self, *, orphan_age: float = 3600.0) -> int:
        """Remove temp files of interrupted enqueues (never acknowledged) and state files without a message."""
        removed = 0
        now = time.time()
        for entry in os.scandir(self.tmp_dir):
            try:
                if now - entry.stat().st_mtime > orphan_age:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        for entry in os.scandir(self.state_dir):
            name = entry.name
            qid = name[1:21] if name.startswith(".") else name
            if not (self.ready_dir / qid).exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return removed
