"""The fast paths of the IMAP read side give exactly what the general code gives.

Each shortcut (the one-regex address parser, the envelope-only parse of a
structure record, the stdlib HKDF of message files, the scan-resistant text
cache) is checked against the slow, general code it replaces.
"""

from __future__ import annotations

import json
import os

import pytest

from imapd.msgcache import TextCache
from imapd.structure import _simple_addresses, envelope, parse_addresses
from storage.blobs import _hkdf_sha256_32
from storage.crypto import hkdf
from storage.mail import LazyMeta

ADDRESS_CASES = [
    "a@b.test",
    "  a.b@c.d.test  ",
    "Alice Smith <alice@x.test>",
    '"Smith, John" <john@x.test>, jane@y.test',
    '"" <a@b.test>',
    '"A" B <a@b.test>',
    "A\tB   <a@b.test>",
    "=?UTF-8?B?Q2hsb8OpIFNjaG1pZHQ=?= <chlo.schmidt@corp.example>",
    "Zoë Müller <zoe@ü.example>",
    '"x\r\n y" <a@b.test>',
    "< a@b.test >",
    "a@b.test, c@d.test,e@f.test",
    # shapes the fast path must hand over to the full parser
    "A.B <a@b.test>",
    "a@b.test,",
    "a@b.test,,c@d.test",
    "x (comment) <y@z.test>",
    "team: a@x.test, b@x.test;",
    '"a\\"b" <c@d.test>',
    "bare",
    "<@relay.test:user@x.test>",
    "a@[192.0.2.1]",
    '"unterminated <a@b.test>',
    "a@b.test c@d.test",
    "A <a@b.test> B",
    ", a@b.test",
    "undisclosed-recipients:;",
]


@pytest.mark.parametrize("value", ADDRESS_CASES)
def test_simple_address_parser_agrees_with_the_full_one(value: str) -> None:
    fast = _simple_addresses(value)
    assert fast is None or fast == parse_addresses(value)


def test_simple_address_parser_takes_the_common_shapes() -> None:
    assert _simple_addresses('"Smith, John" <john@x.test>, jane@y.test') == [
        ("Smith, John", None, "john", "x.test"), (None, None, "jane", "y.test")]
    assert _simple_addresses("x (comment) <y@z.test>") is None
    assert _simple_addresses("team: a@x.test;") is None
    many = ", ".join(f"u{i}@x.test" for i in range(1200))
    assert _simple_addresses(many) is None and len(parse_addresses(many)) == 1000


def test_envelope_unchanged_by_fast_addresses() -> None:
    env = {"date": "d", "subject": "s", "from": '"Doe, J" <j@x.test>', "to": "a@b.test, C D <c@d.test>"}
    assert envelope(env) == (
        b'("d" "s" (("Doe, J" NIL "j" "x.test")) (("Doe, J" NIL "j" "x.test")) (("Doe, J" NIL "j" "x.test"))'
        b' ((NIL NIL "a" "b.test")("C D" NIL "c" "d.test")) NIL NIL NIL NIL)'
    )


def test_lazy_meta_reads_the_envelope_alone_and_everything_on_demand() -> None:
    meta = {"env": {"subject": "hi \u00e9", "from": "a@b"}, "hdr": {"list-id": "x"}, "struct": {"type": "text", "h": [0, 5], "e": 9}}
    raw = json.dumps(meta, separators=(",", ":")).encode()
    lazy = LazyMeta(raw)
    assert lazy["env"] == meta["env"]
    assert lazy._full is None  # only the envelope was parsed
    assert lazy["struct"] == meta["struct"] and lazy.get("hdr", {}).get("list-id") == "x"
    assert lazy.get("nope") is None and dict(lazy) == meta and bool(lazy)
    other = LazyMeta(json.dumps({"struct": {}, "env": {"subject": "s"}}).encode())  # another key order
    assert other["env"] == {"subject": "s"}


def test_file_key_derivation_is_rfc5869_hkdf() -> None:
    for n in (0, 1, 40, 77):
        key, salt, info = os.urandom(32), os.urandom(16), os.urandom(n)
        assert _hkdf_sha256_32(key, salt, info) == hkdf(key, info, salt=salt)


def test_text_cache_keeps_what_fits_of_a_scan_larger_than_itself() -> None:
    body = os.urandom(3000)  # incompressible: each entry costs about 3 KB
    cache = TextCache(max_bytes=32 * 1024)
    for rnd in range(3):
        mark = cache.mark()
        hits = 0
        for i in range(40):
            if cache.get(f"b{i}") is not None:
                hits += 1
            else:
                cache.put(f"b{i}", None, body, mark)
        if rnd:
            assert hits >= 8  # plain LRU would hit nothing on a cyclic scan
        assert cache._size <= cache.max_bytes
    cache.put("new", b"h", body)  # outside a search: ordinary LRU
    got = cache.get("new")
    assert got is not None and got[1] == body and got[0] == b"h"
    assert cache._size <= cache.max_bytes


