"""Learning from users: moving mail into Junk teaches spam, out of Junk ham.

``Learner.hook`` is a store move hook (``store.add_move_hook``). It runs in
the thread that moved the messages, so it only classifies the move and puts
a job on a bounded queue of the event loop; the worker reads the messages
through the store in a thread, POSTs them to rspamd's controller
(``/learnspam``, ``/learnham``) and retries a few times when rspamd is down.
A full queue drops the job with a warning: learning is advisory, the move
itself never waits for it.

Which mailbox is Junk is its special use (``\\Junk``), whatever its name.
Moving out of Junk into Trash teaches nothing (the user is deleting spam).
imapd calls the same hook for ``COPY`` into or out of Junk: clients without
MOVE (and some with it) copy, then flag and expunge, so the copy is the
user's verdict, as in Dovecot's IMAPSieve recipe for rspamd. Learning the
same message twice is harmless: rspamd answers "already learned".

The hook is given the moved messages' UIDs in the source mailbox; they get
new UIDs in the destination, allocated in one transaction after the
destination's pre-move ``uidnext`` and sharing one modseq. The worker finds
them there that way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .client import RspamdClient, RspamdError

log = logging.getLogger("antispam")

JUNK, TRASH = "\\Junk", "\\Trash"


@dataclass(frozen=True)
class LearnJob:
    kind: str  # "spam" | "ham"
    user: Any  # storage.records.User
    mailbox_id: int
    first_uid: int  # the destination's uidnext before the move
    count: int
    attempt: int = 0


def classify(src: Any, dst: Any) -> str | None:
    """"spam", "ham" or None for a move from mailbox ``src`` to ``dst``."""
    if dst.special_use == JUNK and src.special_use != JUNK:
        return "spam"
    if src.special_use == JUNK and dst.special_use not in (JUNK, TRASH):
        return "ham"
    return None


class Learner:
    def __init__(self, store: Any, client: RspamdClient, *, loop: asyncio.AbstractEventLoop | None = None,
                 executor: Any = None, max_queue: int = 10_000, max_size: int = 20 * 1024 * 1024,
                 retries: int = 6, retry_delay: float = 5.0) -> None:
        self.store = store
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self.executor = executor
        self.max_size = max_size
        self.retries = retries
        self.retry_delay = retry_delay
        self.queue: asyncio.Queue[LearnJob] = asyncio.Queue(max_queue)
        self.stats: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = 0
        self.owns_client = False  # close the client on stop()

    # -- the hook (any thread) ---------------------------------------------

    def hook(self, user: Any, src: Any, dst: Any, uids: list[int]) -> None:
        kind = classify(src, dst)
        if kind is None or not uids or not self._running:
            return
        job = LearnJob(kind, user, dst.id, dst.uidnext, len(uids))
        try:
            self.loop.call_soon_threadsafe(self._enqueue, job)
        except RuntimeError:  # the loop is closed: the service is stopping
            pass

    def _enqueue(self, job: LearnJob) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats["dropped"] += job.count
            log.warning("learning queue full: %d message(s) of %s not learned", job.count, job.user.email)
            return
        self._pending += 1
        self._idle.clear()

    # -- the worker --------------------------------------------------------

    def start(self) -> None:
        self._running = True
        if self._task is None:
            self._task = self.loop.create_task(self._run(), name="antispam-learner")

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._learn(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop learning
                self.stats["failed"] += job.count
                log.warning("learning %s for %s failed: %s", job.kind, job.user.email, exc)
            finally:
                self._pending -= 1
                if self._pending <= 0:
                    self._pending = 0
                    self._idle.set()

    def _find(self, job: LearnJob) -> list[Any]:
        """The moved messages in the destination (blocking)."""
        # an index range from the pre-move uidnext; other deliveries may have come in between
        msgs = self.store.mail.messages(job.mailbox_id, range(job.first_uid, job.first_uid + job.count + 1000))
        if not msgs:
            return []
        by_modseq: dict[int, list[Any]] = defaultdict(list)
        for m in msgs:
            by_modseq[m.modseq].append(m)
        for group in by_modseq.values():
            if len(group) == job.count:
                return sorted(group, key=lambda m: m.uid)
        return sorted(msgs, key=lambda m: m.uid)[: job.count]

    def _read(self, job: LearnJob, msg: Any) -> bytes | None:
        if msg.size > self.max_size:
            return None
        return self.store.mail.read(job.user, msg)

    async def _learn(self, job: LearnJob) -> None:
        loop = asyncio.get_running_loop()
        msgs = await loop.run_in_executor(self.executor, self._find, job)
        missing = job.count - len(msgs)
        if missing > 0:
            self.stats["gone"] += missing  # expunged before we got to them
        retry = 0
        for msg in msgs:
            raw = await loop.run_in_executor(self.executor, self._read, job, msg)
            if raw is None:
                self.stats["too_large"] += 1
                continue
            try:
                result = await self.client.learn(job.kind, raw)
            except RspamdError as exc:
                retry += 1
                self.stats["failed"] += 1
                log.info("learning %s for %s: %s", job.kind, job.user.email, exc)
                continue
            if result.learned:
                self.stats[job.kind] += 1
            elif result.already:
                self.stats["already"] += 1
            else:
                self.stats["skipped"] += 1
        if retry and job.attempt < self.retries:
            # rspamd was down: try the whole job again later (already-learned ones are cheap no-ops)
            self.stats["failed"] -= retry
            self.stats["retried"] += retry
            loop.call_later(self.retry_delay * (job.attempt + 1), self._enqueue,
                            LearnJob(job.kind, job.user, job.mailbox_id, job.first_uid, job.count, job.attempt + 1))

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty (tests, shutdown); True if it emptied in time."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self, timeout: float = 5.0) -> None:
        self._running = False
        await self.drain(timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.owns_client:
            await self.client.close()
