"""Inbound mail authentication on port 25: SPF, DKIM and DMARC.

``MailAuth.check`` is blocking (DNS lookups, RSA verification): run it in the
executor. It returns the ``Authentication-Results`` field for our host name
(RFC 8601) and the DMARC verdict.

Fixes to the libraries (see ../shared/NOTES.md):

* unsigned mail is ``dkim=none`` (authheaders says ``fail``);
* ``get_org_domain`` parses the public-suffix list once, not four times per
  message, and remembers answers;
* every library resolves through ``dns.resolver.default_resolver``, which
  ``configure_dns`` points at the configured resolvers (with a cache); pyspf's
  lookup uses ``resolve`` instead of the deprecated ``query``.
"""

from __future__ import annotations

import functools
import importlib.resources
import threading
import time
from dataclasses import dataclass

import authheaders
import authheaders.dmarc_lookup as dmarc_lookup
import dkim
import dns.exception
import dns.resolver
import spf
from authres import AuthenticationResultsHeader, DKIMAuthenticationResult, SPFAuthenticationResult
from authres.dmarc import DMARCAuthenticationResult
from publicsuffix2 import PublicSuffixList

from .headers import from_addresses

# ----------------------------------------------------------------- DNS


def configure_dns(resolvers: tuple[str, ...] | list[str], *, port: int = 53, timeout: float = 5.0) -> dns.resolver.Resolver:
    """Make ``resolvers`` (IPs; empty = /etc/resolv.conf) the process-wide default resolver, with a cache."""
    r = dns.resolver.Resolver(configure=not resolvers)
    if resolvers:
        r.nameservers = list(resolvers)
        r.port = port
    r.timeout = timeout
    r.lifetime = timeout
    r.cache = dns.resolver.LRUCache(20_000)
    dns.resolver.default_resolver = r
    return r


def _spf_lookup(name: str, qtype: str, tcpfallback: bool = True, timeout: float = 30) -> list:
    """pyspf's DNSLookup_dnspython over ``resolve`` (not the deprecated ``query``)."""
    out: list = []
    try:
        answers = dns.resolver.resolve(name, qtype, lifetime=min(timeout, dns.resolver.get_default_resolver().lifetime))
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return out
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise spf.TempError(f"DNS {exc}") from None
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), rdata.strings))
    return out


_psl_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    with _psl_lock:  # one parse when the warm-up thread and a first check race
        return _parse_psl()


@functools.lru_cache(maxsize=1)
def _parse_psl() -> PublicSuffixList:
    ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
    with importlib.resources.as_file(ref) as location, open(location, encoding="utf-8") as f:
        return PublicSuffixList(f)


@functools.lru_cache(maxsize=65_536)
def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 3.2), from the public-suffix list parsed once.

    publicsuffix2 answers the bare TLD for a TLD missing from the list
    (.example, .test, .internal); the list's default rule "*" makes the TLD
    the public suffix, so the organisational domain has one label more.
    """
    domain = domain.lower().rstrip(".")
    org = _psl().get_public_suffix(domain)
    labels = domain.split(".")
    if org == labels[-1] and len(labels) > 1:
        return ".".join(labels[-2:])
    return org


_receiver_record = dmarc_lookup.receiver_record
_dmarc_cache: dict[str, tuple[float, tuple]] = {}
DMARC_CACHE_TTL = 60.0


def _cached_receiver_record(host: str, dnsfunc: object = None) -> tuple:
    """authheaders' DMARC record lookup (two TXT queries per message), remembered for a minute per domain."""
    if dnsfunc is not None:
        return _receiver_record(host, dnsfunc=dnsfunc)
    now = time.monotonic()
    hit = _dmarc_cache.get(host)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = _receiver_record(host)  # DNS errors propagate (temperror) and are not cached
    if len(_dmarc_cache) > 50_000:
        _dmarc_cache.clear()
    _dmarc_cache[host] = (now + DMARC_CACHE_TTL, value)
    return value


_patched = False


def patch_libraries() -> None:
    global _patched
    if _patched:
        return
    spf.DNSLookup = _spf_lookup
    dmarc_lookup.get_org_domain = org_domain
    authheaders.get_org_domain = org_domain
    authheaders.receiver_record = _cached_receiver_record
    _patched = True


# ---------------------------------------------------------- the checks


@dataclass(frozen=True)
class AuthVerdict:
    header: str  # "Authentication-Results: host; spf=...", no line end
    spf: str
    dkim: str
    dmarc: str
    dmarc_policy: str | None = None
    from_domain: str | None = None

    @property
    def dmarc_reject(self) -> bool:
        return self.dmarc == "fail" and self.dmarc_policy == "reject"


def _has_dkim_signature(raw: bytes) -> bool:
    end = raw.find(b"\r\n\r\n")
    head = raw[: end if end >= 0 else len(raw)].lower()
    return head.startswith(b"dkim-signature:") or b"\ndkim-signature:" in head


