"""Operations on the organisation: departments, groups, aliases, the address book."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage.errors import NotFoundError
from storage.records import Department, Group

from .authz import (
    ADDRESSBOOK,
    ALIAS,
    DEPARTMENT,
    GROUP,
    READ,
    WRITE,
    Principal,
    Target,
    allowed,
    authorize,
    user_scope,
)
from .context import OpError, PanelContext, department_paths
from .i18n import _
from .ops_directory import _address, _domain, default_domain

POST_POLICIES = ("members", "domain", "anyone")


@dataclass
class DeptNode:
    dep: Department
    path: str
    users: int
    depth: int
    writable: bool  # may rename / move / delete it (needs write on its parent)
    can_add_child: bool
    children: list[DeptNode] = field(default_factory=list)


def _dep_target(domain: str, department_id: int | None) -> Target:
    return Target(DEPARTMENT, domain, department_id)


async def department_tree(
    pc: PanelContext, p: Principal, domain: str | None, *, counts: bool = True
) -> tuple[str, list[DeptNode], list[DeptNode]]:
    """(domain, roots, flat list in tree order) of the departments ``p`` may see (with user counts)."""
    dom, ids = user_scope(p, _domain(domain) if domain else await default_domain(pc, p))
    if dom is None:
        raise OpError(_("There is no domain yet."), 404)
    authorize(p, READ, Target(ADDRESSBOOK, dom))

    def work() -> tuple[list[Department], dict]:
        return pc.store.directory.list_departments(dom), pc.web.department_user_counts() if counts else {}

    deps, counts = await pc.run(work)
    paths = department_paths(deps)
    nodes = {
        d.id: DeptNode(
            d, paths[d.id], counts.get(d.id, 0), 0,
            writable=allowed(p, WRITE, _dep_target(dom, d.parent_id)),
            can_add_child=allowed(p, WRITE, _dep_target(dom, d.id)),
        )
        for d in deps
    }
    roots: list[DeptNode] = []
    for n in nodes.values():
        parent = nodes.get(n.dep.parent_id) if n.dep.parent_id is not None else None
        visible_parent = parent is not None and (ids is None or parent.dep.id in ids)
        if ids is not None and n.dep.id not in ids:
            continue
        (parent.children if visible_parent else roots).append(n)  # type: ignore[union-attr]
    flat: list[DeptNode] = []

    def walk(lst: list[DeptNode], depth: int) -> None:
        for n in sorted(lst, key=lambda x: x.dep.name.lower()):
            n.depth = depth
            flat.append(n)
            walk(n.children, depth + 1)

    walk(roots, 0)
    return dom, roots, flat


async def _get_dep(pc: PanelContext, department_id: int) -> Department:
    deps = await pc.run(pc.store.directory.list_departments)
    for d in deps:
        if d.id == department_id:
            return d
    raise OpError(_("unknown department"), 404)


async def add_department(pc: PanelContext, p: Principal, ip: str | None, domain: str, name: str, parent_id: int | None) -> Department:
    domain = _domain(domain)
    authorize(p, WRITE, _dep_target(domain, parent_id))

    def work() -> Department:
        d = pc.store.directory.add_department(domain, name, parent_id)
        pc.audit(p, "department.add", d.name, ip, {"id": d.id, "parent": parent_id, "domain": domain})
        return d

    return await pc.run(work)


async def rename_department(pc: PanelContext, p: Principal, ip: str | None, department_id: int, name: str) -> None:
    d = await _get_dep(pc, department_id)
    authorize(p, WRITE, _dep_target(d.domain, d.parent_id))

    def work() -> None:
        pc.store.directory.rename_department(d.id, name)
        pc.audit(p, "department.rename", name.strip(), ip, {"id": d.id, "old": d.name})

    await pc.run(work)


async def move_department(pc: PanelContext, p: Principal, ip: str | None, department_id: int, parent_id: int | None) -> None:
    d = await _get_dep(pc, department_id)
    authorize(p, WRITE, _dep_target(d.domain, d.parent_id))
    authorize(p, WRITE, _dep_target(d.domain, parent_id))

    def work() -> None:
        pc.store.directory.move_department(d.id, parent_id)
        pc.audit(p, "department.move", d.name, ip, {"id": d.id, "parent": parent_id})

    await pc.run(work)


async def delete_department(pc: PanelContext, p: Principal, ip: str | None, department_id: int) -> None:
    d = await _get_dep(pc, department_id)
    authorize(p, WRITE, _dep_target(d.domain, d.parent_id))

    def work() -> None:
        pc.store.directory.remove_department(d.id)
        pc.audit(p, "department.remove", d.name, ip, {"id": d.id})

    await pc.run(work)


# ------------------------------------------------------------------ groups
def group_dict(g: Group, dep_paths: dict[int, str]) -> dict[str, Any]:
    members = []
    for kind, member in g.members:
        label = member
        if kind == "department":
            label = dep_paths.get(int(member), member)
        members.append({"kind": kind, "member": member, "label": label})
    return {"email": g.email, "name": g.name, "post_policy": g.post_policy, "members": members}


async def list_groups(pc: PanelContext, p: Principal, domain: str) -> list[Group]:
    domain = _domain(domain)
    authorize(p, READ, Target(GROUP, domain))
    return await pc.run(pc.store.directory.list_groups, domain)


async def get_group(pc: PanelContext, p: Principal, email: str) -> tuple[Group, dict[int, str]]:
    email = _address(email)
    authorize(p, READ, Target(GROUP, email.rsplit("@", 1)[1]))

    def work() -> tuple[Group, dict[int, str]]:
        return pc.store.directory.get_group(email), department_paths(pc.store.directory.list_departments())

    return await pc.run(work)


async def add_group(pc: PanelContext, p: Principal, ip: str | None, email: str, name: str, post_policy: str) -> Group:
    email = _address(email)
    authorize(p, WRITE, Target(GROUP, email.rsplit("@", 1)[1]))
    if post_policy not in POST_POLICIES:
        raise OpError(_("unknown posting policy"))
    name = (name or "").strip()[:200]

    def work() -> Group:
        g = pc.store.directory.add_group(email, name=name, post_policy=post_policy)
        pc.audit(p, "group.add", g.email, ip, {"post_policy": post_policy})
        return g

    return await pc.run(work)


async def set_group_policy(pc: PanelContext, p: Principal, ip: str | None, email: str, post_policy: str) -> None:
    email = _address(email)
    authorize(p, WRITE, Target(GROUP, email.rsplit("@", 1)[1]))
    if post_policy not in POST_POLICIES:
        raise OpError(_("unknown posting policy"))

    def work() -> None:
        pc.store.directory.set_group_policy(email, post_policy)
        pc.audit(p, "group.policy", email, ip, {"post_policy": post_policy})

    await pc.run(work)


async def remove_group(pc: PanelContext, p: Principal, ip: str | None, email: str) -> None:
    email = _address(email)
    authorize(p, WRITE, Target(GROUP, email.rsplit("@", 1)[1]))

    def work() -> None:
        pc.store.directory.remove_group(email)
        pc.audit(p, "group.remove", email, ip)

    await pc.run(work)


async def change_member(pc: PanelContext, p: Principal, ip: str | None, group: str, kind: str, member: str, *, add: bool) -> None:
    group = _address(group)
    domain = group.rsplit("@", 1)[1]
    authorize(p, WRITE, Target(GROUP, domain))
    if kind not in ("address", "department"):
        raise OpError(_("a member is an address or a department"))
    if kind == "address":
        member = _address(member, "member")
    else:
        try:
            dep = await _get_dep(pc, int(member))
        except ValueError:
            raise OpError(_("unknown department"), 404) from None
        if dep.domain != domain:
            raise OpError(_("the department belongs to another domain"))
        member = str(dep.id)

    def work() -> None:
        if add:
            pc.store.directory.add_group_member(group, member, kind=kind)
        else:
            pc.store.directory.remove_group_member(group, member, kind=kind)
        pc.audit(p, "group.member.add" if add else "group.member.remove", group, ip, {"kind": kind, "member": member})

    await pc.run(work)


# ----------------------------------------------------------------- aliases
async def list_aliases(pc: PanelContext, p: Principal, domain: str) -> list:  # type: ignore[type-arg]
    domain = _domain(domain)
    authorize(p, READ, Target(ALIAS, domain))
    return await pc.run(pc.store.directory.list_aliases, domain)


async def add_alias(pc: PanelContext, p: Principal, ip: str | None, source: str, destination: str) -> None:
    source = _address(source, "source")
    destination = _address(destination, "destination")
    authorize(p, WRITE, Target(ALIAS, source.rsplit("@", 1)[1]))

    def work() -> None:
        a = pc.store.directory.add_alias(source, destination)
        pc.audit(p, "alias.add", a.source, ip, {"destination": a.destination})

    await pc.run(work)


async def remove_alias(pc: PanelContext, p: Principal, ip: str | None, source: str, destination: str | None) -> None:
    source = _address(source, "source")
    authorize(p, WRITE, Target(ALIAS, source.rsplit("@", 1)[1]))

    def work() -> None:
        pc.store.directory.remove_alias(source, destination or None)
        pc.audit(p, "alias.remove", source, ip, {"destination": destination})

    await pc.run(work)


# ------------------------------------------------------------ address book
async def address_book(
    pc: PanelContext, p: Principal, domain: str | None, search: str, page: int, per_page: int = 100
) -> dict[str, Any]:
    """Everyone active in the domain, with department, title and phone (any admin of the domain may read)."""
    dom = _domain(domain) if domain else await default_domain(pc, p)
    if dom is None:
        raise OpError(_("There is no domain yet."), 404)
    authorize(p, READ, Target(ADDRESSBOOK, dom))
    search = (search or "").strip()[:200]

    def work() -> dict[str, Any]:
        total = pc.web.count_users(domain=dom, search=search or None, state="active")
        pages = max(1, (total + per_page - 1) // per_page)
        pg = max(1, min(page, pages))
        users = [
            u for u in pc.store.directory.list_users(domain=dom, search=search or None, offset=(pg - 1) * per_page, limit=per_page)
            if u.active
        ]
        return {"domain": dom, "users": users, "total": total, "page": pg, "pages": pages,
                "paths": department_paths(pc.store.directory.list_departments(dom))}

    try:
        return await pc.run(work)
    except NotFoundError as exc:  # pragma: no cover - list_users does not raise it
        raise OpError(str(exc), 404) from None


def department_choices(flat: list[DeptNode], p: Principal, domain: str, *, for_users: bool = True) -> list[tuple[int, str]]:
    """(id, indented path) of departments ``p`` may put users into (or add children to)."""
    return [(n.dep.id, n.path) for n in flat if allowed(p, WRITE, _dep_target(domain, n.dep.id))]


