"""IMAP mailbox commands: LIST (extended, special-use, status), LSUB, CREATE, DELETE, RENAME,
SUBSCRIBE, STATUS, SELECT/EXAMINE, APPEND, QUOTA."""

from __future__ import annotations

import imaplib
import re

import pytest
from imapkit import Chat, account, imap, message, new_box, ok


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    return account(inst, "boxes", quota_bytes=10 * 1024 * 1024, quota_messages=1000)


@pytest.fixture
def c(inst, user):  # type: ignore[no-untyped-def]
    client = imap(inst, user)
    yield client
    try:
        client.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


def command(c, name: str, *args: str) -> list:  # type: ignore[no-untyped-def]
    """Run a command imaplib has no method for; its untagged data of the same name."""
    typ, data = c._simple_command(name, *args)
    assert typ == "OK", data
    return c._untagged_response(typ, data, name)[1]


def names(data: list) -> dict[str, str]:
    out = {}
    for line in data:
        m = re.match(rb'\(([^)]*)\) "/" (.+)$', line)
        assert m, line
        out[m.group(2).decode().strip('"')] = m.group(1).decode()
    return out


def test_default_mailboxes_with_special_use(c) -> None:
    got = names(ok(c.list()))
    assert got["INBOX"] == "\\HasNoChildren"
    for box, use in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Junk", "\\Junk"), ("Trash", "\\Trash"),
                     ("Archive", "\\Archive")):
        assert use in got[box].split()
    special = names(command(c, "LIST", "(SPECIAL-USE)", '""', '"*"'))
    assert "INBOX" not in special and "Sent" in special


def test_list_patterns_hierarchy_and_reference(c) -> None:
    ok(c.create("proj/alpha/deep"))  # parents are created too
    ok(c.create("proj/beta/"))  # a trailing delimiter is dropped
    top = names(ok(c.list('""', "%")))
    assert "proj" in top and "proj/alpha" not in top
    assert "\\HasChildren" in top["proj"]
    under = names(ok(c.list('""', "proj/%")))
    assert set(under) == {"proj/alpha", "proj/beta"}
    assert "\\HasChildren" in under["proj/alpha"] and "\\HasNoChildren" in under["proj/beta"]
    assert set(names(ok(c.list("proj/", "*")))) == {"proj/alpha", "proj/alpha/deep", "proj/beta"}
    assert set(names(ok(c.list('""', "inbox")))) == {"INBOX"}
    assert ok(c.list('""', '""')) == [b'(\\Noselect) "/" ""']
    ok(c.delete("proj"))  # its children stay; the name remains as a non-selectable level
    top = names(ok(c.list('""', "proj")))
    assert "\\Noselect" in top["proj"]


def test_list_extended_return_status_and_subscribed(c) -> None:
    box = new_box(c, "lx")
    ok(c.append(box, None, None, message("one")))
    ok(c.subscribe(box))
    lst = command(c, "LIST", '""', f'"{box}"', "RETURN", "(SUBSCRIBED STATUS (MESSAGES UNSEEN UIDNEXT))")
    status = c.untagged_responses.pop("STATUS")
    assert "\\Subscribed" in lst[0].decode()
    assert re.search(rb"MESSAGES 1 UNSEEN 1 UIDNEXT 2", status[0])
    lsub = names(ok(c.lsub('""', "lx-*")))
    assert box in lsub
    ok(c.unsubscribe(box))
    assert box not in names([x for x in ok(c.lsub('""', "*")) if x])
    ok(c.unsubscribe("never-existed"))


def test_create_delete_rename(c) -> None:
    box = new_box(c, "cd")
    typ, data = c.create(box)
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    typ, data = c.create("INBOX")
    assert typ == "NO"
    ok(c.append(box, None, None, message("kept across rename")))
    ok(c.rename(box, box + "-renamed"))
    typ, data = c.select(box)
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    assert ok(c.select(box + "-renamed")) == [b"1"]
    ok(c.close())
    ok(c.delete(box + "-renamed"))
    typ, data = c.delete(box + "-renamed")
    assert typ == "NO"
    typ, data = c.delete("INBOX")
    assert typ == "NO"


