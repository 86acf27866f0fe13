"""Pages: dashboard, domains, users (list, add, edit, delete, import, export)."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.responses import Response
from starlette.routing import Route

from . import ops_directory as od
from . import ops_org as oo
from . import ops_self
from .authz import SYSTEM, USER, WRITE, Target
from .context import OpError
from .i18n import _
from .ops_admin import dashboard as dashboard_data
from .web import Ctx, Pages, form_str, query_int, redirect


def routes(pages: Pages) -> list[Route]:
    pc = pages.pc

    @pages.page()
    async def dashboard(ctx: Ctx) -> Response:
        data = await dashboard_data(pc, ctx.principal)
        return pages.render(ctx, "dashboard.html", d=data)

    # ------------------------------------------------------------ domains
    @pages.page()
    async def domains(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            try:
                name = await od.add_domain(pc, p, ctx.ip, form_str(ctx, "name"))
            except OpError as exc:
                return redirect(ctx, "/domains", str(exc), "error")
            return redirect(ctx, f"/domains/{name}", _("Domain {name} added.").format(name=name))
        rows = await od.list_domains(pc, p)
        return pages.render(ctx, "domains.html", domains=rows, can_add=ctx.can(WRITE, Target(SYSTEM)))

    @pages.page()
    async def domain(ctx: Ctx) -> Response:
        p = ctx.principal
        name = ctx.request.path_params["name"]
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "dnscheck":
                    await od.dns_check(pc, p, name, fresh=True)
                    return redirect(ctx, f"/domains/{name}#dns")
                if action == "dkim":
                    await od.add_dkim_key(pc, p, ctx.ip, name, form_str(ctx, "selector"), form_str(ctx, "algorithm"))
                    return redirect(ctx, f"/domains/{name}", _("New DKIM key created; publish its record."))
                if action == "remove" and form_str(ctx, "confirm") == "yes":
                    await od.remove_domain(pc, p, ctx.ip, name)
                    return redirect(ctx, "/domains", _("Domain {name} removed.").format(name=name))
            except OpError as exc:
                return redirect(ctx, f"/domains/{name}", str(exc), "error")
            return redirect(ctx, f"/domains/{name}")
        d = await od.domain_detail(pc, p, name)
        checks = await od.dns_check(pc, p, name)
        confirm = ctx.request.query_params.get("remove") == "1"
        return pages.render(ctx, "domain.html", d=d, checks=checks, confirm=confirm, can_remove=ctx.can(WRITE, Target(SYSTEM)),
                            can_write=ctx.can(WRITE, Target("domain", d["name"])))

    # -------------------------------------------------------------- users
    @pages.page()
    async def users(ctx: Ctx) -> Response:
        p = ctx.principal
        q = ctx.request.query_params
        page = await od.list_users(pc, p, domain=q.get("domain") or None, search=q.get("q", ""),
                                   department_id=query_int(ctx.request, "department"), page=query_int(ctx.request, "page", 1) or 1)
        all_domains = [d["name"] for d in await od.list_domains(pc, p, counts=False)]
        _dom, _roots, flat = await oo.department_tree(pc, p, page.domain, counts=False)
        return pages.render(ctx, "users.html", pg=page, q=q.get("q", ""), department=query_int(ctx.request, "department"),
                            domains=all_domains, departments=flat)

    async def _user_form(ctx: Ctx, domain: str | None) -> dict:
        p = ctx.principal
        dom, _roots, flat = await oo.department_tree(pc, p, domain, counts=False)
        return {"domain": dom, "departments": oo.department_choices(flat, p, dom),
                "domain_wide": ctx.can(WRITE, Target(USER, dom, None)), "domains": [d["name"] for d in await od.list_domains(pc, p, counts=False)]}

    @pages.page()
    async def user_new(ctx: Ctx) -> Response:
        p = ctx.principal
        domain = ctx.request.query_params.get("domain") or None
        if ctx.request.method == "GET":
            return pages.render(ctx, "user_new.html", error=None, values={}, **await _user_form(ctx, domain))
        data = {k: form_str(ctx, k) for k in ("email", "name", "password", "department_id", "title", "phone", "quota_bytes")}
        try:
            user, generated = await od.add_user(pc, p, ctx.ip, data)
        except OpError as exc:
            form = await _user_form(ctx, data["email"].rpartition("@")[2] or domain)
            return pages.render(ctx, "user_new.html", exc.status, error=str(exc), values=data, **form)
        msg = _("User {email} created.").format(email=user.email)
        if generated:
            msg += " " + _("Initial password: {password} (shown once)").format(password=generated)
        return redirect(ctx, f"/users/{user.email}", msg)

    @pages.page()
    async def user(ctx: Ctx) -> Response:
        p = ctx.principal
        email = ctx.request.path_params["email"]
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "save":
                    data = {k: form_str(ctx, k) for k in ("name", "department_id", "title", "phone", "quota_bytes")}
                    await od.update_user(pc, p, ctx.ip, email, data)
                    msg = _("Saved.")
                elif action in ("disable", "enable"):
                    await od.set_user_state(pc, p, ctx.ip, email, "disabled" if action == "disable" else "active")
                    msg = _("Account disabled.") if action == "disable" else _("Account enabled.")
                elif action == "password":
                    generated = await od.reset_password(pc, p, ctx.ip, email, form_str(ctx, "password"))
                    msg = _("Password changed.")
                    if generated:
                        msg += " " + _("New password: {password} (shown once)").format(password=generated)
                elif action == "unlock":
                    await ops_self.unlock(pc, p, ctx.ip, email)
                    msg = _("Sign-in lockout cleared.")
                elif action == "reset_totp":
                    await od.reset_totp(pc, p, ctx.ip, email)
                    msg = _("Two-factor sign-in reset; a new code must be set up at the next sign-in.")
                else:
                    msg = ""
            except OpError as exc:
                return redirect(ctx, f"/users/{email}", str(exc), "error")
            return redirect(ctx, f"/users/{email}", msg or None)
        u, paths = await od.get_user(pc, p, email)
        form = await _user_form(ctx, u.domain)
        failures = await pc.run(pc.store.auth.failures, u.email)
        locked = failures >= pc.store.auth.settings.max_failures_per_account
        return pages.render(ctx, "user.html", u=u, dep_path=paths.get(u.department_id, "") if u.department_id else "",
                            can_write=ctx.can(WRITE, Target(USER, u.domain, u.department_id)), locked=locked,
                            failures=failures, **form)

    @pages.page()
    async def user_delete(ctx: Ctx) -> Response:
        p = ctx.principal
        email = ctx.request.path_params["email"]
        if ctx.request.method == "POST":
            if form_str(ctx, "confirm") != email:
                return redirect(ctx, f"/users/{email}/delete", _("Type the address to confirm."), "error")
            await od.delete_user(pc, p, ctx.ip, email)
            return redirect(ctx, "/users", _("User {email} and all their mail were erased.").format(email=email))
        u, _paths = await od.get_user(pc, p, email)
        return pages.render(ctx, "user_delete.html", u=u)

    @pages.page(max_size=od.MAX_IMPORT_BYTES + 65536)
    async def user_import(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "GET":
            return pages.render(ctx, "import.html", result=None, text="", columns=od.CSV_COLUMNS)
        text = form_str(ctx, "text")
        upload = ctx.form.get("file") if ctx.form is not None else None
        if isinstance(upload, UploadFile) and upload.filename:
            raw = await upload.read(od.MAX_IMPORT_BYTES + 1)
            text = raw.decode("utf-8", "replace")
        apply = form_str(ctx, "apply") == "1"
        result = await od.import_users(pc, p, ctx.ip, text, apply=apply)
        if result.applied:
            return pages.render(ctx, "import.html", result=result, text="", columns=od.CSV_COLUMNS)
        return pages.render(ctx, "import.html", 200 if result.ok else 400, result=result, text=text, columns=od.CSV_COLUMNS)

    @pages.page()
    async def user_export(ctx: Ctx) -> Response:
        text = await od.export_users(pc, ctx.principal, ctx.ip, ctx.request.query_params.get("domain") or None)
        return Response("\ufeff" + text, media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="users.csv"'})

    return [
        Route("/", dashboard),
        Route("/domains", domains, methods=["GET", "POST"]),
        Route("/domains/{name}", domain, methods=["GET", "POST"]),
        Route("/users", users),
        Route("/users/new", user_new, methods=["GET", "POST"]),
        Route("/users/import", user_import, methods=["GET", "POST"]),
        Route("/users/export.csv", user_export),
        Route("/users/{email}", user, methods=["GET", "POST"]),
        Route("/users/{email}/delete", user_delete, methods=["GET", "POST"]),
    ]
