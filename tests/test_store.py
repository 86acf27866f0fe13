"""The store through its API: directory, delivery, IMAP semantics, encryption at rest."""

from __future__ import annotations

import subprocess

import pytest
from storefix import message, new_store, open_store

from storage.errors import (
    ConflictError,
    InvalidInputError,
    KeyMissingError,
    NotFoundError,
    QuotaExceededError,
)


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = new_store(tmp_path / "inst")
    yield s
    s.close()


def deliver(store, rcpts, raw):  # type: ignore[no-untyped-def]
    d = store.begin_delivery("bob@remote.example")
    for r in rcpts:
        d.add_recipient(r)
    d.write(raw)
    return d.commit()


def test_user_gets_default_mailboxes_with_special_use(store):  # type: ignore[no-untyped-def]
    u = store.create_user("Alice@Example.TEST", password="secret-pw", name="Alice")
    assert u.email == "alice@example.test"
    boxes = {mb.name: mb.special_use for mb in store.mail.list_mailboxes(u.id)}
    assert boxes == {"INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Junk": "\\Junk", "Trash": "\\Trash", "Archive": "\\Archive"}


def test_directory_validation_and_conflicts(store):  # type: ignore[no-untyped-def]
    store.create_user("alice@example.test")
    with pytest.raises(ConflictError):
        store.create_user("ALICE@example.test")
    with pytest.raises(NotFoundError):
        store.create_user("x@unknown.test")
    for bad in ("no-at-sign", "a@@b.test", "a b@example.test", ".a@example.test", "a@-bad.test"):
        with pytest.raises(InvalidInputError):
            store.create_user(bad)
    with pytest.raises(ConflictError):
        store.directory.add_group("alice@example.test")
    with pytest.raises(InvalidInputError):
        store.directory.add_alias("same@example.test", "same@example.test")


def test_round_trip_and_no_plaintext_on_disk(store, tmp_path):  # type: ignore[no-untyped-def]
    u = store.create_user("alice@example.test")
    raw = message(subject="zebracornflake subject", body="zebracornflake body " * 5000)
    report = deliver(store, ["alice@example.test"], raw)
    assert [s.uid for s in report.stored] == [1]
    inbox = store.mail.get_mailbox(u.id, "INBOX")
    [info] = store.mail.messages(inbox.id)
    assert store.mail.read(u, info) == raw
    assert store.mail.meta(u, info)["env"]["subject"] == "zebracornflake subject"
    store.close()
    found = subprocess.run(["grep", "-r", "-l", "zebracornflake", str(tmp_path)], capture_output=True, text=True)
    assert found.returncode == 1, found.stdout


def test_uids_modseq_flags_expunge(store):  # type: ignore[no-untyped-def]
    u = store.create_user("alice@example.test")
    for i in range(5):
        deliver(store, ["alice@example.test"], message(subject=f"m{i}"))
    inbox = store.mail.get_mailbox(u.id, "INBOX")
    assert store.mail.uids(inbox.id) == [1, 2, 3, 4, 5]
    before = store.mail.get_mailbox_by_id(inbox.id).highestmodseq
    changed, failed = store.mail.store_flags(inbox.id, [2, 3], ["\\Deleted", "$Label1"], "add")
    assert [c[0] for c in changed] == [2, 3] and not failed
    assert all(c[2] > before for c in changed)
    # CONDSTORE: a stale UNCHANGEDSINCE fails for the changed messages only
    _, failed = store.mail.store_flags(inbox.id, [1, 2], ["\\Seen"], "add", unchanged_since=before)
    assert failed == [2]
    gone = store.mail.expunge(inbox.id)
    assert gone == [2, 3]
    assert store.mail.uids(inbox.id) == [1, 4, 5]
    _, vanished = store.mail.changes_since(inbox.id, before)
    assert vanished == [2, 3]
    deliver(store, ["alice@example.test"], message(subject="new"))
    assert store.mail.uids(inbox.id)[-1] == 6  # UIDs never reused
    st = store.mail.status(inbox.id)
    assert (st.messages, st.unseen) == (4, 3)


