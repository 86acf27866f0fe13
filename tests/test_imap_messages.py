"""STORE, COPY, MOVE, EXPUNGE, UID EXPUNGE, CLOSE, UIDPLUS, CONDSTORE and QRESYNC."""

from __future__ import annotations

import imaplib
import re

import pytest
from imapkit import Chat, account, fetch_map, imap, message, new_box, ok


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    return account(inst, "messages")


@pytest.fixture
def c(inst, user):  # type: ignore[no-untyped-def]
    client = imap(inst, user)
    yield client
    try:
        client.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


def filled(c, n: int, prefix: str = "m") -> str:  # type: ignore[no-untyped-def]
    box = new_box(c, prefix)
    for i in range(n):
        ok(c.append(box, None, None, message(f"{prefix} {i + 1}")))
    ok(c.select(box))
    return box


def flags(c, seqs: str = "1:*") -> dict[int, set[str]]:  # type: ignore[no-untyped-def]
    return {k: v["FLAGS"] for k, v in fetch_map(ok(c.fetch(seqs, "(FLAGS)"))).items()}


def test_store_modes_and_silent(c) -> None:
    filled(c, 3)
    got = fetch_map(ok(c.store("1:2", "+FLAGS", "(\\Flagged $Todo)")))
    assert got[1]["FLAGS"] == {"\\Flagged", "$Todo"} and got[2]["FLAGS"] == {"\\Flagged", "$Todo"}
    assert fetch_map(ok(c.store("2", "-FLAGS", "($Todo)")))[2]["FLAGS"] == {"\\Flagged"}
    assert fetch_map(ok(c.store("3", "FLAGS", "(\\Seen \\Answered)")))[3]["FLAGS"] == {"\\Seen", "\\Answered"}
    assert ok(c.store("1", "+FLAGS.SILENT", "(\\Draft)")) == [None]
    assert flags(c) == {1: {"\\Flagged", "$Todo", "\\Draft"}, 2: {"\\Flagged"}, 3: {"\\Seen", "\\Answered"}}
    got = fetch_map(ok(c.store("3", "+FLAGS", "(\\Seen)")))  # no change still answers with the flags
    assert got[3]["FLAGS"] == {"\\Seen", "\\Answered"}
    got = fetch_map(ok(c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")))
    assert got[2]["UID"] == 2 and "\\Deleted" in got[2]["FLAGS"]
    for bad in ("(\\Bogus)", "(a\"b)"):
        with pytest.raises(imaplib.IMAP4.error):
            c.store("1", "+FLAGS", bad)
    with pytest.raises(imaplib.IMAP4.error):
        c.store("1", "REPLACE", "(\\Seen)")


def test_expunge_uid_expunge_and_close(c) -> None:
    box = filled(c, 5)
    ok(c.store("1,3,5", "+FLAGS", "(\\Deleted)"))
    typ, data = c.uid("EXPUNGE", "3")
    assert typ == "OK" and c.untagged_responses.pop("EXPUNGE") == [b"3"]
    assert ok(c.expunge()) == [b"4", b"1"]  # highest first: each number is right as sent
    assert [v["UID"] for v in fetch_map(ok(c.fetch("1:*", "(UID)"))).values()] == [2, 4]
    ok(c.store("1", "+FLAGS", "(\\Deleted)"))
    ok(c.close())
    assert ok(c.select(box)) == [b"1"]
    ok(c.store("1", "+FLAGS", "(\\Deleted)"))
    ok(c.unselect() if hasattr(c, "unselect") else c._simple_command("UNSELECT"))
    assert ok(c.select(box)) == [b"1"]  # UNSELECT does not expunge


def test_copy_with_copyuid_and_trycreate(c) -> None:
    filled(c, 3, "src")
    dst = new_box(c, "dst")
    ok(c.store("2", "+FLAGS", "(\\Flagged)"))
    typ, data = c.copy("2:3", dst)
    assert typ == "OK"
    m = re.search(rb"\[COPYUID (\d+) 2:3 1:2\]", data[-1])
    assert m, data
    typ, data = c.copy("1", "nowhere")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    ok(c.select(dst))
    got = fetch_map(ok(c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")))
    assert got[1]["FLAGS"] == {"\\Flagged"}
    assert got[2]["BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: src 3\r\n\r\n"


def test_move_is_atomic_and_expunges_in_source(inst, user) -> None:
    c = imap(inst, user)
    src = filled(c, 4, "mv")
    dst = new_box(c, "mvdst")
    typ, data = c._simple_command("MOVE", "2:3", dst)
    assert typ == "OK"
    assert re.search(rb"COPYUID \d+ 2:3 1:2", c.untagged_responses.pop("OK")[0])
    assert c.untagged_responses.pop("EXPUNGE") == [b"3", b"2"]
    assert ok(c.status(src, "(MESSAGES)"))[0].endswith(b"(MESSAGES 2)")
    assert ok(c.status(dst, "(MESSAGES)"))[0].endswith(b"(MESSAGES 2)")
    typ, data = c._simple_command("UID", "MOVE", "4", dst)
    assert typ == "OK"
    typ, data = c._simple_command("MOVE", "1", src)
    assert typ == "NO"  # same mailbox
    c.logout()


def test_uids_are_never_reused(c) -> None:
    box = filled(c, 2, "reuse")
    ok(c.store("1:2", "+FLAGS", "(\\Deleted)"))
    ok(c.expunge())
    data = ok(c.append(box, None, None, message("after expunge")))
    assert b"[APPENDUID" in data[0] and data[0].split()[2] == b"3]"
    status = ok(c.status(box, "(UIDNEXT)"))[0]
    assert status.endswith(b"(UIDNEXT 4)")


def test_condstore_fetch_store_and_search(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(user)
    d = imap(inst, user)
    box = filled(d, 3, "cs")
    d.logout()
    chat.send(f"s SELECT {box} (CONDSTORE)")
    line, untagged = chat.tagged("s")
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"\n".join(untagged)).group(1))
    chat.send("f FETCH 1:* (FLAGS) (CHANGEDSINCE 0)")
    line, untagged = chat.tagged("f")
    assert len(untagged) == 3 and all(b"MODSEQ (" in u for u in untagged)
    chat.send("t STORE 2 +FLAGS (\\Seen)")
    line, untagged = chat.tagged("t")
    m = re.search(rb"MODSEQ \((\d+)\)", untagged[0])
    assert m and int(m.group(1)) > hms  # CONDSTORE enabled: STORE replies carry MODSEQ
    changed = int(m.group(1))
    chat.send(f"f2 FETCH 1:* (FLAGS) (CHANGEDSINCE {changed - 1})")
    line, untagged = chat.tagged("f2")
    assert len(untagged) == 1 and untagged[0].startswith(b"* 2 FETCH")
    chat.send(f"u STORE 1:3 (UNCHANGEDSINCE {hms}) +FLAGS (\\Flagged)")
    line, untagged = chat.tagged("u")
    assert line.startswith(b"u OK [MODIFIED 2]"), line
    assert {u.split()[1] for u in untagged} == {b"1", b"3"}
    chat.send(f"q SEARCH MODSEQ {changed}")
    line, untagged = chat.tagged("q")
    assert re.match(rb"\* SEARCH 1 2 3 \(MODSEQ \d+\)", untagged[0])
    chat.send(f"st STATUS {box} (HIGHESTMODSEQ)")
    line, untagged = chat.tagged("st")
    assert b"HIGHESTMODSEQ" in untagged[0]
    chat.close()


def test_qresync_select_and_vanished(inst, user) -> None:
    d = imap(inst, user)
    box = filled(d, 5, "qr")
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", ok(d.status(box, "(UIDVALIDITY HIGHESTMODSEQ)"))[0]).group(1))
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", ok(d.status(box, "(HIGHESTMODSEQ)"))[0]).group(1))
    ok(d.store("2", "+FLAGS", "(\\Seen)"))
    ok(d.store("4", "+FLAGS", "(\\Deleted)"))
    ok(d.expunge())
    d.logout()
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(user)
    chat.send(f"s SELECT {box} (QRESYNC ({uidvalidity} {hms}))")
    assert chat.tagged("s")[0].startswith(b"s BAD")  # QRESYNC must be enabled first
    chat.send("e ENABLE QRESYNC")
    chat.tagged("e")
    chat.send(f"s2 SELECT {box} (QRESYNC ({uidvalidity} {hms} 1:5))")
    line, untagged = chat.tagged("s2")
    text = b"\n".join(untagged)
    assert b"* VANISHED (EARLIER) 4" in text
    assert re.search(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", text), text
    chat.send(f"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
    line, untagged = chat.tagged("f")
    assert untagged[0] == b"* VANISHED (EARLIER) 4"
    chat.send("t STORE 1 +FLAGS (\\Deleted)")
    chat.tagged("t")
    chat.send("x EXPUNGE")
    line, untagged = chat.tagged("x")
    assert untagged == [b"* VANISHED 1"]  # with QRESYNC, VANISHED instead of EXPUNGE
    chat.send(f"s3 SELECT {box}")
    line, untagged = chat.tagged("s3")
    assert untagged[0] == b"* OK [CLOSED] Previous mailbox closed"
    chat.close()


def test_fetch_on_expunged_by_other_session_keeps_sequence_numbers(inst, user) -> None:
    a = Chat(inst.ports["imaps"], tls=True)
    a.login(user)
    b = imap(inst, user)
    box = filled(b, 3, "seq")
    a.send(f"s SELECT {box}")
    a.tagged("s")
    ok(b.store("2", "+FLAGS", "(\\Deleted)"))
    ok(b.expunge())
    a.send("f FETCH 1:3 (UID)")
    line, untagged = a.tagged("f")
    assert line.startswith(b"f OK")
    assert not any(b"EXPUNGE" in u for u in untagged)  # never during FETCH
    assert untagged[0].startswith(b"* 1 FETCH") and untagged[-1].startswith(b"* 3 FETCH (UID 3")
    a.send("t STORE 3 +FLAGS (\\Flagged)")
    line, untagged = a.tagged("t")
    assert not any(b"EXPUNGE" in u for u in untagged) and untagged[-1].startswith(b"* 3 FETCH")
    a.send("n NOOP")
    line, untagged = a.tagged("n")
    assert b"* 2 EXPUNGE" in untagged
    a.send("g FETCH 2 (UID)")
    line, untagged = a.tagged("g")
    assert untagged == [b"* 2 FETCH (UID 3)"]
    a.close()
    b.logout()