def test_many_records_parse_as_one_and_fall_back_one_by_one() -> None:
    from storage.mail import _parse_many

    docs = [json.dumps({"subject": f"s{i}", "sent": None}).encode() for i in range(5)]
    assert _parse_many(docs) == [json.loads(d) for d in docs]
    with pytest.raises(ValueError):
        _parse_many([b'{"a":1},{"b":2}', b'{"c":3}'])  # not one record each: never misaligned
    assert _parse_many([]) == [] and _parse_many([b"[1]"]) == [[1]]


# ------------------------------------------------ FETCH of index items on the reactor


def _view(n: int = 60):  # type: ignore[no-untyped-def]
    """A session's view of ``n`` messages with gaps in the UIDs, mixed flags, keywords and \\Recent."""
    from array import array

    from imapd.msgcache import Msg
    from imapd.selected import Selected
    from storage.records import Mailbox, MessageInfo

    uids = [u for u in range(1, 3 * n) if u % 3 != 2][:n]
    kinds = [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged"}), frozenset({"$Label1", "\\Answered"}),
             frozenset({"\\Deleted", "\\Seen", "$Junk"})]
    flags = [kinds[(u * 7) % len(kinds)] for u in uids]
    modseqs = array("Q", [10 + (u * 13) % 50 for u in uids])
    box = Mailbox(id=1, user_id=1, name="INBOX", uidvalidity=77, uidnext=uids[-1] + 1, highestmodseq=max(modseqs),
                  special_use=None, subscribed=True)
    sel = Selected(box, False, array("I", uids), flags, modseqs, condstore=True, qresync=False)
    sel.recent = set(uids[-4:])
    msgs = {u: Msg(MessageInfo(id=1000 + u, mailbox_id=1, uid=u, blob_id=f"b{u}", size=500 + u * 31,
                               internal_date=1_700_000_000 + u * 3607.5, flags=frozenset(), modseq=0)) for u in uids}
    return sel, msgs


def _general(sel, msgs, idxs, items):  # type: ignore[no-untyped-def]
    """What the worker path renders for the same request (one ``message_items`` per message)."""
    from imapd.cmd_message import message_items
    from imapd.fetch import FetchPlan
    from imapd.indexfetch import FlagItems

    plan = FetchPlan()
    for it in items:
        plan.add(it)
    fi = FlagItems(sel)
    out = []
    for i in idxs:
        m = msgs[sel.uids[i]]
        out.append(b"* %d FETCH (" % (i + 1) + b" ".join(message_items(sel, m, plan, i, fi, None, None)) + b")\r\n")
    return b"".join(out)


INDEX_PLANS = [
    ["UID", "FLAGS"],
    ["UID", "FLAGS", "MODSEQ"],
    ["FLAGS"],
    ["MODSEQ", "FLAGS"],
    ["UID", "MODSEQ"],
    ["UID", "RFC822.SIZE", "INTERNALDATE", "FLAGS"],
    ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    ["UID", "FLAGS", "MODSEQ", "RFC822.SIZE"],
]


@pytest.mark.parametrize("items", INDEX_PLANS, ids=lambda it: "+".join(it))
@pytest.mark.parametrize("spec", ["1:*", "2,5:9,20,33:40,58:*", "60"])
@pytest.mark.parametrize("changedsince", [None, 0, 35])
def test_reactor_fetch_of_index_items_gives_the_general_paths_bytes(items, spec, changedsince) -> None:  # type: ignore[no-untyped-def]
    from imapd import indexfetch
    from imapd.fetch import parse_items
    from imapd.parser import parse_seqset

    sel, msgs = _view()
    plan = parse_items(list(items))
    assert indexfetch.index_only(plan)
    for by in (sel.by_seq, sel.by_uid):
        idxs = by(parse_seqset(spec))
        idxs = indexfetch.changed_since(sel, idxs, changedsince)
        facts = [msgs[sel.uids[i]] for i in idxs] if indexfetch.needs_facts(plan) else None
        whole = b"".join(indexfetch.render(sel, idxs, plan.items, facts))
        assert whole == _general(sel, msgs, idxs, plan.items)
        # chunk by chunk, as the reactor sends it: the same bytes
        step = 7
        parts = [b"".join(indexfetch.render(sel, idxs[k:k + step], plan.items,
                                            facts[k:k + step] if facts is not None else None))
                 for k in range(0, len(idxs), step)]
        assert b"".join(parts) == whole
        if changedsince == 35:
            assert all(sel.modseqs[i] > 35 for i in idxs)
            assert spec == "60" or 0 < len(idxs) < len(by(parse_seqset(spec)))


def test_reactor_fetch_skips_a_message_expunged_meanwhile_like_the_general_path() -> None:
    from imapd import indexfetch

    sel, msgs = _view(10)
    idxs = list(range(10))
    facts = [msgs[sel.uids[i]] for i in idxs]
    facts[3] = None  # gone from the index between the view and the read
    lines = indexfetch.render(sel, idxs, ["UID", "RFC822.SIZE"], facts)
    assert len(lines) == 9 and not any(line.startswith(b"* 4 FETCH") for line in lines)


