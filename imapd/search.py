"""SEARCH: a parsed key tree evaluated over the index, cheapest keys first.

Flags, dates, sizes, UIDs, sequence numbers and MODSEQ come from index rows;
SUBJECT/FROM/TO/CC/BCC and the SENT* dates from the decrypted search
summaries (``MailStore.summaries``, cached per process); other HEADER keys
from the cached envelope headers or, failing that, from the message's header
bytes only; BODY and TEXT decrypt the message, and only for messages that
passed every cheaper key of an AND.
"""

from __future__ import annotations

import binascii
import datetime
import re
import time
from dataclasses import dataclass, field

from storage.flags import CANONICAL
from storage.mime import SUMMARY_HEADERS, decode_words, parse_headers

from .parser import Args, ParseError, SeqSet, parse_seqset
from .wire import parse_date

FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False),
}
SUMMARY_FIELDS = {"SUBJECT": "subject", "FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc"}
DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
CHARSETS = {"UTF-8", "US-ASCII"}
MAX_KEYS = 2000

COST = {"index": 0, "summary": 1, "meta": 2, "header": 3, "body": 4}
CHUNK = 256  # messages whose structure a header or body search holds at once


class BadCharset(ValueError):
    pass


@dataclass
class Key:
    kind: str
    arg: object = None
    arg2: object = None
    children: list[Key] = field(default_factory=list)

    @property
    def cost(self) -> int:
        if self.kind in ("AND", "OR", "NOT"):
            return max((c.cost for c in self.children), default=0)
        if self.kind in SUMMARY_FIELDS or self.kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            return COST["summary"]
        if self.kind == "HEADER":
            name = str(self.arg)
            if name.upper() in SUMMARY_FIELDS or name.lower() == "message-id":
                return COST["summary"]
            return COST["meta"] if name.lower() in SUMMARY_HEADERS else COST["header"]
        if self.kind in ("BODY", "TEXT"):
            return COST["body"]
        return COST["index"]


@dataclass
class SearchRequest:
    key: Key
    charset: str = "US-ASCII"
    returns: list[str] | None = None  # ESEARCH RETURN options; None = classic SEARCH
    uses_modseq: bool = False


class _Parser:
    def __init__(self, args: Args, max_depth: int) -> None:
        self.a = args
        self.max_depth = max_depth
        self.count = 0
        self.uses_modseq = False

    def text(self, what: str) -> str:
        return self.a.astring(what).decode("utf-8", "replace")

    def key(self, depth: int) -> Key:
        if depth > self.max_depth:
            raise ParseError("[LIMIT] Search expression nested too deeply")
        self.count += 1
        if self.count > MAX_KEYS:
            raise ParseError("[LIMIT] Search expression too long")
        tok = self.a.next("search key")
        if isinstance(tok, list):
            sub = _Parser(Args(tok), self.max_depth)
            sub.count = self.count
            keys = [sub.key(depth + 1)]
            while sub.a.more():
                keys.append(sub.key(depth + 1))
            self.count = sub.count
            self.uses_modseq |= sub.uses_modseq
            return keys[0] if len(keys) == 1 else Key("AND", children=keys)
        if isinstance(tok, bytes):
            raise ParseError("Expected a search key")
        up = tok.upper()
        if up == "ALL":
            return Key("ALL")
        if up in FLAG_KEYS:
            return Key("FLAG", *FLAG_KEYS[up])
        if up in ("NEW", "OLD", "RECENT"):
            return Key(up)
        if up in ("KEYWORD", "UNKEYWORD"):
            kw = self.a.atom("keyword")
            return Key("FLAG", kw, up == "KEYWORD")
        if up in SUMMARY_FIELDS or up in ("BODY", "TEXT"):
            return Key(up, self.text(up).casefold())
        if up in DATE_KEYS:
            raw = self.a.astring("date").decode("ascii", "replace")
            try:
                return Key(up, parse_date(raw))
            except ValueError:
                raise ParseError("Invalid search date") from None
        if up in ("LARGER", "SMALLER"):
            return Key(up, self.a.number("size"))
        if up == "HEADER":
            name = self.text("header name")
            if not name or any(ord(c) < 33 or c == ":" for c in name):
                raise ParseError("Invalid header name")
            return Key("HEADER", name, self.text("header value").casefold())
        if up == "UID":
            return Key("UID", parse_seqset(self.a.next("UID set")))
        if up == "NOT":
            return Key("NOT", children=[self.key(depth + 1)])
        if up == "OR":
            return Key("OR", children=[self.key(depth + 1), self.key(depth + 1)])
        if up == "MODSEQ":
            nxt = self.a.next("mod-sequence")
            if isinstance(nxt, bytes):  # entry name and type: "/flags/\\seen" all
                self.a.atom("entry type")
                nxt = self.a.next("mod-sequence")
            if not isinstance(nxt, str) or not nxt.isdigit():
                raise ParseError("Invalid mod-sequence")
            self.uses_modseq = True
            return Key("MODSEQ", int(nxt))
        if up == "$":
            raise ParseError("SEARCHRES is not supported")
        if up[:1].isdigit() or up[:1] == "*":
            return Key("SEQ", parse_seqset(tok))
        raise ParseError(f"Unknown search key {tok[:30]}")


