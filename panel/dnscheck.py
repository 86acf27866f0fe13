"""Live DNS status of the records a domain page asks the admin to publish.

Each record is judged by ``installer.dnsrecords.check_record`` (the same
rules as ``appliance doctor``) with the resolvers of ``[dns]``. Lookups are
blocking (dnspython), so they run in a small thread pool of their own, never
on the event loop; one lookup is bounded by a timeout of at most
``MAX_TIMEOUT`` seconds and a page waits for all of them at most
``WAIT`` seconds: what is not answered by then shows as "checking" and
lands in the cache when it comes. Answers are cached for ``TTL`` seconds
(failures for ``FAIL_TTL``), so opening the page again does not ask again;
"Check again" (``fresh=True``) forgets a domain's cached answers first.
After the resolver failed to answer once, other lookups give up at once
for ``FAIL_TTL`` seconds rather than each waiting for its own timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from installer.dnsrecords import DnsRecord, Lookup, RecordCheck, check_record, make_lookup

MAX_TIMEOUT = 3.0
WAIT = 4.0
TTL = 60.0
FAIL_TTL = 20.0
PLACEHOLDER = "<"  # "<public IPv4 address of this server>": the panel does not know the public address


@dataclass(frozen=True)
class Status:
    name: str
    type: str
    value: str
    purpose: str
    required: bool
    status: str  # ok, missing, different, no-answer, checking
    found: tuple[str, ...]
    checked: float | None  # when the answer came (unix time), None while checking

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "value": self.value, "purpose": self.purpose,
                "required": self.required, "status": self.status, "found": list(self.found), "checked": self.checked}


class DnsChecker:
    """Cached, bounded DNS checks; one per panel process."""

    def __init__(self, resolvers: Iterable[str], port: int, timeout: float, *, workers: int = 4) -> None:
        self.timeout = max(0.2, min(float(timeout), MAX_TIMEOUT))
        self._lookup: Lookup = make_lookup(list(resolvers), port, self.timeout)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="panel-dns")
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], tuple[float, list[str] | None]] = {}
        self._checks: dict[DnsRecord, tuple[float, RecordCheck]] = {}
        self._running: dict[DnsRecord, Future[RecordCheck]] = {}
        self._resolver_failed = float("-inf")  # monotonic time of the last lookup the resolver did not answer

    @classmethod
    def from_config(cls, cfg: Any) -> DnsChecker:
        return cls(cfg.dns.resolvers, cfg.dns.port, cfg.dns.timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ worker side
    def _cached_lookup(self, name: str, rtype: str) -> list[str] | None:
        key = (name.lower(), rtype)
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if now - self._resolver_failed < FAIL_TTL:
            return None
        found = self._lookup(name, rtype)
        with self._lock:
            self._answers[key] = (time.monotonic() + (TTL if found is not None else FAIL_TTL), found)
            if found is None:
                self._resolver_failed = time.monotonic()
        return found

    def _check(self, rec: DnsRecord) -> RecordCheck:
        result = check_record(rec, self._cached_lookup)
        if result.status == "different" and rec.value.startswith(PLACEHOLDER):
            result = RecordCheck(rec, "ok", result.found)  # an address is published; which one is the admin's call
        with self._lock:
            self._checks[rec] = (time.time(), result)
            self._running.pop(rec, None)
        return result

    # ------------------------------------------------------------ loop side
    def forget(self, records: Iterable[DnsRecord]) -> None:
        with self._lock:
            self._resolver_failed = float("-inf")
            for rec in records:
                self._checks.pop(rec, None)
                for rtype in (rec.type, "A"):
                    self._answers.pop((rec.name.lower(), rtype), None)

    async def check(self, records: list[DnsRecord], *, fresh: bool = False, wait: float = WAIT) -> list[Status]:
        """The status of each record, waiting at most ``wait`` seconds for the resolver."""
        if fresh:
            self.forget(records)
        now = time.time()
        futures: list[asyncio.Future[RecordCheck]] = []
        with self._lock:
            for rec in records:
                done = self._checks.get(rec)
                ttl = TTL if done is not None and done[1].status != "no-answer" else FAIL_TTL
                if done is not None and now - done[0] < ttl:
                    continue
                fut = self._running.get(rec)
                if fut is None:
                    fut = self._running[rec] = self._pool.submit(self._check, rec)
                futures.append(asyncio.wrap_future(fut))
        if futures:
            await asyncio.wait(futures, timeout=wait)
        out = []
        with self._lock:
            for rec in records:
                done = self._checks.get(rec)
                if done is None:
                    out.append(Status(rec.name, rec.type, rec.value, rec.purpose, rec.required, "checking", (), None))
                else:
                    ts, r = done
                    out.append(Status(rec.name, rec.type, rec.value, rec.purpose, rec.required, r.status, r.found, ts))
        return out