def test_recent_and_keywords_in_the_resync_format() -> None:
    from imapd import indexfetch

    sel, _ = _view(8)
    lines = indexfetch.render(sel, range(8), ["UID", "FLAGS"])
    last = lines[-1].decode()
    assert last.startswith("* 8 FETCH (UID ") and "\\Recent" in last
    assert sum("\\Recent" in line.decode() for line in lines) == 4


def test_trimmer_returns_memory_only_after_work() -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from imapd.memtrim import Trimmer

    calls: list[int] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            t = Trimmer(asyncio.get_running_loop(), pool, interval=0.3, quiet=0.05)
            assert t._trim is not None  # glibc here
            real = t._trim
            t._trim = lambda pad: calls.append(real(pad))
            await asyncio.sleep(0.2)
            assert calls == []  # nothing ran: nothing to give back
            t.active = True
            for _ in range(100):
                await asyncio.sleep(0.02)
                if calls:
                    break
            assert len(calls) == 1 and calls[0] in (0, 1) and not t.active  # after a quiet moment
            await asyncio.sleep(0.2)
            assert len(calls) == 1  # no work since: no second trim
            loop = asyncio.get_running_loop()
            start = loop.time()
            for _ in range(40):  # steady work, never a quiet moment: trimmed anyway, every ``interval``
                t.active = True
                await asyncio.sleep(0.025)
            assert 2 <= len(calls) <= 2 + (loop.time() - start) / 0.3, calls
            t.close()

    asyncio.run(main())


_ARENAS = r"""
import ctypes, sys, threading
if sys.argv[1] == "tuned":
    from appliance.runner import tune_malloc
    tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 8 << 20  # an Argon2 buffer at the benchmark's cost
first = libc.malloc(size); libc.memset(first, 1, size); libc.free(first)  # glibc raises its threshold here
barrier = threading.Barrier(8)
def login():
    barrier.wait()
    p = libc.malloc(size); libc.memset(p, 1, size)
    barrier.wait()
    libc.free(p)
threads = [threading.Thread(target=login) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(int(open("/proc/self/statm").read().split()[1]) * 4096 // (1 << 20))
"""


def test_tuned_malloc_keeps_no_argon2_buffer_in_the_worker_arenas() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(root)
    rss = {}
    for mode in ("stock", "tuned"):
        out = subprocess.run([sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        rss[mode] = int(out.stdout.strip())
    assert rss["stock"] - rss["tuned"] >= 32, rss  # eight threads kept ~8 MiB each without the tuning


def test_views_share_the_snapshot_until_their_first_change() -> None:
    from imapd.selected import Changes, Selected
    from storage.records import MessageInfo

    base, _ = _view(20)
    uids, flags, modseqs = base.uids, base.flags, base.modseqs
    frozen = (list(uids), list(flags), list(modseqs))
    a = Selected(base.mailbox, False, uids, flags, modseqs, condstore=True, qresync=False, shared=True)
    b = Selected(base.mailbox, False, uids, flags, modseqs, condstore=True, qresync=False, shared=True)
    assert a.uids is b.uids and a.flags is b.flags  # one copy for both sessions

    a.own_change([(uids[3], frozenset({"\\Seen", "$Done"}), 999)])
    assert a.flags[3] == {"\\Seen", "$Done"} and a.modseqs[3] == 999 and not a.shared
    assert (list(uids), list(flags), list(modseqs)) == frozen  # the snapshot is untouched
    assert b.flags is flags and b.shared

    new = MessageInfo(id=9999, mailbox_id=1, uid=uids[-1] + 5, blob_id="n", size=1, internal_date=0.0,
                      flags=frozenset(), modseq=1000)
    out = b.apply(Changes((1000, uids[-1] + 6), [new]), allow_expunge=True, claim_recent=lambda *_: set())
    assert b"* 21 EXISTS\r\n" in out and b.uids[-1] == new.uid and not b.shared
    assert (list(uids), list(flags), list(modseqs)) == frozen

    c = Selected(base.mailbox, False, uids, flags, modseqs, condstore=False, qresync=False, shared=True)
    assert c.remove([uids[0], uids[5]]) == [b"* 6 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
    assert c.exists == 18 and (list(uids), list(flags), list(modseqs)) == frozen
    big, _ = _view(100)
    before = (list(big.uids), list(big.flags), list(big.modseqs))
    for gone in (list(big.uids)[:70], list(big.uids)[:3]):  # rebuilt (over 64), then in place
        v = Selected(big.mailbox, False, big.uids, big.flags, big.modseqs, condstore=False, qresync=False, shared=True)
        v.remove(gone)
        assert v.exists == 100 - len(gone) and list(v.uids) == before[0][len(gone):]
        assert (list(big.uids), list(big.flags), list(big.modseqs)) == before
