"""A user's data as a standard archive: the mail as a Maildir++ tree in a zip, and the sign-in history.

``iter_export(store, email)`` yields the zip in pieces as it is made (for a
streamed HTTP download; nothing is held in memory but one message chunk);
``write_export(store, email, file)`` writes it to a file. Blocking: run in a
thread. The archive holds:

- ``Maildir/`` in Maildir++ layout: INBOX is ``Maildir/cur``, a folder
  ``A/B`` is ``Maildir/.A.B/cur`` (a "." or "%" inside a name is written
  ``%2E``/``%25``). Every message is in ``cur/`` named
  ``<internal date>.M<uid>U<uidvalidity>.export,S=<size>:2,<flags>`` with the
  standard info letters (D draft, F flagged, P passed = $Forwarded, R replied,
  S seen, T trashed = deleted) and Dovecot keyword letters (a-z, listed in
  each folder's ``dovecot-keywords``). ``Maildir/subscriptions`` lists the
  subscribed folders. The bytes of each message are exactly the stored ones.
- ``manifest.json``: each folder's IMAP name, special use, UIDVALIDITY, and
  per message its file, UID, flags and internal date.
- ``signins.csv`` and ``signins.json``: the account's sign-in history.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Mailbox, MessageInfo
    from .store import Store

INFO_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
HISTORY_LIMIT = 100_000


class _Sink:
    """A write-only, non-seekable file for ZipFile that hands its bytes to the generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def write(self, b: bytes) -> int:
        self.parts.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def folder_dir(name: str) -> str:
    """The Maildir++ directory of an IMAP mailbox name (INBOX is the root)."""
    if name == "INBOX":
        return "Maildir"
    parts = [p.replace("%", "%25").replace(".", "%2E") for p in name.split("/")]
    return "Maildir/." + ".".join(parts)


def info_flags(flags: frozenset[str], keywords: dict[str, str]) -> str:
    letters = {INFO_LETTERS[f] for f in flags if f in INFO_LETTERS}
    letters |= {keywords[f] for f in flags if f in keywords}
    return "".join(sorted(letters))


def _zip_time(ts: float) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(max(ts, 315532800 + 86400))  # zip dates start in 1980
    return (max(t.tm_year, 1980), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _dir_entry(zf: zipfile.ZipFile, path: str) -> None:
    info = zipfile.ZipInfo(path.rstrip("/") + "/", _zip_time(time.time()))
    info.external_attr = (0o40755 << 16) | 0x10
    zf.writestr(info, b"")


def _file_entry(zf: zipfile.ZipFile, path: str, data: bytes, ts: float | None = None) -> None:
    info = zipfile.ZipInfo(path, _zip_time(ts or time.time()))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100600 << 16
    zf.writestr(info, data)


def history_rows(store: Store, email: str) -> list[dict[str, Any]]:
    events = store.events.query(kind="login", user=email, limit=HISTORY_LIMIT)
    return [{"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.ts)), "ts": e.ts, "protocol": e.protocol or "",
             "ip": e.ip or "", "client": e.client or "", "result": e.result} for e in events]


def history_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["time", "protocol", "ip", "client", "result"])
    for r in rows:
        w.writerow([r["time"], r["protocol"], r["ip"], _cell(r["client"]), r["result"]])
    return buf.getvalue()


def _cell(v: str) -> str:
    return "'" + v if v[:1] in ("=", "+", "-", "@", "\t", "\r") else v


def iter_export(store: Store, email: str) -> Iterator[bytes]:
    user = store.directory.get_user(email)
    sink = _Sink()
    manifest: dict[str, Any] = {"account": user.email, "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "format": "maildir++", "folders": []}
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:  # type: ignore[arg-type]
        mailboxes: list[Mailbox] = store.mail.list_mailboxes(user.id)
        subscribed = []
        for mb in mailboxes:
            base = folder_dir(mb.name)
            for sub in ("cur", "new", "tmp"):
                _dir_entry(zf, f"{base}/{sub}")
            if mb.name != "INBOX":
                _file_entry(zf, f"{base}/maildirfolder", b"")
            if mb.subscribed and mb.name != "INBOX":
                subscribed.append(base[len("Maildir/."):])
            msgs: list[MessageInfo] = store.mail.messages(mb.id)
            keywords: dict[str, str] = {}
            for kw in sorted({f for msg in msgs for f in msg.flags if not f.startswith("\\") and f not in INFO_LETTERS}):
                if len(keywords) < len(KEYWORD_LETTERS):
                    keywords[kw] = KEYWORD_LETTERS[len(keywords)]
            if keywords:
                _file_entry(zf, f"{base}/dovecot-keywords",
                            "".join(f"{i} {kw}\n" for i, kw in enumerate(keywords)).encode())
            entry: dict[str, Any] = {"name": mb.name, "dir": base, "special_use": mb.special_use, "uidvalidity": mb.uidvalidity,
                                     "uidnext": mb.uidnext, "subscribed": mb.subscribed, "messages": []}
            yield sink.take()
            for msg in msgs:
                fname = f"{int(msg.internal_date)}.M{msg.uid}U{mb.uidvalidity}.export,S={msg.size}:2,{info_flags(msg.flags, keywords)}"
                path = f"{base}/cur/{fname}"
                info = zipfile.ZipInfo(path, _zip_time(msg.internal_date))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o100600 << 16
                with store.mail.open_blob(user, msg) as reader, zf.open(info, "w") as out:
                    for chunk in reader.iter_chunks():
                        out.write(chunk)
                        if sink.pos and len(sink.parts) > 16:
                            yield sink.take()
                entry["messages"].append({"file": f"cur/{fname}", "uid": msg.uid, "size": msg.size,
                                          "internal_date": msg.internal_date, "flags": sorted(msg.flags)})
                yield sink.take()
            manifest["folders"].append(entry)
        _file_entry(zf, "Maildir/subscriptions", "".join(s + "\n" for s in subscribed).encode())
        rows = history_rows(store, user.email)
        _file_entry(zf, "signins.csv", ("\ufeff" + history_csv(rows)).encode())
        _file_entry(zf, "signins.json", json.dumps(rows, ensure_ascii=False, indent=1).encode())
        _file_entry(zf, "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1).encode())
    yield sink.take()


def write_export(store: Store, email: str, out: IO[bytes]) -> int:
    """Write the archive to ``out``; returns its size in bytes."""
    n = 0
    for part in iter_export(store, email):
        out.write(part)
        n += len(part)
    return n
