"""Who may do what: the one authorisation function of the panel.

Every page and every API call goes through ``authorize(principal, action,
target)`` (``ops`` calls it before touching the store); menus only hide what
this function would refuse anyway.

Roles (``storage.directory.ADMIN_ROLES``):

- super: everything.
- auditor: reads everything (logs included), changes nothing.
- domain: everything inside its domain (users, departments, groups,
  aliases, DKIM, queued mail from its senders, quarantined mail for its
  recipients); nothing global (domains list, policies, admins).
- department: users and departments of its department subtree (and the
  queued mail they send, the quarantined mail sent to them), read access
  to its domain's address book and to the logs of its users. A department is
  changed through its parent: renaming, moving or deleting department D needs
  write access to D's parent, so a department admin cannot remove the root
  of its own subtree nor move anything out of it.

Every admin may read the dashboard (scoped) and manage its own API tokens;
a token carries one grant, never more than its owner has.

Every signed-in person, admin or not, has the "My account" pages: the target
``Target(SELF, domain, department_id, owner=email)`` is allowed to its owner,
and to the admins who may change that user (``WRITE`` on the user), so an
admin can unlock an account or download its mail for the user. People
without a grant see nothing of the admin area (``admin_area``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

READ, WRITE = "read", "write"

# Target kinds
SYSTEM = "system"  # domains list, policies, admins, every token
DOMAIN = "domain"  # one domain's settings: DKIM, DNS records
USER = "user"
DEPARTMENT = "department"
GROUP = "group"
ALIAS = "alias"
ADDRESSBOOK = "addressbook"
LOGS = "logs"
DASHBOARD = "dashboard"
TOKEN = "token"  # the principal's own tokens
SELF = "self"  # one user's own account: profile, password, two-step verification, app passwords, data
QUEUE = "queue"  # one outbound message: domain and department of its sender (None: not a local user)
QUARANTINE = "quarantine"  # one held message, per recipient: that recipient's domain and department


class Forbidden(Exception):
    """The principal may not do this; pages answer 403, the API 403 JSON."""


@dataclass(frozen=True)
class Grant:
    role: str
    domain: str | None = None  # domain admins: their domain; department admins: their department's domain
    department_id: int | None = None
    subtree: frozenset[int] = frozenset()

    def describe(self) -> str:
        if self.role == "domain":
            return f"domain:{self.domain}"
        if self.role == "department":
            return f"department:{self.department_id}"
        return self.role


@dataclass(frozen=True)
class Principal:
    email: str
    user_id: int
    grants: tuple[Grant, ...]
    via: str = "session"  # session or token
    token_name: str | None = None
    session_id: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def roles(self) -> set[str]:
        return {g.role for g in self.grants}

    @property
    def is_super(self) -> bool:
        return "super" in self.roles

    @property
    def sees_everything(self) -> bool:
        return bool(self.roles & {"super", "auditor"})


@dataclass(frozen=True)
class Target:
    kind: str
    domain: str | None = None
    department_id: int | None = None
    owner: str | None = None  # SELF targets: whose account


def _allows(g: Grant, action: str, t: Target) -> bool:
    if g.role == "super":
        return True
    if g.role == "auditor":
        return action == READ
    if t.kind in (DASHBOARD, TOKEN):
        return True
    if t.kind == LOGS:
        return action == READ
    if t.kind == SYSTEM or t.domain is None or t.domain != g.domain:
        return False
    if g.role == "domain":
        return True
    if g.role == "department":
        if t.kind == ADDRESSBOOK:
            return action == READ
        if t.kind in (USER, DEPARTMENT, QUEUE, QUARANTINE):
            return t.department_id is not None and t.department_id in g.subtree
    return False


def allowed(principal: Principal | None, action: str, target: Target) -> bool:
    if principal is None or action not in (READ, WRITE):
        return False
    if target.kind == SELF:
        if target.owner is not None and principal.email == target.owner and principal.via == "session":
            return True
        as_user = Target(USER, target.domain, target.department_id)
        return any(_allows(g, WRITE, as_user) for g in principal.grants)
    return any(_allows(g, action, target) for g in principal.grants)


def admin_area(principal: Principal | None) -> bool:
    """May ``principal`` open the admin pages at all? (Each page still authorises its own action.)"""
    return principal is not None and bool(principal.grants)


def self_target(user) -> Target:  # type: ignore[no-untyped-def]
    """The SELF target of a ``storage.records.User``."""
    return Target(SELF, user.domain, user.department_id, owner=user.email)


def authorize(principal: Principal | None, action: str, target: Target) -> None:
    """Raise Forbidden unless ``principal`` may ``action`` ("read"/"write") the ``target``."""
    if not allowed(principal, action, target):
        raise Forbidden(f"{action} {target.kind}")


def covers(grants: tuple[Grant, ...], wanted: Grant) -> bool:
    """May an admin holding ``grants`` hand ``wanted`` to an API token?"""
    for g in grants:
        if g.role == "super":
            return True
        if g.role == wanted.role == "auditor":
            return True
        if g.role == "domain" and wanted.role in ("domain", "department") and wanted.domain == g.domain:
            return True
        if g.role == wanted.role == "department" and wanted.department_id in g.subtree:
            return True
    return False


def user_scope(principal: Principal, domain: str | None) -> tuple[str | None, set[int] | None]:
    """How to list users for ``principal``: (domain filter, department ids filter or None for all).

    Derived from the grants with ``allowed`` so lists show exactly what the
    pages would let one open.
    """
    if principal.sees_everything:
        return domain, None
    domains = [g.domain for g in principal.grants if g.domain]
    if domain is None or domain not in domains:
        domain = domains[0] if domains else None
    if domain is None:
        raise Forbidden("no domain")
    if any(g.role == "domain" and g.domain == domain for g in principal.grants):
        return domain, None
    ids: set[int] = set()
    for g in principal.grants:
        if g.role == "department" and g.domain == domain:
            ids |= g.subtree
    return domain, ids


def visible_domains(principal: Principal, all_domains: list[str]) -> list[str]:
    if principal.sees_everything:
        return all_domains
    mine = {g.domain for g in principal.grants if g.domain}
    return [d for d in all_domains if d in mine]


def log_scope(principal: Principal, user_emails_of_subtrees) -> dict:  # type: ignore[no-untyped-def]
    """Filters for the event log: {} for everything, {"domain": D} or {"users": [...]}."""
    authorize(principal, READ, Target(LOGS))
    if principal.sees_everything:
        return {}
    doms = [g.domain for g in principal.grants if g.role == "domain"]
    if doms:
        return {"domain": doms[0]}
    ids: set[int] = set()
    for g in principal.grants:
        if g.role == "department":
            ids |= g.subtree
    return {"users": user_emails_of_subtrees(ids)}
