"""Delivery status notifications (RFC 3464): bounces and delay notices.

``build_dsn`` makes a ``multipart/report; report-type=delivery-status``
message: a human-readable part in the instance's language, the
``message/delivery-status`` part with one block per recipient (Action,
Status, Remote-MTA and the remote server's reply as Diagnostic-Code), and
the original message (``message/rfc822``, or only its header as
``text/rfc822-headers`` for delay notices and messages over 1 MB).

The caller (mta/outbound.py) never sends one to the null sender, so a
bounce is never bounced; a DSN itself always has the null sender.
"""

from __future__ import annotations

import base64
import email.utils
import secrets
import time
from dataclasses import dataclass
from email.header import Header

from appliance.i18n import _

from . import headers as hdrs
from . import i18n_zh  # noqa: F401 - Chinese DSN texts

FULL_ORIGINAL_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str
    action: str  # failed | delayed
    status: str  # RFC 3463, e.g. 5.1.1
    reason: str  # for people: the remote reply, or what went wrong here
    remote_mta: str | None = None  # host name of the server that answered
    diagnostic: str | None = None  # the remote SMTP reply, "550 5.1.1 ..."
    last_attempt: float | None = None


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=True)


def _encode_header(text: str) -> str:
    return text if text.isascii() else Header(text, "utf-8").encode()


def human_text(statuses: list[RecipientStatus], *, hostname: str, delayed: bool, retry_until: float | None) -> str:
    lines = [_("This is the mail system at {hostname}.").format(hostname=hostname), ""]
    if delayed:
        lines.append(_("Your message could not be delivered yet to the recipients below. "
                       "It stays in the queue and delivery will be tried again until {until}; "
                       "you do not need to send it again.").format(until=_date(retry_until or time.time())))
    else:
        lines.append(_("Your message could not be delivered to the recipients below. "
                       "This is a permanent error; the message is attached."))
    lines.append("")
    for s in statuses:
        lines.append(f"<{s.recipient}>: {s.reason}")
    lines.append("")
    return "\r\n".join(lines)


def build_dsn(*, hostname: str, queue_id: str, sender: str, original: bytes, arrival: float,
              statuses: list[RecipientStatus], delayed: bool = False, retry_until: float | None = None,
              now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    subject = _("Delayed Mail (still being retried)") if delayed else _("Undelivered Mail Returned to Sender")
    original_ids = hdrs.field_values(original, "message-id")
    head = [
        f"From: {_encode_header(_('Mail Delivery System'))} <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {_encode_header(subject)}",
        f"Date: {_date(now)}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(4)}.dsn@{hostname}>",
    ]
    if original_ids:
        head += [f"In-Reply-To: {_ascii(original_ids[0])}", f"References: {_ascii(original_ids[0])}"]
    head += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    text = human_text(statuses, hostname=hostname, delayed=delayed, retry_until=retry_until)
    if text.isascii():
        part1 = ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit", "", text]
    else:
        encoded = base64.encodebytes(text.encode("utf-8")).decode().replace("\n", "\r\n")
        part1 = ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", "", encoded]
    report = [f"Reporting-MTA: dns; {hostname}", f"X-Queue-ID: {queue_id}", f"Arrival-Date: {_date(arrival)}"]
    for s in statuses:
        report += ["", f"Final-Recipient: rfc822; {_ascii(s.recipient)}", f"Action: {s.action}", f"Status: {s.status}"]
        if s.remote_mta:
            report.append(f"Remote-MTA: dns; {_ascii(s.remote_mta)}")
        if s.diagnostic:
            report.append(f"Diagnostic-Code: smtp; {_ascii(s.diagnostic)[:900]}")
        if s.last_attempt:
            report.append(f"Last-Attempt-Date: {_date(s.last_attempt)}")
        if delayed and retry_until:
            report.append(f"Will-Retry-Until: {_date(retry_until)}")
    if delayed or len(original) > FULL_ORIGINAL_LIMIT:
        end = hdrs.header_end(original)
        part3_head = ["Content-Type: text/rfc822-headers"]
        body3 = original[:end]
    else:
        part3_head = ["Content-Type: message/rfc822"]
        body3 = original
    if not body3.isascii():
        part3_head.append("Content-Transfer-Encoding: 8bit")
    out = "\r\n".join(head).encode() + b"\r\n\r\n"
    out += b"This is a MIME-encapsulated message.\r\n\r\n"
    out += f"--{boundary}\r\n".encode() + "\r\n".join(part1).encode() + b"\r\n"
    out += f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n".encode()
    out += "\r\n".join(report).encode() + b"\r\n\r\n"
    out += f"--{boundary}\r\n".encode() + "\r\n".join(part3_head).encode() + b"\r\n\r\n"
    out += body3 if body3.endswith(b"\r\n") else body3 + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out
