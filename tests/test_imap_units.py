"""Unit tests of imapd's pure parts: tokens, sequence sets, names, patterns, ENVELOPE and
BODYSTRUCTURE rendering, sections, the selected-mailbox view, the idle sweeper."""

from __future__ import annotations

import time
from array import array
from types import SimpleNamespace

import pytest

from imapd.fetch import parse_items, parse_section
from imapd.listing import Pattern
from imapd.parser import Args, ParseError, format_uidset, parse_seqset, split_tag, tokenize
from imapd.search import parse_search
from imapd.selected import Changes, MailboxGone, Selected
from imapd.shared import Limits, Registry
from imapd.structure import SectionError, body_structure, envelope, find_part, parse_addresses
from imapd.wire import decode_mailbox, encode_mailbox, parse_date_time, quote
from storage.flags import join_flags
from storage.mime import scan


def test_tokenize_atoms_strings_literals_lists() -> None:
    toks = tokenize([b'a1 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (To "From")]<0.100>) "q\\"s" ', b"lit", b""])
    assert toks == ["a1", "FETCH", "1:*", ["FLAGS", 'BODY.PEEK[HEADER.FIELDS (To "From")]<0.100>'], b'q"s', b"lit"]
    with pytest.raises(ParseError):
        tokenize([b"a (b"])
    with pytest.raises(ParseError):
        tokenize([b'a "unterminated'])
    with pytest.raises(ParseError):
        tokenize([b"a " + b"(" * 100 + b")" * 100])
    assert split_tag(b"A001 uid fetch 1 FLAGS") == ("A001", "UID", "FETCH")
    with pytest.raises(ParseError):
        split_tag(b"* NOOP")


def test_args_getters() -> None:
    a = Args(["12", b"str", ["x"], "NIL"])
    assert a.number() == 12 and a.astring() == b"str" and a.list() == ["x"]
    with pytest.raises(ParseError):
        a.string()
    with pytest.raises(ParseError):
        Args([]).atom()


