"""Pages: admins, policies, logs (with CSV export), API tokens."""

from __future__ import annotations

import time
from datetime import datetime

from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import ops_admin as oa
from . import ops_org as oo
from .authz import SYSTEM, WRITE, Target
from .context import OpError
from .i18n import _
from .policies import DEFAULTS
from .web import Ctx, Pages, form_str, redirect


def _date(value: str | None, end: bool = False) -> float | None:
    """"2026-01-31" (local time) -> epoch; the end of that day with ``end``."""
    if not value:
        return None
    try:
        d = datetime.strptime(value.strip()[:10], "%Y-%m-%d")
    except ValueError:
        return None
    return d.timestamp() + (86400 if end else 0)


def routes(pages: Pages) -> list[Route]:
    pc = pages.pc

    @pages.page()
    async def admins(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "add":
                    await oa.add_admin(pc, p, ctx.ip, form_str(ctx, "email"), form_str(ctx, "role"), form_str(ctx, "scope"))
                    msg = _("Admin added.")
                else:
                    await oa.remove_admin(pc, p, ctx.ip, form_str(ctx, "email"), form_str(ctx, "role"))
                    msg = _("Admin removed.")
            except OpError as exc:
                return redirect(ctx, "/admins", str(exc), "error")
            return redirect(ctx, "/admins", msg)
        lst = await oa.list_admins(pc, p)
        deps = await pc.run(pc.store.directory.list_departments)
        from .context import department_paths

        paths = department_paths(deps)
        dep_choices = [(d.id, f"{d.domain}: {paths[d.id]}") for d in deps]
        return pages.render(ctx, "admins.html", admins=lst, paths=paths, dep_choices=dep_choices,
                            can_write=ctx.can(WRITE, Target(SYSTEM)))

    @pages.page()
    async def policies_page(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            values: dict[str, object] = {}
            for k, default in DEFAULTS.items():
                values[k] = form_str(ctx, k) == "on" if isinstance(default, bool) else form_str(ctx, k)
            try:
                await oa.set_policies(pc, p, ctx.ip, values)
            except OpError as exc:
                return redirect(ctx, "/policies", str(exc), "error")
            return redirect(ctx, "/policies", _("Policies saved."))
        pol = await oa.get_policies(pc, p)
        return pages.render(ctx, "policies.html", pol=pol, can_write=ctx.can(WRITE, Target(SYSTEM)))

    def _filters(ctx: Ctx) -> dict:
        q = ctx.request.query_params
        return {"kind": q.get("kind", "signins"), "user": q.get("user", ""), "result": q.get("result", ""),
                "from": q.get("from", ""), "to": q.get("to", "")}

    async def _search(ctx: Ctx, f: dict, limit: int, before: tuple[float, int] | None = None) -> list:
        return await oa.search_logs(pc, ctx.principal, kind=f["kind"], user=f["user"], result=f["result"],
                                    since=_date(f["from"]), until=_date(f["to"], end=True), before=before, limit=limit)

    @pages.page()
    async def logs(ctx: Ctx) -> Response:
        f = _filters(ctx)
        before = None
        b = ctx.request.query_params.get("before", "")
        if b:
            try:
                ts, _sep, rid = b.partition(":")
                before = (float(ts), int(rid))
            except ValueError:
                before = None
        per_page = 50
        events = await _search(ctx, f, per_page + 1, before)
        more = len(events) > per_page
        events = events[:per_page]
        nxt = f"{events[-1].ts!r}:{events[-1].id}" if more and events else None
        return pages.render(ctx, "logs.html", f=f, events=events, next_before=nxt, kinds=list(oa.LOG_KINDS), first=before is None)

    @pages.page()
    async def logs_csv(ctx: Ctx) -> Response:
        f = _filters(ctx)
        events = await _search(ctx, f, 100_000)
        await pc.run(pc.audit, ctx.principal, "log.export", None, ctx.ip, {k: v for k, v in f.items() if v})
        name = f"{f['kind']}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        return StreamingResponse(oa.events_csv(events), media_type="text/csv; charset=utf-8",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})

    @pages.page()
    async def tokens(ctx: Ctx) -> Response:
        p = ctx.principal
        created = None
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "create":
                    role, _sep, scope = form_str(ctx, "grant").partition(":")
                    days_s = form_str(ctx, "days").strip()
                    days = int(days_s) if days_s.isdigit() else None
                    tok, secret = await oa.create_token(pc, p, ctx.ip, form_str(ctx, "name"), role, scope, days)
                    created = {"name": tok.name, "secret": secret}
                else:
                    await oa.revoke_token(pc, p, ctx.ip, int(form_str(ctx, "id") or 0))
                    return redirect(ctx, "/tokens", _("Token revoked."))
            except OpError as exc:
                return redirect(ctx, "/tokens", str(exc), "error")
        lst = await oa.list_tokens(pc, p)
        # the grants this admin may hand out: its own
        choices = []
        for g in p.grants:
            if g.role == "department":
                _dom, _roots, flat = await oo.department_tree(pc, p, g.domain)
                label = next((n.path for n in flat if n.dep.id == g.department_id), str(g.department_id))
                choices.append((f"department:{g.department_id}", _("department admin: {scope}").format(scope=label)))
            elif g.role == "domain":
                choices.append((f"domain:{g.domain}", _("domain admin: {scope}").format(scope=g.domain)))
            else:
                choices.append((g.role, {"super": _("super admin"), "auditor": _("auditor")}[g.role]))
        if p.is_super:  # a super admin may hand out narrower tokens too
            choices.append(("auditor", _("auditor")))
            for d in await pc.run(pc.store.directory.list_domains):
                choices.append((f"domain:{d.name}", _("domain admin: {scope}").format(scope=d.name)))
        return pages.render(ctx, "tokens.html", tokens=lst, created=created, choices=choices)

    return [
        Route("/admins", admins, methods=["GET", "POST"]),
        Route("/policies", policies_page, methods=["GET", "POST"]),
        Route("/logs", logs),
        Route("/logs/export.csv", logs_csv),
        Route("/tokens", tokens, methods=["GET", "POST"]),
    ]
