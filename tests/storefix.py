"""Helpers for tests that use the store directly (no running server)."""

from __future__ import annotations

from pathlib import Path

from storage.crypto import generate_master_key
from storage.passwords import Passwords
from storage.store import Store

FAST = {"time_cost": 1, "memory_cost_kib": 8192, "parallelism": 1}


def new_store(root: Path, *, fsync: bool = True, domain: str = "example.test") -> Store:
    root.mkdir(parents=True, exist_ok=True)
    key = root / "keys" / "master.key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        generate_master_key(key)
    store = Store(
        database_url=f"sqlite:///{root}/index.sqlite3",
        mail_dir=root / "mail",
        keys_dir=root / "keys",
        master_key_file=key,
        fsync=fsync,
        passwords=Passwords(**FAST),
        create_schema=True,
    )
    if domain and not store.directory.is_local_domain(domain):
        store.directory.add_domain(domain)
    return store


def open_store(root: Path) -> Store:
    return Store(
        database_url=f"sqlite:///{root}/index.sqlite3",
        mail_dir=root / "mail",
        keys_dir=root / "keys",
        master_key_file=root / "keys" / "master.key",
        passwords=Passwords(**FAST),
    )


def message(subject: str = "hello", body: str = "body", sender: str = "bob@remote.example", to: str = "alice@example.test") -> bytes:
    return (
        f"From: Bob <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{abs(hash(subject + body))}@remote.example>\r\n\r\n{body}\r\n"
    ).encode()
