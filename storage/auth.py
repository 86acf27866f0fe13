"""One login policy for every protocol (SMTP AUTH, IMAP, POP3, the panel).

As in Radicale's ``BaseAuth.login``: normalise the login, check throttling,
verify, log the attempt. Backends stay small. The caller awaits ``delay``
before answering a failure (never sleeps on an event loop thread).
Throttling state is derived from the event log, so it holds across processes
and an admin can clear it (``unlock``). A locked account answers
``reason="locked"`` (even to the right password) until the window passes or
an admin unlocks it. A success goes through ``security.note_login`` (the
new-place alert) before it is logged.

Revocation. A success names the credential it used (``AuthOutcome.credential``:
the password as it was, or one app password) and the user's credential
epoch read in the same row as the password hash. Every change that can make
a login invalid bumps the epoch (``Directory.bump_epoch_in``: password set,
app password revoked, account disabled, app passwords required, sessions
ended) or deletes the row. A service holding long sessions polls
``Directory.auth_epochs`` for its users and, when one moved, asks
``session_check`` whether each session may go on.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from . import models as m
from . import security
from .addresses import normalise_address
from .errors import InvalidInputError
from .passwords import app_password_digest, looks_like_app_password
from .records import User

if TYPE_CHECKING:
    from .store import Store

#: protocols on which ``require_app_password`` refuses the account password
APP_PASSWORD_PROTOCOLS = ("imap", "pop3", "smtp")


@dataclass(frozen=True)
class AuthSettings:
    failure_delay: float = 2.0
    max_failures_per_ip: int = 20
    max_failures_per_account: int = 10
    lockout_time: float = 900.0


@dataclass(frozen=True)
class AuthOutcome:
    ok: bool
    user: User | None
    reason: str  # ok, bad_credentials, locked, ip_blocked, disabled, invalid
    delay: float = 0.0
    via_app_password: str | None = None
    #: what the login proved: "password:<fingerprint of the hash>" or "app:<app password id>"
    credential: str | None = None
    #: the user's credential epoch when the credential was read (see ``session_check``)
    epoch: int = 0

    @property
    def temporary(self) -> bool:
        return self.reason in ("locked", "ip_blocked")


class Authenticator:
    def __init__(self, store: Store, settings: AuthSettings) -> None:
        self._s = store
        self.settings = settings

    # The throttle windows start at the last success or admin unlock.
    def _since(self, *, subject: str | None = None, ip: str | None = None) -> float:
        window_start = time.time() - self.settings.lockout_time
        q = select(m.events.c.ts).where(m.events.c.kind.in_(("login", "security")), m.events.c.result.in_(("ok", "unlock")))
        if subject is not None:
            q = q.where(m.events.c.subject == subject)
        if ip is not None:
            q = q.where(m.events.c.ip == ip)
        q = q.order_by(m.events.c.ts.desc()).limit(1)
        with self._s.read() as c:
            last = c.execute(q).scalar()
        return max(window_start, last or 0.0)

    def failures(self, login: str) -> int:
        """Failed logins of ``login`` in the current throttle window (since the last success or unlock)."""
        return self._s.events.count(kind="login", subject=login, result="fail", since=self._since(subject=login))

    def account_locked(self, login: str) -> bool:
        return self.failures(login) >= self.settings.max_failures_per_account

    def ip_blocked(self, ip: str | None) -> bool:
        if not ip:
            return False
        n = self._s.events.count(kind="login", ip=ip, result="fail", since=self._since(ip=ip))
        return n >= self.settings.max_failures_per_ip

    def unlock(self, login: str | None = None, ip: str | None = None, *, actor: str = "admin") -> None:
        self._s.events.record("security", action="unlock", actor=actor, subject=login, ip=ip, result="unlock")

    def authenticate(self, login: str, secret: str, *, protocol: str, ip: str | None = None, client: str | None = None) -> AuthOutcome:
        """Blocking: run in a thread. Never raises for bad input."""
        try:
            email = normalise_address(login)
        except InvalidInputError:
            email = None
        name = email or (login or "")[:320]
        if len(secret or "") > 1024:
            secret = ""
        if self.ip_blocked(ip):
            self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="blocked", detail={"reason": "ip"})
            return AuthOutcome(False, None, "ip_blocked", self.settings.failure_delay)
        if email and self.account_locked(email):
            self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="blocked", detail={"reason": "account"})
            return AuthOutcome(False, None, "locked", self.settings.failure_delay)
        found = self._s.directory.find_user_for_login(email) if email else None
        user, epoch = found if found is not None else (None, 0)
        app_name = None
        credential = None
        ok = False
        if user is None:
            self._s.passwords.burn()
        elif looks_like_app_password(secret):
            app = self._check_app_password(user, secret, ip)
            if app is not None:
                ok, credential, app_name = True, f"app:{app[0]}", app[1]
        if user is not None and not ok and app_name is None:
            if not (user.settings.get("require_app_password") and protocol in APP_PASSWORD_PROTOCOLS):
                ok = self._s.passwords.verify(user.uuid, user.password_hash, secret)
                credential = "password:" + password_fingerprint(user.password_hash)
        if ok and user is not None and not user.active:
            self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="disabled")
            return AuthOutcome(False, user, "disabled", self.settings.failure_delay)
        if not ok:
            self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="fail")
            return AuthOutcome(False, None, "bad_credentials", self.settings.failure_delay)
        detail = {"app_password": app_name} if app_name else None
        security.note_login(self._s, user, protocol=protocol, ip=ip, client=client)
        self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="ok", detail=detail)
        return AuthOutcome(True, user, "ok", 0.0, app_name, credential, epoch)

    def name_client(self, login: str, *, protocol: str, ip: str | None, client: str, since: float) -> bool:
        """Blocking: put ``client`` on the session's login event when it was named after the login.

        IMAP clients such as Thunderbird send ID only once logged in; the
        event of that login (the newest successful one of ``login`` over
        ``protocol`` from ``ip`` since ``since``, without a client) gets the
        name, so the sign-in history shows it. True if an event was updated.
        """
        e = m.events.c
        q = (select(e.id).where(e.kind == "login", e.subject == login, e.protocol == protocol, e.result == "ok",
                                e.client.is_(None), e.ts >= since)
             .order_by(e.ts.desc()).limit(1))
        if ip is not None:
            q = q.where(e.ip == ip)
        with self._s.write() as c:
            event_id = c.execute(q).scalar()
            if event_id is None:
                return False
            c.execute(update(m.events).where(e.id == event_id).values(client=client[:200]))
        return True

    def session_check(self, user_id: int, credential: str | None, epoch: int, *, protocol: str) -> str | None:
        """Blocking. None if a session that logged in with ``credential`` at ``epoch`` may go on, else why not.

        The reasons: ``deleted``, ``disabled``, ``ended`` (all sessions were
        ended, e.g. "this wasn't me"), ``password_changed``,
        ``app_password_revoked``, ``app_password_required``.
        """
        u = m.users.c
        with self._s.read() as c:
            row = c.execute(select(u.password_hash, u.state, u.settings, u.sessions_epoch).where(u.id == user_id)).first()
            if row is None:
                return "deleted"
            if row.state != "active":
                return "disabled"
            if epoch < int(row.sessions_epoch):
                return "ended"
            kind, _, ref = (credential or "").partition(":")
            if kind == "app":
                a = m.app_passwords.c
                alive = ref.isdigit() and c.execute(select(a.id).where(a.id == int(ref), a.user_id == user_id)).first()
                return None if alive else "app_password_revoked"
        if kind != "password" or ref != password_fingerprint(row.password_hash):
            return "password_changed"
        settings = json.loads(row.settings or "{}")
        if settings.get("require_app_password") and protocol in APP_PASSWORD_PROTOCOLS:
            return "app_password_required"
        return None

    def _check_app_password(self, user: User, code: str, ip: str | None) -> tuple[int, str] | None:
        digest = app_password_digest(self._s.app_password_key, code)
        with self._s.read() as c:
            row = c.execute(
                select(m.app_passwords.c.id, m.app_passwords.c.name).where(
                    m.app_passwords.c.user_id == user.id, m.app_passwords.c.digest == digest
                )
            ).first()
        if row is None:
            return None
        with self._s.write() as c:
            c.execute(update(m.app_passwords).where(m.app_passwords.c.id == row.id).values(last_used=time.time(), last_ip=ip))
        return int(row.id), row.name


def password_fingerprint(password_hash: str | None) -> str:
    """A short digest of a stored hash: tells whether the password changed, without keeping the hash."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:24]
