"""Operations on the outbound queue and the spam quarantine, shared by the pages and the JSON API.

The panel reads the queue files the way ``appliance queue`` does
(``mta.queue.OutboundQueue``): retry, flush and delete are requests the
delivery worker takes within a second; with no worker running, delete
removes the files itself. The quarantine is ``antispam.quarantine``:
release delivers through the store's one ingest path.

Scope: a queued message belongs to its envelope sender (its domain, and for
department admins the sender's department); a held message to each of its
recipients. A held message is shown when one of its recipients is in scope,
and released or deleted only by an admin whose scope covers all of them.
Message bodies are never shown; a super admin sees a queued message's main
header fields (From, To, Cc, Subject, Date, Message-ID), like ``appliance
queue show``. Every change goes to the audit log.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import CryptoError, NotFoundError

from .authz import (
    QUARANTINE,
    QUEUE,
    READ,
    WRITE,
    Forbidden,
    Principal,
    Target,
    admin_area,
    allowed,
    authorize,
)
from .context import OpError, PanelContext
from .i18n import _

PER_PAGE = 50
DELETE_WAIT = 5.0
QUEUE_STATES = ("pending", "deferred", "failed", "sent", "held")
HEADER_FIELDS = ("from", "to", "cc", "subject", "date", "message-id")


# ------------------------------------------------------------------ helpers
def _domain_of(address: str) -> str | None:
    if "@" not in (address or ""):
        return None
    return address.rpartition("@")[2].lower() or None


def _departments_by_email(pc: PanelContext, p: Principal) -> dict[str, int | None]:
    """Blocking: email -> department id of the users in the principal's department subtrees (none for others)."""
    ids: set[int] = set()
    for g in p.grants:
        if g.role == "department":
            ids |= g.subtree
    if not ids or p.sees_everything:
        return {}
    return {u.email: u.department_id for u in pc.store.directory.list_users(department_ids=ids, limit=None)}


def _target(kind: str, address: str, deps: dict[str, int | None]) -> Target:
    return Target(kind, _domain_of(address), deps.get((address or "").lower()))


def _page_of(items: list[Any], page: int, per_page: int) -> tuple[list[Any], int, int]:
    per_page = max(1, min(per_page, 500))
    pages = max(1, (len(items) + per_page - 1) // per_page)
    page = max(1, min(page, pages))
    return items[(page - 1) * per_page: page * per_page], page, pages


# -------------------------------------------------------------------- queue
@dataclass(frozen=True)
class Envelope:
    """What never changes about a queued message (cached: reading it decrypts the whole file)."""

    sender: str
    recipients: tuple[str, ...]
    created: float
    size: int
    auth: str | None


@dataclass
class QueueItem:
    id: str
    sender: str
    created: float
    size: int
    auth: str | None
    attempts: int
    next_try: float | None
    last_attempt: float | None
    last_error: str
    held: str | None
    recipients: list[dict[str, Any]]
    state: str  # held, pending (not tried yet), deferred (tried, some recipients left)
    can_write: bool = False
    headers: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("id", "sender", "created", "size", "auth", "attempts", "next_try",
                                              "last_attempt", "last_error", "held", "recipients", "state")}
        if self.headers:
            out["headers"] = self.headers
        return out


@dataclass
class QueuePage:
    items: list[QueueItem]
    total: int
    page: int
    pages: int
    delivering: bool
    hold: bool
    unreadable: int