def parse_search(args: Args, max_depth: int, *, allow_return: bool = True) -> SearchRequest:
    returns = None
    charset = "US-ASCII"
    if allow_return and isinstance(args.peek(), str) and str(args.peek()).upper() == "RETURN":
        args.next()
        opts = args.list("RETURN options")
        returns = []
        for o in opts:
            if not isinstance(o, str) or o.upper() not in ("MIN", "MAX", "ALL", "COUNT"):
                raise ParseError("Unknown RETURN option")
            returns.append(o.upper())
        if not returns:
            returns = ["ALL"]
    if isinstance(args.peek(), str) and str(args.peek()).upper() == "CHARSET":
        args.next()
        charset = args.astring("charset").decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise BadCharset(charset)
    p = _Parser(args, max_depth)
    keys = [p.key(1)]
    while args.more():
        keys.append(p.key(1))
    key = keys[0] if len(keys) == 1 else Key("AND", children=keys)
    return SearchRequest(key, charset, returns, p.uses_modseq)


# ------------------------------------------------------------------ evaluation


def _day(ts: float) -> tuple[int, int, int]:
    t = time.localtime(ts)
    return t.tm_year, t.tm_mon, t.tm_mday


def _sent_day(ts: float | None) -> tuple[int, int, int] | None:
    if ts is None:
        return None
    d = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return d.year, d.month, d.day


def _date_match(kind: str, day: tuple[int, int, int] | None, want: tuple[int, int, int]) -> bool:
    if day is None:
        return False
    if kind.endswith("BEFORE"):
        return day < want
    if kind.endswith("ON"):
        return day == want
    return day >= want


_TAGS = re.compile(r"<[^>]{0,200}>")


class SearchData:
    """What a search reads about message ``i`` of the view, loaded only when a key needs it."""

    def __init__(self, store, user, sel, cache, texts=None) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.user = user
        self.sel = sel
        self.cache = cache
        self.texts = texts
        self.uids = sel.uids
        self.flags = sel.flags
        self.modseqs = sel.modseqs
        self.recent = sel.recent
        self._msgs: dict | None = None
        self._summaries_loaded = False
        self._meta: dict[int, dict] = {}
        self._fields: dict[str, list[str]] = {}
        self._mark = texts.mark() if texts is not None else None

    def msg(self, i: int):  # type: ignore[no-untyped-def]
        if self._msgs is None:
            self._msgs = self.cache.load(self.store, self.sel.id, self.sel.uidvalidity, list(self.uids))
        return self._msgs.get(self.uids[i])

    def load_summaries(self) -> None:
        """The search summaries of every message, read (for those not cached yet) in one go."""
        if self._summaries_loaded:
            return
        self._summaries_loaded = True
        if self._msgs is None:
            self._msgs = self.cache.load(self.store, self.sel.id, self.sel.uidvalidity, list(self.uids))
        missing = [u for u, e in self._msgs.items() if e.summary is None]
        if missing:
            got = self.store.mail.summaries(self.user, self.sel.id, missing if len(missing) < len(self._msgs) else None)
            for u, summ in got.items():
                e = self._msgs.get(u)
                if e is not None:
                    e.summary = summ

    def summary(self, i: int) -> dict:
        m = self.msg(i)
        if m is None:
            return {}
        if m.summary is None:
            self.load_summaries()
        return m.summary or {}

    def field(self, name: str) -> list[str]:
        """One casefolded summary field of every message of the view, in sequence order (kept by the view)."""
        aligned = getattr(self.sel, "aligned", self._fields)
        got = aligned.get(name)
        if got is None:
            self.load_summaries()
            msgs = self._msgs or {}
            got = []
            for u in self.uids:
                m = msgs.get(u)
                got.append((m.summary or {}).get(name, "") if m is not None else "")
            if all(m is not None and m.summary is not None for m in (msgs.get(u) for u in self.uids)):
                aligned[name] = got  # complete: reusable until the view changes
            else:
                self._fields[name] = got
        return got

    def meta(self, i: int) -> dict | None:
        got = self._meta.get(i)
        if got is None:
            m = self.msg(i)
            if m is None:
                return None
            got = self._meta[i] = self.store.mail.meta(self.user, m)
        return got

    def drop_meta(self) -> None:
        self._meta.clear()

    def open(self, i: int):  # type: ignore[no-untyped-def]
        return self.store.mail.open_blob(self.user, self.msg(i))

    def prefetch_meta(self, cands: list[int], *, bodies: bool = False) -> None:
        """Read the structures of many messages in one query per 500 (not one each)."""
        need = []
        for i in cands:
            if i in self._meta:
                continue
            m = self.msg(i)
            if m is None or (bodies and self.texts is not None and self.texts.has(m.blob_id)):
                # (a TEXT search may still need the meta for the header: then text() reads it singly)
                continue
            need.append(m)
        if len(need) > 1:
            got = self.store.mail.metas(self.user, need)
            by_id = {m.id: m for m in need}
            index = {m.uid: i for i in cands if (m := self.msg(i)) is not None}
            for mid, meta in got.items():
                self._meta[index[by_id[mid].uid]] = meta

    def text(self, i: int, *, header: bool) -> tuple[bytes, bytes] | None:
        """(header text, body text), decoded, casefolded, as UTF-8 (the header only if asked); None if gone."""
        m = self.msg(i)
        if m is None:
            return None
        got = self.texts.get(m.blob_id) if self.texts is not None else None
        if got is not None and (got[0] is not None or not header):
            return got[0] or b"", got[1]
        meta = self.meta(i)
        if meta is None:
            return None
        with self.open(i) as r:
            raw = r.read_all()
        struct = meta["struct"]
        head = None
        if header:
            head = decode_words(raw[: struct["h"][1]].decode("utf-8", "replace")).casefold().encode("utf-8", "replace")
        body = got[1] if got is not None else "\n".join(_texts(raw, struct, 0)).encode("utf-8", "replace")
        if self.texts is not None:
            self.texts.put(m.blob_id, head, body, self._mark)
        return head or b"", body


