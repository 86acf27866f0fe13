"""Account security kept in storage: new-place sign-in alerts, recovery codes, "this wasn't me".

New-place alerts. ``Authenticator.authenticate`` calls ``note_login`` after a
successful login, in its own (worker) thread. A place is an IP network (/24
for IPv4, /64 for IPv6) and a client family (the IMAP ID name without its
version, or a browser and its OS from the User-Agent). The places an account
has signed in from are kept in the user setting ``login_places``, built once
from the login events, so the check costs no query on the usual path. A
login from a network, or with a client, that the account has not used
before (and where there is something to compare with: never on the first
sign-in) gets a notice in the user's INBOX (English and Chinese, from the
postmaster of the user's domain, through ``store.append``) and a
``security`` event ``login.new_place``. The policy key ``new_login_alerts``
(setting ``policies``, default on) turns this off. Nothing here ever makes a
login fail.

Recovery codes for TOTP are kept as HMAC digests in the user setting
``totp_recovery`` and each works once (``use_recovery_code``).

``report_not_me`` is the "this wasn't me" action: it ends the user's panel
sessions and every IMAP/POP3 session (``Store.end_sessions``, seen by every
process within about a second), revokes every app password, drops the
reported place from the known places and records a ``security`` event
``login.not_me``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
import uuid as uuidlib
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, localtime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from . import models as m
from .passwords import APP_PASSWORD_ALPHABET
from .records import User

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("storage.security")

PLACES_KEY = "login_places"
RECOVERY_KEY = "totp_recovery"
POLICY_KEY = "new_login_alerts"
MAX_NETWORKS = 100
MAX_CLIENTS = 50
BASELINE_EVENTS = 5000
RECOVERY_CODES = 10

_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Thunderbird/", "Thunderbird"), ("Firefox/", "Firefox"),
             ("Chrome/", "Chrome"), ("Chromium/", "Chrome"), ("Safari/", "Safari"))
_SYSTEMS = (("Windows", "Windows"), ("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iOS"), ("CrOS", "ChromeOS"),
            ("Mac OS X", "macOS"), ("Macintosh", "macOS"), ("Linux", "Linux"))
_VERSION = re.compile(r"^v?\d", re.IGNORECASE)


# ---------------------------------------------------------------- places
def network_of(ip: str | None) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) network of ``ip``; None if it is not an IP address."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def client_family(client: str | None) -> str | None:
    """"Chrome on Linux" from a User-Agent, "thunderbird" from an IMAP ID "Thunderbird 115.3"; None if unknown."""
    c = (client or "").strip()
    if not c:
        return None
    if c.startswith("Mozilla/") or "AppleWebKit" in c or "Gecko/" in c:
        browser = next((name for needle, name in _BROWSERS if needle in c), "Browser")
        system = next((name for needle, name in _SYSTEMS if needle in c), "")
        return f"{browser} on {system}" if system else browser
    words = []
    for w in re.split(r"[\s/;()]+", c):
        if not w:
            continue
        if _VERSION.match(w):
            break
        words.append(w)
    return " ".join(words)[:60].lower() or None


def alerts_enabled(store: Store) -> bool:
    try:
        policy = json.loads(store.get_setting("policies") or "{}")
    except ValueError:
        return True
    return not (isinstance(policy, dict) and policy.get(POLICY_KEY) is False)


def _baseline(store: Store, email: str) -> dict[str, list[str]] | None:
    """Known places from the login events; None when the account never signed in."""
    e = m.events.c
    q = (select(e.ip, e.client).where(e.kind == "login", e.subject == email, e.result == "ok")
         .order_by(e.ts.desc()).limit(BASELINE_EVENTS))
    with store.read() as c:
        rows = c.execute(q).all()
    if not rows:
        return None
    nets: list[str] = []
    clients: list[str] = []
    for r in reversed(rows):  # oldest first, so the lists keep the newest when trimmed
        n, f = network_of(r.ip), client_family(r.client)
        if n and n not in nets:
            nets.append(n)
        if f and f not in clients:
            clients.append(f)
    return {"nets": nets[-MAX_NETWORKS:], "clients": clients[-MAX_CLIENTS:]}


def note_login(store: Store, user: User, *, protocol: str, ip: str | None, client: str | None) -> bool:
    """Called on each successful login, before it is logged. True if the user was alerted.

    Blocking and cheap: no query unless the place is new (or the account's
    places were never gathered). Never raises.
    """
    try:
        return _note_login(store, user, protocol=protocol, ip=ip, client=client)
    except Exception as exc:  # noqa: BLE001 - an alert must never break a login
        log.warning("new-place check for %s failed: %s", user.email, exc)
        return False


def _note_login(store: Store, user: User, *, protocol: str, ip: str | None, client: str | None) -> bool:
    net, fam = network_of(ip), client_family(client)
    known = user.settings.get(PLACES_KEY)
    if isinstance(known, dict) and (net is None or net in known.get("nets", ())) and (fam is None or fam in known.get("clients", ())):
        return False  # the usual path: nothing new, nothing written

    found: dict[str, Any] = {}

    def change(settings: dict) -> None:
        places = settings.get(PLACES_KEY)
        first = False
        if not isinstance(places, dict):
            places = _baseline(store, user.email)
            first = places is None
            places = places or {"nets": [], "clients": []}
        nets, clients = list(places.get("nets", [])), list(places.get("clients", []))
        found["new_network"] = bool(net and nets and net not in nets)
        found["new_client"] = bool(fam and clients and fam not in clients)
        found["first"] = first
        if net and net not in nets:
            nets.append(net)
        if fam and fam not in clients:
            clients.append(fam)
        settings[PLACES_KEY] = {"nets": nets[-MAX_NETWORKS:], "clients": clients[-MAX_CLIENTS:]}

    store.directory.update_user_settings(user.email, change)
    if found.get("first") or not (found.get("new_network") or found.get("new_client")):
        return False
    if not alerts_enabled(store):
        return False
    when = time.time()
    notified = False
    try:
        store.append(user, "INBOX", new_place_notice(user, protocol=protocol, ip=ip, client=client, ts=when))
        notified = True
    except Exception as exc:  # noqa: BLE001 - a full mailbox must not stop the login
        log.warning("new-place notice for %s not delivered: %s", user.email, exc)
    store.events.record("security", action="login.new_place", actor=user.email, subject=user.email, protocol=protocol, ip=ip,
                        client=client, result="alert",
                        detail={"network": net, "client_family": fam, "new_network": found["new_network"],
                                "new_client": found["new_client"], "notified": notified})
    return True


PROTOCOL_NAMES = {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP", "panel": "Web panel"}
PROTOCOL_NAMES_ZH = {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP", "panel": "网页面板"}


def new_place_notice(user: User, *, protocol: str, ip: str | None, client: str | None, ts: float) -> bytes:
    """The bilingual notice (English, then Simplified Chinese) as a complete message."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))
    where = ip or "?"
    what = (client or "").strip() or "?"
    en = (
        f"Your account {user.email} was just used to sign in from a place it has not used before.\n\n"
        f"  Time:       {when}\n"
        f"  Service:    {PROTOCOL_NAMES.get(protocol, protocol)}\n"
        f"  IP address: {where}\n"
        f"  Client:     {what}\n\n"
        "If this was you (a new phone, a new mail program, another network), there is nothing to do.\n"
        "If it was not you: sign in to the web panel now, open \"Sign-in history\", choose\n"
        "\"This wasn't me\" (it ends your sessions and revokes your app passwords), then change\n"
        "your password. Tell your IT administrator.\n"
    )
    zh = (
        f"您的账户 {user.email} 刚刚从一个以前未使用过的位置登录。\n\n"
        f"  时间：{when}\n"
        f"  服务：{PROTOCOL_NAMES_ZH.get(protocol, protocol)}\n"
        f"  IP 地址：{where}\n"
        f"  客户端：{what}\n\n"
        "如果是您本人（新手机、新的邮件程序或其他网络），无需任何操作。\n"
        "如果不是您本人：请立即登录网页面板，打开“登录记录”，选择“不是我”\n"
        "（这会结束您的所有会话并吊销全部应用专用密码），然后修改密码，并告知 IT 管理员。\n"
    )
    msg = EmailMessage()
    msg["From"] = formataddr(("Mail server / 邮件服务器", f"postmaster@{user.domain}"))
    msg["To"] = formataddr((user.name, user.email)) if user.name else user.email
    msg["Subject"] = "New sign-in to your account / 您的账户有新的登录"
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = f"<{uuidlib.uuid4().hex}@{user.domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Content-Language"] = "en, zh-CN"
    msg.set_content(en + "\n" + "-" * 40 + "\n\n" + zh, charset="utf-8")
    return msg.as_bytes()


