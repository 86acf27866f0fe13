"""The IMAP connection: framing, command dispatch, states, IDLE.

Framing reads lines and literals with limits checked before anything is
buffered: a line longer than ``max_line_length`` ends the connection; a
synchronising literal over its limit is refused without the ``+`` (so the
client never sends it), a non-synchronising one is read and thrown away,
counted, never stored. Before login a literal may hold at most
``preauth_literal`` bytes. Literals stay in memory (never spooled to disk).

Commands run one at a time, in order. After STARTTLS, AUTHENTICATE and IDLE
the framer holds: bytes pipelined after STARTTLS are discarded (the
STARTTLS-injection class), the lines after AUTHENTICATE and IDLE go to that
command. Command handlers live in the mixins of ``cmd_auth``,
``cmd_mailbox`` and ``cmd_message``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from storage.errors import StoreError

from .cmd_auth import AuthCommands
from .cmd_mailbox import MailboxCommands
from .cmd_message import MessageCommands
from .cmd_sort import SortCommands
from .conn import Connection
from .login import REVOKED_TEXT
from .parser import Args, ParseError, split_tag, tokenize
from .replies import Reply, store_error
from .selected import MailboxGone, Selected, read_changes

log = logging.getLogger("imapd")

_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}$")
INTERACTIVE = {"STARTTLS", "AUTHENTICATE", "IDLE"}
# commands during which an EXPUNGE must not be sent (RFC 3501 7.4.1)
NO_EXPUNGE = {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}


@dataclass
class Command:
    tag: str
    name: str
    sub: str
    parts: list[bytes]
    reject: bytes | None = None


class ImapConnection(AuthCommands, MailboxCommands, MessageCommands, SortCommands, Connection):
    protocol_name = "imap"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._buf = bytearray()
        self._pos = 0
        self._parts: list[bytes] | None = None
        self._head: tuple[str, str, str] | None = None
        self._size = 0
        self._lit_left = 0
        self._lit: bytearray | None = None
        self._lit_discard = False
        self._reject: bytes | None = None
        self._queue: deque[Command] = deque()
        self._running = False
        self._hold = False
        self._want_line: asyncio.Future | None = None
        self._read_paused = False
        self.idling: str | None = None  # tag of the IDLE in progress
        self._executing: str | None = None
        self._final: bytes | None = None
        self._idle_task: asyncio.Task | None = None
        self._sync_lock = asyncio.Lock()
        self.selected: Selected | None = None
        self.condstore = False
        self.qresync = False
        self.bad_commands = 0
        self.auth_failures = 0

    # ------------------------------------------------------------ greeting
    def greet(self) -> None:
        self.send(b"* OK [CAPABILITY " + self.capabilities() + b"] " + self.shared.hostname.encode() + b" IMAP4rev1 ready\r\n")

    def close(self, last: bytes | None = None) -> None:
        if self._final is not None and not self.closing:
            final, self._final = self._final, None  # the command's reply goes before the BYE
            last = final + (last or b"")
        super().close(last)

    def refuse_busy(self) -> None:
        self.close(b"* BYE [UNAVAILABLE] Too many connections from your address\r\n")

    def bye_text(self, text: str) -> bytes:
        return b"* BYE " + text.encode() + b"\r\n"

    def revoked_text(self, reason: str) -> bytes:
        code, text = REVOKED_TEXT.get(reason, REVOKED_TEXT["ended"])
        return b"* BYE " + (f"[{code}] " if code else "").encode() + text.encode() + b"\r\n"

    def keepalive(self) -> None:
        self.last_keepalive = time.monotonic()
        self.send(b"* OK Still here\r\n")

    def capabilities(self) -> bytes:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "UIDPLUS",
                "MOVE", "CHILDREN", "LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE", "CREATE-SPECIAL-USE",
                "CONDSTORE", "QRESYNC", "ESEARCH", "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
                "BINARY", "STATUS=SIZE", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",
                f"APPENDLIMIT={self.shared.limits.max_literal_size}"]
        if self.user is None:
            if self.secure or not self.starttls_allowed:
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps += ["STARTTLS", "LOGINDISABLED"]
        return " ".join(caps).encode()

    def cleanup(self) -> None:
        if self.selected is not None and self.shared.watcher is not None:
            self.shared.watcher.unwatch(self.selected.id, self)
        self.selected = None
        if self._want_line is not None and not self._want_line.done():
            self._want_line.set_exception(ConnectionError("connection lost"))

    # ------------------------------------------------------------- framing
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.last_activity = time.monotonic()
        if self.closing:
            return
        self._buf += data
        self._frame()

    def _frame(self) -> None:
        limits = self.shared.limits
        buf = self._buf
        while not self.closing:
            if self._lit_left:
                avail = len(buf) - self._pos
                if not avail:
                    break
                take = min(avail, self._lit_left)
                if not self._lit_discard:
                    assert self._lit is not None
                    self._lit += buf[self._pos:self._pos + take]
                self._pos += take
                self._lit_left -= take
                if self._lit_left:
                    break
                if not self._lit_discard and self._parts is not None:
                    assert self._lit is not None
                    self._parts.append(bytes(self._lit))
                self._lit = None
                continue
            if self._hold and self._want_line is None and self.idling is None:
                if len(buf) - self._pos > limits.max_line_length * 2:
                    self.close(b"* BYE Too much input while waiting\r\n")
                break
            nl = buf.find(b"\n", self._pos)
            if nl < 0:
                if len(buf) - self._pos > limits.max_line_length:
                    self.close(b"* BYE [TOOBIG] Command line too long\r\n")
                break
            end = nl - 1 if nl > self._pos and buf[nl - 1] == 0x0D else nl
            line = bytes(buf[self._pos:end])
            self._pos = nl + 1
            if len(line) > limits.max_line_length:
                self.close(b"* BYE [TOOBIG] Command line too long\r\n")
                break
            if self._want_line is not None:
                fut, self._want_line = self._want_line, None
                fut.set_result(line)
                continue
            if self.idling is not None:
                self._end_idle(line)
                continue
            self._line(line)
        if self._pos:
            del buf[:self._pos]
            self._pos = 0
        self._flow_control()

    def _flow_control(self) -> None:
        busy = len(self._queue) > 50 or len(self._buf) > 4 * self.shared.limits.max_line_length
        if busy and not self._read_paused and not self.lost:
            self._read_paused = True
            self.transport.pauseProducing()
        elif not busy and self._read_paused and not self.lost:
            self._read_paused = False
            self.transport.resumeProducing()

    def _literal_limit(self) -> tuple[int, int]:
        """(largest literal, largest whole command) for the command being read."""
        lim = self.shared.limits
        if self.user is None:
            return lim.preauth_literal, lim.preauth_literal * 2 + lim.max_line_length
        if self._head is not None and self._head[1] == "APPEND":
            return lim.max_literal_size, lim.max_literal_size + lim.max_line_length
        return lim.max_line_length, lim.max_line_length * 4

    def _line(self, line: bytes) -> None:
        if self._parts is None:
            self._parts = []
            self._size = 0
            self._reject = None
            try:
                self._head = split_tag(line)
            except ParseError:
                self._head = None
        self._size += len(line)
        m = _LITERAL.search(line)
        if m is None:
            self._parts.append(line)
            self._finish_command()
            return
        n, nonsync = int(m.group(1)), bool(m.group(2))
        text = line[:m.start()]
        if text.endswith(b"~"):  # literal8 (RFC 3516): binary content, kept as it is
            text = text[:-1]
        self._parts.append(text)
        one, whole = self._literal_limit()
        too_big = n > one or self._size + n > whole
        if too_big and self._reject is None:
            is_append = self._head is not None and self._head[1] == "APPEND"
            self._reject = (b"NO [TOOBIG] Message too large (APPENDLIMIT " + str(one).encode() + b")" if is_append
                            else b"BAD [TOOBIG] Literal too large")
            if not nonsync:
                # refused without "+": the client must not send the literal
                self._finish_command()
                return
            if self.user is None:
                self.close(b"* BYE [TOOBIG] Literal too large before login\r\n")
                return
        if self._reject is not None and not nonsync:
            self._finish_command()  # already refused: answer now rather than wait for a literal we never asked for
            return
        self._size += n
        self._lit_left = n
        self._lit_discard = self._reject is not None
        self._lit = None if self._lit_discard else bytearray()
        if not nonsync and self._reject is None:
            self.send(b"+ Ready for literal data\r\n")
        if n == 0 and not self._lit_discard:
            self._parts.append(b"")
            self._lit = None

    def _finish_command(self) -> None:
        parts, head, reject = self._parts or [b""], self._head, self._reject
        self._parts, self._head, self._reject = None, None, None
        if head is None:
            tag = parts[0].split(b" ", 1)[0].decode("ascii", "replace") if parts[0] else "*"
            if not tag or not re.match(r"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5e-\x7a\x7c\x7e]{1,64}$", tag):
                tag = "*"
            cmd = Command(tag, "", "", parts, reject or b"BAD Missing or invalid command")
        else:
            cmd = Command(head[0], head[1], head[2], parts, reject)
        self._queue.append(cmd)
        if cmd.reject is None and cmd.name in INTERACTIVE:
            self._hold = True
        if not self._running:
            self._running = True
            self.shared.loop.create_task(self._run_queue())

    def read_line(self) -> asyncio.Future:
        """The next line from the client (for AUTHENTICATE); resolves when it arrives."""
        fut = self.shared.loop.create_future()
        self._want_line = fut
        self._frame()
        return fut

    def release_hold(self) -> None:
        self._hold = False
        if not self.closing:
            self._frame()

    # ------------------------------------------------------------ dispatch
    async def _run_queue(self) -> None:
        try:
            while self._queue and not self.closing:
                cmd = self._queue.popleft()
                self._flow_control()
                await self._execute(cmd)
                await self.drain()
        except ConnectionError:
            pass
        except Exception:  # noqa: BLE001 - a bug must not kill the server
            log.exception("IMAP session failed")
            self.close(b"* BYE [SERVERBUG] Internal error\r\n")
        finally:
            self._running = False
        if self._queue and not self.closing:
            self._running = True
            self.shared.loop.create_task(self._run_queue())

    def tagged(self, tag: str, text: bytes) -> None:
        """The command's final reply; held back until the untagged updates that must precede it are sent."""
        line = tag.encode() + b" " + text + b"\r\n"
        if self._executing == tag and self._final is None:
            self._final = line
        else:
            self.send(line)

    async def _execute(self, cmd: Command) -> None:
        self._executing, self._final = cmd.tag, None
        try:
            await self._dispatch(cmd)
        finally:
            self._executing = None
            if self._final is not None:
                final, self._final = self._final, None
                self.send(final)

    async def _dispatch(self, cmd: Command) -> None:
        if cmd.reject is not None:
            self._count_bad(cmd.reject)
            self.tagged(cmd.tag, cmd.reject)
            if cmd.name in INTERACTIVE:
                self.release_hold()
            return
        name = cmd.name
        uid = False
        if name == "UID":
            name, uid = cmd.sub, True
            if name not in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE", "SORT", "THREAD"):
                self._count_bad(b"BAD")
                self.tagged(cmd.tag, b"BAD Unknown UID command")
                return
        entry = self.COMMANDS.get(name)
        if entry is None:
            self._count_bad(b"BAD")
            self.tagged(cmd.tag, b"BAD Unknown command")
            return
        method, state = entry
        if state == "noauth" and self.user is not None:
            self.tagged(cmd.tag, b"BAD Already logged in")
            return
        if state in ("auth", "selected") and self.user is None:
            self.tagged(cmd.tag, b"BAD Log in first")
            return
        if state == "selected" and self.selected is None:
            self.tagged(cmd.tag, b"BAD No mailbox selected")
            return
        try:
            tokens = tokenize(cmd.parts)
            args = Args(tokens, 3 if uid else 2)
            if uid:
                await method(self, cmd.tag, args, True)
            else:
                await method(self, cmd.tag, args)
        except ParseError as exc:
            self._count_bad(b"BAD")
            self.tagged(cmd.tag, b"BAD " + str(exc).encode("utf-8", "replace")[:200])
        except Reply as r:
            self.tagged(cmd.tag, r.text)
        except StoreError as exc:
            self.tagged(cmd.tag, store_error(exc))
        except MailboxGone:
            self.close(b"* BYE Selected mailbox was deleted, have to disconnect\r\n")
            return
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001 - one bad command must not end the session
            log.exception("IMAP %s failed", name)
            self.tagged(cmd.tag, b"NO [SERVERBUG] Internal server error")
        finally:
            if name in INTERACTIVE and self.idling is None:
                self.release_hold()
        if self.selected is not None and not self.closing and self.idling is None:
            try:
                await self.sync(allow_expunge=(uid or name not in NO_EXPUNGE))
            except MailboxGone:
                self.close(b"* BYE Selected mailbox was deleted, have to disconnect\r\n")

    def _count_bad(self, text: bytes) -> None:
        if text.startswith(b"BAD"):
            self.bad_commands += 1
            if self.bad_commands >= self.shared.limits.max_bad_commands:
                self.close(b"* BYE Too many invalid commands\r\n")

    # ------------------------------------------------------------- changes
    def refresh_view(self, sel: Selected, *, allow_expunge: bool) -> list[bytes]:
        """Blocking (a worker): bring the view up to date; the untagged responses to send."""
        sel.dirty = False
        ch = read_changes(self.shared.store, sel.id, sel.modseq, sel.version)
        return sel.apply(ch, allow_expunge=allow_expunge, claim_recent=self.shared.watcher.claim_recent)

    async def sync(self, *, allow_expunge: bool, force: bool = False) -> None:
        """Send what changed in the selected mailbox (others' appends, flags, expunges)."""
        sel = self.selected
        if sel is None:
            return
        async with self._sync_lock:
            if self.selected is not sel:
                return
            if sel.dirty or force:
                if self.shared.inline_reads:
                    # one indexed row on SQLite (~0.1 ms): cheaper than a trip to a worker
                    sel.dirty = False
                    if self.shared.store.mail.versions([sel.id]).get(sel.id) == sel.version:
                        if allow_expunge and sel.pending_expunge:
                            self.send_many(sel.flush_expunges())
                        return
                lines = await self.run(lambda: self.refresh_view(sel, allow_expunge=allow_expunge))
                if self.selected is not sel:
                    return
            elif allow_expunge and sel.pending_expunge:
                lines = sel.flush_expunges()
            else:
                return
            self.send_many(lines)

    def mark_dirty(self, mailbox_id: int) -> None:
        """Called by the watcher, from any thread: the mailbox changed, read it at the next chance."""
        sel = self.selected
        if sel is not None and sel.id == mailbox_id:
            sel.dirty = True

    def mailbox_changed(self, mailbox_id: int) -> None:
        """Called by the watcher (on the reactor) when the selected mailbox changed."""
        if self.idling is not None and (self._idle_task is None or self._idle_task.done()):
            self._idle_task = self.shared.loop.create_task(self._idle_sync())

    async def _idle_sync(self) -> None:
        try:
            await self.sync(allow_expunge=True)
        except MailboxGone:
            self.close(b"* BYE Selected mailbox was deleted, have to disconnect\r\n")
        except ConnectionError:
            pass
        except Exception:  # noqa: BLE001
            log.exception("IDLE update failed")

    async def c_idle(self, tag: str, args: Args) -> None:
        args.end()
        self.send(b"+ idling\r\n")
        self.idling = tag
        if self.selected is not None:
            self.selected.dirty = True
            self._idle_task = self.shared.loop.create_task(self._idle_sync())

    def _end_idle(self, line: bytes) -> None:
        tag = self.idling
        self.idling = None
        task = self._idle_task

        async def finish() -> None:
            if task is not None and not task.done():
                await asyncio.gather(task, return_exceptions=True)
            if line.strip().upper() == b"DONE":
                self.tagged(tag or "*", b"OK IDLE terminated")
            else:
                self._count_bad(b"BAD")
                self.tagged(tag or "*", b"BAD Expected DONE")
            self.release_hold()

        self.shared.loop.create_task(finish())

    # -------------------------------------------------------------- simple
    async def c_capability(self, tag: str, args: Args) -> None:
        args.end()
        self.send(b"* CAPABILITY " + self.capabilities() + b"\r\n")
        self.tagged(tag, b"OK CAPABILITY completed")

    async def c_noop(self, tag: str, args: Args) -> None:
        args.end()
        if self.selected is not None:
            await self.sync(allow_expunge=True, force=True)
        self.tagged(tag, b"OK NOOP completed")

    async def c_logout(self, tag: str, args: Args) -> None:
        args.end()
        self.close(b"* BYE Logging out\r\n" + tag.encode() + b" OK LOGOUT completed\r\n")

    async def c_namespace(self, tag: str, args: Args) -> None:
        args.end()
        self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        self.tagged(tag, b"OK NAMESPACE completed")

    async def c_enable(self, tag: str, args: Args) -> None:
        enabled = []
        if not args.more():
            raise ParseError("ENABLE needs capability names")
        while args.more():
            cap = args.atom("capability").upper()
            if cap == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(cap)
            elif cap == "QRESYNC" and not self.qresync:
                self.qresync = True
                if not self.condstore:
                    self.condstore = True
                enabled.append(cap)
        if self.selected is not None:
            self.selected.condstore = self.condstore
            self.selected.qresync = self.qresync
        self.send(b"* ENABLED" + b"".join(b" " + c.encode() for c in enabled) + b"\r\n")
        self.tagged(tag, b"OK ENABLE completed")

    def enable_condstore(self) -> None:
        self.condstore = True
        if self.selected is not None:
            self.selected.condstore = True

    def deselect(self) -> None:
        if self.selected is not None:
            self.shared.watcher.unwatch(self.selected.id, self)
            self.selected = None

    COMMANDS: dict[str, tuple[Any, str]] = {}


