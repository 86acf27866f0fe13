"""Operations on domains and users, shared by the pages and the JSON API.

Each operation authorises first (``authz.authorize``), then calls the store
in a worker thread, then records the admin action in the event log.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from appliance import licence_hook
from appliance.config import parse_size
from storage.addresses import normalise_address, normalise_domain
from storage.errors import InvalidInputError, StoreError
from storage.records import User

from . import dns, policies
from .authz import DOMAIN, READ, SYSTEM, USER, WRITE, Forbidden, Principal, Target, authorize, user_scope
from .context import OpError, PanelContext, department_paths, subtree
from .i18n import _, translate_error

PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
USER_FIELDS = ("name", "department_id", "title", "phone", "quota_bytes")


def random_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _i in range(16))


def parse_quota(value: str | int | None) -> int:
    if value is None or str(value).strip() == "":
        return 0
    try:
        return parse_size(str(value).strip() if not isinstance(value, int) else value)
    except ValueError:
        raise OpError(_("quota must be a size such as 500M or 2G, or 0 for none"), field="quota") from None


def _domain(name: str) -> str:
    try:
        return normalise_domain(name)
    except InvalidInputError as exc:
        raise OpError(translate_error(exc)) from None


def _address(value: str, field_name: str = "email") -> str:
    try:
        return normalise_address(value)
    except InvalidInputError as exc:
        raise OpError(translate_error(exc), field=field_name) from None


# ------------------------------------------------------------------ domains
async def list_domains(pc: PanelContext, p: Principal, *, counts: bool = True) -> list[dict[str, Any]]:
    def work() -> list[dict[str, Any]]:
        out = []
        for d in pc.store.directory.list_domains():
            if not (p.sees_everything or any(g.domain == d.name for g in p.grants)):
                continue
            out.append({"name": d.name, "active": d.active, "users": pc.web.count_users(domain=d.name) if counts else None})
        return out

    return await pc.run(work)


async def default_domain(pc: PanelContext, p: Principal) -> str | None:
    """The domain a page shows when none is asked for: the principal's own, else the first one set up."""
    own = [g.domain for g in p.grants if g.domain]
    if own:
        return own[0]

    def work() -> str | None:
        names = [d.name for d in pc.store.directory.list_domains()]
        first = pc.store.get_setting("instance.created_domain")
        return first if first in names else (names[0] if names else None)

    return await pc.run(work)


async def add_domain(pc: PanelContext, p: Principal, ip: str | None, name: str) -> str:
    authorize(p, WRITE, Target(SYSTEM))
    name = _domain(name)

    def work() -> str:
        licence_hook.check_domain(pc.store, name)
        d = pc.store.directory.add_domain(name)
        for selector, alg in (("s1", "ed25519"), ("s1r", "rsa")):
            try:
                dns.new_key(pc.keys_dir, d.name, selector, alg)
            except FileExistsError:
                pass
        pc.audit(p, "domain.add", d.name, ip)
        return d.name

    return await pc.run(work)


async def remove_domain(pc: PanelContext, p: Principal, ip: str | None, name: str) -> None:
    authorize(p, WRITE, Target(SYSTEM))
    name = _domain(name)

    def work() -> None:
        pc.store.directory.remove_domain(name)
        pc.audit(p, "domain.remove", name, ip)

    await pc.run(work)


async def domain_detail(pc: PanelContext, p: Principal, name: str) -> dict[str, Any]:
    name = _domain(name)
    authorize(p, READ, Target(DOMAIN, name))

    def work() -> dict[str, Any]:
        d = pc.store.directory.get_domain(name)
        keys = dns.list_keys(pc.keys_dir, d.name)
        return {
            "name": d.name,
            "users": pc.web.count_users(domain=d.name),
            "dkim": [{"selector": k.selector, "algorithm": k.algorithm, "txt": k.txt} for k in keys],
            "records": [
                {"name": r.name, "type": r.type, "value": r.value, "purpose": r.purpose, "required": r.required}
                for r in dns.records(d.name, pc.hostname, keys, list(pc.cfg.listeners))
            ],
        }

    return await pc.run(work)


