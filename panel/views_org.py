"""Pages: organisation (department tree), address book, groups, aliases."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from . import ops_directory as od
from . import ops_org as oo
from .authz import ALIAS, DEPARTMENT, GROUP, WRITE, Target
from .context import OpError
from .i18n import _
from .web import Ctx, Pages, form_str, query_int, redirect


def _opt_int(value: str) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise OpError(_("unknown department")) from None


def routes(pages: Pages) -> list[Route]:
    pc = pages.pc

    async def _first_domain(ctx: Ctx) -> str | None:
        q = ctx.request.query_params.get("domain")
        if q:
            return q
        return await od.default_domain(pc, ctx.principal)

    @pages.page()
    async def org(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            domain = form_str(ctx, "domain")
            back = f"/org?domain={domain}"
            try:
                if action == "add":
                    d = await oo.add_department(pc, p, ctx.ip, domain, form_str(ctx, "name"), _opt_int(form_str(ctx, "parent_id")))
                    msg = _("Department {name} added.").format(name=d.name)
                elif action == "rename":
                    await oo.rename_department(pc, p, ctx.ip, int(form_str(ctx, "id")), form_str(ctx, "name"))
                    msg = _("Department renamed.")
                elif action == "move":
                    await oo.move_department(pc, p, ctx.ip, int(form_str(ctx, "id")), _opt_int(form_str(ctx, "parent_id")))
                    msg = _("Department moved.")
                elif action == "delete":
                    await oo.delete_department(pc, p, ctx.ip, int(form_str(ctx, "id")))
                    msg = _("Department deleted.")
                else:
                    return redirect(ctx, back)
            except ValueError:
                return redirect(ctx, back, _("unknown department"), "error")
            except OpError as exc:
                return redirect(ctx, back, str(exc), "error")
            return redirect(ctx, back, msg)
        dom, _roots, flat = await oo.department_tree(pc, p, await _first_domain(ctx))
        doms = [d["name"] for d in await od.list_domains(pc, p, counts=False)]
        return pages.render(
            ctx, "org.html", domain=dom, domains=doms, flat=flat,
            parents=oo.department_choices(flat, p, dom),
            can_add_top=ctx.can(WRITE, Target(DEPARTMENT, dom, None)),
        )

    @pages.page()
    async def addressbook(ctx: Ctx) -> Response:
        p = ctx.principal
        q = ctx.request.query_params
        book = await oo.address_book(pc, p, q.get("domain") or None, q.get("q", ""), query_int(ctx.request, "page", 1) or 1)
        doms = [d["name"] for d in await od.list_domains(pc, p, counts=False)]
        return pages.render(ctx, "addressbook.html", b=book, q=q.get("q", ""), domains=doms)

    # ---------------------------------------------------------------- groups
    @pages.page()
    async def groups(ctx: Ctx) -> Response:
        p = ctx.principal
        domain = await _first_domain(ctx)
        if ctx.request.method == "POST":
            try:
                g = await oo.add_group(pc, p, ctx.ip, form_str(ctx, "email"), form_str(ctx, "name"), form_str(ctx, "post_policy"))
            except OpError as exc:
                return redirect(ctx, f"/groups?domain={domain}", str(exc), "error")
            return redirect(ctx, f"/groups/{g.email}", _("Group {email} created.").format(email=g.email))
        if domain is None:
            return pages.render(ctx, "groups.html", groups=[], domain="", domains=[], can_write=False)
        lst = await oo.list_groups(pc, p, domain)
        doms = [d["name"] for d in await od.list_domains(pc, p, counts=False)]
        return pages.render(ctx, "groups.html", groups=lst, domain=domain, domains=doms,
                            can_write=ctx.can(WRITE, Target(GROUP, domain)))

    @pages.page()
    async def group(ctx: Ctx) -> Response:
        p = ctx.principal
        email = ctx.request.path_params["email"]
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "policy":
                    await oo.set_group_policy(pc, p, ctx.ip, email, form_str(ctx, "post_policy"))
                    msg = _("Saved.")
                elif action in ("add_member", "remove_member"):
                    kind = form_str(ctx, "kind") or "address"
                    member = form_str(ctx, "department_id") if kind == "department" and form_str(ctx, "department_id") else form_str(ctx, "member")
                    await oo.change_member(pc, p, ctx.ip, email, kind, member, add=action == "add_member")
                    msg = _("Member added.") if action == "add_member" else _("Member removed.")
                elif action == "delete":
                    await oo.remove_group(pc, p, ctx.ip, email)
                    return redirect(ctx, "/groups?domain=" + email.rpartition("@")[2], _("Group deleted."))
                else:
                    msg = ""
            except OpError as exc:
                return redirect(ctx, f"/groups/{email}", str(exc), "error")
            return redirect(ctx, f"/groups/{email}", msg or None)
        g, paths = await oo.get_group(pc, p, email)
        domain = g.email.rpartition("@")[2]
        _dom, _roots, flat = await oo.department_tree(pc, p, domain, counts=False)
        return pages.render(ctx, "group.html", g=oo.group_dict(g, paths), departments=[(n.dep.id, n.path) for n in flat],
                            can_write=ctx.can(WRITE, Target(GROUP, domain)))

    # --------------------------------------------------------------- aliases
    @pages.page()
    async def aliases(ctx: Ctx) -> Response:
        p = ctx.principal
        domain = await _first_domain(ctx)
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "add":
                    await oo.add_alias(pc, p, ctx.ip, form_str(ctx, "source"), form_str(ctx, "destination"))
                    msg = _("Alias added.")
                else:
                    await oo.remove_alias(pc, p, ctx.ip, form_str(ctx, "source"), form_str(ctx, "destination"))
                    msg = _("Alias removed.")
            except OpError as exc:
                return redirect(ctx, f"/aliases?domain={domain}", str(exc), "error")
            return redirect(ctx, f"/aliases?domain={domain}", msg)
        if domain is None:
            return pages.render(ctx, "aliases.html", aliases=[], domain="", domains=[], can_write=False)
        lst = await oo.list_aliases(pc, p, domain)
        doms = [d["name"] for d in await od.list_domains(pc, p, counts=False)]
        return pages.render(ctx, "aliases.html", aliases=lst, domain=domain, domains=doms,
                            can_write=ctx.can(WRITE, Target(ALIAS, domain)))

    return [
        Route("/org", org, methods=["GET", "POST"]),
        Route("/addressbook", addressbook),
        Route("/groups", groups, methods=["GET", "POST"]),
        Route("/groups/{email}", group, methods=["GET", "POST"]),
        Route("/aliases", aliases, methods=["GET", "POST"]),
    ]
