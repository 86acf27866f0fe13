"""What the web panel needs from the store beyond the directory.

Server-side panel sessions and API tokens (both kept only as HMAC digests of
the random secret the browser or the script holds), and a few read-only
views: user counts for paging, users per department, storage totals, and an
event search that can be limited to a domain or a set of users (the scope of
a sub-admin) with keyset paging, so the sign-in log stays fast at millions of
rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, case, delete, func, insert, or_, select, update

from . import models as m
from .addresses import normalise_domain
from .errors import ConflictError, InvalidInputError, NotFoundError
from .records import Event

if TYPE_CHECKING:
    from .store import Store

SESSION_STAGES = ("totp", "enrol", "ok")
TOKEN_PREFIX = "apt_"


@dataclass(frozen=True)
class WebSession:
    id: int
    user_id: int
    stage: str
    created: float
    last_seen: float
    ip: str | None
    client: str | None


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    user_id: int
    owner: str
    role: str
    scope_domain: str | None
    scope_department_id: int | None
    created: float
    expires: float | None
    last_used: float | None
    last_ip: str | None


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class WebAdmin:
    """``key`` is a 32-byte secret derived from the master key (``hmac_key(master, "web-panel")``)."""

    def __init__(self, store: Store, key: bytes) -> None:
        if len(key) < 32:
            raise InvalidInputError("the web panel key must have at least 32 bytes")
        self._s = store
        self._key = key

    def _digest(self, purpose: bytes, secret: str) -> str:
        return hmac.new(self._key, purpose + b"|" + secret.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------- sessions
    def create_session(self, user_id: int, *, stage: str, ip: str | None, client: str | None) -> str:
        if stage not in SESSION_STAGES:
            raise InvalidInputError(f"session stage must be one of {', '.join(SESSION_STAGES)}")
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._s.write() as c:
            c.execute(
                insert(m.web_sessions).values(
                    digest=self._digest(b"session", token), user_id=user_id, stage=stage, created=now,
                    last_seen=now, ip=(ip or "")[:64] or None, client=(client or "")[:200] or None,
                )
            )
        return token

    def get_session(self, token: str) -> WebSession | None:
        if not token or len(token) > 200:
            return None
        with self._s.read() as c:
            r = c.execute(select(m.web_sessions).where(m.web_sessions.c.digest == self._digest(b"session", token))).first()
        if r is None:
            return None
        return WebSession(r.id, r.user_id, r.stage, r.created, r.last_seen, r.ip, r.client)

    def touch_session(self, session_id: int, *, stage: str | None = None) -> None:
        values: dict[str, object] = {"last_seen": time.time()}
        if stage is not None:
            if stage not in SESSION_STAGES:
                raise InvalidInputError("bad session stage")
            values["stage"] = stage
        with self._s.write() as c:
            c.execute(update(m.web_sessions).where(m.web_sessions.c.id == session_id).values(**values))

    def delete_session(self, session_id: int) -> None:
        with self._s.write() as c:
            c.execute(delete(m.web_sessions).where(m.web_sessions.c.id == session_id))

    def delete_user_sessions(self, user_id: int) -> int:
        with self._s.write() as c:
            return c.execute(delete(m.web_sessions).where(m.web_sessions.c.user_id == user_id)).rowcount

    def list_user_sessions(self, user_id: int) -> list[WebSession]:
        with self._s.read() as c:
            rows = c.execute(
                select(m.web_sessions).where(m.web_sessions.c.user_id == user_id).order_by(m.web_sessions.c.last_seen.desc())
            ).all()
        return [WebSession(r.id, r.user_id, r.stage, r.created, r.last_seen, r.ip, r.client) for r in rows]

    def prune_sessions(self, *, idle_before: float, created_before: float) -> int:
        with self._s.write() as c:
            return c.execute(
                delete(m.web_sessions).where(
                    or_(m.web_sessions.c.last_seen < idle_before, m.web_sessions.c.created < created_before)
                )
            ).rowcount

    # --------------------------------------------------------------- tokens
    def create_token(
        self,
        user_id: int,
        name: str,
        *,
        role: str,
        scope_domain: str | None = None,
        scope_department_id: int | None = None,
        expires: float | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token; the secret is returned once and only its digest is kept."""
        name = (name or "").strip()
        if not name or len(name) > 100 or any(ord(ch) < 32 for ch in name):
            raise InvalidInputError("a token needs a name of 1-100 printable characters")
        if role not in ("super", "domain", "department", "auditor"):
            raise InvalidInputError("role must be one of super, domain, department, auditor")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._s.write() as c:
            dom_id = None
            if scope_domain:
                dom_id = c.execute(select(m.domains.c.id).where(m.domains.c.name == normalise_domain(scope_domain))).scalar()
                if dom_id is None:
                    raise NotFoundError("no such domain: {domain}", domain=scope_domain)
            if scope_department_id is not None and not c.execute(
                select(m.departments.c.id).where(m.departments.c.id == scope_department_id)
            ).first():
                raise NotFoundError("no such department: {department_id}", department_id=scope_department_id)
            if c.execute(select(m.api_tokens.c.id).where(m.api_tokens.c.user_id == user_id, m.api_tokens.c.name == name)).first():
                raise ConflictError("a token named {name} already exists", name=name)
            tid = c.execute(
                insert(m.api_tokens).values(
                    digest=self._digest(b"token", secret), name=name, user_id=user_id, role=role,
                    scope_domain_id=dom_id, scope_department_id=scope_department_id, created=time.time(), expires=expires,
                )
            ).inserted_primary_key[0]
        return next(t for t in self.list_tokens() if t.id == tid), secret

    def _token_query(self):  # type: ignore[no-untyped-def]
        return (
            select(m.api_tokens, m.users.c.email, m.domains.c.name.label("dname"))
            .join(m.users, m.users.c.id == m.api_tokens.c.user_id)
            .outerjoin(m.domains, m.domains.c.id == m.api_tokens.c.scope_domain_id)
        )

    @staticmethod
    def _token(r) -> ApiToken:  # type: ignore[no-untyped-def]
        return ApiToken(r.id, r.name, r.user_id, r.email, r.role, r.dname, r.scope_department_id, r.created, r.expires,
                        r.last_used, r.last_ip)

    def list_tokens(self, user_id: int | None = None) -> list[ApiToken]:
        q = self._token_query().order_by(m.users.c.email, m.api_tokens.c.name)
        if user_id is not None:
            q = q.where(m.api_tokens.c.user_id == user_id)
        with self._s.read() as c:
            return [self._token(r) for r in c.execute(q).all()]

    def find_token(self, secret: str, *, ip: str | None = None) -> ApiToken | None:
        """The live token for ``secret`` (None if unknown or expired); records its use."""
        if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        with self._s.read() as c:
            r = c.execute(self._token_query().where(m.api_tokens.c.digest == self._digest(b"token", secret))).first()
        if r is None:
            return None
        now = time.time()
        if r.expires is not None and r.expires < now:
            return None
        if r.last_used is None or now - r.last_used > 60 or r.last_ip != ip:
            with self._s.write() as c:
                c.execute(update(m.api_tokens).where(m.api_tokens.c.id == r.id).values(last_used=now, last_ip=(ip or "")[:64] or None))
        return self._token(r)

    def revoke_token(self, token_id: int) -> None:
        with self._s.write() as c:
            n = c.execute(delete(m.api_tokens).where(m.api_tokens.c.id == token_id)).rowcount
        if not n:
            raise NotFoundError("no such token: {token_id}", token_id=token_id)

    # ---------------------------------------------------------------- views
    def count_users(
        self,
        *,
        domain: str | None = None,
        search: str | None = None,
        department_ids: Iterable[int] | None = None,
        state: str | None = None,
    ) -> int:
        q = select(func.count()).select_from(m.users)
        if domain:
            did = select(m.domains.c.id).where(m.domains.c.name == normalise_domain(domain)).scalar_subquery()
            q = q.where(m.users.c.domain_id == did)
        if search:
            like = "%" + _like_escape(search) + "%"
            q = q.where(or_(m.users.c.email.like(like, escape="\\"), m.users.c.name.like(like, escape="\\")))
        if department_ids is not None:
            q = q.where(m.users.c.department_id.in_(list(department_ids)))
        if state:
            q = q.where(m.users.c.state == state)
        with self._s.read() as c:
            return c.execute(q).scalar_one()

    def department_user_counts(self) -> dict[int | None, int]:
        q = select(m.users.c.department_id, func.count()).group_by(m.users.c.department_id)
        with self._s.read() as c:
            return {r[0]: r[1] for r in c.execute(q).all()}

    def usage(self) -> dict[str, int]:
        q = select(
            func.count(),
            func.coalesce(func.sum(m.users.c.used_bytes), 0),
            func.coalesce(func.sum(m.users.c.used_messages), 0),
            func.coalesce(func.sum(case((m.users.c.state == "active", 1), else_=0)), 0),
        ).select_from(m.users)
        with self._s.read() as c:
            n, used, msgs, active = c.execute(q).one()
        return {"users": n, "active_users": int(active), "used_bytes": int(used), "used_messages": int(msgs)}

    def search_events(
        self,
        *,
        kinds: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        result: str | None = None,
        domain: str | None = None,
        users: Iterable[str] | None = None,
        before: tuple[float, int] | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Newest first. ``before=(ts, id)`` continues after the last row of the previous page.

        ``domain`` keeps events whose actor or subject is an address of that
        domain; ``users`` keeps events whose actor or subject is one of them.
        """
        e = m.events.c
        q = select(m.events)
        if kinds:
            q = q.where(e.kind.in_(list(kinds)))
        if since is not None:
            q = q.where(e.ts >= since)
        if until is not None:
            q = q.where(e.ts < until)
        if user:
            q = q.where(or_(e.actor == user, e.subject == user))
        if result:
            q = q.where(e.result == result)
        if domain:
            like = "%@" + _like_escape(normalise_domain(domain))
            q = q.where(or_(e.actor.like(like, escape="\\"), e.subject.like(like, escape="\\")))
        if users is not None:
            lst = sorted(set(users))
            q = q.where(or_(e.actor.in_(lst), e.subject.in_(lst)))
        if before is not None:
            ts, rid = before
            q = q.where(or_(e.ts < ts, and_(e.ts == ts, e.id < rid)))
        q = q.order_by(e.ts.desc(), e.id.desc()).limit(max(1, min(int(limit), 100_000)))
        with self._s.read() as c:
            rows = c.execute(q).all()
        return [
            Event(r.id, r.ts, r.kind, r.actor, r.subject, r.action, r.protocol, r.ip, r.client, r.result, json.loads(r.detail or "{}"))
            for r in rows
        ]
