"""The same store on a real PostgreSQL: directory, delivery, IMAP semantics, concurrency."""

from __future__ import annotations

import threading

import pgserver
import pytest
from storefix import FAST, message

from storage.crypto import generate_master_key
from storage.passwords import Passwords
from storage.store import Store

pytestmark = pytest.mark.skipif(not pgserver.available(), reason="PostgreSQL is not installed")


@pytest.fixture(scope="module")
def pg():  # type: ignore[no-untyped-def]
    server = pgserver.PgServer()
    yield server
    server.stop()


@pytest.fixture
def store(pg, tmp_path):  # type: ignore[no-untyped-def]
    key = tmp_path / "keys" / "master.key"
    key.parent.mkdir()
    generate_master_key(key)
    s = Store(database_url=pg.new_database(), mail_dir=tmp_path / "mail", keys_dir=tmp_path / "keys", master_key_file=key,
              passwords=Passwords(**FAST), create_schema=True)
    s.directory.add_domain("example.test")
    yield s
    s.close()


def test_delivery_flags_search_on_postgres(store):  # type: ignore[no-untyped-def]
    u = store.create_user("alice@example.test", password="pw-alice-1")
    for i in range(3):
        d = store.begin_delivery("bob@remote.example")
        d.add_recipient("alice@example.test")
        d.write(message(subject=f"pg {i}"))
        d.commit()
    inbox = store.mail.get_mailbox(u.id, "INBOX")
    assert store.mail.uids(inbox.id) == [1, 2, 3]
    assert [r[0] for r in store.mail.uid_flags(inbox.id)] == [1, 2, 3]
    store.mail.store_flags(inbox.id, [2], ["\\Seen", "\\Deleted"], "add")
    st = store.mail.status(inbox.id)
    assert (st.messages, st.unseen) == (3, 2)
    assert store.mail.expunge(inbox.id) == [2]
    assert sorted(s["subject"] for s in store.mail.summaries(u, inbox.id).values()) == ["pg 0", "pg 2"]
    [first, _] = store.mail.messages(inbox.id)
    assert store.mail.read(u, first).startswith(b"From: Bob")
    junk = store.mail.get_mailbox(u.id, "Junk")
    assert store.mail.move(inbox.id, [1], junk.id) == [(1, 1)]
    assert store.auth.authenticate("alice@example.test", "pw-alice-1", protocol="imap", ip="127.0.0.1").ok


def test_concurrent_deliveries_get_unique_uids_on_postgres(store):  # type: ignore[no-untyped-def]
    u = store.create_user("alice@example.test")
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        try:
            for i in range(15):
                d = store.begin_delivery("bob@remote.example")
                d.add_recipient("alice@example.test")
                d.write(message(subject=f"{tag}{i}"))
                d.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    inbox = store.mail.get_mailbox(u.id, "INBOX")
    assert store.mail.uids(inbox.id) == list(range(1, 61))
    assert store.mail.usage(u.id)[1] == 60
