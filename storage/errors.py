"""Errors raised by the store.

Every error's ``str()`` is a one-line message meant for a human (log line, CLI
output, panel banner); callers map the classes to protocol replies.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error."""


class CryptoError(StoreError):
    """Decryption or authentication failed, or a key is unusable."""


class KeyMissingError(CryptoError):
    """The account's data key is absent: it was destroyed (crypto-erase) or never created."""

    def __init__(self, account_uuid: str, detail: str = "its key was destroyed") -> None:
        self.account_uuid = account_uuid
        super().__init__(f"mail of account {account_uuid} cannot be read: {detail}")


class BlobCorruptError(CryptoError):
    """A message file is tampered, truncated, extended, swapped or moved; names the file and chunk."""

    def __init__(self, path: object, where: str, detail: str) -> None:
        self.path = str(path)
        self.where = where
        super().__init__(f"message file {self.path} is corrupt at {where}: {detail}")


class NotFoundError(StoreError):
    """The requested object does not exist."""


class ConflictError(StoreError):
    """The object already exists or was changed concurrently."""


class QuotaExceededError(StoreError):
    """Storing this would exceed the account's quota."""


class InvalidInputError(StoreError):
    """A caller passed a malformed argument (bad id, bad range, unserialisable metadata)."""