class Searcher:
    """Evaluates one SEARCH over the selected mailbox's view (runs in a worker thread)."""

    def __init__(self, data: SearchData) -> None:
        self.d = data
        self.n = len(data.uids)

    def run(self, key: Key) -> list[int]:
        """Indexes (sequence number - 1) of the matches, in order."""
        return self._eval(key, list(range(self.n)))

    def _eval(self, key: Key, cands: list[int]) -> list[int]:
        if not cands:
            return cands
        kind = key.kind
        if kind == "AND":
            for child in sorted(key.children, key=lambda k: k.cost):
                cands = self._eval(child, cands)
                if not cands:
                    break
            return cands
        if kind == "OR":
            first = self._eval(key.children[0], cands)
            got = set(first)
            rest = [i for i in cands if i not in got]
            got.update(self._eval(key.children[1], rest))
            return [i for i in cands if i in got]
        if kind == "NOT":
            hit = set(self._eval(key.children[0], cands))
            return [i for i in cands if i not in hit]
        if kind in ("BODY", "TEXT") or (kind == "HEADER" and key.cost >= COST["meta"]):
            # a slice at a time: the structures of a whole mailbox would not all fit in memory at once
            test = self._predicate(key)
            out: list[int] = []
            for k in range(0, len(cands), CHUNK):
                part = cands[k:k + CHUNK]
                self.d.prefetch_meta(part, bodies=kind != "HEADER")
                out += [i for i in part if test(i)]
                self.d.drop_meta()
            return out
        fast = self._fast(key, cands)
        if fast is not None:
            return fast
        test = self._predicate(key)
        return [i for i in cands if test(i)]

    def _fast(self, key: Key, cands: list[int]) -> list[int] | None:
        """The common keys as plain comprehensions (no call per message)."""
        kind, arg, d = key.kind, key.arg, self.d
        if kind == "FLAG" and str(arg).lower() in CANONICAL:
            name, flags = CANONICAL[str(arg).lower()], d.flags
            if key.arg2:
                return [i for i in cands if name in flags[i]]
            return [i for i in cands if name not in flags[i]]
        if kind in SUMMARY_FIELDS:
            values = d.field(SUMMARY_FIELDS[kind])
            return [i for i in cands if arg in values[i]]  # type: ignore[operator]
        return None

    def _predicate(self, key: Key):  # type: ignore[no-untyped-def]
        kind, arg = key.kind, key.arg
        d = self.d
        flags, uids = d.flags, d.uids
        if kind == "ALL":
            return lambda i: True
        if kind == "FLAG":
            want = key.arg2
            name = CANONICAL.get(str(arg).lower(), str(arg))
            if name.lower() == "\\recent":
                return lambda i: (uids[i] in d.recent) == want
            if not name.startswith("\\"):
                low = name.lower()
                return lambda i: any(f.lower() == low for f in flags[i]) == want
            return lambda i: (name in flags[i]) == want
        if kind == "RECENT":
            return lambda i: uids[i] in d.recent
        if kind == "NEW":
            return lambda i: uids[i] in d.recent and "\\Seen" not in flags[i]
        if kind == "OLD":
            return lambda i: uids[i] not in d.recent
        if kind == "MODSEQ":
            return lambda i: d.modseqs[i] >= arg  # type: ignore[operator]
        if kind == "UID":
            ranges = arg.resolve(uids[-1] if len(uids) else 0)  # type: ignore[union-attr]
            return lambda i: any(a <= uids[i] <= b for a, b in ranges)
        if kind == "SEQ":
            ranges = arg.resolve(self.n)  # type: ignore[union-attr]
            return lambda i: any(a <= i + 1 <= b for a, b in ranges)
        if kind in ("BEFORE", "ON", "SINCE"):
            def by_date(i: int) -> bool:
                m = d.msg(i)
                return m is not None and _date_match(kind, _day(m.internal_date), arg)  # type: ignore[arg-type]

            return by_date
        if kind in ("LARGER", "SMALLER"):
            def by_size(i: int) -> bool:
                m = d.msg(i)
                return m is not None and (m.size > arg if kind == "LARGER" else m.size < arg)  # type: ignore[operator]

            return by_size
        if kind in SUMMARY_FIELDS:
            name = SUMMARY_FIELDS[kind]
            return lambda i: arg in d.summary(i).get(name, "")  # type: ignore[operator]
        if kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            return lambda i: _date_match(kind, _sent_day(d.summary(i).get("sent")), arg)  # type: ignore[arg-type]
        if kind == "HEADER":
            return self._header_predicate(str(arg), str(key.arg2))
        if kind in ("BODY", "TEXT"):
            needle = str(arg).encode("utf-8", "replace")
            return lambda i: self._body_match(i, needle, kind == "TEXT")
        raise ParseError(f"Unsupported search key {kind}")

    def _header_predicate(self, name: str, value: str):  # type: ignore[no-untyped-def]
        d = self.d
        low = name.lower()
        if name.upper() in SUMMARY_FIELDS:
            field_name = SUMMARY_FIELDS[name.upper()]
            return lambda i: value in d.summary(i).get(field_name, "")
        if low == "message-id":
            return lambda i: value in str(d.summary(i).get("message_id") or "").casefold() and (
                d.summary(i).get("message_id") is not None)
        if low in SUMMARY_HEADERS:
            def from_meta(i: int) -> bool:
                meta = d.meta(i)
                v = meta.get("hdr", {}).get(low) if meta else None
                return v is not None and value in decode_words(v).casefold()

            return from_meta

        def from_file(i: int) -> bool:
            meta = d.meta(i)
            if meta is None:
                return False
            with d.open(i) as r:
                block = r.read_range(0, meta["struct"]["h"][1])
            return any(n == low and value in decode_words(v).casefold() for n, v in parse_headers(block))

        return from_file

    def _body_match(self, i: int, needle: bytes, with_header: bool) -> bool:
        got = self.d.text(i, header=with_header)
        if got is None:
            return False
        header, body = got
        return needle in body or (with_header and needle in header)


def _texts(raw: bytes, node: dict, depth: int):  # type: ignore[no-untyped-def]
    """Decoded, casefolded text of every text part (and of encapsulated messages' headers)."""
    if depth > 50:
        return
    if "parts" in node:
        for p in node["parts"]:
            yield from _texts(raw, p, depth + 1)
        return
    if "msg" in node:
        inner = node["msg"]["part"]
        yield decode_words(raw[inner["h"][0]:inner["h"][1]].decode("utf-8", "replace")).casefold()
        yield from _texts(raw, inner, depth + 1)
        return
    if node["type"] != "text":
        return
    data = raw[node["h"][1]:node["e"]]
    enc = node.get("enc") or "7bit"
    try:
        if enc == "base64":
            data = binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/=]", b"", data) + b"===")
        elif enc == "quoted-printable":
            data = binascii.a2b_qp(data)
    except (ValueError, TypeError):
        pass
    charset = (node.get("params") or {}).get("charset", "utf-8")
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    if node["sub"] == "html":
        text = _TAGS.sub(" ", text)
    yield text.casefold()


__all__ = ["BadCharset", "Key", "SearchData", "SearchRequest", "Searcher", "SeqSet", "parse_search"]
