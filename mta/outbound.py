"""The delivery worker: sends the outbound queue (mta/queue.py) to other mail servers.

Started by the MTA service (``queue.hold = false``); one process at a time
delivers from a queue (it holds ``queue/worker.lock``).

* Scheduling: every queued message is an ``Entry`` in memory (envelope and
  delivery state, never the body) with its next attempt time. Recipients are
  grouped by domain (everything goes to ``[smarthost]`` when one is set),
  one SMTP transaction per group of up to 100 recipients, over a session
  from ``connector.Pool`` (at most ``queue.max_per_domain`` per destination,
  ``queue.max_connections`` in all, reused for the next message to the same
  destination).
* Right after a remote 250 the recipients are recorded as sent, before any
  other await: the message is removed when nothing is left, else its state
  file is renamed into place (fsync follows in a thread). A recipient recorded
  as sent is never sent again, across crashes and restarts.
* Retries: a 4xx reply or a connection/DNS/TLS failure defers the recipient;
  the next attempt comes after ``retry_base`` doubling per attempt up to
  ``retry_max``; after ``delay_notice_after`` the sender gets one delay notice;
  at ``max_lifetime`` what is left bounces (status 4.4.7). A destination whose
  every MX failed to connect is not tried again for ``min(retry_base, 60s)``.
* Bounces: a 5xx reply, a null MX, a domain that does not exist, or expiry
  produce a DSN (mta/dsn.py) to the envelope sender: into the INBOX of a
  local sender through the store's one ingest path, or queued (null sender)
  to a remote one. Never to the null sender.
* DKIM: at send time (each attempt), for mail submitted by an authenticated
  user and for our own DSNs and vacation auto-replies, in signing processes (mta/dkimsign.py
  ``SigningPool``: RSA signing holds the GIL). Mail relayed from port 25 to
  external group members is not signed with our keys. The message is loaded
  and signed while the session is being opened or waited for, unless its
  destination is known to be down.
* Frozen accounts (antispam/outbound.py): mail queued by an account whose
  sending is frozen is *held*: not sent, not counted as an attempt, checked
  again every minute; it goes out if an admin lifts the freeze, and bounces
  to the account at ``max_lifetime`` if not. ``appliance queue delete`` drops
  it. Permanent failures of an account's mail count towards its
  ``outbound_failures_per_hour``.
* ``appliance queue`` talks to the worker through ``queue/kick/`` (retry,
  flush, delete), read every second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.i18n import _
from storage.errors import CryptoError, NotFoundError

from .connector import SMARTHOST, ConnectSettings, Pool
from .dkimsign import SigningPool
from .dsn import RecipientStatus, build_dsn
from .mx import RouteError
from .notices import deliver_notice
from .queue import OutboundQueue, QueuedMessage
from .smtpclient import SendResult, SmtpClient, SmtpError

log = logging.getLogger("mta.outbound")

MAX_RCPTS = 100
HOLD_RECHECK = 60.0


@dataclass(frozen=True)
class OutboundSettings:
    hostname: str
    max_lifetime: float = 5 * 86400
    delay_notice_after: float = 4 * 3600
    retry_base: float = 300
    retry_max: float = 3600
    max_per_domain: int = 5
    max_connections: int = 50
    dkim: bool = True
    connect: ConnectSettings = field(default_factory=lambda: ConnectSettings("localhost"))

    @classmethod
    def from_config(cls, cfg: Any) -> OutboundSettings:
        from appliance.config import parse_bind

        q = cfg.queue
        smarthost = parse_bind(q.smarthost, default_port=25) if q.smarthost else None
        password = ""
        if q.smarthost_password_file is not None:
            password = q.smarthost_password_file.read_text(encoding="utf-8").strip()
        connect = ConnectSettings(
            hostname=cfg.instance.hostname,
            remote_port=q.remote_port,
            connect_timeout=float(q.connect_timeout),
            command_timeout=float(q.command_timeout),
            tls_required_domains=frozenset(q.tls_required_domains),
            ca_file=str(q.tls_ca_file) if q.tls_ca_file else None,
            smarthost=smarthost,
            smarthost_tls=q.smarthost_tls,
            smarthost_user=q.smarthost_user,
            smarthost_password=password,
        )
        return cls(
            hostname=cfg.instance.hostname,
            max_lifetime=float(q.max_lifetime),
            delay_notice_after=float(q.delay_notice_after),
            retry_base=float(q.retry_base),
            retry_max=float(max(q.retry_max, q.retry_base)),
            max_per_domain=q.max_per_domain,
            max_connections=q.max_connections,
            dkim=cfg.dkim.enabled,
            connect=connect,
        )


def new_state() -> dict[str, Any]:
    return {"attempts": 0, "next": 0.0, "last_attempt": None, "last_error": "", "delay_notified": False, "rcpts": {}}


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base, 2 base, 4 base... up to cap (+0-10 %)."""
    delay = min(base * 2 ** max(0, attempts - 1), cap)
    return delay * random.uniform(1.0, 1.1)


