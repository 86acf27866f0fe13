"""A 100,000-message mailbox: index operations must not decrypt or parse bodies."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, update
from storefix import message, new_store

from storage import models as m

N = 100_000


@pytest.fixture(scope="module")
def big(tmp_path_factory):  # type: ignore[no-untyped-def]
    store = new_store(tmp_path_factory.mktemp("big") / "inst", fsync=False)
    user = store.create_user("big@example.test")
    report = store.append(user, "INBOX", message(subject="template"))
    inbox = store.mail.get_mailbox(user.id, "INBOX")
    [tmpl] = store.mail.messages(inbox.id)
    with store.read() as c:
        row = c.execute(m.messages.select().where(m.messages.c.id == tmpl.id)).one()
    with store.write() as c:
        rows = [
            {"mailbox_id": inbox.id, "uid": uid, "blob_id": row.blob_id, "size": row.size, "internal_date": row.internal_date,
             "flags": 1 if uid % 3 == 0 else 0, "keywords": None, "modseq": 2}
            for uid in range(2, N + 1)
        ]
        c.execute(insert(m.messages), rows)
        c.execute(update(m.mailboxes).where(m.mailboxes.c.id == inbox.id).values(uidnext=N + 1, highestmodseq=2))
    assert report.stored
    yield store, user, inbox
    store.close()


def _forbid_decryption(monkeypatch, store):  # type: ignore[no-untyped-def]
    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("decryption on an index path")

    monkeypatch.setattr(store.keyring, "open", boom)
    monkeypatch.setattr(store.blobs, "open", boom)


def test_list_uids_and_flags_without_decrypting(big, monkeypatch):  # type: ignore[no-untyped-def]
    store, _user, inbox = big
    _forbid_decryption(monkeypatch, store)
    rows = store.mail.uid_flags(inbox.id)
    assert len(rows) == N and rows[0][0] == 1 and rows[-1][0] == N
    st = store.mail.status(inbox.id)
    assert st.messages == N
    assert st.unseen == N - N // 3
    assert len(store.mail.messages(inbox.id)) == N


def test_store_flags_and_changes_on_large_mailbox(big, monkeypatch):  # type: ignore[no-untyped-def]
    store, _user, inbox = big
    _forbid_decryption(monkeypatch, store)
    modseq = store.mail.get_mailbox_by_id(inbox.id).highestmodseq
    changed, _ = store.mail.store_flags(inbox.id, range(50_000, 50_100), ["\\Flagged"], "add")
    assert len(changed) == 100
    got, vanished = store.mail.changes_since(inbox.id, modseq)
    assert [i.uid for i in got] == list(range(50_000, 50_100)) and vanished == []


def test_search_summaries_decrypt_only_small_records(big):  # type: ignore[no-untyped-def]
    store, user, inbox = big
    summaries = store.mail.summaries(user, inbox.id)
    assert len(summaries) == N
    assert summaries[N]["subject"] == "template"
