"""Vacation auto-replies (RFC 3834): the decision and the reply, in storage; the MTA sends.

The MTA calls this after a local delivery to ``user`` has committed (one call
per local recipient; blocking, so from a worker thread)::

    from storage import vacation

    reply = vacation.should_reply(store, user, sender, headers)
    if reply is not None:
        # queue it like any outgoing message:
        #   MAIL FROM:<reply.mail_from>   ("" : the null sender, RFC 3834 3.3)
        #   RCPT TO:<reply.recipient>     (the original envelope sender)
        #   DATA reply.message            (complete RFC 5322 bytes)

- ``user``: the ``storage.records.User`` (or its address) the message was
  delivered to;
- ``sender``: the envelope sender (MAIL FROM), "" or "<>" for the null sender;
- ``headers``: the delivered message's header block, as an
  ``email.message.Message`` or the raw bytes of the message (or of its
  header; only the header is read).

``should_reply`` records the reply as sent when it returns one (one row per
user and sender in ``vacation_replies``, in the same transaction as the
check), so two deliveries from the same sender racing each other give one
reply. It returns None when the user's vacation is off or outside its dates;
for the null sender, mailer-daemon, postmaster, noreply and list-owner style
senders, and the user's own addresses; for messages with ``Auto-Submitted``
other than ``no``, ``List-Id``/``List-Unsubscribe``/``List-Post``,
``Precedence: bulk|list|junk``, ``X-Auto-Response-Suppress`` (OOF or All),
or flagged as spam; when none of the user's addresses is in
To/Cc/Bcc/Resent-To/Resent-Cc (a Bcc from a list, a forwarded copy); and when
that sender already got a reply within the period (``days``, 7 by default).

The settings are the user setting ``vacation``:
``{"enabled": bool, "body": str, "start": "YYYY-MM-DD" | null, "end": "YYYY-MM-DD" | null, "days": int}``,
changed with ``save_settings``.
"""

from __future__ import annotations

import re
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import compat32
from email.utils import format_datetime, formataddr, getaddresses, localtime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from . import models as m
from .addresses import normalise_address
from .errors import InvalidInputError
from .records import User

if TYPE_CHECKING:
    from .store import Store

KEY = "vacation"
DEFAULT_DAYS = 7
MAX_DAYS = 30
MAX_BODY = 10_000
HEADER_LIMIT = 256 * 1024
NEVER_LOCAL = re.compile(
    r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|noreply-.*|bounces?|bounce[-+].*|owner-.*|.*-owner|.*-request"
    r"|listserv|majordomo|mailman|.*-bounces?(\+.*)?)$",
    re.IGNORECASE,
)
RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


@dataclass(frozen=True)
class Reply:
    mail_from: str  # "" : send with the null sender
    recipient: str  # the original envelope sender
    message: bytes


@dataclass(frozen=True)
class Settings:
    enabled: bool = False
    body: str = ""
    start: str | None = None
    end: str | None = None
    days: int = DEFAULT_DAYS

    def active(self, today: date | None = None) -> bool:
        if not self.enabled or not self.body.strip():
            return False
        today = today or date.today()
        if self.start and today < date.fromisoformat(self.start):
            return False
        return not (self.end and today > date.fromisoformat(self.end))

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "body": self.body, "start": self.start, "end": self.end, "days": self.days}


def get_settings(user: User) -> Settings:
    raw = user.settings.get(KEY)
    if not isinstance(raw, dict):
        return Settings()
    try:
        return _clean(raw)
    except InvalidInputError:
        return Settings()


def _date(value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value).strip()[:10]).isoformat()
    except ValueError:
        raise InvalidInputError("invalid date {value!r}: use YYYY-MM-DD", value=str(value)[:20]) from None


def _clean(raw: dict[str, Any]) -> Settings:
    body = str(raw.get("body") or "").replace("\r\n", "\n")
    if len(body) > MAX_BODY:
        raise InvalidInputError("the auto-reply text is too long ({n} characters at most)", n=MAX_BODY)
    try:
        days = int(raw.get("days") or DEFAULT_DAYS)
    except (TypeError, ValueError):
        raise InvalidInputError("days between replies must be a whole number from 1 to {n}", n=MAX_DAYS) from None
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInputError("days between replies must be a whole number from 1 to {n}", n=MAX_DAYS)
    start, end = _date(raw.get("start")), _date(raw.get("end"))
    if start and end and end < start:
        raise InvalidInputError("the last day comes before the first day")
    enabled = bool(raw.get("enabled"))
    if enabled and not body.strip():
        raise InvalidInputError("write the auto-reply text before turning it on")
    return Settings(enabled, body, start, end, days)


def save_settings(store: Store, email: str, **values: Any) -> Settings:
    """Validate and store the user's vacation settings; changing them starts a new period for every sender."""
    s = _clean(values)
    user = store.directory.get_user(email)
    store.directory.set_user_setting(user.email, KEY, s.as_dict())
    with store.write() as c:
        c.execute(delete(m.vacation_replies).where(m.vacation_replies.c.user_id == user.id))
    return s