class QueueView:
    """The outbound queue as the panel sees it; one per panel process (keeps the envelope cache)."""

    def __init__(self, pc: PanelContext) -> None:
        from mta.queue import OutboundQueue

        self.pc = pc
        root = Path(pc.cfg.instance.data_dir) / "queue"
        self.queue = OutboundQueue(pc.store, root, fsync=pc.cfg.storage.fsync)
        self._envelopes: dict[str, Envelope] = {}
        self._lock = threading.Lock()

    def envelope(self, qid: str) -> Envelope:
        with self._lock:
            env = self._envelopes.get(qid)
        if env is None:
            msg = self.queue.load(qid)
            env = Envelope(msg.sender, tuple(msg.recipients), msg.created, len(msg.raw), msg.meta.get("auth"))
            with self._lock:
                self._envelopes[qid] = env
        return env

    def prune(self, ids: list[str]) -> None:
        keep = set(ids)
        with self._lock:
            for qid in [q for q in self._envelopes if q not in keep]:
                del self._envelopes[qid]

    def item(self, qid: str, frozen: dict[str, bool]) -> QueueItem:
        env = self.envelope(qid)
        state = self.queue.load_state(qid) or {}
        rcpts = state.get("rcpts", {})
        recipients = []
        for r in env.recipients:
            it = rcpts.get(r) or {}
            recipients.append({"address": r, "state": it.get("s", "pending"), "reply": it.get("reply") or it.get("text") or "",
                               "mx": it.get("mx"), "at": it.get("ts")})
        held = state.get("held")
        if env.auth and not held:
            if env.auth not in frozen:
                frozen[env.auth] = _is_frozen(self.pc.store, env.auth)
            if frozen[env.auth]:
                held = "account frozen"
        attempts = int(state.get("attempts", 0) or 0)
        overall = "held" if held else ("deferred" if attempts else "pending")
        return QueueItem(qid, env.sender, env.created, env.size, env.auth, attempts, state.get("next") or None,
                         state.get("last_attempt"), state.get("last_error", "") or "", held, recipients, overall)


def _is_frozen(store: Any, email: str) -> bool:
    try:
        from antispam import outbound
    except ImportError:  # pragma: no cover - antispam is part of the product
        return False
    return outbound.is_frozen(store, email) is not None


def queue_view(pc: PanelContext) -> QueueView:
    view = pc.extra.get("queue_view")
    if view is None:
        view = pc.extra["queue_view"] = QueueView(pc)
    return view


def _matches(item: QueueItem, sender: str, rcpt_domain: str, state: str) -> bool:
    if sender and sender not in item.sender.lower():
        return False
    if rcpt_domain and not any(_domain_of(r["address"]) == rcpt_domain for r in item.recipients):
        return False
    if state:
        if state == "held":
            return item.held is not None
        if state in ("pending", "deferred") and item.state == state:
            return True
        return any(r["state"] == state for r in item.recipients)
    return True


def _visible_items(pc: PanelContext, p: Principal) -> tuple[list[QueueItem], int]:
    """Blocking: every queued message the principal may read, oldest first, and how many could not be read."""
    view = queue_view(pc)
    ids = view.queue.ids()
    view.prune(ids)
    deps = _departments_by_email(pc, p)
    frozen: dict[str, bool] = {}
    out, bad = [], 0
    for qid in ids:
        try:
            env = view.envelope(qid)
        except NotFoundError:
            continue  # delivered meanwhile
        except CryptoError:
            bad += 1
            continue
        target = _target(QUEUE, env.sender, deps)
        if not allowed(p, READ, target):
            continue
        try:
            item = view.item(qid, frozen)
        except NotFoundError:
            continue
        item.can_write = allowed(p, WRITE, target)
        out.append(item)
    return out, bad


async def list_queue(pc: PanelContext, p: Principal, *, sender: str = "", rcpt_domain: str = "", state: str = "",
                     page: int = 1, per_page: int = PER_PAGE) -> QueuePage:
    if not admin_area(p):
        raise Forbidden("queue")
    sender = (sender or "").strip().lower()[:320]
    rcpt_domain = (rcpt_domain or "").strip().lower().lstrip("@")[:255]
    state = (state or "").strip().lower()
    if state and state not in QUEUE_STATES:
        raise OpError(_("unknown state {state}").format(state=state[:20]))

    def work() -> QueuePage:
        items, bad = _visible_items(pc, p)
        view = queue_view(pc)
        chosen = [i for i in items if _matches(i, sender, rcpt_domain, state)]
        shown, pg, pages = _page_of(chosen, page, per_page)
        hold = bool(pc.cfg.queue.hold)
        return QueuePage(shown, len(chosen), pg, pages, view.queue.worker_running() and not hold, hold,
                         bad if p.sees_everything else 0)

    return await pc.run(work)