async def dns_check(pc: PanelContext, p: Principal, name: str, *, fresh: bool = False) -> list[Any]:
    """The live DNS status of each record ``domain_detail`` lists (``panel.dnscheck``): bounded, cached."""
    name = _domain(name)
    authorize(p, READ, Target(DOMAIN, name))

    def work() -> list[Any]:
        d = pc.store.directory.get_domain(name)
        return dns.records(d.name, pc.hostname, dns.list_keys(pc.keys_dir, d.name), list(pc.cfg.listeners))

    records = await pc.run(work)
    return await pc.dns_checker.check(records, fresh=fresh)


async def add_dkim_key(pc: PanelContext, p: Principal, ip: str | None, name: str, selector: str, algorithm: str) -> dict:
    name = _domain(name)
    authorize(p, WRITE, Target(DOMAIN, name))
    selector = (selector or "").strip().lower()

    def work() -> dict:
        pc.store.directory.get_domain(name)
        try:
            k = dns.new_key(pc.keys_dir, name, selector, algorithm)
        except FileExistsError:
            raise OpError(_("selector {selector} already has a key").format(selector=selector), 409) from None
        except ValueError:
            raise OpError(_("a selector is letters, digits and '-'; the algorithm ed25519 or rsa")) from None
        pc.audit(p, "domain.dkim.add", name, ip, {"selector": selector, "algorithm": algorithm})
        return {"selector": k.selector, "algorithm": k.algorithm, "txt": k.txt}

    return await pc.run(work)


# -------------------------------------------------------------------- users
def user_dict(u: User, paths: dict[int, str] | None = None) -> dict[str, Any]:
    return {
        "email": u.email,
        "name": u.name,
        "state": u.state,
        "department_id": u.department_id,
        "department": (paths or {}).get(u.department_id, "") if u.department_id else "",
        "title": u.title,
        "phone": u.phone,
        "quota_bytes": u.quota_bytes,
        "used_bytes": u.used_bytes,
        "used_messages": u.used_messages,
        "created": u.created,
    }


def _user_target(u: User) -> Target:
    return Target(USER, u.domain, u.department_id)


@dataclass
class UserPage:
    users: list[User]
    total: int
    domain: str | None
    page: int
    pages: int
    paths: dict[int, str] = field(default_factory=dict)


