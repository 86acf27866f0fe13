"""Where mail for a domain goes: MX lookup (RFC 5321 5.1), null MX (RFC 7505), A/AAAA.

Asynchronous (``dns.asyncresolver``), with the configured resolvers and a
cache. ``mx_hosts`` answers the host names to try, best preference first
(equal preferences shuffled); a domain without MX records is its own mail
host (the A/AAAA fallback). Failures raise ``RouteError`` carrying whether
they are temporary and the RFC 3463 status for a bounce.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver


class RouteError(Exception):
    """No usable route. ``temporary`` failures are retried, the others bounce with ``status``."""

    def __init__(self, message: str, *, temporary: bool, status: str) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.status = status


def address_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` -> the IP; None for a domain name."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


class MxResolver:
    def __init__(self, nameservers: list[str] | tuple[str, ...] = (), *, port: int = 53, timeout: float = 5.0) -> None:
        r = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            r.nameservers = list(nameservers)
            r.port = port
        r.timeout = timeout
        r.lifetime = timeout
        r.cache = dns.resolver.LRUCache(10_000)
        self.resolver = r

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer:
        return await self.resolver.resolve(name, rdtype, search=False)

    async def mx_hosts(self, domain: str) -> list[str]:
        """Host names to try, in order. Raises RouteError."""
        if address_literal(domain):
            return [domain]
        try:
            answer = await self._resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise RouteError(f"domain {domain} does not exist (DNS NXDOMAIN)", temporary=False, status="5.1.2") from None
        except dns.resolver.NoAnswer:
            return [domain]  # no MX: the domain itself (RFC 5321 5.1)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise RouteError(f"DNS lookup of MX {domain} failed: {exc}", temporary=True, status="4.4.3") from None
        except dns.exception.DNSException as exc:
            raise RouteError(f"DNS lookup of MX {domain} failed: {exc}", temporary=True, status="4.4.3") from None
        records = [(rr.preference, rr.exchange) for rr in answer]
        if len(records) == 1 and records[0][1] == dns.name.root:
            raise RouteError(f"domain {domain} accepts no mail (null MX, RFC 7505)", temporary=False, status="5.1.10")
        records = [(p, x) for p, x in records if x != dns.name.root]
        random.shuffle(records)
        records.sort(key=lambda r: r[0])
        hosts: list[str] = []
        for _pref, exchange in records:
            name = exchange.to_text(omit_final_dot=True).lower()
            if name not in hosts:
                hosts.append(name)
        return hosts

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``; [] when it has none. Raises RouteError on DNS failure."""
        literal = address_literal(host)
        if literal:
            return [literal]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        results = await asyncio.gather(self._addresses(host, "A"), self._addresses(host, "AAAA"), return_exceptions=True)
        out: list[str] = []
        failures = []
        for res in results:
            if isinstance(res, BaseException):
                failures.append(res)
            else:
                out += res
        if not out and failures:
            raise RouteError(f"DNS lookup of {host} failed: {failures[0]}", temporary=True, status="4.4.3")
        return out

    async def _addresses(self, host: str, rdtype: str) -> list[str]:
        try:
            answer = await self._resolve(host, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [rr.address for rr in answer]

    async def txt(self, name: str) -> list[str] | None:
        """TXT strings of ``name`` (each record joined); [] for none; None when the lookup failed."""
        try:
            answer = await self._resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException:
            return None
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer]
