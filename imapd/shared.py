"""What every IMAP and POP3 connection of one process shares: store, limits, registry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from .msgcache import MessageCache, TextCache
from .views import Views

log = logging.getLogger("imapd")


@dataclass(frozen=True)
class Limits:
    max_line_length: int = 64 * 1024
    max_literal_size: int = 25 * 1024 * 1024
    max_connections_per_user: int = 50
    max_connections_per_ip: int = 100
    idle_timeout: float = 1800.0
    max_search_depth: int = 32
    max_mime_depth: int = 64
    preauth_literal: int = 8192  # literals before login (LOGIN / AUTHENTICATE arguments)
    max_bad_commands: int = 20
    max_auth_failures: int = 3  # per connection, then BYE


class Registry:
    """Live connections: per-IP and per-user counts, idle sweeping, shutdown."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.conns: set[Any] = set()
        self.per_ip: Counter[str] = Counter()
        self.per_user: Counter[int] = Counter()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, conn: Any, ip: str) -> bool:
        if self.per_ip[ip] >= self.limits.max_connections_per_ip:
            return False
        self.per_ip[ip] += 1
        self.conns.add(conn)
        self.empty.clear()
        return True

    def remove(self, conn: Any, ip: str, user_id: int | None) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        if user_id is not None:
            self.release_user(user_id)
        if not self.conns:
            self.empty.set()

    def claim_user(self, user_id: int) -> bool:
        if self.per_user[user_id] >= self.limits.max_connections_per_user:
            return False
        self.per_user[user_id] += 1
        return True

    def release_user(self, user_id: int) -> None:
        self.per_user[user_id] -= 1
        if self.per_user[user_id] <= 0:
            del self.per_user[user_id]

    def sweep(self) -> None:
        """Log out connections silent for longer than the idle timeout."""
        now = time.monotonic()
        for conn in list(self.conns):
            if now - conn.last_activity > self.limits.idle_timeout:
                conn.timed_out()
            elif getattr(conn, "idling", False) and now - conn.last_keepalive > 120:
                conn.keepalive()


@dataclass
class Shared:
    store: Any
    executor: Executor
    loop: asyncio.AbstractEventLoop
    limits: Limits
    hostname: str
    tls_options: Any  # twisted CertificateOptions or None
    registry: Registry
    watcher: Any = None
    guard: Any = None  # guard.SessionGuard: ends sessions whose credentials were revoked
    msg_cache: MessageCache = field(default_factory=MessageCache)
    views: Views = field(default_factory=Views)
    texts: TextCache = field(default_factory=TextCache)
    #: small index reads (a mailbox's version) may run on the reactor: true on SQLite, where they take ~0.1 ms
    inline_reads: bool = False
    #: long jobs (SEARCH, which may decrypt a whole mailbox) take at most this many of the pool's
    #: threads at once, so deliveries and other sessions keep theirs
    heavy: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    trimmer: Any = None  # memtrim.Trimmer: returns what bursts of work freed to the kernel
    log: logging.Logger = log

    def run(self, fn: Any, *args: Any) -> asyncio.Future:
        """Run blocking store work in the service's thread pool."""
        if self.trimmer is not None:
            self.trimmer.active = True
        return self.loop.run_in_executor(self.executor, fn, *args)
