"""SORT and THREAD (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO) against the running server with imaplib.

Every expected order below is worked out by hand from the corpus in the
comments: base subjects (Re:, Fwd:, [blob], (fwd), [fwd: ...], RFC 2047),
the local part of the first address, the display name, sent dates with the
INTERNALDATE fallback, ties by sequence number; threads by Message-ID,
In-Reply-To and References with missing parents, duplicates, a loop, and
subject merging. A first message is expunged in each mailbox, so UIDs are
one more than sequence numbers and UID SORT/THREAD are told apart.
"""

from __future__ import annotations

import imaplib
import re
import time

import pytest
from imapkit import Chat, account, imap, new_box, ok

from imapd.sortkeys import addr_mailbox, base_subject, display_key
from imapd.threading_refs import ThreadMsg, render, thread_references

PAD = "padding line of text for size\r\n"  # 31 bytes


def raw(headers: list[str], body_lines: int) -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + PAD * body_lines).encode()


def fill(c, box: str, msgs: list[tuple[str, bytes]]) -> None:  # type: ignore[no-untyped-def]
    """A throw-away first message (expunged: UIDs start at 2), then ``(internal date, message)`` each."""
    ok(c.append(box, "(\\Deleted)", None, raw(["Subject: gone"], 1)))
    for date, m in msgs:
        ok(c.append(box, None, f'"{date}"', m))
    ok(c.select(box))
    ok(c.expunge())


# ----------------------------------------------------------------- SORT corpus
# seq  base subject   FROM key  DISPLAYFROM   TO key  DISPLAYTO      CC key  sent date (UTC)          size (pad lines)
#  1   apple pie      zed       zed zulu      bob     bob@b.test     ""      05-Mar 10:00             30
#  2   banana split   amy       adams, amy    carol   carol          dan     none -> 03-Mar 00:00     90
#  3   äpfel          emile     émile         yves    yves@y.test    abe     02-Mar 11:00             60
#  4   apple pie      bob       bob@b.test    xavier  xavier         carl    01-Mar 14:00             15
#  5   ""             mallory   mallory       ""      ""             ""      bad -> 02-Mar 00:00      120
#  6   banana split   amy       amy adams     carol   carol@c.test   ""      05-Mar 10:00 (= 1)       45
SORT_CORPUS = [
    ("01-Mar-2024 00:00:00 +0000", raw([
        "Subject: Re: Apple pie", "From: Zed Zulu <zed@x.test>", "To: bob@b.test",
        "Date: Tue, 5 Mar 2024 10:00:00 +0000", "Message-ID: <s1@t>"], 30)),
    ("03-Mar-2024 00:00:00 +0000", raw([
        "Subject: banana split", "From: =?UTF-8?Q?Adams=2C_Amy?= <amy@x.test>",
        "To: Carol <carol@c.test>, al@a.test", "Cc: dan@d.test", "Message-ID: <s2@t>"], 90)),
    ("10-Mar-2024 00:00:00 +0000", raw([
        "Subject: =?UTF-8?Q?=C3=84pfel?=", "From: =?UTF-8?Q?=C3=89mile?= <emile@x.test>",
        "To: team: yves@y.test, abe@a.test;", "Cc: Abe <abe@a.test>",
        "Date: Sat, 2 Mar 2024 12:00:00 +0100", "Message-ID: <s3@t>"], 60)),
    ("04-Mar-2024 00:00:00 +0000", raw([
        "Subject: [list] Fwd: apple pie (fwd)", "From: bob@b.test", "To: Xavier <xavier@x.test>",
        "Cc: Carl C <carl@c.test>, aaron@a.test", "Date: Fri, 1 Mar 2024 09:00:00 -0500", "Message-ID: <s4@t>"], 15)),
    ("02-Mar-2024 00:00:00 +0000", raw([
        "From: Mallory <mallory@m.test>", "Date: not a date at all", "Message-ID: <s5@t>"], 120)),
    ("05-Mar-2024 00:00:00 +0000", raw([
        "Subject: RE: re: Banana\t Split", "From: Amy Adams <amy@y.test>", "To: carol@c.test",
        "Date: Tue, 5 Mar 2024 10:00:00 +0000", "Message-ID: <s6@t>"], 45)),
]


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def sorted_box(inst):  # type: ignore[no-untyped-def]
    c = imap(inst, account(inst, "sort"))
    box = new_box(c, "sort")
    fill(c, box, SORT_CORPUS)
    yield c
    c.logout()


