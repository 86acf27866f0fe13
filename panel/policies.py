"""Policies set on the panel's Policies page.

Stored as one JSON object under the setting key ``policies``
(``store.get_setting("policies")``); every service reads the keys it needs
and falls back to ``DEFAULTS`` for a missing key:

- ``password_min_length`` (int), ``password_classes`` (int 1-4: how many of
  lower case, upper case, digits, other characters): enforced here when the
  panel or the API sets a password.
- ``admin_totp_required`` (bool, default true): admins must use TOTP for the
  panel (enforced here). ``user_totp_required`` (bool): the same for users'
  self-service pages.
- ``app_passwords_allowed`` (bool): whether users may create app passwords
  (client authorisation codes) for IMAP/SMTP.
- ``max_message_size`` (bytes, 0 = the config's smtp.max_message_size),
  ``outbound_per_hour`` (messages per account per hour, 0 = the config's
  limits.outbound_messages_per_hour), ``log_retention_days`` (0 = the
  config's log.retention): read by the MTA and the event log pruning.
- ``idle_timeout_minutes``: the panel signs out an idle session after this.
- ``new_login_alerts`` (bool, default true): a sign-in from a new network or
  client puts a notice in the user's INBOX (``storage.security``).
- ``app_passwords_required_with_totp`` (bool, default false): a user who
  turns on two-step verification can then use only app passwords for IMAP,
  POP3 and SMTP (the user setting ``require_app_password`` that
  ``storage.auth`` honours; kept in step when this policy changes).
- ``forwarding_allowed`` (bool, default false): users may set a forwarding
  address (user setting ``forward_to``).
- ``profile_edit_name``, ``profile_edit_title``, ``profile_edit_phone``
  (bool): which profile fields users may change themselves.
"""

from __future__ import annotations

import json
from typing import Any

from storage.policy import DEFAULTS, KEY, load

from .i18n import _

__all__ = ["DEFAULTS", "KEY", "LIMITS", "PROFILE_FIELDS", "load", "password_problem", "save", "validate"]

PROFILE_FIELDS = ("name", "title", "phone")

LIMITS: dict[str, tuple[int, int]] = {
    "password_min_length": (6, 128),
    "password_classes": (1, 4),
    "max_message_size": (0, 2 * 1024**3),
    "outbound_per_hour": (0, 10**9),
    "log_retention_days": (0, 36500),
    "idle_timeout_minutes": (1, 24 * 60),
}


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Check and coerce submitted values; raise ValueError naming the first bad one."""
    out = dict(DEFAULTS)
    for k, default in DEFAULTS.items():
        if k not in values:
            continue
        v = values[k]
        if isinstance(default, bool):
            out[k] = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "on", "yes")
            continue
        try:
            n = int(str(v).strip())
        except ValueError:
            raise ValueError(_("{field} must be a whole number").format(field=k)) from None
        low, high = LIMITS[k]
        if not low <= n <= high:
            raise ValueError(_("{field} must be between {low} and {high}").format(field=k, low=low, high=high))
        out[k] = n
    return out


def save(store, values: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    clean = validate(values)
    store.set_setting(KEY, json.dumps(clean, sort_keys=True))
    return clean


def password_problem(policy: dict[str, Any], password: str) -> str | None:
    """None if ``password`` meets the policy, else the reason in the request's language."""
    if len(password) > 1024:
        return _("the password is too long (1024 characters at most)")
    if len(password) < policy["password_min_length"]:
        return _("the password must have at least {n} characters").format(n=policy["password_min_length"])
    classes = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    if classes < policy["password_classes"]:
        return _("the password must mix at least {n} of: lower case, upper case, digits, other characters").format(
            n=policy["password_classes"]
        )
    return None
