"""Hostile input: giant and lying literals, endless lines, deep nesting, path tricks in
mailbox names, other users' mailboxes, STARTTLS injection, deep MIME. Each is answered
with a clear reply (or the connection is closed), and the server stays healthy."""

from __future__ import annotations

import ssl

import pytest
from imapkit import PASSWORD, Chat, account, imap, message, new_box, ok


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    return account(inst, "hostile")


@pytest.fixture
def chat(inst, user):  # type: ignore[no-untyped-def]
    ch = Chat(inst.ports["imaps"], tls=True)
    ch.login(user)
    yield ch
    ch.close()


def healthy(inst, user: str) -> None:  # type: ignore[no-untyped-def]
    c = imap(inst, user)
    ok(c.noop())
    c.logout()


def test_giant_synchronising_literal_refused_without_continuation(inst, user, chat) -> None:
    chat.send("a APPEND INBOX {99999999999}")
    line, untagged = chat.tagged("a")
    assert line.startswith(b"a NO [TOOBIG]")
    assert not any(u.startswith(b"+") for u in untagged)
    chat.send("b APPEND INBOX {26214401}")  # one byte over APPENDLIMIT
    assert chat.tagged("b")[0].startswith(b"b NO [TOOBIG]")
    chat.send("c SELECT {70000}")  # not an APPEND: literals are bounded by the line limit
    assert chat.tagged("c")[0].startswith(b"c BAD [TOOBIG]")
    chat.send("d NOOP")
    assert chat.tagged("d")[0].startswith(b"d OK")
    healthy(inst, user)


def test_oversized_non_synchronising_literal_is_discarded(chat) -> None:
    chat.raw(b"a SELECT {70000+}\r\n" + b"x" * 70000 + b"\r\n")
    assert chat.tagged("a")[0].startswith(b"a BAD [TOOBIG]")
    chat.send("b NOOP")
    assert chat.tagged("b")[0].startswith(b"b OK")


def test_negative_and_malformed_literals(chat) -> None:
    chat.send("a SELECT {-1}")
    assert chat.tagged("a")[0].startswith(b"a NO")  # "{-1}" is just a (bad) name, never a literal
    chat.send("b SELECT {1x}")
    assert chat.tagged("b")[0].startswith(b"b NO")


def test_literals_before_login_are_small(inst) -> None:
    ch = Chat(inst.ports["imaps"], tls=True)
    ch.expect(r"\* OK")
    ch.send("a LOGIN {100000}")
    assert ch.tagged("a")[0].startswith(b"a BAD [TOOBIG]")
    ch.send("b LOGIN {5000000+}")
    assert ch.closed()
    assert b"BYE" in ch.buf


def test_endless_line_closes_connection(inst, user) -> None:
    ch = Chat(inst.ports["imaps"], tls=True)
    ch.login(user)
    try:
        ch.raw(b"a NOOP " + b"x" * (70 * 1024))
    except (ssl.SSLError, OSError):
        pass
    assert ch.closed()
    assert b"BYE [TOOBIG]" in ch.buf
    healthy(inst, user)


def test_nested_lists_and_control_characters(chat) -> None:
    chat.send("a FETCH 1 " + "(" * 100 + "FLAGS" + ")" * 100)
    assert chat.tagged("a")[0].startswith(b"a BAD")
    chat.raw(b"b SELECT IN\x00BOX\r\n")
    assert chat.tagged("b")[0].startswith(b"b BAD")
    chat.send("c NOOP")
    assert chat.tagged("c")[0].startswith(b"c OK")


@pytest.mark.parametrize("name", [
    "../x", "a/../b", "/abs", "a//b", "./a", "a/.", "x*y", "x%y", "trailing ", " leading",
])
def test_path_tricks_in_names_refused(chat, name) -> None:
    chat.send(f'c CREATE "{name}"')
    line, _ = chat.tagged("c")
    assert line.startswith(b"c NO [CANNOT]"), line


def test_control_characters_in_names_refused(chat) -> None:
    for raw in (b"ab\r\ncd", b"ab\x00cd", b"ab\x1bcd", b"ab\x7fcd"):
        chat.send(b"c CREATE {%d}" % len(raw))
        chat.expect(r"\+ ")
        chat.raw(raw + b"\r\n")
        line, _ = chat.tagged("c")
        assert line.startswith(b"c NO [CANNOT]"), (raw, line)
    chat.send('l LIST "" "*"')
    line, untagged = chat.tagged("l")
    assert not any(b"ab" in u for u in untagged)


