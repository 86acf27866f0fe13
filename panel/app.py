"""The panel's Starlette application: pages, static files, the JSON API."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from storage.crypto import hmac_key, load_master_key
from storage.webadmin import WebAdmin

from . import api, views_admin, views_auth, views_dir, views_mail, views_org, views_self
from .context import PanelContext
from .web import LanguageAndHeaders, Pages

STATIC = Path(__file__).parent / "static"


def make_context(store, cfg, *, secure_cookies: bool) -> PanelContext:  # type: ignore[no-untyped-def]
    master = load_master_key(Path(cfg.storage.master_key_file))
    web = WebAdmin(store, hmac_key(master, "web-panel-digests"))
    return PanelContext(store=store, cfg=cfg, web=web, secret=hmac_key(master, "web-panel-forms"), secure_cookies=secure_cookies)


def create_app(pc: PanelContext) -> Starlette:
    pages = Pages(pc)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/healthz", healthz),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
        *api.routes(pc),
        *views_auth.routes(pages),
        *views_dir.routes(pages),
        *views_org.routes(pages),
        *views_admin.routes(pages),
        *views_mail.routes(pages),
        *views_self.routes(pages),
    ]
    app = Starlette(routes=routes)
    wrapped = LanguageAndHeaders(app)
    wrapped.pc = pc  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]
