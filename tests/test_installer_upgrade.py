"""``appliance upgrade``: from every earlier schema to the newest with the mail intact; a failed migration rolls back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_installer_fixtures import cli

from storage import db

MESSAGE = b"From: bob@remote.example\r\nTo: alice@example.test\r\nSubject: from an old schema\r\n\r\nstill here\r\n"


def revisions() -> list[str]:
    """Every revision in storage/migrations/versions, oldest first."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    return [r.revision for r in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]


def store_at(inst, revision: str) -> None:  # type: ignore[no-untyped-def]
    """The instance's database at ``revision`` with one message delivered to a user.

    The message is delivered by today's store on the newest schema, then the
    schema is taken down to ``revision`` by the migrations' own downgrades:
    today's store cannot write into an older schema (it names newer columns).
    """
    from alembic import command

    from storage.store import Store

    index = inst.path / "index.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    engine = db.make_engine(db.sqlite_url(index))
    db.upgrade(engine)
    engine.dispose()
    store = Store.from_config(inst.config())
    try:
        store.directory.add_domain("example.test")
        user = store.create_user("alice@example.test", password="a long password 1")
        store.append(user, "INBOX", MESSAGE, flags=("\\Seen",))
    finally:
        store.close()
    engine = db.make_engine(db.sqlite_url(index))
    try:
        if revision != revisions()[-1]:
            command.downgrade(db.alembic_config(engine), revision)
        assert db.current_revision(engine) == revision
    finally:
        engine.dispose()


def read_inbox(inst) -> list[tuple[bytes, list[str]]]:  # type: ignore[no-untyped-def]
    store = inst.store()
    try:
        user = store.directory.get_user("alice@example.test")
        mb = store.mail.get_mailbox(user.id, "INBOX")
        return [(store.mail.read(user, m), sorted(m.flags)) for m in store.mail.messages(mb.id)]
    finally:
        store.close()


def test_there_are_revisions() -> None:
    revs = revisions()
    assert revs and revs[0] == "0001"


@pytest.mark.parametrize("revision", revisions())
def test_upgrade_from_every_released_schema_keeps_the_mail(make_instance, revision: str) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance(demo=False)
    store_at(inst, revision)
    head = revisions()[-1]
    rc, out, err = cli("-c", str(inst.config_path), "upgrade")
    assert rc == 0, err
    if revision == head:
        assert f"up to date ({head}); nothing to do" in out
    else:
        assert f"database schema migrated from {revision} to {head}" in out
        assert "restart" in out
        backup = Path(out.split("backup of the database: ")[1].split("\n")[0])
        assert backup.parent == inst.path / "backups" and oct(backup.stat().st_mode)[-3:] == "600"
        with sqlite3.connect(backup) as old:
            assert old.execute("SELECT version_num FROM alembic_version").fetchone() == (revision,)
    engine = db.make_engine(db.sqlite_url(inst.path / "index.sqlite3"))
    assert db.current_revision(engine) == head
    engine.dispose()
    assert read_inbox(inst) == [(MESSAGE, ["\\Seen"])]


def test_failed_migration_restores_the_database(make_instance, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from installer import upgrade

    inst = make_instance(demo=False)
    store_at(inst, revisions()[-1])
    url = db.sqlite_url(inst.path / "index.sqlite3")

    def broken_migration(engine) -> None:  # type: ignore[no-untyped-def]
        with engine.begin() as c:  # half done: a table gone, then a failure
            c.exec_driver_sql("PRAGMA foreign_keys=OFF")
            c.exec_driver_sql("DROP TABLE messages")
        raise RuntimeError("column x already exists")

    monkeypatch.setattr(db, "head_revision", lambda engine: "9999")
    with pytest.raises(upgrade.UpgradeError) as info:
        upgrade.migrate(url, inst.path / "backups", run=broken_migration)
    message = str(info.value)
    assert "the migration from" in message and "RuntimeError: column x already exists" in message
    assert "restored from" in message and "keeps working" in message
    monkeypatch.undo()
    engine = db.make_engine(url)
    assert db.current_revision(engine) == revisions()[-1]
    engine.dispose()
    assert read_inbox(inst) == [(MESSAGE, ["\\Seen"])]


def test_cli_upgrade_failure_is_one_line_and_nonzero(make_instance, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance(demo=False)
    store_at(inst, revisions()[-1])
    monkeypatch.setattr(db, "head_revision", lambda engine: "9999")

    def fail(engine, revision="head") -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(db, "upgrade", fail)
    rc, out, err = cli("-c", str(inst.config_path), "upgrade")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "RuntimeError: boom" in err and "restored" in err
    monkeypatch.undo()
    assert read_inbox(inst) == [(MESSAGE, ["\\Seen"])]


def test_old_backups_are_pruned(tmp_path: Path) -> None:
    from installer.upgrade import KEEP_BACKUPS, backup_database

    engine = db.make_engine(db.sqlite_url(tmp_path / "i.sqlite3"))
    db.upgrade(engine)
    engine.dispose()
    for _ in range(KEEP_BACKUPS + 3):
        backup_database(db.sqlite_url(tmp_path / "i.sqlite3"), tmp_path / "b", "x")
    assert len(list((tmp_path / "b").iterdir())) == KEEP_BACKUPS
