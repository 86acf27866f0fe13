"""Outbound SMTP sessions: where to connect, how (TLS, AUTH), and a pool that reuses them.

``Connector.open(destination)`` returns a ready ``SmtpClient`` (greeted,
EHLO done, STARTTLS done when offered or required, logged in at a
smarthost) or raises ``RouteError`` / ``SmtpError``:

* a domain: MX hosts in preference order (mta/mx.py), each of their
  addresses in turn, on ``queue.remote_port``; a host that refuses the
  connection, greets with an error or fails a required TLS handshake makes
  way for the next one.
* TLS: STARTTLS whenever offered. Opportunistic by default (certificate
  not checked; a failed handshake is retried once without TLS, RFC 7435).
  Strict for domains in ``queue.tls_required_domains`` and for domains
  whose MTA-STS policy is ``enforce``: the certificate must be valid for
  the MX host name (``queue.tls_ca_file`` or the system's CAs), and MX hosts
  outside the policy's ``mx:`` patterns are skipped; otherwise the mail waits.
* the smarthost ``[smarthost]``: ``queue.smarthost`` with
  ``queue.smarthost_tls``, and AUTH (PLAIN, else LOGIN) only over TLS.

``Pool`` keeps at most ``max_per_domain`` sessions per destination and
``max_connections`` in all; a session that finished a transaction waits
``idle_time`` seconds for the next message to the same destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .mtasts import MtaSts
from .mx import MxResolver, RouteError, address_literal
from .smtpclient import SmtpClient, SmtpError

log = logging.getLogger("mta.outbound")

SMARTHOST = "[smarthost]"


@dataclass(frozen=True)
class ConnectSettings:
    hostname: str  # our EHLO name
    remote_port: int = 25
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    tls_required_domains: frozenset[str] = frozenset()
    ca_file: str | None = None
    smarthost: tuple[str, int] | None = None
    smarthost_tls: str = "starttls"
    smarthost_user: str = ""
    smarthost_password: str = ""


def verifying_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def opportunistic_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Connector:
    def __init__(self, settings: ConnectSettings, resolver: MxResolver, sts: MtaSts | None = None) -> None:
        self.settings = settings
        self.resolver = resolver
        self.sts = sts
        self._verify = verifying_context(settings.ca_file)
        self._any = opportunistic_context()

    async def open(self, destination: str) -> SmtpClient:
        if destination == SMARTHOST:
            return await self._smarthost()
        return await self._direct(destination)

    # ------------------------------------------------------------ direct
    async def _direct(self, domain: str) -> SmtpClient:
        s = self.settings
        policy = None
        if self.sts is not None and not address_literal(domain):
            policy = await self.sts.policy(domain)
        sts_enforced = policy is not None and policy.enforced
        strict = domain in s.tls_required_domains or sts_enforced
        hosts = await self.resolver.mx_hosts(domain)
        implicit = hosts == [domain]
        if sts_enforced:
            assert policy is not None
            allowed = [h for h in hosts if policy.matches(h)]
            if not allowed:
                raise RouteError(f"no MX host of {domain} ({', '.join(hosts)}) fits its MTA-STS policy", temporary=True,
                                 status="4.7.5")
            hosts = allowed
        last: Exception | None = None
        for host in hosts:
            try:
                addresses = await self.resolver.addresses(host)
            except RouteError as exc:
                last = exc
                continue
            if not addresses:
                if implicit:
                    raise RouteError(f"domain {domain} has no MX and no address record", temporary=False, status="5.1.2")
                last = RouteError(f"MX host {host} has no address", temporary=True, status="4.4.3")
                continue
            for ip in addresses:
                try:
                    return await self._session(host, ip, s.remote_port, domain=domain, strict=strict,
                                               why="MTA-STS" if sts_enforced else "queue.tls_required_domains")
                except SmtpError as exc:
                    last = exc
                    log.info("%s", exc)
        if isinstance(last, SmtpError):
            raise last
        raise last or RouteError(f"no mail host for {domain}", temporary=True, status="4.4.1")

    async def _session(self, host: str, ip: str, port: int, *, domain: str, strict: bool, why: str) -> SmtpClient:
        s = self.settings
        client, _greeting = await SmtpClient.connect(ip, port, host=host, connect_timeout=s.connect_timeout,
                                                     timeout=s.command_timeout)
        try:
            await client.ehlo(s.hostname)
            if client.has("STARTTLS"):
                try:
                    await client.starttls(self._verify if strict else self._any, host)
                    await client.ehlo(s.hostname)
                except SmtpError as exc:
                    client.close()
                    if strict:
                        raise SmtpError(f"{exc} (TLS is required for {domain} by {why})", stage="starttls") from None
                    log.info("%s; trying %s again without TLS", exc, client.label)
                    client, _greeting = await SmtpClient.connect(ip, port, host=host, connect_timeout=s.connect_timeout,
                                                                 timeout=s.command_timeout)
                    await client.ehlo(s.hostname)
            elif strict:
                raise SmtpError(f"{client.label} does not offer STARTTLS; TLS is required for {domain} by {why}",
                                stage="starttls")
            return client
        except BaseException:
            client.close()
            raise

    # ------------------------------------------------------------ smarthost
    async def _smarthost(self) -> SmtpClient:
        s = self.settings
        assert s.smarthost is not None
        host, port = s.smarthost
        addresses = await self.resolver.addresses(host)
        if not addresses:
            raise RouteError(f"smarthost {host} has no address", temporary=True, status="4.4.3")
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._smarthost_session(host, ip, port)
            except SmtpError as exc:
                last = exc
        assert last is not None
        raise last

    async def _smarthost_session(self, host: str, ip: str, port: int) -> SmtpClient:
        s = self.settings
        implicit = s.smarthost_tls == "implicit"
        client, _greeting = await SmtpClient.connect(
            ip, port, host=host, connect_timeout=s.connect_timeout, timeout=s.command_timeout,
            ssl_context=self._verify if implicit else None)
        try:
            await client.ehlo(s.hostname)
            if not implicit:
                if client.has("STARTTLS"):
                    await client.starttls(self._verify if s.smarthost_tls == "starttls" else self._any, host)
                    await client.ehlo(s.hostname)
                elif s.smarthost_tls == "starttls":
                    raise SmtpError(f"smarthost {client.label} does not offer STARTTLS (queue.smarthost_tls = starttls)",
                                    stage="starttls")
            if s.smarthost_user:
                if client.tls is None:
                    raise SmtpError(f"smarthost {client.label} offers no TLS; not sending the password in clear",
                                    stage="auth")
                await client.auth(s.smarthost_user, s.smarthost_password)
            return client
        except BaseException:
            client.close()
            raise


# ---------------------------------------------------------------- the pool


class Destination:
    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self.limit = limit
        self.open = 0
        self.waiting = 0
        self.idle: list[tuple[SmtpClient, float]] = []
        self.cond = asyncio.Condition()
        self.down_until = 0.0
        self.down_error: Exception | None = None

    @property
    def saturated(self) -> bool:
        return self.open >= self.limit and not self.idle and self.waiting >= self.limit


class Pool:
    def __init__(self, connector: Connector, *, max_per_domain: int, max_connections: int, idle_time: float = 5.0,
                 down_time: float = 60.0) -> None:
        self.connector = connector
        self.max_per_domain = max_per_domain
        self.idle_time = idle_time
        self.down_time = down_time
        self.destinations: dict[str, Destination] = {}
        self._global = asyncio.Semaphore(max_connections)

    def destination(self, key: str) -> Destination:
        d = self.destinations.get(key)
        if d is None:
            d = self.destinations[key] = Destination(key, self.max_per_domain)
        return d

    @contextlib.asynccontextmanager
    async def session(self, key: str) -> AsyncIterator[tuple[SmtpClient, bool]]:
        """A session to ``key``: (client, reused). Put back for reuse when it is still usable afterwards."""
        dest = self.destination(key)
        client, reused = await self._acquire(dest)
        try:
            yield client, reused
        except BaseException:
            client.broken = True
            raise
        finally:
            await self._release(dest, client)

    async def _acquire(self, dest: Destination) -> tuple[SmtpClient, bool]:
        async with dest.cond:
            dest.waiting += 1
            try:
                while True:
                    while dest.idle:
                        client, _since = dest.idle.pop()
                        if client.usable:
                            return client, True
                        self._closed(dest, client)
                    if dest.down_until > time.monotonic() and dest.down_error is not None:
                        raise RouteError(f"{dest.down_error} (not retried for {self.down_time:g}s)", temporary=True,
                                         status=getattr(dest.down_error, "status", "4.4.1"))
                    if dest.open < dest.limit:
                        dest.open += 1
                        break
                    await dest.cond.wait()
            finally:
                dest.waiting -= 1
        try:
            await self._global.acquire()
        except BaseException:
            async with dest.cond:
                dest.open -= 1
                dest.cond.notify()
            raise
        try:
            client = await self.connector.open(dest.key)
        except BaseException as exc:
            self._global.release()
            async with dest.cond:
                dest.open -= 1
                if isinstance(exc, SmtpError | RouteError) and getattr(exc, "temporary", True):
                    dest.down_until = time.monotonic() + self.down_time
                    dest.down_error = exc
                dest.cond.notify_all()
            raise
        dest.down_until, dest.down_error = 0.0, None
        return client, False

    def _closed(self, dest: Destination, client: SmtpClient) -> None:
        client.close()
        dest.open -= 1
        self._global.release()

    async def _release(self, dest: Destination, client: SmtpClient) -> None:
        async with dest.cond:
            if client.usable:
                dest.idle.append((client, time.monotonic()))
            else:
                self._closed(dest, client)
            dest.cond.notify()

    async def reap(self) -> None:
        """Close sessions idle for longer than ``idle_time``; forget empty destinations."""
        now = time.monotonic()
        for key, dest in list(self.destinations.items()):
            old = [(c, t) for c, t in dest.idle if now - t > self.idle_time or not c.usable]
            if old:
                async with dest.cond:
                    for item in old:
                        if item in dest.idle:
                            dest.idle.remove(item)
                            dest.open -= 1
                            self._global.release()
                            asyncio.get_running_loop().create_task(_quit_quietly(item[0]))
                    dest.cond.notify_all()
            if not dest.open and not dest.waiting and dest.down_until < now:
                self.destinations.pop(key, None)

    async def close(self) -> None:
        for dest in list(self.destinations.values()):
            for client, _t in dest.idle:
                await _quit_quietly(client)
            dest.idle.clear()

    def status(self) -> dict[str, Any]:
        return {k: {"open": d.open, "idle": len(d.idle), "waiting": d.waiting} for k, d in self.destinations.items()}


async def _quit_quietly(client: SmtpClient) -> None:
    try:
        await client.quit()
    except Exception:  # noqa: BLE001
        client.close()
