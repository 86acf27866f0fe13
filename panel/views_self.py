"""Pages of "My account", for every signed-in person: profile, password, two-step verification,
app passwords, sign-in history, mail settings (spam lists, vacation reply, forwarding), my data.

The admin's view of one user adds unlock and "download mail" (``/users/{email}/export.zip``).
"""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from storage import security as sec
from storage import vacation

from . import ops_self as os_
from . import policies, security
from .context import OpError
from .i18n import _
from .views_auth import _set_session
from .web import Ctx, Pages, form_str, redirect


def _client(ctx: Ctx) -> str:
    return (ctx.request.headers.get("user-agent") or "")[:200]


def routes(pages: Pages) -> list[Route]:
    pc = pages.pc
    store = pc.store

    # ------------------------------------------------------------ profile
    @pages.page(area="self")
    async def profile(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            try:
                await os_.update_profile(pc, p, ctx.ip, p.email, {k: form_str(ctx, k) for k in policies.PROFILE_FIELDS})
            except OpError as exc:
                return redirect(ctx, "/me", str(exc), "error")
            return redirect(ctx, "/me", _("Saved."))
        user = await os_.load_user(pc, p, p.email)
        pol = await pc.run(policies.load, store)
        editable = [k for k in policies.PROFILE_FIELDS if pol[f"profile_edit_{k}"]]
        dep = ""
        if user.department_id:
            from .context import department_paths

            dep = department_paths(await pc.run(store.directory.list_departments)).get(user.department_id, "")
        return pages.render(ctx, "me.html", u=user, editable=editable, dep=dep,
                            totp=bool(user.settings.get("totp")), is_admin=bool(p.grants))

    # ----------------------------------------------------------- password
    @pages.page(area="self")
    async def password(ctx: Ctx) -> Response:
        p = ctx.principal
        pol = await pc.run(policies.load, store)
        if ctx.request.method == "GET":
            return pages.render(ctx, "me_password.html", error=None, pol=pol)
        try:
            await os_.change_password(pc, p, ctx.ip, _client(ctx), form_str(ctx, "current"), form_str(ctx, "new")[:1024],
                                      form_str(ctx, "confirm")[:1024])
        except OpError as exc:
            return pages.render(ctx, "me_password.html", exc.status, error=str(exc), pol=pol)
        token = await pc.run(os_.rotate_session, pc, p.user_id, ctx.ip, _client(ctx))
        return _set_session(ctx, redirect(ctx, "/me", _("Password changed. You were signed out on your other devices.")), token)

    # ---------------------------------------------------- two-step (TOTP)
    @pages.page(area="self")
    async def two_step(ctx: Ctx) -> Response:
        p = ctx.principal
        user = await os_.load_user(pc, p, p.email)
        pol = await pc.run(policies.load, store)
        required = pol["admin_totp_required" if p.grants else "user_totp_required"]
        values = {"u": user, "totp": bool(user.settings.get("totp")), "left": sec.recovery_codes_left(user),
                  "required": required, "require_app": bool(user.settings.get("require_app_password")),
                  "policy_app": pol["app_passwords_required_with_totp"], "setup": None, "error": None}
        if ctx.request.method == "GET":
            return pages.render(ctx, "me_security.html", **values)
        action = form_str(ctx, "action")
        code = form_str(ctx, "code")[:64]
        try:
            if action == "start" and not values["totp"]:
                secret, _uri = await pc.run(os_.pending_secret, pc, p.email)
                values["setup"] = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
                return pages.render(ctx, "me_security.html", **values)
            if action == "confirm" and not values["totp"]:
                codes = await pc.run(os_.confirm_totp, pc, p.email, code, ctx.ip)
                if codes is None:
                    secret, _uri = await pc.run(os_.pending_secret, pc, p.email)
                    values["setup"] = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
                    values["error"] = _("That code is not right. Check the time on your phone and try the newest code.")
                    return pages.render(ctx, "me_security.html", 400, **values)
                return pages.render(ctx, "recovery.html", codes=codes, next="/me/security")
            if action == "disable" and values["totp"]:
                await os_.disable_totp(pc, p, ctx.ip, code)
                return redirect(ctx, "/me/security", _("Two-step verification is off."))
            if action == "recovery" and values["totp"]:
                codes = await os_.regenerate_recovery_codes(pc, p, ctx.ip, code)
                return pages.render(ctx, "recovery.html", codes=codes, next="/me/security")
        except OpError as exc:
            return redirect(ctx, "/me/security", str(exc), "error")
        return redirect(ctx, "/me/security")

    @pages.page(area="self")
    async def two_step_qr(ctx: Ctx) -> Response:
        p = ctx.principal
        user = await os_.load_user(pc, p, p.email)
        if user.settings.get("totp") or not user.settings.get("totp_pending"):
            return Response(status_code=404)
        _secret, uri = await pc.run(os_.pending_secret, pc, p.email)
        return Response(security.qr_svg(uri), media_type="image/svg+xml", headers={"cache-control": "no-store"})

    # ------------------------------------------------------ app passwords
    @pages.page(area="self")
    async def app_passwords(ctx: Ctx) -> Response:
        p = ctx.principal
        created = None
        if ctx.request.method == "POST":
            name = form_str(ctx, "name").strip()
            try:
                if form_str(ctx, "action") == "create":
                    created = {"name": name, "code": await os_.create_app_password(pc, p, ctx.ip, p.email, name)}
                else:
                    await os_.revoke_app_password(pc, p, ctx.ip, p.email, name)
                    return redirect(ctx, "/me/app-passwords", _("App password {name} revoked.").format(name=name))
            except OpError as exc:
                return redirect(ctx, "/me/app-passwords", str(exc), "error")
        user = await os_.load_user(pc, p, p.email)
        apps = await pc.run(store.list_app_passwords, user.email)
        pol = await pc.run(policies.load, store)
        return pages.render(ctx, "me_apps.html", apps=apps, created=created, allowed=pol["app_passwords_allowed"],
                            required=bool(user.settings.get("require_app_password")), host=pc.hostname)

    # ---------------------------------------------------- sign-in history
    @pages.page(area="self")
    async def activity(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            raw = form_str(ctx, "event")
            done = await os_.not_me(pc, p, ctx.ip, int(raw) if raw.isdigit() else None)
            token = await pc.run(pc.web.create_session, p.user_id, stage="ok", ip=ctx.ip, client=_client(ctx))
            msg = _("Done: your other sessions were ended and {n} app passwords revoked. Now change your password.").format(
                n=done["app_passwords_revoked"])
            return _set_session(ctx, redirect(ctx, "/me/password", msg), token)
        events = await os_.history(pc, p, p.email, limit=200)
        return pages.render(ctx, "me_activity.html", events=events)

    # ------------------------------------------------------ mail settings
    @pages.page(area="self")
    async def mail_settings(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "spam":
                    await os_.save_spam_lists(pc, p, ctx.ip, p.email, form_str(ctx, "allow")[:200_000], form_str(ctx, "block")[:200_000])
                elif action == "vacation":
                    data = {"enabled": form_str(ctx, "enabled") == "on", "body": form_str(ctx, "body"),
                            "start": form_str(ctx, "start"), "end": form_str(ctx, "end"), "days": form_str(ctx, "days") or 7}
                    await os_.save_vacation(pc, p, ctx.ip, p.email, data)
                elif action == "forwarding":
                    await os_.save_forwarding(pc, p, ctx.ip, p.email, form_str(ctx, "forward_to"), form_str(ctx, "keep") == "on")
            except OpError as exc:
                return redirect(ctx, "/me/mail", str(exc), "error")
            return redirect(ctx, "/me/mail", _("Saved."))
        user = await os_.load_user(pc, p, p.email)
        pol = await pc.run(policies.load, store)
        return pages.render(ctx, "me_mail.html", allow="\n".join(user.settings.get(os_.SPAM_ALLOW) or []),
                            block="\n".join(user.settings.get(os_.SPAM_BLOCK) or []), v=vacation.get_settings(user),
                            forwarding_allowed=pol["forwarding_allowed"], forward_to=user.settings.get(os_.FORWARD_TO) or "",
                            keep=user.settings.get(os_.FORWARD_KEEP, True))

    # ------------------------------------------------------------ my data
    @pages.page(area="self")
    async def data(ctx: Ctx) -> Response:
        p = ctx.principal
        user = await os_.load_user(pc, p, p.email)
        return pages.render(ctx, "me_data.html", u=user)

    async def _download(ctx: Ctx, email: str) -> Response:
        user, stream = await os_.export(pc, ctx.principal, ctx.ip, email)
        return StreamingResponse(stream, media_type="application/zip",
                                 headers={"content-disposition": f'attachment; filename="{os_.export_name(user)}"'})

    @pages.page(area="self")
    async def my_export(ctx: Ctx) -> Response:
        return await _download(ctx, ctx.principal.email)

    @pages.page()
    async def user_export(ctx: Ctx) -> Response:
        return await _download(ctx, ctx.request.path_params["email"])

    return [
        Route("/me", profile, methods=["GET", "POST"]),
        Route("/me/password", password, methods=["GET", "POST"]),
        Route("/me/security", two_step, methods=["GET", "POST"]),
        Route("/me/security/qr.svg", two_step_qr, methods=["GET"]),
        Route("/me/app-passwords", app_passwords, methods=["GET", "POST"]),
        Route("/me/activity", activity, methods=["GET", "POST"]),
        Route("/me/mail", mail_settings, methods=["GET", "POST"]),
        Route("/me/data", data, methods=["GET"]),
        Route("/me/export.zip", my_export, methods=["GET"]),
        Route("/users/{email}/export.zip", user_export, methods=["GET"]),
    ]
