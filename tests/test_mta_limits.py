"""The [smtp] limits, each with its reply, on an instance with small limits."""

from __future__ import annotations

import time

import pytest
from conftest import Server, create_test_instance
from mtakit import inbox, message
from smtpchat import Chat

LIMITS = {
    "smtp.max_message_size": "8K",
    "smtp.max_recipients": 3,
    "smtp.max_line_length": 1000,
    "smtp.max_header_size": "1K",
    "smtp.max_connections_per_ip": 3,
    "smtp.max_errors": 4,
    "smtp.idle_timeout": 2,
}


@pytest.fixture(scope="module")
def inst(tmp_path_factory):  # type: ignore[no-untyped-def]
    return create_test_instance(tmp_path_factory.mktemp("limits"), overrides=LIMITS)


@pytest.fixture(scope="module")
def mx(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst, services=["mta"])
    yield inst.ports["mx"]
    srv.stop()


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


def session(port: int) -> Chat:
    c = Chat(port)
    c.expect("220 ")
    c.ehlo()
    return c


def send_data(c: Chat, data: bytes, rcpt: str = "alice@example.test") -> str:
    c.send("MAIL FROM:<x@sender.example>")
    c.expect("250 ")
    c.send(f"RCPT TO:<{rcpt}>")
    c.expect("250 ")
    c.send("DATA")
    c.expect("354 ")
    c.raw(data + b".\r\n")
    return c.reply()


def test_size_is_advertised_and_enforced(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    before = len(inbox(store, "alice@example.test"))
    with session(mx) as c:
        assert "250-SIZE 8192" in c.replies[-1]
        c.send("MAIL FROM:<x@sender.example> SIZE=9000")
        c.expect(r"552 5\.3\.4")
        big = message("x@sender.example", "alice@example.test", "big", ("z" * 78 + "\r\n") * 120)
        assert send_data(c, big).startswith("552 5.3.4 Message too big")
        ok = message("x@sender.example", "alice@example.test", "small")
        assert send_data(c, ok).startswith("250 2.0.0")  # the session is still in step
    assert len(inbox(store, "alice@example.test")) == before + 1


def test_line_too_long(mx: int) -> None:
    with session(mx) as c:
        long_line = message("x@sender.example", "alice@example.test", "long", "w" * 1200 + "\r\n")
        assert send_data(c, long_line).startswith("500 5.5.2 Line too long")
        c.send("MAIL FROM:<" + "a" * 600 + "@sender.example>")
        c.expect(r"500 5\.5\.2 Line too long")


def test_header_too_large(mx: int) -> None:
    with session(mx) as c:
        headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"h" * 60) for i in range(20))
        reply = send_data(c, headers + message("x@sender.example", "alice@example.test", "head"))
        assert reply.startswith("552 5.3.4 Message header too large")


def test_max_recipients(mx: int) -> None:
    with session(mx) as c:
        c.send("MAIL FROM:<x@sender.example>")
        c.expect("250 ")
        for rcpt in ("alice@example.test", "bob@example.test", "admin@example.test"):
            c.send(f"RCPT TO:<{rcpt}>")
            c.expect(r"250 2\.1\.5")
        c.send("RCPT TO:<alice@example.test>")
        c.expect(r"452 4\.5\.3")


def test_max_connections_per_ip(mx: int) -> None:
    held = [session(mx) for _ in range(3)]
    try:
        with Chat(mx) as extra:
            extra.expect(r"421 4\.7\.0 Too many connections")
            assert extra.closed()
        held.pop().close()
        time.sleep(0.2)
        with session(mx) as again:
            again.send("NOOP")
            again.expect(r"250 2\.0\.0")
    finally:
        for c in held:
            c.close()


def test_max_errors_closes_the_session(mx: int) -> None:
    with session(mx) as c:
        for _ in range(3):
            c.send("BOGUS")
            c.expect(r"500 5\.5\.1")
        c.send("RCPT TO:<alice@example.test>")
        c.expect(r"503 5\.5\.1")
        c.expect(r"421 4\.7\.0 Too many errors")
        assert c.closed()


def test_idle_timeout(mx: int) -> None:
    with session(mx) as c:
        t0 = time.monotonic()
        c.expect(r"421 4\.4\.2 Idle timeout")
        assert 1.5 < time.monotonic() - t0 < 10
        assert c.closed()
