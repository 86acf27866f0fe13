"""Mail the mail system itself sends with the null sender: bounces, delay notices, vacation auto-replies.

``deliver_notice`` puts one into the INBOXes of a local address through the
store's one ingest path, or into the outbound queue (MAIL FROM:<>) for a
remote one, with ``meta`` telling the delivery worker what it is (``dsn``,
``autoreply``: both are DKIM-signed at send time like submitted mail).
Blocking: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from storage.errors import InvalidInputError, NotFoundError

from .queue import OutboundQueue

log = logging.getLogger("mta")


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def deliver_notice(store: Any, queue: OutboundQueue, address: str, raw: bytes, *, meta: dict[str, Any],
                   source: str = "dsn") -> str:
    """Deliver ``raw`` (null sender) to ``address``. Returns how: "local", "queued" or "dropped"."""
    directory = store.directory
    if not directory.is_local_domain(_domain(address)):
        queue.enqueue("", [address], raw, meta=meta)
        return "queued"
    local, external = directory.expand(address)
    delivered: list[str] = []
    if local:
        d = store.begin_delivery("", source=source)
        for email in local:
            with contextlib.suppress(NotFoundError, InvalidInputError):
                d.add_recipient(email)
        if d.recipients:
            d.write(raw)
            report = d.commit()
            delivered = [s.email for s in report.stored]
        else:
            d.abort()
    if external:
        queue.enqueue("", list(external), raw, meta=meta)
    if not delivered and not external:
        log.warning("notice for %s dropped: no such local mailbox", address)
        return "dropped"
    return "local" if delivered else "queued"