def forget_place(store: Store, email: str, *, ip: str | None, client: str | None) -> None:
    """Drop a network and client family from the known places: the next login from there alerts again."""
    net, fam = network_of(ip), client_family(client)

    def change(settings: dict) -> None:
        places = settings.get(PLACES_KEY)
        if isinstance(places, dict):
            places["nets"] = [n for n in places.get("nets", []) if n != net]
            places["clients"] = [c for c in places.get("clients", []) if c != fam]

    store.directory.update_user_settings(email, change)


# ---------------------------------------------------------- recovery codes
def _normal_code(code: str) -> str:
    return (code or "").strip().lower().replace(" ", "").replace("-", "")


def looks_like_recovery_code(code: str) -> bool:
    n = _normal_code(code)
    return len(n) == 10 and all(ch in APP_PASSWORD_ALPHABET for ch in n)


def _recovery_digest(store: Store, user_uuid: str, code: str) -> str:
    msg = b"totp-recovery|" + user_uuid.encode() + b"|" + _normal_code(code).encode()
    return hmac.new(store.app_password_key, msg, hashlib.sha256).hexdigest()


def new_recovery_codes(store: Store, email: str, n: int = RECOVERY_CODES) -> list[str]:
    """Replace the user's recovery codes with ``n`` new ones; the codes are returned once, only digests are kept."""
    user = store.directory.get_user(email)
    codes = []
    for _i in range(n):
        raw = "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _j in range(10))
        codes.append(raw[:5] + "-" + raw[5:])
    digests = [_recovery_digest(store, user.uuid, c) for c in codes]
    store.directory.update_user_settings(user.email, lambda s: s.__setitem__(RECOVERY_KEY, digests))
    return codes


