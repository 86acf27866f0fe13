"""Operations of the "My account" pages, for the user or an admin acting for the user.

Each operation authorises first with ``authz.authorize(p, action,
self_target(user))`` (the owner, or an admin who may change that user), then
calls the store in a worker thread and records a ``security`` event naming
who acted. Password and app-password checks go through the store's
Authenticator, never on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyotp

from storage import export as store_export
from storage import forwarding, vacation
from storage import security as sec
from storage.addresses import normalise_address, normalise_domain
from storage.errors import InvalidInputError
from storage.records import User

from . import policies, security
from .authz import READ, WRITE, Principal, authorize, self_target
from .context import OpError, PanelContext
from .i18n import _, translate_error

SPAM_ALLOW, SPAM_BLOCK = "spam_allow", "spam_block"  # read by antispam.policy: keep these names
FORWARD_TO, FORWARD_KEEP = forwarding.KEY, forwarding.KEEP_KEY  # read by the MTA through storage.forwarding
MAX_LIST = 1000


async def load_user(pc: PanelContext, p: Principal, email: str, action: str = READ) -> User:
    user = await pc.run(pc.store.directory.get_user, email)
    authorize(p, action, self_target(user))
    return user


def _event(pc: PanelContext, p: Principal, action: str, user: User, ip: str | None, detail: dict | None = None,
           result: str = "done") -> None:
    # "done", not "ok": a security event with result "ok" ends a login throttle window (storage.auth)
    d = dict(detail or {})
    if p.email != user.email:
        d["by_admin"] = p.email
    pc.store.events.record("security", action=action, actor=p.email, subject=user.email, ip=ip, result=result,
                           detail=d or None)


# ------------------------------------------------------------------ profile
async def update_profile(pc: PanelContext, p: Principal, ip: str | None, email: str, data: dict[str, str]) -> User:
    user = await load_user(pc, p, email, WRITE)
    pol = await pc.run(policies.load, pc.store)
    fields: dict[str, str] = {}
    for k in policies.PROFILE_FIELDS:
        if k not in data or not pol[f"profile_edit_{k}"]:
            continue
        v = " ".join(str(data[k]).split())
        if len(v) > (64 if k == "phone" else 200):
            raise OpError(_("{field} is too long").format(field=_(k)), field=k)
        fields[k] = v
    if not fields:
        return user

    def work() -> User:
        u = pc.store.directory.update_user(user.email, **fields)
        _event(pc, p, "profile.update", user, ip, {"fields": sorted(fields)})
        return u

    return await pc.run(work)


# ----------------------------------------------------------------- password
async def change_password(pc: PanelContext, p: Principal, ip: str | None, client: str | None, current: str, new: str,
                          confirm: str) -> None:
    """The owner changes the password: the current one through the Authenticator (it counts towards lockout)."""
    user = await load_user(pc, p, p.email, WRITE)
    if new != confirm:
        raise OpError(_("The two new passwords are not the same."), field="new")
    pol = await pc.run(policies.load, pc.store)
    problem = policies.password_problem(pol, new)
    if problem:
        raise OpError(problem, field="new")
    if new == current:
        raise OpError(_("The new password must differ from the current one."), field="new")
    outcome = await pc.run(pc.store.auth.authenticate, user.email, current[:1024], protocol="panel", ip=ip, client=client)
    if not outcome.ok:
        import asyncio

        await asyncio.sleep(outcome.delay)
        if outcome.reason == "locked":
            raise OpError(_("This account is locked after too many failed sign-ins. Try again later, or ask an administrator to unlock it."), 429)
        raise OpError(_("The current password is not right."), 403, field="current")

    def work() -> None:
        pc.store.set_password(user.email, new)  # also forgets the login cache
        _event(pc, p, "password.change", user, ip)

    await pc.run(work)


def rotate_session(pc: PanelContext, user_id: int, ip: str | None, client: str | None) -> str:
    """End every panel session of the user and open a new one for this browser; returns its token."""
    pc.web.delete_user_sessions(user_id)
    return pc.web.create_session(user_id, stage="ok", ip=ip, client=client)


# --------------------------------------------------------- two-step (TOTP)
def pending_secret(pc: PanelContext, email: str) -> tuple[str, str]:
    """Blocking: the secret being enrolled (made on first call) and its otpauth:// URI."""
    store = pc.store
    user = store.directory.get_user(email)
    secret = security.open_secret(store, user, "totp_pending")
    if not secret:
        secret = pyotp.random_base32()
        store.directory.set_user_setting(email, "totp_pending", security.seal_secret(store, user, secret, "totp_pending"))
    return secret, security.provisioning_uri(secret, email, f"{security.TOTP_ISSUER} ({pc.cfg.instance.name})")


