"""Submission (587 STARTTLS, 465 implicit TLS) end to end against the shared ``appliance up``."""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import time

import pytest
from mtakit import inbox, message, new_user, submission_client
from smtpchat import Chat, client_tls_context

from mta.queue import OutboundQueue


@pytest.fixture(scope="module")
def store(shared_instance):  # type: ignore[no-untyped-def]
    s = shared_instance.store()
    yield s
    s.close()


@pytest.fixture(scope="module")
def ports(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return server.inst.ports


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def test_starttls_is_required_before_auth_and_mail(ports) -> None:  # type: ignore[no-untyped-def]
    with Chat(ports["submission"]) as c:
        c.expect("220 ")
        text = c.ehlo()
        assert "STARTTLS" in text and "AUTH" not in text
        c.send("AUTH PLAIN " + plain("alice@example.test", "x"))
        c.expect(r"530 5\.7\.0 Must issue a STARTTLS command first")
        c.send("MAIL FROM:<alice@example.test>")
        c.expect(r"530 5\.7\.0")
        c.starttls()
        text = c.ehlo()
        assert re.search(r"^250-AUTH LOGIN PLAIN$", text, re.M)
        c.send("MAIL FROM:<alice@example.test>")
        c.expect(r"530 5\.7\.0 Authentication required")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("port_name", ["submission", "submissions"])
def test_auth_and_local_delivery(ports, store, mechanism: str, port_name: str) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    if port_name == "submissions":
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", ports[port_name], context=client_tls_context(), timeout=15)
    else:
        client = smtplib.SMTP("127.0.0.1", ports[port_name], timeout=15)
        client.starttls(context=client_tls_context())
    with client:
        client.ehlo()
        client.user, client.password = sender, password
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        assert code == 235
        assert client.sendmail(sender, [rcpt], message(sender, rcpt, f"{mechanism} on {port_name}")) == {}
    (raw,) = inbox(store, rcpt)
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "with ESMTPSA id" in head
    assert "Authentication-Results" not in head  # only port 25 mail is checked
    assert re.search(r"\(version=TLSv1\.[23] cipher=", head)


def test_implicit_tls_port_offers_auth_at_once(ports) -> None:  # type: ignore[no-untyped-def]
    with Chat(ports["submissions"], tls=True) as c:
        c.expect("220 ")
        text = c.ehlo()
        assert "AUTH LOGIN PLAIN" in text and "STARTTLS" not in text


def test_wrong_password_is_535_after_the_failure_delay(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, _ = new_user(store)
    with Chat(ports["submissions"], tls=True) as c:
        c.expect("220 ")
        c.ehlo()
        t0 = time.monotonic()
        c.send("AUTH PLAIN " + plain(sender, "wrong"))
        c.expect(r"535 5\.7\.8 Authentication credentials invalid")
        assert time.monotonic() - t0 >= 0.15  # FAST_AUTH failure_delay is 0.2 s


def test_locked_account_gets_temporary_454(ports, store, shared_instance) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    limit = shared_instance.config().auth.max_failures_per_account
    for _ in range(limit):
        store.events.login(sender, protocol="smtp", ip="192.0.2.7", client=None, result="fail")
    with Chat(ports["submissions"], tls=True) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("AUTH PLAIN " + plain(sender, password))
        c.expect(r"454 4\.7\.0 Too many failed logins for this account")


def test_app_password_works_for_smtp(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, _ = new_user(store)
    code = store.add_app_password(sender, "thunderbird")
    rcpt, _ = new_user(store)
    with submission_client(ports["submission"], sender, code) as client:
        client.sendmail(sender, [rcpt], message(sender, rcpt, "app password"))
    assert len(inbox(store, rcpt)) == 1


def test_sender_must_be_owned(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    other, _ = new_user(store)
    with submission_client(ports["submission"], sender, password) as client:
        code, text = client.mail(other)
        assert code == 553 and text.startswith(b"5.7.1")
        code, _ = client.mail("<>")
        assert code == 553
        code, _ = client.mail("someone@elsewhere.example")
        assert code == 553


def test_alias_and_group_addresses_may_be_used_as_sender(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    alias = sender.replace("@", ".alias@")
    store.directory.add_alias(alias, sender)
    group = sender.replace("@", ".team@")
    store.directory.add_group(group, post_policy="members")
    store.directory.add_group_member(group, sender)
    with submission_client(ports["submission"], sender, password) as client:
        client.sendmail(alias, [rcpt], message(alias, rcpt, "from alias"))
        client.sendmail(group, [rcpt], message(f"Team <{group}>", rcpt, "from group"))
    assert len(inbox(store, rcpt)) == 2


def test_from_header_must_be_owned(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    with submission_client(ports["submission"], sender, password) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail(sender, [rcpt], message("The CEO <ceo@example.test>", rcpt, "spoof"))
        assert err.value.smtp_code == 550 and err.value.smtp_error.startswith(b"5.7.1")
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail(sender, [rcpt], f"To: {rcpt}\r\nSubject: no from\r\n\r\nx\r\n".encode())
        assert err.value.smtp_code == 550
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(sender, [rcpt], message(f"{sender}, ceo@example.test", rcpt, "two froms"))
    assert inbox(store, rcpt) == []


def test_missing_date_and_message_id_are_added(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    with submission_client(ports["submission"], sender, password) as client:
        client.sendmail(sender, [rcpt], f"From: {sender}\r\nTo: {rcpt}\r\nSubject: bare\r\n\r\nhi\r\n".encode())
    (raw,) = inbox(store, rcpt)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"\r\nDate: \w{3}, \d", head)
    assert re.search(rb"\r\nMessage-ID: <\w{20}@mail\.example\.test>", head)


def test_remote_recipients_are_queued_encrypted_and_local_ones_delivered(ports, store, shared_instance) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    queue = OutboundQueue(store, shared_instance.path / "queue")
    before = set(queue.ids())
    body = message(sender, f"{rcpt}, friend@remote.example", "mixed")
    with submission_client(ports["submission"], sender, password) as client:
        client.sendmail(sender, [rcpt, "friend@remote.example", "other@remote.example"], body)
    (local,) = inbox(store, rcpt)
    new = set(queue.ids()) - before
    assert len(new) == 1
    qid = new.pop()
    queued = queue.load(qid)
    assert queued.sender == sender
    assert queued.recipients == ["friend@remote.example", "other@remote.example"]
    assert queued.raw == local  # the same bytes, trace headers included
    assert queued.meta["auth"] == sender
    assert f"id {qid}".encode() in local
    file_bytes = (shared_instance.path / "queue" / "ready" / qid).read_bytes()
    assert file_bytes.startswith(b"APQ1") and b"mixed" not in file_bytes and b"friend@remote" not in file_bytes


def test_swaks_submission_starttls_and_implicit_tls(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    for tls_flag, port in (("--tls", ports["submission"]), ("--tlsc", ports["submissions"])):
        out = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{port}", tls_flag, "--auth", "LOGIN", "--auth-user", sender,
             "--auth-password", password, "--from", sender, "--to", rcpt, "--header", f"From: {sender}"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "235 2.7.0 Authentication successful" in out.stdout
    assert len(inbox(store, rcpt)) == 2
