"""The directory: domains, users, departments, groups, aliases, admins.

Every function validates its input and raises a ``StoreError`` subclass with a
one-line message; callers (CLI, panel, protocols) show that line as it is.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import and_, delete, func, insert, or_, select, update

from . import models as m
from .addresses import normalise_address, normalise_domain, split_address
from .errors import ConflictError, InvalidInputError, NotFoundError
from .records import Admin, Alias, Department, Domain, Group, User

if TYPE_CHECKING:
    from .store import Store

USER_STATES = ("active", "disabled")
POST_POLICIES = ("members", "domain", "anyone")
ADMIN_ROLES = ("super", "domain", "department", "auditor")
T = TypeVar("T")


def _user(row) -> User:  # type: ignore[no-untyped-def]
    return User(
        id=row.id,
        uuid=row.uuid,
        email=row.email,
        domain=row.email.rsplit("@", 1)[1],
        name=row.name,
        state=row.state,
        quota_bytes=row.quota_bytes,
        quota_messages=row.quota_messages,
        used_bytes=row.used_bytes,
        used_messages=row.used_messages,
        department_id=row.department_id,
        title=row.title,
        phone=row.phone,
        created=row.created,
        password_hash=row.password_hash,
        settings=json.loads(row.settings or "{}"),
    )


#: user settings that decide whether a logged-in session may go on (a change re-checks sessions)
AUTH_SETTINGS = ("require_app_password",)


def _auth_settings_changed(before: dict, after: dict) -> bool:
    return any(bool(before.get(k)) != bool(after.get(k)) for k in AUTH_SETTINGS)


class Directory:
    def __init__(self, store: Store) -> None:
        self._s = store

    # ---------------------------------------------------------------- domains
    def add_domain(self, name: str) -> Domain:
        name = normalise_domain(name)
        now = time.time()
        with self._s.write() as c:
            if c.execute(select(m.domains.c.id).where(m.domains.c.name == name)).first():
                raise ConflictError("domain {name} already exists", name=name)
            rid = c.execute(insert(m.domains).values(name=name, active=True, created=now, settings="{}")).inserted_primary_key[0]
        return Domain(id=rid, name=name, active=True, created=now)

    def get_domain(self, name: str) -> Domain:
        name = normalise_domain(name)
        with self._s.read() as c:
            row = c.execute(select(m.domains).where(m.domains.c.name == name)).first()
        if row is None:
            raise NotFoundError("no such domain: {name}", name=name)
        return Domain(row.id, row.name, row.active, row.created, json.loads(row.settings or "{}"))

    def list_domains(self) -> list[Domain]:
        with self._s.read() as c:
            rows = c.execute(select(m.domains).order_by(m.domains.c.name)).all()
        return [Domain(r.id, r.name, r.active, r.created, json.loads(r.settings or "{}")) for r in rows]

    def is_local_domain(self, name: str) -> bool:
        try:
            name = normalise_domain(name)
        except InvalidInputError:
            return False
        with self._s.read() as c:
            return c.execute(
                select(m.domains.c.id).where(m.domains.c.name == name, m.domains.c.active.is_(True))
            ).first() is not None

    def set_domain_setting(self, name: str, key: str, value: object) -> Domain:
        dom = self.get_domain(name)
        settings = dict(dom.settings)
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
        with self._s.write() as c:
            c.execute(update(m.domains).where(m.domains.c.id == dom.id).values(settings=json.dumps(settings)))
        return self.get_domain(name)

    def remove_domain(self, name: str, *, force: bool = False) -> None:
        dom = self.get_domain(name)
        with self._s.read() as c:
            n = c.execute(select(func.count()).select_from(m.users).where(m.users.c.domain_id == dom.id)).scalar_one()
        if n and not force:
            raise ConflictError("domain {name} still has {n} users; remove them first", name=dom.name, n=n)
        for user in self.list_users(domain=dom.name, limit=None):
            self._s.remove_user(user.email)
        with self._s.write() as c:
            c.execute(delete(m.domains).where(m.domains.c.id == dom.id))

    # ------------------------------------------------------------------ users
    def _domain_id(self, c, domain: str) -> int:  # type: ignore[no-untyped-def]
        rid = c.execute(select(m.domains.c.id).where(m.domains.c.name == domain)).scalar()
        if rid is None:
            raise NotFoundError("no such domain: {domain}", domain=domain)
        return rid

    def _address_taken(self, c, email: str) -> str | None:  # type: ignore[no-untyped-def]
        if c.execute(select(m.users.c.id).where(m.users.c.email == email)).first():
            return "a user"
        if c.execute(select(m.groups.c.id).where(m.groups.c.email == email)).first():
            return "a group"
        if c.execute(select(m.aliases.c.id).where(m.aliases.c.source == email)).first():
            return "an alias"
        return None

    def insert_user(
        self,
        email: str,
        *,
        name: str = "",
        password_hash: str | None = None,
        quota_bytes: int = 0,
        quota_messages: int = 0,
        department_id: int | None = None,
        title: str = "",
        phone: str = "",
    ) -> User:
        """Insert the user row only; ``Store.create_user`` adds key and mailboxes."""
        email = normalise_address(email)
        if quota_bytes < 0 or quota_messages < 0:
            raise InvalidInputError("quota cannot be negative")
        if len(name) > 200:
            raise InvalidInputError("name is too long (200 characters at most)")
        now = time.time()
        with self._s.write() as c:
            did = self._domain_id(c, split_address(email)[1])
            taken = self._address_taken(c, email)
            if taken:
                raise ConflictError("{email} is already {taken}", email=email, taken=taken)
            if department_id is not None:
                self._check_department(c, department_id, did)
            c.execute(
                insert(m.users).values(
                    uuid=uuidlib.uuid4().hex,
                    domain_id=did,
                    email=email,
                    name=name,
                    password_hash=password_hash,
                    password_changed=now if password_hash else None,
                    state="active",
                    quota_bytes=quota_bytes,
                    quota_messages=quota_messages,
                    used_bytes=0,
                    used_messages=0,
                    department_id=department_id,
                    title=title,
                    phone=phone,
                    created=now,
                    updated=now,
                    settings="{}",
                )
            )
        return self.get_user(email)

    def get_user(self, email: str) -> User:
        email = normalise_address(email)
        with self._s.read() as c:
            row = c.execute(select(m.users).where(m.users.c.email == email)).first()
        if row is None:
            raise NotFoundError("no such user: {email}", email=email)
        return _user(row)

    def find_user(self, email: str) -> User | None:
        try:
            return self.get_user(email)
        except (NotFoundError, InvalidInputError):
            return None

    def find_user_for_login(self, email: str) -> tuple[User, int] | None:
        """The user and its credential epoch, read together (one row): see ``Authenticator.session_check``."""
        try:
            email = normalise_address(email)
        except InvalidInputError:
            return None
        with self._s.read() as c:
            row = c.execute(select(m.users).where(m.users.c.email == email)).first()
        return None if row is None else (_user(row), int(row.auth_epoch))

    # ------------------------------------------------------ credential epochs
    def auth_epochs(self, user_ids: Iterable[int]) -> dict[int, int]:
        """{user id: credential epoch} for the users that still exist (a deleted user is missing)."""
        ids = sorted(set(user_ids))
        out: dict[int, int] = {}
        if not ids:
            return out
        # polled every half second for every user with a live session: plain SQL, one statement per 500 ids
        # (a literal integer list, so SQLAlchemy's per-call compilation of an expanding IN is not paid)
        with self._s.read() as c:
            for k in range(0, len(ids), 500):
                chunk = ",".join(str(int(i)) for i in ids[k:k + 500])
                out.update((int(a), int(b)) for a, b in c.exec_driver_sql(f"SELECT id, auth_epoch FROM users WHERE id IN ({chunk})"))
        return out

    def bump_auth_epoch(self, user_id: int, *, end_sessions: bool = False) -> int:
        """Say that the user's logged-in sessions must be checked again; ``end_sessions`` ends them all.

        Returns the new epoch. Every protocol service polls the epochs of
        the users it serves and re-checks (or ends) their sessions.
        """
        with self._s.write() as c:
            self.bump_epoch_in(c, user_id, end_sessions=end_sessions)
            epoch = c.execute(select(m.users.c.auth_epoch).where(m.users.c.id == user_id)).scalar()
        if epoch is None:
            raise NotFoundError("no such user id: {user_id}", user_id=user_id)
        self._s.credentials_changed(user_id)
        return int(epoch)

    @staticmethod
    def bump_epoch_in(c, user_id: int, *, end_sessions: bool = False) -> None:  # type: ignore[no-untyped-def]
        values: dict = {"auth_epoch": m.users.c.auth_epoch + 1}
        if end_sessions:
            values["sessions_epoch"] = m.users.c.auth_epoch + 1
        c.execute(update(m.users).where(m.users.c.id == user_id).values(**values))

    def get_user_by_id(self, user_id: int) -> User:
        with self._s.read() as c:
            row = c.execute(select(m.users).where(m.users.c.id == user_id)).first()
        if row is None:
            raise NotFoundError("no such user id: {user_id}", user_id=user_id)
        return _user(row)

    def list_users(
        self,
        *,
        domain: str | None = None,
        search: str | None = None,
        department_ids: Iterable[int] | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> list[User]:
        q = select(m.users).order_by(m.users.c.email)
        if domain:
            q = q.join(m.domains, m.domains.c.id == m.users.c.domain_id).where(
                m.domains.c.name == normalise_domain(domain)
            )
        if search:
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            q = q.where(or_(m.users.c.email.like(like, escape="\\"), m.users.c.name.like(like, escape="\\")))
        if department_ids is not None:
            q = q.where(m.users.c.department_id.in_(list(department_ids)))
        q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._s.read() as c:
            return [_user(r) for r in c.execute(q).all()]

    def count_users(self, *, domain: str | None = None, active_only: bool = False) -> int:
        q = select(func.count()).select_from(m.users)
        if domain:
            q = q.join(m.domains, m.domains.c.id == m.users.c.domain_id).where(
                m.domains.c.name == normalise_domain(domain)
            )
        if active_only:
            q = q.where(m.users.c.state == "active")
        with self._s.read() as c:
            return c.execute(q).scalar_one()

    def update_user(self, email: str, **fields: object) -> User:
        allowed = {"name", "quota_bytes", "quota_messages", "department_id", "title", "phone", "state"}
        bad = set(fields) - allowed
        if bad:
            raise InvalidInputError("cannot change {fields}", fields=', '.join(sorted(bad)))
        if "state" in fields and fields["state"] not in USER_STATES:
            raise InvalidInputError("state must be one of {choices}", choices=', '.join(USER_STATES))
        for k in ("quota_bytes", "quota_messages"):
            if k in fields and (not isinstance(fields[k], int) or fields[k] < 0):  # type: ignore[operator]
                raise InvalidInputError("{k} must be a non-negative integer", k=k)
        user = self.get_user(email)
        with self._s.write() as c:
            if fields.get("department_id") is not None:
                self._check_department(c, int(fields["department_id"]), self._domain_id(c, user.domain))  # type: ignore[arg-type]
            c.execute(update(m.users).where(m.users.c.id == user.id).values(updated=time.time(), **fields))
            state_changed = "state" in fields and fields["state"] != user.state
            if state_changed:
                self.bump_epoch_in(c, user.id)  # a disabled account's sessions end
        if state_changed:
            self._s.credentials_changed(user.id)
        return self.get_user(email)

    def set_user_setting(self, email: str, key: str, value: object) -> User:
        user = self.get_user(email)
        settings = dict(user.settings)
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
        changed = _auth_settings_changed(user.settings, settings)
        with self._s.write() as c:
            c.execute(update(m.users).where(m.users.c.id == user.id).values(settings=json.dumps(settings)))
            if changed:
                self.bump_epoch_in(c, user.id)
        if changed:
            self._s.credentials_changed(user.id)
        return self.get_user(email)

    def update_user_settings(self, email: str, change: Callable[[dict], T]) -> T:
        """Read, change and write a user's settings in one write transaction.

        ``change`` edits the dict in place and returns any value, which is
        passed back. Two concurrent callers never lose each other's change
        (for consume-once values such as recovery codes).
        """
        email = normalise_address(email)
        with self._s.write() as c:
            row = c.execute(select(m.users.c.id, m.users.c.settings).where(m.users.c.email == email).with_for_update()).first()
            if row is None:
                raise NotFoundError("no such user: {email}", email=email)
            settings = json.loads(row.settings or "{}")
            before = json.dumps(settings, sort_keys=True)
            auth_before = {k: settings.get(k) for k in AUTH_SETTINGS}
            result = change(settings)
            after = json.dumps(settings, sort_keys=True)
            auth_changed = _auth_settings_changed(auth_before, settings)
            if after != before:
                c.execute(update(m.users).where(m.users.c.id == row.id).values(settings=after))
            if auth_changed:
                self.bump_epoch_in(c, row.id)
        if auth_changed:
            self._s.credentials_changed(row.id)
        return result

    def set_password_hash(self, email: str, password_hash: str) -> None:
        user = self.get_user(email)
        now = time.time()
        with self._s.write() as c:
            c.execute(
                update(m.users)
                .where(m.users.c.id == user.id)
                .values(password_hash=password_hash, password_changed=now, updated=now, auth_epoch=m.users.c.auth_epoch + 1)
            )
        self._s.credentials_changed(user.id)

    def delete_user_row(self, user_id: int) -> None:
        with self._s.write() as c:
            c.execute(delete(m.users).where(m.users.c.id == user_id))

    # ------------------------------------------------------------ departments
    def _check_department(self, c, department_id: int, domain_id: int) -> None:  # type: ignore[no-untyped-def]
        row = c.execute(select(m.departments.c.domain_id).where(m.departments.c.id == department_id)).first()
        if row is None:
            raise NotFoundError("no such department: {department_id}", department_id=department_id)
        if row.domain_id != domain_id:
            raise InvalidInputError("the department belongs to another domain")

    def add_department(self, domain: str, name: str, parent_id: int | None = None) -> Department:
        domain = normalise_domain(domain)
        name = (name or "").strip()
        if not name or len(name) > 200 or any(ord(ch) < 32 for ch in name):
            raise InvalidInputError("department name must be 1-200 printable characters")
        with self._s.write() as c:
            did = self._domain_id(c, domain)
            if parent_id is not None:
                self._check_department(c, parent_id, did)
            dup = c.execute(
                select(m.departments.c.id).where(
                    m.departments.c.domain_id == did,
                    m.departments.c.name == name,
                    m.departments.c.parent_id.is_(None) if parent_id is None else m.departments.c.parent_id == parent_id,
                )
            ).first()
            if dup:
                raise ConflictError("department {name} already exists there", name=name)
            rid = c.execute(
                insert(m.departments).values(domain_id=did, parent_id=parent_id, name=name, created=time.time())
            ).inserted_primary_key[0]
        return Department(rid, domain, parent_id, name)

    def list_departments(self, domain: str | None = None) -> list[Department]:
        q = select(m.departments, m.domains.c.name.label("dname")).join(
            m.domains, m.domains.c.id == m.departments.c.domain_id
        )
        if domain:
            q = q.where(m.domains.c.name == normalise_domain(domain))
        with self._s.read() as c:
            rows = c.execute(q.order_by(m.departments.c.id)).all()
        return [Department(r.id, r.dname, r.parent_id, r.name) for r in rows]

    def department_subtree(self, department_id: int) -> set[int]:
        """The department and all its descendants."""
        deps = self.list_departments()
        children: dict[int | None, list[int]] = {}
        for d in deps:
            children.setdefault(d.parent_id, []).append(d.id)
        out, todo = set(), [department_id]
        while todo:
            d = todo.pop()
            if d in out:
                continue
            out.add(d)
            todo.extend(children.get(d, []))
        return out

    def rename_department(self, department_id: int, name: str) -> None:
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise InvalidInputError("department name must be 1-200 characters")
        with self._s.write() as c:
            n = c.execute(update(m.departments).where(m.departments.c.id == department_id).values(name=name)).rowcount
        if not n:
            raise NotFoundError("no such department: {department_id}", department_id=department_id)

    def move_department(self, department_id: int, parent_id: int | None) -> None:
        if parent_id is not None and parent_id in self.department_subtree(department_id):
            raise InvalidInputError("a department cannot move under itself")
        with self._s.write() as c:
            row = c.execute(select(m.departments.c.domain_id).where(m.departments.c.id == department_id)).first()
            if row is None:
                raise NotFoundError("no such department: {department_id}", department_id=department_id)
            if parent_id is not None:
                self._check_department(c, parent_id, row.domain_id)
            c.execute(update(m.departments).where(m.departments.c.id == department_id).values(parent_id=parent_id))

    def remove_department(self, department_id: int) -> None:
        with self._s.write() as c:
            if c.execute(select(m.departments.c.id).where(m.departments.c.parent_id == department_id)).first():
                raise ConflictError("the department has sub-departments; remove or move them first")
            if c.execute(select(m.users.c.id).where(m.users.c.department_id == department_id)).first():
                raise ConflictError("the department still has users; move them first")
            n = c.execute(delete(m.departments).where(m.departments.c.id == department_id)).rowcount
        if not n:
            raise NotFoundError("no such department: {department_id}", department_id=department_id)

    # ---------------------------------------------------------------- aliases
    def add_alias(self, source: str, destination: str) -> Alias:
        source = normalise_address(source)
        destination = normalise_address(destination)
        if source == destination:
            raise InvalidInputError("an alias cannot point to itself")
        with self._s.write() as c:
            did = self._domain_id(c, split_address(source)[1])
            taken = self._address_taken(c, source)
            if taken and taken != "an alias":
                raise ConflictError("{source} is already {taken}", source=source, taken=taken)
            if c.execute(
                select(m.aliases.c.id).where(m.aliases.c.source == source, m.aliases.c.destination == destination)
            ).first():
                raise ConflictError("alias {source} -> {destination} already exists", source=source, destination=destination)
            c.execute(insert(m.aliases).values(domain_id=did, source=source, destination=destination, created=time.time()))
        return Alias(source, destination)

    def list_aliases(self, domain: str | None = None) -> list[Alias]:
        q = select(m.aliases.c.source, m.aliases.c.destination).order_by(m.aliases.c.source, m.aliases.c.destination)
        if domain:
            q = q.where(m.aliases.c.source.like("%@" + normalise_domain(domain)))
        with self._s.read() as c:
            return [Alias(r.source, r.destination) for r in c.execute(q).all()]

    def remove_alias(self, source: str, destination: str | None = None) -> int:
        source = normalise_address(source)
        q = delete(m.aliases).where(m.aliases.c.source == source)
        if destination:
            q = q.where(m.aliases.c.destination == normalise_address(destination))
        with self._s.write() as c:
            n = c.execute(q).rowcount
        if not n:
            raise NotFoundError("no such alias: {source}", source=source)
        return n

    # ----------------------------------------------------------------- groups
    def add_group(self, email: str, *, name: str = "", post_policy: str = "members") -> Group:
        email = normalise_address(email)
        if post_policy not in POST_POLICIES:
            raise InvalidInputError("post policy must be one of {choices}", choices=', '.join(POST_POLICIES))
        with self._s.write() as c:
            did = self._domain_id(c, split_address(email)[1])
            taken = self._address_taken(c, email)
            if taken:
                raise ConflictError("{email} is already {taken}", email=email, taken=taken)
            rid = c.execute(
                insert(m.groups).values(domain_id=did, email=email, name=name, post_policy=post_policy, created=time.time())
            ).inserted_primary_key[0]
        return Group(rid, email, name, post_policy)

    def get_group(self, email: str) -> Group:
        email = normalise_address(email)
        with self._s.read() as c:
            row = c.execute(select(m.groups).where(m.groups.c.email == email)).first()
            if row is None:
                raise NotFoundError("no such group: {email}", email=email)
            members = c.execute(
                select(m.group_members.c.kind, m.group_members.c.member)
                .where(m.group_members.c.group_id == row.id)
                .order_by(m.group_members.c.kind, m.group_members.c.member)
            ).all()
        return Group(row.id, row.email, row.name, row.post_policy, tuple((k, v) for k, v in members))

    def find_group(self, email: str) -> Group | None:
        try:
            return self.get_group(email)
        except (NotFoundError, InvalidInputError):
            return None

    def list_groups(self, domain: str | None = None) -> list[Group]:
        q = select(m.groups.c.email).order_by(m.groups.c.email)
        if domain:
            q = q.where(m.groups.c.email.like("%@" + normalise_domain(domain)))
        with self._s.read() as c:
            emails = [r.email for r in c.execute(q).all()]
        return [self.get_group(e) for e in emails]

    def set_group_policy(self, email: str, post_policy: str) -> Group:
        if post_policy not in POST_POLICIES:
            raise InvalidInputError("post policy must be one of {choices}", choices=', '.join(POST_POLICIES))
        g = self.get_group(email)
        with self._s.write() as c:
            c.execute(update(m.groups).where(m.groups.c.id == g.id).values(post_policy=post_policy))
        return self.get_group(email)

    def remove_group(self, email: str) -> None:
        g = self.get_group(email)
        with self._s.write() as c:
            c.execute(delete(m.groups).where(m.groups.c.id == g.id))

    def add_group_member(self, group: str, member: str | int, *, kind: str = "address") -> None:
        g = self.get_group(group)
        if kind == "address":
            value = normalise_address(str(member))
            if value == g.email:
                raise InvalidInputError("a group cannot contain itself")
        elif kind == "department":
            value = str(int(member))
            with self._s.read() as c:
                if not c.execute(select(m.departments.c.id).where(m.departments.c.id == int(value))).first():
                    raise NotFoundError("no such department: {value}", value=value)
        else:
            raise InvalidInputError("member kind must be address or department")
        if (kind, value) in g.members:
            raise ConflictError("{value} is already a member of {email}", value=value, email=g.email)
        with self._s.write() as c:
            c.execute(insert(m.group_members).values(group_id=g.id, kind=kind, member=value))

    def remove_group_member(self, group: str, member: str | int, *, kind: str = "address") -> None:
        g = self.get_group(group)
        value = normalise_address(str(member)) if kind == "address" else str(int(member))
        with self._s.write() as c:
            n = c.execute(
                delete(m.group_members).where(
                    m.group_members.c.group_id == g.id, m.group_members.c.kind == kind, m.group_members.c.member == value
                )
            ).rowcount
        if not n:
            raise NotFoundError("{value} is not a member of {email}", value=value, email=g.email)

    # ------------------------------------------------------------ resolution
    def alias_targets(self, address: str) -> list[str]:
        with self._s.read() as c:
            return [r.destination for r in c.execute(select(m.aliases.c.destination).where(m.aliases.c.source == address))]

    def department_member_emails(self, department_id: int) -> list[str]:
        ids = self.department_subtree(department_id)
        with self._s.read() as c:
            return [
                r.email
                for r in c.execute(
                    select(m.users.c.email).where(and_(m.users.c.department_id.in_(ids), m.users.c.state == "active"))
                )
            ]

    def expand(self, address: str, *, max_depth: int = 10) -> tuple[list[str], list[str]]:
        """Expand an address through aliases and groups.

        Returns (local user emails, external addresses), each once, in a stable
        order. Loops and over-deep nesting stop quietly at ``max_depth``.
        """
        address = normalise_address(address)
        local: dict[str, None] = {}
        external: dict[str, None] = {}
        seen: set[str] = set()

        def visit(addr: str, depth: int) -> None:
            if addr in seen or depth > max_depth:
                return
            seen.add(addr)
            domain = split_address(addr)[1]
            if not self.is_local_domain(domain):
                external[addr] = None
                return
            if self.find_user(addr) is not None:
                local[addr] = None
            targets = self.alias_targets(addr)
            for t in targets:
                visit(t, depth + 1)
            g = self.find_group(addr)
            if g is not None:
                for kind, member in g.members:
                    if kind == "department":
                        for e in self.department_member_emails(int(member)):
                            visit(e, depth + 1)
                    else:
                        visit(member, depth + 1)

        visit(address, 0)
        return list(local), list(external)

    def addresses_of(self, email: str) -> set[str]:
        """Addresses a user may send as: its own and aliases that lead to it."""
        email = normalise_address(email)
        out = {email}
        with self._s.read() as c:
            for r in c.execute(select(m.aliases.c.source).where(m.aliases.c.destination == email)):
                out.add(r.source)
        return out

    # ----------------------------------------------------------------- admins
    def add_admin(self, email: str, role: str, scope: str | int | None = None) -> Admin:
        if role not in ADMIN_ROLES:
            raise InvalidInputError("role must be one of {choices}", choices=', '.join(ADMIN_ROLES))
        user = self.get_user(email)
        scope_domain_id = scope_department_id = None
        with self._s.write() as c:
            if role == "domain":
                if not scope:
                    raise InvalidInputError("a domain admin needs --scope DOMAIN")
                scope_domain_id = self._domain_id(c, normalise_domain(str(scope)))
            elif role == "department":
                if scope is None or not str(scope).isdigit():
                    raise InvalidInputError("a department admin needs --scope DEPARTMENT_ID")
                scope_department_id = int(scope)
                if not c.execute(select(m.departments.c.id).where(m.departments.c.id == scope_department_id)).first():
                    raise NotFoundError("no such department: {scope}", scope=scope)
            elif scope:
                raise InvalidInputError("the {role} role takes no scope", role=role)
            dup = c.execute(
                select(m.admins.c.id).where(
                    m.admins.c.user_id == user.id,
                    m.admins.c.role == role,
                    m.admins.c.scope_domain_id.is_(scope_domain_id) if scope_domain_id is None else m.admins.c.scope_domain_id == scope_domain_id,
                    m.admins.c.scope_department_id.is_(None) if scope_department_id is None else m.admins.c.scope_department_id == scope_department_id,
                )
            ).first()
            if dup:
                raise ConflictError("{email} is already {role} admin with that scope", email=user.email, role=role)
            c.execute(
                insert(m.admins).values(
                    user_id=user.id,
                    role=role,
                    scope_domain_id=scope_domain_id,
                    scope_department_id=scope_department_id,
                    created=time.time(),
                )
            )
        return next(a for a in self.list_admins() if a.email == user.email and a.role == role)

    def list_admins(self, email: str | None = None) -> list[Admin]:
        q = (
            select(m.admins, m.users.c.email, m.domains.c.name.label("dname"))
            .join(m.users, m.users.c.id == m.admins.c.user_id)
            .outerjoin(m.domains, m.domains.c.id == m.admins.c.scope_domain_id)
            .order_by(m.users.c.email, m.admins.c.role)
        )
        if email:
            q = q.where(m.users.c.email == normalise_address(email))
        with self._s.read() as c:
            return [Admin(r.id, r.email, r.role, r.dname, r.scope_department_id) for r in c.execute(q).all()]

    def remove_admin(self, email: str, role: str | None = None) -> int:
        user = self.get_user(email)
        q = delete(m.admins).where(m.admins.c.user_id == user.id)
        if role:
            q = q.where(m.admins.c.role == role)
        with self._s.write() as c:
            n = c.execute(q).rowcount
        if not n:
            raise NotFoundError("{email} is not an admin", email=user.email)
        return n
