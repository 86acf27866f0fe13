"""The JSON API under /api/v1, for scripts: the same operations as the pages.

Authentication is ``Authorization: Bearer apt_...`` with a token created on
the Tokens page (no cookies, so no CSRF). Every call goes through the same
``ops`` functions, so through the same ``authz.authorize``. Errors are
``{"error": "..."}`` with 400, 401, 403, 404 or 409.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import ops_admin as oa
from . import ops_directory as od
from . import ops_mail as om
from . import ops_org as oo
from .authz import Forbidden, Principal
from .context import OpError, PanelContext
from .i18n import _
from .openapi import openapi_document
from .web import client_ip

ApiHandler = Callable[[Request, Principal], Awaitable[Any]]


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 5 * 1024 * 1024:
        raise OpError(_("The request is too large."), 413)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise OpError(_("the body must be a JSON object")) from None
    if not isinstance(data, dict):
        raise OpError(_("the body must be a JSON object"))
    return data


def _int(value: Any, default: int | None = None) -> int | None:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OpError(_("{value} is not a number").format(value=str(value)[:40])) from None


def _event(e: Any) -> dict[str, Any]:
    return {"id": e.id, "ts": e.ts, "kind": e.kind, "action": e.action, "actor": e.actor, "subject": e.subject,
            "protocol": e.protocol, "ip": e.ip, "client": e.client, "result": e.result, "detail": e.detail}


def routes(pc: PanelContext) -> list[Route]:
    def api(handler: ApiHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            auth = request.headers.get("authorization", "")
            scheme, _sep, secret = auth.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                return _err(401, _("an API token is required: Authorization: Bearer <token>"))
            principal = await pc.run(oa.token_principal, pc, secret.strip(), client_ip(request))
            if principal is None:
                return _err(401, _("the API token is unknown, expired or revoked"))
            try:
                result = await handler(request, principal)
            except Forbidden:
                return _err(403, _("this token's role does not cover this operation"))
            except OpError as exc:
                return _err(exc.status, str(exc))
            if isinstance(result, Response):
                return result
            return JSONResponse(result, status_code=201 if request.method == "POST" and result is not None else 200)

        return endpoint

    ip = client_ip

    @api
    async def me(request: Request, p: Principal) -> Any:
        return {"email": p.email, "token": p.token_name, "grants": [g.describe() for g in p.grants]}

    @api
    async def dashboard(request: Request, p: Principal) -> Any:
        d = await oa.dashboard(pc, p)
        d["security"] = [_event(e) for e in d["security"]]
        return d

    # ---------------------------------------------------------------- domains
    @api
    async def domains(request: Request, p: Principal) -> Any:
        if request.method == "POST":
            name = await od.add_domain(pc, p, ip(request), str((await body(request)).get("name", "")))
            return await od.domain_detail(pc, p, name)
        return await od.list_domains(pc, p)

    @api
    async def domain(request: Request, p: Principal) -> Any:
        name = request.path_params["name"]
        if request.method == "DELETE":
            await od.remove_domain(pc, p, ip(request), name)
            return {"removed": name}
        return await od.domain_detail(pc, p, name)

    @api
    async def dkim(request: Request, p: Principal) -> Any:
        b = await body(request)
        return await od.add_dkim_key(pc, p, ip(request), request.path_params["name"], str(b.get("selector", "")),
                                     str(b.get("algorithm", "ed25519")))

    # ------------------------------------------------------------------ users
    @api
    async def users(request: Request, p: Principal) -> Any:
        if request.method == "POST":
            u, generated = await od.add_user(pc, p, ip(request), await body(request))
            out = od.user_dict(u)
            if generated:
                out["password"] = generated
            return out
        q = request.query_params
        pg = await od.list_users(pc, p, domain=q.get("domain") or None, search=q.get("q", ""),
                                 department_id=_int(q.get("department")), page=_int(q.get("page"), 1) or 1,
                                 per_page=_int(q.get("per_page"), 50) or 50)
        return {"total": pg.total, "page": pg.page, "pages": pg.pages, "domain": pg.domain,
                "users": [od.user_dict(u, pg.paths) for u in pg.users]}

    @api
    async def user(request: Request, p: Principal) -> Any:
        email = request.path_params["email"]
        if request.method == "DELETE":
            await od.delete_user(pc, p, ip(request), email)
            return {"removed": email}
        if request.method == "PATCH":
            b = await body(request)
            if "state" in b:
                await od.set_user_state(pc, p, ip(request), email, str(b["state"]))
            u = await od.update_user(pc, p, ip(request), email, {k: v for k, v in b.items() if k in od.USER_FIELDS})
            return od.user_dict(u)
        u, paths = await od.get_user(pc, p, email)
        return od.user_dict(u, paths)

    @api
    async def user_password(request: Request, p: Principal) -> Any:
        generated = await od.reset_password(pc, p, ip(request), request.path_params["email"],
                                            str((await body(request)).get("password") or ""))
        return {"password": generated} if generated else {"changed": True}

    @api
    async def user_import(request: Request, p: Principal) -> Any:
        b = await body(request)
        r = await od.import_users(pc, p, ip(request), str(b.get("csv", "")), apply=bool(b.get("apply")))
        out = {
            "ok": r.ok, "applied": r.applied, "errors": r.errors,
            "rows": [{"line": x.line, "email": x.email, "errors": x.errors} for x in r.rows],
        }
        if r.applied:
            out["passwords"] = {x.email: x.password for x in r.rows if x.generated}
        return JSONResponse(out, status_code=200 if r.ok else 400)

    @api
    async def user_export(request: Request, p: Principal) -> Any:
        text = await od.export_users(pc, p, ip(request), request.query_params.get("domain") or None)
        return Response(text, media_type="text/csv; charset=utf-8")

    # ------------------------------------------------------------ departments
    @api
    async def departments(request: Request, p: Principal) -> Any:
        if request.method == "POST":
            b = await body(request)
            d = await oo.add_department(pc, p, ip(request), str(b.get("domain", "")), str(b.get("name", "")), _int(b.get("parent_id")))
            return {"id": d.id, "domain": d.domain, "parent_id": d.parent_id, "name": d.name}
        dom, _roots, flat = await oo.department_tree(pc, p, request.query_params.get("domain") or None)
        return {"domain": dom, "departments": [
            {"id": n.dep.id, "name": n.dep.name, "parent_id": n.dep.parent_id, "path": n.path, "users": n.users} for n in flat
        ]}

    @api
    async def department(request: Request, p: Principal) -> Any:
        dep_id = _int(request.path_params["id"])
        assert dep_id is not None
        if request.method == "DELETE":
            await oo.delete_department(pc, p, ip(request), dep_id)
            return {"removed": dep_id}
        b = await body(request)
        if "parent_id" in b:
            await oo.move_department(pc, p, ip(request), dep_id, _int(b["parent_id"]))
        if "name" in b:
            await oo.rename_department(pc, p, ip(request), dep_id, str(b["name"]))
        return {"updated": dep_id}

    # ----------------------------------------------------------------- groups
    @api
    async def groups(request: Request, p: Principal) -> Any:
        if request.method == "POST":
            b = await body(request)
            g = await oo.add_group(pc, p, ip(request), str(b.get("email", "")), str(b.get("name", "")),
                                   str(b.get("post_policy", "members")))
            return oo.group_dict(g, {})
        domain = request.query_params.get("domain", "")
        return [oo.group_dict(g, {}) for g in await oo.list_groups(pc, p, domain)]

    @api
    async def group(request: Request, p: Principal) -> Any:
        email = request.path_params["email"]
        if request.method == "DELETE":
            await oo.remove_group(pc, p, ip(request), email)
            return {"removed": email}
        if request.method == "PATCH":
            await oo.set_group_policy(pc, p, ip(request), email, str((await body(request)).get("post_policy", "")))
        g, paths = await oo.get_group(pc, p, email)
        return oo.group_dict(g, paths)

    @api
    async def group_members(request: Request, p: Principal) -> Any:
        email = request.path_params["email"]
        if request.method == "POST":
            b = await body(request)
            await oo.change_member(pc, p, ip(request), email, str(b.get("kind", "address")), str(b.get("member", "")), add=True)
        else:
            await oo.change_member(pc, p, ip(request), email, request.path_params["kind"], request.path_params["member"], add=False)
        g, paths = await oo.get_group(pc, p, email)
        return oo.group_dict(g, paths)

    # ---------------------------------------------------------------- aliases
    @api
    async def aliases(request: Request, p: Principal) -> Any:
        if request.method == "POST":
            b = await body(request)
            await oo.add_alias(pc, p, ip(request), str(b.get("source", "")), str(b.get("destination", "")))
            return {"source": b.get("source"), "destination": b.get("destination")}
        return [{"source": a.source, "destination": a.destination}
                for a in await oo.list_aliases(pc, p, request.query_params.get("domain", ""))]

    @api
    async def alias(request: Request, p: Principal) -> Any:
        src = request.path_params["source"]
        await oo.remove_alias(pc, p, ip(request), src, request.query_params.get("destination") or None)
        return {"removed": src}

    # --------------------------------------------------- admins, policies, logs
    @api
    async def admins(request: Request, p: Principal) -> Any:
        if request.method == "POST":
            b = await body(request)
            await oa.add_admin(pc, p, ip(request), str(b.get("email", "")), str(b.get("role", "")), str(b.get("scope") or ""))
        return [{"email": a.email, "role": a.role, "scope_domain": a.scope_domain, "scope_department_id": a.scope_department_id}
                for a in await oa.list_admins(pc, p)]

    @api
    async def admin(request: Request, p: Principal) -> Any:
        await oa.remove_admin(pc, p, ip(request), request.path_params["email"], request.query_params.get("role", ""))
        return {"removed": request.path_params["email"]}

    @api
    async def policies(request: Request, p: Principal) -> Any:
        if request.method == "PUT":
            current = await oa.get_policies(pc, p)
            current.update(await body(request))
            return await oa.set_policies(pc, p, ip(request), current)
        return await oa.get_policies(pc, p)

    @api
    async def logs(request: Request, p: Principal) -> Any:
        q = request.query_params
        before = None
        if q.get("before"):
            ts, _s, rid = q["before"].partition(":")
            try:
                before = (float(ts), int(rid))
            except ValueError:
                raise OpError(_("before must be TS:ID from the previous page")) from None
        since = float(q["since"]) if q.get("since", "").replace(".", "", 1).isdigit() else None
        until = float(q["until"]) if q.get("until", "").replace(".", "", 1).isdigit() else None
        limit = max(1, min(_int(q.get("limit"), 100) or 100, 1000))
        events = await oa.search_logs(pc, p, kind=q.get("kind", "signins"), user=q.get("user", ""), result=q.get("result", ""),
                                      since=since, until=until, before=before, limit=limit)
        nxt = f"{events[-1].ts!r}:{events[-1].id}" if len(events) == limit else None
        return {"events": [_event(e) for e in events], "next": nxt}

    @api
    async def addressbook(request: Request, p: Principal) -> Any:
        q = request.query_params
        b = await oo.address_book(pc, p, q.get("domain") or None, q.get("q", ""), _int(q.get("page"), 1) or 1)
        return {"domain": b["domain"], "total": b["total"], "page": b["page"], "pages": b["pages"],
                "entries": [{"email": u.email, "name": u.name, "title": u.title, "phone": u.phone,
                             "department": b["paths"].get(u.department_id, "") if u.department_id else ""} for u in b["users"]]}

    @api
    async def dns_check(request: Request, p: Principal) -> Any:
        name = request.path_params["name"]
        fresh = request.query_params.get("fresh", "") in ("1", "true", "yes")
        checks = await od.dns_check(pc, p, name, fresh=fresh)
        return {"domain": name.lower(), "records": [c.as_dict() for c in checks]}

    # ------------------------------------------------------ queue, quarantine
    @api
    async def queue(request: Request, p: Principal) -> Any:
        q = request.query_params
        pg = await om.list_queue(pc, p, sender=q.get("sender", ""), rcpt_domain=q.get("domain", ""), state=q.get("state", ""),
                                 page=_int(q.get("page"), 1) or 1, per_page=_int(q.get("per_page"), om.PER_PAGE) or om.PER_PAGE)
        return {"total": pg.total, "page": pg.page, "pages": pg.pages, "delivering": pg.delivering, "hold": pg.hold,
                "unreadable": pg.unreadable, "messages": [i.as_dict() for i in pg.items]}

    @api
    async def queue_flush(request: Request, p: Principal) -> Any:
        n, now = await om.flush_queue(pc, p, ip(request))
        return JSONResponse({"messages": n, "delivering": now})

    @api
    async def queue_item(request: Request, p: Principal) -> Any:
        qid = request.path_params["id"]
        if request.method == "DELETE":
            return {"id": qid, "deleted": await om.delete_queued(pc, p, ip(request), qid)}
        return (await om.queue_item(pc, p, qid)).as_dict()

    @api
    async def queue_retry(request: Request, p: Principal) -> Any:
        qid = request.path_params["id"]
        now = await om.retry_queued(pc, p, ip(request), qid)
        return JSONResponse({"id": qid, "scheduled": True, "delivering": now})

    @api
    async def quarantine(request: Request, p: Principal) -> Any:
        q = request.query_params
        pg = await om.list_quarantine(pc, p, recipient=q.get("recipient", ""), sender=q.get("sender", ""),
                                      page=_int(q.get("page"), 1) or 1, per_page=_int(q.get("per_page"), om.PER_PAGE) or om.PER_PAGE)
        return {"total": pg.total, "page": pg.page, "pages": pg.pages, "messages": [i.as_dict() for i in pg.items]}

    @api
    async def held(request: Request, p: Principal) -> Any:
        qid = request.path_params["id"]
        if request.method == "DELETE":
            await om.delete_held(pc, p, ip(request), qid)
            return {"removed": qid}
        return (await om.held_item(pc, p, qid)).as_dict()

    @api
    async def held_release(request: Request, p: Principal) -> Any:
        delivered, failed = await om.release_held(pc, p, ip(request), request.path_params["id"])
        return JSONResponse({"delivered": delivered, "failed": failed}, status_code=200 if delivered else 409)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    base = "/api/v1"
    return [
        Route(base + "/openapi.json", openapi),
        Route(base + "/me", me),
        Route(base + "/dashboard", dashboard),
        Route(base + "/domains", domains, methods=["GET", "POST"]),
        Route(base + "/domains/{name}", domain, methods=["GET", "DELETE"]),
        Route(base + "/domains/{name}/dkim", dkim, methods=["POST"]),
        Route(base + "/domains/{name}/dns-check", dns_check),
        Route(base + "/users", users, methods=["GET", "POST"]),
        Route(base + "/users/import", user_import, methods=["POST"]),
        Route(base + "/users/export", user_export),
        Route(base + "/users/{email}", user, methods=["GET", "PATCH", "DELETE"]),
        Route(base + "/users/{email}/password", user_password, methods=["POST"]),
        Route(base + "/departments", departments, methods=["GET", "POST"]),
        Route(base + "/departments/{id}", department, methods=["PATCH", "DELETE"]),
        Route(base + "/groups", groups, methods=["GET", "POST"]),
        Route(base + "/groups/{email}", group, methods=["GET", "PATCH", "DELETE"]),
        Route(base + "/groups/{email}/members", group_members, methods=["POST"]),
        Route(base + "/groups/{email}/members/{kind}/{member}", group_members, methods=["DELETE"]),
        Route(base + "/aliases", aliases, methods=["GET", "POST"]),
        Route(base + "/aliases/{source}", alias, methods=["DELETE"]),
        Route(base + "/admins", admins, methods=["GET", "POST"]),
        Route(base + "/admins/{email}", admin, methods=["DELETE"]),
        Route(base + "/policies", policies, methods=["GET", "PUT"]),
        Route(base + "/logs", logs),
        Route(base + "/addressbook", addressbook),
        Route(base + "/queue", queue),
        Route(base + "/queue/flush", queue_flush, methods=["POST"]),
        Route(base + "/queue/{id}", queue_item, methods=["GET", "DELETE"]),
        Route(base + "/queue/{id}/retry", queue_retry, methods=["POST"]),
        Route(base + "/quarantine", quarantine),
        Route(base + "/quarantine/{id}", held, methods=["GET", "DELETE"]),
        Route(base + "/quarantine/{id}/release", held_release, methods=["POST"]),
    ]
