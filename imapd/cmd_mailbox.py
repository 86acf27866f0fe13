"""IMAP commands on mailboxes: SELECT/EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE,
LIST/LSUB, STATUS, APPEND and QUOTA.

Names travel in modified UTF-7 (raw UTF-8 is accepted too) and are checked
by ``storage.addresses.validate_mailbox_name`` (no control characters, no
``..`` or empty levels); every lookup is by (this user, name), so no name
reaches another account's mailboxes.
"""

from __future__ import annotations

import bisect
from typing import Any

from storage.addresses import validate_mailbox_name
from storage.errors import ConflictError, InvalidInputError, NotFoundError, StoreError
from storage.flags import split_flags

from .listing import DELIM, Pattern, entries
from .parser import Args, ParseError, format_uidset, parse_seqset, upper_atoms
from .replies import Reply, store_error
from .selected import Selected
from .wire import astring, decode_mailbox, encode_mailbox, flag_list, parse_date_time

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE")


def mailbox_name(raw: bytes) -> str:
    try:
        name = decode_mailbox(raw)
    except ValueError:
        raise Reply(b"NO [CANNOT] Invalid mailbox name encoding") from None
    if name.upper() == "INBOX":
        return "INBOX"
    try:
        return validate_mailbox_name(name)
    except InvalidInputError as exc:
        raise Reply(b"NO [CANNOT] " + str(exc).encode("utf-8", "replace")[:200]) from None


def wire_name(name: str) -> bytes:
    return astring(encode_mailbox(name))