def sort(c, criteria: str, *search: str, charset: str = "UTF-8") -> list[int]:  # type: ignore[no-untyped-def]
    data = ok(c.sort(f"({criteria})", charset, *(search or ("ALL",))))
    return [int(x) for x in (data[0] or b"").split()]


@pytest.mark.parametrize("criteria,expected", [
    ("ARRIVAL", [1, 5, 2, 4, 6, 3]),
    ("REVERSE ARRIVAL", [3, 6, 4, 2, 5, 1]),
    ("DATE", [4, 5, 3, 2, 1, 6]),
    ("REVERSE DATE", [1, 6, 2, 3, 5, 4]),  # 1 and 6 were sent at the same time: still by sequence number
    ("SIZE", [4, 1, 6, 3, 2, 5]),
    ("REVERSE SIZE", [5, 2, 3, 6, 1, 4]),
    ("SUBJECT", [5, 1, 4, 2, 6, 3]),
    ("SUBJECT DATE", [5, 4, 1, 2, 6, 3]),
    ("SUBJECT REVERSE DATE", [5, 1, 4, 6, 2, 3]),
    ("FROM", [2, 6, 4, 3, 5, 1]),
    ("FROM REVERSE DATE", [6, 2, 4, 3, 5, 1]),
    ("TO", [5, 1, 2, 6, 4, 3]),
    ("CC", [1, 5, 6, 3, 4, 2]),
    ("CC SIZE", [1, 6, 5, 3, 4, 2]),
    ("REVERSE CC", [2, 4, 3, 1, 5, 6]),
    ("DISPLAYFROM", [2, 6, 4, 5, 1, 3]),
    ("DISPLAYTO", [5, 1, 2, 6, 4, 3]),
])
def test_sort_keys(sorted_box, criteria, expected) -> None:
    assert sort(sorted_box, criteria) == expected


def test_sort_with_search_criteria_and_uid(sorted_box) -> None:
    c = sorted_box
    assert sort(c, "SUBJECT", "FROM", "amy") == [2, 6]
    assert sort(c, "SIZE", "SENTBEFORE", "03-Mar-2024") == [4, 3]  # 2 and 5 have no sent date to match
    assert sort(c, "DATE", "OR", "SUBJECT", "apple", "TO", "yves") == [4, 3, 1]
    assert sort(c, "DATE", "SUBJECT", "nothing-like-this") == []
    assert sort(c, "ARRIVAL", "ALL", charset="US-ASCII") == [1, 5, 2, 4, 6, 3]
    data = ok(c.uid("SORT", "(REVERSE SIZE)", "UTF-8", "ALL"))
    assert [int(x) for x in data[0].split()] == [6, 3, 4, 7, 2, 5]  # UIDs: sequence number + 1
    data = ok(c.uid("SORT", "(SUBJECT)", "US-ASCII", "UID", "3:5"))
    assert [int(x) for x in data[0].split()] == [5, 3, 4]  # apple pie, banana split, äpfel
    data = ok(c.sort("(DATE)", "UTF-8", "MODSEQ", "1"))  # CONDSTORE: the highest MODSEQ of the matches
    assert re.fullmatch(rb"4 5 3 2 1 6 \(MODSEQ \d+\)", data[0]), data


def test_sort_errors(inst, sorted_box) -> None:
    c = sorted_box
    for args in (("KOI8-R", "ALL"), ("UTF-8", "CHARSET", "KOI8-R", "ALL")):
        typ, data = c._simple_command("SORT", "(DATE)", *args)
        assert typ == "NO" and b"[BADCHARSET (UTF-8 US-ASCII)]" in data[-1], data
    for bad in (("(NAME)", "UTF-8", "ALL"), ("(REVERSE)", "UTF-8", "ALL"), ("()", "UTF-8", "ALL"),
                ("DATE", "UTF-8", "ALL"), ("(DATE)",), ("(DATE)", "UTF-8", "NOSUCHKEY")):
        with pytest.raises(imaplib.IMAP4.error, match="SORT command error: BAD"):
            c._simple_command("SORT", *bad)
    assert ok(c.noop())  # still in a good state
    caps = ok(c.capability())[0].split()
    for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES", b"ESEARCH"):
        assert cap in caps
    ch = Chat(inst.ports["imaps"], tls=True)
    try:
        ch.login(account(inst, "sort"))
        ch.send("s1 SORT (DATE) UTF-8 ALL")
        line, _ = ch.tagged("s1")
        assert line.startswith(b"s1 BAD"), line  # no mailbox selected
    finally:
        ch.close()


