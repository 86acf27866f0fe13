"""What every panel request needs: the store, the config, sessions and tokens, and a thread hop.

The storage API is synchronous; ``PanelContext.run`` calls it in a worker
thread and turns a ``StoreError`` into an ``OpError`` carrying the HTTP status
and the message in the request's language.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from storage.errors import ConflictError, InvalidInputError, NotFoundError, QuotaExceededError, StoreError
from storage.webadmin import WebAdmin

from .authz import Grant, Principal
from .i18n import translate_error

T = TypeVar("T")


class OpError(Exception):
    """An operation refused with a message for the person (already translated) and an HTTP status."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def _status(exc: StoreError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError | QuotaExceededError):
        return 409
    if isinstance(exc, InvalidInputError):
        return 400
    return 500


@dataclass
class PanelContext:
    store: Any  # storage.store.Store
    cfg: Any  # appliance.config.Config
    web: WebAdmin
    secret: bytes  # derived from the master key: signs flash cookies, CSRF tokens
    secure_cookies: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return self.cfg.instance.hostname

    @property
    def keys_dir(self) -> Path:
        return Path(self.cfg.storage.keys_dir)

    @property
    def dns_checker(self) -> Any:
        """The process's ``panel.dnscheck.DnsChecker`` (made on first use)."""
        checker = self.extra.get("dns_checker")
        if checker is None:
            from .dnscheck import DnsChecker

            checker = self.extra["dns_checker"] = DnsChecker.from_config(self.cfg)
        return checker

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return await run_in_threadpool(functools.partial(fn, *args, **kw))
        except StoreError as exc:
            raise OpError(translate_error(exc), _status(exc)) from None

    # ------------------------------------------------------------ blocking helpers
    def audit(self, p: Principal, action: str, target: str | None, ip: str | None, detail: dict | None = None) -> None:
        d = dict(detail or {})
        if p.via == "token":
            d["via"] = "api"
            d["token"] = p.token_name
        self.store.events.admin(p.email, action, target, ip=ip, detail=d or None)

    def grants_of(self, email: str) -> tuple[Grant, ...]:
        """Blocking: the admin grants of ``email``, department scopes resolved to domain and subtree."""
        admins = self.store.directory.list_admins(email)
        if not admins:
            return ()
        deps = None
        out = []
        for a in admins:
            if a.role == "department":
                if deps is None:
                    deps = {d.id: d for d in self.store.directory.list_departments()}
                d = deps.get(a.scope_department_id)
                if d is None:
                    continue
                out.append(Grant("department", d.domain, d.id, frozenset(subtree(deps, d.id))))
            else:
                out.append(Grant(a.role, a.scope_domain))
        return tuple(out)

    def grant_for_token(self, role: str, scope_domain: str | None, scope_department_id: int | None) -> Grant | None:
        if role == "department":
            deps = {d.id: d for d in self.store.directory.list_departments()}
            d = deps.get(scope_department_id)  # type: ignore[arg-type]
            if d is None:
                return None
            return Grant("department", d.domain, d.id, frozenset(subtree(deps, d.id)))
        return Grant(role, scope_domain)


def subtree(deps: dict, root: int) -> set[int]:  # type: ignore[type-arg]
    children: dict[int | None, list[int]] = {}
    for d in deps.values():
        children.setdefault(d.parent_id, []).append(d.id)
    out: set[int] = set()
    todo = [root]
    while todo:
        d = todo.pop()
        if d in out:
            continue
        out.add(d)
        todo.extend(children.get(d, []))
    return out


def department_paths(deps: list) -> dict[int, str]:  # type: ignore[type-arg]
    """id -> "Parent/Child" for every department."""
    by_id = {d.id: d for d in deps}
    out: dict[int, str] = {}

    def path(i: int, depth: int = 0) -> str:
        if i in out:
            return out[i]
        d = by_id[i]
        if d.parent_id is None or d.parent_id not in by_id or depth > 50:
            p = d.name
        else:
            p = path(d.parent_id, depth + 1) + "/" + d.name
        out[i] = p
        return p

    for d in deps:
        path(d.id)
    return out
