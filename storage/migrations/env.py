"""Alembic environment: runs on the engine handed over by storage.db."""

from alembic import context
from sqlalchemy import create_engine

from storage.models import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # SQLite changes a table's columns by copying it and dropping the old one ("batch"
        # mode); with foreign keys on, that drop would cascade and delete every dependent row
        # (a user's mailboxes and messages). The pragma only takes effect outside a transaction,
        # and storage.db's engine begins one before any statement: so on the DBAPI connection.
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left {len(broken)} rows pointing at missing rows, e.g. {broken[0]}")
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
