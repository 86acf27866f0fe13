"""The MTA's use of antispam/: scanning on port 25 (against a fake rspamd), outbound freezes and counters."""

from __future__ import annotations

import json
import smtplib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import Server, create_test_instance
from mtakit import inbox, message, mx_client, new_user, submission_client

from antispam import outbound


class FakeRspamd(BaseHTTPRequestHandler):
    """POST /checkv2: the verdict depends on the Subject; records what it was sent."""

    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeRspamd.seen.append({"rcpt": self.headers.get_all("Rcpt"), "ip": self.headers.get("IP"), "body": body,
                                "helo": self.headers.get("Helo"), "hostname": self.headers.get("Hostname")})
        if b"Subject: spammy" in body:
            result = {"action": "add header", "score": 8.5, "required_score": 15.0, "symbols": {"FAKE_SPAM": {"score": 8.5}}}
        elif b"Subject: evil" in body:
            result = {"action": "reject", "score": 30.0, "required_score": 15.0, "symbols": {}}
        else:
            result = {"action": "no action", "score": 0.5, "required_score": 15.0, "symbols": {}}
        data = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def rspamd():  # type: ignore[no-untyped-def]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeRspamd)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def inst(tmp_path_factory, rspamd):  # type: ignore[no-untyped-def]
    return create_test_instance(
        tmp_path_factory.mktemp("antispam"),
        overrides={"antispam.enabled": True, "antispam.managed": False, "antispam.url": f"http://127.0.0.1:{rspamd}",
                   "limits.outbound_messages_per_hour": 3},
    )


@pytest.fixture(scope="module")
def ports(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst, services=["mta"])
    yield inst.ports
    srv.stop()


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


def test_clean_mail_goes_to_inbox_with_the_verdict_headers(ports, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    forged = b"X-Spam-Status: No, forged by the sender\r\n"
    with mx_client(ports["mx"]) as client:
        client.sendmail("a@sender.example", [rcpt], forged + message("a@sender.example", rcpt, "clean"))
    (raw,) = inbox(store, rcpt)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"X-Spam-Status: No, score=0.50" in head
    assert b"forged by the sender" not in head
    seen = FakeRspamd.seen[-1]
    assert seen["rcpt"] == [rcpt] and seen["ip"] == "127.0.0.1"
    # Helo and Hostname describe the client; we do no reverse DNS, so rspamd resolves the name itself
    assert seen["helo"] == "client.example" and seen["hostname"] is None
    assert seen["body"].startswith(b"Received: from client.example") and b"Authentication-Results:" in seen["body"]


def test_spam_is_filed_into_junk(ports, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    with mx_client(ports["mx"]) as client:
        client.sendmail("a@sender.example", [rcpt], message("a@sender.example", rcpt, "spammy"))
    assert inbox(store, rcpt) == []
    (raw,) = inbox(store, rcpt, "Junk")
    assert b"X-Spam-Flag: YES" in raw


def test_spam_is_never_forwarded_and_clean_mail_reaches_a_local_target(ports, store) -> None:  # type: ignore[no-untyped-def]
    from storage import policy

    store.set_setting(policy.KEY, json.dumps({**policy.load(store), "forwarding_allowed": True}))
    user, _ = new_user(store, prefix="fw")
    target, _ = new_user(store, prefix="tg")
    store.directory.set_user_setting(user, "forward_to", target)
    store.directory.set_user_setting(user, "forward_keep", False)
    with mx_client(ports["mx"]) as client:
        client.sendmail("a@sender.example", [user], message("a@sender.example", user, "spammy"))
        client.sendmail("a@sender.example", [user], message("a@sender.example", user, "clean"))
    (junk,) = inbox(store, user, "Junk")  # spam stays here, in Junk, whatever keep_copy says
    assert b"Subject: spammy" in junk
    assert inbox(store, user) == []  # the clean one was forwarded without a copy
    (forwarded,) = inbox(store, target)
    assert b"Subject: clean" in forwarded


def test_rejected_spam_gets_the_scanners_reply(ports, store) -> None:  # type: ignore[no-untyped-def]
    rcpt, _ = new_user(store)
    with mx_client(ports["mx"]) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@sender.example", [rcpt], message("a@sender.example", rcpt, "evil"))
    assert err.value.smtp_code == 550
    assert inbox(store, rcpt) == []


def test_frozen_account_cannot_send_and_submissions_are_counted(ports, store) -> None:  # type: ignore[no-untyped-def]
    sender, password = new_user(store)
    rcpt, _ = new_user(store)
    with submission_client(ports["submission"], sender, password) as client:
        client.sendmail(sender, [rcpt], message(sender, rcpt, "one"))
        client.sendmail(sender, [rcpt], message(sender, rcpt, "two"))
    assert outbound.counters(store, sender)["messages"] == 2
    outbound.freeze(store, sender, "test freeze", notify=False)
    with submission_client(ports["submission"], sender, password) as client:
        code, text = client.mail(sender)
    assert code == 451 and text.startswith(b"4.7.1")
    assert len(inbox(store, rcpt)) == 2
