"""Learning from users end to end: imaplib against ``appliance up``, a real rspamd behind it.

A user moves a message from INBOX to Junk with ``UID MOVE``: rspamd's
controller learns it as spam (its ``learned`` counter and the BAYES_SPAM
statistics grow); moving it back out of Junk teaches ham. ``UID COPY`` into
Junk teaches spam too, as in Dovecot's IMAPSieve recipe for rspamd: clients
without MOVE (and some with it) copy, then flag and expunge the original, so
the copy is the user's verdict. Learning is asynchronous: the MOVE answers
at once even while rspamd is frozen (SIGSTOP), and the lesson arrives when
it wakes up.

The server runs mta, imapd and antispam in one process, like ``appliance
up``; its antispam service uses the session's shared rspamd (antispamkit)
as an unmanaged one, so rspamd starts once per test session.
"""

from __future__ import annotations

import os
import secrets
import signal
import time

import pytest
from antispamkit import (
    bayes_learns,
    clamd_installed,
    shared_harness,
    unmanaged_overrides,
    wait_for,
    wait_ready,
)
from conftest import Server, create_test_instance
from imapkit import imap, ok
from mtakit import inbox, mx_client, new_user

WORDS = ("harbour lantern quarry meadow orchard violin saddle copper thistle canyon falcon walnut glacier pepper "
         "ribbon marble tunnel kettle beacon sparrow").split()