def consume_totp_code(pc: PanelContext, email: str, code: str) -> bool:
    """Blocking: is ``code`` a valid, unused TOTP code of the user? It is used up if so (one transaction)."""
    store = pc.store
    user = store.directory.get_user(email)
    secret = security.open_secret(store, user)
    if not secret:
        return False

    def change(settings: dict) -> bool:
        step = security.check_code(secret, code, settings.get("totp_last"))
        if step is None:
            return False
        settings["totp_last"] = step
        return True

    return store.directory.update_user_settings(user.email, change)


def confirm_totp(pc: PanelContext, email: str, code: str, ip: str | None, actor: str | None = None) -> list[str] | None:
    """Blocking: finish enrolment with a code of the pending secret; returns the new recovery codes (shown once)."""
    store = pc.store
    user = store.directory.get_user(email)
    secret = security.open_secret(store, user, "totp_pending")
    if not secret:
        return None
    step = security.check_code(secret, code, None)
    if step is None:
        return None
    require = policies.load(store)["app_passwords_required_with_totp"]
    sealed = security.seal_secret(store, user, secret)

    def change(settings: dict) -> None:
        settings["totp"] = sealed
        settings["totp_last"] = step
        settings.pop("totp_pending", None)
        if require:
            settings["require_app_password"] = True

    store.directory.update_user_settings(user.email, change)
    codes = sec.new_recovery_codes(store, user.email)
    store.events.record("security", action="totp.enable", actor=actor or user.email, subject=user.email, ip=ip, result="done",
                        detail={"app_passwords_required": require})
    return codes


async def disable_totp(pc: PanelContext, p: Principal, ip: str | None, code: str) -> None:
    user = await load_user(pc, p, p.email, WRITE)
    pol = await pc.run(policies.load, pc.store)
    grants = await pc.run(pc.grants_of, user.email)
    if pol["admin_totp_required" if grants else "user_totp_required"]:
        raise OpError(_("Your administrator requires two-step verification; it cannot be turned off."), 403)
    if not await pc.run(_code_or_recovery, pc, user.email, code):
        raise OpError(_("That code is not right. Check the time on your phone and try the newest code."), 403, field="code")

    def work() -> None:
        for key in ("totp", "totp_pending", "totp_last", sec.RECOVERY_KEY, "require_app_password"):
            pc.store.directory.set_user_setting(user.email, key, None)
        _event(pc, p, "totp.disable", user, ip)

    await pc.run(work)


def _code_or_recovery(pc: PanelContext, email: str, code: str) -> bool:
    if sec.looks_like_recovery_code(code):
        return sec.use_recovery_code(pc.store, email, code)
    return consume_totp_code(pc, email, code)


async def regenerate_recovery_codes(pc: PanelContext, p: Principal, ip: str | None, code: str) -> list[str]:
    user = await load_user(pc, p, p.email, WRITE)
    if not user.settings.get("totp"):
        raise OpError(_("Turn on two-step verification first."))
    if not await pc.run(_code_or_recovery, pc, user.email, code):
        raise OpError(_("That code is not right. Check the time on your phone and try the newest code."), 403, field="code")

    def work() -> list[str]:
        codes = sec.new_recovery_codes(pc.store, user.email)
        _event(pc, p, "totp.recovery_codes", user, ip)
        return codes

    return await pc.run(work)


def sync_app_password_requirement(store: Any, required: bool) -> int:
    """Blocking: after the policy changed, make ``require_app_password`` match it for every user with TOTP."""
    n = 0
    offset = 0
    while True:
        users = store.directory.list_users(offset=offset, limit=1000)
        if not users:
            return n
        offset += len(users)
        for u in users:
            if u.settings.get("totp") and bool(u.settings.get("require_app_password")) != required:
                store.directory.set_user_setting(u.email, "require_app_password", True if required else None)
                n += 1


# ------------------------------------------------------------ app passwords
async def create_app_password(pc: PanelContext, p: Principal, ip: str | None, email: str, name: str) -> str:
    user = await load_user(pc, p, email, WRITE)
    pol = await pc.run(policies.load, pc.store)
    if not pol["app_passwords_allowed"]:
        raise OpError(_("Your administrator does not allow app passwords."), 403)

    def work() -> str:
        code = pc.store.add_app_password(user.email, name)
        _event(pc, p, "app_password.add", user, ip, {"name": name.strip()})
        return code

    return await pc.run(work)


async def revoke_app_password(pc: PanelContext, p: Principal, ip: str | None, email: str, name: str) -> None:
    user = await load_user(pc, p, email, WRITE)

    def work() -> None:
        pc.store.revoke_app_password(user.email, name)  # not cached: the next login with it fails
        _event(pc, p, "app_password.revoke", user, ip, {"name": name})

    await pc.run(work)


# -------------------------------------------------------------- history
async def history(pc: PanelContext, p: Principal, email: str, limit: int = 100) -> list:
    user = await load_user(pc, p, email, READ)
    return await pc.run(sec.signin_history, pc.store, user.email, limit=limit)


