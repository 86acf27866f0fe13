"""The Alembic migrations and storage/models.py describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage import db
from storage.models import metadata


def test_models_match_migrations(tmp_path):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(tmp_path / "m.sqlite3"))
    db.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == [], f"models.py and the migrations differ; write a new migration: {diff}"


def test_current_is_head_after_upgrade(tmp_path):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(tmp_path / "m.sqlite3"))
    assert not db.has_schema(engine)
    db.upgrade(engine)
    assert db.has_schema(engine)
    assert db.current_revision(engine) == db.head_revision(engine)
    engine.dispose()
