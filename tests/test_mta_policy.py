"""Recipient rules end to end: groups, aliases, disabled accounts, quotas (shared ``appliance up``)."""

from __future__ import annotations

import secrets
import smtplib
import time

import pytest
from conftest import Server, create_test_instance
from mtakit import inbox, message, mx_client, new_user, submission_client
from smtpchat import Chat

TTL = 1.1  # the short-cache instance trusts directory answers for 1 s


@pytest.fixture(scope="module")
def store(shared_instance):  # type: ignore[no-untyped-def]
    s = shared_instance.store()
    yield s
    s.close()


@pytest.fixture(scope="module")
def ports(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return server.inst.ports


@pytest.fixture(scope="module")
def short_cache(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(ports, store) of an instance with smtp.directory_cache_ttl = 1s, for tests that change a user."""
    inst = create_test_instance(tmp_path_factory.mktemp("ttl"), overrides={"smtp.directory_cache_ttl": 1})
    srv = Server(inst, services=["mta"])
    s = inst.store()
    yield inst.ports, s
    s.close()
    srv.stop()


def group(store, policy: str, *members: str, department: int | None = None) -> str:  # type: ignore[no-untyped-def]
    address = f"g{secrets.token_hex(4)}@example.test"
    store.directory.add_group(address, post_policy=policy)
    for m in members:
        store.directory.add_group_member(address, m)
    if department is not None:
        store.directory.add_group_member(address, department, kind="department")
    return address


def rcpt_reply(port: int, sender: str, rcpt: str, *, size: int = 0) -> str:
    with Chat(port) as c:
        c.expect("220 ")
        c.ehlo()
        c.send(f"MAIL FROM:<{sender}>" + (f" SIZE={size}" if size else ""))
        c.expect(r"250 ")
        c.send(f"RCPT TO:<{rcpt}>")
        return c.reply()


def test_group_is_expanded_once_per_member_across_recipients(ports, store) -> None:  # type: ignore[no-untyped-def]
    a, _ = new_user(store)
    b, _ = new_user(store)
    c, _ = new_user(store)
    dept = store.directory.add_department("example.test", f"dept-{secrets.token_hex(3)}")
    store.directory.update_user(c, department_id=dept.id)
    inner = group(store, "anyone", b)
    outer = group(store, "anyone", a, b, inner, department=dept.id)
    alias = f"alias{secrets.token_hex(3)}@example.test"
    store.directory.add_alias(alias, a)
    with mx_client(ports["mx"]) as client:
        client.sendmail("news@sender.example", [outer, inner, a, alias], message("news@sender.example", outer, "team"))
    for user in (a, b, c):
        assert len(inbox(store, user)) == 1, user


def test_group_external_members_go_to_the_queue(ports, store, shared_instance) -> None:  # type: ignore[no-untyped-def]
    from mta.queue import OutboundQueue

    a, _ = new_user(store)
    g = group(store, "anyone", a, "partner@remote.example")
    queue = OutboundQueue(store, shared_instance.path / "queue")
    before = set(queue.ids())
    with mx_client(ports["mx"]) as client:
        client.sendmail("x@sender.example", [g], message("x@sender.example", g, "forward"))
    assert len(inbox(store, a)) == 1
    (qid,) = set(queue.ids()) - before
    assert queue.load(qid).recipients == ["partner@remote.example"]


def test_post_policy_members(ports, store) -> None:  # type: ignore[no-untyped-def]
    member, member_pw = new_user(store)
    outsider, outsider_pw = new_user(store)
    g = group(store, "members", member, "partner@remote.example")
    # port 25: only external members count; a local address there proves nothing
    assert rcpt_reply(ports["mx"], "partner@remote.example", g).startswith("250 2.1.5")
    assert rcpt_reply(ports["mx"], "stranger@remote.example", g).startswith("550 5.7.1 Only members")
    assert rcpt_reply(ports["mx"], member, g).startswith("550 5.7.1")
    # submission: the authenticated user
    with submission_client(ports["submission"], member, member_pw) as client:
        client.sendmail(member, [g], message(member, g, "member post"))
    with submission_client(ports["submission"], outsider, outsider_pw) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            client.sendmail(outsider, [g], message(outsider, g, "outsider post"))
        assert err.value.recipients[g][0] == 550
    assert len(inbox(store, member)) == 1


def test_post_policy_domain_and_anyone(ports, store) -> None:  # type: ignore[no-untyped-def]
    member, _ = new_user(store)
    colleague, colleague_pw = new_user(store)
    g = group(store, "domain", member)
    with submission_client(ports["submission"], colleague, colleague_pw) as client:
        client.sendmail(colleague, [g], message(colleague, g, "same domain"))
    assert rcpt_reply(ports["mx"], "someone@remote.example", g).startswith("550 5.7.1 Only senders of this group's domain")
    open_group = group(store, "anyone", member)
    assert rcpt_reply(ports["mx"], "someone@remote.example", open_group).startswith("250 ")
    assert len(inbox(store, member)) == 1


def test_disabled_account_is_refused_once_the_cache_expires(short_cache) -> None:  # type: ignore[no-untyped-def]
    ports, store = short_cache
    user, _ = new_user(store)
    assert rcpt_reply(ports["mx"], "x@sender.example", user).startswith("250 ")
    store.directory.update_user(user, state="disabled")
    time.sleep(TTL)
    assert rcpt_reply(ports["mx"], "x@sender.example", user).startswith("550 5.2.1")


def test_disabled_group_member_is_skipped(ports, store) -> None:  # type: ignore[no-untyped-def]
    active, _ = new_user(store)
    disabled, _ = new_user(store)
    store.directory.update_user(disabled, state="disabled")
    g = group(store, "anyone", active, disabled)
    with mx_client(ports["mx"]) as client:
        client.sendmail("x@sender.example", [g], message("x@sender.example", g, "skip"))
    assert len(inbox(store, active)) == 1
    assert inbox(store, disabled) == []


def test_quota_full_is_452_and_too_big_for_quota_is_552(short_cache) -> None:  # type: ignore[no-untyped-def]
    ports, store = short_cache
    user, _ = new_user(store, quota_bytes=4000)
    assert rcpt_reply(ports["mx"], "x@sender.example", user, size=5000).startswith("552 5.2.2")
    assert rcpt_reply(ports["mx"], "x@sender.example", user, size=1000).startswith("250 ")
    with mx_client(ports["mx"]) as client:
        client.sendmail("x@sender.example", [user], message("x@sender.example", user, "fill"))
    used = store.directory.get_user(user).used_bytes
    store.directory.update_user(user, quota_bytes=used)
    time.sleep(TTL)
    assert rcpt_reply(ports["mx"], "x@sender.example", user).startswith("452 4.2.2")


def test_quota_checked_again_at_data(ports, store) -> None:  # type: ignore[no-untyped-def]
    """Without SIZE= the RCPT passes; the store refuses at the end of DATA (452, the sender retries)."""
    user, _ = new_user(store, quota_bytes=3000)
    with Chat(ports["mx"]) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("MAIL FROM:<x@sender.example>")
        c.expect("250 ")
        c.send(f"RCPT TO:<{user}>")
        c.expect("250 ")
        c.send("DATA")
        c.expect("354 ")
        c.raw(message("x@sender.example", user, "big", ("y" * 70 + "\r\n") * 70) + b".\r\n")
        c.expect(r"452 4\.2\.2")
    assert inbox(store, user) == []


def test_too_many_recipients(ports, store, shared_instance) -> None:  # type: ignore[no-untyped-def]
    limit = shared_instance.config().smtp.max_recipients
    user, _ = new_user(store)
    with Chat(ports["mx"]) as c:
        c.expect("220 ")
        c.ehlo()
        c.send("MAIL FROM:<x@sender.example>")
        c.expect("250 ")
        for _ in range(limit):
            c.send(f"RCPT TO:<{user}>")
            c.expect(r"250 2\.1\.5")
        c.send(f"RCPT TO:<{user}>")
        c.expect(r"452 4\.5\.3 Too many recipients")
