"""IMAP sessions: greeting, capabilities, TLS, LOGIN and AUTHENTICATE, ID, ENABLE, NAMESPACE, LOGOUT."""

from __future__ import annotations

import base64
import imaplib
import time

import pytest
from imapkit import PASSWORD, Chat, account, imap, ok, tls_context


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    return account(inst, "session")


def test_plain_port_offers_starttls_and_refuses_login_before_it(inst, user) -> None:
    c = imaplib.IMAP4("127.0.0.1", inst.ports["imap"], timeout=10)
    assert "STARTTLS" in c.capabilities and "LOGINDISABLED" in c.capabilities
    assert "AUTH=PLAIN" not in c.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        c.login(user, PASSWORD)
    typ, data = c._simple_command("AUTHENTICATE", "PLAIN", base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode())
    assert typ == "NO" and b"PRIVACYREQUIRED" in data[0]
    c.starttls(ssl_context=tls_context())
    caps = ok(c.capability())[0].split()
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    data = ok(c.login(user, PASSWORD))
    assert b"[CAPABILITY IMAP4rev1" in data[0]
    c.logout()


def test_implicit_tls_login_and_capabilities(inst, user) -> None:
    c = imap(inst, user)
    caps = set(ok(c.capability())[0].decode().split())
    for cap in ("IMAP4rev1", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "CREATE-SPECIAL-USE", "NAMESPACE", "ID",
                "ENABLE", "UNSELECT", "LITERAL+", "QUOTA", "CONDSTORE", "QRESYNC", "SASL-IR", "ESEARCH", "BINARY"):
        assert cap in caps, cap
    assert any(c.startswith("APPENDLIMIT=") for c in caps)
    typ, data = c.logout()
    assert typ == "BYE"


