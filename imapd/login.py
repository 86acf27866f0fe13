"""The login path shared by IMAP and POP3: the store's Authenticator, off the reactor.

``Authenticator.authenticate`` applies the policy (per-IP and per-account
throttling, Argon2 or app password, the event log); here it runs in the
thread pool, a failure is answered only after ``outcome.delay`` (awaited,
never slept on the reactor), and a success claims one of the account's
connection slots.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from dataclasses import dataclass
from typing import Any

MAX_LOGIN = 320
MAX_SECRET = 1024


@dataclass(frozen=True)
class LoginResult:
    user: Any
    reason: str  # ok, bad_credentials, locked, ip_blocked, disabled, invalid, limit

    @property
    def ok(self) -> bool:
        return self.user is not None


async def login(conn: Any, protocol: str, username: str, secret: str) -> LoginResult:
    shared = conn.shared
    if not username or len(username) > MAX_LOGIN or len(secret) > MAX_SECRET or "\0" in username:
        await asyncio.sleep(shared.store.auth.settings.failure_delay)
        return LoginResult(None, "invalid")
    started = time.time()
    call = functools.partial(shared.store.auth.authenticate, username, secret, protocol=protocol, ip=conn.ip or None,
                             client=conn.client_id)
    outcome = await shared.run(call)
    if not outcome.ok:
        if outcome.delay:
            await asyncio.sleep(outcome.delay)
        return LoginResult(None, outcome.reason)
    user = outcome.user
    if not shared.registry.claim_user(user.id):
        return LoginResult(None, "limit")
    conn.user = user
    conn.user_claimed = True
    conn.credential = outcome.credential
    conn.auth_epoch = outcome.epoch
    conn.login_time = started
    if shared.guard is not None:
        shared.guard.add(conn)
    return LoginResult(user, "ok")


def decode_plain(data: bytes) -> tuple[str, str] | None:
    """SASL PLAIN (RFC 4616) message in base64 -> (login, password); None if malformed.

    An authorisation identity other than the login itself is refused (no
    proxy logins).
    """
    try:
        raw = base64.b64decode(data.strip(), validate=True)
        authz, authc, passwd = raw.split(b"\0")
        login_name = authc.decode("utf-8")
        secret = passwd.decode("utf-8")
        if authz and authz.decode("utf-8") != login_name:
            return None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return login_name, secret


def b64_text(data: bytes) -> str | None:
    try:
        return base64.b64decode(data.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


#: why a logged-in session was ended (``Connection.revoke``): (IMAP response code, text)
REVOKED_TEXT = {
    "password_changed": ("EXPIRED", "The password of this account was changed; log in with the new one"),
    "app_password_revoked": ("EXPIRED", "The app password of this session was revoked"),
    "app_password_required": ("EXPIRED", "This account now requires an app password"),
    "disabled": ("CONTACTADMIN", "This account is disabled; contact your administrator"),
    "deleted": ("CONTACTADMIN", "This account no longer exists"),
    "ended": ("", "Your sessions were ended from the security settings; log in again"),
}

FAILURE_TEXT = {
    "locked": "Too many failed logins for this account; try again later",
    "ip_blocked": "Too many failed logins from your address; try again later",
    "disabled": "This account is disabled; contact your administrator",
    "limit": "Too many connections for this account",
}
