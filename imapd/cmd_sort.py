"""SORT and THREAD (RFC 5256, with DISPLAYFROM/DISPLAYTO of RFC 5957), and their UID forms.

The messages are chosen by the SEARCH evaluation of ``search.py`` (the same
parser, the same evaluator, the same per-session view), then ordered in the
session's worker thread from what is cached about each message: size and
INTERNALDATE from the message cache, subject, addresses, sent date and
Message-ID from the search summaries. THREAD=REFERENCES also needs the
parent chain (References, else In-Reply-To): mail delivered since the
summaries carry it (``storage.ingest.thread_links``) has it there too. Only
for older mail (or a chain too long for the summary) does it come from the
sealed structure record (never from the message file), read a slice at a
time, the Message-IDs found kept in a process-wide cache bounded in bytes,
so a second THREAD of the same mailbox reads nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .parser import Args, ParseError
from .replies import Reply
from .search import COST, BadCharset, SearchData, Searcher, SearchRequest, parse_search
from .sortkeys import addr_mailbox, base_subject, display_key
from .threading_refs import ThreadMsg, message_id, ordered_subject, references, render, thread_references

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
ADDRESS_KEYS = {"CC": "cc", "FROM": "from", "TO": "to"}
DISPLAY_KEYS = {"DISPLAYFROM": "from", "DISPLAYTO": "to"}
ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
CHARSETS = ("UTF-8", "US-ASCII")
BADCHARSET = b"NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"
CHUNK = 256  # messages whose structure records are held at once while reading References


@dataclass(frozen=True)
class Criterion:
    key: str
    reverse: bool = False


def parse_criteria(items: list) -> list[Criterion]:
    """``(REVERSE DATE SUBJECT)`` -> criteria; ParseError on anything else."""
    out: list[Criterion] = []
    reverse = False
    for it in items:
        if not isinstance(it, str):
            raise ParseError("Sort criteria are atoms")
        up = it.upper()
        if up == "REVERSE":
            if reverse:
                raise ParseError("REVERSE twice")
            reverse = True
            continue
        if up not in SORT_KEYS:
            raise ParseError(f"Unknown sort key {it[:30]}")
        out.append(Criterion(up, reverse))
        reverse = False
    if reverse or not out:
        raise ParseError("Sort criteria need a sort key")
    if len(out) > 20:
        raise ParseError("[LIMIT] Too many sort criteria")
    return out


def parse_charset_and_search(args: Args, max_depth: int) -> SearchRequest:
    """The charset (mandatory here) and the search criteria that follow it."""
    charset = args.astring("charset").decode("ascii", "replace").upper()
    if charset not in CHARSETS:
        raise Reply(BADCHARSET)
    try:
        return parse_search(args, max_depth, allow_return=False)
    except BadCharset:  # a CHARSET key among the criteria
        raise Reply(BADCHARSET) from None


# ------------------------------------------------------------ References cache


class RefsCache:
    """blob id -> the parent chain (References, else In-Reply-To) of that stored message; LRU, bounded in bytes.

    A stored file never changes, so an entry never goes stale.
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def _cost(blob_id: str, refs: tuple[str, ...]) -> int:
        return 120 + len(blob_id) + sum(len(r) + 60 for r in refs)

    def get(self, blob_id: str) -> tuple[str, ...] | None:
        with self._lock:
            got = self._d.get(blob_id)
            if got is not None:
                self._d.move_to_end(blob_id)
            return got

    def put(self, blob_id: str, refs: tuple[str, ...]) -> None:
        cost = self._cost(blob_id, refs)
        with self._lock:
            if blob_id in self._d:
                return
            while self._d and self._size + cost > self.max_bytes:
                k, v = self._d.popitem(last=False)
                self._size -= self._cost(k, v)
            self._d[blob_id] = refs
            self._size += cost


REFS = RefsCache()


# --------------------------------------------------------------------- ordering


