"""Outbound delivery end to end: two appliance instances and a fake DNS on loopback.

The sender (domain example.test) takes mail by submission and delivers it by
MX to the receiver (domain remote.test, plus fallback.test, amx.test and
bulk.test), whose port-25 listener checks SPF/DKIM/DMARC against the same
fake DNS. MX hosts resolve to 127.0.0.x and the sender's queue.remote_port
is the receiver's MX port: 127.0.0.1 is the receiver, 127.0.0.2/.4/.5 have
nothing listening (connection refused), 127.0.0.3 is a scripted aiosmtpd peer.
"""

from __future__ import annotations

import collections
import email
import email.policy
import secrets
import signal
import smtplib
import threading
import time

import pytest
from conftest import Server, create_test_instance
from dnsserver import FakeDNS
from mtakit import inbox, inbox_message_ids, message, mx_client, new_user, submission_client
from outboundkit import Peer, wait_for

from mta.dkimsign import describe


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    yield server
    server.close()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory, fake_dns):  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path_factory.mktemp("receiver"), domain="remote.test", overrides=fake_dns.overrides())
    store = inst.store()
    for d in ("fallback.test", "amx.test", "bulk.test"):
        store.directory.add_domain(d)
    store.create_user("bulk@bulk.test", password=secrets.token_urlsafe(12))
    srv = Server(inst, services=["mta"])
    yield inst, store
    srv.stop()
    store.close()


def publish(fake_dns: FakeDNS, inst) -> None:  # type: ignore[no-untyped-def]
    """SPF, DKIM (every key of the instance) and DMARC p=reject for the instance's domain."""
    fake_dns.set(inst.domain, "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    fake_dns.set(f"_dmarc.{inst.domain}", "TXT", "v=DMARC1; p=reject")
    for k in describe(inst.path / "keys", inst.domain)["keys"]:
        fake_dns.set(k["name"], "TXT", k["txt"])


@pytest.fixture(scope="module")
def routes(fake_dns, receiver):  # type: ignore[no-untyped-def]
    port = receiver[0].ports["mx"]
    fake_dns.set("remote.test", "MX", "10 mail.remote.test.")
    fake_dns.set("mail.remote.test", "A", "127.0.0.1")
    fake_dns.set("fallback.test", "MX", "10 mx1.fallback.test.", "20 mx2.fallback.test.")
    fake_dns.set("mx1.fallback.test", "A", "127.0.0.2")
    fake_dns.set("mx2.fallback.test", "A", "127.0.0.1")
    fake_dns.set("amx.test", "A", "127.0.0.1")
    fake_dns.set("nullmx.test", "MX", "0 .")
    fake_dns.set("retry.test", "MX", "10 mx.retry.test.")
    fake_dns.set("mx.retry.test", "A", "127.0.0.3")
    fake_dns.set("bulk.test", "MX", "10 mx.bulk.test.")
    fake_dns.set("mx.bulk.test", "A", "127.0.0.5")
    return port


def sender_overrides(fake_dns: FakeDNS, port: int, **extra: object) -> dict:
    return {**fake_dns.overrides(), "queue.hold": False, "queue.remote_port": port, "queue.retry_base": 1,
            "queue.retry_max": 2, "queue.connect_timeout": 2, "queue.command_timeout": 10, **extra}


@pytest.fixture(scope="module")
def sender(tmp_path_factory, fake_dns, routes):  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path_factory.mktemp("sender"), overrides=sender_overrides(fake_dns, routes))
    fake_dns.set(f"mail.{inst.domain}", "A", "127.0.0.1")
    publish(fake_dns, inst)
    store = inst.store()
    srv = Server(inst, services=["mta"])
    yield inst, store
    srv.stop()
    store.close()


def submit(inst, rcpts: list[str], subject: str = "hello", *, sender: str = "alice@example.test") -> str:  # type: ignore[no-untyped-def]
    """Send by submission as ``sender``; returns the Message-ID."""
    raw = message(sender, ", ".join(rcpts), subject)
    mid = email.message_from_bytes(raw)["Message-ID"]
    with submission_client(inst.ports["submission"], sender, inst.accounts[sender]) as client:
        client.sendmail(sender, rcpts, raw)
    return mid


def received(store, address: str, mid: str, timeout: float = 20) -> list[bytes]:  # type: ignore[no-untyped-def]
    return wait_for(lambda: [m for m in inbox(store, address) if mid.encode() in m], timeout)


def dsn(store, address: str, mid: str, action: str = "failed", timeout: float = 20) -> email.message.Message:  # type: ignore[no-untyped-def]
    """The DSN about ``mid`` in ``address``'s INBOX, parsed; its delivery-status blocks are checked by the caller."""
    def find():  # type: ignore[no-untyped-def]
        for raw in inbox(store, address):
            if b"multipart/report" in raw and mid.encode() in raw and f"Action: {action}".encode() in raw:
                return email.message_from_bytes(raw, policy=email.policy.default)
        return None

    return wait_for(find, timeout)


