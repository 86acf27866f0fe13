"""Port 25 (MX) end to end against the shared ``appliance up``: smtplib, swaks and raw dialogues."""

from __future__ import annotations

import re
import smtplib
import subprocess

import pytest
from mtakit import inbox, message, mx_client, new_user
from smtpchat import ENHANCED, Chat


@pytest.fixture(scope="module")
def store(shared_instance):  # type: ignore[no-untyped-def]
    s = shared_instance.store()
    yield s
    s.close()


@pytest.fixture(scope="module")
def mx(server) -> int:  # type: ignore[no-untyped-def]
    return server.inst.ports["mx"]


def test_ehlo_advertises_extensions_and_no_auth(mx: int) -> None:
    with Chat(mx) as c:
        greeting = c.expect("220 ")
        assert "mail.example.test" in greeting
        text = c.ehlo()
        for ext in ("SIZE 26214400", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
            assert re.search(rf"^250[- ]{ext}$", text, re.M), ext
        assert "AUTH" not in text
        c.starttls()
        text = c.ehlo()
        assert "AUTH" not in text and "STARTTLS" not in text
        c.send("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        c.expect(r"503 5\.5\.1 AUTH not available on this port")


def test_delivery_to_local_user_is_stored_with_trace_headers(mx: int, store, shared_instance) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    with mx_client(mx) as client:
        refused = client.sendmail("someone@sender.example", [rcpt], message("someone@sender.example", rcpt, "plain"))
    assert refused == {}
    (raw,) = inbox(store, rcpt)
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("Received: from client.example ([127.0.0.1])\r\n\tby mail.example.test (appliance) with ESMTP id ")
    assert f"for <{rcpt}>" in head
    assert "Authentication-Results: mail.example.test;" in head
    assert "dkim=none" in head
    assert raw.endswith(b"\r\n\r\nHello there.\r\n")


def test_received_header_names_tls_version_and_cipher(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    with mx_client(mx, starttls=True) as client:
        client.sendmail("someone@sender.example", [rcpt], message("someone@sender.example", rcpt, "tls"))
    (raw,) = inbox(store, rcpt)
    received = raw.split(b"\r\nAuthentication-Results", 1)[0].decode()
    assert "with ESMTPS id" in received
    assert re.search(r"\(version=TLSv1\.[23] cipher=\S+ bits=\d+\)", received), received


def test_every_reply_carries_an_enhanced_status_code(mx: int) -> None:
    with Chat(mx) as c:
        c.expect("220 ")
        c.ehlo()
        for line in ("NOOP", "HELP", "VRFY alice@example.test", "EXPN staff", "BOGUS", "RCPT TO:<alice@example.test>",
                     "DATA", "MAIL FROM:<a@sender.example>", "MAIL FROM:<b@sender.example>", "RCPT TO:<nobody@example.test>",
                     "RCPT TO:<x@elsewhere.example>", "RSET", "MAIL FROM:<>", "RCPT TO:<alice@example.test>", "RSET"):
            c.send(line)
            c.reply()
        c.send("QUIT")
        c.reply()
    replies = c.replies[2:]
    assert len(replies) == 16
    for r in replies:
        assert ENHANCED.match(r), r


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        ("nobody@example.test", r"550 5\.1\.1 "),
        ("someone@elsewhere.example", r"554 5\.7\.1 Relay access denied"),
        ("not an address", r"50[01] 5\.[15]\.\d "),
    ],
)
def test_recipient_refusals(mx: int, rcpt: str, reply: str) -> None:
    with Chat(mx) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("MAIL FROM:<a@sender.example>")
        c.expect(r"250 2\.1\.0")
        c.send(f"RCPT TO:<{rcpt}>")
        c.expect(reply)


def test_malformed_paths_are_refused(mx: int) -> None:
    with Chat(mx) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("MAIL FROM:<a@sender.example")
        c.expect(r"501 5\.5\.4")
        c.send(b"MAIL FROM:<a\x00b@sender.example>")
        c.expect(r"501 5\.5\.4")
        c.send("MAIL FROM:<a@sender.example>")
        c.expect(r"250 2\.1\.0")
        c.send("RCPT TO:<alice@example.test")
        c.expect(r"501 5\.5\.4")


def test_null_sender_bounce_is_accepted(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    with mx_client(mx) as client:
        client.sendmail("<>", [rcpt], message("MAILER-DAEMON@sender.example", rcpt, "bounce"))
    assert len(inbox(store, rcpt)) == 1


def test_duplicate_recipients_get_one_copy(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    a, _ = new_user(store)
    b, _ = new_user(store)
    with mx_client(mx) as client:
        client.sendmail("x@sender.example", [a, b, a.upper()], message("x@sender.example", a, "dups"))
    assert len(inbox(store, a)) == 1
    assert len(inbox(store, b)) == 1


def test_smtputf8_and_8bitmime(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    body = "Grüße, 你好\r\n"
    raw = ("From: jürgen@sender.example\r\nTo: " + rcpt + "\r\nSubject: Grüße\r\n\r\n" + body).encode()
    with mx_client(mx) as client:
        client.ehlo()
        client.sendmail("jürgen@sender.example", [rcpt], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (stored,) = inbox(store, rcpt)
    assert stored.endswith(raw)
    assert b"with UTF8SMTP id" in stored


def test_size_declared_too_big_is_refused_at_mail(mx: int) -> None:
    with Chat(mx) as c:
        c.expect("220 ")
        c.ehlo()
        c.send(f"MAIL FROM:<a@sender.example> SIZE={26214400 + 1}")
        c.expect(r"552 5\.3\.4")


def test_pipelined_transactions(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    with Chat(mx) as c:
        c.expect("220 ")
        c.ehlo()
        one = message("p@sender.example", rcpt, "first")
        two = message("p@sender.example", rcpt, "second")
        c.raw(
            b"MAIL FROM:<p@sender.example>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n"
        )
        c.expect(r"250 2\.1\.0")
        c.expect(r"250 2\.1\.5")
        c.expect("354 ")
        c.raw(one + b".\r\nMAIL FROM:<p@sender.example>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
        c.expect(r"250 2\.0\.0 Ok: queued as \w{20}")
        c.expect(r"250 2\.1\.0")
        c.expect(r"250 2\.1\.5")
        c.expect("354 ")
        c.raw(two + b".\r\nQUIT\r\n")
        c.expect(r"250 2\.0\.0")
        c.expect(r"221 2\.0\.0")
    subjects = [re.search(rb"Subject: (\w+)", m).group(1) for m in inbox(store, rcpt)]  # type: ignore[union-attr]
    assert subjects == [b"first", b"second"]


def test_swaks_delivers_over_starttls(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mx}", "--tls", "--to", rcpt, "--from", "swaks@sender.example",
         "--helo", "swaks.example", "--header", "Subject: from swaks"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as", out.stdout)
    (raw,) = inbox(store, rcpt)
    assert b"Subject: from swaks" in raw


def test_accepted_and_refused_mail_is_in_the_delivery_log(mx: int, store) -> None:  # type: ignore[no-untyped-def]
    import time

    rcpt, _ = new_user(store)
    with mx_client(mx) as client:
        client.sendmail("logged@sender.example", [rcpt], message("logged@sender.example", rcpt, "logged"))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("probe@sender.example", [f"nobody-{rcpt}"], b"Subject: x\r\n\r\nx\r\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the log is written in batches, within a fraction of a second
        ok = store.events.query(kind="delivery", user="logged@sender.example", result="delivered")
        refused = store.events.query(kind="delivery", user="probe@sender.example", result="rejected")
        if ok and refused:
            break
        time.sleep(0.1)
    assert ok and refused
    assert ok[0].detail["recipients"] == [rcpt]
    assert ok[0].detail["queue_id"] and ok[0].ip == "127.0.0.1"
    assert ok[0].detail["checks"]["dkim"] == "none"
    assert refused[0].detail["rejected"] == {f"nobody-{rcpt}": "550 5.1.1 Recipient address rejected: no such user here"}
