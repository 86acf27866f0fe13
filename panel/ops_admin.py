"""Operations on admins, policies, logs, API tokens and the dashboard."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

from appliance import licence_hook
from storage.errors import StoreError
from storage.records import Event

from . import ops_mail, policies
from .authz import (
    DASHBOARD,
    READ,
    SYSTEM,
    TOKEN,
    WRITE,
    Forbidden,
    Principal,
    Target,
    allowed,
    authorize,
    covers,
    log_scope,
    user_scope,
)
from .context import OpError, PanelContext
from .i18n import _
from .ops_directory import _address, _domain

LOG_KINDS = {"signins": ("login",), "admin": ("admin",), "delivery": ("delivery",), "security": ("security",)}


# ------------------------------------------------------------------ admins
async def list_admins(pc: PanelContext, p: Principal) -> list:  # type: ignore[type-arg]
    authorize(p, READ, Target(SYSTEM))
    return await pc.run(pc.store.directory.list_admins)


async def add_admin(pc: PanelContext, p: Principal, ip: str | None, email: str, role: str, scope: str) -> None:
    authorize(p, WRITE, Target(SYSTEM))
    email = _address(email)
    scope = (scope or "").strip()
    if role not in ("super", "domain", "department", "auditor"):
        raise OpError(_("unknown role"))

    def work() -> None:
        a = pc.store.directory.add_admin(email, role, scope or None)
        pc.audit(p, "admin.add", a.email, ip, {"role": role, "scope": scope or None})

    await pc.run(work)


async def remove_admin(pc: PanelContext, p: Principal, ip: str | None, email: str, role: str) -> None:
    authorize(p, WRITE, Target(SYSTEM))
    email = _address(email)
    if email == p.email and role == "super":
        raise OpError(_("you cannot remove your own super admin role"))

    def work() -> None:
        pc.store.directory.remove_admin(email, role or None)
        u = pc.store.directory.get_user(email)
        if not pc.store.directory.list_admins(email):
            pc.web.delete_user_sessions(u.id)
        pc.audit(p, "admin.remove", email, ip, {"role": role})

    await pc.run(work)


# ---------------------------------------------------------------- policies
async def get_policies(pc: PanelContext, p: Principal) -> dict[str, Any]:
    authorize(p, READ, Target(SYSTEM))
    return await pc.run(policies.load, pc.store)


async def set_policies(pc: PanelContext, p: Principal, ip: str | None, values: dict[str, Any]) -> dict[str, Any]:
    authorize(p, WRITE, Target(SYSTEM))
    try:
        clean = policies.validate(values)
    except ValueError as exc:
        raise OpError(str(exc)) from None

    def work() -> dict[str, Any]:
        old = policies.load(pc.store)
        new = policies.save(pc.store, clean)
        pc.audit(p, "policies.set", None, ip, {k: v for k, v in new.items() if old.get(k) != v})
        if old["app_passwords_required_with_totp"] != new["app_passwords_required_with_totp"]:
            from .ops_self import sync_app_password_requirement

            sync_app_password_requirement(pc.store, new["app_passwords_required_with_totp"])
        return new

    return await pc.run(work)


# -------------------------------------------------------------------- logs
def _scope_users(pc: PanelContext, ids: set[int]) -> list[str]:
    return [u.email for u in pc.store.directory.list_users(department_ids=ids, limit=None)]


async def search_logs(
    pc: PanelContext,
    p: Principal,
    *,
    kind: str = "signins",
    user: str = "",
    result: str = "",
    since: float | None = None,
    until: float | None = None,
    before: tuple[float, int] | None = None,
    limit: int = 50,
) -> list[Event]:
    kinds = LOG_KINDS.get(kind)
    if kinds is None:
        raise OpError(_("unknown log"))

    def work() -> list[Event]:
        scope = log_scope(p, lambda ids: _scope_users(pc, ids))
        return pc.web.search_events(
            kinds=kinds, user=(user or "").strip().lower()[:320] or None, result=(result or "").strip()[:32] or None,
            since=since, until=until, before=before, limit=limit, **scope,
        )

    authorize(p, READ, Target("logs"))
    return await pc.run(work)


def events_csv(events: list[Event]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["time", "kind", "action", "actor", "subject", "protocol", "ip", "client", "result", "detail"])
    for e in events:
        w.writerow([
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts)), e.kind, e.action, e.actor or "", e.subject or "",
            e.protocol or "", e.ip or "", e.client or "", e.result, json.dumps(e.detail, ensure_ascii=False) if e.detail else "",
        ])
        if buf.tell() > 65536:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


# ------------------------------------------------------------------ tokens
async def list_tokens(pc: PanelContext, p: Principal) -> list:  # type: ignore[type-arg]
    authorize(p, READ, Target(TOKEN))
    return await pc.run(pc.web.list_tokens, None if p.is_super else p.user_id)


async def create_token(
    pc: PanelContext, p: Principal, ip: str | None, name: str, role: str, scope: str, days: int | None
) -> tuple[Any, str]:
    """A token with the grant (role, scope) that must lie within the creator's own grants."""
    authorize(p, WRITE, Target(TOKEN))
    if p.via == "token":
        raise Forbidden("tokens cannot create tokens")
    scope = (scope or "").strip()
    if role not in ("super", "domain", "department", "auditor"):
        raise OpError(_("unknown role"))
    expires = time.time() + days * 86400 if days else None

    def work() -> tuple[Any, str]:
        dom = dep = None
        if role == "domain":
            dom = _domain(scope)
        elif role == "department":
            try:
                dep = int(scope)
            except ValueError:
                raise OpError(_("a department admin needs a department")) from None
        grant = pc.grant_for_token(role, dom, dep)
        if grant is None or not covers(p.grants, grant):
            raise Forbidden("token scope")
        tok, secret = pc.web.create_token(p.user_id, name, role=role, scope_domain=dom, scope_department_id=dep, expires=expires)
        pc.audit(p, "token.create", p.email, ip, {"name": tok.name, "grant": grant.describe()})
        return tok, secret

    return await pc.run(work)


