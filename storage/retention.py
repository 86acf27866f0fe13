"""What the store keeps, and for how long: pruning the event log and the vacation memory.

``prune(store, retention=...)`` deletes events older than the retention (the
policy ``log_retention_days`` when set, else the config's ``log.retention``:
see ``retention_seconds``) in batches, so a large log never holds the write
lock for long, and vacation replies older than the longest vacation period.
``appliance log prune`` runs it, and the MTA service's daily maintenance job
(appliance/maintenance.py) does, a minute after start and then every day.
A removed account's mail is crypto-erased by ``Store.remove_user``; its
events go when their retention ends, like everyone's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from . import models as m
from . import policy, vacation
from .events import KINDS

if TYPE_CHECKING:
    from .store import Store

DAY = 86400.0
BATCH = 5000


def retention_seconds(store: Store, configured: float) -> float:
    """The policy's ``log_retention_days`` if set (> 0), else ``configured`` (log.retention, seconds)."""
    days = policy.load(store)["log_retention_days"]
    return days * DAY if days > 0 else float(configured)


def prune_events(store: Store, older_than: float) -> int:
    """Delete events with ts < ``older_than``, one kind and one batch at a time (the (kind, ts) index)."""
    total = 0
    e = m.events.c
    for kind in KINDS:
        while True:
            ids = select(e.id).where(e.kind == kind, e.ts < older_than).limit(BATCH).scalar_subquery()
            with store.write() as c:
                n = c.execute(delete(m.events).where(e.id.in_(ids))).rowcount
            total += n
            if n < BATCH:
                break
    return total


def prune(store: Store, *, retention: float, now: float | None = None) -> dict[str, float | int]:
    if retention < DAY:
        raise ValueError("retention below one day would break login throttling and alerts")
    now = time.time() if now is None else now
    cutoff = now - retention
    events = prune_events(store, cutoff)
    replies = vacation.prune(store, now - vacation.MAX_DAYS * DAY)
    return {"events": events, "vacation_replies": replies, "cutoff": cutoff}