def test_sort_follows_appends_and_expunges(inst) -> None:
    """The keys a session keeps between SORTs follow the mailbox: new mail sorts in, expunged mail drops out."""
    c = imap(inst, account(inst, "sort"))
    try:
        box = new_box(c, "sort-live")
        fill(c, box, [("01-Mar-2024 00:00:00 +0000", raw(["Subject: m", "From: m@x.test"], 1)),
                      ("02-Mar-2024 00:00:00 +0000", raw(["Subject: c", "From: c@x.test"], 1))])
        assert sort(c, "SUBJECT") == [2, 1] and sort(c, "FROM") == [2, 1]
        other = imap(inst, account(inst, "sort"))
        ok(other.append(box, None, '"03-Mar-2024 00:00:00 +0000"', raw(["Subject: Re: a", "From: a@x.test"], 1)))
        other.logout()
        ok(c.noop())
        assert sort(c, "SUBJECT") == [3, 2, 1] and sort(c, "FROM") == [3, 2, 1] and sort(c, "DATE") == [1, 2, 3]
        ok(c.store("2", "+FLAGS", "(\\Deleted)"))
        ok(c.expunge())
        assert sort(c, "SUBJECT") == [2, 1] and sort(c, "REVERSE DATE") == [2, 1]
    finally:
        c.logout()


# --------------------------------------------------------------- THREAD corpus
# seq  Message-ID  parents                       subject                 sent
#  1   a           -                             Party                   01-Jan 10:00
#  2   b           In-Reply-To a                 Re: Party               01-Jan 11:00
#  3   c           References a b                Re: Party               01-Jan 12:00
#  4   d           References a b                Re: Party               01-Jan 11:30
#  5   e           References x (missing)        Lunch                   02-Jan 09:00
#  6   f           References x                  =?..?= "Re: Lunch"      02-Jan 10:00
#  7   g           References y (missing)        Solo                    03-Jan
#  8   h           -                             Re: Solo                04-Jan
#  9   (none)      -                             Meeting                 05-Jan
# 10   a (dup)     -                             Meeting                 06-Jan
# 11   k           References b j (j missing)    Re: Party               01-Jan 13:00
# 12   m           In-Reply-To k                 Re: Party               no Date: INTERNALDATE 01-Jan 14:00
# 13   p           References q                  Loop                    07-Jan
# 14   q           References p (a loop)         Re: Loop                08-Jan
#
# REFERENCES: 1 > 2 > {4, 3, 11 > 12} (the dummy j is pruned, 11 moves up to 2); dummy x holds 5 and 6;
# dummy y is pruned and 7 stands alone, then 8 (a reply, no parent) joins it by subject; 9 and 10 share a
# subject, neither a reply: a new dummy holds both; 14 > 13 (13 > 14 would be a loop), dated by 14.
REFERENCES = b"(1 2 (4)(3)(11 12))((5)(6))(7 8)((9)(10))(14 13)"
ORDEREDSUBJECT = b"(1 (2)(4)(3)(11)(12))(5 6)(7 8)(9 10)(13 14)"


def _t(mid: str | None, subject: str, date: str | None, extra: tuple[str, ...] = ()) -> bytes:
    head = [f"Subject: {subject}", "From: someone@t.test"]
    if mid:
        head.append(f"Message-ID: <{mid}@t>")
    if date:
        head.append(f"Date: {date}")
    return raw(head + list(extra), 1)


