"""Licences: the request a customer sends, the file the vendor signs, its verification.

A request names the organisation, its domains, the number of mailboxes and
the host fingerprint (digests only). The vendor signs a licence from it with
an Ed25519 key (``appliance licence issue``); the appliance verifies it with
the public key built into ``installer/vendor_key.py``.

Verification gives a ``LicenceStatus``:

- ``invalid``: bad signature, damaged file, expired more than GRACE_DAYS ago,
  or two or more fingerprint components changed (another host). The
  appliance then falls back to the trial limits; mail keeps flowing.
- ``grace``: expired less than GRACE_DAYS ago: everything works, with a
  warning on every start and in ``appliance licence show``/``doctor``.
- ``valid``: possibly with warnings (expires within WARN_DAYS, one
  fingerprint component changed, a domain not covered, more mailboxes in use
  than licensed: then no new mailbox can be added, existing ones keep working).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from appliance.i18n import _

from .fingerprint import COMPONENTS, changed_components

REQUEST_TYPE = "appliance-licence-request"
LICENCE_TYPE = "appliance-licence"
GRACE_DAYS = 14
WARN_DAYS = 30
PUBKEY_ENV = "APPLIANCE_LICENCE_PUBKEY_FILE"
_SIGNING_CONTEXT = b"appliance-licence-v1\0"
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


class LicenceError(Exception):
    """A licence or request that cannot be used; ``str()`` is one line for the operator."""


# ---------------------------------------------------------------- documents


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _domains(values: Iterable[str]) -> list[str]:
    out = []
    for d in values:
        d = str(d).strip().rstrip(".").lower()
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            raise LicenceError(_("{domain!r} is not a domain name").format(domain=d)) from None
        if not _DOMAIN_RE.fullmatch(d):
            raise LicenceError(_("{domain!r} is not a domain name").format(domain=d))
        out.append(d)
    if not out:
        raise LicenceError(_("at least one domain is needed"))
    return sorted(set(out))


def _fingerprint(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != set(COMPONENTS) or not all(
            isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32}", v) for v in value.values()):
        raise LicenceError(_("the fingerprint must have the components {names}, each a 32-digit digest").format(
            names=", ".join(COMPONENTS)))
    return dict(value)


def make_request(*, organisation: str, domains: Iterable[str], mailboxes: int, fingerprint: Mapping[str, str],
                 hostname: str = "") -> dict[str, Any]:
    organisation = " ".join(str(organisation).split())
    if not organisation:
        raise LicenceError(_("the organisation name is empty"))
    if not isinstance(mailboxes, int) or mailboxes < 1:
        raise LicenceError(_("the number of mailboxes must be at least 1"))
    return {
        "type": REQUEST_TYPE,
        "version": 1,
        "organisation": organisation,
        "domains": _domains(domains),
        "mailboxes": mailboxes,
        "hostname": hostname,
        "fingerprint": _fingerprint(dict(fingerprint)),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _load_json(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise LicenceError(_("{what} is not valid JSON").format(what=what)) from None
    if not isinstance(data, dict):
        raise LicenceError(_("{what} is not valid JSON").format(what=what))
    return data


def read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LicenceError(_("cannot read {path}: {reason}").format(path=path, reason=exc.strerror or exc)) from None
    except UnicodeDecodeError:
        raise LicenceError(_("{path} is not a text file").format(path=path)) from None


def parse_request(text: str | bytes) -> dict[str, Any]:
    data = _load_json(text, _("the licence request"))
    if data.get("type") != REQUEST_TYPE or data.get("version") != 1:
        raise LicenceError(_("this is not a licence request (made by 'appliance licence request')"))
    mailboxes = data.get("mailboxes")
    if not isinstance(mailboxes, int) or isinstance(mailboxes, bool) or mailboxes < 1:
        raise LicenceError(_("the number of mailboxes must be at least 1"))
    return {**data, "domains": _domains(data.get("domains") or []), "fingerprint": _fingerprint(data.get("fingerprint"))}


@dataclass(frozen=True)
class Licence:
    id: str
    organisation: str
    domains: tuple[str, ...]
    mailboxes: int
    issued: datetime.date
    expires: datetime.date
    fingerprint: dict[str, str]
    hostname: str
    payload: dict[str, Any] = field(repr=False, compare=False)
    signature: bytes = field(repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "organisation": self.organisation, "domains": list(self.domains),
                "mailboxes": self.mailboxes, "issued": self.issued.isoformat(), "expires": self.expires.isoformat(),
                "hostname": self.hostname}


def _date(value: Any, key: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        raise LicenceError(_("the licence is damaged: {key} is missing or wrong").format(key=key)) from None


def parse_licence(text: str | bytes) -> Licence:
    """Parse a licence file; raises LicenceError for anything malformed (the signature is checked later)."""
    data = _load_json(text, _("the licence file"))
    if data.get("type") != LICENCE_TYPE or data.get("version") != 1 or not isinstance(data.get("licence"), dict):
        raise LicenceError(_("this is not a licence file (a licence request must first be signed by the vendor)"))
    p = data["licence"]
    try:
        signature = base64.b64decode(str(data.get("signature", "")), validate=True)
    except ValueError:
        signature = b""
    mailboxes = p.get("mailboxes")
    if not isinstance(mailboxes, int) or isinstance(mailboxes, bool) or mailboxes < 1:
        raise LicenceError(_("the licence is damaged: {key} is missing or wrong").format(key="mailboxes"))
    return Licence(
        id=str(p.get("id", "")),
        organisation=str(p.get("organisation", "")),
        domains=tuple(_domains(p.get("domains") or [])),
        mailboxes=mailboxes,
        issued=_date(p.get("issued"), "issued"),
        expires=_date(p.get("expires"), "expires"),
        fingerprint=_fingerprint(p.get("fingerprint")),
        hostname=str(p.get("hostname", "")),
        payload=p,
        signature=signature,
    )


# ---------------------------------------------------------------- keys


def generate_signing_key(path: str | os.PathLike[str]) -> str:
    """Write a new vendor signing key (PEM, 0600, never overwritten); return its public key, base64."""
    from appliance.keys import write_secret_file

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        write_secret_file(path, pem)
    except FileExistsError:
        raise LicenceError(_("{path} already exists; refusing to overwrite a signing key").format(path=path)) from None
    return public_key_text(key.public_key())


def public_key_text(key: ed25519.Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def load_signing_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    data = read_text(path).strip().encode()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data, validate=True))
    except (ValueError, TypeError):
        raise LicenceError(_("{path} is not an Ed25519 signing key").format(path=path)) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise LicenceError(_("{path} is not an Ed25519 signing key").format(path=path))
    return key


def _public_key_from(data: bytes, where: str) -> ed25519.Ed25519PublicKey:
    data = data.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if isinstance(key, ed25519.Ed25519PublicKey):
                return key
            raise ValueError
        return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(data, validate=True))
    except (ValueError, TypeError):
        raise LicenceError(_("{path} is not an Ed25519 public key").format(path=where)) from None


def vendor_public_key(override: ed25519.Ed25519PublicKey | str | os.PathLike[str] | None = None) -> ed25519.Ed25519PublicKey:
    """The key licences are checked with: ``override`` (a key or a file), else $APPLIANCE_LICENCE_PUBKEY_FILE
    (set only by tests), else the vendor key built into installer/vendor_key.py."""
    if isinstance(override, ed25519.Ed25519PublicKey):
        return override
    path = override or os.environ.get(PUBKEY_ENV)
    if path:
        return _public_key_from(read_text(path).encode(), str(path))
    from .vendor_key import VENDOR_PUBLIC_KEY

    return _public_key_from(VENDOR_PUBLIC_KEY.encode(), "installer/vendor_key.py")


def issue(request: Mapping[str, Any], key: ed25519.Ed25519PrivateKey, *, days: int = 365, mailboxes: int | None = None,
          today: datetime.date | None = None) -> dict[str, Any]:
    """The vendor side: a signed licence document from a parsed request."""
    if days < 1:
        raise LicenceError(_("the licence must last at least one day"))
    today = today or _today()
    payload = {
        "id": f"L-{today:%Y%m%d}-{secrets.token_hex(4)}",
        "organisation": request["organisation"],
        "domains": list(request["domains"]),
        "mailboxes": int(mailboxes or request["mailboxes"]),
        "issued": today.isoformat(),
        "expires": (today + datetime.timedelta(days=days)).isoformat(),
        "fingerprint": dict(request["fingerprint"]),
        "hostname": request.get("hostname", ""),
    }
    signature = key.sign(_SIGNING_CONTEXT + canonical(payload))
    return {"type": LICENCE_TYPE, "version": 1, "licence": payload, "signature": base64.b64encode(signature).decode()}


# ---------------------------------------------------------------- verification


@dataclass
class LicenceStatus:
    licence: Licence
    state: str  # "valid", "grace" or "invalid"
    problems: list[str] = field(default_factory=list)  # why it is invalid
    warnings: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # fingerprint components that differ
    days_left: int = 0  # until the expiry date; negative once expired
    uncovered: list[str] = field(default_factory=list)  # domains in use the licence does not name

    @property
    def usable(self) -> bool:
        return self.state != "invalid"

    def covers(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.licence.domains

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "problems": self.problems, "warnings": self.warnings, "changed": self.changed,
                "days_left": self.days_left, "uncovered": self.uncovered, "licence": self.licence.summary()}


def check_licence(
    lic: Licence,
    *,
    public_key: ed25519.Ed25519PublicKey | str | os.PathLike[str] | None = None,
    fingerprint: Mapping[str, str] | None = None,
    domains: Iterable[str] = (),
    active_mailboxes: int | None = None,
    today: datetime.date | None = None,
) -> LicenceStatus:
    """Verify ``lic`` on this host now. ``fingerprint`` defaults to the host's own."""
    if fingerprint is None:
        from .fingerprint import host_fingerprint

        fingerprint = host_fingerprint().components
    today = today or _today()
    st = LicenceStatus(lic, "valid", days_left=(lic.expires - today).days)
    try:
        vendor_public_key(public_key).verify(lic.signature, _SIGNING_CONTEXT + canonical(lic.payload))
    except InvalidSignature:
        st.problems.append(_("its signature does not verify: it was not issued by the vendor, or it was altered"))
    end_of_grace = lic.expires + datetime.timedelta(days=GRACE_DAYS)
    if today > end_of_grace:
        st.problems.append(_("it expired on {date} and the {days}-day grace period ended on {end}").format(
            date=lic.expires, days=GRACE_DAYS, end=end_of_grace))
    elif today > lic.expires:
        st.state = "grace"
        st.warnings.append(_("it expired on {date}; {left} days of grace remain until {end}: renew it now").format(
            date=lic.expires, left=(end_of_grace - today).days, end=end_of_grace))
    elif st.days_left <= WARN_DAYS:
        st.warnings.append(_("it expires on {date}, in {days} days: ask the vendor for a renewal").format(
            date=lic.expires, days=st.days_left))
    st.changed = changed_components(lic.fingerprint, fingerprint)
    if len(st.changed) >= 2:
        st.problems.append(_("it was issued for another host: {n} of {total} hardware components differ ({names}); "
                             "send a new 'appliance licence request' to the vendor").format(
            n=len(st.changed), total=len(COMPONENTS), names=", ".join(st.changed)))
    elif st.changed:
        st.warnings.append(_("one hardware component changed since it was issued ({name}); it still holds, "
                             "but another change would invalidate it: ask for a re-issued licence").format(name=st.changed[0]))
    st.uncovered = [d for d in sorted({x.lower() for x in domains}) if d not in lic.domains]
    for d in st.uncovered:
        st.warnings.append(_("domain {domain} is not covered by the licence: no new mailboxes can be added there").format(domain=d))
    if active_mailboxes is not None and active_mailboxes > lic.mailboxes:
        st.warnings.append(_("{n} active mailboxes, the licence allows {allowed}: no new mailboxes can be added; "
                             "existing mail keeps flowing").format(n=active_mailboxes, allowed=lic.mailboxes))
    if st.problems:
        st.state = "invalid"
    return st
