"""SEARCH: every key of RFC 3501, nesting, CHARSET, UID SEARCH, ESEARCH, MODSEQ."""

from __future__ import annotations

import imaplib

import pytest
from imapkit import account, imap, message, multipart, new_box, ok


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def setup(inst):  # type: ignore[no-untyped-def]
    user = account(inst, "search")
    c = imap(inst, user)
    box = new_box(c, "search")
    ok(c.append(box, "(\\Seen)", '"01-Mar-2024 10:00:00 +0000"', message(
        "Quarterly report", "numbers and pineapple\r\n", sender="Zoe Z <zoe@corp.example>", to="alice@example.test",
        extra="Cc: carl@corp.example\r\nX-Priority: 1 (Highest)\r\n", date=1709287200)))          # 1
    ok(c.append(box, "(\\Flagged \\Answered $Work)", '"15-Mar-2024 10:00:00 +0000"', message(
        "=?UTF-8?B?R3LDvMOfZSBhdXMgTcO8bmNoZW4=?=", "Grüße body\r\n".replace("ü", "u"),
        sender="=?UTF-8?Q?J=C3=B6rg?= <joerg@example.de>", to="bob@example.test", date=1710496800)))  # 2
    ok(c.append(box, "(\\Deleted \\Draft)", '"20-Mar-2024 10:00:00 +0000"', multipart()))             # 3
    ok(c.append(box, None, '"25-Mar-2024 10:00:00 +0000"', message(
        "Big one", "y" * 20000 + "\r\n", sender="bob@example.test", to="zoe@corp.example",
        extra="Bcc: secret@example.test\r\n", date=1711360800)))                                      # 4
    ok(c.select(box))
    yield c
    c.logout()


def search(c, *criteria: str) -> list[int]:  # type: ignore[no-untyped-def]
    data = ok(c.search(None, *[x.encode() for x in criteria]))  # 8-bit as raw UTF-8 (imaplib only does ASCII)
    return [int(x) for x in data[0].split()]


@pytest.mark.parametrize("criteria,expected", [
    (("ALL",), [1, 2, 3, 4]),
    (("SEEN",), [1]), (("UNSEEN",), [2, 3, 4]),
    (("FLAGGED",), [2]), (("UNFLAGGED",), [1, 3, 4]),
    (("ANSWERED",), [2]), (("UNANSWERED",), [1, 3, 4]),
    (("DELETED",), [3]), (("UNDELETED",), [1, 2, 4]),
    (("DRAFT",), [3]), (("UNDRAFT",), [1, 2, 4]),
    (("KEYWORD", "$Work"), [2]), (("KEYWORD", "$work"), [2]), (("UNKEYWORD", "$Work"), [1, 3, 4]),
    (("NEW",), []), (("OLD",), [1, 2, 3, 4]), (("RECENT",), []),
    (("LARGER", "10000"), [4]), (("SMALLER", "1000"), [1, 2]),
    (("BEFORE", "15-Mar-2024"), [1]), (("ON", "15-Mar-2024"), [2]), (("SINCE", "20-Mar-2024"), [3, 4]),
    (("SENTBEFORE", "2-Mar-2024"), [1, 3]), (("SENTON", "15-Mar-2024"), [2]), (("SENTSINCE", "25-Mar-2024"), [4]),
    (("SUBJECT", "quarterly"), [1]), (("SUBJECT", "GRÜSSE"), [2, 3]),
    (("SUBJECT", '"aus münchen"'), [2]),
    (("FROM", "zoe"), [1]), (("FROM", "jörg"), [2]), (("TO", "corp.example"), [4]), (("CC", "carl"), [1]),
    (("BCC", "secret"), [4]),
    (("HEADER", "X-Priority", "highest"), [1]), (("HEADER", "X-Custom", "zebra"), [3]),
    (("HEADER", "Message-ID", "mp1@"), [3]), (("HEADER", "In-Reply-To", "orig"), [3]),
    (("HEADER", "X-Priority", '""'), [1]),
    (("BODY", "pineapple"), [1, 3]), (("BODY", "mango"), [3]), (("BODY", "café"), [3]),
    (("TEXT", "Zebra"), [3]), (("TEXT", "numbers"), [1]), (("BODY", "Zebra"), []),
    (("UID", "2:3"), [2, 3]), (("UID", "3:*"), [3, 4]), (("2,4",), [2, 4]), (("3:*",), [3, 4]),
    (("NOT", "SEEN"), [2, 3, 4]), (("OR", "SEEN", "FLAGGED"), [1, 2]),
    (("OR", "FROM", "zoe", "NOT", "SMALLER", "10000"), [1, 4]),
    (("(", "UNSEEN", "UNDELETED", ")"), [2, 4]),
    (("UNSEEN", "OR", "BODY", "mango", "LARGER", "10000"), [3, 4]),
    (("NOT", "(", "OR", "SEEN", "DELETED", ")"), [2, 4]),
])
def test_search_keys(setup, criteria, expected) -> None:
    assert search(setup, *criteria) == expected


def test_charset_and_uid_search(setup) -> None:
    c = setup
    typ, data = c._simple_command("SEARCH", "CHARSET", "UTF-8", "FROM", '"jörg"'.encode())
    assert typ == "OK"
    assert c._untagged_response(typ, data, "SEARCH")[1][0] == b"2"
    typ, data = c._simple_command("SEARCH", "CHARSET", "KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[-1]
    assert ok(c.uid("SEARCH", "FLAGGED"))[0] == b"2"


def test_esearch_and_modseq(setup) -> None:
    c = setup
    typ, data = c._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNDELETED")
    assert typ == "OK"
    es = c._untagged_response(typ, data, "ESEARCH")[1][0]
    assert es.endswith(b"MIN 1 MAX 4 COUNT 3 ALL 1:2,4"), es
    typ, data = c._simple_command("UID", "SEARCH", "RETURN", "(COUNT)", "NEW")
    es = c._untagged_response(typ, data, "ESEARCH")[1][0]
    assert es.endswith(b"UID COUNT 0")
    got = ok(c.search(None, "MODSEQ", "1"))[0]
    assert got.startswith(b"1 2 3 4 (MODSEQ ")


def test_bad_searches(setup) -> None:
    c = setup
    for bad in (("BEFORE", "32-Foo-2024"), ("FROBNICATE",), ("OR", "SEEN"), ("LARGER", "x"), ("HEADER", "X:Y", "z")):
        with pytest.raises(imaplib.IMAP4.error):
            c.search(None, *bad)


def test_nesting_limit(setup) -> None:
    c = setup
    deep = "(" * 40 + "ALL" + ")" * 40
    with pytest.raises(imaplib.IMAP4.error, match="LIMIT|nested"):
        c.search(None, deep)
    nots = " ".join(["NOT"] * 40) + " ALL"
    with pytest.raises(imaplib.IMAP4.error, match="LIMIT|nested"):
        c.search(None, nots)
    assert search(c, "(" * 10 + "ALL" + ")" * 10) == [1, 2, 3, 4]
