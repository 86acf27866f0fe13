"""The encrypted maildir: one file per message, chunked AES-256-GCM.

File layout::

    header  = b"APMB" | version (1) | chunk-size exponent (1) | salt (16)
              | len(sealed meta) (4, big endian) | sealed meta
    chunk i = AES-GCM(file key, nonce = i (11 bytes BE) | last flag (1),
                      plaintext[i*C:(i+1)*C], aad = header | "|" uuid "|" blob id)

* The per-file key is HKDF(account data key, salt, b"appliance blob v1|uuid|blob_id"),
  so a file copied under another blob id or into another account does not
  decrypt, and crypto-erasing the data key kills every copy.
* The nonce carries the chunk's position and whether it is the last one, so a
  swapped, dropped, appended or truncated chunk fails authentication. The
  writer only emits a chunk once it knows more data follows, so the final
  chunk holds 1..C bytes (0 only for an empty message) and always has the flag.
* Ciphertext chunks are C + 16 bytes at fixed offsets: ``read_range`` decrypts
  only the chunks it needs, and the plaintext size follows from the file size.
* The sealed metadata (nonce = 11 zero bytes | 0x02, never a chunk nonce) lets
  ``store check --repair`` rebuild the index from the files alone.

Directory layout: ``root/<uuid>/tmp/<blob_id>`` while written,
``root/<uuid>/cur/<blob_id[:2]>/<blob_id>`` once published. Plaintext never
reaches the disk, temp files included.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.crypto import TAG_SIZE, Keyring, check_account_uuid, fsync_dir
from storage.errors import BlobCorruptError, InvalidInputError, NotFoundError, StoreError

__all__ = ["BlobReader", "BlobStore", "BlobWriter"]

MAGIC = b"APMB"
VERSION = 1
DEFAULT_CHUNK_EXP = 16  # 64 KiB
MIN_CHUNK_EXP = 10
MAX_CHUNK_EXP = 24
SALT_SIZE = 16
_PREFIX_SIZE = len(MAGIC) + 1 + 1 + SALT_SIZE + 4  # 26
MAX_META_SIZE = 1 << 20
_META_NONCE = bytes(11) + b"\x02"
_BLOB_ID_RE = re.compile(r"[0-9a-f]{32}")
_DIR_MODE = 0o700
_FILE_MODE = 0o600


_WRITE_BUFFER = 256 * 1024  # BlobWriter writes ciphertext in blocks of at least this much (the last one smaller)
_FIRST_READ = 128 * 1024  # BlobReader reads this much at open: small messages need no second read


def _check_blob_id(blob_id: str) -> str:
    if not isinstance(blob_id, str) or not _BLOB_ID_RE.fullmatch(blob_id):
        raise InvalidInputError("invalid blob id {blob_id!r}: expected 32 lowercase hex characters", blob_id=blob_id)
    return blob_id


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _hkdf_sha256_32(key: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) for one 32-byte output block: the same bytes as ``storage.crypto.hkdf``.

    Written out with ``hmac.digest`` because every message opened pays for it:
    about 2 us instead of the ~70 us of building a ``cryptography`` HKDF object.
    """
    prk = hmac.digest(salt or bytes(32), key, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _file_key(data_key: bytes, salt: bytes, account_uuid: str, blob_id: str) -> AESGCM:
    info = b"appliance blob v1|" + account_uuid.encode() + b"|" + blob_id.encode()
    return AESGCM(_hkdf_sha256_32(data_key, salt, info))


def _ids_aad(account_uuid: str, blob_id: str) -> bytes:
    return b"|" + account_uuid.encode() + b"|" + blob_id.encode()


class BlobWriter:
    """Streams one message into ``tmp/``: buffers at most one chunk of plaintext, writes ciphertext.

    ``finish()`` completes the file (and fsyncs it); ``BlobStore.publish`` then
    makes it visible. Leaving the ``with`` block by an exception, or without
    calling ``finish()``, aborts: an unfinished message must never look whole.
    """

    def __init__(
        self,
        path: Path,
        aead: AESGCM,
        header: bytes,
        aad: bytes,
        chunk_size: int,
        fsync: bool,
    ) -> None:
        self.path = path
        self._aead = aead
        self._aad = aad
        self._chunk = chunk_size
        self._fsync = fsync
        self._buf = bytearray()
        self._index = 0
        self._size = 0
        self._state = "open"
        # a plain descriptor and our own buffer: a small message is one write(2), and no file
        # object (whose creation alone costs fstat, ioctl and lseek) is made per message
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        self._out = bytearray(header)

    def _flush_out(self) -> None:
        assert self._fd is not None
        while self._out:
            del self._out[: os.write(self._fd, self._out)]

    def _emit(self, plaintext: bytes | bytearray | memoryview, last: bool) -> None:
        self._out += self._aead.encrypt(_nonce(self._index, last), plaintext, self._aad)
        self._index += 1
        self._size += len(plaintext)
        if len(self._out) >= _WRITE_BUFFER:
            self._flush_out()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append plaintext. A chunk is sealed only once later data proves it is not the last."""
        if self._state != "open":
            raise StoreError("cannot write to {path}: writer is {state}", path=self.path, state=self._state)
        mv = memoryview(data).cast("B")
        n = len(mv)
        if not n:
            return
        c = self._chunk
        pos = 0
        try:
            buf = self._buf
            if buf:
                pos = min(c - len(buf), n)
                buf += mv[:pos]
                if pos == n:
                    return
                self._emit(buf, last=False)  # buffer is full and more data follows
                buf.clear()
            while n - pos > c:
                self._emit(mv[pos : pos + c], last=False)
                pos += c
            buf += mv[pos:]
        except BaseException:
            self.abort()
            raise

    def finish(self) -> int:
        """Seal the final chunk, flush and fsync; returns the plaintext size."""
        if self._state != "open":
            raise StoreError("cannot finish {path}: writer is {state}", path=self.path, state=self._state)
        try:
            self._emit(self._buf, last=True)
            self._buf.clear()
            self._flush_out()
            assert self._fd is not None
            if self._fsync:
                os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        return self._size

    @property
    def size(self) -> int:
        """Plaintext bytes accepted so far."""
        return self._size + len(self._buf)

    def abort(self) -> None:
        """Discard the temp file. Idempotent; harmless after publish (the temp name is gone)."""
        self._state = "aborted"
        self._buf.clear()
        self._out.clear()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._state != "finished":
            self.abort()


class BlobReader:
    """Random-access reader of one message file.

    Opening authenticates the header, decrypts the metadata and the final
    chunk (checking its last-chunk flag), so truncation or extension is
    detected even by callers that only read a prefix.
    """

    def __init__(self, path: Path | str, file: BinaryIO, account_uuid: str, blob_id: str, data_key: bytes) -> None:
        self.path = path  # a str on the fast path of BlobStore.open (pathlib costs more than the decryption)
        self._file = file
        self._fd = file.fileno()
        try:
            self._init(account_uuid, blob_id, data_key)
        except BaseException:
            file.close()
            raise

    def _corrupt(self, where: str, detail: str) -> BlobCorruptError:
        return BlobCorruptError(self.path, where, detail)

    def _init(self, account_uuid: str, blob_id: str, data_key: bytes) -> None:
        file_size = os.fstat(self._fd).st_size
        # one read for header, metadata and (for most messages) the only chunk
        head = os.pread(self._fd, min(file_size, _FIRST_READ), 0)
        prefix = head[:_PREFIX_SIZE]
        if len(prefix) < _PREFIX_SIZE:
            raise self._corrupt("header", f"file is {file_size} bytes, too short for a header")
        if prefix[:4] != MAGIC:
            raise self._corrupt("header", "bad magic: not an encrypted message file")
        if prefix[4] != VERSION:
            raise self._corrupt("header", f"unsupported format version {prefix[4]}")
        exp = prefix[5]
        if not MIN_CHUNK_EXP <= exp <= MAX_CHUNK_EXP:
            raise self._corrupt("header", f"invalid chunk size exponent {exp}")
        salt = prefix[6 : 6 + SALT_SIZE]
        meta_len = int.from_bytes(prefix[6 + SALT_SIZE : _PREFIX_SIZE], "big")
        if not TAG_SIZE <= meta_len <= MAX_META_SIZE or _PREFIX_SIZE + meta_len > file_size:
            raise self._corrupt("header", f"invalid metadata length {meta_len}")
        if _PREFIX_SIZE + meta_len <= len(head):
            sealed_meta = head[_PREFIX_SIZE:_PREFIX_SIZE + meta_len]
        else:
            sealed_meta = os.pread(self._fd, meta_len, _PREFIX_SIZE)
        header = prefix + sealed_meta
        ids = _ids_aad(account_uuid, blob_id)
        self._aead = _file_key(data_key, salt, account_uuid, blob_id)
        try:
            meta_json = self._aead.decrypt(_META_NONCE, sealed_meta, prefix + ids)
        except InvalidTag:
            raise self._corrupt(
                "header/metadata",
                "authentication failed (tampered, or copied from another message or account)",
            ) from None
        try:
            meta = json.loads(meta_json)
        except ValueError:
            raise self._corrupt("header/metadata", "authenticated metadata is not JSON") from None
        self.meta: dict[str, Any] = meta
        self._aad = header + ids
        self.chunk_size = 1 << exp
        self._header_len = len(header)
        ct_chunk = self.chunk_size + TAG_SIZE
        self._ct_chunk = ct_chunk
        body = file_size - self._header_len
        if body < TAG_SIZE:
            raise self._corrupt("chunk 0", "file truncated: no data chunk after the header")
        n = -(-body // ct_chunk)
        last_ct = body - (n - 1) * ct_chunk
        if last_ct < TAG_SIZE or (n > 1 and last_ct == TAG_SIZE):
            raise self._corrupt(f"chunk {n - 1} of {n}", "file truncated mid-chunk or extended")
        self.num_chunks = n
        self._last_ct = last_ct
        self.size = body - n * TAG_SIZE
        last_at = self._offset(n - 1)
        if last_at + last_ct <= len(head):
            last_raw = head[last_at:last_at + last_ct]
        else:
            last_raw = os.pread(self._fd, last_ct, last_at)
        self._last_plain = self._decrypt(n - 1, last_raw)

    def _offset(self, index: int) -> int:
        return self._header_len + index * self._ct_chunk

    def _decrypt(self, index: int, ct: bytes | memoryview) -> bytes:
        last = index == self.num_chunks - 1
        expected = self._last_ct if last else self._ct_chunk
        if len(ct) != expected:
            raise self._corrupt(f"chunk {index} of {self.num_chunks}", "short read: file changed while open")
        try:
            return self._aead.decrypt(_nonce(index, last), ct, self._aad)
        except InvalidTag:
            what = "final chunk" if last else "chunk"
            raise self._corrupt(
                f"chunk {index} of {self.num_chunks}",
                f"authentication failed as {what} (tampered, swapped, truncated or extended)",
            ) from None

    def _read_chunks(self, first: int, last: int) -> list[bytes]:
        """Decrypt chunks first..last (inclusive) with one pread; the final chunk comes from cache."""
        stop = min(last, self.num_chunks - 2)  # last non-final chunk to read from disk
        out: list[bytes] = []
        if first <= stop:
            span = (stop - first + 1) * self._ct_chunk
            raw = memoryview(os.pread(self._fd, span, self._offset(first)))
            if len(raw) != span:
                raise self._corrupt(
                    f"chunk {first} of {self.num_chunks}", "short read: file changed while open"
                )
            step = self._ct_chunk
            for k, i in enumerate(range(first, stop + 1)):
                out.append(self._decrypt(i, raw[k * step : (k + 1) * step]))
        if last == self.num_chunks - 1:
            out.append(self._last_plain)
        return out

    def read_range(self, offset: int, length: int) -> bytes:
        """Plaintext bytes [offset, offset+length), clipped to the size; decrypts only needed chunks."""
        if offset < 0 or length < 0:
            raise InvalidInputError("invalid range offset={offset} length={length}", offset=offset, length=length)
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        c = self.chunk_size
        first, last = offset // c, (end - 1) // c
        data = b"".join(self._read_chunks(first, last))
        base = first * c
        return data[offset - base : end - base]

    def read_all(self) -> bytes:
        """The whole plaintext."""
        return b"".join(self._read_chunks(0, self.num_chunks - 1))

    def iter_chunks(self) -> Iterator[bytes]:
        """Stream the plaintext chunk by chunk (each verified before it is yielded)."""
        for i in range(self.num_chunks):
            yield from self._read_chunks(i, i)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobStore:
    """Encrypted message files of all accounts under ``root``.

    ``fsync=False`` is for tests and bulk imports that fsync some other way;
    the delivery path must use the default, so that a 250 reply means the
    message is on disk.
    """

    def __init__(
        self,
        root: Path | str,
        keyring: Keyring,
        fsync: bool = True,
        chunk_size_exp: int = DEFAULT_CHUNK_EXP,
    ) -> None:
        if not MIN_CHUNK_EXP <= chunk_size_exp <= MAX_CHUNK_EXP:
            raise InvalidInputError("chunk_size_exp must be in {MIN_CHUNK_EXP}..{MAX_CHUNK_EXP}", MIN_CHUNK_EXP=MIN_CHUNK_EXP, MAX_CHUNK_EXP=MAX_CHUNK_EXP)
        self.root = Path(root)
        self.keyring = keyring
        self.fsync = fsync
        self.chunk_size_exp = chunk_size_exp
        self._dirs: dict[str, str] = {}  # account uuid -> its directory, for open()
        #: directories (strings) known to exist: the delivery path then needs no stat, mkdir or pathlib
        self._made: set[str] = set()

    # -- paths ---------------------------------------------------------------

    @staticmethod
    def new_blob_id() -> str:
        return uuid.uuid4().hex

    def account_dir(self, account_uuid: str) -> Path:
        return self.root / check_account_uuid(account_uuid)

    def path(self, account_uuid: str, blob_id: str) -> Path:
        """Final (published) path of a message file."""
        _check_blob_id(blob_id)
        return self.account_dir(account_uuid) / "cur" / blob_id[:2] / blob_id

    def tmp_path(self, account_uuid: str, blob_id: str) -> Path:
        return self.account_dir(account_uuid) / "tmp" / _check_blob_id(blob_id)

    def exists(self, account_uuid: str, blob_id: str) -> bool:
        """True if the message is published."""
        return self.path(account_uuid, blob_id).exists()

    def _root_of(self, account_uuid: str) -> str:
        """The account's directory as a string (uuid checked once, then remembered)."""
        root = self._dirs.get(account_uuid)
        if root is None:
            root = self._dirs[account_uuid] = str(self.account_dir(account_uuid))
        return root

    def _ensure_dir(self, d: Path | str, *, sync: bool | None = None) -> None:
        """Create ``d`` and missing parents (0700), fsyncing each new entry's parent.

        ``sync=False`` leaves the new entries to a later ``syncfs`` (the ingest
        group commit); a directory seen once is remembered, so the delivery path
        costs no system call here.
        """
        key = os.fspath(d)
        if key in self._made:
            return
        if not os.path.isdir(key):
            parent = os.path.dirname(key)
            if parent and parent != key:
                self._ensure_dir(parent, sync=sync)
            try:
                os.mkdir(key, _DIR_MODE)
            except FileExistsError:
                pass
            else:
                if self.fsync if sync is None else sync:
                    fsync_dir(parent)
        if len(self._made) > 200_000:
            self._made.clear()
        self._made.add(key)

    def _forget_dirs(self, account_uuid: str) -> None:
        """Drop the remembered directories of an account (deleted, maybe by another process)."""
        root = self._dirs.get(account_uuid)
        if root is not None:
            self._made = {d for d in list(self._made) if not (d == root or d.startswith(root + "/"))}

    # -- writing -------------------------------------------------------------

    def writer(self, account_uuid: str, blob_id: str, meta: dict[str, Any], *, fsync: bool | None = None) -> BlobWriter:
        """Start writing a message into ``tmp/``; metadata is sealed into the header.

        ``fsync=False`` leaves durability to the caller (the ingest group
        commit syncs the whole file system once per batch).
        """
        tmp_dir = self._root_of(account_uuid) + "/tmp"
        tmp = f"{tmp_dir}/{_check_blob_id(blob_id)}"
        if not isinstance(meta, dict):
            raise InvalidInputError("blob metadata must be a dict, got {type}", type=type(meta).__name__)
        try:
            meta_json = json.dumps(meta, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
        except (TypeError, ValueError) as e:
            raise InvalidInputError("blob metadata is not JSON-serialisable: {e}", e=e) from None
        if len(meta_json) + TAG_SIZE > MAX_META_SIZE:
            raise InvalidInputError("blob metadata too large ({size} bytes)", size=len(meta_json))
        data_key = self.keyring.get(account_uuid)
        sync = self.fsync if fsync is None else fsync
        # with fsync=False the caller syncs the file system, new directory entries included
        self._ensure_dir(tmp_dir, sync=self.fsync and sync)
        salt = secrets.token_bytes(SALT_SIZE)
        aead = _file_key(data_key, salt, account_uuid, blob_id)
        prefix = (
            MAGIC
            + bytes([VERSION, self.chunk_size_exp])
            + salt
            + (len(meta_json) + TAG_SIZE).to_bytes(4, "big")
        )
        ids = _ids_aad(account_uuid, blob_id)
        header = prefix + aead.encrypt(_META_NONCE, meta_json, prefix + ids)
        try:
            return BlobWriter(tmp, aead, header, header + ids, 1 << self.chunk_size_exp, sync)
        except FileNotFoundError:
            # the account's directory went away since it was remembered (deleted elsewhere): make it again
            self._forget_dirs(account_uuid)
            self._ensure_dir(tmp_dir, sync=self.fsync and sync)
            return BlobWriter(tmp, aead, header, header + ids, 1 << self.chunk_size_exp, sync)

    def publish(self, account_uuid: str, blob_id: str) -> None:
        """Rename tmp -> cur and fsync the directory. Idempotent if already published."""
        self.publish_many([(account_uuid, blob_id)])

    def publish_many(self, items: Iterable[tuple[str, str]], *, sync: bool = True) -> None:
        """Publish several messages, then fsync each distinct directory once (group commit).

        ``sync=False`` (the ingest group commit, whose index commit already made
        the messages safe in ``tmp/``): neither the renames nor new ``cur/``
        directories are fsynced here; the next ``syncfs`` makes them durable, and
        a crash before it leaves the files in ``tmp/``, which readers fall back
        to and ``Store.recover`` publishes.
        """
        dirs: dict[str, None] = {}
        try:
            for account_uuid, blob_id in items:
                root = self._root_of(account_uuid)
                _check_blob_id(blob_id)
                parent = f"{root}/cur/{blob_id[:2]}"
                final = f"{parent}/{blob_id}"
                tmp = f"{root}/tmp/{blob_id}"
                self._ensure_dir(parent, sync=self.fsync and sync)
                try:
                    os.rename(tmp, final)
                except FileNotFoundError:
                    if os.path.exists(final):
                        pass
                    elif os.path.exists(tmp):  # the remembered directory went away: make it again
                        self._forget_dirs(account_uuid)
                        self._ensure_dir(parent, sync=self.fsync and sync)
                        os.rename(tmp, final)
                    else:
                        raise NotFoundError(
                            f"cannot publish message {blob_id} of account {account_uuid}: no temp file {tmp}"
                        ) from None
                dirs[parent] = None
        finally:
            if self.fsync and sync:
                for d in dirs:
                    fsync_dir(d)

    # -- reading -------------------------------------------------------------

    def open(self, account_uuid: str, blob_id: str) -> BlobReader:
        """Open a message for reading; falls back to tmp/ while another process is publishing it."""
        # fast path (IMAP reads many small files): plain strings, no pathlib on a hit
        root = self._dirs.get(account_uuid)
        if root is None:
            root = self._dirs[account_uuid] = str(self.account_dir(account_uuid))
        _check_blob_id(blob_id)
        fast = f"{root}/cur/{blob_id[:2]}/{blob_id}"
        try:
            f = open(fast, "rb", buffering=0)  # closed by BlobReader
        except FileNotFoundError:
            pass
        else:
            try:
                data_key = self.keyring.get(account_uuid)
            except BaseException:
                f.close()
                raise
            return BlobReader(fast, f, account_uuid, blob_id, data_key)
        final = self.path(account_uuid, blob_id)
        tmp = self.tmp_path(account_uuid, blob_id)
        for candidate in (final, tmp, final):  # final again: the rename may land between tries
            try:
                f = open(candidate, "rb", buffering=0)  # closed by BlobReader
            except FileNotFoundError:
                continue
            try:
                data_key = self.keyring.get(account_uuid)
            except BaseException:
                f.close()
                raise
            return BlobReader(candidate, f, account_uuid, blob_id, data_key)
        raise NotFoundError("message {blob_id} of account {account_uuid} not found ({final})", blob_id=blob_id, account_uuid=account_uuid, final=final)

    # -- deleting ------------------------------------------------------------

    def delete(self, account_uuid: str, blob_id: str) -> None:
        """Remove a message (published or temp); a missing file is fine."""
        self.delete_many([(account_uuid, blob_id)])

    def delete_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Remove several messages, fsyncing each touched directory once (for EXPUNGE of many)."""
        dirs: dict[Path, None] = {}
        try:
            for account_uuid, blob_id in items:
                for p in (self.path(account_uuid, blob_id), self.tmp_path(account_uuid, blob_id)):
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        continue
                    dirs[p.parent] = None
        finally:
            if self.fsync:
                for d in dirs:
                    fsync_dir(d)

    def discard_tmp(self, account_uuid: str, blob_id: str) -> None:
        """Remove an unpublished temp file (ingest rollback); missing is fine, published files are untouched."""
        try:
            os.unlink(f"{self._root_of(account_uuid)}/tmp/{_check_blob_id(blob_id)}")
        except FileNotFoundError:
            pass

    def delete_account(self, account_uuid: str) -> None:
        """Remove the account's whole tree: renamed aside first so a crash never leaves half an account."""
        src = self.account_dir(account_uuid)
        self._forget_dirs(account_uuid)
        trash = self.root / f".deleting-{account_uuid}-{secrets.token_hex(4)}"
        try:
            os.rename(src, trash)
        except FileNotFoundError:
            pass
        else:
            if self.fsync:
                fsync_dir(self.root)
        # also sweeps leftovers of an earlier interrupted deletion
        if self.root.is_dir():
            for entry in os.scandir(self.root):
                if entry.name.startswith(".deleting-"):
                    shutil.rmtree(entry.path, ignore_errors=True)

    # -- listing -------------------------------------------------------------

    def iter_account_uuids(self) -> Iterator[str]:
        """Accounts that have a directory here."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False) and len(e.name) == 32:
                try:
                    yield check_account_uuid(e.name)
                except InvalidInputError:
                    continue

    def iter_blob_ids(self, account_uuid: str) -> Iterator[str]:
        """Published message ids of an account (temp files excluded)."""
        cur = self.account_dir(account_uuid) / "cur"
        try:
            buckets = [b for b in os.scandir(cur) if b.is_dir(follow_symlinks=False) and len(b.name) == 2]
        except FileNotFoundError:
            return
        for b in buckets:
            try:
                names = os.listdir(b.path)
            except FileNotFoundError:
                continue
            for name in names:
                if name[:2] == b.name and _BLOB_ID_RE.fullmatch(name):
                    yield name

    def iter_tmp(self, account_uuid: str) -> list[tuple[str, float]]:
        """(blob_id, mtime) of temp files, for crash recovery.

        A temp file whose final file also exists is a finished publish whose
        tmp entry resurfaced after a crash: delete it. Others are
        interrupted deliveries (never acknowledged): delete when old.
        """
        tmp = self.account_dir(account_uuid) / "tmp"
        out: list[tuple[str, float]] = []
        try:
            entries = list(os.scandir(tmp))
        except FileNotFoundError:
            return out
        for e in entries:
            if _BLOB_ID_RE.fullmatch(e.name):
                try:
                    out.append((e.name, e.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:
                    continue
        return out
