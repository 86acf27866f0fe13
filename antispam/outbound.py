"""Catching hijacked accounts: per-user outbound counters and sending freezes.

The MTA calls ``record_submission`` after each accepted submission and
``record_failure`` for each failed recipient or bounce of a user's mail.
Counters cover a sliding hour (six 10-minute slots): messages, distinct
recipients and failures, each against ``[limits]``; and messages against the
user's own usual rate: ``outbound_usual_factor`` times their average over
the hours of the last 7 days in which they sent anything, never below
``outbound_usual_floor``.

Over a limit, the account's sending is frozen: the user setting
``send_frozen`` = ``{"reason", "since", "counts"}``; the MTA asks
``is_frozen`` at MAIL FROM and answers ``Frozen.reply`` (4xx) while it is.
Every super admin gets a notice in their INBOX (English and Chinese), and
the event log records why (kind ``security``, action ``outbound.freeze``).
``unfreeze`` (``appliance user unfreeze EMAIL``) lifts it and clears the
burst from the counters.

Counters live in the store's settings (``outbound:<user uuid>``), so they
survive restarts and are shared by every process on the same database (the
MTA, the panel and imapd are separate processes under systemd). Each update
is one read-change-write of that row in a single write transaction holding
the row's lock (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on
PostgreSQL), so no count is lost across processes, and the call that passes
a limit is the only one that freezes: it marks the row (``"f"``) in the same
transaction. The transaction does not wait for an fsync (losing the last
counts in a power cut is harmless); the freeze itself is written durably.
Threads of one process queue on a lock before the database, which is cheaper
than SQLite's busy-wait. Everything here is blocking (store calls): call it
from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

from appliance.i18n import CATALOGUES, _


def N_(template: str) -> str:  # noqa: N802 - marks a message for translation, translated when shown
    return template


log = logging.getLogger("antispam")

SETTING = "send_frozen"
SLOT = 600  # seconds per slot of the sliding hour
SLOTS = 6
HISTORY_HOURS = 168
_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    messages_per_hour: int = 500
    recipients_per_hour: int = 2000
    failures_per_hour: int = 100
    usual_factor: int = 10
    usual_floor: int = 100

    @classmethod
    def from_config(cls, limits: Any) -> Limits:
        """From ``cfg.limits`` (or the whole cfg); None gives the defaults."""
        if limits is None:
            return cls()
        if isinstance(limits, Limits):
            return limits
        section = getattr(limits, "limits", limits)
        return cls(
            messages_per_hour=section.outbound_messages_per_hour,
            recipients_per_hour=section.outbound_recipients_per_hour,
            failures_per_hour=getattr(section, "outbound_failures_per_hour", cls.failures_per_hour),
            usual_factor=getattr(section, "outbound_usual_factor", cls.usual_factor),
            usual_floor=getattr(section, "outbound_usual_floor", cls.usual_floor),
        )


@dataclass(frozen=True)
class Frozen:
    """An account whose sending is frozen; truthy."""

    email: str
    reason: str
    since: float
    counts: dict = field(default_factory=dict)

    @property
    def reply(self) -> str:
        """The SMTP reply for MAIL FROM while frozen (4xx: nothing is lost if the admin lifts it)."""
        return ("451 4.7.1 Sending from this account is suspended because of unusual activity; "
                "contact your administrator")


@dataclass(frozen=True)
class FreezeDecision:
    frozen: bool  # the account is frozen now
    newly: bool = False  # this call froze it
    reason: str = ""
    counts: dict = field(default_factory=dict)


def _key(user: Any) -> str:
    return f"outbound:{user.uuid}"


def _hash(address: str) -> str:
    return hashlib.blake2b(address.strip().lower().encode(), digest_size=6).hexdigest()


def _parse(raw: str | None) -> dict:
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}
    if not isinstance(state, dict) or state.get("v") != 1:
        state = {"v": 1, "w": {}, "h": {}}
    return state


def _load(store: Any, user: Any) -> dict:
    return _parse(store.get_setting(_key(user)))


def _prune(state: dict, now: float) -> None:
    slot, hour = int(now // SLOT), int(now // 3600)
    state["w"] = {k: v for k, v in state["w"].items() if int(k) > slot - SLOTS}
    state["h"] = {k: v for k, v in state["h"].items() if int(k) > hour - HISTORY_HOURS}


def _window(state: dict) -> dict[str, int]:
    msgs = sum(v[0] for v in state["w"].values())
    fails = sum(v[1] for v in state["w"].values())
    rcpts: set[str] = set()
    for v in state["w"].values():
        rcpts.update(v[2])
    return {"messages": msgs, "recipients": len(rcpts), "failures": fails}


def usual_rate(state: dict, now: float) -> float:
    """Average messages per hour over the past hours (not this one) of the last week with any sending."""
    hour = int(now // 3600)
    busy = [n for k, n in state["h"].items() if int(k) < hour and n > 0]
    return sum(busy) / len(busy) if busy else 0.0


Reason = tuple[str, dict]  # (English template, parameters): rendered in any language later


def render(reason: Reason | None, lang: str | None = None) -> str:
    """A reason in ``lang`` (default: the current language)."""
    if not reason:
        return ""
    template, params = reason
    text = _(template) if lang is None else _in(lang, template)
    try:
        return text.format(**params)
    except (KeyError, ValueError, IndexError):
        return template


def _check(state: dict, counts: dict[str, int], limits: Limits, now: float) -> Reason | None:
    if limits.messages_per_hour and counts["messages"] > limits.messages_per_hour:
        return (N_("sent {n} messages in the last hour (limit {limit})"), {"n": counts["messages"], "limit": limits.messages_per_hour})
    if limits.recipients_per_hour and counts["recipients"] > limits.recipients_per_hour:
        return (N_("sent to {n} different recipients in the last hour (limit {limit})"),
                {"n": counts["recipients"], "limit": limits.recipients_per_hour})
    if limits.failures_per_hour and counts["failures"] > limits.failures_per_hour:
        return (N_("{n} failed recipients or bounces in the last hour (limit {limit})"),
                {"n": counts["failures"], "limit": limits.failures_per_hour})
    if limits.usual_factor:
        usual = usual_rate(state, now)
        threshold = max(limits.usual_floor, limits.usual_factor * usual)
        if counts["messages"] > threshold:
            return (N_("sent {n} messages in the last hour, more than {factor} times the usual {usual:.1f} per hour"),
                    {"n": counts["messages"], "factor": limits.usual_factor, "usual": usual})
    return None


CLAIM_GRACE = 60.0  # seconds a freeze claimed in the counters waits for the freeze itself to be written


def _claimed(state: dict, now: float) -> bool:
    """Whether another call already decided to freeze this (not yet frozen) account.

    A mark older than ``CLAIM_GRACE`` is stale: the freeze was lifted some other way than
    ``unfreeze()``, or writing it failed; the next burst freezes again.
    """
    since = state.get("f")
    return isinstance(since, int | float) and now - since < CLAIM_GRACE


_ENSURE = "INSERT INTO settings (key, value) VALUES (?, '{}') ON CONFLICT (key) DO NOTHING"
_SELECT = "SELECT value FROM settings WHERE key = ?"
_WRITE = "UPDATE settings SET value = ? WHERE key = ?"


def _atomic(store: Any, key: str, change: Any) -> Any:
    """Run ``change(state) -> result`` on the counters row ``key`` in one locked write transaction.

    Three short statements on the driver's cursor (this runs for every submitted message;
    SQLAlchemy's statement building cost more than the database work).
    """
    postgres = store.engine.dialect.name == "postgresql"
    with _lock, store.write(durable=False) as c:
        cur = c.connection.cursor()
        try:
            def run(sql: str, params: tuple) -> None:
                cur.execute(sql.replace("?", "%s") if c.dialect.paramstyle != "qmark" else sql, params)

            if postgres:
                run("SET LOCAL synchronous_commit TO OFF", ())
            # make sure the row exists, then lock it: two first-ever updates must not both insert
            run(_ENSURE, (key,))
            run(_SELECT + (" FOR UPDATE" if postgres else ""), (key,))  # SQLite: BEGIN IMMEDIATE holds the lock
            row = cur.fetchone()
            state = _parse(row[0] if row else None)
            result = change(state)
            run(_WRITE, (json.dumps(state, separators=(",", ":")), key))
        finally:
            cur.close()
    return result


def _update(store: Any, email: str, now: float | None, limits: Any, change: Any) -> FreezeDecision:
    now = time.time() if now is None else now
    lim = Limits.from_config(limits)
    user = store.directory.get_user(email)
    current = user.settings.get(SETTING)

    def step(state: dict) -> tuple[dict, Reason | None, bool]:
        _prune(state, now)
        change(state, now)
        counts = _window(state)
        if current:
            return counts, None, False
        claimed = _claimed(state, now)  # another call is freezing the account right now
        reason = _check(state, counts, lim, now)
        if reason is not None and not claimed:
            state["f"] = now  # this call freezes; any other process now sees the claim
        return counts, reason, claimed

    counts, reason, claimed = _atomic(store, _key(user), step)
    if current:
        return FreezeDecision(True, reason=_stored_reason(current), counts=counts)
    if claimed:
        return FreezeDecision(True, reason=render(reason), counts=counts)
    if reason is None:
        return FreezeDecision(False, counts=counts)
    freeze(store, user.email, reason, counts=counts, now=now)
    return FreezeDecision(True, newly=True, reason=render(reason), counts=counts)


def record_submission(store: Any, email: str, recipients: Iterable[str], *, limits: Any = None,
                      now: float | None = None) -> FreezeDecision:
    """Count one accepted submission of ``email`` to ``recipients``; freeze the account when over a limit.

    ``limits`` is ``cfg.limits`` (or the cfg; None: the defaults). Blocking.
    """
    rcpts = {_hash(r) for r in recipients if r}
    cap = max(Limits.from_config(limits).recipients_per_hour, 1) + 1

    def change(state: dict, now: float) -> None:
        slot, hour = str(int(now // SLOT)), str(int(now // 3600))
        entry = state["w"].setdefault(slot, [0, 0, []])
        entry[0] += 1
        seen = set(entry[2])
        total = sum(len(v[2]) for v in state["w"].values())
        for h in sorted(rcpts - seen):
            if total >= cap * 2:
                break  # enough to know the limit is passed; keeps the record small
            entry[2].append(h)
            total += 1
        state["h"][hour] = state["h"].get(hour, 0) + 1

    return _update(store, email, now, limits, change)


def record_failure(store: Any, email: str, count: int = 1, *, limits: Any = None, now: float | None = None) -> FreezeDecision:
    """Count ``count`` failed recipients or bounces of ``email``'s mail; may freeze the account. Blocking."""

    def change(state: dict, now: float) -> None:
        entry = state["w"].setdefault(str(int(now // SLOT)), [0, 0, []])
        entry[1] += max(0, int(count))

    return _update(store, email, now, limits, change)


def counters(store: Any, email: str, now: float | None = None) -> dict:
    """This hour's counts and the usual rate of ``email`` (for the CLI and the panel)."""
    now = time.time() if now is None else now
    user = store.directory.get_user(email)
    state = _load(store, user)
    _prune(state, now)
    return {**_window(state), "usual_per_hour": round(usual_rate(state, now), 2)}


def is_frozen(store: Any, email: str) -> Frozen | None:
    """The freeze of ``email``'s sending, or None (also for unknown addresses). Blocking."""
    try:
        user = store.directory.find_user(email)
    except Exception:  # noqa: BLE001 - an invalid address is simply not frozen
        return None
    if user is None:
        return None
    current = user.settings.get(SETTING)
    if not current:
        return None
    return _frozen(user.email, current)


def _stored_reason(current: dict) -> str:
    t, p = current.get("reason_template"), current.get("reason_params")
    if isinstance(t, str) and isinstance(p, dict):
        return render((t, p))
    return str(current.get("reason", ""))


def _frozen(email: str, current: dict) -> Frozen:
    return Frozen(email, _stored_reason(current), float(current.get("since", 0)), dict(current.get("counts") or {}))


def freeze(store: Any, email: str, reason: Reason | str, *, counts: dict | None = None, now: float | None = None,
           actor: str = "antispam", notify: bool = True) -> None:
    """Freeze ``email``'s sending now: user setting, event log, notice to the super admins."""
    now = time.time() if now is None else now
    if isinstance(reason, str):
        reason = ("{reason}", {"reason": reason})
    english = render(reason, "en")
    user = store.directory.get_user(email)
    store.directory.set_user_setting(user.email, SETTING, {
        "reason": english, "reason_template": reason[0], "reason_params": reason[1], "since": now, "counts": counts or {}})
    store.events.record("security", action="outbound.freeze", actor=actor, subject=user.email, result="frozen",
                        detail={"reason": english, "counts": counts or {}})
    log.warning("sending frozen for %s: %s", user.email, english)
    if notify:
        try:
            notify_admins(store, user.email, reason, now)
        except Exception as exc:  # noqa: BLE001 - the freeze holds even if the notice cannot be delivered
            log.warning("cannot notify the admins of the freeze of %s: %s", user.email, exc)


def unfreeze(store: Any, email: str, *, actor: str = "admin", now: float | None = None) -> bool:
    """Lift a freeze and forget the burst that caused it; False if the account was not frozen."""
    now = time.time() if now is None else now
    user = store.directory.get_user(email)
    current = user.settings.get(SETTING)

    def forget(state: dict) -> None:
        state["w"] = {}
        state["h"].pop(str(int(now // 3600)), None)  # a burst must not raise the usual rate
        state.pop("f", None)

    _atomic(store, _key(user), forget)
    if not current:
        return False
    store.directory.set_user_setting(user.email, SETTING, None)
    store.events.record("security", action="outbound.unfreeze", actor=actor, subject=user.email, result="ok",
                        detail={"was": current})
    return True


def frozen_accounts(store: Any) -> list[Frozen]:
    out = []
    for user in store.directory.list_users(limit=None):
        current = user.settings.get(SETTING)
        if current:
            out.append(_frozen(user.email, current))
    return out


# ---------------------------------------------------------------- the notice

_SUBJECT = "Sending frozen for {email}"
_BODY = (
    "Sending from the account {email} was frozen at {when} because of unusual activity:\n"
    "{reason}.\n\n"
    "This often means the account's password or an app password was stolen and is used to send spam. "
    "Mail the account tries to send is refused with a temporary error until the freeze is lifted.\n\n"
    "What to do: check the account's recent logins (appliance events, or the panel), change its password "
    "and revoke its app passwords, then lift the freeze:\n"
    "    appliance user unfreeze {email}\n"
)


def _in(lang: str, template: str) -> str:
    return CATALOGUES.get(lang, {}).get(template, template) if lang != "en" else template


def notice_message(admin: str, email: str, reason_en: str, reason_zh: str, now: float) -> bytes:
    from datetime import UTC, datetime

    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    domain = admin.rsplit("@", 1)[1]
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Mail appliance <postmaster@{domain}>"
    msg["To"] = admin
    msg["Subject"] = f"{_in('en', _SUBJECT).format(email=email)} / {_in('zh-CN', _SUBJECT).format(email=email)}"
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["Content-Language"] = "en, zh-CN"
    english = _in("en", _BODY).format(email=email, when=when, reason=reason_en)
    chinese = _in("zh-CN", _BODY).format(email=email, when=when, reason=reason_zh)
    msg.set_content(f"{english}\n----------------------------------------\n\n{chinese}", charset="utf-8")
    return msg.as_bytes()


def notify_admins(store: Any, email: str, reason: Reason, now: float) -> list[str]:
    """Deliver the freeze notice into every super admin's INBOX; returns who got it."""
    admins = sorted({a.email for a in store.directory.list_admins() if a.role == "super"})
    delivered = []
    for admin in admins:
        d = store.begin_delivery("", source="antispam")
        try:
            d.add_recipient(admin)
            d.write(notice_message(admin, email, render(reason, "en"), render(reason, "zh-CN"), now))
            d.commit()
            delivered.append(admin)
        except Exception as exc:  # noqa: BLE001 - one admin's full mailbox must not stop the others
            d.abort()
            log.warning("freeze notice to %s: %s", admin, exc)
    return delivered
