"""Forwarding set by a user on the panel, for the MTA.

The user setting ``forward_to`` holds one address and ``forward_keep``
(default true) whether a copy stays in the mailbox. The policy key
``forwarding_allowed`` (setting ``policies``, default false) must be on for
either to apply. After a local delivery the MTA calls::

    address, keep = forwarding.target(store, user)   # blocking, cheap: no query but the policy
    if address: queue a copy for address (SRS or the user's own address as envelope sender);
    if not keep: the local copy may be dropped (the MTA decides the order, e.g. deliver then expunge)

Never forward automatic mail back to its own sender (loops): the MTA keeps
its usual loop checks (a Delivered-To: or X-Loop header naming the user).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import policy
from .addresses import normalise_address
from .errors import InvalidInputError
from .records import User

if TYPE_CHECKING:
    from .store import Store

KEY, KEEP_KEY, POLICY_KEY = "forward_to", "forward_keep", "forwarding_allowed"


def allowed(store: Store) -> bool:
    return policy.load(store)[POLICY_KEY] is True


def target(store: Store, user: User) -> tuple[str | None, bool]:
    """(forwarding address or None, keep a local copy)."""
    raw = user.settings.get(KEY)
    if not raw or not isinstance(raw, str) or not allowed(store):
        return None, True
    try:
        address = normalise_address(raw)
    except InvalidInputError:
        return None, True
    if address == user.email:
        return None, True
    return address, user.settings.get(KEEP_KEY) is not False
