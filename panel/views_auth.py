"""Sign-in (password, then TOTP or TOTP enrolment), sign-out, sessions, language."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from appliance.i18n import normalise_language
from storage.security import looks_like_recovery_code, recovery_codes_left, use_recovery_code

from . import ops_self, policies, security
from .authz import Principal
from .i18n import LANG_COOKIE, _
from .web import Ctx, Pages, form_str, redirect


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 500:
        return value
    return "/"


def _set_session(ctx: Ctx, resp: Response, token: str | None) -> Response:
    if token is None:
        resp.delete_cookie(security.SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=ctx.pc.secure_cookies)
    else:
        resp.set_cookie(security.SESSION_COOKIE, token, **security.cookie_args(ctx.pc.secure_cookies))
    return resp


def routes(pages: Pages) -> list[Route]:
    pc = pages.pc
    store = pc.store

    def totp_failures(email: str) -> int:
        since = time.time() - store.auth.settings.lockout_time
        last_ok = store.events.last_ts(kind="security", subject=email, results=("ok", "unlock")) or 0.0
        return store.events.count(kind="security", subject=email, result="totp_fail", since=max(since, last_ok))

    @pages.page(auth="none")
    async def login(ctx: Ctx) -> Response:
        request = ctx.request
        nxt = _safe_next(request.query_params.get("next") or form_str(ctx, "next"))
        if ctx.principal is not None:
            return redirect(ctx, nxt)
        if request.method == "GET":
            return pages.render(ctx, "login.html", email="", error=None, next=nxt)
        email = form_str(ctx, "email").strip()[:320]
        password = form_str(ctx, "password")[:1024]
        client = (request.headers.get("user-agent") or "")[:200]
        outcome = await pc.run(store.auth.authenticate, email, password, protocol="panel", ip=ctx.ip, client=client)
        error, status = None, 200
        user = outcome.user
        grants: tuple = ()
        if outcome.ok and user is not None:
            grants = await pc.run(pc.grants_of, user.email)
            if await pc.run(totp_failures, user.email) >= security.MAX_TOTP_FAILURES:
                error, status = _("Too many wrong codes. Sign-in is locked for a while; try again later."), 429
        elif outcome.reason == "locked":
            error, status = _("This account is locked after too many failed sign-ins. Try again later, or ask an administrator to unlock it."), 429
        elif outcome.reason == "ip_blocked":
            error, status = _("Too many failed sign-ins from your network. Try again later."), 429
        elif outcome.reason == "disabled":
            error, status = _("This account is disabled. Ask your administrator."), 403
        else:
            error, status = _("Wrong email or password."), 401
        if error:
            await asyncio.sleep(outcome.delay or store.auth.settings.failure_delay)
            return pages.render(ctx, "login.html", status, email=email, error=error, next=nxt)
        assert user is not None
        pol = await pc.run(policies.load, store)
        if user.settings.get("totp"):
            stage = "totp"
        elif pol["admin_totp_required" if grants else "user_totp_required"]:
            stage = "enrol"
        else:
            stage = "ok"

        def open_session() -> str:
            if ctx.session is not None:
                pc.web.delete_session(ctx.session.id)
            token = pc.web.create_session(user.id, stage=stage, ip=ctx.ip, client=client)
            if stage == "ok":
                store.events.record("security", action="panel.signin", actor=user.email, subject=user.email, ip=ctx.ip,
                                    client=client, result="ok", detail={"second_factor": False})
            return token

        token = await pc.run(open_session)
        target = {"totp": "/login/totp", "enrol": "/login/enrol"}[stage] if stage != "ok" else nxt
        if stage != "ok" and nxt != "/":
            target += "?next=" + nxt
        return _set_session(ctx, redirect(ctx, target), token)

    async def _second_factor_passed(ctx: Ctx, user_email: str, method: str) -> Response:
        nxt = _safe_next(ctx.request.query_params.get("next"))
        client = (ctx.request.headers.get("user-agent") or "")[:200]

        def rotate() -> str:
            pc.web.delete_session(ctx.session.id)
            token = pc.web.create_session(ctx.session.user_id, stage="ok", ip=ctx.ip, client=client)
            store.events.record("security", action="panel.signin", actor=user_email, subject=user_email, ip=ctx.ip,
                                client=client, result="ok", detail={"second_factor": method})
            return token

        token = await pc.run(rotate)
        ctx.session_token = token
        return _set_session(ctx, redirect(ctx, nxt), token)

    async def _wrong_code(ctx: Ctx, who: Principal, template: str, **values: Any) -> Response:
        def record() -> int:
            store.events.record("security", action="panel.totp", actor=who.email, subject=who.email, ip=ctx.ip, result="totp_fail")
            return totp_failures(who.email)

        n = await pc.run(record)
        await asyncio.sleep(store.auth.settings.failure_delay)
        if n >= security.MAX_TOTP_FAILURES:
            await pc.run(pc.web.delete_session, ctx.session.id)
            resp = redirect(ctx, "/login", _("Too many wrong codes. Sign-in is locked for a while; try again later."), "error")
            return _set_session(ctx, resp, None)
        return pages.render(ctx, template, 401, error=_("That code is not right. Check the time on your phone and try the newest code."), **values)

    @pages.page(auth="pending")
    async def totp(ctx: Ctx) -> Response:
        who: Principal = ctx.extra["pending_user"]
        if ctx.session.stage != "totp":
            return redirect(ctx, "/login/enrol")
        if ctx.request.method == "GET":
            return pages.render(ctx, "totp.html", error=None)

        code = form_str(ctx, "code")[:64]

        def check() -> str | None:
            if looks_like_recovery_code(code):
                if not use_recovery_code(store, who.email, code):
                    return None
                user = store.directory.get_user(who.email)
                store.events.record("security", action="totp.recovery_used", actor=who.email, subject=who.email, ip=ctx.ip,
                                    result="used", detail={"left": recovery_codes_left(user)})
                return "recovery-code"
            return "totp" if ops_self.consume_totp_code(pc, who.email, code) else None

        method = await pc.run(check)
        if method:
            return await _second_factor_passed(ctx, who.email, method)
        return await _wrong_code(ctx, who, "totp.html")

    def _pending_secret(email: str) -> tuple[str, str]:
        return ops_self.pending_secret(pc, email)

    @pages.page(auth="pending")
    async def enrol(ctx: Ctx) -> Response:
        who: Principal = ctx.extra["pending_user"]
        if ctx.session.stage != "enrol":
            return redirect(ctx, "/login/totp")
        secret, uri = await pc.run(_pending_secret, who.email)
        grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
        values = {"secret": grouped, "uri": uri}
        if ctx.request.method == "GET":
            return pages.render(ctx, "enrol.html", error=None, **values)

        codes = await pc.run(ops_self.confirm_totp, pc, who.email, form_str(ctx, "code"), ctx.ip)
        if codes is not None:
            await _second_factor_passed(ctx, who.email, "totp-enrol")  # a new session token in ctx
            nxt = _safe_next(ctx.request.query_params.get("next"))
            page = pages.render(ctx, "recovery.html", codes=codes, next=nxt)
            return _set_session(ctx, page, ctx.session_token)
        return await _wrong_code(ctx, who, "enrol.html", **values)

    @pages.page(auth="pending")
    async def enrol_qr(ctx: Ctx) -> Response:
        who: Principal = ctx.extra["pending_user"]
        if ctx.session.stage != "enrol":
            return Response(status_code=404)
        _secret, uri = await pc.run(_pending_secret, who.email)
        return Response(security.qr_svg(uri), media_type="image/svg+xml", headers={"cache-control": "no-store"})

    @pages.page(auth="none")
    async def logout(ctx: Ctx) -> Response:
        if ctx.session is not None:
            await pc.run(pc.web.delete_session, ctx.session.id)
        return _set_session(ctx, redirect(ctx, "/login", _("You are signed out.")), None)

    @pages.page(area="self")
    async def account(ctx: Ctx) -> Response:
        p = ctx.principal
        assert p is not None
        if ctx.request.method == "POST":
            def everywhere() -> int:
                n = pc.web.delete_user_sessions(p.user_id)
                pc.audit(p, "session.signout_all", p.email, ctx.ip, {"sessions": n})
                return n

            await pc.run(everywhere)
            return _set_session(ctx, redirect(ctx, "/login", _("You are signed out on every device.")), None)
        sessions = await pc.run(pc.web.list_user_sessions, p.user_id)
        return pages.render(ctx, "account.html", sessions=sessions, current=ctx.session.id)

    async def set_lang(request: Request) -> Response:
        lang = normalise_language(request.query_params.get("set")) or "en"
        resp = RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, httponly=True, samesite="strict",
                        secure=pc.secure_cookies, path="/")
        return resp

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/login/totp", totp, methods=["GET", "POST"]),
        Route("/login/enrol", enrol, methods=["GET", "POST"]),
        Route("/login/enrol/qr.svg", enrol_qr, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/account", account, methods=["GET", "POST"]),
        Route("/lang", set_lang, methods=["GET"]),
    ]


