"""The DNS records a domain publishes for this appliance, and checking them.

MX, A/AAAA, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, the RFC 6186/8314 SRV
records that let mail clients configure themselves, and the autoconfig /
autodiscover names. The installer prints and saves them
(``/var/lib/appliance/dns-records.txt``, zone-file syntax); ``appliance
doctor`` looks each up with the configured resolver (``[dns]``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from appliance.i18n import _

from .checks import BufferedOutput

# protocol -> SRV service names, for the listeners an install configures
_SRV = {"submission": ("_submission._tcp", 587), "submissions": ("_submissions._tcp", 465), "imap": ("_imap._tcp", 143),
        "imaps": ("_imaps._tcp", 993), "pop3": ("_pop3._tcp", 110), "pop3s": ("_pop3s._tcp", 995)}


@dataclass(frozen=True)
class DnsRecord:
    name: str  # absolute, with the final dot
    type: str
    value: str  # as in a zone file (TXT values quoted and split into <=255-byte strings)
    purpose: str
    required: bool = True  # doctor: error if wrong (else a warning)


@dataclass(frozen=True)
class DkimKeyInfo:
    selector: str
    algorithm: str
    txt: str


def dkim_keys(keys_dir: Path, domain: str) -> list[DkimKeyInfo]:
    """The DKIM keys in ``<keys_dir>/dkim/<domain>.<selector>.<algorithm>.key`` with their TXT values."""
    out = []
    directory = Path(keys_dir) / "dkim"
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob(f"{domain}.*.key")):
        selector, _dot, algorithm = path.name[len(domain) + 1 : -4].rpartition(".")
        try:
            data = path.read_bytes()
            if algorithm == "ed25519":
                key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip()))
                pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            elif algorithm == "rsa":
                # our own key, only its public half is wanted: skip the slow consistency checks
                rsa_key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
                pub = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            else:
                continue
        except (OSError, ValueError, TypeError):
            continue
        out.append(DkimKeyInfo(selector, algorithm, f"v=DKIM1; k={algorithm}; p={base64.b64encode(pub).decode()}"))
    return out


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def mta_sts_policy(hostname: str) -> str:
    return f"version: STSv1\nmode: testing\nmx: {hostname}\nmax_age: 86400\n"


def expected_records(domain: str, hostname: str, *, ipv4: Iterable[str] = (), ipv6: Iterable[str] = (),
                     dkim: Iterable[DkimKeyInfo] = (), services: Iterable[str] = tuple(_SRV)) -> list[DnsRecord]:
    d, h = f"{domain}.", f"{hostname}."
    out = [DnsRecord(d, "MX", f"10 {h}", "MX")]
    ipv4 = list(ipv4) or [_("<public IPv4 address of this server>")]
    out += [DnsRecord(h, "A", a, "A") for a in ipv4]
    out += [DnsRecord(h, "AAAA", a, "AAAA", required=False) for a in ipv6]
    out.append(DnsRecord(d, "TXT", _txt("v=spf1 mx -all"), "SPF"))
    for k in dkim:
        out.append(DnsRecord(f"{k.selector}._domainkey.{d}", "TXT", _txt(k.txt), f"DKIM ({k.algorithm})"))
    out.append(DnsRecord(f"_dmarc.{d}", "TXT", _txt(f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"), "DMARC"))
    sts_id = hashlib.sha256(mta_sts_policy(hostname).encode()).hexdigest()[:16]
    out.append(DnsRecord(f"_mta-sts.{d}", "TXT", _txt(f"v=STSv1; id={sts_id}"), "MTA-STS", required=False))
    out.append(DnsRecord(f"mta-sts.{d}", "CNAME", h, "MTA-STS policy host", required=False))
    out.append(DnsRecord(f"_smtp._tls.{d}", "TXT", _txt(f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"), "TLS-RPT", required=False))
    for name in services:
        if name in _SRV:
            srv, port = _SRV[name]
            out.append(DnsRecord(f"{srv}.{d}", "SRV", f"0 1 {port} {h}", "SRV (RFC 6186)", required=False))
    out.append(DnsRecord(f"autoconfig.{d}", "CNAME", h, "autoconfig (Thunderbird)", required=False))
    out.append(DnsRecord(f"autodiscover.{d}", "CNAME", h, "autodiscover (Outlook)", required=False))
    out.append(DnsRecord(f"_autodiscover._tcp.{d}", "SRV", f"0 1 443 {h}", "autodiscover (Outlook)", required=False))
    return out


def zone_text(records: list[DnsRecord], *, hostname: str, addresses: Iterable[str] = ()) -> str:
    lines = [_("; DNS records to publish for this mail appliance (zone-file syntax)."),
             _("; After publishing them, run: appliance doctor")]
    width = max(len(r.name) for r in records) if records else 0
    for r in records:
        lines.append(f"{r.name:<{width}}  3600  IN  {r.type:<5}  {r.value}  ; {r.purpose}")
    for a in addresses:
        lines.append(_("; reverse DNS (ask whoever runs the address): {address} PTR {hostname}.").format(address=a, hostname=hostname))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- checking with a resolver

Lookup = Callable[[str, str], list[str] | None]  # (name, type) -> values; [] = no such record; None = resolver failed


def make_lookup(resolvers: Iterable[str] = (), port: int = 53, timeout: float = 5.0) -> Lookup:
    import dns.exception
    import dns.resolver

    resolvers = list(resolvers)
    r = dns.resolver.Resolver(configure=not resolvers)
    if resolvers:
        r.nameservers = resolvers
    r.port = port
    r.lifetime = timeout
    r.timeout = timeout

    def lookup(name: str, rtype: str) -> list[str] | None:
        try:
            answer = r.resolve(name, rtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError):
            return None
        out = []
        for rr in answer.rrset or []:
            if rtype == "TXT":
                out.append(b"".join(rr.strings).decode("utf-8", "replace"))
            else:
                out.append(rr.to_text())
        return out

    return lookup


def _unquote(value: str) -> str:
    return "".join(part.strip('"') for part in value.split('" "'))


def _matches(rec: DnsRecord, found: list[str]) -> bool:
    norm = [" ".join(f.lower().rstrip(".").split()) for f in found]
    want = rec.value.lower().rstrip(".")
    if rec.type == "TXT":
        want = _unquote(rec.value)
        if rec.purpose == "SPF":
            return any(f.startswith("v=spf1") for f in found)
        if rec.purpose == "DMARC":
            return any(f.startswith("v=DMARC1") for f in found)
        if rec.purpose in ("MTA-STS", "TLS-RPT"):
            return any(f.split(";")[0].strip() == want.split(";")[0] for f in found)
        return any("".join(f.split()) == "".join(want.split()) for f in found)
    if rec.type == "MX":  # any preference, same exchange
        return any(f.split()[-1:] == want.split()[-1:] for f in norm)
    if rec.type == "SRV":  # any priority and weight, same port and target
        return any(f.split()[-2:] == want.split()[-2:] for f in norm)
    return want in norm


def check_records(records: list[DnsRecord], lookup: Lookup, out: BufferedOutput) -> None:
    """One finding per record: ok, or what is published instead and what to publish.

    Several A (AAAA) records of one name are one check: any of the addresses will do.
    """
    addresses: dict[tuple[str, str], set[str]] = {}
    for rec in records:
        if rec.type in ("A", "AAAA"):
            addresses.setdefault((rec.name, rec.type), set()).add(rec.value)
    seen: set[tuple[str, str]] = set()
    for rec in records:
        what = f"{rec.purpose}: {rec.name} {rec.type}"
        if rec.type in ("A", "AAAA"):
            if (rec.name, rec.type) in seen:
                continue
            seen.add((rec.name, rec.type))
            found = lookup(rec.name, rec.type)
            if found and set(found) & addresses[(rec.name, rec.type)]:
                out.print_ok(what, check="dns")
                continue
        else:
            found = lookup(rec.name, rec.type)
        if found == [] and rec.type == "CNAME":
            if lookup(rec.name, "A"):
                out.print_ok(_("{what} (published as an address)").format(what=what), check="dns")
                continue
        if found is None:
            out.print_error(_("{what}: the resolver did not answer").format(what=what),
                            _("check [dns] resolvers in appliance.toml and that the resolver runs"), check="dns")
            continue
        if found and _matches(rec, found):
            out.print_ok(what, check="dns")
            continue
        if found and rec.type in ("A", "AAAA"):
            out.print_warning(_("{what}: points to {found}, not to an address of this host (fine behind NAT or a port forward)")
                              .format(what=what, found=", ".join(found)), _("check that {found} reaches this host").format(found=", ".join(found)), check="dns")
            continue
        fix = _("publish: {name} {type} {value}").format(name=rec.name, type=rec.type, value=rec.value)
        if found:
            message = _("{what}: published as {found}, expected {value}").format(what=what, found="; ".join(found)[:200], value=rec.value[:200])
        else:
            message = _("{what}: not published").format(what=what)
        (out.print_error if rec.required else out.print_warning)(message, fix, check="dns")


@dataclass(frozen=True)
class RecordCheck:
    """The live state of one record: "ok", "missing", "different" (``found`` says what) or "no-answer"."""

    record: DnsRecord
    status: str
    found: tuple[str, ...] = ()


def check_record(rec: DnsRecord, lookup: Lookup, addresses: Iterable[str] = ()) -> RecordCheck:
    """One record against the live DNS, judged as ``check_records`` judges it (the panel's per-record status).

    For A and AAAA records any of ``addresses`` (default: the record's own value) will do.
    """
    found = lookup(rec.name, rec.type)
    if found is None:
        return RecordCheck(rec, "no-answer")
    if rec.type in ("A", "AAAA"):
        ok = bool(set(found) & (set(addresses) or {rec.value}))
    elif found == [] and rec.type == "CNAME":
        as_address = lookup(rec.name, "A")
        if as_address:
            return RecordCheck(rec, "ok", tuple(as_address))
        ok = False
    else:
        ok = bool(found) and _matches(rec, found)
    if ok:
        return RecordCheck(rec, "ok", tuple(found))
    return RecordCheck(rec, "different" if found else "missing", tuple(found))
