"""Vacation auto-replies and forwarding, end to end through real SMTP.

Three parties on loopback with a fake DNS: our appliance (example.test,
delivering out), a second appliance as the remote MX (remote.test, on
127.0.0.1) that checks SPF/DKIM/DMARC, and a scripted SMTP peer (peer.test, on
127.0.0.3) that records the envelope it was given.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
from conftest import Server, create_test_instance
from dnsserver import FakeDNS
from mtakit import inbox, message, mx_client, new_user, submission_client
from outboundkit import Peer, wait_for

from mta import forward
from mta.dkimsign import describe
from storage import vacation


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    yield server
    server.close()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory, fake_dns):  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path_factory.mktemp("receiver"), domain="remote.test", overrides=fake_dns.overrides())
    store = inst.store()
    srv = Server(inst, services=["mta"])
    yield inst, store
    srv.stop()
    store.close()


@pytest.fixture(scope="module")
def peer(fake_dns, receiver):  # type: ignore[no-untyped-def]
    port = receiver[0].ports["mx"]
    fake_dns.set("remote.test", "MX", "10 mail.remote.test.")
    fake_dns.set("mail.remote.test", "A", "127.0.0.1")
    fake_dns.set("peer.test", "MX", "10 mx.peer.test.")
    fake_dns.set("mx.peer.test", "A", "127.0.0.3")
    p = Peer("127.0.0.3", port)
    yield p
    p.close()


@pytest.fixture(scope="module")
def ours(tmp_path_factory, fake_dns, receiver, peer):  # type: ignore[no-untyped-def]
    overrides = {**fake_dns.overrides(), "queue.hold": False, "queue.remote_port": receiver[0].ports["mx"],
                 "queue.retry_base": 1, "queue.retry_max": 2, "queue.connect_timeout": 2, "queue.command_timeout": 10,
                 "smtp.directory_cache_ttl": "0s"}
    inst = create_test_instance(tmp_path_factory.mktemp("ours"), overrides=overrides)
    fake_dns.set(inst.domain, "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    fake_dns.set(f"_dmarc.{inst.domain}", "TXT", "v=DMARC1; p=reject")
    for k in describe(inst.path / "keys", inst.domain)["keys"]:
        fake_dns.set(k["name"], "TXT", k["txt"])
    store = inst.store()
    srv = Server(inst, services=["mta"])
    yield inst, store
    srv.stop()
    store.close()


def away_user(store) -> str:  # type: ignore[no-untyped-def]
    email, _ = new_user(store, prefix="away")
    vacation.save_settings(store, email, enabled=True, body="I am away until Monday.\n我周一回来。")
    return email


def send_mx(inst, sender: str, rcpt: str, subject: str, *, extra: str = "", header_from: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Port 25 from ``sender`` (envelope; "" for the null sender) to ``rcpt``; returns the Message-ID."""
    raw = message(header_from or sender or "daemon@peer.test", rcpt, subject, extra=extra)
    mid = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    with mx_client(inst.ports["mx"]) as client:
        client.sendmail(sender or "<>", [rcpt], raw)
    return mid


def replies_to(peer: Peer, address: str) -> list[tuple[str, list[str], bytes]]:
    with peer.lock:
        return [m for m in peer.messages if address in m[1]]


def autoreply_events(store, user: str) -> list:  # type: ignore[no-untyped-def]
    return [e for e in store.events.query(kind="delivery", result="autoreply", limit=500) if e.detail.get("autoreply") == user]