def test_copy_move_and_blob_sharing(store):  # type: ignore[no-untyped-def]
    u = store.create_user("alice@example.test")
    deliver(store, ["alice@example.test"], message(subject="a"))
    inbox = store.mail.get_mailbox(u.id, "INBOX")
    archive = store.mail.get_mailbox(u.id, "Archive")
    junk = store.mail.get_mailbox(u.id, "Junk")
    moved = []
    store.add_move_hook(lambda user, src, dst, uids: moved.append((src.name, dst.name, uids)))
    assert store.mail.copy(inbox.id, [1], archive.id) == [(1, 1)]
    assert store.mail.move(inbox.id, [1], junk.id) == [(1, 1)]
    assert moved == [("INBOX", "Junk", [1])]
    assert store.mail.uids(inbox.id) == []
    # the archived copy still reads after the other is expunged
    store.mail.store_flags(junk.id, [1], ["\\Deleted"], "add")
    store.mail.expunge(junk.id)
    [info] = store.mail.messages(archive.id)
    assert b"Subject: a" in store.mail.read(u, info)
    assert store.mail.usage(u.id) == (info.size, 1)


def test_quota_bytes_and_messages(store):  # type: ignore[no-untyped-def]
    raw = message(body="x" * 1000)
    store.create_user("small@example.test", quota_bytes=len(raw) * 2 + 10, quota_messages=0)
    store.create_user("few@example.test", quota_messages=1)
    deliver(store, ["small@example.test"], raw)
    deliver(store, ["small@example.test"], raw)
    with pytest.raises(QuotaExceededError):
        deliver(store, ["small@example.test"], raw)
    deliver(store, ["few@example.test"], raw)
    with pytest.raises(QuotaExceededError):
        deliver(store, ["few@example.test"], raw)


def test_partial_failure_reports_per_recipient(store):  # type: ignore[no-untyped-def]
    store.create_user("full@example.test", quota_messages=1)
    store.create_user("ok@example.test")
    deliver(store, ["full@example.test"], message())
    report = deliver(store, ["full@example.test", "ok@example.test"], message(subject="two"))
    assert [s.email for s in report.stored] == ["ok@example.test"]
    assert isinstance(report.failed["full@example.test"], QuotaExceededError)


def test_aliases_groups_departments_expand_once(store):  # type: ignore[no-untyped-def]
    for n in ("a", "b", "c"):
        store.create_user(f"{n}@example.test")
    dept = store.directory.add_department("example.test", "Sales")
    store.directory.update_user("c@example.test", department_id=dept.id)
    store.directory.add_alias("info@example.test", "a@example.test")
    store.directory.add_alias("info@example.test", "b@example.test")
    store.directory.add_group("team@example.test", post_policy="anyone")
    store.directory.add_group_member("team@example.test", "info@example.test")
    store.directory.add_group_member("team@example.test", "a@example.test")
    store.directory.add_group_member("team@example.test", "partner@elsewhere.example")
    store.directory.add_group_member("team@example.test", dept.id, kind="department")
    local, external = store.directory.expand("team@example.test")
    assert sorted(local) == ["a@example.test", "b@example.test", "c@example.test"]
    assert external == ["partner@elsewhere.example"]
    # a loop between alias and group terminates
    store.directory.add_alias("loop@example.test", "team@example.test")
    store.directory.add_group_member("team@example.test", "loop@example.test")
    local, _ = store.directory.expand("loop@example.test")
    assert sorted(local) == ["a@example.test", "b@example.test", "c@example.test"]
    assert store.directory.addresses_of("a@example.test") == {"a@example.test", "info@example.test"}


def test_crypto_erase_on_user_removal(store, tmp_path):  # type: ignore[no-untyped-def]
    u = store.create_user("gone@example.test")
    deliver(store, ["gone@example.test"], message(subject="secret"))
    [info] = store.mail.messages(store.mail.get_mailbox(u.id, "INBOX").id)
    blob_file = store.blobs.path(u.uuid, info.blob_id)
    saved = blob_file.read_bytes()  # a backup taken before deletion
    store.remove_user("gone@example.test")
    assert not blob_file.exists()
    blob_file.parent.mkdir(parents=True, exist_ok=True)
    blob_file.write_bytes(saved)  # restore the file from "backup"
    with pytest.raises(KeyMissingError):
        store.blobs.open(u.uuid, info.blob_id).read_all()
    fresh = open_store(tmp_path / "inst")  # even a new process with the master key cannot read it
    try:
        with pytest.raises(KeyMissingError):
            fresh.blobs.open(u.uuid, info.blob_id).read_all()
    finally:
        fresh.close()