class MailboxCommands:
    # ------------------------------------------------------------ SELECT
    async def c_select(self: Any, tag: str, args: Args) -> None:
        await self._select(tag, args, readonly=False)

    async def c_examine(self: Any, tag: str, args: Args) -> None:
        await self._select(tag, args, readonly=True)

    async def _select(self: Any, tag: str, args: Args, *, readonly: bool) -> None:
        raw_name = args.astring("mailbox")
        qresync_args = None
        if args.more():
            for p in _params(args.list("select parameters")):
                if p[0] == "CONDSTORE":
                    self.enable_condstore()
                elif p[0] == "QRESYNC":
                    if not self.qresync:
                        raise ParseError("QRESYNC must be enabled first")
                    qresync_args = p[1]
                else:
                    raise ParseError("Unknown SELECT parameter")
        args.end()
        if self.selected is not None:  # even a SELECT that fails leaves no mailbox selected
            self.deselect()
            if self.qresync:
                self.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
        name = mailbox_name(raw_name)
        store, user = self.shared.store, self.user

        views = self.shared.views

        watcher = self.shared.watcher
        condstore, qresync = self.condstore, self.qresync

        def work() -> tuple:
            mb = store.mail.get_mailbox(user.id, name)
            uids, flags, modseqs, (keywords, first_unseen) = views.open(store, mb)
            sel = Selected(mb, readonly, uids, flags, modseqs, condstore=condstore, qresync=qresync, shared=True)
            if not readonly:
                floor = bisect.bisect_left(uids, watcher.recent_floor(mb.id, mb.uidnext))
                sel.recent = watcher.claim_recent(mb.id, list(uids[floor:]), mb.uidnext)
            qr = _qresync_changes(store, mb, qresync_args) if qresync_args is not None else None
            return mb, sel, keywords, first_unseen, qr

        try:
            mb, sel, keywords, first_unseen, qr = await self.run(work)
        except NotFoundError:
            raise Reply(b"NO [NONEXISTENT] Mailbox does not exist") from None
        out = [
            b"* FLAGS " + flag_list([*SYSTEM_FLAGS, *keywords]) + b"\r\n",
            b"* OK [PERMANENTFLAGS " + (b"()" if readonly else flag_list([*SYSTEM_FLAGS, *keywords, "\\*"]))
            + b"] Flags permitted\r\n",
            b"* %d EXISTS\r\n" % sel.exists,
            b"* %d RECENT\r\n" % len(sel.recent),
        ]
        if first_unseen:
            out.append(b"* OK [UNSEEN %d] First unseen\r\n" % first_unseen)
        out += [
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mb.uidvalidity,
            b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mb.uidnext,
            b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % mb.highestmodseq,
        ]
        if qr is not None:
            vanished, changed = qr
            if vanished:
                out.append(b"* VANISHED (EARLIER) " + format_uidset(vanished).encode() + b"\r\n")
            for m in changed:
                seq = sel.seq_of(m.uid)
                if seq is not None:
                    out.append(sel.flags_line(seq, m.uid, m.flags, m.modseq))
        self.send_many(out)
        self.selected = sel
        watcher.watch(mb.id, self, sel.version)
        self.tagged(tag, b"OK [READ-ONLY] EXAMINE completed" if readonly else b"OK [READ-WRITE] SELECT completed")

    # ---------------------------------------------------- create / delete
    async def c_create(self: Any, tag: str, args: Args) -> None:
        raw = args.astring("mailbox")
        use = None
        if args.more():
            for p in _params(args.list("create parameters")):
                if p[0] != "USE" or not isinstance(p[1], list) or len(p[1]) != 1:
                    raise ParseError("Unknown CREATE parameter")
                use = str(p[1][0])
                if use.lower() not in {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent", "\\trash"}:
                    raise Reply(b"NO [USEATTR] Unsupported special use")
                use = "\\" + use[1:].capitalize()
        args.end()
        if raw.endswith(DELIM.encode()):
            raw = raw.rstrip(DELIM.encode())
        name = mailbox_name(raw)
        if name == "INBOX":
            raise Reply(b"NO [ALREADYEXISTS] INBOX always exists")
        store, user = self.shared.store, self.user

        def work() -> None:
            existing = {mb.name for mb in store.mail.list_mailboxes(user.id)}
            if name in existing:
                raise ConflictError("mailbox already exists")
            parts = name.split(DELIM)
            for k in range(1, len(parts)):
                parent = DELIM.join(parts[:k])
                if parent not in existing and parent != "INBOX":
                    store.mail.create_mailbox(user.id, parent)
            store.mail.create_mailbox(user.id, name, use)

        try:
            await self.run(work)
        except ConflictError as exc:
            if use and exc.params.get("special_use"):
                raise Reply(b"NO [USEATTR] " + str(exc).encode()[:200]) from None
            raise
        self.tagged(tag, b"OK CREATE completed")

    async def c_delete(self: Any, tag: str, args: Args) -> None:
        name = mailbox_name(args.astring("mailbox"))
        args.end()
        if name == "INBOX":
            raise Reply(b"NO [CANNOT] INBOX cannot be deleted")
        if self.selected is not None and self.selected.mailbox.name == name:
            self.deselect()
        await self.run(self.shared.store.mail.delete_mailbox, self.user.id, name)
        self.tagged(tag, b"OK DELETE completed")

    async def c_rename(self: Any, tag: str, args: Args) -> None:
        old = mailbox_name(args.astring("mailbox"))
        new = mailbox_name(args.astring("new name").rstrip(DELIM.encode()))
        args.end()
        await self.run(self.shared.store.mail.rename_mailbox, self.user.id, old, new)
        self.tagged(tag, b"OK RENAME completed")

    async def c_subscribe(self: Any, tag: str, args: Args) -> None:
        name = mailbox_name(args.astring("mailbox"))
        args.end()
        await self.run(self.shared.store.mail.subscribe, self.user.id, name, True)
        self.tagged(tag, b"OK SUBSCRIBE completed")

    async def c_unsubscribe(self: Any, tag: str, args: Args) -> None:
        name = mailbox_name(args.astring("mailbox"))
        args.end()
        try:
            await self.run(self.shared.store.mail.subscribe, self.user.id, name, False)
        except NotFoundError:
            pass  # unsubscribing a name that no longer exists is fine
        self.tagged(tag, b"OK UNSUBSCRIBE completed")

    # ---------------------------------------------------------------- LIST
    async def c_list(self: Any, tag: str, args: Args) -> None:
        select_opts: list[str] = []
        if isinstance(args.peek(), list):
            select_opts = upper_atoms(args.list("selection options"))
        reference = _text(args.astring("reference"))
        pat = args.next("pattern")
        if isinstance(pat, list) and not pat:
            raise ParseError("Empty pattern list")
        patterns = [_text(p) for p in (pat if isinstance(pat, list) else [pat])]
        return_opts: list[Any] = []
        if args.more():
            if str(args.atom("RETURN")).upper() != "RETURN":
                raise ParseError("Expected RETURN")
            return_opts = args.list("return options")
        args.end()
        for o in select_opts:
            if o not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                raise ParseError("Unknown LIST selection option")
        status_items: list[str] = []
        want_subscribed = False
        k = 0
        while k < len(return_opts):
            o = return_opts[k]
            up = o.upper() if isinstance(o, str) else ""
            if up == "STATUS" and k + 1 < len(return_opts) and isinstance(return_opts[k + 1], list):
                status_items = upper_atoms(return_opts[k + 1])
                k += 1
            elif up == "SUBSCRIBED":
                want_subscribed = True
            elif up not in ("CHILDREN", "SPECIAL-USE"):
                raise ParseError("Unknown LIST return option")
            k += 1
        for it in status_items:
            if it not in STATUS_ITEMS:
                raise ParseError("Unknown STATUS item")
        if len(patterns) == 1 and patterns[0] == "":
            self.send(b'* LIST (\\Noselect) "/" ""\r\n')
            self.tagged(tag, b"OK LIST completed")
            return
        await self._list(tag, "LIST", reference, patterns, subscribed_only="SUBSCRIBED" in select_opts,
                         special_only="SPECIAL-USE" in select_opts, want_subscribed=want_subscribed,
                         status_items=status_items)

    async def c_lsub(self: Any, tag: str, args: Args) -> None:
        reference = _text(args.astring("reference"))
        pattern = _text(args.astring("pattern"))
        args.end()
        await self._list(tag, "LSUB", reference, [pattern], subscribed_only=True)

    async def _list(self: Any, tag: str, verb: str, reference: str, patterns: list[str], *, subscribed_only: bool = False,
                    special_only: bool = False, want_subscribed: bool = False, status_items: list[str] | None = None) -> None:
        store, user = self.shared.store, self.user
        matchers = [Pattern(reference, p) for p in patterns]

        def work() -> list[bytes]:
            mailboxes = store.mail.list_mailboxes(user.id)
            out = []
            for e in entries(mailboxes, subscribed_only=subscribed_only, special_only=special_only,
                             want_subscribed=want_subscribed):
                if not any(m.match(e.name) for m in matchers):
                    continue
                attrs = [a for a in e.attrs if verb == "LIST" or a != "\\Subscribed"]
                out.append(b"* " + verb.encode() + b" (" + " ".join(attrs).encode() + b') "/" ' + wire_name(e.name) + b"\r\n")
                if status_items and e.exists:
                    out.append(_status_line(store, e.mailbox, status_items))
            return out

        self.send_many(await self.run(work))
        self.tagged(tag, b"OK " + verb.encode() + b" completed")

    # -------------------------------------------------------------- STATUS
    async def c_status(self: Any, tag: str, args: Args) -> None:
        name = mailbox_name(args.astring("mailbox"))
        items = upper_atoms(args.list("status items"))
        args.end()
        if not items:
            raise ParseError("STATUS needs items")
        for it in items:
            if it not in STATUS_ITEMS:
                raise ParseError("Unknown STATUS item")
        if "HIGHESTMODSEQ" in items:
            self.enable_condstore()
        store, user = self.shared.store, self.user

        def work() -> bytes:
            mb = store.mail.get_mailbox(user.id, name)
            return _status_line(store, mb, items)

        try:
            self.send(await self.run(work))
        except NotFoundError:
            raise Reply(b"NO [NONEXISTENT] Mailbox does not exist") from None
        self.tagged(tag, b"OK STATUS completed")

    # -------------------------------------------------------------- APPEND
    async def c_append(self: Any, tag: str, args: Args) -> None:
        name = mailbox_name(args.astring("mailbox"))
        flags: list[str] = []
        if isinstance(args.peek(), list):
            raw_flags = args.list("flags")
            for f in raw_flags:
                if not isinstance(f, str):
                    raise ParseError("Flags are atoms")
                flags.append(f)
        when = None
        rest = args.t[args.i:]
        if len(rest) == 2:
            date = args.next()
            if not isinstance(date, bytes):
                raise ParseError("Expected a quoted date-time")
            try:
                when = parse_date_time(date.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raise ParseError("Invalid date-time") from None
        message = args.next("message literal")
        args.end()
        if not isinstance(message, bytes):
            raise ParseError("The message must be a literal")
        if not message:
            raise Reply(b"NO Cannot save an empty message")
        try:
            split_flags(flags)
        except ValueError as exc:
            raise ParseError(f"Invalid flag: {exc}") from None
        store, user = self.shared.store, self.user

        def work() -> Any:
            return store.append(user, name, message, flags=tuple(flags), internal_date=when)

        try:
            report = await self.run(work)
        except NotFoundError:
            raise Reply(b"NO [TRYCREATE] Mailbox does not exist") from None
        except StoreError as exc:
            raise Reply(store_error(exc)) from None
        stored = report.stored[0]
        self.tagged(tag, b"OK [APPENDUID %d %d] APPEND completed" % (stored.uidvalidity, stored.uid))

    # --------------------------------------------------------------- QUOTA
    async def c_getquotaroot(self: Any, tag: str, args: Args) -> None:
        name = mailbox_name(args.astring("mailbox"))
        args.end()
        store, user = self.shared.store, self.user

        def work() -> Any:
            store.mail.get_mailbox(user.id, name)
            return store.directory.get_user_by_id(user.id)

        try:
            fresh = await self.run(work)
        except NotFoundError:
            raise Reply(b"NO [NONEXISTENT] Mailbox does not exist") from None
        self.send(b"* QUOTAROOT " + wire_name(name) + b' ""\r\n' + _quota_line(fresh))
        self.tagged(tag, b"OK GETQUOTAROOT completed")

    async def c_getquota(self: Any, tag: str, args: Args) -> None:
        root = args.astring("quota root")
        args.end()
        if root != b"":
            raise Reply(b"NO [NONEXISTENT] No such quota root")
        fresh = await self.run(self.shared.store.directory.get_user_by_id, self.user.id)
        self.send(_quota_line(fresh))
        self.tagged(tag, b"OK GETQUOTA completed")

    async def c_setquota(self: Any, tag: str, args: Args) -> None:
        raise Reply(b"NO [NOPERM] Quotas are set by the administrator")


def _text(raw: object) -> str:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes):
        raise ParseError("Expected a string")
    try:
        return decode_mailbox(raw)
    except ValueError:
        raise Reply(b"NO [CANNOT] Invalid mailbox name encoding") from None


def _params(items: list) -> list[tuple[str, Any]]:
    """``(CONDSTORE QRESYNC (1 2))`` -> [("CONDSTORE", None), ("QRESYNC", [1, 2])]."""
    out: list[tuple[str, Any]] = []
    k = 0
    while k < len(items):
        name = items[k]
        if not isinstance(name, str):
            raise ParseError("Invalid parameter")
        value = None
        if k + 1 < len(items) and not isinstance(items[k + 1], str):
            value = items[k + 1]
            k += 1
        out.append((name.upper(), value))
        k += 1
    return out


def _qresync_changes(store: Any, mb: Any, params: Any) -> tuple[list[int], list] | None:
    """SELECT (QRESYNC (uidvalidity modseq [known-uids])): what the client missed."""
    if not isinstance(params, list) or len(params) < 2:
        raise ParseError("QRESYNC needs UIDVALIDITY and MODSEQ")
    a = Args(params)
    uidvalidity = a.number("UIDVALIDITY")
    modseq = a.number("MODSEQ")
    known = parse_seqset(a.next()) if a.more() and isinstance(a.peek(), str) else None
    if uidvalidity != mb.uidvalidity:
        return None
    changed, vanished = store.mail.changes_since(mb.id, modseq)
    if known is not None:
        ranges = known.resolve(mb.uidnext)
        vanished = [u for u in vanished if any(lo <= u <= hi for lo, hi in ranges)]
    return vanished, changed


def _status_line(store: Any, mb: Any, items: list[str]) -> bytes:
    st = None
    if any(i in ("MESSAGES", "UNSEEN", "SIZE") for i in items):
        st = store.mail.status(mb.id)
    fresh = store.mail.get_mailbox_by_id(mb.id)
    values = {
        "MESSAGES": st.messages if st else 0,
        "RECENT": 0,
        "UIDNEXT": fresh.uidnext,
        "UIDVALIDITY": fresh.uidvalidity,
        "UNSEEN": st.unseen if st else 0,
        "HIGHESTMODSEQ": fresh.highestmodseq,
        "SIZE": st.size if st else 0,
    }
    body = " ".join(f"{i} {values[i]}" for i in items)
    return b"* STATUS " + wire_name(mb.name) + b" (" + body.encode() + b")\r\n"


def _quota_line(user: Any) -> bytes:
    res = []
    if user.quota_bytes:
        res.append(f"STORAGE {(user.used_bytes + 1023) // 1024} {user.quota_bytes // 1024}")
    if user.quota_messages:
        res.append(f"MESSAGE {user.used_messages} {user.quota_messages}")
    return b'* QUOTA "" (' + " ".join(res).encode() + b")\r\n"
