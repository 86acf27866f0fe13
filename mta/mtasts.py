"""MTA-STS (RFC 8461): a destination domain's policy that its MX hosts speak verified TLS.

``MtaSts.policy(domain)`` answers the policy in force (or None). The TXT
record ``_mta-sts.<domain>`` (``v=STSv1; id=...``) says a policy exists and
its version; the policy itself is fetched from
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (certificate verified,
no redirects, 64 KB at most, ``timeout`` seconds in all) and cached for its
``max_age`` in memory and in a small JSON file, so a later DNS or HTTPS
failure (or an attacker blocking them) still finds the cached policy. A
fetch that failed is not retried for five minutes.

Enforcement (mta/outbound.py): with ``mode: enforce`` only MX hosts matching
the ``mx:`` patterns are used, and only over STARTTLS with a certificate
valid for the MX host name; mail otherwise waits in the queue. ``testing``
and ``none`` change nothing (TLS reports are not sent).

The fetcher is a parameter (``async (domain) -> text``) so tests can serve
the policy themselves; ``https_fetch`` is the real one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .mx import MxResolver

log = logging.getLogger("mta.sts")

MAX_POLICY = 64 * 1024
MAX_AGE_LIMIT = 31_557_600
FAILURE_BACKOFF = 300.0
_ID = re.compile(r"[A-Za-z0-9]{1,32}")

Fetcher = Callable[[str], Awaitable[str]]


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class StsPolicy:
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    id: str = ""
    fetched: float = 0.0

    @property
    def expires(self) -> float:
        return self.fetched + self.max_age

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def matches(self, host: str) -> bool:
        """Does MX ``host`` fit one of the ``mx:`` patterns (``*.`` covers exactly one label)?"""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _dot, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_policy(text: str, *, policy_id: str = "", fetched: float | None = None) -> StsPolicy:
    """Parse the policy file (RFC 8461 3.2). Raises PolicyError."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"bad policy line {line[:60]!r}")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version must be STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"bad mode {mode!r}")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("max_age must be a number of seconds") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError("max_age out of range")
    mx = tuple(p.lower().rstrip(".") for p in fields.get("mx", []) if p)
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return StsPolicy(mode, mx, max_age, policy_id, time.time() if fetched is None else fetched)


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records, or None (no valid record, or several)."""
    found = [r for r in records if r.strip().startswith("v=STSv1")]
    if len(found) != 1:
        return None
    for part in found[0].split(";"):
        key, _eq, value = part.strip().partition("=")
        if key.strip() == "id" and _ID.fullmatch(value.strip()):
            return value.strip()
    return None


async def https_fetch(domain: str, *, resolver: MxResolver, timeout: float = 10.0, port: int = 443,
                      ca_file: str | None = None) -> str:
    """GET https://mta-sts.<domain>/.well-known/mta-sts.txt; the body text. Raises on any failure."""
    host = f"mta-sts.{domain}"
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()

    async def get() -> str:
        addresses = await resolver.addresses(host)
        if not addresses:
            raise PolicyError(f"{host} has no address")
        reader, writer = await asyncio.open_connection(addresses[0], port, ssl=ctx, server_hostname=host)
        try:
            writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: appliance-mta\r\n"
                         "Accept: text/plain\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            parts = status.split()
            if len(parts) < 2 or parts[1] != b"200":
                raise PolicyError(f"HTTP status {status[:60]!r}")
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _c, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
                if len(headers) > 100:
                    raise PolicyError("too many HTTP headers")
            if "text/plain" not in headers.get("content-type", "text/plain").lower():
                raise PolicyError("policy is not text/plain")
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    body += await reader.readexactly(size + 2)
                    body = body[:-2]
                    if len(body) > MAX_POLICY:
                        raise PolicyError("policy too large")
            else:
                body = await reader.read(MAX_POLICY + 1)
                if len(body) > MAX_POLICY:
                    raise PolicyError("policy too large")
            return body.decode("utf-8")
        finally:
            writer.close()

    return await asyncio.wait_for(get(), timeout)


class MtaSts:
    def __init__(self, resolver: MxResolver, fetcher: Fetcher, *, cache_file: Path | str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.fetcher = fetcher
        self.cache_file = Path(cache_file) if cache_file else None
        self.clock = clock
        self._cache: dict[str, StsPolicy] = {}
        self._failed: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._load_cache()

    def _load_cache(self) -> None:
        if self.cache_file is None:
            return
        try:
            data = json.loads(self.cache_file.read_text())
            for domain, p in data.items():
                self._cache[domain] = StsPolicy(p["mode"], tuple(p["mx"]), int(p["max_age"]), p.get("id", ""), float(p["fetched"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def _save_cache(self) -> None:
        if self.cache_file is None:
            return
        now = self.clock()
        data = {d: asdict(p) for d, p in self._cache.items() if p.expires > now}
        tmp = self.cache_file.with_name(self.cache_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            log.warning("cannot save the MTA-STS cache: %s", exc)

    def cached(self, domain: str) -> StsPolicy | None:
        p = self._cache.get(domain)
        return p if p is not None and p.expires > self.clock() else None

    async def policy(self, domain: str) -> StsPolicy | None:
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:
            return await self._policy(domain)

    async def _policy(self, domain: str) -> StsPolicy | None:
        cached = self.cached(domain)
        records = await self.resolver.txt(f"_mta-sts.{domain}")
        if not records:  # none published, or DNS failed: a cached policy stays in force until it expires
            return cached
        policy_id = parse_txt(records)
        if policy_id is None:
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        now = self.clock()
        if self._failed.get(domain, 0) > now:
            return cached
        try:
            text = await self.fetcher(domain)
            policy = parse_policy(text, policy_id=policy_id, fetched=now)
        except Exception as exc:  # noqa: BLE001 - any failure: keep what we had
            log.info("MTA-STS policy of %s not fetched: %s", domain, exc)
            self._failed[domain] = now + FAILURE_BACKOFF
            return cached
        self._failed.pop(domain, None)
        self._cache[domain] = policy
        self._save_cache()
        return policy

    def snapshot(self) -> dict[str, Any]:
        return {d: asdict(p) for d, p in self._cache.items()}