async def not_me(pc: PanelContext, p: Principal, ip: str | None, event_id: int | None) -> dict:
    user = await load_user(pc, p, p.email, WRITE)
    return await pc.run(sec.report_not_me, pc.store, user.email, event_id=event_id, ip=ip, actor=p.email)


# ---------------------------------------------------------- spam lists
def normalise_entry(entry: str) -> str:
    """An address (``boss@partner.example``) or a domain (``partner.example``, ``@partner.example``), as antispam reads them."""
    e = (entry or "").strip()
    try:
        if "@" in e.lstrip("@"):
            return normalise_address(e)
        return normalise_domain(e.lstrip("@"))
    except InvalidInputError:
        raise OpError(_("{entry} is neither an address nor a domain").format(entry=e[:100])) from None


def parse_list(text: str) -> list[str]:
    out: list[str] = []
    for line in (text or "").replace(",", "\n").replace(";", "\n").splitlines():
        if line.strip():
            e = normalise_entry(line)
            if e not in out:
                out.append(e)
    if len(out) > MAX_LIST:
        raise OpError(_("A list holds {n} entries at most.").format(n=MAX_LIST))
    return out


async def save_spam_lists(pc: PanelContext, p: Principal, ip: str | None, email: str, allow: str, block: str) -> None:
    user = await load_user(pc, p, email, WRITE)
    allow_l, block_l = parse_list(allow), parse_list(block)
    both = sorted(set(allow_l) & set(block_l))
    if both:
        raise OpError(_("{entry} cannot be on both lists.").format(entry=both[0]))

    def work() -> None:
        def change(settings: dict) -> None:
            for key, value in ((SPAM_ALLOW, allow_l), (SPAM_BLOCK, block_l)):
                if value:
                    settings[key] = value
                else:
                    settings.pop(key, None)

        pc.store.directory.update_user_settings(user.email, change)
        _event(pc, p, "spam_lists.set", user, ip, {"allow": len(allow_l), "block": len(block_l)})

    await pc.run(work)


# ------------------------------------------------------------ vacation
async def save_vacation(pc: PanelContext, p: Principal, ip: str | None, email: str, data: dict[str, Any]) -> vacation.Settings:
    user = await load_user(pc, p, email, WRITE)

    def work() -> vacation.Settings:
        s = vacation.save_settings(pc.store, user.email, **data)
        _event(pc, p, "vacation.set", user, ip, {"enabled": s.enabled, "start": s.start, "end": s.end})
        return s

    return await pc.run(work)


# ---------------------------------------------------------- forwarding
async def save_forwarding(pc: PanelContext, p: Principal, ip: str | None, email: str, address: str, keep: bool) -> None:
    user = await load_user(pc, p, email, WRITE)
    pol = await pc.run(policies.load, pc.store)
    address = (address or "").strip()
    if address and not pol["forwarding_allowed"]:
        raise OpError(_("Your administrator does not allow forwarding."), 403)
    if address:
        try:
            address = normalise_address(address)
        except InvalidInputError as exc:
            raise OpError(translate_error(exc), field="forward_to") from None
        if address in await pc.run(pc.store.directory.addresses_of, user.email):
            raise OpError(_("Mail cannot be forwarded to your own address."), field="forward_to")

    def work() -> None:
        def change(settings: dict) -> None:
            if address:
                settings[FORWARD_TO] = address
                settings[FORWARD_KEEP] = bool(keep)
            else:
                settings.pop(FORWARD_TO, None)
                settings.pop(FORWARD_KEEP, None)

        pc.store.directory.update_user_settings(user.email, change)
        _event(pc, p, "forwarding.set", user, ip, {"forward_to": address or None, "keep": bool(keep)})

    await pc.run(work)


# ---------------------------------------------------------------- data
async def export(pc: PanelContext, p: Principal, ip: str | None, email: str) -> tuple[User, Iterator[bytes]]:
    """The user's archive as an iterator of bytes (iterated in a thread by StreamingResponse)."""
    user = await load_user(pc, p, email, WRITE if p.email != email else READ)
    await pc.run(_event, pc, p, "data.export", user, ip)
    return user, store_export.iter_export(pc.store, user.email)


def export_name(user: User) -> str:
    return f"mail-{user.email.replace('@', '_at_')}-{time.strftime('%Y%m%d')}.zip"


# ------------------------------------------------------ lockout (admins)
async def unlock(pc: PanelContext, p: Principal, ip: str | None, email: str) -> None:
    user = await load_user(pc, p, email, WRITE)
    if user.email == p.email and not p.grants:
        raise OpError(_("Ask an administrator to unlock your account."), 403)

    def work() -> None:
        pc.store.auth.unlock(user.email, actor=p.email)
        pc.audit(p, "user.unlock", user.email, ip)

    await pc.run(work)
