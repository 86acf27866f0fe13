"""SMTP replies, each with its RFC 3463 enhanced status code.

Our own replies are constants here (``R.RCPT_UNKNOWN``...), so a reply's
code, enhanced code and text are chosen in one place and tests can match
them. ``add_enhanced_code`` gives aiosmtpd's stock replies (``250 OK``,
``503 Error: need MAIL command``...) the code they lack, so that every
2xx/4xx/5xx reply we send carries one (RFC 2034 exempts only the greeting
and the EHLO/HELO answer).
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# aiosmtpd 1.4.6 texts that deserve a better code or text than the default
_STOCK = {
    "500 Command line too long": "500 5.5.2 Line too long",
    "552 Error: message size exceeds fixed maximum message size": "552 5.3.4 Message size exceeds fixed maximum message size",
    "554 Command refused due to lack of security": "554 5.7.0 Command refused: TLS handshake failed",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "454 TLS not available": "454 4.7.0 TLS not available",
    "252 Cannot VRFY user, but will accept message and attempt delivery": "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery",
}

_DEFAULT_BY_CODE = {
    "421": "4.3.2",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}


def add_enhanced_code(status: str) -> str:
    """``"503 Error: need MAIL command"`` -> ``"503 5.5.1 Error: need MAIL command"``.

    Replies that already carry a code, 3xx replies and anything not shaped
    like a reply are returned unchanged.
    """
    if len(status) < 4 or not status[:3].isdigit() or status[0] not in "245" or _HAS_ENHANCED.match(status):
        return status
    fixed = _STOCK.get(status)
    if fixed:
        return fixed
    code, sep, text = status[:3], status[3:4], status[4:]
    enhanced = _DEFAULT_BY_CODE.get(code) or f"{code[0]}.0.0"
    if "not recognized" in text:
        enhanced = "5.5.1"
    return f"{code}{sep}{enhanced} {text}".rstrip()


def reply_code(status: str) -> int:
    try:
        return int(status[:3])
    except ValueError:
        return 0


class R:
    """Every reply the MTA itself sends."""

    # connection
    TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address; try again later"
    TOO_MANY_ERRORS = "421 4.7.0 Too many errors; closing connection"
    TIMEOUT = "421 4.4.2 Idle timeout; closing connection"
    SHUTDOWN = "421 4.3.2 Service shutting down; try again later"
    INTERNAL = "451 4.3.0 Internal error; try again later"
    TEMP_STORE = "451 4.3.0 Mail store temporarily unavailable; try again later"

    # AUTH
    AUTH_OK = "235 2.7.0 Authentication successful"
    AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
    AUTH_DISABLED = "535 5.7.8 Authentication failed: account disabled"
    AUTH_LOCKED = "454 4.7.0 Too many failed logins for this account; try again later"
    AUTH_IP_BLOCKED = "454 4.7.0 Too many failed logins from your address; try again later"
    AUTH_NOT_HERE = "503 5.5.1 AUTH not available on this port; use submission (port 587 or 465)"
    AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
    AUTH_BAD_PLAIN = "501 5.5.2 Cannot split AUTH PLAIN value"
    #: why an authenticated session's credentials no longer hold (storage.auth.Authenticator.session_check)
    AUTH_REVOKED = {
        "password_changed": "535 5.7.8 Authentication credentials revoked: the password of this account was changed; "
                            "log in with the new one",
        "app_password_revoked": "535 5.7.8 Authentication credentials revoked: the app password of this session was revoked",
        "app_password_required": "530 5.7.0 Authentication credentials revoked: this account now requires an app password",
        "disabled": "535 5.7.8 Authentication credentials revoked: this account is disabled; contact your administrator",
        "deleted": "535 5.7.8 Authentication credentials revoked: this account no longer exists",
        "ended": "530 5.7.0 Authentication credentials revoked: your sessions were ended from the security settings; "
                 "log in again",
    }
    AUTH_REVOKED_CLOSE = "421 4.7.0 Credentials revoked; closing connection"

    # MAIL
    MAIL_OK = "250 2.1.0 Sender OK"
    MAIL_BAD_ADDRESS = "553 5.1.7 Bad sender address syntax"
    MAIL_NOT_YOURS = "553 5.7.1 Sender address rejected: not owned by the authenticated user"
    MAIL_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"

    # RCPT
    RCPT_OK = "250 2.1.5 Recipient OK"
    RCPT_BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
    RCPT_UNKNOWN = "550 5.1.1 Recipient address rejected: no such user here"
    RCPT_DISABLED = "550 5.2.1 Recipient address rejected: mailbox disabled"
    RCPT_FULL = "452 4.2.2 Recipient mailbox is full; try again later"
    RCPT_WONT_FIT = "552 5.2.2 Recipient mailbox has no room for a message of the declared size"
    RCPT_TOO_MANY = "452 4.5.3 Too many recipients"
    RCPT_RELAY_DENIED = "554 5.7.1 Relay access denied"
    RCPT_GROUP_MEMBERS = "550 5.7.1 Only members of this group may post to it"
    RCPT_GROUP_DOMAIN = "550 5.7.1 Only senders of this group's domain may post to it"
    RCPT_NO_MEMBERS = "550 5.1.1 Recipient address rejected: group has no deliverable members"

    # DATA
    DATA_TOO_BIG = "552 5.3.4 Message too big"
    DATA_HEADER_TOO_BIG = "552 5.3.4 Message header too large"
    DATA_LINE_TOO_LONG = "500 5.5.2 Line too long"
    DATA_BARE_CR = "550 5.6.11 Message contains a bare CR; lines must end with CRLF"
    DATA_FROM_NOT_YOURS = "550 5.7.1 From: header rejected: not an address of the authenticated user"
    DATA_NO_FROM = "550 5.6.0 Message has no valid From: header"
    DATA_DMARC_REJECT = "550 5.7.1 Rejected by the sender domain's DMARC policy"
    DATA_FULL = "452 4.2.2 Recipient mailbox is full; try again later"


def with_text(status: str, extra: str) -> str:
    """Append detail to a reply: ``with_text(R.DATA_TOO_BIG, "limit 25 MB")``."""
    return f"{status} ({extra})"
