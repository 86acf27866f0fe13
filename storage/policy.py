"""The policies an admin sets on the panel, read by every service.

Stored as one JSON object under the setting key ``policies``; the panel
(panel/policies.py) documents each key, validates and saves them. Services
read them here so that none needs the panel package: the MTA (message size,
outbound rate, forwarding), the event log pruning (retention). A missing key,
a value of the wrong type or an unreadable setting gives the default.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store

KEY = "policies"

DEFAULTS: dict[str, Any] = {
    "password_min_length": 10,
    "password_classes": 2,
    "admin_totp_required": True,
    "user_totp_required": False,
    "app_passwords_allowed": True,
    "max_message_size": 0,
    "outbound_per_hour": 0,
    "log_retention_days": 0,
    "idle_timeout_minutes": 30,
    "new_login_alerts": True,
    "app_passwords_required_with_totp": False,
    "forwarding_allowed": False,
    "profile_edit_name": True,
    "profile_edit_title": False,
    "profile_edit_phone": True,
}


def parse(raw: str | None) -> dict[str, Any]:
    """The policies from the stored JSON text, every key present (defaults for the rest)."""
    out = dict(DEFAULTS)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if k in DEFAULTS and type(v) is type(DEFAULTS[k]):
                out[k] = v
    return out


def load(store: Store) -> dict[str, Any]:
    """Every policy, from the store (one settings read). Blocking."""
    return parse(store.get_setting(KEY))


def or_configured(policies: dict[str, Any], key: str, configured: int) -> int:
    """A numeric policy where 0 means "the config's value": the policy when set (> 0), else ``configured``."""
    value = policies.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else configured