def status_blocks(report: email.message.Message) -> list[email.message.Message]:
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    return parts[1].get_payload()


def unfolded_head(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")


# ---------------------------------------------------------------- delivery


def test_dkim_signed_mail_verifies_at_the_receiving_side(sender, receiver) -> None:  # type: ignore[no-untyped-def]
    r_inst, r_store = receiver
    rcpt, _ = new_user(r_store, "remote.test")
    mid = submit(sender[0], [rcpt], "signed")
    (raw,) = received(r_store, rcpt, mid)
    head = unfolded_head(raw)
    ar = [line for line in head.split("\r\n") if line.startswith("Authentication-Results: mail.remote.test;")]
    assert len(ar) == 1, head
    assert ar[0].count("dkim=pass header.d=example.test") == 2, ar[0]  # Ed25519 and RSA both verify
    assert "spf=pass" in ar[0] and "dmarc=pass header.from=example.test" in ar[0]
    assert "a=ed25519-sha256" in head and "a=rsa-sha256" in head
    assert " with ESMTPS " in head  # opportunistic STARTTLS was used


def test_one_connection_carries_several_recipients_of_a_domain(sender, receiver) -> None:  # type: ignore[no-untyped-def]
    r_store = receiver[1]
    a, _ = new_user(r_store, "remote.test")
    b, _ = new_user(r_store, "remote.test")
    mid = submit(sender[0], [a, b], "two")
    received(r_store, a, mid)
    received(r_store, b, mid)
    events = wait_for(lambda: [e for e in sender[1].events.query(kind="delivery", result="sent", limit=200)
                               if a in e.detail.get("recipients", [])])
    assert sorted(events[0].detail["recipients"]) == sorted([a, b])  # one transaction for both


def test_second_mx_is_used_when_the_first_refuses_connections(sender, receiver) -> None:  # type: ignore[no-untyped-def]
    r_store = receiver[1]
    rcpt, _ = new_user(r_store, "fallback.test")
    mid = submit(sender[0], [rcpt], "fallback")
    received(r_store, rcpt, mid)
    events = wait_for(lambda: [e for e in sender[1].events.query(kind="delivery", result="sent", limit=200)
                               if rcpt in e.detail.get("recipients", [])])
    assert events[0].detail["relay"] == "mx2.fallback.test[127.0.0.1]"


def test_domain_without_mx_is_reached_by_its_address_record(sender, receiver) -> None:  # type: ignore[no-untyped-def]
    r_store = receiver[1]
    rcpt, _ = new_user(r_store, "amx.test")
    mid = submit(sender[0], [rcpt], "implicit mx")
    received(r_store, rcpt, mid)


def test_null_mx_bounces_at_once(sender) -> None:  # type: ignore[no-untyped-def]
    mid = submit(sender[0], ["someone@nullmx.test"], "null mx")
    report = dsn(sender[1], "alice@example.test", mid)
    (_msg, block) = status_blocks(report)
    assert block["Final-Recipient"] == "rfc822; someone@nullmx.test"
    assert block["Action"] == "failed" and block["Status"] == "5.1.10"
    assert report["From"].startswith("Mail Delivery System <MAILER-DAEMON@")
    assert report["Auto-Submitted"] == "auto-replied"


def test_4xx_is_retried_then_delivered_once(sender, routes) -> None:  # type: ignore[no-untyped-def]
    peer = Peer("127.0.0.3", routes, replies=["451 4.3.0 Try again later"])
    try:
        mid = submit(sender[0], ["x@retry.test"], "retry")
        wait_for(lambda: peer.messages, 20)
        time.sleep(1.5)
        assert len(peer.messages) == 1
        assert peer.replies == []  # the 451 was given first
        assert mid.encode() in peer.messages[0][2]
    finally:
        peer.close()
    events = wait_for(lambda: [e for e in sender[1].events.query(kind="delivery", limit=300)
                               if "x@retry.test" in e.detail.get("recipients", []) and e.result in ("deferred", "sent")])
    assert {e.result for e in events} == {"deferred", "sent"}


def test_5xx_bounces_to_the_sender_inbox_with_the_remote_reply(sender, receiver) -> None:  # type: ignore[no-untyped-def]
    r_store = receiver[1]
    good, _ = new_user(r_store, "remote.test")
    bad = f"nobody{secrets.token_hex(3)}@remote.test"
    mid = submit(sender[0], [good, bad], "partly unknown")
    received(r_store, good, mid)
    report = dsn(sender[1], "alice@example.test", mid)
    blocks = status_blocks(report)
    assert blocks[0]["Reporting-MTA"] == "dns; mail.example.test"
    assert [b["Final-Recipient"] for b in blocks[1:]] == [f"rfc822; {bad}"]
    b = blocks[1]
    assert b["Action"] == "failed" and b["Status"] == "5.1.1"
    assert b["Remote-MTA"] == "dns; mail.remote.test"
    assert b["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    original = list(report.iter_parts())[2]
    assert original.get_content_type() == "message/rfc822"


def test_bounce_of_a_bounce_is_never_sent(sender) -> None:  # type: ignore[no-untyped-def]
    """A message with the null sender that fails is dropped with a log line, not bounced."""
    inst, store = sender
    raw = message("alice@example.test", "someone@nullmx.test", "null sender")
    from mta.queue import OutboundQueue

    before = len(inbox(store, "alice@example.test"))
    queue = OutboundQueue(store, inst.path / "queue")
    qid = queue.enqueue("", ["someone@nullmx.test"], raw)
    queue.kick(qid)  # another process enqueued it: ask the running worker to look now
    wait_for(lambda: not (inst.path / "queue" / "ready" / qid).exists(), 10)
    time.sleep(0.5)
    assert len(inbox(store, "alice@example.test")) == before


def test_no_bounce_for_mail_refused_in_session_on_port_25(sender, receiver) -> None:  # type: ignore[no-untyped-def]
    inst, _store = sender
    remote_user, _ = new_user(receiver[1], "remote.test")
    ready = inst.path / "queue" / "ready"
    before = set(ready.iterdir())
    with mx_client(inst.ports["mx"]) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(remote_user, ["nobody-here@example.test"], message(remote_user, "nobody-here@example.test"))
    time.sleep(1.5)
    assert set(ready.iterdir()) <= before  # nothing queued: no DSN goes out
    assert inbox(receiver[1], remote_user) == []


# ---------------------------------------------------------------- kill -9


def _sender_loop(port: int, worker: int, stop: threading.Event, acked: list[str], rcpt: str) -> None:
    try:
        client = mx_client(port)
    except (OSError, smtplib.SMTPException):
        return
    n = 0
    try:
        while not stop.is_set():
            mid = f"<k{worker}-{n}@bulk.example>"
            raw = message("load@sender.example", rcpt, f"bulk {worker}/{n}").replace(b"Message-ID: <", b"X-Old: <").replace(
                b"\r\n\r\n", f"\r\nMessage-ID: {mid}\r\n\r\n".encode(), 1)
            n += 1
            try:
                client.sendmail("load@sender.example", [rcpt], raw)
            except (smtplib.SMTPException, OSError):
                return
            acked.append(mid)
    finally:
        try:
            client.close()
        except OSError:
            pass


@pytest.mark.slow
def test_kill_9_with_1000_queued_delivers_each_exactly_once(tmp_path_factory, fake_dns, routes, receiver) -> None:  # type: ignore[no-untyped-def]
    """1,000+ messages queued (port 25, to a group whose member is remote) while the remote MX refuses
    connections; kill -9 in the middle of it; MX up, restart: each acknowledged message arrives once."""
    inst = create_test_instance(tmp_path_factory.mktemp("kill"), overrides=sender_overrides(fake_dns, routes), demo=False)
    store = inst.store()
    store.directory.add_group("relay@example.test", post_policy="anyone")
    store.directory.add_group_member("relay@example.test", "bulk@bulk.test")
    store.close()
    r_store = receiver[1]
    before = set(inbox_message_ids(r_store, "bulk@bulk.test"))
    fake_dns.set("mx.bulk.test", "A", "127.0.0.5")  # the peer is down: connections are refused
    srv = Server(inst, services=["mta"])
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_sender_loop, args=(inst.ports["mx"], i, stop, acked, "relay@example.test"),
                                daemon=True) for i in range(6)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 1000, 90, 0.02)
        srv.proc.send_signal(signal.SIGKILL)  # while messages arrive and deferrals are being written
        srv.proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        srv.stop()
    acked_ids = set(acked)
    assert len(acked_ids) >= 1000
    assert len(list((inst.path / "queue" / "ready").iterdir())) >= len(acked_ids)
    fake_dns.set("mx.bulk.test", "A", "127.0.0.1")  # the peer is up
    srv = Server(inst, services=["mta"])
    try:
        wait_for(lambda: acked_ids <= set(inbox_message_ids(r_store, "bulk@bulk.test")), 90, 0.5)
        time.sleep(2)  # anything sent twice would arrive by now
        counts = collections.Counter(i for i in inbox_message_ids(r_store, "bulk@bulk.test") if i not in before)
        duplicated = [i for i, n in counts.items() if n > 1]
        assert not duplicated, f"{len(duplicated)} sent twice, e.g. {duplicated[:3]}"
        assert len(set(counts) - acked_ids) <= len(threads)  # at most the one unacknowledged in flight per client
        queue_dir = inst.path / "queue" / "ready"
        wait_for(lambda: not any(queue_dir.iterdir()), 20)
    finally:
        srv.stop()
