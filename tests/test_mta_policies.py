"""The panel's policies obeyed by the MTA, through real SMTP: message size, outbound rate, bounces freezing.

One instance (MTA only) whose directory cache is off, so a policy saved in
the store applies to the next transaction; a fake DNS gives a domain with a
null MX (RFC 7505), which bounces at once (permanent failure, DSN) without a
remote server.
"""

from __future__ import annotations

import json
import smtplib

import pytest
from conftest import Server, create_test_instance
from dnsserver import FakeDNS
from mtakit import inbox, message, mx_client, new_user, submission_client
from outboundkit import wait_for

from antispam import outbound
from storage import policy

CONFIG_SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    server.set("nullmx.test", "MX", "0 .")
    yield server
    server.close()


@pytest.fixture(scope="module")
def inst(tmp_path_factory, fake_dns):  # type: ignore[no-untyped-def]
    overrides = {**fake_dns.overrides(), "queue.hold": False,
                 "queue.retry_base": 1, "smtp.directory_cache_ttl": "0s", "smtp.max_message_size": CONFIG_SIZE,
                 "limits.outbound_failures_per_hour": 3}
    i = create_test_instance(tmp_path_factory.mktemp("policies"), overrides=overrides)
    srv = Server(i, services=["mta"])
    yield i
    srv.stop()


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


def set_policy(store, **values: object) -> None:  # type: ignore[no-untyped-def]
    current = policy.load(store)
    current.update(values)
    store.set_setting(policy.KEY, json.dumps(current))


def ehlo_size(client: smtplib.SMTP) -> int:
    client.ehlo("client.example")
    return int(client.esmtp_features["size"])


def test_policy_message_size_is_announced_and_enforced(inst, store) -> None:  # type: ignore[no-untyped-def]
    user, _ = new_user(store)
    with mx_client(inst.ports["mx"]) as client:
        assert ehlo_size(client) == CONFIG_SIZE  # no policy: the config's limit
    set_policy(store, max_message_size=20_000)
    try:
        with mx_client(inst.ports["mx"]) as client:
            assert ehlo_size(client) == 20_000
            code, text = client.mail("s@far.test", ["SIZE=30000"])
            assert code == 552 and text.startswith(b"5.3.4")
            client.rset()
            big = message("s@far.test", user, "big", ("y" * 70 + "\r\n") * 400)
            assert len(big) > 20_000
            with pytest.raises(smtplib.SMTPSenderRefused) as refused_at_mail:
                client.sendmail("s@far.test", [user], big)  # smtplib declares SIZE: refused at MAIL
            assert refused_at_mail.value.smtp_code == 552
            assert client.mail("s@far.test")[0] == 250 and client.rcpt(user)[0] == 250  # no SIZE declared
            code, text = client.data(big)
            assert code == 552 and b"limit 20000 bytes" in text
            client.sendmail("s@far.test", [user], message("s@far.test", user, "small"))  # same session goes on
        assert [b"Subject: small" in m for m in inbox(store, user)] == [True]
        set_policy(store, max_message_size=2 * CONFIG_SIZE)  # the policy may also raise the limit
        with mx_client(inst.ports["mx"]) as client:
            assert ehlo_size(client) == 2 * CONFIG_SIZE
    finally:
        set_policy(store, max_message_size=0)


def test_policy_outbound_rate_freezes_the_account(inst, store) -> None:  # type: ignore[no-untyped-def]
    user, password = new_user(store)
    set_policy(store, outbound_per_hour=2)
    try:
        with submission_client(inst.ports["submission"], user, password) as client:
            for n in range(3):  # the third passes the limit of 2: accepted, then the account is frozen
                client.sendmail(user, ["x@nullmx.test"], message(user, "x@nullmx.test", f"n{n}"))
            code, text = client.mail(user)
            assert code == 451 and b"suspended" in text
        frozen = outbound.is_frozen(store, user)
        assert frozen and "limit 2" in frozen.reason
    finally:
        set_policy(store, outbound_per_hour=0)


def test_bounces_of_a_users_mail_freeze_it_after_the_limit(inst, store) -> None:  # type: ignore[no-untyped-def]
    """limits.outbound_failures_per_hour = 3: four permanent failures (null MX, DSNs sent) freeze the account."""
    user, password = new_user(store)
    rcpts = [f"nobody{n}@nullmx.test" for n in range(4)]
    with submission_client(inst.ports["submission"], user, password) as client:
        client.sendmail(user, rcpts[:2], message(user, ", ".join(rcpts[:2]), "first two"))
    wait_for(lambda: [m for m in inbox(store, user) if b"multipart/report" in m], 20)  # the DSN came back
    wait_for(lambda: outbound.counters(store, user)["failures"] == 2, 20)  # counted just after the DSN went out
    assert outbound.counters(store, user)["failures"] == 2 and not outbound.is_frozen(store, user)
    with submission_client(inst.ports["submission"], user, password) as client:
        client.sendmail(user, rcpts[2:], message(user, ", ".join(rcpts[2:]), "two more"))
    frozen = wait_for(lambda: outbound.is_frozen(store, user), 20)
    assert "failed recipients or bounces" in frozen.reason
    with submission_client(inst.ports["submission"], user, password) as client:
        code, _text = client.mail(user)
        assert code == 451
    # port 25 mail to the frozen account still arrives: only its sending is frozen
    with mx_client(inst.ports["mx"]) as client:
        client.sendmail("s@far.test", [user], message("s@far.test", user, "still reachable"))
    assert any(b"still reachable" in m for m in inbox(store, user))