THREAD_CORPUS = [
    _t("a", "Party", "Mon, 1 Jan 2024 10:00:00 +0000"),
    _t("b", "Re: Party", "Mon, 1 Jan 2024 11:00:00 +0000", ("In-Reply-To: <a@t>",)),
    _t("c", "Re: Party", "Mon, 1 Jan 2024 12:00:00 +0000", ("References: <a@t>\r\n <b@t>",)),
    _t("d", "Re: Party", "Mon, 1 Jan 2024 11:30:00 +0000", ("References: <a@t> <b@t>",)),
    _t("e", "Lunch", "Tue, 2 Jan 2024 09:00:00 +0000", ("References: <x@t>",)),
    _t("f", "=?UTF-8?Q?Re=3A_Lunch?=", "Tue, 2 Jan 2024 10:00:00 +0000", ("References: <x@t>",)),
    _t("g", "Solo", "Wed, 3 Jan 2024 10:00:00 +0000", ("References: <y@t>",)),
    _t("h", "Re: Solo", "Thu, 4 Jan 2024 10:00:00 +0000"),
    _t(None, "Meeting", "Fri, 5 Jan 2024 10:00:00 +0000"),
    _t("a", "Meeting", "Sat, 6 Jan 2024 10:00:00 +0000"),
    _t("k", "Re: Party", "Mon, 1 Jan 2024 13:00:00 +0000", ("References: <b@t> <j@t>",)),
    _t("m", "Re: Party", None, ("In-Reply-To: <k@t> (sent by k)",)),
    _t("p", "Loop", "Sun, 7 Jan 2024 10:00:00 +0000", ("References: <q@t>",)),
    _t("q", "Re: Loop", "Mon, 8 Jan 2024 10:00:00 +0000", ("References: <p@t>",)),
]


@pytest.fixture(scope="module")
def thread_box(inst):  # type: ignore[no-untyped-def]
    c = imap(inst, account(inst, "thread"))
    box = new_box(c, "thread")
    fill(c, box, [("01-Jan-2024 14:00:00 +0000", m) for m in THREAD_CORPUS])
    yield c
    c.logout()


def thread(c, algorithm: str, *search: str) -> bytes:  # type: ignore[no-untyped-def]
    data = ok(c.thread(algorithm, "UTF-8", *(search or ("ALL",))))
    return data[0] or b""


def test_thread_references(thread_box) -> None:
    assert thread(thread_box, "REFERENCES") == REFERENCES


def test_thread_orderedsubject(thread_box) -> None:
    assert thread(thread_box, "ORDEREDSUBJECT") == ORDEREDSUBJECT


