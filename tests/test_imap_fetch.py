"""FETCH: every data item, sections, partial fetches, BINARY, \\Seen handling, sequence sets."""

from __future__ import annotations

import imaplib
import re

import pytest
from imapkit import Chat, account, fetch_map, imap, message, multipart, new_box, ok


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    return account(inst, "fetch")


@pytest.fixture(scope="module")
def box(inst, user) -> str:  # type: ignore[no-untyped-def]
    c = imap(inst, user)
    name = new_box(c, "fetch")
    ok(c.append(name, None, '"02-Jan-2024 08:30:00 +0100"', multipart()))
    ok(c.append(name, "(\\Seen)", None, message("plain one", "Line 1\r\nLine 2\r\n")))
    ok(c.append(name, None, None, message("plain two", "x" * 5000 + "\r\n")))
    c.logout()
    return name


@pytest.fixture
def c(inst, user, box):  # type: ignore[no-untyped-def]
    client = imap(inst, user)
    ok(client.select(box))
    yield client
    try:
        client.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


def one(c, seq: str, items: str) -> dict:  # type: ignore[no-untyped-def]
    got = fetch_map(ok(c.fetch(seq, items)))
    return got[int(seq)]


def test_index_items(c) -> None:
    got = fetch_map(ok(c.fetch("1:3", "(UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ)")))
    assert sorted(got) == [1, 2, 3]
    assert got[1]["UID"] == 1 and got[3]["UID"] == 3
    assert got[1]["RFC822.SIZE"] == len(multipart())
    assert got[2]["FLAGS"] == {"\\Seen"}
    raw = ok(c.fetch("1", "INTERNALDATE"))[0]
    assert b'INTERNALDATE " 2-Jan-2024 07:30:00 +0000"' in raw  # date-day-fixed, the zone of the server (UTC here)
    assert all(v["MODSEQ"] > 0 for v in got.values())