def test_create_special_use(c) -> None:
    typ, data = c._simple_command("CREATE", "MyFlagged", "(USE (\\Flagged))")
    assert typ == "OK", data
    assert "\\Flagged" in names(ok(c.list('""', "MyFlagged")))["MyFlagged"]
    typ, data = c._simple_command("CREATE", "OtherSent", "(USE (\\Sent))")
    assert typ == "NO" and b"USEATTR" in data[-1]
    typ, data = c._simple_command("CREATE", "Weird", "(USE (\\Important))")
    assert typ == "NO" and b"USEATTR" in data[-1]


def test_rename_inbox_moves_its_messages(inst) -> None:
    who = account(inst, "boxes-inbox")
    c = imap(inst, who)
    for i in range(3):
        ok(c.append("INBOX", None, None, message(f"inbox {i}")))
    ok(c.rename("INBOX", "Old-Inbox"))
    assert ok(c.select("INBOX")) == [b"0"]
    assert ok(c.select("Old-Inbox")) == [b"3"]
    c.logout()


def test_status_items(c) -> None:
    box = new_box(c, "st")
    ok(c.append(box, "(\\Seen)", None, message("a")))
    ok(c.append(box, None, None, message("b")))
    data = ok(c.status(box, "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)"))[0]
    assert re.search(rb"MESSAGES 2 RECENT 0 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 1 HIGHESTMODSEQ \d+ SIZE \d+", data), data
    typ, data = c.status("no-such-box", "(MESSAGES)")
    assert typ == "NO"
    with pytest.raises(imaplib.IMAP4.error, match="STATUS"):
        c.status(box, "(BOGUS)")


def test_select_and_examine_responses(inst, user) -> None:
    c = imap(inst, user)
    box = new_box(c, "sel")
    ok(c.append(box, "(\\Seen $Important)", None, message("seen")))
    ok(c.append(box, None, None, message("unseen")))
    c.logout()
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(user)
    chat.send(f"s SELECT {box}")
    line, untagged = chat.tagged("s")
    text = b"\n".join(untagged)
    assert line.startswith(b"s OK [READ-WRITE]")
    assert b"* 2 EXISTS" in text and b"* OK [UNSEEN 2]" in text
    assert re.search(rb"\* FLAGS \(.*\$Important.*\)", text)
    assert re.search(rb"PERMANENTFLAGS \([^)]*\\\*", text)  # new keywords allowed
    for code in (b"UIDVALIDITY", b"UIDNEXT 3", b"HIGHESTMODSEQ"):
        assert code in text
    chat.send(f"e EXAMINE {box}")
    line, untagged = chat.tagged("e")
    assert line.startswith(b"e OK [READ-ONLY]")
    assert b"[PERMANENTFLAGS ()]" in b"\n".join(untagged)
    chat.send("t STORE 1 +FLAGS (\\Flagged)")
    assert chat.tagged("t")[0].startswith(b"t NO [READ-ONLY]")
    chat.send("x EXPUNGE")
    assert chat.tagged("x")[0].startswith(b"x NO")
    chat.send("u UNSELECT")
    assert chat.tagged("u")[0].startswith(b"u OK")
    chat.send("f FETCH 1 FLAGS")
    assert chat.tagged("f")[0].startswith(b"f BAD")
    chat.send(f"s2 SELECT {box}")
    chat.tagged("s2")
    chat.send("s3 SELECT no-such-mailbox")
    assert chat.tagged("s3")[0].startswith(b"s3 NO [NONEXISTENT]")
    chat.send("f2 FETCH 1 FLAGS")  # a failed SELECT leaves nothing selected
    assert chat.tagged("f2")[0].startswith(b"f2 BAD")
    chat.close()