# ------------------------------------------------------------------ decision
def _headers(headers: Message | bytes | str) -> Message:
    if isinstance(headers, Message):
        return headers
    raw = headers.encode("utf-8", "replace") if isinstance(headers, str) else bytes(headers)
    raw = raw[:HEADER_LIMIT]
    end = re.search(rb"\r?\n\r?\n", raw)
    if end:
        raw = raw[: end.end()]
    return message_from_bytes(raw, policy=compat32)


def _value(msg: Message, name: str) -> str:
    v = msg.get(name)
    return "" if v is None else str(v).strip()


def _decoded(value: str) -> str:
    try:
        text = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        text = value
    return " ".join(text.split())


def is_automatic(msg: Message) -> bool:
    """Mail that must never get an auto-reply: automatic, list or bulk mail, spam."""
    auto = _value(msg, "Auto-Submitted").split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return True
    if any(msg.get(h) is not None for h in ("List-Id", "List-Unsubscribe", "List-Post")):
        return True
    if _value(msg, "Precedence").lower() in ("bulk", "list", "junk"):
        return True
    suppress = _value(msg, "X-Auto-Response-Suppress").lower()
    if "oof" in suppress or "all" in suppress:
        return True
    if _value(msg, "X-Spam-Flag").lower().startswith("yes") or _value(msg, "X-Spam-Status").lower().startswith("yes"):
        return True
    return False


def _addressed_to(msg: Message, mine: set[str]) -> str | None:
    values = []
    for h in RECIPIENT_HEADERS:
        values += [str(v) for v in (msg.get_all(h) or [])]
    for _name, addr in getaddresses(values):
        a = addr.strip().lower()
        if a in mine:
            return a
    return None


def should_reply(store: Store, user: User | str, sender: str, headers: Message | bytes | str, *,
                 now: float | None = None) -> Reply | None:
    """The auto-reply to send for this delivery, or None; see the module docstring. Blocking."""
    if isinstance(user, str):
        user = store.directory.get_user(user)
    settings = get_settings(user)
    now = time.time() if now is None else now
    if not settings.active(date.fromtimestamp(now)):
        return None
    s = (sender or "").strip()
    if s in ("", "<>"):
        return None
    try:
        s = normalise_address(s)
    except InvalidInputError:
        return None
    if NEVER_LOCAL.match(s.rsplit("@", 1)[0]):
        return None
    mine = store.directory.addresses_of(user.email)
    if s in mine:
        return None
    msg = _headers(headers)
    if is_automatic(msg):
        return None
    addressed = _addressed_to(msg, mine)
    if addressed is None:
        return None
    if not _claim(store, user.id, s, now, settings.days * 86400):
        return None
    return Reply("", s, build_reply(user, addressed, s, msg, settings.body, now=now))


def _claim(store: Store, user_id: int, sender: str, now: float, period: float) -> bool:
    """Record a reply to ``sender`` unless one was sent within ``period``; True if this caller may send."""
    t = m.vacation_replies
    with store.write() as c:
        last = c.execute(select(t.c.sent).where(t.c.user_id == user_id, t.c.sender == sender).with_for_update()).scalar()
        if last is not None and now - last < period:
            return False
        if last is None:
            c.execute(insert(t).values(user_id=user_id, sender=sender, sent=now))
        else:
            c.execute(update(t).where(t.c.user_id == user_id, t.c.sender == sender).values(sent=now))
    return True


def build_reply(user: User, from_addr: str, to_addr: str, original: Message, body: str, *, now: float | None = None) -> bytes:
    """An RFC 3834 reply: Auto-Submitted: auto-replied, In-Reply-To/References, Subject "Auto: ...".

    CRLF line ends and a 7-bit body (quoted-printable for non-ASCII text), as sent."""
    subject = _decoded(_value(original, "Subject"))[:200]
    msg = EmailMessage()
    msg["From"] = formataddr((user.name, from_addr)) if user.name else from_addr
    msg["To"] = to_addr
    msg["Subject"] = "Auto: " + subject if subject else "Auto: (no subject)"
    msg["Date"] = format_datetime(localtime(datetime.fromtimestamp(now if now is not None else time.time(), UTC)))
    msg["Message-ID"] = f"<{uuidlib.uuid4().hex}@{from_addr.rsplit('@', 1)[1]}>"
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg_id = " ".join(_value(original, "Message-ID").split())
    if re.fullmatch(r"<[^<>\s]{1,250}>", msg_id):
        msg["In-Reply-To"] = msg_id
        refs = re.findall(r"<[^<>\s]{1,250}>", _value(original, "References"))[-10:]
        msg["References"] = " ".join([*refs, msg_id])
    text = body.rstrip() + "\n"
    msg.set_content(text, charset="utf-8", cte=None if text.isascii() else "quoted-printable")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))  # CRLF: ready for SMTP and DKIM as it is


def prune(store: Store, older_than: float) -> int:
    """Forget replies sent before ``older_than`` (anything older than MAX_DAYS can go)."""
    with store.write() as c:
        return c.execute(delete(m.vacation_replies).where(m.vacation_replies.c.sent < older_than)).rowcount
