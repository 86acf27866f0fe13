"""The page machinery: sessions, CSRF, language, rendering, errors.

``@page()`` wraps every HTML endpoint: it loads the session and the admin
behind it, refuses a POST without the right CSRF token (403 and a page that
says why), sends a signed-out browser to the sign-in page, and turns
``Forbidden`` into 403 and ``OpError`` into a page with the message.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from storage.errors import NotFoundError

from . import policies, security
from .authz import Forbidden, Principal, admin_area, allowed
from .context import OpError, PanelContext
from .i18n import LANG_COOKIE, _, choose_language, current_language, set_request_language

TEMPLATES = Path(__file__).parent / "templates"
MAX_BODY = 6 * 1024 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                 b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class LanguageAndHeaders:
    """ASGI middleware: the request's language, security headers, a body size cap."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        cookie_lang = None
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            k, _sep, v = part.strip().partition("=")
            if k == LANG_COOKIE:
                cookie_lang = v
        set_request_language(choose_language(cookie_lang, headers.get(b"accept-language", b"").decode("latin-1")))
        try:
            length = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            resp = Response(_("The request is too large."), status_code=413)
            await resp(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                hs = list(message.get("headers", []))
                names = {k.lower() for k, _v in hs}
                hs += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"cache-control" not in names:
                    hs.append((b"cache-control", b"no-store"))
                message["headers"] = hs
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Ctx:
    """One page request: who is signed in, the CSRF token for its forms, the flash message."""

    request: Request
    pc: PanelContext
    principal: Principal | None = None
    session: Any = None  # storage.webadmin.WebSession
    session_token: str | None = None
    csrf: str = ""
    pre_token: str | None = None  # set when a new pre-session cookie must be sent
    flash: tuple[str, str] | None = None
    set_flash: tuple[str, str] | None = None
    form: FormData | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ip(self) -> str | None:
        return client_ip(self.request)

    def can(self, action: str, target: Any) -> bool:
        return allowed(self.principal, action, target)


class Renderer:
    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["_"] = _
        self.env.globals["lang"] = current_language
        self.env.filters["size"] = fmt_size
        self.env.filters["ts"] = fmt_ts
        self.env.filters["client"] = fmt_client
        self.env.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})

    def render(self, ctx: Ctx, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        from .authz import ADDRESSBOOK, DOMAIN, READ, SYSTEM, USER, WRITE, Target

        tpl = self.env.get_template(name)
        p = ctx.principal
        nav = []
        path = ctx.request.url.path
        if p is not None and (not admin_area(p) or path.startswith(("/me", "/account"))):
            nav = [("/me", _("My account")), ("/me/password", _("Password")), ("/me/security", _("Two-step verification")),
                   ("/me/app-passwords", _("App passwords")), ("/me/activity", _("Sign-in history")),
                   ("/me/mail", _("Mail settings")), ("/me/data", _("My data")), ("/account", _("My sessions"))]
            if admin_area(p):
                nav.append(("/", _("Admin area")))
        elif p is not None:
            first = next((g.domain for g in p.grants if g.domain), None)
            nav = [("/", _("Dashboard"))]
            if p.sees_everything or first:
                nav += [("/domains", _("Domains")), ("/users", _("Users")), ("/org", _("Organisation")),
                        ("/addressbook", _("Address book"))]
            if allowed(p, READ, Target("group", first)) or p.sees_everything:
                nav += [("/groups", _("Groups")), ("/aliases", _("Aliases"))]
            nav += [("/queue", _("Mail queue")), ("/quarantine", _("Quarantine"))]
            if allowed(p, READ, Target(SYSTEM)):
                nav += [("/admins", _("Admins")), ("/policies", _("Policies"))]
            nav += [("/logs", _("Logs")), ("/tokens", _("API tokens")), ("/me", _("My account"))]
        body = tpl.render(
            ctx=ctx, p=p, csrf=ctx.csrf, flash=ctx.flash, nav=nav, path=ctx.request.url.path,
            instance=ctx.pc.cfg.instance.name, READ=READ, WRITE=WRITE, Target=Target,
            USER=USER, DOMAIN=DOMAIN, SYSTEM=SYSTEM, ADDRESSBOOK=ADDRESSBOOK, **values,
        )
        resp = HTMLResponse(body, status_code=status)
        finish(ctx, resp)
        return resp


def finish(ctx: Ctx, resp: Response) -> Response:
    secure = ctx.pc.secure_cookies
    if ctx.pre_token:
        resp.set_cookie(security.PRE_COOKIE, ctx.pre_token, **security.cookie_args(secure))
    if ctx.set_flash:
        resp.set_cookie(security.FLASH_COOKIE, security.encode_flash(ctx.pc.secret, *ctx.set_flash), **security.cookie_args(secure, 60))
    elif ctx.flash:
        resp.delete_cookie(security.FLASH_COOKIE, path="/", httponly=True, samesite="strict", secure=secure)
    return resp


def fmt_size(n: int | None) -> str:
    n = int(n or 0)
    for unit, div in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def fmt_client(client: str | None) -> str:
    """A browser's User-Agent as "Chrome on Linux"; other clients (IMAP ID) as they are."""
    from storage.security import client_family

    c = (client or "").strip()
    if c.startswith("Mozilla/"):
        return client_family(c) or c[:80]
    return c[:80]


def fmt_ts(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def redirect(ctx: Ctx, url: str, flash: str | None = None, kind: str = "ok") -> Response:
    if flash:
        ctx.set_flash = (kind, flash)
    return finish(ctx, RedirectResponse(url, status_code=303))


Handler = Callable[[Ctx], Awaitable[Response]]


class Pages:
    """Holds the context and the renderer; ``page()`` makes endpoints."""

    def __init__(self, pc: PanelContext) -> None:
        self.pc = pc
        self.renderer = Renderer()

    def render(self, ctx: Ctx, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        return self.renderer.render(ctx, name, status, **values)

    async def load_session(self, ctx: Ctx) -> None:
        token = ctx.request.cookies.get(security.SESSION_COOKIE)
        if not token:
            return
        pc = self.pc

        def work() -> tuple[Any, Any, Any]:
            s = pc.web.get_session(token)
            if s is None:
                return None, None, None
            idle = policies.load(pc.store)["idle_timeout_minutes"] * 60
            now = time.time()
            if now - s.last_seen > idle or now - s.created > security.MAX_SESSION_AGE:
                pc.web.delete_session(s.id)
                return None, None, "expired"
            try:
                user = pc.store.directory.get_user_by_id(s.user_id)
            except NotFoundError:
                pc.web.delete_session(s.id)
                return None, None, None
            if not user.active:
                pc.web.delete_session(s.id)
                return None, None, None
            grants = pc.grants_of(user.email)
            if now - s.last_seen > security.TOUCH_EVERY:
                pc.web.touch_session(s.id)
            return s, Principal(user.email, user.id, grants, session_id=s.id), None

        s, principal, why = await pc.run(work)
        if why == "expired":
            ctx.extra["expired"] = True
        if s is not None:
            ctx.session, ctx.session_token = s, token
            if s.stage == "ok":
                ctx.principal = principal
            else:
                ctx.extra["pending_user"] = principal

    def page(self, *, auth: str = "ok", area: str = "admin",
             max_size: int = 1024 * 1024) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        """``auth``: "ok" (signed in), "pending" (password passed, second factor due), "none" (anyone).

        ``area``: "admin" pages send a signed-in person without an admin role
        to "My account" ("/") or answer 403; "self" pages are for everyone.
        """

        def deco(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            @functools.wraps(handler)
            async def endpoint(request: Request) -> Response:
                ctx = Ctx(request, self.pc)
                ctx.flash = security.decode_flash(self.pc.secret, request.cookies.get(security.FLASH_COOKIE))
                await self.load_session(ctx)
                seed = ctx.session_token
                if seed is None:
                    seed = request.cookies.get(security.PRE_COOKIE)
                    if not seed:
                        seed = ctx.pre_token = security.new_pre_token()
                ctx.csrf = security.csrf_token(self.pc.secret, seed)
                if request.method == "POST":
                    try:
                        ctx.form = await request.form(max_part_size=max_size, max_files=1, max_fields=2000)
                    except Exception:  # noqa: BLE001 - malformed body: tell the person, not a 500
                        return self.render(ctx, "error.html", 400, title=_("Bad request"),
                                           message=_("The form could not be read."))
                    token = ctx.form.get("csrf") or request.headers.get("x-csrf-token")
                    if not security.csrf_ok(self.pc.secret, seed, str(token) if token else None):
                        return self.render(
                            ctx, "error.html", 403, title=_("Form expired"),
                            message=_("This form was not sent from this panel, or it has expired. "
                                      "Go back, reload the page and try again."),
                        )
                if auth == "ok" and ctx.principal is None:
                    if ctx.extra.get("pending_user") is not None:
                        return redirect(ctx, "/login/totp" if ctx.session.stage == "totp" else "/login/enrol")
                    msg = _("You were signed out after a period of inactivity.") if ctx.extra.get("expired") else None
                    nxt = request.url.path if request.method == "GET" and request.url.path != "/" else None
                    return redirect(ctx, "/login" + (("?" + urlencode({"next": nxt})) if nxt else ""), msg, "error")
                if auth == "pending" and ctx.extra.get("pending_user") is None:
                    return redirect(ctx, "/" if ctx.principal else "/login")
                if auth == "ok" and area == "admin" and ctx.principal is not None and not admin_area(ctx.principal):
                    if request.url.path == "/" and request.method == "GET":
                        return redirect(ctx, "/me")
                    return self.render(ctx, "error.html", 403, title=_("Not allowed"),
                                       message=_("This page is for administrators. Your own settings are under My account."))
                try:
                    return await handler(ctx)
                except Forbidden:
                    return self.render(ctx, "error.html", 403, title=_("Not allowed"),
                                       message=_("Your admin role does not cover this page or action.") if area == "admin"
                                       else _("You may not do this for that account."))
                except OpError as exc:
                    return self.render(ctx, "error.html", exc.status, title=_("That did not work"), message=str(exc))

            return endpoint

        return deco


def form_str(ctx: Ctx, name: str, default: str = "") -> str:
    v = ctx.form.get(name) if ctx.form is not None else None
    return v if isinstance(v, str) else default


def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        return default
