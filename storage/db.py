"""Database engine and schema migrations.

SQLite (WAL) by default, PostgreSQL when ``storage.database_url`` says so.
Schema changes only through the Alembic migrations in ``storage/migrations``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str, *, durable: bool = True) -> Engine:
    """Create the engine; for SQLite set WAL, foreign keys and a busy timeout.

    ``durable`` makes every commit reach the disk before it returns
    (synchronous=FULL), which the delivery contract needs: the MTA answers
    250 only after the index commit.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            pool_size=20,
            max_overflow=40,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        sync = "FULL" if durable else "NORMAL"

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # Python's sqlite3 opens transactions lazily and never for SELECT;
            # take over so BEGIN IMMEDIATE can be issued for writers.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            # Writers (connections with the "immediate" option) take the lock
            # at BEGIN so two processes never deadlock upgrading a read
            # transaction to a write one; readers never block in WAL mode.
            if conn.get_execution_options().get("immediate"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def has_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("alembic_version")


def fetch_raw(conn, sql: str, params: tuple = ()) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Run a read on the DBAPI cursor, skipping SQLAlchemy's row machinery.

    For the hot paths over 100,000-row mailboxes (FETCH FLAGS, SEARCH) where
    building Row objects costs more than the query. ``sql`` uses ``?``
    placeholders; they are adapted to the driver's paramstyle.
    """
    if conn.dialect.paramstyle not in ("qmark",):
        sql = sql.replace("?", "%s")
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    finally:
        cur.close()