@pytest.fixture(scope="module")
def harness(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    return shared_harness(request, tmp_path_factory)


@pytest.fixture(scope="module")
def inst(harness, tmp_path_factory):  # type: ignore[no-untyped-def]
    return create_test_instance(tmp_path_factory.mktemp("antispam-imap"), overrides=unmanaged_overrides(harness))


@pytest.fixture(scope="module")
def server(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst, services=["mta", "imapd", "antispam"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


@pytest.fixture
def user(server, store):  # type: ignore[no-untyped-def]
    return new_user(store)


def unique_message(rcpt: str) -> bytes:
    """A plain message with enough fresh words for rspamd to learn (it skips short ones)."""
    rng = secrets.SystemRandom()
    words = " ".join(f"{rng.choice(WORDS)}{rng.randrange(10**6)}" for _ in range(60))
    return (f"From: Partner <news@partner.example>\r\nTo: {rcpt}\r\nSubject: Update {secrets.token_hex(3)}\r\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{secrets.token_hex(8)}@partner.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{words}\r\n").encode()


def deliver(inst, store, rcpt: str) -> None:  # type: ignore[no-untyped-def]
    """Through port 25 and the scanner, like any inbound mail; it must land in the INBOX."""
    before = len(inbox(store, rcpt))
    with mx_client(inst.ports["mx"]) as client:
        client.sendmail("news@partner.example", [rcpt], unique_message(rcpt))
    assert len(inbox(store, rcpt)) == before + 1


def counts(harness) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """rspamd's learned total (controller /stat) and its Bayes learns per class (BAYES_SPAM, BAYES_HAM)."""
    learns = bayes_learns(harness)
    return {"learned": int(harness.stat()["learned"]), "BAYES_SPAM": learns["spam"], "BAYES_HAM": learns["ham"]}


def wait_counts(harness, server, before: dict[str, int], **grow: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Wait until each named counter grew by the given amount; return the counters."""
    now: dict[str, int] = {}

    def done() -> bool:
        now.update(counts(harness))
        return all(now.get(k, 0) >= before.get(k, 0) + n for k, n in grow.items())

    assert wait_for(done, timeout=60, interval=0.2), f"rspamd counters {now}, before {before}\n{server.log()[-2000:]}"
    return now


def uid_of_last(c) -> bytes:  # type: ignore[no-untyped-def]
    data = ok(c.uid("SEARCH", "ALL"))
    return data[0].split()[-1]


def test_move_into_junk_teaches_spam_and_out_of_it_ham(harness, server, inst, store, user) -> None:  # type: ignore[no-untyped-def]
    email, password = user
    deliver(inst, store, email)
    before = counts(harness)
    c = imap(inst, email, password)
    try:
        ok(c.select("INBOX"))
        uid = uid_of_last(c)
        started = time.monotonic()
        ok(c.uid("MOVE", uid, "Junk"))
        assert time.monotonic() - started < 2.0
        after_spam = wait_counts(harness, server, before, learned=1, BAYES_SPAM=1)
        assert after_spam["learned"] == before["learned"] + 1
        assert after_spam["BAYES_SPAM"] == before["BAYES_SPAM"] + 1
        assert after_spam["BAYES_HAM"] == before["BAYES_HAM"]
        assert len(inbox(store, email, "Junk")) == 1 and inbox(store, email) == []

        # the user changes their mind: out of Junk, back to the INBOX, is ham
        ok(c.select("Junk"))
        ok(c.uid("MOVE", uid_of_last(c), "INBOX"))
        after_ham = wait_counts(harness, server, after_spam, learned=1, BAYES_HAM=1)
        assert after_ham["BAYES_HAM"] == after_spam["BAYES_HAM"] + 1
        assert after_ham["learned"] == after_spam["learned"] + 1
    finally:
        c.logout()


def test_copy_into_junk_teaches_spam(harness, server, inst, store, user) -> None:  # type: ignore[no-untyped-def]
    email, password = user
    deliver(inst, store, email)
    before = counts(harness)
    c = imap(inst, email, password)
    try:
        ok(c.select("INBOX"))
        ok(c.uid("COPY", uid_of_last(c), "Junk"))
        after = wait_counts(harness, server, before, learned=1, BAYES_SPAM=1)
        assert after["BAYES_SPAM"] == before["BAYES_SPAM"] + 1 and after["learned"] == before["learned"] + 1
        assert len(inbox(store, email)) == 1 and len(inbox(store, email, "Junk")) == 1  # a copy: both stay
        # a plain copy between the user's own folders teaches nothing
        ok(c.create("Projects"))
        ok(c.uid("COPY", uid_of_last(c), "Projects"))
        time.sleep(1.0)
        assert counts(harness)["learned"] == after["learned"]
    finally:
        c.logout()


def test_move_answers_at_once_while_rspamd_is_frozen(harness, server, inst, store, user) -> None:  # type: ignore[no-untyped-def]
    email, password = user
    deliver(inst, store, email)
    before = counts(harness)
    rspamd = harness.service.daemons["rspamd"]
    c = imap(inst, email, password)
    try:
        ok(c.select("INBOX"))
        uid = uid_of_last(c)
        os.killpg(rspamd.pid, signal.SIGSTOP)  # accepts connections, answers nothing: the worst case
        try:
            started = time.monotonic()
            ok(c.uid("MOVE", uid, "Junk"))
            elapsed = time.monotonic() - started
            ok(c.noop())
            time.sleep(2.0)  # the learner is now waiting on the frozen rspamd
        finally:
            os.killpg(rspamd.pid, signal.SIGCONT)
        assert elapsed < 1.0, f"MOVE took {elapsed:.2f}s while rspamd was frozen"
        after = wait_counts(harness, server, before, learned=1, BAYES_SPAM=1)
        assert after["BAYES_SPAM"] == before["BAYES_SPAM"] + 1
    finally:
        c.logout()
        wait_ready(harness)


@pytest.mark.skipif(not clamd_installed(), reason="clamav-daemon is not installed")
def test_an_infected_attachment_is_refused_on_port_25(server, inst, store, user) -> None:  # type: ignore[no-untyped-def]
    """The shared rspamd scans attachments with clamd (antispam.virus_scan): the sender gets a 550, nobody the virus."""
    import smtplib

    from test_antispam_virus import infected, with_attachment

    email, _password = user
    raw = with_attachment(infected(), "invoice.com").replace(b"bob@example.test", email.encode())
    with mx_client(inst.ports["mx"]) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("sender@partner.example", [email], raw)
    assert err.value.smtp_code == 550 and b"virus" in err.value.smtp_error
    assert inbox(store, email) == [] and inbox(store, email, "Junk") == []