def test_thread_uid_and_search(thread_box) -> None:
    c = thread_box
    data = ok(c.uid("THREAD", "REFERENCES", "UTF-8", "ALL"))
    assert data[0] == b"(2 3 (5)(4)(12 13))((6)(7))(8 9)((10)(11))(15 14)"
    # without message 2 (b): b becomes a dummy between 1 and its replies, and is pruned
    assert thread(c, "REFERENCES", "NOT", "2") == b"(1 (4)(3)(11 12))((5)(6))(7 8)((9)(10))(14 13)"
    assert thread(c, "ORDEREDSUBJECT", "SUBJECT", "lunch") == b"(5 6)"
    assert thread(c, "REFERENCES", "SUBJECT", "no-such-subject") == b""
    typ, data = c._simple_command("THREAD", "REFERENCES", "ISO-8859-1", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[-1]
    with pytest.raises(imaplib.IMAP4.error, match="THREAD command error: BAD"):
        c._simple_command("THREAD", "BYSIZE", "UTF-8", "ALL")
    # a second THREAD reads the References from the cache: same answer
    assert thread(c, "REFERENCES") == REFERENCES


def test_thread_follows_appends_and_expunges(inst) -> None:
    """Threads a session keeps for a whole mailbox are made again once its messages change."""
    c = imap(inst, account(inst, "thread"))
    try:
        box = new_box(c, "thread-live")
        fill(c, box, [("01-Jan-2024 14:00:00 +0000", _t("la", "Alpha", "Mon, 1 Jan 2024 10:00:00 +0000")),
                      ("01-Jan-2024 14:00:00 +0000", _t("lb", "Beta", "Tue, 2 Jan 2024 10:00:00 +0000"))])
        assert thread(c, "REFERENCES") == b"(1)(2)"
        assert ok(c.uid("THREAD", "REFERENCES", "UTF-8", "ALL"))[0] == b"(2)(3)"
        ok(c.append(box, None, None, _t("lc", "Re: Alpha", "Wed, 3 Jan 2024 10:00:00 +0000", ("In-Reply-To: <la@t>",))))
        ok(c.noop())
        assert thread(c, "REFERENCES") == b"(1 3)(2)"
        assert ok(c.uid("THREAD", "REFERENCES", "UTF-8", "ALL"))[0] == b"(2 4)(3)"
        ok(c.store("1", "+FLAGS", "(\\Deleted)"))
        ok(c.expunge())
        assert thread(c, "REFERENCES") == b"(1)(2)"  # the reply's parent is gone: a thread of its own
        assert thread(c, "ORDEREDSUBJECT") == b"(1)(2)"
    finally:
        c.logout()


# ------------------------------------------------------------- pure functions


@pytest.mark.parametrize("subject,base,reply", [
    ("Re: hello", "hello", True),
    ("RE: Re: [list] Fwd: hello (fwd)", "hello", True),
    ("[fwd: Re: hello]", "hello", True),
    ("Re: [fwd: [x] re: y (fwd)]", "y", True),
    ("[list] hello", "hello", False),
    ("[only a blob]", "[only a blob]", False),
    ("  re:  re:hello \t ", "hello", True),
    ("Re[2]: hi", "hi", True),
    ("Fw: x", "x", True),
    ("reply: x", "reply: x", False),
    ("[a][b] re: x", "x", True),
    ("hello (fwd) (fwd)", "hello", True),
    ("", "", False),
])
def test_base_subject(subject, base, reply) -> None:
    assert base_subject(subject.casefold()) == (base, reply)


@pytest.mark.parametrize("header,local,display", [
    ("alice <a@x>", "a", "alice"),
    ('"doe, john" <j@x>, b@y', "j", "doe, john"),
    ("doe, john <j@x>", "j", "doe, john"),  # a decoded display name with a comma
    ("team: frank@x, g@y;", "frank", "frank@x"),
    ("a@x (alice a)", "a", "alice a"),
    ("undisclosed-recipients:;", "", ""),
    ("<@r1,@r2:u@h>", "u", "u@h"),
    ('"quoted local"@x', "quoted local", "quoted local@x"),
    ("", "", ""),
])
def test_address_keys(header, local, display) -> None:
    assert addr_mailbox(header) == local
    assert display_key(header) == display


def test_deep_chain_and_many_messages_are_iterative_and_fast() -> None:
    n = 20000
    msgs = [ThreadMsg(i, (float(i), i), "chain", i > 0, f"m{i}", (f"m{i - 1}",) if i else ()) for i in range(n)]
    t0 = time.perf_counter()
    roots = thread_references(msgs)
    out = render(roots, lambda i: i + 1)
    assert time.perf_counter() - t0 < 10
    assert out == b"(" + b" ".join(b"%d" % (i + 1) for i in range(n)) + b")"
    # replies arriving before their parents, each naming the whole chain
    rev = [ThreadMsg(k, (float(k), k), "x", True, f"r{n - k}", tuple(f"r{j}" for j in range(max(0, n - k - 50), n - k)))
           for k in range(2000)]
    roots = thread_references(rev)
    assert len(roots) == 1


@pytest.mark.parametrize("seed", range(30))
def test_random_threads_keep_every_message_once(seed) -> None:
    """Duplicates, loops, self-references, missing parents, shared subjects: every message is in the
    output exactly once, for both algorithms, and the lists are balanced."""
    import random

    from imapd.threading_refs import ordered_subject

    rng = random.Random(seed)
    n = rng.randint(1, 300)
    ids = [f"id{rng.randint(0, n)}" for _ in range(n + 50)]
    msgs = []
    for i in range(n):
        subj = rng.choice(["a", "b", "c", ""])
        refs = tuple(rng.choice(ids) for _ in range(rng.randint(0, 6)))
        mid = rng.choice([None, *ids[:n]])
        msgs.append(ThreadMsg(i, (float(rng.randint(0, 20)), i), subj, rng.random() < 0.5, mid, refs))
    for roots in (thread_references(msgs), ordered_subject(msgs)):
        out = render(roots, lambda i: i + 1).decode()
        assert sorted(int(x) for x in re.findall(r"\d+", out)) == list(range(1, n + 1))
        depth = 0
        for ch in out:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0 and "()" not in out and "( " not in out


def test_references_nodes_are_bounded() -> None:
    n = 2000
    msgs = [ThreadMsg(i, (float(i), i), "s", False, f"m{i}", tuple(f"u{i}.{k}" for k in range(100))) for i in range(n)]
    t0 = time.perf_counter()
    out = render(thread_references(msgs), lambda i: i + 1)
    assert time.perf_counter() - t0 < 10
    # one subject, no reply: all under one dummy, every message once
    assert out == b"(" + b"".join(b"(%d)" % (i + 1) for i in range(n)) + b")"
