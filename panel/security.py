"""Sessions, CSRF tokens, flash messages and TOTP for the panel.

- The session cookie holds a random token; the database keeps its HMAC
  digest with the user, the stage (``totp``/``enrol`` until the second factor
  passes, then ``ok``), the creation time and the last activity. A session
  idle longer than the policy's ``idle_timeout_minutes``, or older than
  ``MAX_SESSION_AGE``, is gone. "Sign out everywhere" deletes all of a user's
  rows. A new token is issued when the second factor passes.
- CSRF: every form carries ``csrf`` = HMAC(secret, session token, or the
  ``pre`` cookie before sign-in); every POST without the right one gets 403.
  Cookies are HttpOnly and SameSite=Strict, Secure under TLS.
- TOTP secrets are sealed with the user's data key
  (``keyring.seal(uuid, secret, b"totp|" + uuid)``) into the user setting
  ``totp`` (base64); ``totp_last`` keeps the last time step used so a code
  works once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import time
from typing import Any

import pyotp

SESSION_COOKIE = "panel_session"
PRE_COOKIE = "panel_pre"
FLASH_COOKIE = "panel_flash"
MAX_SESSION_AGE = 12 * 3600
TOUCH_EVERY = 30.0
TOTP_ISSUER = "Mail appliance"
MAX_TOTP_FAILURES = 5


def _mac(secret: bytes, purpose: str, value: str) -> str:
    return hmac.new(secret, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()


def csrf_token(secret: bytes, seed: str) -> str:
    return _mac(secret, "csrf", seed)[:40]


def csrf_ok(secret: bytes, seed: str | None, token: str | None) -> bool:
    if not seed or not token:
        return False
    return hmac.compare_digest(csrf_token(secret, seed), token)


def new_pre_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_args(secure: bool, max_age: int | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"httponly": True, "samesite": "strict", "secure": secure, "path": "/"}
    if max_age is not None:
        args["max_age"] = max_age
    return args


# ------------------------------------------------------------------ flash
def encode_flash(secret: bytes, kind: str, message: str) -> str:
    body = base64.urlsafe_b64encode(json.dumps([kind, message[:500]], ensure_ascii=False).encode()).decode()
    return body + "." + _mac(secret, "flash", body)[:32]


def decode_flash(secret: bytes, value: str | None) -> tuple[str, str] | None:
    if not value or "." not in value or len(value) > 4000:
        return None
    body, _sep, mac = value.rpartition(".")
    if not hmac.compare_digest(_mac(secret, "flash", body)[:32], mac):
        return None
    try:
        kind, message = json.loads(base64.urlsafe_b64decode(body.encode()))
    except (ValueError, TypeError):
        return None
    return (kind if kind in ("ok", "error") else "ok"), str(message)


# ------------------------------------------------------------------- TOTP
def _totp_context(user_uuid: str, name: str) -> bytes:
    return f"{name}|{user_uuid}".encode()


def seal_secret(store, user, secret: str, name: str = "totp") -> str:  # type: ignore[no-untyped-def]
    sealed = store.keyring.seal(user.uuid, secret.encode(), _totp_context(user.uuid, name))
    return base64.b64encode(sealed).decode()


def open_secret(store, user, name: str = "totp") -> str | None:  # type: ignore[no-untyped-def]
    value = user.settings.get(name)
    if not value:
        return None
    return store.keyring.open(user.uuid, base64.b64decode(value), _totp_context(user.uuid, name)).decode()


def check_code(secret: str, code: str, last_step: int | None, now: float | None = None) -> int | None:
    """The matched time step if ``code`` is valid now (±1 step) and newer than ``last_step``, else None."""
    code = "".join(ch for ch in (code or "") if ch.isdigit())
    if len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if now is None else now
    step = int(now // totp.interval)
    for s in (step - 1, step, step + 1):
        if last_step is not None and s <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(s), code):
            return s
    return None


def provisioning_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def qr_svg(data: str) -> bytes:
    import qrcode
    import qrcode.image.svg

    img = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathFillImage, box_size=10, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return buf.getvalue()