def test_passwords_cache_and_change(store):  # type: ignore[no-untyped-def]
    store.create_user("alice@example.test", password="first-password")
    a = store.auth
    assert a.authenticate("alice@example.test", "first-password", protocol="imap", ip="127.0.0.1").ok
    store.set_password("alice@example.test", "second-password")
    assert not a.authenticate("alice@example.test", "first-password", protocol="imap", ip="127.0.0.1").ok
    assert a.authenticate("ALICE@example.test", "second-password", protocol="imap", ip="127.0.0.1").ok
    logins = store.events.query(kind="login", user="alice@example.test")
    assert [e.result for e in logins][:3] == ["ok", "fail", "ok"]


def test_lockout_after_failures_and_unlock(store):  # type: ignore[no-untyped-def]
    store.create_user("alice@example.test", password="right-password")
    a = store.auth
    for _ in range(a.settings.max_failures_per_account):
        assert a.authenticate("alice@example.test", "wrong", protocol="smtp", ip="127.0.0.2").reason == "bad_credentials"
    locked = a.authenticate("alice@example.test", "right-password", protocol="smtp", ip="127.0.0.3")
    assert not locked.ok and locked.reason == "locked" and locked.temporary
    a.unlock("alice@example.test")
    assert a.authenticate("alice@example.test", "right-password", protocol="smtp", ip="127.0.0.3").ok


def test_app_passwords_and_disabled_accounts(store):  # type: ignore[no-untyped-def]
    store.create_user("alice@example.test", password="main-password")
    code = store.add_app_password("alice@example.test", "Thunderbird")
    out = store.auth.authenticate("alice@example.test", code, protocol="imap", ip="127.0.0.1")
    assert out.ok and out.via_app_password == "Thunderbird"
    [ap] = store.list_app_passwords("alice@example.test")
    assert ap.last_ip == "127.0.0.1"
    store.revoke_app_password("alice@example.test", "Thunderbird")
    assert not store.auth.authenticate("alice@example.test", code, protocol="imap").ok
    store.directory.update_user("alice@example.test", state="disabled")
    out = store.auth.authenticate("alice@example.test", "main-password", protocol="imap")
    assert not out.ok and out.reason == "disabled"


def test_mailbox_names_refused(store):  # type: ignore[no-untyped-def]
    u = store.create_user("alice@example.test")
    for bad in ("a\r\nb", "../x", "a//b", "x/..", "nul\x00", "", "a/*"):
        with pytest.raises(InvalidInputError):
            store.mail.create_mailbox(u.id, bad)
    store.mail.create_mailbox(u.id, "Projects/2026")
    with pytest.raises(NotFoundError):
        store.mail.rename_mailbox(u.id, "Nope", "Other")
    store.mail.create_mailbox(u.id, "Projects")
    store.mail.rename_mailbox(u.id, "Projects", "Work")
    names = {mb.name for mb in store.mail.list_mailboxes(u.id)}
    assert {"Work", "Work/2026"} <= names and "Projects/2026" not in names


def test_events_query_and_prune(store):  # type: ignore[no-untyped-def]
    store.events.record("admin", action="user.add", actor="cli:root", subject="x@example.test", ts=1000.0)
    store.events.record("admin", action="user.remove", actor="cli:root", subject="x@example.test", ts=2000.0)
    assert [e.action for e in store.events.query(kind="admin", since=1500)] == ["user.remove"]
    assert store.events.prune(1500) == 1
    assert [e.action for e in store.events.query(kind="admin")] == ["user.remove"]


def test_store_check_repairs_lost_index(tmp_path):  # type: ignore[no-untyped-def]
    from sqlalchemy import delete

    from storage import models as m
    from storage.check import check_store

    store = new_store(tmp_path / "inst")
    u = store.create_user("alice@example.test")
    for i in range(3):
        deliver(store, ["alice@example.test"], message(subject=f"kept {i}"))
    with store.write() as c:
        c.execute(delete(m.messages))
    report = check_store(store)
    assert [p.kind for p in report.problems] == ["unindexed"] * 3
    report = check_store(store, repair=True)
    assert report.repaired == 3
    inbox = store.mail.get_mailbox(u.id, "INBOX")
    subjects = sorted(store.mail.meta(u, i)["env"]["subject"] for i in store.mail.messages(inbox.id))
    assert subjects == ["kept 0", "kept 1", "kept 2"]
    assert not check_store(store).problems
    # a damaged file is reported
    info = store.mail.messages(inbox.id)[0]
    path = store.blobs.path(u.uuid, info.blob_id)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [p.kind for p in check_store(store).problems] == ["damaged"]
    store.close()
