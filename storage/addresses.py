"""Address and name validation shared by the directory and the protocols."""

from __future__ import annotations

import re

from .errors import InvalidInputError

_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(domain: str) -> str:
    """Lower-case, IDNA-encode and validate a domain name."""
    d = (domain or "").strip().rstrip(".")
    if not d:
        raise InvalidInputError("empty domain name")
    try:
        d = d.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidInputError("invalid domain name {domain!r}", domain=domain) from exc
    if len(d) > 253 or "." not in d:
        raise InvalidInputError("invalid domain name {domain!r}", domain=domain)
    if not all(_LABEL_RE.match(label) for label in d.split(".")):
        raise InvalidInputError("invalid domain name {domain!r}", domain=domain)
    return d


def normalise_address(address: str) -> str:
    """Validate ``local@domain`` and return it in canonical (lower-case) form.

    Local parts are matched case-insensitively, as users of every common
    mail server expect. Quoted local parts and source routes are refused.
    """
    a = (address or "").strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    if a.count("@") != 1:
        raise InvalidInputError("invalid address {address!r}", address=address)
    local, domain = a.rsplit("@", 1)
    if not local or len(local) > 64 or not _LOCAL_RE.match(local):
        if not _is_utf8_local(local):
            raise InvalidInputError("invalid address {address!r}", address=address)
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidInputError("invalid address {address!r}", address=address)
    return f"{local.lower()}@{normalise_domain(domain)}"


def _is_utf8_local(local: str) -> bool:
    """SMTPUTF8 local parts: printable non-ASCII allowed, no specials or controls."""
    if not local or len(local.encode()) > 64:
        return False
    return all((ord(c) > 127 and c.isprintable()) or _LOCAL_RE.match(c) for c in local)


def split_address(address: str) -> tuple[str, str]:
    local, domain = address.rsplit("@", 1)
    return local, domain


_MAILBOX_BAD = re.compile(r"[\x00-\x1f\x7f]")


def validate_mailbox_name(name: str, *, max_length: int = 500, max_depth: int = 32) -> str:
    """Refuse control characters, path tricks and empty hierarchy levels."""
    if not name or len(name) > max_length:
        raise InvalidInputError("mailbox name is empty or too long")
    if _MAILBOX_BAD.search(name):
        raise InvalidInputError("mailbox name contains control characters")
    parts = name.split("/")
    if len(parts) > max_depth:
        raise InvalidInputError("mailbox name is nested too deeply")
    for part in parts:
        if part in ("", ".", "..") or part.strip() != part or "*" in part or "%" in part:
            raise InvalidInputError("invalid mailbox name {name!r}", name=name)
    if name.upper() == "INBOX":
        return "INBOX"
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return "/".join(parts)