def test_macros_all_fast_full(c) -> None:
    for macro, must in (("ALL", (b"ENVELOPE", b"INTERNALDATE", b"RFC822.SIZE", b"FLAGS")),
                        ("FAST", (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE")),
                        ("FULL", (b"ENVELOPE", b"BODY (", b"FLAGS"))):
        data = ok(c.fetch("2", macro))
        text = b"".join(x if isinstance(x, bytes) else x[0] + x[1] for x in data)
        for m in must:
            assert m in text, (macro, m)
    assert b"BODYSTRUCTURE" not in b"".join(x if isinstance(x, bytes) else x[0] for x in ok(c.fetch("2", "FULL")))


def test_envelope_with_groups_and_encoded_words(c) -> None:
    text = ok(c.fetch("1", "(ENVELOPE)"))[0]
    text = text if isinstance(text, bytes) else text[0] + text[1]
    assert b'"Tue, 2 Jan 2024 08:30:00 +0100"' in text
    assert b'"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= report"' in text
    assert b'(("Carol" NIL "carol" "example.test"))' in text
    assert b'((NIL NIL "dave" "example.test")("Eve E." NIL "eve" "example.test"))' in text
    assert b'((NIL NIL "team" NIL)(NIL NIL "frank" "example.test")(NIL NIL "grace" "example.test")(NIL NIL NIL NIL))' in text
    assert b'"<orig@example.test>" "<mp1@example.test>")' in text


def test_bodystructure_and_body(c) -> None:
    raw = ok(c.fetch("1", "(BODYSTRUCTURE)"))
    text = b"".join(x if isinstance(x, bytes) else x[0] + x[1] for x in raw)
    assert re.search(rb'\(\("text" "plain" \("CHARSET" "utf-8"\) NIL NIL "QUOTED-PRINTABLE" \d+ 1 NIL NIL NIL NIL\)'
                     rb'\("text" "html" \("CHARSET" "utf-8"\) NIL NIL "7BIT" \d+ 1 NIL NIL NIL NIL\) "alternative"', text), text
    assert b'("application" "octet-stream" ("NAME" "data.bin") NIL NIL "BASE64" 16 NIL ("ATTACHMENT" ("FILENAME" "data.bin")) NIL NIL)' in text
    assert re.search(rb'\("message" "rfc822" NIL NIL NIL "7BIT" \d+ \("Mon, 1 Jan 2024 00:00:00 \+0000" "inner message"', text)
    assert re.search(rb'"mixed" \("BOUNDARY" "outer"\) NIL NIL NIL\)', text)
    body = ok(c.fetch("2", "(BODY)"))[0]
    assert re.search(rb'BODY \("text" "plain" \("CHARSET" "us-ascii"\) NIL NIL "7BIT" 16 2\)', body), body


def test_body_sections(c) -> None:
    got = one(c, "1", "(BODY.PEEK[1.1] BODY.PEEK[1.2] BODY.PEEK[2] BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT] BODY.PEEK[3.1] BODY.PEEK[1.1.MIME])")
    assert got["BODY[1.1]"] == b"Plain caf=C3=A9 text with pineapple"
    assert got["BODY[1.2]"] == b"<p>HTML <b>mango</b> text</p>"
    assert got["BODY[2]"] == b"AAECAwQFBgcICQ=="
    assert got["BODY[3.HEADER]"].startswith(b"From: Inner <inner@example.test>") and got["BODY[3.HEADER]"].endswith(b"\r\n\r\n")
    assert got["BODY[3.TEXT]"] == b"Inner body line"
    assert got["BODY[3.1]"] == b"Inner body line"
    assert got["BODY[1.1.MIME]"] == b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    whole = one(c, "1", "(BODY.PEEK[3])")["BODY[3]"]
    assert whole.startswith(b"From: Inner") and whole.endswith(b"Inner body line")


def test_header_fields_and_not(c) -> None:
    got = one(c, "1", "(BODY.PEEK[HEADER.FIELDS (Subject X-CUSTOM)] BODY.PEEK[HEADER.FIELDS.NOT (Received Subject From To Cc Date Message-ID In-Reply-To X-Custom Content-Type)])")
    assert got["BODY[HEADER.FIELDS (SUBJECT X-CUSTOM)]"] == b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= report\r\nX-Custom: Zebra stripes\r\n\r\n"
    assert got["BODY[HEADER.FIELDS.NOT (RECEIVED SUBJECT FROM TO CC DATE MESSAGE-ID IN-REPLY-TO X-CUSTOM CONTENT-TYPE)]"] == b"MIME-Version: 1.0\r\n\r\n"
    hdr = one(c, "2", "(BODY.PEEK[HEADER])")["BODY[HEADER]"]
    assert hdr.startswith(b"From: Alice") and hdr.endswith(b"\r\n\r\n")
    assert one(c, "2", "(BODY.PEEK[TEXT])")["BODY[TEXT]"] == b"Line 1\r\nLine 2\r\n"


def test_partial_fetches(c) -> None:
    full = multipart()
    got = one(c, "1", "(BODY.PEEK[]<5.10> BODY.PEEK[TEXT]<0.8> BODY.PEEK[1.1]<6.4>)")
    assert got["BODY[]<5>"] == full[5:15]
    assert got["BODY[TEXT]<0>"] == b"preamble"
    assert got["BODY[1.1]<6>"] == b"caf="
    big = one(c, "3", "(BODY.PEEK[]<4990.100000>)")["BODY[]<4990>"]
    whole = one(c, "3", "(BODY.PEEK[])")["BODY[]"]
    assert big == whole[4990:]
    raw = ok(c.fetch("3", "(BODY.PEEK[]<999999.10>)"))
    assert b'BODY[]<999999> ""' in raw[0] or (isinstance(raw[0], tuple) and raw[0][1] == b"")


def test_rfc822_items_and_binary(c) -> None:
    got = one(c, "1", "(RFC822.HEADER BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1.1])")
    assert got["RFC822.HEADER"].startswith(b"From: Carol") and got["RFC822.HEADER"].endswith(b"\r\n\r\n")
    assert got["BINARY[2]"] == bytes(range(10))
    assert got["BINARY[1.1]"] == "Plain café text with pineapple".encode()
    raw = ok(c.fetch("1", "(BINARY.SIZE[2])"))[0]
    assert b"BINARY.SIZE[2] 10" in raw
    assert fetch_map(ok(c.fetch("2", "(FLAGS)")))[2]["FLAGS"] == {"\\Seen"}
    whole = one(c, "1", "(BODY.PEEK[])")["BODY[]"]
    assert whole == multipart()


def test_nonexistent_part_is_nil_and_bad_items_rejected(c) -> None:
    raw = ok(c.fetch("2", "(BODY.PEEK[7])"))
    assert b"BODY[7] NIL" in raw[0]
    for bad in ("(BODY[HEADER.FIELDS ()])", "(FROB)", "(BODY[1.MIME.TEXT])", "(BINARY[HEADER])", "(BODY[]<1.0>)"):
        with pytest.raises(imaplib.IMAP4.error):
            c.fetch("1", bad)
    with pytest.raises(imaplib.IMAP4.error, match="sequence"):
        c.fetch("99", "FLAGS")


def test_seen_set_by_body_not_by_peek(c, inst, user) -> None:
    d = imap(inst, user)
    box = new_box(d, "seen")
    ok(d.append(box, None, None, message("seen test")))
    ok(d.select(box))
    got = fetch_map(ok(d.fetch("1", "(BODY.PEEK[TEXT])")))
    assert "FLAGS" not in got[1]
    assert fetch_map(ok(d.fetch("1", "FLAGS")))[1]["FLAGS"] == set()
    got = fetch_map(ok(d.fetch("1", "(BODY[TEXT])")))
    assert got[1]["FLAGS"] == {"\\Seen"}  # the implicit change is reported in the same FETCH
    ok(d.store("1", "-FLAGS", "(\\Seen)"))
    got = fetch_map(ok(d.fetch("1", "(RFC822)")))
    assert "\\Seen" in got[1]["FLAGS"]
    ok(d.select(box, readonly=True))
    got = fetch_map(ok(d.fetch("1", "(BODY[TEXT])")))  # read-only: nothing changes
    assert "FLAGS" not in got[1]
    d.logout()


def test_uid_fetch_ranges(c) -> None:
    got = fetch_map(ok(c.uid("FETCH", "2:*", "(FLAGS)")))
    assert [v["UID"] for v in got.values()] == [2, 3]
    got = fetch_map(ok(c.uid("FETCH", "999:*", "(FLAGS)")))
    assert [v["UID"] for v in got.values()] == [3]  # n:* always includes the highest UID
    data = c.uid("FETCH", "500:600", "(FLAGS)")
    assert data[0] == "OK" and data[1] == [None]
    got = fetch_map(ok(c.fetch("3,1", "(UID)")))
    assert sorted(got) == [1, 3]


def test_fetch_on_empty_mailbox(inst, user) -> None:
    d = imap(inst, user)
    box = new_box(d, "empty")
    ok(d.select(box))
    assert d.fetch("1:*", "(FLAGS)")[0] == "OK"
    assert d.uid("FETCH", "1:*", "(FLAGS)")[0] == "OK"
    with pytest.raises(imaplib.IMAP4.error):
        d.fetch("1", "(FLAGS)")
    d.logout()


def test_literal_response_sizes_are_exact(inst, user, box) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(user)
    chat.send(f"s EXAMINE {box}")
    chat.tagged("s")
    chat.send("f FETCH 1 (BODY.PEEK[])")
    line = chat.expect(r"\* 1 FETCH")
    n = int(re.search(rb"\{(\d+)\}$", line).group(1))
    assert chat.read_exact(n) == multipart()
    assert chat.readline() == b")"
    assert chat.tagged("f")[0].startswith(b"f OK")
    chat.close()