class Orderer:
    """Sort keys and thread records of the messages of a view (runs in a worker thread).

    Keys derived from the summaries are computed once per distinct header
    value in the process (senders and subjects repeat) and, when they cover the whole view,
    kept in the view's ``aligned`` store next to the summary fields, so the
    next SORT of the session only sorts.
    """

    def __init__(self, data: SearchData) -> None:
        self.d = data
        self.aligned: dict[str, Any] = getattr(data.sel, "aligned", {})

    def _derived(self, name: str, source: str, fn: Any, idxs: list[int]) -> Any:
        """``fn`` of summary field ``source`` for ``idxs``: a list over the whole view, or a dict."""
        got = self.aligned.get(name)
        if got is not None:
            return got
        values = self.d.field(source)
        key = fn  # memoised process-wide (sortkeys): senders and subjects repeat
        if len(idxs) * 4 < len(values):  # a few messages of a large view: only those
            return {i: key(values[i]) for i in idxs}
        out = [key(v) for v in values]
        if source in self.aligned:  # the field is complete (kept by the view): so is this
            self.aligned[name] = out
        return out

    def dates(self, idxs: list[int]) -> Any:
        """The sent date of each message, its INTERNALDATE where it has none (RFC 5256 2.2)."""
        got = self.aligned.get("sort:DATE")
        if got is not None:
            return got
        d = self.d
        d.load_summaries()
        whole = len(idxs) * 4 >= len(d.uids)
        out: Any = {}
        for i in (range(len(d.uids)) if whole else idxs):
            m = d.msg(i)
            sent = d.summary(i).get("sent") if m is not None else None
            out[i] = float(sent) if sent is not None else (m.internal_date if m is not None else 0.0)
        if whole:
            out = [out[i] for i in range(len(d.uids))]
            self.aligned["sort:DATE"] = out
        return out

    def values(self, key: str, idxs: list[int]) -> Any:
        """Something indexable by view index giving each message's value for ``key``."""
        d = self.d
        if key == "ARRIVAL":
            return {i: (m.internal_date if (m := d.msg(i)) is not None else 0.0) for i in idxs}
        if key == "SIZE":
            return {i: (m.size if (m := d.msg(i)) is not None else 0) for i in idxs}
        if key == "DATE":
            return self.dates(idxs)
        if key == "SUBJECT":
            return self._derived("sort:SUBJECT", "subject", lambda v: base_subject(v)[0], idxs)
        if key in ADDRESS_KEYS:
            return self._derived("sort:" + key, ADDRESS_KEYS[key], addr_mailbox, idxs)
        return self._derived("sort:" + key, DISPLAY_KEYS[key], display_key, idxs)

    def sort(self, idxs: list[int], criteria: list[Criterion]) -> list[int]:
        """``idxs`` (in sequence order) ordered by the criteria; ties stay in sequence order."""
        order = list(idxs)
        for c in reversed(criteria):  # stable sorts, the last criterion first
            vals = self.values(c.key, order)
            order.sort(key=vals.__getitem__, reverse=c.reverse)
        return order

    def thread_msgs(self, idxs: list[int], *, with_refs: bool) -> list[ThreadMsg]:
        subjects = self._derived("thread:subject", "subject", base_subject, idxs)
        msgids = self._derived("thread:msgid", "message_id", message_id, idxs)
        dates = self.dates(idxs)
        out = []
        for i in idxs:
            subj, reply = subjects[i]
            out.append(ThreadMsg(i, (dates[i], i), subj, reply, msgids[i]))
        if with_refs:
            self._fill_refs(out)
        return out

    def _fill_refs(self, msgs: list[ThreadMsg]) -> None:
        d = self.d
        kept = self.aligned.get("thread:refs")
        if kept is not None:
            for t in msgs:
                t.refs = kept[t.index]
            return
        whole = len(msgs) == len(d.uids)
        missing = []
        d.load_summaries()  # already read for the subjects and dates: no extra query
        for t in msgs:
            m = d.msg(t.index)
            if m is None:
                whole = False
                continue
            s = m.summary
            if s is not None and "references" in s:  # summaries written since the chain is kept there
                chain, irt = s["references"], s.get("in_reply_to")
                t.refs = tuple(chain) if chain else ((irt,) if irt else ())
                continue
            got = REFS.get(m.blob_id)
            if got is None:
                missing.append(t)
            else:
                t.refs = got
        for k in range(0, len(missing), CHUNK):
            part = missing[k:k + CHUNK]
            d.prefetch_meta([t.index for t in part])
            for t in part:
                m, meta = d.msg(t.index), d.meta(t.index)
                if m is None or meta is None:
                    whole = False
                    continue
                env, hdr = meta["env"], meta.get("hdr") or {}
                t.refs = references(hdr.get("references"), env.get("in-reply-to"))
                REFS.put(m.blob_id, t.refs)
            d.drop_meta()
        if whole:  # every message of the view, in order: kept until the view changes
            self.aligned["thread:refs"] = [t.refs for t in msgs]