def _load_in_scope(pc: PanelContext, p: Principal, qid: str, action: str) -> QueueItem:
    """Blocking: one queued message, after ``authorize``; a message out of scope is refused, not hidden."""
    view = queue_view(pc)
    if not view.queue.exists(qid):
        raise NotFoundError("no queued message {id}", id=qid)
    try:
        env = view.envelope(qid)
    except CryptoError as exc:
        if not p.is_super:
            raise Forbidden("unreadable queue file") from None
        raise OpError(_("{id} cannot be read: {error}").format(id=qid, error=str(exc)), 500) from None
    target = _target(QUEUE, env.sender, _departments_by_email(pc, p))
    authorize(p, action, target)
    item = view.item(qid, {})
    item.can_write = allowed(p, WRITE, target)
    return item


async def queue_item(pc: PanelContext, p: Principal, qid: str) -> QueueItem:
    def work() -> QueueItem:
        item = _load_in_scope(pc, p, qid, READ)
        if p.is_super:  # header fields, never the body
            from mta import headers as hdrs

            raw = queue_view(pc).queue.load(qid).raw
            item.headers = {name: hdrs.field_values(raw, name) for name in HEADER_FIELDS}
            item.headers = {k: v for k, v in item.headers.items() if v}
        return item

    return await pc.run(work)


async def retry_queued(pc: PanelContext, p: Principal, ip: str | None, qid: str) -> bool:
    """Ask for a delivery attempt now; True if a delivery worker will take it at once."""

    def work() -> bool:
        item = _load_in_scope(pc, p, qid, WRITE)
        view = queue_view(pc)
        view.queue.kick(qid)
        pc.audit(p, "queue.retry", qid, ip, {"sender": item.sender})
        return view.queue.worker_running() and not pc.cfg.queue.hold

    return await pc.run(work)


async def delete_queued(pc: PanelContext, p: Principal, ip: str | None, qid: str) -> bool:
    """Drop a message without delivering or bouncing it; False if a delivery attempt in progress still holds it."""

    def start() -> tuple[QueueItem, bool]:
        item = _load_in_scope(pc, p, qid, WRITE)
        q = queue_view(pc).queue
        if q.worker_running():
            q.kick(qid, delete=True)
            return item, False
        q.remove(qid)
        return item, True

    item, done = await pc.run(start)
    q = queue_view(pc).queue
    deadline = time.monotonic() + DELETE_WAIT
    while not done and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        done = not await pc.run(q.exists, qid)
    await pc.run(pc.audit, p, "queue.delete", qid, ip,
                 {"sender": item.sender, "recipients": [r["address"] for r in item.recipients], "done": done})
    return done


async def flush_queue(pc: PanelContext, p: Principal, ip: str | None) -> tuple[int, bool]:
    """Retry every message in the principal's scope now: (how many, delivered at once?)."""

    def work() -> tuple[int, bool]:
        view = queue_view(pc)
        if p.is_super:
            n = len(view.queue.ids())
            view.queue.kick(None)
        else:
            items, _bad = _visible_items(pc, p)
            mine = [i for i in items if i.can_write]
            if not mine and items:
                raise Forbidden("queue flush")
            for i in mine:
                view.queue.kick(i.id)
            n = len(mine)
        pc.audit(p, "queue.flush", None, ip, {"messages": n})
        return n, view.queue.worker_running() and not pc.cfg.queue.hold

    if not (p.is_super or any(g.role in ("domain", "department") for g in p.grants)):
        raise Forbidden("queue flush")
    return await pc.run(work)


def queue_count(pc: PanelContext, p: Principal) -> int:
    """Blocking: how many queued messages the principal sees (the dashboard)."""
    if p.sees_everything:
        return len(queue_view(pc).queue.ids())
    return len(_visible_items(pc, p)[0])


# --------------------------------------------------------------- quarantine
@dataclass
class HeldItem:
    id: str
    held_at: float
    expires: float
    sender: str
    recipients: list[str]
    subject: str
    score: float | None
    reason: str
    size: int
    symbols: list[tuple[str, float]]
    ip: str | None
    can_write: bool

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "held_at": self.held_at, "expires": self.expires, "sender": self.sender,
                "recipients": self.recipients, "subject": self.subject, "score": self.score, "reason": self.reason,
                "size": self.size, "symbols": [{"name": n, "score": s} for n, s in self.symbols], "ip": self.ip}