@dataclass
class Outcome:
    kind: str  # sent | deferred | failed
    text: str  # the remote reply, or what went wrong here
    status: str  # RFC 3463
    remote: str | None = None  # host that answered
    reply: str | None = None  # the remote SMTP reply when there was one


@dataclass
class Entry:
    id: str
    sender: str
    recipients: list[str]
    created: float
    meta: dict[str, Any]
    state: dict[str, Any]
    next_try: float
    running: bool = False
    removed: bool = False
    delete_requested: bool = False
    size: int = 0
    prepared: asyncio.Task[bytes] | None = None

    def rcpt(self, address: str) -> dict[str, Any]:
        return self.state.setdefault("rcpts", {}).get(address) or {}

    def pending(self) -> list[str]:
        return [r for r in self.recipients if self.rcpt(r).get("s") not in ("sent", "failed")]

    def unreported_failures(self) -> list[str]:
        return [r for r in self.recipients if self.rcpt(r).get("s") == "failed" and not self.rcpt(r).get("dsn")]

    @property
    def auth(self) -> str | None:
        return self.meta.get("auth") or None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Outbound:
    def __init__(self, queue: OutboundQueue, store: Any, settings: OutboundSettings, pool: Pool, *,
                 executor: Any = None, events: Any = None, signer: Any = None,
                 is_frozen: Callable[[str], bool] | None = None,
                 record_failures: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.store = store
        self.settings = settings
        self.pool = pool
        self.executor = executor
        self.events = events
        self.signer = signer
        self.is_frozen = is_frozen
        self.record_failures = record_failures
        self.clock = clock
        self.entries: dict[str, Entry] = {}
        self.max_jobs = max(4, settings.max_connections * 2)
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._jobs: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._assigned: dict[str, int] = {}
        self._parked: dict[str, collections.deque[str]] = {}
        self._dirty_states: set[str] = set()
        self._removals: set[asyncio.Future[Any]] = set()
        self._frozen_cache: dict[str, tuple[float, bool]] = {}
        self._lock_cm: Any = None
        self._stopping = False
        self.locked = False
        self.loaded = False

    # ================================================================ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self.queue.on_enqueue = self._enqueued_threadsafe
        if isinstance(self.signer, SigningPool):
            await self.signer.start()
        self._tasks.append(self.loop.create_task(self._serve(), name="outbound-scheduler"))

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self.queue.on_enqueue = None
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._jobs:
            _done, pending = await asyncio.wait(set(self._jobs), timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.pool.close()
        if isinstance(self.signer, SigningPool):
            self.signer.close()
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._run(self._sync, set(self._dirty_states))
        if self._lock_cm is not None:
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def _take_lock(self) -> bool:
        cm = self.queue.worker_lock()
        if cm.__enter__():
            self._lock_cm = cm
            return True
        cm.__exit__(None, None, None)
        return False

    async def _serve(self) -> None:
        warned = False
        while not await self._run(self._take_lock):
            if not warned:
                log.warning("another process delivers from %s; waiting for it to stop", self.queue.root)
                warned = True
            await asyncio.sleep(5)
        self.locked = True
        await self._rescan()
        self.loaded = True
        self._tasks.append(self.loop.create_task(self._housekeeping(), name="outbound-housekeeping"))
        self._tasks.append(self.loop.create_task(self._syncer(), name="outbound-fsync"))
        await self._schedule()

    # ================================================================ the index
    def _enqueued_threadsafe(self, msg: QueuedMessage) -> None:
        try:
            self.loop.call_soon_threadsafe(self._add, msg, None)
        except RuntimeError:  # loop closed: the rescan at the next start finds it
            pass

    def _add(self, msg: QueuedMessage, state: dict[str, Any] | None) -> None:
        if msg.id in self.entries or self._stopping:
            return
        state = state or new_state()
        next_try = float(state.get("next") or 0) or self.clock()
        entry = Entry(msg.id, msg.sender, list(msg.recipients), msg.created, dict(msg.meta), state, next_try)
        self.entries[msg.id] = entry
        self._push(entry)

    def _push(self, entry: Entry) -> None:
        heapq.heappush(self._heap, (entry.next_try, next(self._seq), entry.id))
        self._wake.set()

    def _scan(self, known: set[str]) -> tuple[list[tuple[QueuedMessage, dict[str, Any] | None]], set[str]]:
        """In the executor: envelopes and states of queued messages not in ``known``; ids of ``known`` gone."""
        ids = self.queue.ids()
        present = set(ids)
        found = []
        for qid in ids:
            if qid in known:
                continue
            try:
                msg = self.queue.load(qid)
            except NotFoundError:
                continue
            except CryptoError as exc:
                self._quarantine(qid, exc)
                continue
            found.append((QueuedMessage(msg.id, msg.sender, msg.recipients, b"", msg.created, msg.meta),
                          self.queue.load_state(qid)))
        return found, known - present

    async def _rescan(self) -> None:
        found, gone = await self._run(self._scan, set(self.entries))
        for msg, state in found:
            self._add(msg, state)
        for qid in gone:
            e = self.entries.get(qid)
            if e is not None and not e.running:
                self.entries.pop(qid, None)

    def _quarantine(self, qid: str, exc: Exception) -> None:
        """A queue file that does not decrypt: keep it aside for the operator, never deliver or drop it silently."""
        corrupt = self.queue.root / "corrupt"
        corrupt.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.queue.ready_dir / qid, corrupt / qid)
        log.error("queue file %s cannot be read (%s); moved to %s", qid, exc, corrupt)

    # ================================================================ scheduling
    def _keys(self, entry: Entry) -> list[str]:
        if self.settings.connect.smarthost is not None:
            return [SMARTHOST]
        return list(dict.fromkeys(_domain(r) for r in entry.pending()))

    def _saturated(self, entry: Entry) -> bool:
        limit = 2 * self.settings.max_per_domain
        keys = self._keys(entry)
        return bool(keys) and all(self._assigned.get(k, 0) >= limit for k in keys)

    async def _schedule(self) -> None:
        while not self._stopping:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now and len(self._jobs) < self.max_jobs:
                t, _seq, qid = heapq.heappop(self._heap)
                e = self.entries.get(qid)
                if e is None or e.running or e.next_try != t or e.removed:
                    continue
                if self._saturated(e):  # parked until a job for its destination ends
                    self._parked.setdefault(self._keys(e)[0], collections.deque()).append(e.id)
                    continue
                self._start_job(e)
            if len(self._jobs) >= self.max_jobs or not self._heap:
                delay = 1.0
            else:
                delay = min(1.0, max(0.0, self._heap[0][0] - now))
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                await asyncio.sleep(0)

    def _unpark(self, key: str) -> None:
        parked = self._parked.get(key)
        while parked:
            e = self.entries.get(parked.popleft())
            if e is not None and not e.running and not e.removed:
                e.next_try = self.clock()
                self._push(e)
                break
        if parked is not None and not parked:
            del self._parked[key]

    def _start_job(self, e: Entry) -> None:
        e.running = True
        keys = self._keys(e)
        for k in keys:
            self._assigned[k] = self._assigned.get(k, 0) + 1
        task = self.loop.create_task(self._job(e, keys), name=f"outbound-{e.id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _job(self, e: Entry, keys: list[str]) -> None:
        try:
            await self._attempt(e)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one message's bug must not stop the worker
            log.exception("delivery of %s failed", e.id)
            if not e.removed:
                e.state["last_error"] = f"internal error: {exc}"
                e.next_try = self.clock() + backoff(e.state.get("attempts", 0) + 1, self.settings.retry_base,
                                                    self.settings.retry_max)
                self._push(e)
        finally:
            e.running = False
            for k in keys:
                self._assigned[k] -= 1
                if not self._assigned[k]:
                    del self._assigned[k]
                self._unpark(k)
            if e.delete_requested and not e.removed:
                await self._delete(e)
            self._wake.set()

    # ================================================================ one attempt
    async def _frozen(self, email: str) -> bool:
        if self.is_frozen is None:
            return False
        now = time.monotonic()
        hit = self._frozen_cache.get(email)
        if hit and hit[0] > now:
            return hit[1]
        try:
            frozen = bool(await self._run(self.is_frozen, email))
        except Exception:  # noqa: BLE001 - the check failing must not stop mail
            log.exception("freeze check of %s failed", email)
            frozen = False
        self._frozen_cache[email] = (now + 10.0, frozen)
        return frozen

    async def _attempt(self, e: Entry) -> None:
        s = self.settings
        now = self.clock()
        if not e.pending() and not e.unreported_failures():
            await self._finished(e)
            return
        if e.pending() and e.auth and await self._frozen(e.auth):
            if now >= e.created + s.max_lifetime:
                reason = _("not sent: sending from {email} is suspended").format(email=e.auth)
                for r in e.pending():
                    e.state["rcpts"][r] = {"s": "failed", "text": reason, "status": "4.4.7", "ts": now}
                await self._after_attempt(e, counted=False)
                return
            if not e.state.get("held"):
                e.state["held"] = "account frozen"
                await self._run(self.queue.save_state, e.id, e.state)
                self._log(e, e.pending(), "held", {"reason": "account frozen"})
            e.next_try = now + min(HOLD_RECHECK, s.retry_base)
            self._push(e)
            return
        e.state.pop("held", None)
        pending = e.pending()
        if pending:
            groups: list[tuple[str, list[str]]] = []
            by_key: dict[str, list[str]] = {}
            for r in pending:
                by_key.setdefault(SMARTHOST if s.connect.smarthost else _domain(r), []).append(r)
            for key, rcpts in by_key.items():
                groups += [(key, rcpts[i:i + MAX_RCPTS]) for i in range(0, len(rcpts), MAX_RCPTS)]
            try:
                await asyncio.gather(*(self._transaction(e, key, rcpts) for key, rcpts in groups))
            finally:
                prepared, e.prepared = e.prepared, None
            if prepared is not None and prepared.done() and not prepared.cancelled() and prepared.exception():
                exc = prepared.exception()
                if isinstance(exc, CryptoError):
                    await self._run(self._quarantine, e.id, exc)
                elif not isinstance(exc, NotFoundError):
                    raise exc  # type: ignore[misc]
                self.entries.pop(e.id, None)
                e.removed = True
                return
        await self._after_attempt(e, counted=bool(pending))

    def _prefetch(self, e: Entry) -> asyncio.Task[bytes]:
        if e.prepared is None:
            e.prepared = self.loop.create_task(self._prepare(e))
        return e.prepared

    async def _data(self, e: Entry) -> bytes:
        """The message as sent: loaded and signed once per attempt."""
        data = await asyncio.shield(self._prefetch(e))
        e.size = len(data)
        return data

    async def _prepare(self, e: Entry) -> bytes:
        """The message as sent: decrypted in a thread, DKIM-signed (when it is ours to sign) by the signer."""
        data = (await self._run(self.queue.load, e.id)).raw
        if self.signer is not None and self.settings.dkim and (e.auth or e.meta.get("dsn") or e.meta.get("autoreply")):
            if isinstance(self.signer, SigningPool):
                data = await self.signer.sign(data, self.executor)
            else:
                data = await self._run(self.signer.sign, data)
        return data

    async def _transaction(self, e: Entry, key: str, rcpts: list[str]) -> None:
        if self.pool.destination(key).down_until <= time.monotonic():
            self._prefetch(e)  # load and sign while waiting for a session (not for a destination known down)
        for attempt in range(2):
            try:
                async with self.pool.session(key) as (client, reused):
                    try:
                        data = await self._data(e)
                    except (NotFoundError, CryptoError):
                        return  # gone or unreadable: _attempt deals with it
                    try:
                        result = await client.send(e.sender, rcpts, data)
                    except SmtpError as exc:
                        if reused and attempt == 0 and exc.stage in ("mail", "rcpt", "data"):
                            continue  # a cached session the server had closed: nothing was sent, open a new one
                        self._record(e, {r: Outcome("deferred", str(exc), exc.status, client.host) for r in rcpts}, client)
                        return
                    self._record(e, self._outcomes(result, client), client)
                    return
            except RouteError as exc:
                kind = "deferred" if exc.temporary else "failed"
                self._record(e, {r: Outcome(kind, str(exc), exc.status) for r in rcpts}, None)
                return
            except SmtpError as exc:  # no session: every MX refused, timed out or failed TLS
                status = exc.status if exc.temporary else "4.4.1"
                reply = str(exc.reply) if exc.reply else None
                self._record(e, {r: Outcome("deferred", str(exc), status, None, reply) for r in rcpts}, None)
                return

    @staticmethod
    def _outcomes(result: SendResult, client: SmtpClient) -> dict[str, Outcome]:
        out = {}
        for r, reply in result.replies.items():
            kind = "sent" if reply.code // 100 == 2 else "deferred" if reply.code < 500 else "failed"
            out[r] = Outcome(kind, str(reply), reply.status, client.host, str(reply))
        return out

    # ================================================================ recording
    def _record(self, e: Entry, outcomes: dict[str, Outcome], client: SmtpClient | None) -> None:
        """Synchronous, right after the reply: the durable record of sent recipients comes before any await."""
        now = self.clock()
        rcpts = e.state.setdefault("rcpts", {})
        for r, o in outcomes.items():
            item = {"s": o.kind, "text": o.text[:1000], "status": o.status, "ts": now}
            if o.remote:
                item["mx"] = o.remote
            if o.reply:
                item["reply"] = o.reply[:1000]
            rcpts[r] = item
        sent = [r for r, o in outcomes.items() if o.kind == "sent"]
        if sent and not e.removed:
            if not e.pending() and not e.unreported_failures():
                self._remove_now(e)
            elif self.queue.save_state(e.id, e.state, sync=False):
                self._dirty_states.add(e.id)
                self._dirty.set()
        for kind, result in (("sent", "sent"), ("deferred", "deferred"), ("failed", "bounced")):
            group = [r for r, o in outcomes.items() if o.kind == kind]
            if not group:
                continue
            first = outcomes[group[0]]
            detail: dict[str, Any] = {"direction": "outbound", "reply": first.text[:500], "status": first.status,
                                      "delay": round(now - e.created, 3), "attempt": e.state.get("attempts", 0) + 1}
            if client is not None:
                detail["relay"] = client.label
                if client.tls:
                    detail["tls"] = client.tls[0]
            self._log(e, group, result, detail)

    def _remove_now(self, e: Entry) -> None:
        """Every recipient is done: drop the message. The unlink is handed to a thread at once (an unlink
        costs about a millisecond on some disks, too long to block the loop); the entry is gone from
        memory already, so nothing here can send it again."""
        e.removed = True
        self.entries.pop(e.id, None)
        self._dirty_states.discard(e.id)
        future = self.loop.run_in_executor(self.executor, functools.partial(self.queue.remove, e.id, sync=False))
        self._removals.add(future)
        future.add_done_callback(self._removed)

    def _removed(self, future: asyncio.Future[Any]) -> None:
        self._removals.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("could not remove a delivered message from the queue: %s", future.exception())
        self._dirty.set()

    def _log(self, e: Entry, rcpts: list[str], result: str, detail: dict[str, Any]) -> None:
        if self.events is None:
            return
        if e.auth:
            detail.setdefault("auth", e.auth)
        self.events.write(e.id, e.sender, rcpts, e.size, result, ip=None, detail=detail)

    async def _after_attempt(self, e: Entry, *, counted: bool) -> None:
        if e.removed:
            return
        s = self.settings
        now = self.clock()
        if counted:
            e.state["attempts"] = e.state.get("attempts", 0) + 1
            e.state["last_attempt"] = now
        pending = e.pending()
        deferred = [e.rcpt(r) for r in pending if e.rcpt(r).get("s") == "deferred"]
        if deferred:
            e.state["last_error"] = deferred[0].get("text", "")
        if pending and now >= e.created + s.max_lifetime:
            for r in pending:
                last = e.rcpt(r)
                text = _("delivery time expired after {days} days; last error: {error}").format(
                    days=round(s.max_lifetime / 86400, 2), error=last.get("text") or "-")
                e.state["rcpts"][r] = {**last, "s": "failed", "status": "4.4.7", "text": text, "expired": True, "ts": now}
            self._log(e, pending, "expired", {"direction": "outbound", "last_error": e.state.get("last_error", "")})
            pending = []
        failed = e.unreported_failures()
        if failed:
            await self._bounce(e, failed, delayed=False)
            for r in failed:
                e.state["rcpts"][r]["dsn"] = True
            if e.auth and self.record_failures is not None and not await self._frozen(e.auth):
                with contextlib.suppress(Exception):
                    await self._run(self.record_failures, e.auth, len(failed))
        if not pending:
            await self._finished(e)
            return
        if (s.delay_notice_after and not e.state.get("delay_notified") and e.sender
                and now - e.created >= s.delay_notice_after):
            await self._bounce(e, pending, delayed=True)
            e.state["delay_notified"] = True
        e.next_try = min(now + backoff(e.state.get("attempts", 1), s.retry_base, s.retry_max),
                         max(now + 0.5, e.created + s.max_lifetime))
        e.state["next"] = e.next_try
        # no fsync: attempts and the next time are advice; only "sent" marks must survive a power loss
        if await self._run(self.queue.save_state, e.id, e.state, sync=False):
            self._dirty_states.discard(e.id)
            self._push(e)
        else:  # deleted meanwhile
            e.removed = True
            self.entries.pop(e.id, None)

    async def _finished(self, e: Entry) -> None:
        if not e.removed:
            await self._run(self.queue.remove, e.id)
            e.removed = True
        self.entries.pop(e.id, None)

    async def _delete(self, e: Entry) -> None:
        await self._run(self.queue.remove, e.id)
        e.removed = True
        self.entries.pop(e.id, None)
        self._log(e, e.pending(), "deleted", {"direction": "outbound", "by": "appliance queue delete"})

    # ================================================================ bounces
    async def _bounce(self, e: Entry, rcpts: list[str], *, delayed: bool) -> None:
        if not e.sender:
            log.info("%s: %s for %s not sent: the sender is null", e.id, "delay notice" if delayed else "bounce", rcpts)
            return
        statuses = []
        for r in rcpts:
            st = e.rcpt(r)
            statuses.append(RecipientStatus(
                recipient=r, action="delayed" if delayed else "failed",
                status=st.get("status") or ("4.0.0" if delayed else "5.0.0"), reason=st.get("text") or "-",
                remote_mta=st.get("mx"), diagnostic=st.get("reply"), last_attempt=st.get("ts")))
        try:
            where = await self._run(self._send_dsn, e, statuses, delayed)
        except Exception:  # noqa: BLE001 - a failed notice must not keep the message forever
            log.exception("%s: could not send the %s", e.id, "delay notice" if delayed else "bounce")
            return
        self._log(e, rcpts, "delay-notice" if delayed else "dsn", {"direction": "outbound", "to": e.sender, "via": where})

    def _send_dsn(self, e: Entry, statuses: list[RecipientStatus], delayed: bool) -> str:
        """In the executor: build the DSN and deliver it to the sender. Returns how it went ("local", "queued")."""
        try:
            original = self.queue.load(e.id).raw
        except NotFoundError:
            original = b""
        raw = build_dsn(hostname=self.settings.hostname, queue_id=e.id, sender=e.sender, original=original,
                        arrival=e.created, statuses=statuses, delayed=delayed,
                        retry_until=e.created + self.settings.max_lifetime)
        return self.deliver_notice(e.sender, raw, of=e.id)

    def deliver_notice(self, address: str, raw: bytes, *, of: str = "") -> str:
        """A notice from the mail system (null sender) to ``address``: local INBOXes through the store, else the queue."""
        return deliver_notice(self.store, self.queue, address, raw, meta={"dsn": True, "of": of})

    # ================================================================ housekeeping
    async def _housekeeping(self) -> None:
        tick = 0
        while not self._stopping:
            await asyncio.sleep(1.0)
            tick += 1
            try:
                await self._kicks()
                await self.pool.reap()
                if tick % 30 == 0:
                    await self._rescan()
            except Exception:  # noqa: BLE001
                log.exception("outbound housekeeping failed")

    async def _kicks(self) -> None:
        everything, retry, delete = self.queue.take_kicks()
        if not (everything or retry or delete):
            return
        now = self.clock()
        unknown = (retry | delete) - set(self.entries)
        if unknown:
            await self._rescan()
        if everything:
            retry |= set(self.entries)
            for dest in self.pool.destinations.values():
                dest.down_until = 0.0
        for qid in delete:
            e = self.entries.get(qid)
            if e is None:
                await self._run(self.queue.remove, qid)
            elif e.running:
                e.delete_requested = True
            else:
                await self._delete(e)
        for qid in retry - delete:
            e = self.entries.get(qid)
            if e is None or e.running:
                continue
            for k in self._keys(e):
                if k in self.pool.destinations:
                    self.pool.destinations[k].down_until = 0.0
            self._frozen_cache.pop(e.auth or "", None)
            e.next_try = now
            self._push(e)

    def _sync(self, states: set[str]) -> None:
        for qid in states:
            self.queue.sync_state(qid)
        self.queue.sync_dirs()

    async def _syncer(self) -> None:
        """fsync of state files and queue directories changed on the event loop, batched."""
        while not self._stopping:
            await self._dirty.wait()
            self._dirty.clear()
            states, self._dirty_states = self._dirty_states, set()
            try:
                await self._run(self._sync, states)
            except Exception:  # noqa: BLE001
                log.exception("fsync of the queue failed")

    # ================================================================ status
    def status(self) -> dict[str, Any]:
        return {"queued": len(self.entries), "running": len(self._jobs), "destinations": self.pool.status(),
                "locked": self.locked, "loaded": self.loaded}