def test_append_flags_date_and_uidplus(c) -> None:
    box = new_box(c, "ap")
    data = ok(c.append(box, "(\\Flagged $Label1)", '"17-Jul-1996 02:44:25 -0700"', message("dated")))
    m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert m and m.group(2) == b"1"
    c.select(box)
    got = ok(c.fetch("1", "(FLAGS INTERNALDATE)"))[0]
    assert b"\\Flagged" in got and b"$Label1" in got
    assert b'INTERNALDATE "17-Jul-1996 09:44:25 +0000"' in got or b"17-Jul-1996" in got
    ok(c.append(box, None, None, message("no flags, no date")))  # Twisted's BAD on this is fixed
    typ, data = c.append("missing-box", None, None, message("x"))
    assert typ == "NO" and b"TRYCREATE" in data[0]
    with pytest.raises(imaplib.IMAP4.error, match="flag"):
        c.append(box, "(\\Bogus)", None, message("x"))


def test_append_into_selected_mailbox_announces_exists(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(user)
    chat.send("c CREATE appsel")
    chat.tagged("c")
    chat.send("s SELECT appsel")
    chat.tagged("s")
    msg = message("while selected")
    chat.raw(b"a APPEND appsel {%d+}\r\n" % len(msg) + msg + b"\r\n")
    line, untagged = chat.tagged("a")
    assert line.startswith(b"a OK [APPENDUID")
    assert b"* 1 EXISTS" in untagged
    chat.close()


def test_quota(c, inst, user) -> None:
    data = c.getquotaroot("INBOX")
    assert data[0] == "OK"
    roots, quotas = data[1]
    assert roots[0].startswith(b'INBOX ""')
    m = re.search(rb"STORAGE (\d+) 10240 MESSAGE (\d+) 1000", quotas[0])
    assert m, quotas
    typ, data = c._simple_command("GETQUOTA", '""')
    assert typ == "OK"
    typ, data = c._simple_command("SETQUOTA", '""', "(STORAGE 1)")
    assert typ == "NO"


def test_over_quota_append_refused(inst) -> None:
    who = account(inst, "boxes-full", quota_messages=2)
    c = imap(inst, who)
    ok(c.append("INBOX", None, None, message("1")))
    ok(c.append("INBOX", None, None, message("2")))
    typ, data = c.append("INBOX", None, None, message("3"))
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    c.logout()


def test_mailbox_names_in_modified_utf7(c) -> None:
    name = "Reçus/日本"
    from imapd.wire import encode_mailbox

    wire = encode_mailbox(name).decode()
    assert wire == "Re&AOc-us/&ZeVnLA-"
    ok(c.create(wire))
    listed = names(ok(c.list('""', "Re*")))
    assert wire in listed and "Re&AOc-us" in listed
    ok(c.select(wire))
    typ, data = c.create("Bad&Name")
    assert typ == "NO"


def test_append_binary_literal8(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(user)
    chat.send("c CREATE bin8")
    chat.tagged("c")
    msg = b"Subject: binary\r\nContent-Transfer-Encoding: binary\r\n\r\nA\x00B\r\n"
    chat.send(b"a APPEND bin8 ~{%d}" % len(msg))
    chat.expect(r"\+ ")
    chat.raw(msg + b"\r\n")
    assert chat.tagged("a")[0].startswith(b"a OK [APPENDUID")
    chat.send("s SELECT bin8")
    chat.tagged("s")
    chat.send("f FETCH 1 (BINARY.PEEK[] BINARY.SIZE[])")
    line = chat.expect(r"\* 1 FETCH")
    assert line.endswith(b"BINARY[] ~{%d}" % len(msg))
    assert chat.read_exact(len(msg)) == msg
    assert chat.readline() == b" BINARY.SIZE[] %d)" % len(msg)
    chat.close()
