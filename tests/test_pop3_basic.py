"""POP3: CAPA, STLS (and injection), USER/PASS, SASL PLAIN, STAT/LIST/UIDL/RETR/TOP/DELE/RSET/QUIT."""

from __future__ import annotations

import base64
import poplib

import pytest
from imapkit import (
    PASSWORD,
    Chat,
    account,
    fetch_map,
    imap,
    message,
    ok,
    pop3,
    store_of,
    tls_context,
    user_of,
)


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    email = account(inst, "pop3")
    owner = user_of(inst, email)
    store = store_of(inst)
    store.append(owner, "INBOX", message("pop one", "first body\r\n.leading dot\r\nend\r\n"))
    store.append(owner, "INBOX", message("pop two", "line 1\r\nline 2\r\nline 3\r\n"))
    store.append(owner, "INBOX", message("pop three"))
    return email


def test_capa_and_stls_required_for_login(inst, user) -> None:
    p = poplib.POP3("127.0.0.1", inst.ports["pop3"], timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps
    with pytest.raises(poplib.error_proto, match="STLS first"):
        p.user(user)
    p.stls(tls_context())
    caps = p.capa()
    assert {"USER", "UIDL", "TOP", "SASL", "RESP-CODES"} <= set(caps) and caps["SASL"] == ["PLAIN"]
    p.user(user)
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()


def test_listing_and_retrieval(inst, user) -> None:
    p = pop3(inst, user)
    count, size = p.stat()
    assert count == 3
    resp, listing, _ = p.list()
    sizes = [int(x.split()[1]) for x in listing]
    assert sum(sizes) == size
    resp, uidl, _ = p.uidl()
    ids = [x.split()[1] for x in uidl]
    assert len(set(ids)) == 3 and all(b"." in i for i in ids)
    assert p.uidl(2).split()[2] == ids[1]
    resp, lines, octets = p.retr(1)
    assert b".leading dot" in lines  # dot-stuffing undone by the client
    assert lines[-1] == b"end"
    resp, lines, _ = p.top(2, 1)
    body = lines[lines.index(b"") + 1:]
    assert body == [b"line 1"]
    with pytest.raises(poplib.error_proto):
        p.retr(9)
    p.quit()
    p = pop3(inst, user)
    assert p.stat()[0] == 3
    resp, uidl2, _ = p.uidl()
    assert [x.split()[1] for x in uidl2] == ids  # stable across sessions
    p.quit()


def test_retr_sets_seen_and_top_does_not(inst, user) -> None:
    c = imap(inst, user)
    ok(c.select("INBOX"))
    ok(c.store("1:*", "-FLAGS", "(\\Seen)"))
    p = pop3(inst, user)
    p.top(1, 0)
    p.retr(2)
    p.quit()
    got = fetch_map(ok(c.fetch("1:2", "(FLAGS)")))
    assert "\\Seen" not in got[1]["FLAGS"] and "\\Seen" in got[2]["FLAGS"]
    c.logout()


def test_dele_rset_quit(inst) -> None:
    who = account(inst, "pop3-dele")
    owner = user_of(inst, who)
    for i in range(3):
        store_of(inst).append(owner, "INBOX", message(f"dele {i}"))
    p = pop3(inst, who)
    p.dele(1)
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(1)
    assert p.stat()[0] == 2
    p.rset()
    assert p.stat()[0] == 3
    p.dele(2)
    p.dele(3)
    p.quit()
    p = pop3(inst, who)
    assert p.stat()[0] == 1
    resp, lines, _ = p.retr(1)
    assert b"Subject: dele 0" in lines
    p.quit()


def test_dele_without_quit_changes_nothing(inst, user) -> None:
    p = pop3(inst, user)
    n = p.stat()[0]
    p.dele(1)
    p.sock.close()
    p = pop3(inst, user)
    assert p.stat()[0] == n
    p.quit()


def test_sasl_plain_and_bad_password(inst, user) -> None:
    p = poplib.POP3_SSL("127.0.0.1", inst.ports["pop3s"], context=tls_context(), timeout=10)
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert p._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    assert p.stat()[0] >= 1
    p.quit()
    p = poplib.POP3_SSL("127.0.0.1", inst.ports["pop3s"], context=tls_context(), timeout=10)
    p.user(user)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    ch = Chat(inst.ports["pop3s"], tls=True)
    ch.expect(r"\+OK")
    ch.send("AUTH PLAIN")
    ch.expect(r"\+ ")
    ch.send(base64.b64encode(f"\0{user}\0{PASSWORD}".encode()))
    assert ch.readline().startswith(b"+OK")
    ch.send("QUIT")
    assert ch.readline().startswith(b"+OK")
    ch.close()


def test_stls_injection_discarded(inst, user) -> None:
    ch = Chat(inst.ports["pop3"])
    ch.expect(r"\+OK")
    ch.raw(f"STLS\r\nUSER {user}\r\nPASS {PASSWORD}\r\n".encode())
    assert ch.readline().startswith(b"+OK")
    ch.starttls()
    ch.send("STAT")
    assert ch.readline().startswith(b"-ERR")  # not logged in: the injected USER/PASS were dropped
    ch.send("QUIT")
    ch.close()


def test_commands_before_login_and_unknown(inst) -> None:
    ch = Chat(inst.ports["pop3s"], tls=True)
    ch.expect(r"\+OK")
    for cmd in ("STAT", "LIST", "RETR 1", "FROB", "PASS x"):
        ch.send(cmd)
        assert ch.readline().startswith(b"-ERR"), cmd
    ch.send("X" * 5000)
    assert ch.closed()


def test_three_failed_logins_close(inst) -> None:
    who = account(inst, "pop3-fail")
    ch = Chat(inst.ports["pop3s"], tls=True)
    ch.expect(r"\+OK")
    for i in range(3):
        ch.send(f"USER {who}")
        ch.readline()
        ch.send(f"PASS wrong{i}")
        assert ch.readline().startswith(b"-ERR [AUTH]")
    assert ch.closed()
    pop3(inst, who).quit()  # the right password still works (and resets the count)


def test_pop3_logins_are_logged_with_address(inst, user) -> None:
    from sqlalchemy import select

    from storage import models as m

    p = pop3(inst, user)
    p.quit()
    bad = poplib.POP3_SSL("127.0.0.1", inst.ports["pop3s"], context=tls_context(), timeout=30)
    bad.user(user)
    with pytest.raises(poplib.error_proto):
        bad.pass_("wrong password")
    bad.close()
    e = m.events.c
    with store_of(inst).read() as conn:
        rows = [tuple(r) for r in conn.execute(select(e.protocol, e.ip, e.result).where(e.subject == user, e.kind == "login"))]
    assert ("pop3", "127.0.0.1", "ok") in rows and ("pop3", "127.0.0.1", "fail") in rows
