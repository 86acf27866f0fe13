"""Ending live sessions whose credentials were revoked, in this process or by another one.

A session remembers what its login proved (``conn.credential``: the
password as it was, or one app password) and the user's credential epoch at
that moment (``conn.auth_epoch``). Every change that can make a login
invalid moves the epoch in the store (a new password, a revoked app
password, a disabled account, "this wasn't me", ...; see
``storage.auth.Authenticator.session_check``) or deletes the user.

The guard polls the epochs of the users with live sessions every
``interval`` seconds (one indexed query for all of them), and at once when
this process made the change (``Store.add_credentials_listener``). For each
session whose epoch moved it asks the store whether the session may go on;
the ones that may not are ended (IMAP ``* BYE``, POP3 ``-ERR``). Sessions
whose credentials are still valid (another app password, the password when
only an app password was revoked) go on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("imapd.guard")


class SessionGuard:
    def __init__(self, store: Any, executor: Any, loop: asyncio.AbstractEventLoop, interval: float = 0.5) -> None:
        self.store = store
        self.executor = executor
        self.loop = loop
        self.interval = interval
        self._sessions: dict[int, set[Any]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._cancel = store.add_credentials_listener(self._changed)

    # ------------------------------------------------------------ sessions
    def add(self, conn: Any) -> None:
        """A session logged in (``conn.user``, ``conn.credential``, ``conn.auth_epoch`` are set)."""
        self._sessions.setdefault(conn.user.id, set()).add(conn)
        if self._task is None and not self._closed:
            self._task = self.loop.create_task(self._run(), name="imapd-session-guard")

    def remove(self, conn: Any) -> None:
        group = self._sessions.get(conn.user.id) if conn.user is not None else None
        if group is None:
            return
        group.discard(conn)
        if not group:
            del self._sessions[conn.user.id]

    def _changed(self, user_id: int) -> None:
        """Called by the store, in the thread that changed a user's credentials."""
        try:
            self.loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    # -------------------------------------------------------------- checks
    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._sessions:
                continue
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep guarding through a transient database error
                log.warning("checking sessions against revoked credentials: %s", exc)

    async def check(self) -> int:
        """One round: end the sessions whose credentials no longer hold. Returns how many were ended."""
        ids = list(self._sessions)
        epochs = await self.loop.run_in_executor(self.executor, self.store.directory.auth_epochs, ids)
        stale = [(conn, epochs.get(uid)) for uid in ids for conn in list(self._sessions.get(uid, ()))
                 if conn.auth_epoch != epochs.get(uid)]
        if not stale:
            return 0
        keys = {(conn.user.id, conn.credential, conn.auth_epoch, conn.protocol_name) for conn, _e in stale}
        verdicts = await self.loop.run_in_executor(self.executor, self._verdicts, keys)
        ended = 0
        for conn, now in stale:
            reason = verdicts.get((conn.user.id, conn.credential, conn.auth_epoch, conn.protocol_name))
            if reason is None and now is not None:
                conn.auth_epoch = now  # still valid: nothing to do until the epoch moves again
            elif not conn.closing:
                log.info("%s session of %s from %s ended: %s", conn.protocol_name, conn.user.email, conn.ip, reason)
                conn.revoke(reason or "deleted")
                ended += 1
        return ended

    def _verdicts(self, keys: set[tuple[int, str | None, int, str]]) -> dict[tuple, str | None]:
        """Blocking: ``session_check`` once per distinct (user, credential, epoch, protocol)."""
        check = self.store.auth.session_check
        return {k: check(k[0], k[1], k[2], protocol=k[3]) for k in keys}

    async def close(self) -> None:
        self._closed = True
        self._cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None