async def list_users(
    pc: PanelContext,
    p: Principal,
    *,
    domain: str | None = None,
    search: str = "",
    department_id: int | None = None,
    page: int = 1,
    per_page: int = 50,
) -> UserPage:
    domain = _domain(domain) if domain else None
    dom, ids = user_scope(p, domain)
    search = (search or "").strip()[:200]
    per_page = max(1, min(per_page, 500))

    def work() -> UserPage:
        deps = pc.store.directory.list_departments()
        filt = ids
        if department_id is not None:
            sub = subtree({d.id: d for d in deps}, department_id)
            filt = sub if filt is None else (sub & filt)
        total = pc.web.count_users(domain=dom, search=search or None, department_ids=filt)
        pages = max(1, (total + per_page - 1) // per_page)
        pg = max(1, min(page, pages))
        users = pc.store.directory.list_users(
            domain=dom, search=search or None, department_ids=filt, offset=(pg - 1) * per_page, limit=per_page
        )
        return UserPage(users, total, dom, pg, pages, department_paths(deps))

    return await pc.run(work)


async def get_user(pc: PanelContext, p: Principal, email: str) -> tuple[User, dict[int, str]]:
    email = _address(email)

    def work() -> tuple[User, dict[int, str]]:
        return pc.store.directory.get_user(email), department_paths(pc.store.directory.list_departments())

    u, paths = await pc.run(work)
    authorize(p, READ, _user_target(u))
    return u, paths


def _clean_fields(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("name", "title", "phone"):
        if k in data and data[k] is not None:
            v = str(data[k]).strip()
            if len(v) > (64 if k == "phone" else 200) or any(ord(c) < 32 for c in v):
                raise OpError(_("{field} is too long or has control characters").format(field=_(k)), field=k)
            out[k] = v
    if "department_id" in data:
        v = data["department_id"]
        if v in (None, ""):
            out["department_id"] = None
        else:
            try:
                out["department_id"] = int(v)
            except (TypeError, ValueError):
                raise OpError(_("unknown department"), field="department_id") from None
    if "quota_bytes" in data:
        out["quota_bytes"] = parse_quota(data["quota_bytes"])
    return out


async def add_user(pc: PanelContext, p: Principal, ip: str | None, data: dict[str, Any]) -> tuple[User, str | None]:
    """Create a user; returns it and the generated password if none was given."""
    email = _address(str(data.get("email") or ""))
    fields = _clean_fields(data)
    authorize(p, WRITE, Target(USER, email.rsplit("@", 1)[1], fields.get("department_id")))
    password = str(data.get("password") or "")
    generated = None

    def work() -> User:
        nonlocal password, generated
        if not password:
            password = generated = random_password()
        problem = policies.password_problem(policies.load(pc.store), password)
        if problem:
            raise OpError(problem, field="password")
        licence_hook.check_seat(pc.store, email)
        u = pc.store.create_user(email, password=password, **fields)
        pc.audit(p, "user.add", u.email, ip, {"department_id": u.department_id, "quota": u.quota_bytes})
        return u

    return await pc.run(work), generated


async def update_user(pc: PanelContext, p: Principal, ip: str | None, email: str, data: dict[str, Any]) -> User:
    u, _paths = await get_user(pc, p, email)
    authorize(p, WRITE, _user_target(u))
    fields = {k: v for k, v in _clean_fields(data).items() if k in USER_FIELDS}
    if "department_id" in fields and fields["department_id"] != u.department_id:
        authorize(p, WRITE, Target(USER, u.domain, fields["department_id"]))

    def work() -> User:
        nu = pc.store.directory.update_user(u.email, **fields)
        pc.audit(p, "user.update", u.email, ip, {k: v for k, v in fields.items()})
        return nu

    return await pc.run(work)


async def set_user_state(pc: PanelContext, p: Principal, ip: str | None, email: str, state: str) -> User:
    u, _paths = await get_user(pc, p, email)
    authorize(p, WRITE, _user_target(u))
    if state not in ("active", "disabled"):
        raise OpError(_("state must be active or disabled"))
    if state == "disabled" and u.email == p.email:
        raise OpError(_("you cannot disable your own account"))

    def work() -> User:
        if state == "active" and u.state != "active":
            licence_hook.check_seat(pc.store, u.email)
        nu = pc.store.directory.update_user(u.email, state=state)
        if state == "disabled":
            pc.web.delete_user_sessions(u.id)
        pc.audit(p, "user.enable" if state == "active" else "user.disable", u.email, ip)
        return nu

    return await pc.run(work)


async def reset_password(pc: PanelContext, p: Principal, ip: str | None, email: str, password: str) -> str | None:
    """Set a new password (a generated one if empty, returned); signs the user out of the panel."""
    u, _paths = await get_user(pc, p, email)
    authorize(p, WRITE, _user_target(u))
    generated = None if password else random_password()
    password = password or generated or ""

    def work() -> None:
        problem = policies.password_problem(policies.load(pc.store), password)
        if problem:
            raise OpError(problem, field="password")
        pc.store.set_password(u.email, password)
        pc.web.delete_user_sessions(u.id)
        pc.audit(p, "user.password", u.email, ip)

    await pc.run(work)
    return generated


async def reset_totp(pc: PanelContext, p: Principal, ip: str | None, email: str) -> None:
    """Forget the user's TOTP secret (a lost phone): the next sign-in enrols again."""
    u, _paths = await get_user(pc, p, email)
    authorize(p, WRITE, _user_target(u))

    def work() -> None:
        for key in ("totp", "totp_pending", "totp_last", "totp_recovery", "require_app_password"):
            pc.store.directory.set_user_setting(u.email, key, None)
        pc.web.delete_user_sessions(u.id)
        pc.audit(p, "user.totp.reset", u.email, ip)

    await pc.run(work)


async def delete_user(pc: PanelContext, p: Principal, ip: str | None, email: str) -> None:
    u, _paths = await get_user(pc, p, email)
    authorize(p, WRITE, _user_target(u))
    if u.email == p.email:
        raise OpError(_("you cannot delete your own account"))

    def work() -> None:
        pc.store.remove_user(u.email)
        pc.audit(p, "user.remove", u.email, ip)

    await pc.run(work)


# -------------------------------------------------------------- CSV import
CSV_COLUMNS = ("email", "name", "password", "department", "title", "phone", "quota")
MAX_IMPORT_BYTES = 4 * 1024 * 1024
MAX_IMPORT_ROWS = 20_000


@dataclass
class ImportRow:
    line: int
    email: str
    name: str
    department: str
    errors: list[str] = field(default_factory=list)
    password: str = ""
    generated: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    rows: list[ImportRow]
    errors: list[str]  # errors of the whole file
    applied: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and all(not r.errors for r in self.rows)

    @property
    def bad_rows(self) -> int:
        return sum(1 for r in self.rows if r.errors)


def _read_csv(text: str) -> tuple[list[dict[str, str]], list[str]]:
    import csv
    import io

    if len(text.encode("utf-8", "replace")) > MAX_IMPORT_BYTES:
        return [], [_("the file is larger than {n} MB").format(n=MAX_IMPORT_BYTES // (1024 * 1024))]
    text = text.lstrip("\ufeff")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        return [], [_("not a CSV file: {reason}").format(reason=str(exc))]
    if "email" not in header:
        return [], [_("the first line must name the columns, with at least: email")]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        return [], [_("unknown columns: {names} (known: {known})").format(names=", ".join(unknown), known=", ".join(CSV_COLUMNS))]
    reader.fieldnames = header
    rows = []
    try:
        for row in reader:
            if len(rows) >= MAX_IMPORT_ROWS:
                return [], [_("more than {n} rows; split the file").format(n=MAX_IMPORT_ROWS)]
            if None in row:
                row.pop(None)  # type: ignore[call-overload]
                row["__extra__"] = "1"
            rows.append({k: (v or "").strip() for k, v in row.items()})
    except csv.Error as exc:
        return [], [_("not a CSV file: {reason}").format(reason=str(exc))]
    return rows, []


def _validate_import(pc: PanelContext, p: Principal, text: str) -> ImportResult:
    from .authz import allowed

    raw_rows, errors = _read_csv(text)
    if errors:
        return ImportResult([], errors)
    if not raw_rows:
        return ImportResult([], [_("the file has no rows")])
    d = pc.store.directory
    policy = policies.load(pc.store)
    deps = d.list_departments()
    by_path = {(dep.domain, path.lower()): dep.id for path, dep in ((department_paths(deps)[x.id], x) for x in deps)}
    local_domains = {x.name for x in d.list_domains()}
    taken: dict[str, set[str]] = {}
    seen: set[str] = set()
    rows: list[ImportRow] = []
    for i, r in enumerate(raw_rows, start=2):
        row = ImportRow(i, r.get("email", ""), r.get("name", ""), r.get("department", ""))
        rows.append(row)
        if r.get("__extra__"):
            row.errors.append(_("more fields than columns"))
        try:
            email = normalise_address(r.get("email", ""))
        except InvalidInputError as exc:
            row.errors.append(translate_error(exc) if r.get("email") else _("email is missing"))
            continue
        row.email = email
        domain = email.rsplit("@", 1)[1]
        if domain not in local_domains:
            row.errors.append(_("no such domain: {name}").format(name=domain))
            continue
        if domain not in taken:
            taken[domain] = {u.email for u in d.list_users(domain=domain, limit=None)}
            taken[domain] |= {g.email for g in d.list_groups(domain)} | {a.source for a in d.list_aliases(domain)}
        if email in taken[domain]:
            row.errors.append(_("{address} already exists").format(address=email))
        if email in seen:
            row.errors.append(_("{address} appears twice in the file").format(address=email))
        seen.add(email)
        dep_id = None
        if row.department:
            dep_id = by_path.get((domain, row.department.strip("/").lower()))
            if dep_id is None:
                row.errors.append(_("no department {path} in {domain}").format(path=row.department, domain=domain))
        if not allowed(p, WRITE, Target(USER, domain, dep_id)):
            row.errors.append(_("outside what you may manage"))
        try:
            quota = parse_quota(r.get("quota"))
        except OpError as exc:
            row.errors.append(str(exc))
            quota = 0
        for k, limit in (("name", 200), ("title", 200), ("phone", 64)):
            v = r.get(k, "")
            if len(v) > limit or any(ord(c) < 32 for c in v):
                row.errors.append(_("{field} is too long or has control characters").format(field=_(k)))
        row.password = r.get("password", "")
        if row.password:
            problem = policies.password_problem(policy, row.password)
            if problem:
                row.errors.append(problem)
        else:
            row.password, row.generated = random_password(), True
        row.fields = {"name": r.get("name", ""), "title": r.get("title", ""), "phone": r.get("phone", ""),
                      "department_id": dep_id, "quota_bytes": quota}
    result = ImportResult(rows, [])
    allowed_now = licence_hook.allowance(pc.store)
    active = d.count_users(active_only=True)
    if active + len(rows) > allowed_now.mailboxes:
        result.errors.append(
            _("the licence allows {n} active mailboxes; this file would make {m}").format(n=allowed_now.mailboxes, m=active + len(rows))
        )
    if allowed_now.domains is not None:
        for row in rows:
            if row.email.rpartition("@")[2] not in allowed_now.domains and not row.errors:
                row.errors.append(_("the licence does not cover this domain"))
    return result


async def import_users(pc: PanelContext, p: Principal, ip: str | None, text: str, *, apply: bool) -> ImportResult:
    """Check every row; with ``apply`` and no error anywhere, create them all (or, on a late failure, none)."""
    if not any(g.role != "auditor" for g in p.grants):
        raise Forbidden("import")

    def work() -> ImportResult:
        result = _validate_import(pc, p, text)
        if not apply or not result.ok:
            return result
        created: list[str] = []
        try:
            for row in result.rows:
                pc.store.create_user(row.email, password=row.password, **row.fields)
                created.append(row.email)
        except (StoreError, OSError) as exc:
            for email in created:
                try:
                    pc.store.remove_user(email)
                except StoreError:
                    pass
            result.errors.append(_("nothing was imported: {reason}").format(reason=translate_error(exc)))
            return result
        for email in created:
            pc.audit(p, "user.add", email, ip, {"import": True})
        pc.audit(p, "user.import", None, ip, {"count": len(created)})
        result.applied = True
        return result

    return await pc.run(work)


def _cell(v: object) -> str:
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


async def export_users(pc: PanelContext, p: Principal, ip: str | None, domain: str | None) -> str:
    import csv
    import io

    domain = _domain(domain) if domain else None
    dom, ids = user_scope(p, domain)

    def work() -> str:
        paths = department_paths(pc.store.directory.list_departments())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(["email", "name", "department", "title", "phone", "quota", "state", "used_bytes"])
        for u in pc.store.directory.list_users(domain=dom, department_ids=ids, limit=None):
            w.writerow([_cell(x) for x in (u.email, u.name, paths.get(u.department_id, "") if u.department_id else "",
                                           u.title, u.phone, u.quota_bytes, u.state, u.used_bytes)])
        pc.audit(p, "user.export", dom, ip, {"count": buf.getvalue().count("\r\n") - 1})
        return buf.getvalue()

    return await pc.run(work)