def _fold(header: str, width: int = 78) -> str:
    """Fold ``name: a; b; c`` after semicolons so long results stay under ~78 columns."""
    if len(header) <= width:
        return header
    parts = header.split("; ")
    lines, cur = [], parts[0]
    for p in parts[1:]:
        if len(cur) + 2 + len(p) > width:
            lines.append(cur + ";")
            cur = "\t" + p
        else:
            cur += "; " + p
    lines.append(cur)
    return "\r\n".join(lines)


class MailAuth:
    def __init__(self, authserv_id: str, *, spf_cache_ttl: float = 60.0) -> None:
        patch_libraries()
        # the public-suffix list takes about a second of CPU to parse: do it now, off the event
        # loop, rather than in the first DMARC check of a (re)started worker
        threading.Thread(target=_psl, name="psl-load", daemon=True).start()
        self.authserv_id = authserv_id
        self._spf_ttl = spf_cache_ttl
        self._spf_cache: dict[tuple[str, str, str], tuple[float, tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def _spf(self, ip: str, mail_from: str, helo: str) -> tuple[str, str]:
        domain = mail_from.rpartition("@")[2].lower()
        key = (ip, domain, helo.lower())
        now = time.monotonic()
        hit = self._spf_cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        try:
            result, reason = spf.check2(i=ip, s=mail_from, h=helo)
        except Exception as exc:  # noqa: BLE001 - a library bug must not lose mail
            result, reason = "temperror", str(exc)
        value = (result or "none", reason or "")
        with self._lock:
            if len(self._spf_cache) > 50_000:
                self._spf_cache.clear()
            self._spf_cache[key] = (now + self._spf_ttl, value)
        return value

    def _dkim(self, raw: bytes) -> list[DKIMAuthenticationResult]:
        if not _has_dkim_signature(raw):
            return [DKIMAuthenticationResult(result="none")]
        out = []
        try:
            d = dkim.DKIM(raw)
            n = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
        except Exception:  # noqa: BLE001
            return [DKIMAuthenticationResult(result="permerror")]
        for idx in range(min(n, 5)):
            try:
                result = "pass" if d.verify(idx=idx) else "fail"
            except dkim.DKIMException:
                result = "fail"
            except dns.exception.DNSException:
                result = "temperror"
            except Exception:  # noqa: BLE001
                result = "fail"
            fields = d.signature_fields or {}
            out.append(
                DKIMAuthenticationResult(
                    result=result,
                    header_d=fields.get(b"d", b"").decode("ascii", "replace") or None,
                    header_i=fields.get(b"i", b"").decode("ascii", "replace") or None,
                )
            )
        return out

    @staticmethod
    def _dmarc(raw: bytes, spf_result: SPFAuthenticationResult, dkim_result: DKIMAuthenticationResult) -> DMARCAuthenticationResult:
        """DMARC for the From: domain; the message is parsed by authheaders only for odd From: fields."""
        froms = from_addresses(raw)
        if froms is None or len(froms) != 1:
            return authheaders.check_dmarc(raw, spf_result, dkim_result)
        domain = froms[0].rpartition("@")[2].strip().rstrip(">").lower()
        try:
            result, _comment, from_domain, policy = authheaders.dmarc_per_from(domain, spf_result, dkim_result)
        except dmarc_lookup.DMARCException as exc:
            return DMARCAuthenticationResult(result="permerror", result_comment=str(exc), header_from=domain, policy="none")
        if result == "none":
            return DMARCAuthenticationResult(result="none", header_from=domain)
        return DMARCAuthenticationResult(result=result, header_from=from_domain, policy=policy)

    def check(self, raw: bytes, *, ip: str, helo: str, mail_from: str) -> AuthVerdict:
        helo = helo or "unknown"
        spf_from = mail_from or f"postmaster@{helo}"
        spf_res, _reason = self._spf(ip, spf_from, helo)
        spf_result = SPFAuthenticationResult(result=spf_res, smtp_mailfrom=spf_from, smtp_helo=helo)
        dkim_results = self._dkim(raw)
        dkim_for_dmarc = next((r for r in dkim_results if r.result == "pass"), dkim_results[0])
        try:
            dmarc_result = self._dmarc(raw, spf_result, dkim_for_dmarc)
        except dns.exception.DNSException:
            dmarc_result = DMARCAuthenticationResult(result="temperror")
        except Exception:  # noqa: BLE001
            dmarc_result = DMARCAuthenticationResult(result="permerror")
        # check_dmarc rewrites smtp.mailfrom to the bare domain when SPF passes; keep the address
        spf_result.smtp_mailfrom = spf_from
        header = str(AuthenticationResultsHeader(authserv_id=self.authserv_id, results=[spf_result, *dkim_results, dmarc_result]))
        return AuthVerdict(
            header=_fold(header),
            spf=spf_res,
            dkim=dkim_for_dmarc.result,
            dmarc=dmarc_result.result or "none",
            dmarc_policy=getattr(dmarc_result, "policy", None),
            from_domain=getattr(dmarc_result, "header_from", None),
        )
