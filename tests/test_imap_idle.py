"""IDLE and two sessions on one mailbox: changes by this process and by other processes
reach an idling client within a second, in the order RFC 3501 7.4.1 allows."""

from __future__ import annotations

import re
import threading
import time

import pytest
from imapkit import Chat, account, imap, message, new_box, ok, store_of, user_of


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


@pytest.fixture(scope="module")
def user(inst) -> str:  # type: ignore[no-untyped-def]
    return account(inst, "idle")


def idle_on(inst, user: str, box: str) -> Chat:  # type: ignore[no-untyped-def]
    chat = Chat(inst.ports["imaps"], tls=True, timeout=10)
    chat.login(user)
    chat.send(f"s SELECT {box}")
    chat.tagged("s")
    chat.send("i IDLE")
    chat.expect(r"\+ ")
    return chat


def within(chat: Chat, pattern: str, seconds: float = 1.5) -> tuple[bytes, float]:
    start = time.monotonic()
    chat.sock.settimeout(seconds)
    line = chat.expect(pattern)
    return line, time.monotonic() - start


def test_idle_sees_delivery_by_another_process_cli(inst, user) -> None:
    chat = idle_on(inst, user, "INBOX")
    t0 = time.monotonic()
    proc = inst.cli("deliver", user, input=message("via the LDA"))
    assert proc.returncode == 0, proc.stderr
    line, _ = within(chat, r"\* \d+ EXISTS", 1.5)
    assert time.monotonic() - t0 < 5  # the CLI's own start-up is most of it
    chat.send("DONE")
    assert chat.tagged("i")[0] == b"i OK IDLE terminated"
    chat.close()


def test_idle_sees_append_flags_and_expunge_from_another_process(inst, user) -> None:
    c = imap(inst, user)
    box = new_box(c, "idle")
    ok(c.append(box, None, None, message("first")))
    c.logout()
    chat = idle_on(inst, user, box)
    store = store_of(inst)  # this test process is "another process" for the server
    owner = user_of(inst, user)
    started = time.monotonic()
    store.append(owner, box, message("second"))
    line, waited = within(chat, r"\* 2 EXISTS")
    assert time.monotonic() - started < 1.0, waited
    mb = store.mail.get_mailbox(owner.id, box)
    started = time.monotonic()
    store.mail.store_flags(mb.id, [1], ["\\Flagged"], "add")
    line, _ = within(chat, r"\* 1 FETCH")
    assert b"\\Flagged" in line and time.monotonic() - started < 1.0
    started = time.monotonic()
    store.mail.store_flags(mb.id, [1], ["\\Deleted"], "add")
    store.mail.expunge(mb.id)
    line, _ = within(chat, r"\* 1 EXPUNGE")
    assert time.monotonic() - started < 1.0
    chat.send("DONE")
    chat.tagged("i")
    chat.close()


def test_idle_sees_change_by_another_session_of_the_server(inst, user) -> None:
    c = imap(inst, user)
    box = new_box(c, "idle2")
    ok(c.append(box, None, None, message("one")))
    chat = idle_on(inst, user, box)
    started = time.monotonic()
    ok(c.append(box, None, None, message("two")))
    within(chat, r"\* 2 EXISTS", 1.0)
    ok(c.select(box))
    ok(c.store("1", "+FLAGS", "(\\Seen)"))
    line, _ = within(chat, r"\* 1 FETCH", 1.0)
    assert b"\\Seen" in line and time.monotonic() - started < 2.0
    ok(c._simple_command("MOVE", "2", "INBOX"))
    within(chat, r"\* 2 EXPUNGE", 1.0)
    chat.send("DONE")
    chat.tagged("i")
    chat.close()
    c.logout()


def test_idle_requires_done_and_rejects_garbage(inst, user) -> None:
    chat = idle_on(inst, user, "INBOX")
    chat.send("NOT-DONE")
    assert chat.tagged("i")[0].startswith(b"i BAD")
    chat.send("n NOOP")
    assert chat.tagged("n")[0].startswith(b"n OK")
    chat.close()


def test_many_idlers_all_notified(inst, user) -> None:
    c = imap(inst, user)
    box = new_box(c, "fan")
    c.logout()
    chats = [idle_on(inst, user, box) for _ in range(20)]
    store_of(inst).append(user_of(inst, user), box, message("to all"))
    for chat in chats:
        within(chat, r"\* 1 EXISTS", 2.0)
        chat.send("DONE")
        chat.tagged("i")
        chat.close()


def test_concurrent_moves_never_duplicate_or_lose(inst, user) -> None:
    c = imap(inst, user)
    src = new_box(c, "race")
    dst = new_box(c, "race-dst")
    for i in range(30):
        ok(c.append(src, None, None, message(f"race {i}")))
    c.logout()
    errors = []

    def mover() -> None:
        try:
            d = imap(inst, user)
            ok(d.select(src))
            for _ in range(30):
                typ, data = d._simple_command("UID", "MOVE", "1:*", dst)
                if typ != "OK":
                    errors.append((typ, data))
            d.logout()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=mover) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    c = imap(inst, user)
    assert ok(c.status(src, "(MESSAGES)"))[0].endswith(b"(MESSAGES 0)")
    assert ok(c.status(dst, "(MESSAGES)"))[0].endswith(b"(MESSAGES 30)")
    ok(c.select(dst))
    subjects = ok(c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    got = sorted(int(re.search(rb"race (\d+)", p[1]).group(1)) for p in subjects if isinstance(p, tuple))
    assert got == list(range(30))
    c.logout()
