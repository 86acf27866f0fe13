"""``appliance store check [--repair]``: the files are the truth.

Verifies that every message file decrypts and authenticates, that every
index row has its file and every file has its row. With ``repair``, files
missing from the index are indexed again (into the mailbox named in the
file's sealed metadata, created if needed), rows whose file is gone or
damaged are dropped, and usage counters are recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from . import models as m
from .errors import CryptoError, StoreError
from .flags import split_flags
from .ingest import index_message, summarise
from .mime import scan

if TYPE_CHECKING:
    from .store import Store


@dataclass
class Problem:
    kind: str  # damaged, missing_file, unindexed, no_key
    account: str
    blob_id: str | None
    detail: str


@dataclass
class CheckReport:
    accounts: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: int = 0


def check_store(store: Store, *, repair: bool = False) -> CheckReport:
    report = CheckReport()
    store.recover()
    with store.read() as c:
        users = c.execute(select(m.users.c.id, m.users.c.uuid, m.users.c.email)).all()
    for user in users:
        report.accounts += 1
        with store.read() as c:
            rows = c.execute(
                select(m.messages.c.id, m.messages.c.blob_id, m.messages.c.size, m.mailboxes.c.id.label("mbid"))
                .join(m.mailboxes, m.mailboxes.c.id == m.messages.c.mailbox_id)
                .where(m.mailboxes.c.user_id == user.id)
            ).all()
        indexed: dict[str, list] = {}
        for r in rows:
            indexed.setdefault(r.blob_id, []).append(r)
        on_disk = set(store.blobs.iter_blob_ids(user.uuid))
        bad_rows: list[int] = []
        if not store.keyring.has(user.uuid):
            report.problems.append(Problem("no_key", user.uuid, None, f"{user.email}: the account key is missing; its mail cannot be read"))
            continue
        for blob_id in sorted(on_disk):
            report.files += 1
            try:
                with store.blobs.open(user.uuid, blob_id) as reader:
                    size = 0
                    for chunk in reader.iter_chunks():
                        size += len(chunk)
                    meta = reader.meta
            except (CryptoError, StoreError) as exc:
                report.problems.append(Problem("damaged", user.uuid, blob_id, f"{user.email}: {exc}"))
                bad_rows += [r.id for r in indexed.get(blob_id, [])]
                continue
            if blob_id not in indexed:
                report.problems.append(Problem("unindexed", user.uuid, blob_id, f"{user.email}: message file {blob_id} is not in the index"))
                if repair:
                    _reindex(store, user, blob_id, meta)
                    report.repaired += 1
            else:
                for r in indexed[blob_id]:
                    if r.size != size:
                        report.problems.append(Problem("size_mismatch", user.uuid, blob_id, f"{user.email}: index says {r.size} bytes, file has {size}"))
        for blob_id, rs in indexed.items():
            if blob_id not in on_disk:
                report.problems.append(Problem("missing_file", user.uuid, blob_id, f"{user.email}: message {blob_id} is indexed but its file is gone"))
                bad_rows += [r.id for r in rs]
        if repair and bad_rows:
            with store.write() as c:
                dead = {r.blob_id for rs in indexed.values() for r in rs if r.id in set(bad_rows)}
                c.execute(delete(m.messages).where(m.messages.c.id.in_(bad_rows)))
                c.execute(delete(m.blobs).where(m.blobs.c.blob_id.in_(dead)))
            report.repaired += len({p.blob_id for p in report.problems if p.account == user.uuid and p.kind in ("damaged", "missing_file")})
        if repair:
            store.mail.recount_usage(user.id)
    return report


def _reindex(store: Store, user, blob_id: str, meta: dict) -> None:  # type: ignore[no-untyped-def]
    with store.blobs.open(user.uuid, blob_id) as reader:
        raw = reader.read_all()
    mailbox = str(meta.get("mailbox") or "INBOX")
    try:
        mb = store.mail.get_mailbox(user.id, mailbox)
    except StoreError:
        mb = store.mail.create_mailbox(user.id, mailbox)
    try:
        mask, keywords = split_flags(meta.get("flags") or ())
    except ValueError:
        mask, keywords = 0, ()
    info = scan(raw, max_depth=store.max_mime_depth)
    meta_json = json.dumps(info, separators=(",", ":")).encode()
    summary_json = json.dumps(summarise(info), separators=(",", ":")).encode()
    with store.write() as c:
        c.execute(delete(m.blobs).where(m.blobs.c.blob_id == blob_id))
        index_message(store, c, user, mb.id, blob_id, len(raw), float(meta.get("internaldate") or 0), mask, keywords,
                      meta_json, summary_json)
    store.notify(mb.id)