def test_authenticate_plain_with_initial_response(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    chat.send(f"a AUTHENTICATE PLAIN {token}")
    line, _ = chat.tagged("a")
    assert line.startswith(b"a OK [CAPABILITY")
    chat.close()


def test_authenticate_plain_with_continuation_and_cancel(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    chat.send("a AUTHENTICATE PLAIN")
    chat.expect(r"\+ ")
    chat.send("*")
    line, _ = chat.tagged("a")
    assert line.startswith(b"a BAD")
    chat.send("b AUTHENTICATE PLAIN")
    chat.expect(r"\+ ")
    chat.send(base64.b64encode(f"{user}\0{user}\0{PASSWORD}".encode()))
    line, _ = chat.tagged("b")
    assert line.startswith(b"b OK")
    chat.close()


def test_authenticate_login_mechanism(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    chat.send("a AUTHENTICATE LOGIN")
    chat.expect(r"\+ VXNlcm5hbWU6")
    chat.send(base64.b64encode(user.encode()))
    chat.expect(r"\+ UGFzc3dvcmQ6")
    chat.send(base64.b64encode(PASSWORD.encode()))
    line, _ = chat.tagged("a")
    assert line.startswith(b"a OK")
    chat.close()


def test_wrong_password_is_delayed_and_refused(inst, user) -> None:
    c = imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=tls_context(), timeout=10)
    start = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login(user, "wrong password")
    assert time.monotonic() - start >= 0.15  # auth.failure_delay is 0.2 s in tests
    ok(c.login(user, PASSWORD))  # the session survives one failure
    c.logout()


def test_three_failures_end_the_connection(inst) -> None:
    victim = account(inst, "session-fail")
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    for i in range(3):
        chat.send(f'f{i} LOGIN "{victim}" "nope{i}"')
        line, _ = chat.tagged(f"f{i}")
        assert line.startswith(f"f{i} NO [AUTHENTICATIONFAILED]".encode())
    assert chat.closed()
    assert b"* BYE" in chat.buf
    imap(inst, victim).logout()  # a success resets the account's failure count


def test_locked_account_answers_unavailable(inst) -> None:
    victim = account(inst, "session-locked")
    for round_ in range(4):
        chat = Chat(inst.ports["imaps"], tls=True)
        chat.expect(r"\* OK")
        for i in range(3):
            chat.send(f'f{i} LOGIN "{victim}" "bad{round_}{i}"')
            chat.tagged(f"f{i}")
        chat.close()
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    chat.send(f'a LOGIN "{victim}" "{PASSWORD}"')  # even the right password, while locked
    line, _ = chat.tagged("a")
    assert line.startswith(b"a NO [UNAVAILABLE]") and b"try again later" in line
    chat.close()
    from imapkit import store_of

    store_of(inst).auth.unlock(victim)
    imap(inst, victim).logout()


def test_id_namespace_enable_noop(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    chat.send('i ID ("name" "pytest-client" "version" "1.0")')
    line, untagged = chat.tagged("i")
    assert line.startswith(b"i OK") and untagged[0].startswith(b'* ID ("name"')
    chat.send('e ENABLE CONDSTORE')
    line, _ = chat.tagged("e")
    assert line.startswith(b"e BAD")  # not before login
    chat.send(f'a LOGIN "{user}" "{PASSWORD}"')
    assert chat.tagged("a")[0].startswith(b"a OK")
    chat.send("n NAMESPACE")
    line, untagged = chat.tagged("n")
    assert untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
    chat.send("e ENABLE QRESYNC CONDSTORE X-UNKNOWN")
    line, untagged = chat.tagged("e")
    assert untagged == [b"* ENABLED QRESYNC"] and line.startswith(b"e OK")
    chat.send("o NOOP")
    assert chat.tagged("o")[0] == b"o OK NOOP completed"
    chat.send("z LOGOUT")
    line, untagged = chat.tagged("z")
    assert untagged[0].startswith(b"* BYE") and line.startswith(b"z OK")
    assert chat.closed()


def test_login_log_names_client(inst) -> None:
    from imapkit import store_of

    who = account(inst, "session-log")
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    chat.send('i ID ("name" "LogCheck" "version" "9")')
    chat.tagged("i")
    chat.send(f'a LOGIN "{who}" "{PASSWORD}"')
    assert chat.tagged("a")[0].startswith(b"a OK")
    chat.close()
    from sqlalchemy import select

    from storage import models as m

    with store_of(inst).read() as conn:
        rows = conn.execute(select(m.events.c.protocol, m.events.c.ip, m.events.c.client, m.events.c.result)
                            .where(m.events.c.subject == who, m.events.c.kind == "login")).all()
    assert ("imap", "127.0.0.1", "LogCheck 9", "ok") in [tuple(r) for r in rows]


def login_events(inst, who: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    from imapkit import store_of
    from sqlalchemy import select

    from storage import models as m

    e = m.events.c
    with store_of(inst).read() as conn:
        rows = conn.execute(select(e.protocol, e.ip, e.client, e.result).where(e.subject == who, e.kind == "login")
                            .order_by(e.id)).all()
    return [tuple(r) for r in rows]


def test_id_after_login_names_the_client_of_that_login(inst) -> None:
    """Thunderbird sends ID once logged in: the login event still gets the client's name."""
    who = account(inst, "session-late-id")
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.login(who)
    chat.send('i ID ("name" "Thunderbird" "version" "115.3.1" "os" "Linux")')
    line, untagged = chat.tagged("i")
    assert line.startswith(b"i OK") and untagged[0].startswith(b"* ID (")
    chat.send('j ID ("name" "Spoofed" "version" "1")')  # only the first name counts
    chat.tagged("j")
    chat.close()
    assert login_events(inst, who)[-1] == ("imap", "127.0.0.1", "Thunderbird 115.3.1", "ok")


def test_failed_logins_are_logged_with_address(inst) -> None:
    who = account(inst, "session-fail-log")
    c = imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=tls_context(), timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        c.login(who, "not the password")
    c.logout()
    assert ("imap", "127.0.0.1", None, "fail") in login_events(inst, who)


def test_commands_in_wrong_state_and_unknown(inst, user) -> None:
    chat = Chat(inst.ports["imaps"], tls=True)
    chat.expect(r"\* OK")
    chat.send("a SELECT INBOX")
    assert chat.tagged("a")[0].startswith(b"a BAD")
    chat.send(f'b LOGIN "{user}" "{PASSWORD}"')
    chat.tagged("b")
    chat.send("c FETCH 1 FLAGS")
    assert chat.tagged("c")[0].startswith(b"c BAD")
    chat.send("d FROBNICATE")
    assert chat.tagged("d")[0] == b"d BAD Unknown command"
    chat.send("e UID FROB 1")
    assert chat.tagged("e")[0].startswith(b"e BAD")
    chat.send("f LOGIN x y")
    assert chat.tagged("f")[0].startswith(b"f BAD")
    chat.close()
