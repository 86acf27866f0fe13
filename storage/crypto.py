"""Master key, per-account data keys and small sealed records.

Key hierarchy (see DESIGN.md "The store: contracts"):

* the instance master key (32 random bytes in a 0600 file) never encrypts data
  directly; HKDF derives a wrapping key and HMAC keys from it;
* each account has its own random 32-byte data key, stored wrapped
  (AES-256-GCM, AAD = account uuid) in ``keys_dir/accounts/<uuid>.key``;
  destroying that file is the crypto-erase of the account: its message files,
  wherever copied (backups included), become unreadable;
* message files and sealed index records use keys derived from the data key.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.errors import ConflictError, CryptoError, InvalidInputError, KeyMissingError

__all__ = [
    "KEY_SIZE",
    "Keyring",
    "check_account_uuid",
    "fsync_dir",
    "generate_master_key",
    "hkdf",
    "hmac_key",
    "load_master_key",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

_KEYFILE_VERSION = 1
_KEYFILE_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_SEAL_VERSION = 1
_SEAL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE

_UUID_RE = re.compile(r"[0-9a-f]{32}")


def check_account_uuid(account_uuid: str) -> str:
    """Reject anything but 32 lowercase hex chars: the uuid becomes a path component and AAD."""
    if not isinstance(account_uuid, str) or not _UUID_RE.fullmatch(account_uuid):
        raise InvalidInputError(
            f"invalid account uuid {account_uuid!r}: expected 32 lowercase hex characters"
        )
    return account_uuid


def hkdf(key: bytes, info: bytes, salt: bytes | None = None, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256; every derived key in the appliance goes through here with a distinct ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def hmac_key(master_key: bytes, purpose: str) -> bytes:
    """A 32-byte HMAC key for ``purpose`` (e.g. "app-password"), derived so no two uses share a key."""
    if not purpose:
        raise InvalidInputError("hmac_key purpose must be a non-empty string")
    return hkdf(master_key, b"appliance hmac v1|" + purpose.encode("utf-8"))


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so a create/rename/unlink in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically create ``path`` with ``data``; never overwrite (FileExistsError).

    Writes a temp file, fsyncs it, then hard-links it into place: unlike
    rename, link fails if the target exists, so two racing creators cannot
    clobber each other's key. The directory is fsynced last.
    """
    tmp = path.with_name(f".{path.name}.tmp.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # umask may have narrowed it; never widened
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(path.parent)


def generate_master_key(path: Path | str) -> None:
    """Create a new master key file (0600). Refuses to overwrite: losing the old key loses all mail."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"master key {path} already exists; refusing to overwrite it")
    _write_new_file(path, secrets.token_bytes(KEY_SIZE))


def load_master_key(path: Path | str) -> bytes:
    """Read and check the master key; every failure says what is wrong and how to fix it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CryptoError(
            f"master key {path} is missing; restore it from your key backup "
            f"(or create one with 'appliance init' on a fresh instance)"
        ) from None
    except PermissionError:
        raise CryptoError("master key {path} cannot be read by this user; check its owner", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise CryptoError("master key {path} is not a regular file", path=path)
    if st.st_mode & 0o077:
        raise CryptoError(
            f"master key {path} is readable or writable by group/others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix with: chmod 600 {path}"
        )
    data = path.read_bytes()
    if len(data) != KEY_SIZE:
        raise CryptoError(
            f"master key {path} has {len(data)} bytes, expected {KEY_SIZE}; "
            f"it is damaged or not a master key: restore it from your key backup"
        )
    return data


class Keyring:
    """Per-account data keys, wrapped by the master key, cached in memory.

    The cache is per process: ``destroy`` in another process is not seen here
    until :meth:`forget` or a restart (callers also delete the account's files
    and index rows, so nothing normally asks for that key again).
    """

    def __init__(self, keys_dir: Path | str, master_key: bytes) -> None:
        if len(master_key) != KEY_SIZE:
            raise CryptoError("master key must be {KEY_SIZE} bytes, got {size}", KEY_SIZE=KEY_SIZE, size=len(master_key))
        self.keys_dir = Path(keys_dir)
        self._accounts_dir = self.keys_dir / "accounts"
        self._wrap = AESGCM(hkdf(master_key, b"appliance keyring v1"))
        self._keys: dict[str, bytes] = {}
        self._sealers: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------

    def _key_path(self, account_uuid: str) -> Path:
        return self._accounts_dir / f"{check_account_uuid(account_uuid)}.key"

    def _ensure_dir(self) -> None:
        for d in (self.keys_dir, self._accounts_dir):
            if not d.is_dir():
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsync_dir(d.parent)

    # -- data keys -----------------------------------------------------------

    def create(self, account_uuid: str) -> None:
        """Generate and store a new data key; ConflictError if the account already has one."""
        path = self._key_path(account_uuid)
        self._ensure_dir()
        key = secrets.token_bytes(KEY_SIZE)
        nonce = secrets.token_bytes(NONCE_SIZE)
        blob = bytes([_KEYFILE_VERSION]) + nonce + self._wrap.encrypt(nonce, key, account_uuid.encode())
        try:
            _write_new_file(path, blob)
        except FileExistsError:
            raise ConflictError("account {account_uuid} already has a data key", account_uuid=account_uuid) from None
        with self._lock:
            self._keys[account_uuid] = key

    def get(self, account_uuid: str) -> bytes:
        """The account's data key (cached); KeyMissingError if it was destroyed or never created."""
        key = self._keys.get(account_uuid)
        if key is not None:
            return key
        path = self._key_path(account_uuid)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise KeyMissingError(account_uuid) from None
        if len(blob) != _KEYFILE_SIZE or blob[0] != _KEYFILE_VERSION:
            raise CryptoError("key file {path} is damaged (bad size or version); restore it from a backup", path=path)
        try:
            key = self._wrap.decrypt(blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], account_uuid.encode())
        except InvalidTag:
            raise CryptoError(
                f"key file {path} cannot be unwrapped: wrong master key, tampered file, "
                f"or a key file copied from another account"
            ) from None
        with self._lock:
            self._keys[account_uuid] = key
        return key

    def has(self, account_uuid: str) -> bool:
        """True if the account's key file exists (checks the disk, not only the cache)."""
        return self._key_path(account_uuid).exists()

    def forget(self, account_uuid: str) -> None:
        """Drop cached key material for the account (e.g. after another process destroyed it)."""
        with self._lock:
            self._keys.pop(account_uuid, None)
            self._sealers.pop(account_uuid, None)

    def destroy(self, account_uuid: str) -> None:
        """Crypto-erase: overwrite the key file with random bytes, fsync, unlink, fsync dir. Idempotent.

        The overwrite is best effort on SSDs and copy-on-write filesystems; the
        guarantee is that no file readable by the appliance holds the key.
        """
        path = self._key_path(account_uuid)
        self.forget(account_uuid)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            size = max(os.fstat(fd).st_size, _KEYFILE_SIZE)
            os.pwrite(fd, secrets.token_bytes(size), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        fsync_dir(path.parent)

    def account_uuids(self) -> list[str]:
        """Uuids of all accounts that have a key file, sorted."""
        try:
            names = os.listdir(self._accounts_dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-4] for n in names if n.endswith(".key") and _UUID_RE.fullmatch(n[:-4]))

    # -- sealed records ------------------------------------------------------

    def _sealer(self, account_uuid: str) -> AESGCM:
        aead = self._sealers.get(account_uuid)
        if aead is None:
            aead = AESGCM(hkdf(self.get(account_uuid), b"appliance seal v1"))
            with self._lock:
                self._sealers[account_uuid] = aead
        return aead

    def seal(self, account_uuid: str, data: bytes, context: bytes) -> bytes:
        """Encrypt a small record; ``context`` (e.g. b"msgmeta|<mailbox id>|<uid>") binds it to its place.

        Output: version byte + 12-byte random nonce + ciphertext + tag (29 bytes overhead).
        """
        nonce = os.urandom(NONCE_SIZE)
        return b"\x01" + nonce + self._sealer(account_uuid).encrypt(nonce, data, context)

    def open(self, account_uuid: str, sealed: bytes, context: bytes) -> bytes:
        """Decrypt a record from :meth:`seal`; CryptoError if tampered or ``context`` differs."""
        aead = self._sealers.get(account_uuid) or self._sealer(account_uuid)
        if len(sealed) < _SEAL_OVERHEAD or sealed[0] != _SEAL_VERSION:
            raise CryptoError("sealed record of account {account_uuid} is malformed (bad length or version)", account_uuid=account_uuid)
        try:
            return aead.decrypt(sealed[1:13], sealed[13:], context)
        except InvalidTag:
            raise CryptoError(
                f"sealed record of account {account_uuid} failed authentication "
                f"(tampered, or stored under another context)"
            ) from None
