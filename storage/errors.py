"""Errors raised by the store.

Every error's ``str()`` is a one-line message meant for a human (log line, CLI
output, panel banner); callers map the classes to protocol replies.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error.

    Raised as ``NotFoundError("no such user: {email}", email=e)``: the
    English template and its values are kept apart (``template``,
    ``params``) so the CLI and the panel can show the message translated;
    ``str()`` is the English text.
    """

    def __init__(self, message: str = "", /, **params: object) -> None:
        self.template = message
        self.params = params
        super().__init__(message.format(**params) if params else message)


class CryptoError(StoreError):
    """Decryption or authentication failed, or a key is unusable."""


class KeyMissingError(CryptoError):
    """The account's data key is absent: it was destroyed (crypto-erase) or never created."""

    def __init__(self, account_uuid: str, detail: str = "its key was destroyed") -> None:
        self.account_uuid = account_uuid
        super().__init__("mail of account {account} cannot be read: {detail}", account=account_uuid, detail=detail)


class BlobCorruptError(CryptoError):
    """A message file is tampered, truncated, extended, swapped or moved; names the file and chunk."""

    def __init__(self, path: object, where: str, detail: str) -> None:
        self.path = str(path)
        self.where = where
        super().__init__("message file {path} is corrupt at {where}: {detail}", path=self.path, where=where, detail=detail)


class NotFoundError(StoreError):
    """The requested object does not exist."""


class ConflictError(StoreError):
    """The object already exists or was changed concurrently."""


class QuotaExceededError(StoreError):
    """Storing this would exceed the account's quota."""


class InvalidInputError(StoreError):
    """A caller passed a malformed argument (bad id, bad range, unserialisable metadata)."""
