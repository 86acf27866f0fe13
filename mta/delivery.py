"""From an accepted SMTP transaction to durable storage, then the log.

``Deliverer.deliver`` is blocking (run it in the executor) and returns the
reply for the end of DATA. Local recipients go through the store's one
ingest path (with group commit when a batcher is given); remote ones into the
outbound queue. Both are durable before the 250 is returned.

Forwarding (mta/forward.py) is decided first: a forwarded copy is queued
with the rest before the 250, and a user who keeps no copy gets none stored.
Vacation replies are handed to ``after_delivery`` (a thread) once everything
is durable, so they never delay the 250 nor can fail the delivery.

Order: local ingest first, then the queue. If the queue write fails after
the local copies were stored, the client gets 451 and will retry, so the
local recipients may see the message twice; the reverse order would risk the
same for remote recipients, and a failing queue write (disk full) is rare.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.errors import QuotaExceededError, StoreError
from storage.ingest import IngestReport, Target
from storage.records import User

from . import forward
from .queue import OutboundQueue
from .replies import R

log = logging.getLogger("mta")


@dataclass
class Accepted:
    queue_id: str
    sender: str
    rcpt: list[str]  # the RCPT addresses accepted
    local: list[User]
    remote: list[str]
    raw: bytes
    ip: str
    listener: str
    auth_user: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    junk: set[str] = field(default_factory=set)  # local recipients whose copy goes to their Junk folder
    reached: list[User] = field(default_factory=list)  # local recipients the message reached (stored or forwarded), not as spam


class DeliveryLog:
    """Delivery events, written in batches by one thread (``store.events.record_many``).

    ``write`` never blocks on the database and never raises: the message is
    already safe when it is logged. Events reach the log within
    ``interval`` seconds; ``close`` flushes what is left. A crash can lose
    the last ``interval`` of log lines, never mail.
    """

    def __init__(self, store: Any, *, interval: float = 0.2, max_batch: int = 500) -> None:
        self._s = store
        self.interval = interval
        self.max_batch = max_batch
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mta-delivery-log", daemon=True)
        self._thread.start()

    def write(self, queue_id: str, sender: str, recipients: list[str], size: int, result: str, *, ip: str | None,
              detail: dict[str, Any]) -> None:
        event = self._s.events.delivery_event(queue_id, sender, recipients, size, result, ip=ip, detail=detail, ts=time.time())
        with self._cond:
            self._pending.append(event)
            if len(self._pending) >= self.max_batch:
                self._cond.notify()

    def flush(self) -> None:
        with self._cond:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._s.events.record_many(batch)
        except Exception:  # noqa: BLE001 - the mail is safe; keep the service up
            log.exception("could not write %d delivery events", len(batch))

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed:
                    self._cond.wait(self.interval)
                closed = self._closed
            self.flush()
            if closed:
                return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)


class Deliverer:
    def __init__(self, store: Any, queue: OutboundQueue, events: DeliveryLog,
                 ingest: Callable[..., IngestReport] | None = None) -> None:
        self._s = store
        self.queue = queue
        self.events = events
        self._ingest = ingest or store.ingest.ingest
        #: called with each delivered ``Accepted`` before the 250 (vacation replies): must only hand work off
        self.after_delivery: Callable[[Accepted], None] | None = None

    def deliver(self, msg: Accepted) -> str:
        detail: dict[str, Any] = {"listener": msg.listener, "rcpt": msg.rcpt}
        if msg.auth_user:
            detail["auth"] = msg.auth_user
        if msg.checks:
            detail["checks"] = msg.checks
        if msg.skipped:
            detail["skipped"] = msg.skipped
        if msg.rejected:
            detail["rejected"] = dict(msg.rejected)
        stored: list[str] = []
        failed: dict[str, str] = {}
        fwd = forward.plan(self._s, msg.local, msg.raw, msg.junk) if msg.local else forward.Plan()
        if fwd.keep or fwd.local_copies:
            try:
                targets = [Target(u, self._junk_folder(u.email)) if u.email in msg.junk else Target(u) for u in fwd.keep]
                targets += [Target(u) for u in fwd.local_copies]
                report = self._ingest(targets, msg.raw, source="smtp")
            except QuotaExceededError as exc:
                too_large = "too large" in str(exc)
                return self._refuse(msg, detail, "rejected" if too_large else "deferred",
                                    R.DATA_TOO_BIG if too_large else R.DATA_FULL, str(exc))
            except (StoreError, OSError) as exc:
                log.exception("ingest of %s failed", msg.queue_id)
                return self._refuse(msg, detail, "deferred", R.TEMP_STORE, str(exc))
            stored = [s.email for s in report.stored]
            failed = {email: str(err) for email, err in report.failed.items()}
        if msg.remote:
            try:
                self.queue.enqueue(msg.sender, msg.remote, msg.raw, queue_id=msg.queue_id,
                                   meta={"ip": msg.ip, "listener": msg.listener, "auth": msg.auth_user})
            except (StoreError, OSError) as exc:
                log.exception("enqueue of %s failed", msg.queue_id)
                detail["stored"] = stored
                return self._refuse(msg, detail, "deferred", R.TEMP_STORE, str(exc))
        if fwd.remote:
            by_email = {u.email: u for u in msg.local}
            try:
                for email, addresses in fwd.remote.items():
                    qid = self.queue.enqueue(email, addresses, forward.copy_for(msg.raw, by_email[email]),
                                             meta={"ip": msg.ip, "listener": msg.listener, "forward": email,
                                                   "of": msg.queue_id})
                    detail.setdefault("forward_queue_ids", []).append(qid)
            except (StoreError, OSError) as exc:
                log.exception("enqueue of the forwarded copies of %s failed", msg.queue_id)
                detail["stored"] = stored
                return self._refuse(msg, detail, "deferred", R.TEMP_STORE, str(exc))
        if fwd.forwarded:
            detail["forwarded"] = fwd.forwarded
        if fwd.not_forwarded:
            detail["not_forwarded"] = fwd.not_forwarded
        if failed:
            detail["failed"] = failed
        if msg.remote:
            detail["queued"] = msg.remote
        if msg.junk:
            detail["junk"] = sorted(msg.junk)
        result = "partial" if failed else "delivered"
        self.events.write(msg.queue_id, msg.sender, stored + msg.remote, len(msg.raw), result, ip=msg.ip, detail=detail)
        reached = set(stored) | set(fwd.forwarded)
        msg.reached = [u for u in msg.local if u.email in reached and u.email not in msg.junk]
        if self.after_delivery is not None and msg.reached:
            try:
                self.after_delivery(msg)  # hands the work to a thread: the 250 does not wait for it
            except Exception:  # noqa: BLE001 - the message is safe; an auto-reply is not worth a 451
                log.exception("after-delivery work for %s not started", msg.queue_id)
        return f"250 2.0.0 Ok: queued as {msg.queue_id}"

    def _junk_folder(self, email: str) -> str:
        try:
            from antispam import junk_folder

            return junk_folder(self._s, email)
        except Exception:  # noqa: BLE001 - no Junk folder: the INBOX is better than losing the message
            log.exception("no Junk folder for %s", email)
            return "INBOX"

    def _refuse(self, msg: Accepted, detail: dict[str, Any], result: str, reply: str, why: str) -> str:
        detail.update({"reply": reply, "error": why})
        self.events.write(msg.queue_id, msg.sender, [u.email for u in msg.local] + msg.remote, len(msg.raw), result,
                          ip=msg.ip, detail=detail)
        return reply