# ---------------------------------------------------------------- vacation
def test_vacation_reply_once_per_sender_with_the_null_sender(ours, peer) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    user = away_user(store)
    sender = f"x{secrets.token_hex(3)}@peer.test"
    mid = send_mx(inst, sender, user, "are you there?")
    (mail_from, rcpts, raw) = wait_for(lambda: replies_to(peer, sender), 30)[0]
    assert mail_from == "<>" and rcpts == [sender]  # MAIL FROM:<> (aiosmtpd records the null path as "<>")
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "\r\nAuto-Submitted: auto-replied" in head
    assert f"In-Reply-To: {mid}" in head
    assert "Subject: Auto: are you there?" in head
    assert "DKIM-Signature:" in head and "d=example.test" in head  # signed like our other outgoing mail
    assert len(inbox(store, user)) == 1  # and the message itself was delivered

    send_mx(inst, sender, user, "second message")
    wait_for(lambda: len(inbox(store, user)) == 2)
    # a later message from a new sender is answered: by then the second one would have been too
    other = f"y{secrets.token_hex(3)}@peer.test"
    send_mx(inst, other, user, "third")
    wait_for(lambda: replies_to(peer, other), 30)
    time.sleep(0.5)
    assert len(replies_to(peer, sender)) == 1
    assert len(autoreply_events(store, user)) == 2


def test_no_vacation_reply_to_lists_bulk_or_the_null_sender(ours, peer) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    user = away_user(store)
    listed = f"list{secrets.token_hex(3)}@peer.test"
    bulk = f"bulk{secrets.token_hex(3)}@peer.test"
    send_mx(inst, listed, user, "list post", extra="List-Id: <team.peer.test>\r\n")
    send_mx(inst, bulk, user, "newsletter", extra="Precedence: bulk\r\n")
    send_mx(inst, "", user, "null sender", header_from="daemon@peer.test")
    wait_for(lambda: len(inbox(store, user)) == 3)  # all three delivered
    control = f"c{secrets.token_hex(3)}@peer.test"
    send_mx(inst, control, user, "a person")
    wait_for(lambda: replies_to(peer, control), 30)
    time.sleep(0.5)
    assert replies_to(peer, listed) == [] and replies_to(peer, bulk) == []
    assert [e.subject for e in autoreply_events(store, user)] == [control]


def test_vacation_reply_reaches_a_remote_appliance_signed(ours, receiver) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    r_store = receiver[1]
    user = away_user(store)
    remote, _ = new_user(r_store, "remote.test")
    send_mx(inst, remote, user, "hello from remote")
    (raw,) = wait_for(lambda: [m for m in inbox(r_store, remote) if b"Auto-Submitted: auto-replied" in m], 30)
    head = raw.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    assert "dkim=pass header.d=example.test" in head
    assert "dmarc=pass header.from=example.test" in head
    assert "I am away until Monday." in raw.decode()


def test_vacation_reply_to_a_colleague_is_delivered_locally(ours) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    user = away_user(store)
    colleague, password = new_user(store, prefix="col")
    raw = message(colleague, user, "lunch?")
    with submission_client(inst.ports["submission"], colleague, password) as client:
        client.sendmail(colleague, [user], raw)
    (reply,) = wait_for(lambda: inbox(store, colleague), 20)
    assert b"Auto-Submitted: auto-replied" in reply and b"Subject: Auto: lunch?" in reply
    (event,) = wait_for(lambda: autoreply_events(store, user))
    assert event.detail["via"] == "local" and event.subject == colleague  # through the store, not the queue


# ---------------------------------------------------------------- forwarding
def allow_forwarding(store, on: bool = True) -> None:  # type: ignore[no-untyped-def]
    from storage import policy

    current = policy.load(store)
    current["forwarding_allowed"] = on
    store.set_setting(policy.KEY, json.dumps(current))


def forwarding_user(store, target: str, *, keep: bool) -> str:  # type: ignore[no-untyped-def]
    email, _ = new_user(store, prefix="fw")
    store.directory.set_user_setting(email, "forward_to", target)
    store.directory.set_user_setting(email, "forward_keep", keep)
    return email