# --------------------------------------------------------------------- commands


class SortCommands:
    async def c_sort(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        criteria = parse_criteria(args.list("sort criteria"))
        req = parse_charset_and_search(args, self.shared.limits.max_search_depth)

        def order(o: Orderer, found: list[int]) -> bytes:
            line = b" ".join(b"%d" % n for n in self._ids(o, o.sort(found, criteria), uid))
            if req.uses_modseq and found:  # RFC 7162 3.1.5
                line += b" (MODSEQ %d)" % max(o.d.modseqs[i] for i in found)
            return line

        ids = await self._ordered(req, order, heavy=req.key.cost >= COST["header"])
        self.send(b"* SORT" + (b" " + ids if ids else b"") + b"\r\n")
        self.tagged(tag, b"OK SORT completed")

    async def c_thread(self: Any, tag: str, args: Args, uid: bool = False) -> None:
        algorithm = args.atom("threading algorithm").upper()
        if algorithm not in ALGORITHMS:
            raise ParseError("Unknown threading algorithm")
        req = parse_charset_and_search(args, self.shared.limits.max_search_depth)
        refs = algorithm == "REFERENCES"

        def order(o: Orderer, found: list[int]) -> bytes:
            # the threads of a whole view depend on nothing that can change while the view lasts
            keep = f"thread:{algorithm}:{uid}" if req.key.kind == "ALL" else None
            got = o.aligned.get(keep) if keep else None
            if got is None:
                msgs = o.thread_msgs(found, with_refs=refs)
                roots = thread_references(msgs) if refs else ordered_subject(msgs)
                got = render(roots, o.d.uids.__getitem__ if uid else (lambda i: i + 1))
                if keep:
                    o.aligned[keep] = got
            return got

        lists = await self._ordered(req, order, heavy=refs or req.key.cost >= COST["header"])
        self.send(b"* THREAD" + (b" " + lists if lists else b"") + b"\r\n")
        self.tagged(tag, b"OK THREAD completed")

    @staticmethod
    def _ids(o: Orderer, idxs: list[int], uid: bool) -> list[int]:
        uids = o.d.uids
        return [uids[i] for i in idxs] if uid else [i + 1 for i in idxs]

    async def _ordered(self: Any, req: Any, order: Any, *, heavy: bool) -> bytes:
        """Run the search and ``order(orderer, matches)`` in a worker; send the view's updates first."""
        if req.uses_modseq:
            self.enable_condstore()
        sel, store, user = self.selected, self.shared.store, self.user

        def work() -> tuple[list[bytes], bytes]:
            pre = self.refresh_view(sel, allow_expunge=False)
            data = SearchData(store, user, sel, self.shared.msg_cache, self.shared.texts)
            found = Searcher(data).run(req.key)
            return pre, order(Orderer(data), found)

        if heavy:  # may read a structure record of every message: bounded concurrency, as SEARCH
            async with self.shared.heavy:
                pre, out = await self.run(work)
        else:
            pre, out = await self.run(work)
        self.send_many(pre)
        return out
