"""Tagged replies of handlers and the mapping of store errors to IMAP response codes."""

from __future__ import annotations

import logging

from storage.errors import (
    ConflictError,
    CryptoError,
    InvalidInputError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
)

log = logging.getLogger("imapd")


class Reply(Exception):
    """A handler's tagged NO (or BAD) with its text: ``raise Reply(b"NO [TRYCREATE] ...")``."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text


def store_error(exc: StoreError, *, missing: bytes = b"NONEXISTENT") -> bytes:
    text = str(exc).encode("utf-8", "replace")[:300].replace(b"\r", b" ").replace(b"\n", b" ")
    if isinstance(exc, NotFoundError):
        return b"NO [" + missing + b"] " + text
    if isinstance(exc, ConflictError):
        return b"NO [ALREADYEXISTS] " + text
    if isinstance(exc, QuotaExceededError):
        low = text.lower()
        code = b"LIMIT" if b"too many" in low else b"TOOBIG" if b"too large" in low else b"OVERQUOTA"
        return b"NO [" + code + b"] " + text
    if isinstance(exc, InvalidInputError):
        return b"NO [CANNOT] " + text
    if isinstance(exc, CryptoError):
        log.error("store: %s", exc)
        return b"NO [SERVERBUG] The message cannot be read; the administrator has been told"
    return b"NO [SERVERBUG] " + text
