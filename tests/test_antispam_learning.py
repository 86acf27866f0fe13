"""Learning from users through the store's move hook, against a real rspamd.

A message moved into the Junk mailbox (special use \\Junk) is learned as
spam, one moved out of it as ham, one moved from Junk to Trash not at all;
the controller's counters show it. The move itself never waits for rspamd.
"""

from __future__ import annotations

import time

import pytest

from antispam.learning import classify


@pytest.fixture(scope="module")
def harness(tmp_path_factory, request):  # type: ignore[no-untyped-def]
    """The session's real rspamd (antispamkit): started once for all the antispam tests."""
    from antispamkit import shared_harness

    return shared_harness(request, tmp_path_factory)


def message(n: int) -> bytes:
    words = " ".join(f"word{n}x{i} token{i * n} phrase{n}" for i in range(40))
    return (f"From: Sender {n} <sender{n}@outside.example>\r\nTo: carol@example.test\r\nSubject: Note number {n}\r\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <note-{n}-{time.time_ns()}@outside.example>\r\n\r\n"
            f"{words}\r\n").encode()


def wait_learned(harness, before: int, n: int = 1, timeout: float = 30) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    learned = before
    while time.monotonic() < deadline:
        learned = harness.stat()["learned"]
        if learned >= before + n:
            return learned
        time.sleep(0.1)
    return learned


def test_classify() -> None:
    from types import SimpleNamespace as NS

    inbox, junk, trash, work = NS(special_use=None), NS(special_use="\\Junk"), NS(special_use="\\Trash"), NS(special_use=None)
    assert classify(inbox, junk) == "spam"
    assert classify(junk, inbox) == "ham" and classify(junk, work) == "ham"
    assert classify(junk, trash) is None and classify(inbox, work) is None and classify(junk, junk) is None


def test_moving_into_and_out_of_junk_teaches_rspamd(harness) -> None:  # type: ignore[no-untyped-def]
    store = harness.store
    user = store.create_user("carol@example.test", password="x" * 12)
    inbox = store.mail.get_mailbox(user.id, "INBOX")
    junk = store.mail.find_special(user.id, "\\Junk")
    trash = store.mail.find_special(user.id, "\\Trash")
    store.append(user, "INBOX", message(1))
    store.append(user, "INBOX", message(2))
    before = harness.stat()["learned"]

    uid = store.mail.uids(inbox.id)[0]
    started = time.monotonic()
    store.mail.move(inbox.id, [uid], junk.id)
    assert time.monotonic() - started < 1.0  # the hook only queues
    after_spam = wait_learned(harness, before)
    assert after_spam == before + 1
    assert harness.service.learner.stats["spam"] == 1

    # out of Junk into a folder of the user's: ham
    store.mail.move(junk.id, store.mail.uids(junk.id), inbox.id)
    after_ham = wait_learned(harness, after_spam)
    assert after_ham == after_spam + 1
    assert harness.service.learner.stats["ham"] == 1

    # Junk -> Trash is deleting spam, not ham
    store.mail.move(inbox.id, store.mail.uids(inbox.id), junk.id)
    assert wait_learned(harness, after_ham, 2) == after_ham + 2
    store.mail.move(junk.id, store.mail.uids(junk.id), trash.id)
    assert harness.run(harness.service.learner.drain(10))
    time.sleep(0.5)
    assert harness.stat()["learned"] == after_ham + 2


def test_learning_waits_for_rspamd_to_come_back(harness, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = harness.store
    learner = harness.service.learner
    monkeypatch.setattr(learner, "retry_delay", 0.5)
    user = store.directory.get_user("carol@example.test")
    inbox = store.mail.get_mailbox(user.id, "INBOX")
    junk = store.mail.find_special(user.id, "\\Junk")
    store.append(user, "INBOX", message(3))
    learned_before = learner.stats["spam"]
    rspamd = harness.service.daemons["rspamd"]
    harness.run(rspamd.pause())
    try:
        store.mail.move(inbox.id, store.mail.uids(inbox.id), junk.id)
        assert harness.run(learner.drain(10))
        assert learner.stats["retried"] >= 1
    finally:
        rspamd.resume()
    assert harness.run(rspamd.wait_ready(120), 130)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and learner.stats["spam"] < learned_before + 1:
        time.sleep(0.2)
    assert learner.stats["spam"] == learned_before + 1


def test_another_process_attaches_learning(harness) -> None:  # type: ignore[no-untyped-def]
    """imapd in its own process (systemd) calls antispam.attach_learning(ctx) so its moves teach rspamd."""
    import logging

    from antispam import attach_learning
    from appliance.services import ServiceContext
    from storage.store import Store

    other = Store.from_config(harness.cfg)  # another process's store: the service's hook is not on it
    ctx = ServiceContext(cfg=harness.cfg, store=other, executor=harness.executor, ssl_context=None, log=logging.getLogger("t"))

    async def attach():  # type: ignore[no-untyped-def]
        return attach_learning(ctx), attach_learning(ctx)

    try:
        learner, again = harness.run(attach())
        assert learner is again and learner is not harness.service.learner
        user = other.directory.get_user("carol@example.test")
        other.append(user, "INBOX", message(4))
        inbox = other.mail.get_mailbox(user.id, "INBOX")
        junk = other.mail.find_special(user.id, "\\Junk")
        before = harness.stat()["learned"]
        other.mail.move(inbox.id, other.mail.uids(inbox.id), junk.id)
        assert wait_learned(harness, before) == before + 1
        assert learner.stats["spam"] == 1
        harness.run(learner.stop())
    finally:
        other.close()
