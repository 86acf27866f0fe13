"""IMAP commands on messages of the selected mailbox: FETCH, STORE, SEARCH,
COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, CHECK (and their UID forms).

Each command resolves its sequence set against the session's view on the
reactor, then does the store work and the rendering in the thread pool. The
first thing that job does is read what changed since the view was last
current (one indexed row when nothing did), so FLAGS are never stale; flags
come from the view, the unchanging facts (size, dates, ENVELOPE,
BODYSTRUCTURE) from the process-wide message cache, and only body sections
open an encrypted file. FETCH of index items alone (UID, FLAGS, MODSEQ,
RFC822.SIZE, INTERNALDATE) makes no such trip: it is rendered on the reactor
(see ``indexfetch``).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from storage.errors import NotFoundError
from storage.flags import split_flags

from .fetch import (
    FetchPlan,
    Section,
    body_structure,
    date_item,
    envelope,
    parse_items,
    render_section,
)
from .indexfetch import CHUNK, FIRST_CHUNK, FlagItems, changed_since, index_only, needs_facts, render
from .parser import Args, ParseError, format_uidset, parse_seqset
from .replies import Reply
from .search import COST, BadCharset, SearchData, Searcher, parse_search
from .structure import SectionError
from .wire import literal

_STORE_ITEM = re.compile(r"^([+-]?)FLAGS(\.SILENT)?$")
MODES = {"": "set", "+": "add", "-": "remove"}


class MessageCommands:
    # ---------------------------------------------------------------- FETCH
    async def c_fetch(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        sel = self.selected
        seqset = parse_seqset(args.next("sequence set"))
        plan = parse_items(args.next("fetch attributes"))
        changedsince = None
        vanished = False
        if args.more():
            a = Args(args.list("fetch modifiers"))
            while a.more():
                m = a.atom("modifier").upper()
                if m == "CHANGEDSINCE":
                    changedsince = a.number("mod-sequence")
                elif m == "VANISHED":
                    vanished = True
                else:
                    raise ParseError("Unknown FETCH modifier")
        args.end()
        if vanished and (not uid or not self.qresync or changedsince is None):
            raise ParseError("VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE")
        if changedsince is not None:
            plan.add("MODSEQ")
        if plan.modseq:
            self.enable_condstore()
        if uid or "UID" in plan.items:  # UID first, always there for UID FETCH
            if "UID" in plan.items:
                plan.items.remove("UID")
            plan.items.insert(0, "UID")
        idxs = sel.by_uid(seqset) if uid else sel.by_seq(seqset)
        if vanished:
            ranges = seqset.resolve(sel.max_uid)
            gone = (await self.run(self.shared.store.mail.changes_since, sel.id, changedsince))[1]
            gone = [u for u in gone if any(a <= u <= b for a, b in ranges)]
            if gone:
                self.send(b"* VANISHED (EARLIER) " + format_uidset(gone).encode() + b"\r\n")
        if index_only(plan):
            await self._index_fetch(sel, idxs, plan, changedsince)
            if not self.lost:
                self.tagged(tag, b"OK FETCH completed")
            return
        if self._cheap_fetch(sel, idxs, plan):
            # a few messages, everything in memory: cheaper here than a trip to a worker
            self.send(b"".join(self._fetch_job(sel, idxs, plan, changedsince, True)))
            self.tagged(tag, b"OK FETCH completed")
            return
        # batches: the client parses one while the next is made
        step = 25 if plan.needs_blob else 5000
        try:
            for k in range(0, max(len(idxs), 1), step):
                out = await self.run(self._fetch_job, sel, idxs[k:k + step], plan, changedsince, k == 0)
                if self.lost:
                    return
                self.send(b"".join(out))
                await self.drain()
        except SectionError:
            raise Reply(b"NO [UNKNOWN-CTE] A part has an unknown content transfer encoding") from None
        self.tagged(tag, b"OK FETCH completed")

    async def _index_fetch(self: Any, sel: Any, idxs: list[int], plan: FetchPlan, changedsince: int | None) -> None:
        """FETCH of index items: rendered here on the reactor, chunk by chunk (see ``indexfetch``)."""
        if sel.dirty or changedsince is not None or "FLAGS" in plan.items or "MODSEQ" in plan.items:
            self.send_many(await self._refresh_here(sel))
        idxs = changed_since(sel, idxs, changedsince)
        if not idxs:
            return
        facts = None
        if needs_facts(plan):
            cache = self.shared.msg_cache
            uids = sel.uids
            want = [uids[i] for i in idxs]
            box = cache.peek(sel.id, sel.uidvalidity)
            if box is None or any(u not in box for u in want):
                box = await self.run(cache.load, self.shared.store, sel.id, sel.uidvalidity, want)
                if self.lost:
                    return
            facts = [box.get(u) for u in want]  # held here: an eviction meanwhile changes nothing
        flag_item = FlagItems(sel)
        k, step = 0, FIRST_CHUNK
        while k < len(idxs):
            chunk = render(sel, idxs[k:k + step], plan.items, facts[k:k + step] if facts is not None else None,
                           flag_item)
            if chunk:
                self.send(b"".join(chunk))
            k, step = k + step, CHUNK
            if k < len(idxs):
                # a turn of the loop: the transport writes this chunk, other sessions get their turn
                if self._paused:
                    await self.drain()
                else:
                    await asyncio.sleep(0)
                if self.lost:
                    return

    async def _refresh_here(self: Any, sel: Any) -> list[bytes]:
        """Bring the view up to date before a FETCH; on SQLite an unchanged mailbox costs one row read here."""
        if self.shared.inline_reads:
            sel.dirty = False
            if self.shared.store.mail.versions([sel.id]).get(sel.id) == sel.version:
                return []
        return await self.run(lambda: self.refresh_view(sel, allow_expunge=False))

    def _cheap_fetch(self: Any, sel: Any, idxs: list[int], plan: FetchPlan) -> bool:
        """True if a FETCH needs no file, no structure and no index read beyond the mailbox's version."""
        if not self.shared.inline_reads or plan.needs_blob or len(idxs) > 200:
            return False
        box = self.shared.msg_cache.peek(sel.id, sel.uidvalidity)
        if box is None:
            return False
        for i in idxs:
            m = box.get(sel.uids[i])
            if m is None or (plan.needs_meta and _needs_meta(m, plan)):
                return False
        return True

    def _fetch_job(self: Any, sel: Any, idxs: list[int], plan: FetchPlan, changedsince: int | None,
                   first: bool) -> list[bytes]:
        """Blocking: the FETCH responses for the messages at ``idxs`` (the first batch refreshes the view)."""
        fresh = first and (sel.dirty or changedsince is not None or any(it in ("FLAGS", "MODSEQ") for it in plan.items))
        out = self.refresh_view(sel, allow_expunge=False) if fresh else []
        if not idxs:
            return out
        uids, flags = sel.uids, sel.flags
        idxs = changed_since(sel, idxs, changedsince)
        store, user = self.shared.store, self.user
        msgs = self.shared.msg_cache.load(store, sel.id, sel.uidvalidity, [uids[i] for i in idxs])
        seen_now: set[int] = set()
        if plan.sets_seen and not sel.readonly:
            unseen = [uids[i] for i in idxs if "\\Seen" not in flags[i] and uids[i] in msgs]
            if unseen:
                changed, _ = store.mail.store_flags(sel.id, unseen, ["\\Seen"], "add", durable=False)
                sel.own_change(changed)
                seen_now = {c[0] for c in changed}
        flag_item = FlagItems(sel)  # after that change: it may have given the view arrays of its own
        metas: dict[int, dict] = {}
        if plan.needs_meta:
            need = []
            for i in idxs:
                m = msgs.get(uids[i])
                if m is not None and _needs_meta(m, plan):
                    need.append(m)
            if len(need) > 1:
                metas = store.mail.metas(user, need)
            elif need:
                metas = {need[0].id: store.mail.meta(user, need[0])}

        def open_reader(m: Any) -> Any:
            return store.mail.open_blob(user, m)

        for i in idxs:
            m = msgs.get(uids[i])
            if m is None:
                continue  # expunged by another session: nothing to say about it
            items = message_items(sel, m, plan, i, flag_item, metas.get(m.id), open_reader)
            if m.uid in seen_now and "FLAGS" not in plan.items:
                items.append(flag_item(i))
            out.append(b"* %d FETCH (" % (i + 1) + b" ".join(items) + b")\r\n")
        return out

    # ---------------------------------------------------------------- STORE
    async def c_store(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        sel = self.selected
        seqset = parse_seqset(args.next("sequence set"))
        unchanged_since = None
        if isinstance(args.peek(), list):
            a = Args(args.list("store modifiers"))
            while a.more():
                if a.atom("modifier").upper() != "UNCHANGEDSINCE":
                    raise ParseError("Unknown STORE modifier")
                unchanged_since = a.number("mod-sequence")
            self.enable_condstore()
        m = _STORE_ITEM.match(args.atom("store item").upper())
        if not m:
            raise ParseError("Expected FLAGS, +FLAGS or -FLAGS")
        mode, silent = MODES[m.group(1)], bool(m.group(2))
        rest = args.t[args.i:]
        args.i = len(args.t)
        raw_flags = rest[0] if len(rest) == 1 and isinstance(rest[0], list) else rest
        if any(not isinstance(f, str) for f in raw_flags):
            raise ParseError("Flags are atoms")
        try:
            split_flags(raw_flags)
        except ValueError as exc:
            raise ParseError(f"Invalid flag: {exc}") from None
        if sel.readonly:
            raise Reply(b"NO [READ-ONLY] The mailbox is read-only")
        idxs = sel.by_uid(seqset) if uid else sel.by_seq(seqset)
        store = self.shared.store
        condstore = self.condstore

        def work() -> tuple[list[bytes], list[int]]:
            out = self.refresh_view(sel, allow_expunge=False)
            uids = [sel.uids[i] for i in idxs]
            seq_of = {u: i + 1 for i, u in zip(idxs, uids, strict=True)}
            changed, failed = store.mail.store_flags(sel.id, uids, raw_flags, mode, unchanged_since=unchanged_since,
                                                     durable=False)
            sel.own_change(changed)
            done = set()
            for u, f, ms in changed:
                done.add(u)
                if silent and condstore:
                    out.append(b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (seq_of[u], u, ms))
                elif not silent:
                    out.append(sel.flags_line(seq_of[u], u, f, ms))
            if not silent:
                skip = done | set(failed)
                for i, u in zip(idxs, uids, strict=True):
                    if u not in skip:
                        out.append(sel.flags_line(i + 1, u, sel.flags[i], sel.modseqs[i]))
            return out, [seq_of[u] for u in failed] if not uid else failed

        out, failed = await self.run(work)
        self.send_many(out)
        if failed:
            self.tagged(tag, b"OK [MODIFIED " + format_uidset(sorted(failed)).encode() + b"] Conditional STORE failed")
        else:
            self.tagged(tag, b"OK STORE completed")

    # --------------------------------------------------------------- SEARCH
    async def c_search(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        sel = self.selected
        try:
            req = parse_search(args, self.shared.limits.max_search_depth)
        except BadCharset:
            raise Reply(b"NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset") from None
        if req.uses_modseq:
            self.enable_condstore()
        store, user = self.shared.store, self.user

        def work() -> tuple[list[bytes], list[int], int]:
            pre = self.refresh_view(sel, allow_expunge=False)
            found = Searcher(SearchData(store, user, sel, self.shared.msg_cache, self.shared.texts)).run(req.key)
            ids = [sel.uids[i] for i in found] if uid else [i + 1 for i in found]
            highest = max((sel.modseqs[i] for i in found), default=0) if req.uses_modseq else 0
            return pre, ids, highest

        if req.key.cost >= COST["header"]:  # may decrypt every message: bounded concurrency
            async with self.shared.heavy:
                pre, ids, highest = await self.run(work)
        else:
            pre, ids, highest = await self.run(work)
        self.send_many(pre)
        if req.returns is not None:
            out = b'* ESEARCH (TAG "' + tag.encode() + b'")' + (b" UID" if uid else b"")
            r = req.returns
            if "MIN" in r and ids:
                out += b" MIN %d" % min(ids)
            if "MAX" in r and ids:
                out += b" MAX %d" % max(ids)
            if "COUNT" in r:
                out += b" COUNT %d" % len(ids)
            if "ALL" in r and ids:
                out += b" ALL " + format_uidset(sorted(ids)).encode()
            if req.uses_modseq and ids:
                out += b" MODSEQ %d" % highest
            self.send(out + b"\r\n")
        else:
            line = b"* SEARCH" + (b" " + " ".join(map(str, ids)).encode() if ids else b"")
            if req.uses_modseq and ids:
                line += b" (MODSEQ %d)" % highest
            self.send(line + b"\r\n")
        self.tagged(tag, b"OK SEARCH completed")

    # ---------------------------------------------------------- COPY / MOVE
    async def c_copy(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        await self._copy(tag, args, uid, move=False)

    async def c_move(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        await self._copy(tag, args, uid, move=True)

    async def _copy(self: Any, tag: str, args: Args, uid: bool, *, move: bool) -> None:
        from .cmd_mailbox import mailbox_name

        sel = self.selected
        seqset = parse_seqset(args.next("sequence set"))
        name = mailbox_name(args.astring("mailbox"))
        args.end()
        verb = b"MOVE" if move else b"COPY"
        if move and sel.readonly:
            raise Reply(b"NO [READ-ONLY] The mailbox is read-only")
        idxs = sel.by_uid(seqset) if uid else sel.by_seq(seqset)
        uids = [sel.uids[i] for i in idxs]
        store, user = self.shared.store, self.user
        src = sel.mailbox

        def work() -> tuple[Any, list[tuple[int, int]]]:
            try:
                dst = store.mail.get_mailbox(user.id, name)
            except NotFoundError:
                raise Reply(b"NO [TRYCREATE] Mailbox does not exist") from None
            if not uids:
                return dst, []
            if move:
                if dst.id == src.id:
                    raise Reply(b"NO [CANNOT] Source and destination are the same mailbox")
                return dst, store.mail.move(src.id, uids, dst.id)
            mapping = store.mail.copy(src.id, uids, dst.id)
            if mapping and "\\Junk" in (src.special_use, dst.special_use):
                # COPY into or out of Junk is what older clients do to mark as (not) spam
                store.on_move(src, dst, [s for s, _ in mapping])
            return dst, mapping

        dst, mapping = await self.run(work)
        if not mapping:
            self.tagged(tag, b"OK " + verb + b" completed (no messages)")
            return
        code = b"COPYUID %d %s %s" % (dst.uidvalidity, format_uidset([s for s, _ in mapping]).encode(),
                                      format_uidset([d for _, d in mapping]).encode())
        if not move:
            self.tagged(tag, b"OK [" + code + b"] COPY completed")
            return
        self.send(b"* OK [" + code + b"] Moved\r\n")
        moved = [s for s, _ in mapping]
        self.send_many(sel.remove(moved))
        self.shared.msg_cache.forget(sel.id, sel.uidvalidity, moved)
        self.tagged(tag, b"OK MOVE completed")

    # ------------------------------------------------------------- EXPUNGE
    async def c_expunge(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        sel = self.selected
        uids = None
        if uid:
            seqset = parse_seqset(args.next("UID set"))
            uids = [sel.uids[i] for i in sel.by_uid(seqset)]
        args.end()
        if sel.readonly:
            raise Reply(b"NO [READ-ONLY] The mailbox is read-only")
        gone = [] if uids is not None and not uids else await self.run(self.shared.store.mail.expunge, sel.id, uids)
        self.send_many(sel.remove(list(gone) + sorted(sel.pending_expunge)))
        self.shared.msg_cache.forget(sel.id, sel.uidvalidity, list(gone))
        self.tagged(tag, b"OK EXPUNGE completed")

    async def c_close(self: Any, tag: str, args: Args) -> None:
        args.end()
        sel = self.selected
        self.deselect()
        if not sel.readonly:
            gone = await self.run(self.shared.store.mail.expunge, sel.id, None)
            self.shared.msg_cache.forget(sel.id, sel.uidvalidity, list(gone))
        self.tagged(tag, b"OK CLOSE completed")

    async def c_unselect(self: Any, tag: str, args: Args) -> None:
        args.end()
        self.deselect()
        self.tagged(tag, b"OK UNSELECT completed")

    async def c_check(self: Any, tag: str, args: Args) -> None:
        args.end()
        await self.sync(allow_expunge=True, force=True)
        self.tagged(tag, b"OK CHECK completed")


def message_items(sel: Any, m: Any, plan: FetchPlan, i: int, flag_item: Any, meta: dict | None,
                  open_reader: Any) -> list[bytes]:
    """The items of one FETCH response, in the plan's order (``i``: the message's index in the view)."""
    items: list[bytes] = []
    reader = None
    try:
        for it in plan.items:
            if it == "UID":
                items.append(b"UID %d" % m.uid)
            elif it == "FLAGS":
                items.append(flag_item(i))
            elif it == "INTERNALDATE":
                items.append(date_item(m.internal_date))
            elif it == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % m.size)
            elif it == "MODSEQ":
                items.append(b"MODSEQ (%d)" % sel.modseqs[i])
            elif it == "ENVELOPE":
                if m.env is None:
                    assert meta is not None
                    m.env = envelope(meta["env"])
                items.append(b"ENVELOPE " + m.env)
            elif it == "BODYSTRUCTURE":
                if m.bs is None:
                    assert meta is not None
                    m.bs = body_structure(meta["struct"], extended=True)
                items.append(b"BODYSTRUCTURE " + m.bs)
            elif it == "BODY":
                if m.body is None:
                    assert meta is not None
                    m.body = body_structure(meta["struct"], extended=False)
                items.append(b"BODY " + m.body)
            else:
                if reader is None:
                    reader = open_reader(m)
                if isinstance(it, Section):
                    items.append(render_section(reader, meta["struct"] if meta else None, m.size, it))
                elif it == "RFC822":
                    items.append(b"RFC822 " + literal(reader.read_range(0, m.size)))
                else:
                    assert meta is not None
                    end = meta["struct"]["h"][1]
                    if it == "RFC822.HEADER":
                        items.append(b"RFC822.HEADER " + literal(reader.read_range(0, end)))
                    else:
                        items.append(b"RFC822.TEXT " + literal(reader.read_range(end, m.size - end)))
    finally:
        if reader is not None:
            reader.close()
    return items


def _needs_meta(m: Any, plan: FetchPlan) -> bool:
    for it in plan.items:
        if isinstance(it, Section):
            if it.path or it.spec or it.kind != "BODY":
                return True
        elif it in ("RFC822.HEADER", "RFC822.TEXT"):
            return True
        elif (it == "ENVELOPE" and m.env is None) or (it == "BODYSTRUCTURE" and m.bs is None) or (
                it == "BODY" and m.body is None):
            return True
    return False