async def revoke_token(pc: PanelContext, p: Principal, ip: str | None, token_id: int) -> None:
    authorize(p, WRITE, Target(TOKEN))

    def work() -> None:
        tok = next((t for t in pc.web.list_tokens() if t.id == token_id), None)
        if tok is None or (tok.user_id != p.user_id and not p.is_super):
            raise OpError(_("no such token"), 404)
        pc.web.revoke_token(tok.id)
        pc.audit(p, "token.revoke", tok.owner, ip, {"name": tok.name})

    await pc.run(work)


def token_principal(pc: PanelContext, secret: str, ip: str | None) -> Principal | None:
    """Blocking: the principal behind an API token, or None (unknown, expired, owner no longer covers it)."""
    tok = pc.web.find_token(secret, ip=ip)
    if tok is None:
        return None
    owner = pc.store.directory.find_user(tok.owner)
    if owner is None or not owner.active:
        return None
    grant = pc.grant_for_token(tok.role, tok.scope_domain, tok.scope_department_id)
    if grant is None or not covers(pc.grants_of(owner.email), grant):
        return None
    return Principal(owner.email, owner.id, (grant,), via="token", token_name=tok.name)


# --------------------------------------------------------------- dashboard
async def _probe(host: str, port: int) -> bool:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (TimeoutError, OSError):
        return False
    w.close()
    try:
        await w.wait_closed()
    except OSError:
        pass
    return True


def _count(fn: Any, pc: PanelContext, p: Principal) -> int | None:
    """A dashboard figure that must not take the dashboard down (None: could not be read)."""
    try:
        return fn(pc, p)
    except (StoreError, OSError, ValueError):
        return None


async def dashboard(pc: PanelContext, p: Principal) -> dict[str, Any]:
    authorize(p, READ, Target(DASHBOARD))
    listeners = list(pc.cfg.listeners.values())
    probes = asyncio.gather(*(_probe(lst.host, lst.port) for lst in listeners))

    def work() -> dict[str, Any]:
        d = pc.store.directory
        usage = pc.web.usage()
        try:
            disk = shutil.disk_usage(pc.store.mail_dir)
            disk_info = {"total": disk.total, "free": disk.free}
        except OSError:
            disk_info = {"total": 0, "free": 0}
        domains = d.list_domains()
        a = licence_hook.allowance(pc.store)
        seats = {"used": usage["active_users"], "total": a.mailboxes, "mode": a.mode, "describe": a.describe(),
                 "problem": a.reason}
        counts = {
            "domains": len(domains),
            "users": usage["users"],
            "active_users": usage["active_users"],
            "groups": len(d.list_groups()),
            "aliases": len(d.list_aliases()),
            "departments": len(d.list_departments()),
        }
        if not p.sees_everything:  # a sub-admin sees the figures of what it manages
            dom, ids = user_scope(p, None)
            can_groups = allowed(p, READ, Target("group", dom))
            counts = {
                "domains": 1,
                "users": pc.web.count_users(domain=dom, department_ids=ids),
                "active_users": pc.web.count_users(domain=dom, department_ids=ids, state="active"),
                "groups": len(d.list_groups(dom)) if can_groups else 0,
                "aliases": len(d.list_aliases(dom)) if can_groups else 0,
                "departments": len(ids) if ids is not None else len(d.list_departments(dom)),
            }
        counts["queue"] = _count(ops_mail.queue_count, pc, p)
        counts["quarantine"] = _count(ops_mail.quarantine_count, pc, p)
        scope = log_scope(p, lambda ids: [u.email for u in d.list_users(department_ids=ids, limit=None)])
        recent = pc.web.search_events(kinds=("login", "security"), limit=200, **scope)
        security = [e for e in recent if e.kind == "security" or e.result != "ok"][:10]
        return {
            "usage": usage if p.sees_everything else None,
            "disk": disk_info,
            "counts": counts,
            "seats": seats,
            "security": security,
        }

    data = await pc.run(work)
    up = await probes
    data["services"] = [
        {"name": lst.name, "protocol": lst.protocol, "bind": lst.bind, "tls": lst.tls, "up": ok}
        for lst, ok in zip(listeners, up, strict=True)
    ]
    return data

