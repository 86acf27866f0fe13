"""Vacation auto-replies after a local delivery (storage/vacation.py decides, this sends).

``AutoReplies.after_delivery(msg)`` is the Deliverer's hook: it runs before
the 250 but only hands the work to the executor (a quick look at the users'
settings decides whether there is any), so the client never waits for a
reply to be built, recorded and queued. In the thread, for each local
recipient the message reached: ``vacation.should_reply`` (once per sender per
period, never to lists, bulk, auto-submitted or null-sender mail; it records
the reply), then the reply goes out with the null sender (MAIL FROM:<>, RFC
3834): into the INBOX of a local sender through the store, or the outbound
queue for a remote one, where it is DKIM-signed at send time like our other
mail (meta ``autoreply``).

Auto-replies are not counted against the user's sending limits and a bounce
of one does not count as the user's failure (antispam/outbound.py): spam with
forged senders would otherwise freeze an account that only was on holiday.

A failure is logged; the delivered message is never touched. A crash between
the 250 and the reply loses the reply, never the mail.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

from storage import vacation
from storage.records import User

from . import headers
from .delivery import Accepted
from .notices import deliver_notice
from .queue import OutboundQueue

log = logging.getLogger("mta")


class AutoReplies:
    def __init__(self, store: Any, queue: OutboundQueue, executor: Any = None, events: Any = None) -> None:
        """``executor``: where replies are made; by default one thread of their own, so a burst of
        replies takes at most one thread and one writer from the deliveries."""
        self._s = store
        self.queue = queue
        self._own = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mta-autoreply")
        self.events = events
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    def after_delivery(self, msg: Accepted) -> None:
        """Thread-safe, quick: start the replies of ``msg`` in the executor when a recipient is away."""
        if not msg.sender:
            return
        away = [u for u in msg.reached if vacation.get_settings(u).active()]
        if not away:
            return
        head = msg.raw[: headers.header_end(msg.raw)]
        future = self.executor.submit(self.reply_all, away, msg.sender, head, msg.queue_id)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def reply_all(self, users: list[User], sender: str, head: bytes, of: str) -> list[str]:
        """Blocking. Returns the users who replied."""
        sent = []
        for user in users:
            try:
                if self.reply(user, sender, head, of):
                    sent.append(user.email)
            except Exception:  # noqa: BLE001 - one user's failure must not stop the others
                log.exception("vacation auto-reply of %s to %s (for %s) failed", user.email, sender, of)
        return sent

    def reply(self, user: User, sender: str, head: bytes, of: str) -> bool:
        reply = vacation.should_reply(self._s, user, sender, head)
        if reply is None:
            return False
        how = deliver_notice(self._s, self.queue, reply.recipient, reply.message,
                             meta={"autoreply": user.email, "of": of}, source="autoreply")
        log.info("vacation auto-reply of %s to %s (for %s): %s", user.email, reply.recipient, of, how)
        if self.events is not None:
            self.events.write(of, reply.mail_from, [reply.recipient], len(reply.message), "autoreply", ip=None,
                              detail={"direction": "outbound", "autoreply": user.email, "via": how})
        return True

    def drain(self, timeout: float) -> bool:
        """Wait for replies in progress (at stop); True if none is left."""
        with self._lock:
            pending = set(self._pending)
        if not pending:
            return True
        _done, left = concurrent.futures.wait(pending, timeout=timeout)
        return not left

    def close(self, timeout: float = 10.0) -> bool:
        """Let the replies in progress finish (up to ``timeout``), then stop the thread; True if all were made."""
        done = self.drain(timeout)
        if self._own:
            self.executor.shutdown(wait=False, cancel_futures=True)
        return done