def test_other_users_mailboxes_are_out_of_reach(inst, user, chat) -> None:
    victim = account(inst, "hostile-victim")
    v = imap(inst, victim)
    ok(v.append("INBOX", None, None, message("victim secret")))
    secret_box = new_box(v, "secret")
    v.logout()
    for name in (f"{victim}/INBOX", f"~{victim}/INBOX", f"#users/{victim}/INBOX", "../imap-hostile-victim/INBOX",
                 "imap-hostile-victim/INBOX", secret_box, f"Other Users/{victim}"):
        chat.send(f's SELECT "{name}"')
        line, _ = chat.tagged("s")
        assert line.startswith(b"s NO"), (name, line)
        chat.send(f's STATUS "{name}" (MESSAGES)')
        assert chat.tagged("s")[0].startswith(b"s NO")
    chat.send('l LIST "" "*"')
    line, untagged = chat.tagged("l")
    assert not any(b"victim" in u or b"secret" in u for u in untagged)
    chat.send("x SELECT INBOX")
    chat.tagged("x")
    chat.send(f'y COPY 1:* "{victim}/INBOX"')
    assert chat.tagged("y")[0].startswith(b"y NO")


def test_starttls_injection_is_discarded(inst, user) -> None:
    ch = Chat(inst.ports["imap"])
    ch.expect(r"\* OK")
    # the classic attack: plaintext commands pipelined after STARTTLS in the same packet
    ch.raw(f'a STARTTLS\r\nb LOGIN "{user}" "{PASSWORD}"\r\nc SELECT INBOX\r\n'.encode())
    assert ch.expect(r"a ").startswith(b"a OK")
    ch.starttls()
    ch.send("d CAPABILITY")
    line, untagged = ch.tagged("d")
    assert line.startswith(b"d OK")
    assert not any(u.startswith((b"b ", b"c ")) for u in untagged)
    ch.send("e SELECT INBOX")
    assert ch.tagged("e")[0].startswith(b"e BAD Log in first")  # the injected LOGIN never ran
    ch.close()


def test_starttls_twice_and_on_tls_port(inst) -> None:
    ch = Chat(inst.ports["imaps"], tls=True)
    ch.expect(r"\* OK")
    ch.send("a STARTTLS")
    assert ch.tagged("a")[0].startswith(b"a BAD")
    ch.close()


def test_too_many_bad_commands_close(inst) -> None:
    ch = Chat(inst.ports["imaps"], tls=True)
    ch.expect(r"\* OK")
    for i in range(25):
        try:
            ch.send(f"x{i} BOGUS")
        except OSError:
            break
    assert ch.closed()
    assert b"BYE Too many invalid commands" in ch.buf or any(b"BYE" in x for x in ch.lines)


def test_deep_mime_message_is_bounded(inst, user, chat) -> None:
    depth = 10_000
    parts = [b"From: deep@example.test\r\nSubject: deep\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n"]
    for i in range(1, depth):
        parts.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n" % (i - 1, i))
    parts.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\nleaf\r\n" % (depth - 1))
    for i in range(depth - 1, -1, -1):
        parts.append(b"--b%d--\r\n" % i)
    msg = b"".join(parts)
    c = imap(inst, user)
    box = new_box(c, "deep")
    ok(c.append(box, None, None, msg))
    ok(c.select(box))
    data = ok(c.fetch("1", "(BODYSTRUCTURE BODY.PEEK[1.1.1] ENVELOPE)"))
    assert data and data[0]
    ok(c.search(None, "BODY", "leaf"))
    c.logout()
    healthy(inst, user)


def test_huge_sequence_sets_and_numbers(chat) -> None:
    chat.send("s SELECT INBOX")
    chat.tagged("s")
    chat.send("a UID FETCH 1:4294967295 (FLAGS)")
    assert chat.tagged("a")[0].startswith(b"a OK")
    chat.send("b UID FETCH 1:4294967296 (FLAGS)")
    assert chat.tagged("b")[0].startswith(b"b BAD")
    chat.send("c FETCH 0 (FLAGS)")
    assert chat.tagged("c")[0].startswith(b"c BAD")
    chat.send("d UID SEARCH UID " + ",".join(str(i) for i in range(1, 5000)))
    assert chat.tagged("d")[0].startswith(b"d OK")