def test_forwarded_copy_reaches_the_remote_target_and_keeps_a_copy(ours, receiver) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    r_store = receiver[1]
    allow_forwarding(store)
    target, _ = new_user(r_store, "remote.test")
    user = forwarding_user(store, target, keep=True)
    mid = send_mx(inst, f"s{secrets.token_hex(3)}@peer.test", user, "please forward")
    (copy,) = wait_for(lambda: [m for m in inbox(r_store, target) if mid.encode() in m], 30)
    head = copy.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    assert f"Delivered-To: {user}" in head
    ar = head.split("Authentication-Results: mail.remote.test;", 1)[1].split("\r\n", 1)[0]
    assert "spf=pass" in ar and f"smtp.mailfrom={user}" in ar  # the forwarding user's address as envelope sender
    (kept,) = inbox(store, user)
    assert mid.encode() in kept
    event = wait_for(lambda: [e for e in store.events.query(kind="delivery", limit=300)
                              if e.detail.get("forwarded", {}).get(user) == target])
    assert event[0].result == "delivered"


def test_forwarding_without_keeping_a_copy(ours, receiver) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    r_store = receiver[1]
    allow_forwarding(store)
    target, _ = new_user(r_store, "remote.test")
    user = forwarding_user(store, target, keep=False)
    mid = send_mx(inst, f"s{secrets.token_hex(3)}@peer.test", user, "no copy here")
    wait_for(lambda: [m for m in inbox(r_store, target) if mid.encode() in m], 30)
    assert inbox(store, user) == []


def test_forwarding_obeys_the_policy_and_never_loops(ours, receiver) -> None:  # type: ignore[no-untyped-def]
    inst, store = ours
    r_store = receiver[1]
    target, _ = new_user(r_store, "remote.test")
    user = forwarding_user(store, target, keep=False)
    allow_forwarding(store, False)
    try:
        send_mx(inst, f"s{secrets.token_hex(3)}@peer.test", user, "policy off")
        wait_for(lambda: inbox(store, user))  # kept here: forwarding is not allowed
    finally:
        allow_forwarding(store)
    # a copy we forwarded that came back: kept, not forwarded again
    send_mx(inst, f"s{secrets.token_hex(3)}@peer.test", user, "came back", extra=f"Delivered-To: {user}\r\n")
    wait_for(lambda: len(inbox(store, user)) == 2)
    time.sleep(1.0)
    assert inbox(r_store, target) == []
    events = [e for e in store.events.query(kind="delivery", limit=300) if user in e.detail.get("not_forwarded", {})]
    assert events and events[0].detail["not_forwarded"][user].startswith("loop")


def test_forward_plan_keeps_spam_and_looping_mail_here(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storefix import new_store

    store = new_store(tmp_path / "s")
    try:
        allow_forwarding(store)
        store.directory.add_domain("other.test")
        a = forwarding_user(store, "out@far.test", keep=False)
        b = forwarding_user(store, "inside@other.test", keep=True)
        store.create_user("inside@other.test", password=secrets.token_urlsafe(12))
        users = [store.directory.get_user(a), store.directory.get_user(b)]
        raw = message("s@far.test", a, "x")
        p = forward.plan(store, users, raw, junk=set())
        assert p.remote == {a: ["out@far.test"]} and [u.email for u in p.local_copies] == ["inside@other.test"]
        assert [u.email for u in p.keep] == [b]  # a keeps no copy
        p = forward.plan(store, users, raw, junk={a})
        assert p.remote == {} and p.not_forwarded[a] == "spam" and a in [u.email for u in p.keep]
        hops = b"".join(b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n" for _ in range(forward.MAX_HOPS))
        p = forward.plan(store, users, hops + raw, junk=set())
        assert p.remote == {} and p.not_forwarded[a].startswith("loop")
        assert forward.copy_for(raw, users[0]).startswith(f"Delivered-To: {a}\r\n".encode())
        store.directory.add_alias("back@example.test", a)  # a forward that leads back to the user: kept here
        store.directory.set_user_setting(a, "forward_to", "back@example.test")
        p = forward.plan(store, [store.directory.get_user(a)], raw, junk=set())
        assert [u.email for u in p.keep] == [a] and p.local_copies == [] and p.not_forwarded[a].startswith("loop")
    finally:
        store.close()
