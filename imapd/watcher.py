"""Change notification for selected mailboxes: in-process callbacks and one poller.

Changes made by this process reach ``Store.notify`` synchronously (the store
calls it from whatever thread made the change); changes made by other
processes (the MTA, ``appliance deliver``, another IMAP process) are seen
by polling ``MailStore.versions`` for the mailboxes that sessions have
selected, every ``interval`` seconds, in one query for all of them. Either
way each session watching the mailbox is marked dirty and, if it is in IDLE,
woken up; the session itself reads what changed.

The watcher also hands out \\Recent: the first session of this process that
sees a new message claims it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

log = logging.getLogger("imapd.watcher")


class Watcher:
    def __init__(self, store: Any, executor: Any, loop: asyncio.AbstractEventLoop, interval: float = 0.3) -> None:
        self.store = store
        self.executor = executor
        self.loop = loop
        self.interval = interval
        self._sessions: dict[int, set[Any]] = {}
        self._cancel: dict[int, Any] = {}
        self._versions: dict[int, tuple[int, int]] = {}
        self._recent_floor: dict[int, int] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._closed = False

    # ------------------------------------------------------------ sessions
    def watch(self, mailbox_id: int, session: Any, version: tuple[int, int]) -> None:
        with self._lock:
            first = mailbox_id not in self._sessions
            self._sessions.setdefault(mailbox_id, set()).add(session)
            self._versions.setdefault(mailbox_id, version)
        if first:
            self._cancel[mailbox_id] = self.store.subscribe(mailbox_id, self._from_store)
        if self._task is None and not self._closed:
            self._task = self.loop.create_task(self._poll())

    def unwatch(self, mailbox_id: int, session: Any) -> None:
        with self._lock:
            group = self._sessions.get(mailbox_id)
            if group is None:
                return
            group.discard(session)
            if group:
                return
            del self._sessions[mailbox_id]
            self._versions.pop(mailbox_id, None)
        cancel = self._cancel.pop(mailbox_id, None)
        if cancel is not None:
            cancel()

    def recent_floor(self, mailbox_id: int, uidnext: int) -> int:
        with self._lock:
            return self._recent_floor.setdefault(mailbox_id, uidnext)

    def claim_recent(self, mailbox_id: int, uids: list[int], uidnext: int) -> set[int]:
        """UIDs among ``uids`` that no session of this process has seen yet."""
        with self._lock:
            floor = self._recent_floor.setdefault(mailbox_id, uidnext)
            got = {u for u in uids if u >= floor}
            if got:
                self._recent_floor[mailbox_id] = max(got) + 1
        return got

    # ------------------------------------------------------------- changes
    def _from_store(self, mailbox_id: int) -> None:
        """Called by the store in the thread that made the change."""
        self._mark(mailbox_id)

    def _mark(self, mailbox_id: int) -> None:
        with self._lock:
            sessions = list(self._sessions.get(mailbox_id, ()))
        for s in sessions:
            s.mark_dirty(mailbox_id)
        if sessions:
            try:
                self.loop.call_soon_threadsafe(self._wake, sessions, mailbox_id)
            except RuntimeError:  # loop closed during shutdown
                pass

    @staticmethod
    def _wake(sessions: list[Any], mailbox_id: int) -> None:
        for s in sessions:
            s.mailbox_changed(mailbox_id)

    async def _poll(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval)
            with self._lock:
                ids = list(self._sessions)
            if not ids:
                continue
            try:
                now = await self.loop.run_in_executor(self.executor, self.store.mail.versions, ids)
            except Exception as exc:  # noqa: BLE001 - keep polling through a transient database error
                log.warning("polling mailbox versions: %s", exc)
                continue
            changed = []
            with self._lock:
                for mid in ids:
                    v = now.get(mid, (-1, -1))
                    if mid in self._versions and self._versions[mid] != v:
                        self._versions[mid] = v
                        changed.append(mid)
            for mid in changed:
                self._mark(mid)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for cancel in list(self._cancel.values()):
            cancel()
        self._cancel.clear()
