"""The event log: logins, admin actions, deliveries, security notices."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, or_, select

from . import models as m
from .records import Event

if TYPE_CHECKING:
    from .store import Store

KINDS = ("login", "admin", "delivery", "security")


def _clip(value: str | None, n: int) -> str | None:
    if value is None:
        return None
    value = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return value[:n]


class EventLog:
    def __init__(self, store: Store) -> None:
        self._s = store

    def record(
        self,
        kind: str,
        *,
        action: str = "",
        actor: str | None = None,
        subject: str | None = None,
        protocol: str | None = None,
        ip: str | None = None,
        client: str | None = None,
        result: str = "ok",
        detail: dict | None = None,
        ts: float | None = None,
    ) -> None:
        row = self._row(kind, action=action, actor=actor, subject=subject, protocol=protocol, ip=ip, client=client,
                        result=result, detail=detail, ts=ts)
        with self._s.write() as c:
            c.execute(insert(m.events).values(**row))

    def record_many(self, events: Iterable[dict]) -> None:
        """Insert several events (each a dict of ``record``'s arguments) in one transaction.

        For busy writers such as the MTA's delivery log: one lock and one
        sync for a batch instead of one per event.
        """
        rows = [self._row(**e) for e in events]
        if rows:
            with self._s.write() as c:
                c.execute(insert(m.events), rows)

    @staticmethod
    def _row(
        kind: str,
        *,
        action: str = "",
        actor: str | None = None,
        subject: str | None = None,
        protocol: str | None = None,
        ip: str | None = None,
        client: str | None = None,
        result: str = "ok",
        detail: dict | None = None,
        ts: float | None = None,
    ) -> dict:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind}")
        return {
            "ts": ts if ts is not None else time.time(),
            "kind": kind,
            "actor": _clip(actor, 320),
            "subject": _clip(subject, 320),
            "action": _clip(action, 64) or "",
            "protocol": _clip(protocol, 16),
            "ip": _clip(ip, 64),
            "client": _clip(client, 200),
            "result": _clip(result, 32) or "ok",
            "detail": json.dumps(detail or {}, ensure_ascii=False, default=str)[:8000],
        }

    def login(self, login: str, *, protocol: str, ip: str | None, client: str | None, result: str, detail: dict | None = None) -> None:
        self.record("login", action="login", subject=login, actor=login, protocol=protocol, ip=ip, client=client, result=result, detail=detail)

    def admin(self, actor: str, action: str, target: str | None = None, *, ip: str | None = None, detail: dict | None = None, result: str = "ok") -> None:
        self.record("admin", action=action, actor=actor, subject=target, ip=ip, protocol="admin", result=result, detail=detail)

    def delivery(self, queue_id: str, sender: str, recipients: list[str], size: int, result: str, *, ip: str | None = None, detail: dict | None = None) -> None:
        self.record(**self.delivery_event(queue_id, sender, recipients, size, result, ip=ip, detail=detail))

    @staticmethod
    def delivery_event(queue_id: str, sender: str, recipients: list[str], size: int, result: str, *, ip: str | None = None,
                       detail: dict | None = None, ts: float | None = None) -> dict:
        """The ``record`` arguments of a delivery event (for ``record_many``)."""
        d = {"queue_id": queue_id, "recipients": recipients, "size": size}
        d.update(detail or {})
        return {"kind": "delivery", "action": "deliver", "actor": sender or "<>", "subject": recipients[0] if recipients else None,
                "ip": ip, "protocol": "smtp", "result": result, "detail": d, "ts": ts}

    def query(
        self,
        *,
        kind: str | None = None,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        result: str | None = None,
        ip: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[Event]:
        q = select(m.events)
        if kind:
            q = q.where(m.events.c.kind == kind)
        if since is not None:
            q = q.where(m.events.c.ts >= since)
        if until is not None:
            q = q.where(m.events.c.ts < until)
        if user:
            q = q.where(or_(m.events.c.actor == user, m.events.c.subject == user))
        if result:
            q = q.where(m.events.c.result == result)
        if ip:
            q = q.where(m.events.c.ip == ip)
        q = q.order_by(m.events.c.ts.desc() if newest_first else m.events.c.ts, m.events.c.id.desc() if newest_first else m.events.c.id)
        q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._s.read() as c:
            rows = c.execute(q).all()
        return [
            Event(r.id, r.ts, r.kind, r.actor, r.subject, r.action, r.protocol, r.ip, r.client, r.result, json.loads(r.detail or "{}"))
            for r in rows
        ]

    def count(self, *, kind: str, since: float, subject: str | None = None, ip: str | None = None, result: str | None = None) -> int:
        q = select(func.count()).select_from(m.events).where(m.events.c.kind == kind, m.events.c.ts >= since)
        if subject is not None:
            q = q.where(m.events.c.subject == subject)
        if ip is not None:
            q = q.where(m.events.c.ip == ip)
        if result is not None:
            q = q.where(m.events.c.result == result)
        with self._s.read() as c:
            return c.execute(q).scalar_one()

    def last_ts(self, *, kind: str, subject: str | None = None, results: tuple[str, ...] = ()) -> float | None:
        q = select(func.max(m.events.c.ts)).where(m.events.c.kind == kind)
        if subject is not None:
            q = q.where(m.events.c.subject == subject)
        if results:
            q = q.where(m.events.c.result.in_(results))
        with self._s.read() as c:
            return c.execute(q).scalar()

    def prune(self, older_than: float) -> int:
        with self._s.write() as c:
            return c.execute(delete(m.events).where(m.events.c.ts < older_than)).rowcount