ImapConnection.COMMANDS = {
    "CAPABILITY": (ImapConnection.c_capability, "any"),
    "NOOP": (ImapConnection.c_noop, "any"),
    "LOGOUT": (ImapConnection.c_logout, "any"),
    "ID": (ImapConnection.c_id, "any"),
    "STARTTLS": (ImapConnection.c_starttls, "noauth"),
    "LOGIN": (ImapConnection.c_login, "noauth"),
    "AUTHENTICATE": (ImapConnection.c_authenticate, "noauth"),
    "ENABLE": (ImapConnection.c_enable, "auth"),
    "NAMESPACE": (ImapConnection.c_namespace, "auth"),
    "IDLE": (ImapConnection.c_idle, "auth"),
    "SELECT": (ImapConnection.c_select, "auth"),
    "EXAMINE": (ImapConnection.c_examine, "auth"),
    "CREATE": (ImapConnection.c_create, "auth"),
    "DELETE": (ImapConnection.c_delete, "auth"),
    "RENAME": (ImapConnection.c_rename, "auth"),
    "SUBSCRIBE": (ImapConnection.c_subscribe, "auth"),
    "UNSUBSCRIBE": (ImapConnection.c_unsubscribe, "auth"),
    "LIST": (ImapConnection.c_list, "auth"),
    "LSUB": (ImapConnection.c_lsub, "auth"),
    "STATUS": (ImapConnection.c_status, "auth"),
    "APPEND": (ImapConnection.c_append, "auth"),
    "GETQUOTA": (ImapConnection.c_getquota, "auth"),
    "GETQUOTAROOT": (ImapConnection.c_getquotaroot, "auth"),
    "SETQUOTA": (ImapConnection.c_setquota, "auth"),
    "CHECK": (ImapConnection.c_check, "selected"),
    "CLOSE": (ImapConnection.c_close, "selected"),
    "UNSELECT": (ImapConnection.c_unselect, "selected"),
    "EXPUNGE": (ImapConnection.c_expunge, "selected"),
    "SEARCH": (ImapConnection.c_search, "selected"),
    "SORT": (ImapConnection.c_sort, "selected"),
    "THREAD": (ImapConnection.c_thread, "selected"),
    "FETCH": (ImapConnection.c_fetch, "selected"),
    "STORE": (ImapConnection.c_store, "selected"),
    "COPY": (ImapConnection.c_copy, "selected"),
    "MOVE": (ImapConnection.c_move, "selected"),
}
