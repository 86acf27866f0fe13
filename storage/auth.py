"""One login policy for every protocol (SMTP AUTH, IMAP, POP3, the panel).

As in Radicale's ``BaseAuth.login``: normalise the login, check throttling,
verify, log the attempt. Backends stay small. The caller awaits ``delay``
before answering a failure (never sleeps on an event loop thread).
Throttling state is derived from the event log, so it holds across processes
and an admin can clear it (``unlock``). A locked account answers
``reason="locked"`` (even to the right password) until the window passes or
an admin unlocks it. A success goes through ``security.note_login`` (the
new-place alert) before it is logged.
"""

from __future__ import annotations

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
        user = self._s.directory.find_user(email) if email else None
        app_name = None
        ok = False
        if user is None:
            self._s.passwords.burn()
        elif looks_like_app_password(secret):
            app_name = self._check_app_password(user, secret, ip)
            ok = app_name is not None
        if user is not None and not ok and app_name is None:
            if not (user.settings.get("require_app_password") and protocol in ("imap", "pop3", "smtp")):
                ok = self._s.passwords.verify(user.uuid, user.password_hash, secret)
        if ok and user is not None and not user.active:
            self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="disabled")
            return AuthOutcome(False, user, "disabled", self.settings.failure_delay)
        if not ok:
            self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="fail")
            return AuthOutcome(False, None, "bad_credentials", self.settings.failure_delay)
        detail = {"app_password": app_name} if app_name else None
        security.note_login(self._s, user, protocol=protocol, ip=ip, client=client)
        self._s.events.login(name, protocol=protocol, ip=ip, client=client, result="ok", detail=detail)
        return AuthOutcome(True, user, "ok", 0.0, app_name)

    def _check_app_password(self, user: User, code: str, ip: str | None) -> str | None:
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
        return row.name
