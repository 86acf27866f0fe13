"""``appliance upgrade``: back up the database, run the migrations, restore on failure.

SQLite is copied with its online backup API (a consistent copy while the
services keep running); PostgreSQL with ``pg_dump``. If a migration fails
the backup is put back, so the version that runs now keeps working; the
error says so. Backups go to ``<data_dir>/backups``; the newest KEEP_BACKUPS stay.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.i18n import _

KEEP_BACKUPS = 5


class UpgradeError(Exception):
    """One line for the operator."""


@dataclass
class UpgradeResult:
    old: str | None
    new: str | None
    backup: Path | None

    @property
    def changed(self) -> bool:
        return self.old != self.new


def database_url(cfg: Any) -> str:
    from storage import db

    return cfg.storage.database_url or db.sqlite_url(Path(cfg.instance.data_dir) / "index.sqlite3")


def _sqlite_file(url: str) -> Path:
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


def _pg_url(url: str) -> str:
    """libpq understands postgresql://, not SQLAlchemy's postgresql+psycopg://."""
    scheme, sep, rest = url.partition("://")
    return "postgresql://" + rest if sep else url


def backup_database(url: str, directory: Path, label: str) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    if url.startswith("sqlite"):
        dest = directory / f"index-{label}-{stamp}.sqlite3"
        src = sqlite3.connect(_sqlite_file(url))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
    else:
        if not shutil.which("pg_dump"):
            raise UpgradeError(_("pg_dump is not installed; install postgresql-client, then run the upgrade again"))
        dest = directory / f"index-{label}-{stamp}.pgdump"
        r = subprocess.run(["pg_dump", "--format=custom", f"--file={dest}", _pg_url(url)],
                           capture_output=True, text=True, timeout=3600, check=False)
        if r.returncode != 0:
            raise UpgradeError(_("pg_dump failed: {error}").format(error=(r.stderr.strip().splitlines() or ["?"])[-1]))
        os.chmod(dest, 0o600)
    _prune(directory)
    return dest


def _prune(directory: Path) -> None:
    backups = sorted(directory.glob("index-*"), key=lambda p: p.stat().st_mtime)
    for old in backups[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)


def restore_database(url: str, backup: Path) -> None:
    if url.startswith("sqlite"):
        src = sqlite3.connect(backup)
        dst = sqlite3.connect(_sqlite_file(url))
        try:
            src.backup(dst)  # replaces every page of the live file, with the services still attached
        finally:
            dst.close()
            src.close()
        return
    r = subprocess.run(["pg_restore", "--clean", "--if-exists", "--single-transaction", f"--dbname={_pg_url(url)}", str(backup)],
                       capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode != 0:
        raise UpgradeError(_("pg_restore failed: {error}").format(error=(r.stderr.strip().splitlines() or ["?"])[-1]))


def migrate(url: str, backup_dir: Path, *, run: Callable[..., None] | None = None) -> UpgradeResult:
    """Bring the schema at ``url`` to the newest revision; back up first, restore if it fails."""
    from storage import db

    engine = db.make_engine(url)
    try:
        if not db.has_schema(engine):
            raise UpgradeError(_("the database at {url} has no schema; create the instance with 'appliance install' first").format(url=url))
        old, head = db.current_revision(engine), db.head_revision(engine)
        if old == head:
            return UpgradeResult(old, head, None)
        backup = backup_database(url, backup_dir, old or "none")
        try:
            (run or db.upgrade)(engine)
        except Exception as exc:  # noqa: BLE001 - any failure: put the old schema and data back
            engine.dispose()
            try:
                restore_database(url, backup)
            except Exception as again:  # noqa: BLE001
                raise UpgradeError(_("the migration failed ({error}) and restoring {backup} failed too ({again}); "
                                     "stop the services and restore that file by hand").format(
                    error=_one_line(exc), backup=backup, again=_one_line(again))) from None
            raise UpgradeError(_("the migration from {old} to {new} failed ({error}); the database was restored from {backup} "
                                 "and the running version keeps working").format(
                old=old, new=head, error=_one_line(exc), backup=backup)) from None
        return UpgradeResult(old, db.current_revision(engine), backup)
    finally:
        engine.dispose()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def restart_hint() -> str:
    if Path("/run/systemd/system").is_dir():
        return _("restart the services to run the new version: systemctl restart appliance.target")
    return _("restart 'appliance up' to run the new version")
