"""Rejected spam kept for review, encrypted at rest, for a number of days.

Each held message is two files in ``<data_dir>/spam/quarantine/``:
``ID.meta`` (sender, recipients, subject, score, reason, times) and
``ID.msg`` (the raw message), both sealed with the keyring (AES-256-GCM)
under a system account that has its own data key wrapped by the master key,
and bound to their ID, so a file cannot be swapped for another. Nothing is
readable without the master key; deleting a file (or the quarantine key)
erases it.

``release`` delivers the message to its original recipients through the
store's one ingest path, then deletes it; ``purge`` drops expired ones (the
antispam service runs it every hour).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from storage.errors import ConflictError, NotFoundError

#: the keyring "account" whose data key seals the quarantine (not a user)
QUARANTINE_ACCOUNT = hashlib.sha256(b"appliance antispam quarantine").hexdigest()[:32]
_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{8}")


@dataclass(frozen=True)
class Held:
    id: str
    held_at: float
    expires: float
    sender: str
    recipients: tuple[str, ...]
    subject: str
    score: float | None
    reason: str
    size: int
    queue_id: str | None = None
    ip: str | None = None
    symbols: tuple[tuple[str, float], ...] = ()  # rspamd's symbols and their scores, strongest first


class QuarantineError(Exception):
    pass


class Quarantine:
    def __init__(self, store: Any, directory: Path) -> None:
        self.store = store
        self.dir = Path(directory)

    # -- keys and files ----------------------------------------------------

    def _ensure_key(self) -> None:
        kr = self.store.keyring
        if not kr.has(QUARANTINE_ACCOUNT):
            try:
                kr.create(QUARANTINE_ACCOUNT)
            except ConflictError:
                pass  # another process made it first

    def _seal(self, qid: str, part: str, data: bytes) -> bytes:
        return self.store.keyring.seal(QUARANTINE_ACCOUNT, data, f"quarantine|{qid}|{part}".encode())

    def _open(self, qid: str, part: str, data: bytes) -> bytes:
        return self.store.keyring.open(QUARANTINE_ACCOUNT, data, f"quarantine|{qid}|{part}".encode())

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def check_id(qid: str) -> str:
        if not isinstance(qid, str) or not _ID.fullmatch(qid):
            raise NotFoundError("no such quarantined message: {id}", id=str(qid)[:40])
        return qid

    # -- operations --------------------------------------------------------

    def hold(self, raw: bytes, *, sender: str, recipients: list[str], days: int, score: float | None = None,
             reason: str = "", queue_id: str | None = None, ip: str | None = None, now: float | None = None,
             symbols: list[tuple[str, float]] | tuple[tuple[str, float], ...] = ()) -> str:
        """Keep ``raw`` for ``days`` days; returns its ID. Blocking."""
        now = time.time() if now is None else now
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ensure_key()
        qid = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(4)
        meta = {"id": qid, "held_at": now, "expires": now + days * 86400, "sender": sender,
                "recipients": list(recipients), "subject": _subject(raw), "score": score, "reason": reason,
                "size": len(raw), "queue_id": queue_id, "ip": ip,
                "symbols": [[str(n)[:100], float(v)] for n, v in list(symbols)[:60]]}
        self._write(self.dir / f"{qid}.msg", self._seal(qid, "msg", raw))
        self._write(self.dir / f"{qid}.meta", self._seal(qid, "meta", json.dumps(meta).encode()))
        return qid

    def get(self, qid: str) -> Held:
        qid = self.check_id(qid)
        try:
            sealed = (self.dir / f"{qid}.meta").read_bytes()
        except FileNotFoundError:
            raise NotFoundError("no such quarantined message: {id}", id=qid) from None
        d = json.loads(self._open(qid, "meta", sealed))
        return Held(id=qid, held_at=d["held_at"], expires=d["expires"], sender=d["sender"],
                    recipients=tuple(d["recipients"]), subject=d.get("subject", ""), score=d.get("score"),
                    reason=d.get("reason", ""), size=d.get("size", 0), queue_id=d.get("queue_id"), ip=d.get("ip"),
                    symbols=tuple((str(n), float(v)) for n, v in d.get("symbols") or ()))

    def read(self, qid: str) -> bytes:
        qid = self.check_id(qid)
        try:
            return self._open(qid, "msg", (self.dir / f"{qid}.msg").read_bytes())
        except FileNotFoundError:
            raise NotFoundError("no such quarantined message: {id}", id=qid) from None

    def list(self) -> list[Held]:
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.meta")):
            if _ID.fullmatch(path.stem):
                try:
                    out.append(self.get(path.stem))
                except (NotFoundError, ValueError):
                    continue
        return out

    def delete(self, qid: str) -> None:
        qid = self.check_id(qid)
        if not (self.dir / f"{qid}.meta").exists():
            raise NotFoundError("no such quarantined message: {id}", id=qid)
        for suffix in ("msg", "meta"):
            (self.dir / f"{qid}.{suffix}").unlink(missing_ok=True)

    def release(self, qid: str) -> tuple[list[str], dict[str, str]]:
        """Deliver to the original recipients' INBOX and delete; (delivered, {address: why not})."""
        held = self.get(qid)
        raw = self.read(qid)
        stamp = f"X-Quarantine-Released: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())} ({qid})\r\n"
        delivery = self.store.begin_delivery(held.sender, source="quarantine")
        failed: dict[str, str] = {}
        for rcpt in held.recipients:
            try:
                delivery.add_recipient(rcpt)
            except Exception as exc:  # noqa: BLE001 - a removed or disabled account: say so, deliver the rest
                failed[rcpt] = str(exc)
        if not delivery.recipients:
            delivery.abort()
            return [], failed
        delivery.write(stamp.encode() + raw)
        report = delivery.commit()
        for email, exc in getattr(report, "failed", {}).items():
            failed[str(email)] = str(exc)
        delivered = [r for r in delivery.recipients if r not in failed]
        self.delete(qid)
        return delivered, failed

    def purge(self, now: float | None = None) -> int:
        """Delete what has expired (and stray temporary files); how many messages went."""
        now = time.time() if now is None else now
        n = 0
        for held in self.list():
            if held.expires <= now:
                self.delete(held.id)
                n += 1
        if self.dir.is_dir():
            for tmp in self.dir.glob(".*.tmp"):
                if now - tmp.stat().st_mtime > 3600:
                    tmp.unlink(missing_ok=True)
        return n


def _subject(raw: bytes) -> str:
    from email.header import decode_header, make_header

    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    try:
        msg = BytesHeaderParser(policy=compat32).parsebytes(raw[: end if end >= 0 else 65536][:65536])
        value = msg.get("Subject") or ""
        text = str(make_header(decode_header(str(value))))
    except Exception:  # noqa: BLE001 - spam has broken headers
        return ""
    return "".join(ch if ch.isprintable() else " " for ch in text)[:200]