@dataclass
class HeldPage:
    items: list[HeldItem]
    total: int
    page: int
    pages: int


def quarantine(pc: PanelContext) -> Any:
    q = pc.extra.get("quarantine")
    if q is None:
        from antispam.layout import Layout
        from antispam.quarantine import Quarantine

        q = pc.extra["quarantine"] = Quarantine(pc.store, Layout.from_config(pc.cfg).quarantine)
    return q


def _held_item(h: Any, p: Principal, deps: dict[str, int | None]) -> HeldItem | None:
    """The held message as the principal may see it: None when no recipient is in scope.

    A sub-admin sees only the recipients in its scope.
    """
    targets = [(r, _target(QUARANTINE, r, deps)) for r in h.recipients]
    readable = [r for r, t in targets if allowed(p, READ, t)]
    if not readable:
        return None
    writable = all(allowed(p, WRITE, t) for _r, t in targets)
    return HeldItem(h.id, h.held_at, h.expires, h.sender, readable if not p.sees_everything else list(h.recipients),
                    h.subject, h.score, h.reason, h.size, list(h.symbols), h.ip, writable)


async def list_quarantine(pc: PanelContext, p: Principal, *, recipient: str = "", sender: str = "",
                          page: int = 1, per_page: int = PER_PAGE) -> HeldPage:
    if not admin_area(p):
        raise Forbidden("quarantine")
    recipient = (recipient or "").strip().lower()[:320]
    sender = (sender or "").strip().lower()[:320]

    def work() -> HeldPage:
        deps = _departments_by_email(pc, p)
        now = time.time()
        items = []
        for h in reversed(quarantine(pc).list()):  # newest first
            if h.expires <= now:
                continue  # purged within the hour
            it = _held_item(h, p, deps)
            if it is None:
                continue
            if recipient and not any(recipient in r.lower() for r in it.recipients):
                continue
            if sender and sender not in (it.sender or "").lower():
                continue
            items.append(it)
        shown, pg, pages = _page_of(items, page, per_page)
        return HeldPage(shown, len(items), pg, pages)

    return await pc.run(work)


def _held_in_scope(pc: PanelContext, p: Principal, qid: str, action: str) -> HeldItem:
    h = quarantine(pc).get(qid)
    it = _held_item(h, p, _departments_by_email(pc, p))
    if it is None or (action == WRITE and not it.can_write):
        raise Forbidden(f"{action} quarantine")
    return it


async def held_item(pc: PanelContext, p: Principal, qid: str) -> HeldItem:
    return await pc.run(_held_in_scope, pc, p, qid, READ)


async def release_held(pc: PanelContext, p: Principal, ip: str | None, qid: str) -> tuple[list[str], dict[str, str]]:
    """Deliver to the recipients' Inbox and delete: (delivered, {address: why not})."""

    def work() -> tuple[list[str], dict[str, str]]:
        it = _held_in_scope(pc, p, qid, WRITE)
        delivered, failed = quarantine(pc).release(qid)
        pc.audit(p, "quarantine.release", qid, ip, {"sender": it.sender, "delivered": delivered, "failed": list(failed)})
        return delivered, failed

    return await pc.run(work)


async def delete_held(pc: PanelContext, p: Principal, ip: str | None, qid: str) -> None:
    def work() -> None:
        it = _held_in_scope(pc, p, qid, WRITE)
        quarantine(pc).delete(qid)
        pc.audit(p, "quarantine.delete", qid, ip, {"sender": it.sender, "recipients": it.recipients})

    await pc.run(work)


def quarantine_count(pc: PanelContext, p: Principal) -> int:
    """Blocking: how many held messages the principal sees (the dashboard)."""
    deps = _departments_by_email(pc, p)
    now = time.time()
    return sum(1 for h in quarantine(pc).list() if h.expires > now and _held_item(h, p, deps) is not None)
