"""Revoked credentials end authenticated SMTP submission sessions at their next MAIL FROM.

The server is the shared ``appliance up``; the changes are made by the CLI
(another process), as an operator would. Each test logs in with smtplib,
sends one message, changes the credentials, and reads the reply to the next
MAIL on the same connection: the reason (5xx), then 421 and the connection
closed. Sessions whose own credential still holds go on.
"""

from __future__ import annotations

import smtplib

import pytest
from mtakit import inbox, message, new_user, submission_client


@pytest.fixture(scope="module")
def store(shared_instance):  # type: ignore[no-untyped-def]
    s = shared_instance.store()
    yield s
    s.close()


def send(client: smtplib.SMTP, sender: str, rcpt: str, subject: str) -> None:
    assert client.sendmail(sender, [rcpt], message(sender, rcpt, subject)) == {}


def refused_then_closed(client: smtplib.SMTP, sender: str, text: bytes) -> None:
    """The next MAIL gets a 5xx naming why, then 421, then the server closes the connection."""
    code, reply = client.mail(sender)
    assert code in (530, 535), (code, reply)
    assert reply.startswith(b"5.7.") and b"revoked" in reply and text in reply, reply
    code, reply = client.getreply()
    assert code == 421 and b"revoked" in reply, (code, reply)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


def test_revoked_app_password_ends_its_session_and_not_another(server, store) -> None:  # type: ignore[no-untyped-def]
    inst = server.inst
    sender, _ = new_user(store, prefix="rv")
    rcpt, _ = new_user(store)
    r = inst.cli("user", "app-password", "add", sender, "--name", "laptop")
    assert r.returncode == 0, r.stderr
    laptop = r.stdout.decode().strip().splitlines()[-1].strip()
    phone = store.add_app_password(sender, "phone")
    ports = inst.ports
    with submission_client(ports["submission"], sender, laptop) as a, \
            submission_client(ports["submissions"], sender, phone, implicit=True) as b:
        send(a, sender, rcpt, "before, laptop")
        send(b, sender, rcpt, "before, phone")
        r = inst.cli("user", "app-password", "revoke", sender, "laptop")
        assert r.returncode == 0, r.stderr
        refused_then_closed(a, sender, b"app password")
        send(b, sender, rcpt, "after, phone")  # another app password still holds
    subjects = sorted(raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for raw in inbox(store, rcpt))
    assert subjects == [b"after, phone", b"before, laptop", b"before, phone"]
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submission_client(ports["submission"], sender, laptop)


def test_password_change_ends_password_sessions_not_app_password_ones(server, store) -> None:  # type: ignore[no-untyped-def]
    inst = server.inst
    sender, password = new_user(store, prefix="rv")
    rcpt, _ = new_user(store)
    code = store.add_app_password(sender, "phone")
    ports = inst.ports
    with submission_client(ports["submissions"], sender, password, implicit=True) as a, \
            submission_client(ports["submission"], sender, code) as b:
        send(a, sender, rcpt, "one")
        send(b, sender, rcpt, "two")
        r = inst.cli("user", "passwd", sender, "--password-stdin", input=b"Another-Pa55word-here\n")
        assert r.returncode == 0, r.stderr
        refused_then_closed(a, sender, b"password")
        send(b, sender, rcpt, "three")  # the app password is not the password
    assert len(inbox(store, rcpt)) == 3
    with submission_client(ports["submission"], sender, "Another-Pa55word-here") as c:
        send(c, sender, rcpt, "four")
    assert len(inbox(store, rcpt)) == 4


def test_disabled_account_ends_every_session(server, store) -> None:  # type: ignore[no-untyped-def]
    inst = server.inst
    sender, password = new_user(store, prefix="rv")
    rcpt, _ = new_user(store)
    code = store.add_app_password(sender, "phone")
    ports = inst.ports
    with submission_client(ports["submission"], sender, password) as a, \
            submission_client(ports["submission"], sender, code) as b:
        send(a, sender, rcpt, "one")
        r = inst.cli("user", "disable", sender)
        assert r.returncode == 0, r.stderr
        refused_then_closed(a, sender, b"disabled")
        refused_then_closed(b, sender, b"disabled")
    assert len(inbox(store, rcpt)) == 1


def test_unrelated_change_keeps_the_session(server, store) -> None:  # type: ignore[no-untyped-def]
    """The epoch moves for a change this session does not rely on (as when another app password is
    revoked): the session keeps sending."""
    inst = server.inst
    sender, password = new_user(store, prefix="rv")
    rcpt, _ = new_user(store)
    with submission_client(inst.ports["submission"], sender, password) as a:
        send(a, sender, rcpt, "one")
        store.directory.bump_auth_epoch(store.directory.get_user(sender).id)
        send(a, sender, rcpt, "two")
        send(a, sender, rcpt, "three")
    assert len(inbox(store, rcpt)) == 3