def use_recovery_code(store: Store, email: str, code: str) -> bool:
    """True, and the code is gone, if ``code`` is one of the user's unused recovery codes."""
    if not looks_like_recovery_code(code):
        return False
    user = store.directory.get_user(email)
    digest = _recovery_digest(store, user.uuid, code)

    def change(settings: dict) -> bool:
        left = list(settings.get(RECOVERY_KEY) or [])
        hit = next((d for d in left if hmac.compare_digest(d, digest)), None)
        if hit is None:
            return False
        left.remove(hit)
        settings[RECOVERY_KEY] = left
        return True

    return store.directory.update_user_settings(user.email, change)


def recovery_codes_left(user: User) -> int:
    return len(user.settings.get(RECOVERY_KEY) or [])


# ------------------------------------------------------------- history
def signin_history(store: Store, email: str, *, limit: int = 200, since: float | None = None) -> list:
    """The user's login events, newest first (storage.records.Event)."""
    return store.events.query(kind="login", user=email, since=since, limit=limit)


def end_panel_sessions(store: Store, user_id: int) -> int:
    with store.write() as c:
        return c.execute(delete(m.web_sessions).where(m.web_sessions.c.user_id == user_id)).rowcount


def report_not_me(store: Store, email: str, *, event_id: int | None, ip: str | None, actor: str | None = None) -> dict:
    """"This wasn't me": end every panel, IMAP and POP3 session, revoke every app password, record it.

    ``event_id`` is the login event the user does not recognise (it must be
    one of theirs; otherwise only the protective actions are taken). Returns
    what was done.
    """
    user = store.directory.get_user(email)
    reported = None
    if event_id is not None:
        with store.read() as c:
            row = c.execute(select(m.events).where(m.events.c.id == event_id, m.events.c.kind == "login")).first()
        if row is not None and user.email in (row.subject, row.actor):
            reported = row
    sessions = end_panel_sessions(store, user.id)
    apps = store.revoke_app_password(user.email)
    store.end_sessions(user.email)  # IMAP and POP3 sessions, in every process, whatever secret they used
    if reported is not None:
        forget_place(store, user.email, ip=reported.ip, client=reported.client)
    detail = {"sessions_ended": sessions, "app_passwords_revoked": apps}
    if reported is not None:
        detail.update({"event_id": reported.id, "event_ts": reported.ts, "event_protocol": reported.protocol,
                       "event_ip": reported.ip, "event_client": reported.client})
    store.events.record("security", action="login.not_me", actor=actor or user.email, subject=user.email, ip=ip,
                        result="reported", detail=detail)
    return detail
