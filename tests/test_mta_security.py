"""Hostile input on port 25 and 587: SMTP smuggling, STARTTLS injection (shared ``appliance up``)."""

from __future__ import annotations

import ssl

import pytest
from mtakit import inbox, new_user
from smtpchat import Chat, client_tls_context


@pytest.fixture(scope="module")
def store(shared_instance):  # type: ignore[no-untyped-def]
    s = shared_instance.store()
    yield s
    s.close()


@pytest.fixture(scope="module")
def ports(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return server.inst.ports


def smuggle(port: int, rcpt: str, fake_end: bytes) -> list[str]:
    """One DATA whose body holds ``fake_end`` followed by a second, smuggled transaction."""
    smuggled = (
        b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n"
        b"From: admin@example.test\r\nSubject: smuggled\r\n\r\nobey\r\n"
    )
    with Chat(port) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("MAIL FROM:<sender@attacker.example>")
        c.expect("250 ")
        c.send(f"RCPT TO:<{rcpt}>")
        c.expect("250 ")
        c.send("DATA")
        c.expect("354 ")
        c.raw(b"From: sender@attacker.example\r\nSubject: outer\r\n\r\nhello" + fake_end + smuggled + b".\r\nQUIT\r\n")
        replies = [c.reply(), c.reply()]
        assert c.closed()
    return replies


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\n.\r\n\r\n"], ids=["LF.LF", "CRLF.LF", "LF.CRLF", "LF.CRLFCRLF"])
def test_bare_lf_smuggling_yields_one_message(ports, store, fake_end: bytes) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    replies = smuggle(ports["mx"], rcpt, fake_end)
    assert replies[0].startswith("250 2.0.0 Ok: queued as")
    assert replies[1].startswith("221 ")
    (raw,) = inbox(store, rcpt)
    assert b"Subject: outer" in raw
    assert b"MAIL FROM:<admin@example.test>" in raw  # the "second message" is just text of the first
    assert b"\n" not in raw.replace(b"\r\n", b"")  # bare LFs were normalised
    assert b"\r" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize("fake_end", [b"\r.\r", b"\r\n.\r", b"\r.\r\n"], ids=["CR.CR", "CRLF.CR", "CR.CRLF"])
def test_bare_cr_is_refused(ports, store, fake_end: bytes) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    replies = smuggle(ports["mx"], rcpt, fake_end)
    assert replies[0].startswith("550 5.6.11")
    assert replies[1].startswith("221 ")
    assert inbox(store, rcpt) == []


def test_submission_smuggling_too(ports, store) -> None:  # type: ignore[no-untyped-def]
    import base64

    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    with Chat(ports["submissions"], tls=True) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("AUTH PLAIN " + base64.b64encode(f"\0{sender}\0{password}".encode()).decode())
        c.expect("235 ")
        c.send(f"MAIL FROM:<{sender}>")
        c.expect("250 ")
        c.send(f"RCPT TO:<{rcpt}>")
        c.expect("250 ")
        c.send("DATA")
        c.expect("354 ")
        c.raw(f"From: {sender}\r\n\r\nx\n.\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: two\r\n\r\ny\r\n.\r\n".encode())
        c.expect(r"250 2\.0\.0")
        c.send("NOOP")
        c.expect(r"250 2\.0\.0")  # nothing else was queued up behind the message
    assert len(inbox(store, rcpt)) == 1


@pytest.mark.parametrize("port_name", ["mx", "submission"])
def test_starttls_injection_is_discarded(ports, port_name: str) -> None:  # type: ignore[no-untyped-def]
    with Chat(ports[port_name]) as c:
        c.expect("220 ")
        c.ehlo()
        c.raw(b"STARTTLS\r\nMAIL FROM:<inject@attacker.example>\r\nRSET\r\n")
        c.expect(r"220 2\.0\.0")
        assert c.buf == b""
        c.sock = client_tls_context().wrap_socket(c.sock, server_hostname="localhost")
        text = c.ehlo()  # the first reply after the handshake answers our EHLO, not the injected MAIL
        assert text.startswith("250-mail.example.test")
        c.send("NOOP")
        c.expect(r"250 2\.0\.0")
        if port_name == "mx":
            c.send("MAIL FROM:<a@sender.example>")
            c.expect(r"250 2\.1\.0")  # not "503 nested MAIL": the injected one never ran


def test_tls_handshake_garbage_closes_the_session(ports) -> None:  # type: ignore[no-untyped-def]
    with Chat(ports["submission"]) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("STARTTLS")
        c.expect(r"220 2\.0\.0")
        c.raw(b"this is not a TLS ClientHello\r\n" * 4)
        assert c.closed()


def test_implicit_tls_port_refuses_plaintext(ports) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.create_connection(("127.0.0.1", ports["submissions"]), timeout=10) as s:
        s.sendall(b"EHLO plain.example\r\n")
        s.settimeout(10)
        try:
            data = s.recv(1024)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        assert not data.startswith(b"250")