def test_seqsets() -> None:
    s = parse_seqset("1:3,7,9:*")
    assert s.resolve(10) == [(1, 3), (7, 7), (9, 10)]
    assert parse_seqset("*:4").resolve(2) == [(2, 4)]
    for bad in ("0", "1:0", "a", "1,,2", "4294967296", "1:"):
        with pytest.raises(ParseError):
            parse_seqset(bad)
    assert format_uidset([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"


def test_modified_utf7_round_trip() -> None:
    for name in ("INBOX", "Entwürfe", "日本語/メール", "a&b", "Ĉu ~ & ÿ", "𝄞 music"):
        assert decode_mailbox(encode_mailbox(name)) == name
    assert encode_mailbox("a&b") == b"a&-b"
    assert decode_mailbox(b"Entw&APw-rfe") == "Entwürfe"
    assert decode_mailbox("Grüße".encode()) == "Grüße"  # raw UTF-8 is accepted too
    with pytest.raises(ValueError):
        decode_mailbox(b"bad&AB")


def test_quote_and_dates() -> None:
    assert quote("plain") == b'"plain"'
    assert quote('a"b\\c') == b'"a\\"b\\\\c"'
    assert quote("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert quote(None) == b"NIL"
    assert parse_date_time("17-Jul-1996 02:44:25 -0700") == 837596665
    with pytest.raises(ValueError):
        parse_date_time("32-Jul-1996 02:44:25 -0700")


def test_list_patterns() -> None:
    assert Pattern("", "*").match("a/b/c") and not Pattern("", "%").match("a/b")
    assert Pattern("a/", "%").match("a/b") and not Pattern("a/", "%").match("a/b/c")
    assert Pattern("", "inbox").match("INBOX") and Pattern("", "InBox/%").match("INBOX/x")
    start = time.monotonic()
    assert not Pattern("", "*a" * 200 + "b").match("a" * 500)
    assert time.monotonic() - start < 0.5


def test_addresses_groups_routes_and_oddities() -> None:
    assert parse_addresses('"Doe, John" <john@x.test>, jane@y.test') == [
        ("Doe, John", None, "john", "x.test"), (None, None, "jane", "y.test")]
    assert parse_addresses("team: a@x.test, b@x.test;, c@z") == [
        (None, None, "team", None), (None, None, "a", "x.test"), (None, None, "b", "x.test"),
        (None, None, None, None), (None, None, "c", "z")]
    assert parse_addresses("<@relay.test:user@x.test>") == [(None, "@relay.test", "user", "x.test")]
    assert parse_addresses("undisclosed-recipients:;") == [(None, None, "undisclosed-recipients", None),
                                                          (None, None, None, None)]
    assert parse_addresses("bare") == [(None, None, "bare", "MISSING_DOMAIN")]
    assert parse_addresses("x (comment) <y@z.test>") == [("x", None, "y", "z.test")]
    assert parse_addresses("") == [] and parse_addresses(None) == []
    many = ", ".join(f"u{i}@x.test" for i in range(5000))
    assert len(parse_addresses(many)) == 1000


def test_envelope_defaults_sender_and_reply_to() -> None:
    env = envelope({"date": "d", "subject": "s", "from": "A <a@x.test>"})
    assert env == b'("d" "s" (("A" NIL "a" "x.test")) (("A" NIL "a" "x.test")) (("A" NIL "a" "x.test")) NIL NIL NIL NIL NIL)'


def test_bodystructure_from_scan_and_parts() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           b"--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner\r\n--x--\r\n")
    struct = scan(raw)["struct"]
    bs = body_structure(struct)
    assert bs.startswith(b'(("text" "plain" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)("message" "rfc822"')
    assert body_structure(struct, extended=False).endswith(b' "mixed")')
    assert find_part(struct, [1])["type"] == "text"
    inner = find_part(struct, [2, 1])
    assert raw[inner["h"][1]:inner["e"]] == b"inner"
    with pytest.raises(SectionError):
        find_part(struct, [3])
    single = scan(b"Subject: x\r\n\r\nbody")["struct"]
    assert find_part(single, [1]) is single
    with pytest.raises(SectionError):
        find_part(single, [1, 1])


def test_deep_structure_renders_bounded() -> None:
    node: dict = {"h": [0, 0], "e": 10, "type": "text", "sub": "plain", "params": {}, "lines": 1}
    for _ in range(500):
        node = {"h": [0, 0], "e": 10, "type": "multipart", "sub": "mixed", "params": {}, "parts": [node]}
    assert body_structure(node).count(b"(") < 1000


def test_fetch_item_parsing() -> None:
    s = parse_section("BODY.PEEK[1.2.HEADER.FIELDS.NOT (X-A x-b)]<10.20>")
    assert (s.kind, s.peek, s.path, s.spec, s.fields, s.partial) == ("BODY", True, (1, 2), "HEADER.FIELDS.NOT",
                                                                    ("X-A", "X-B"), (10, 20))
    assert s.label == "BODY[1.2.HEADER.FIELDS.NOT (X-A X-B)]<10>"
    plan = parse_items(["FLAGS", "UID"])
    assert plan.index_only and not plan.needs_blob
    plan = parse_items("FULL")
    assert plan.needs_meta and not plan.needs_blob
    for bad in ("BODY[MIME]", "BINARY[TEXT]", "BODY[1.FOO]", "BODY[]<1.0>", "BINARY.SIZE[1]<0.1>"):
        with pytest.raises(ParseError):
            parse_section(bad)


def test_search_parse_limits() -> None:
    req = parse_search(Args(["OR", "SEEN", ["FROM", b"x", "SINCE", "1-Feb-1994"]]), 5)
    assert req.key.kind == "OR"
    with pytest.raises(ParseError):
        parse_search(Args(["NOT"] * 10 + ["ALL"]), 5)
    with pytest.raises(ParseError):
        parse_search(Args(["SINCE", "1-Foo-1994"]), 5)


def _view(uids: list[int]) -> Selected:
    mb = SimpleNamespace(id=1, uidvalidity=7, highestmodseq=10, uidnext=max(uids, default=0) + 1)
    return Selected(mb, False, array("I", uids), [join_flags(0, None)] * len(uids), array("Q", [1] * len(uids)),
                    condstore=False, qresync=False)


def _info(uid: int, flags: frozenset, modseq: int) -> SimpleNamespace:
    return SimpleNamespace(uid=uid, flags=flags, modseq=modseq)


def test_view_keeps_sequence_numbers_until_expunge_is_allowed() -> None:
    sel = _view([1, 2, 3, 4])
    seen = join_flags(1, None)
    out = sel.apply(Changes((12, 6), [_info(2, seen, 11), _info(5, seen, 12)], [3]),
                    allow_expunge=False, claim_recent=lambda *a: {5})
    assert out == [b"* 5 EXISTS\r\n", b"* 1 RECENT\r\n", b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n"]
    assert list(sel.uids) == [1, 2, 3, 4, 5] and sel.pending_expunge == {3}
    assert sel.flush_expunges() == [b"* 3 EXPUNGE\r\n"]
    assert list(sel.uids) == [1, 2, 4, 5] and sel.exists == 4
    assert sel.by_uid(parse_seqset("3:*")) == [2, 3]
    assert sel.by_seq(parse_seqset("2:*")) == [1, 2, 3]
    with pytest.raises(ParseError):
        sel.by_seq(parse_seqset("9"))
    with pytest.raises(MailboxGone):
        sel.apply(Changes(None), allow_expunge=True, claim_recent=lambda *a: set())


def test_view_expunge_order_and_vanished() -> None:
    sel = _view(list(range(1, 11)))
    assert sel.remove([3, 4, 7, 11]) == [b"* 7 EXPUNGE\r\n", b"* 4 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]
    sel.qresync = True
    assert sel.remove([1, 2, 9]) == [b"* VANISHED 1:2,9\r\n"]
    assert list(sel.uids) == [5, 6, 8, 10]


def test_own_store_is_not_reported_twice() -> None:
    sel = _view([1, 2])
    flagged = join_flags(4, None)
    sel.own_change([(1, flagged, 11)])
    assert sel.modseq == 11 and sel.flags[0] == flagged
    out = sel.apply(Changes((11, 3), [_info(1, flagged, 11)], []), allow_expunge=True, claim_recent=lambda *a: set())
    assert out == []


def test_registry_limits_and_sweep() -> None:
    reg = Registry(Limits(max_connections_per_ip=2, max_connections_per_user=1, idle_timeout=60))
    timed_out = []

    class Conn:
        def __init__(self, age: float) -> None:
            self.last_activity = time.monotonic() - age
            self.idling = False

        def timed_out(self) -> None:
            timed_out.append(self)

    old, new = Conn(120), Conn(1)
    assert reg.add(old, "1.2.3.4") and reg.add(new, "1.2.3.4") and not reg.add(Conn(0), "1.2.3.4")
    assert reg.claim_user(7) and not reg.claim_user(7)
    reg.sweep()
    assert timed_out == [old]
    reg.remove(old, "1.2.3.4", 7)
    assert reg.claim_user(7) and reg.add(Conn(0), "1.2.3.4")
