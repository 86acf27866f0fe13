"""Encrypted message files: round trips, random access, tamper detection, crypto-erase."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from storage.blobs import BlobStore
from storage.crypto import Keyring
from storage.errors import BlobCorruptError, CryptoError, InvalidInputError, KeyMissingError, NotFoundError

C = 1 << 16
CT = C + 16
META = {"mailbox": "INBOX", "internaldate": 1732572000, "flags": ["\\Seen"]}


@pytest.fixture
def master() -> bytes:
    return os.urandom(32)


@pytest.fixture
def keyring(tmp_path: Path, master: bytes) -> Keyring:
    return Keyring(tmp_path / "keys", master)


@pytest.fixture
def acct(keyring: Keyring) -> str:
    a = uuid.uuid4().hex
    keyring.create(a)
    return a


@pytest.fixture
def store(tmp_path: Path, keyring: Keyring) -> BlobStore:
    return BlobStore(tmp_path / "mail", keyring, fsync=False)


def put(store: BlobStore, acct: str, data: bytes, piece: int | None = None, meta: dict | None = None) -> str:
    bid = store.new_blob_id()
    with store.writer(acct, bid, META if meta is None else meta) as w:
        step = piece or max(len(data), 1)
        for i in range(0, len(data), step):
            w.write(data[i : i + step])
        assert w.finish() == len(data)
    store.publish(acct, bid)
    return bid


def header_len(raw: bytes) -> int:
    return 26 + int.from_bytes(raw[22:26], "big")


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 3 << 20])
def test_round_trip(tmp_path: Path, keyring: Keyring, acct: str, size: int) -> None:
    store = BlobStore(tmp_path / "mail", keyring)  # fsync on: the delivery configuration
    data = os.urandom(size)
    bid = put(store, acct, data)
    assert store.exists(acct, bid)
    assert not store.tmp_path(acct, bid).exists()
    p = store.path(acct, bid)
    assert p == tmp_path / "mail" / acct / "cur" / bid[:2] / bid
    assert (p.stat().st_mode & 0o777) == 0o600
    assert (p.parent.stat().st_mode & 0o777) == 0o700
    expected_chunks = max(1, -(-size // C))
    assert p.stat().st_size == header_len(p.read_bytes()[:26]) + size + 16 * expected_chunks
    with store.open(acct, bid) as r:
        assert r.size == size
        assert r.meta == META
        assert r.num_chunks == expected_chunks
        assert r.read_all() == data
        assert b"".join(r.iter_chunks()) == data


def test_irregular_writes(store: BlobStore, acct: str) -> None:
    data = os.urandom(5 * C + 17)
    bid = store.new_blob_id()
    sizes = [1, 7, 4093, C, C - 1, 100_000, 0, 2]
    with store.writer(acct, bid, {}) as w:
        pos, k = 0, 0
        while pos < len(data):
            n = sizes[k % len(sizes)]
            w.write(memoryview(data)[pos : pos + n])
            pos += n
            k += 1
        assert w.size == len(data)
        w.finish()
    store.publish(acct, bid)
    with store.open(acct, bid) as r:
        assert r.read_all() == data
        assert r.meta == {}


def test_read_range_matches_slicing(store: BlobStore, acct: str) -> None:
    data = os.urandom(3 * C + 123)
    bid = put(store, acct, data)
    n = len(data)
    offsets = [0, 1, C - 1, C, C + 1, 2 * C - 1, 2 * C, 3 * C, 3 * C + 122, n - 1, n, n + 5]
    lengths = [0, 1, 2, C - 1, C, C + 1, 2 * C + 5, n, n + 100]
    with store.open(acct, bid) as r:
        for o in offsets:
            for ln in lengths:
                assert r.read_range(o, ln) == data[o : o + ln], (o, ln)
        with pytest.raises(InvalidInputError):
            r.read_range(-1, 5)
        with pytest.raises(InvalidInputError):
            r.read_range(0, -1)


def test_read_range_exact_multiple(store: BlobStore, acct: str) -> None:
    data = os.urandom(2 * C)
    bid = put(store, acct, data)
    with store.open(acct, bid) as r:
        assert r.num_chunks == 2
        for o, ln in [(0, C), (C - 1, 2), (C, C), (2 * C - 1, 1), (0, 2 * C)]:
            assert r.read_range(o, ln) == data[o : o + ln]


# -- tampering -----------------------------------------------------------------


def corrupt_and_check(store: BlobStore, acct: str, bid: str, raw: bytes, match: str | None = None) -> None:
    p = store.path(acct, bid)
    p.write_bytes(raw)
    with pytest.raises(BlobCorruptError) as ei:
        with store.open(acct, bid) as r:
            r.read_all()
    msg = str(ei.value)
    assert str(p) in msg
    assert ("chunk" in msg) or ("header" in msg)
    if match:
        assert match in msg, msg


@pytest.fixture
def three_chunks(store: BlobStore, acct: str) -> tuple[str, bytes, bytes]:
    """A message of 2 full chunks + a 10-byte final chunk; returns (blob_id, plaintext, file bytes)."""
    data = os.urandom(2 * C + 10)
    bid = put(store, acct, data)
    return bid, data, store.path(acct, bid).read_bytes()


def test_flip_header_and_metadata(
    store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]
) -> None:
    bid, _, raw = three_chunks
    h = header_len(raw)
    for pos in [0, 3, 4, 5, 6, 21, 22, 25, 26, h // 2 + 13, h - 1]:
        t = bytearray(raw)
        t[pos] ^= 0x04
        corrupt_and_check(store, acct, bid, bytes(t), "header")


def test_flip_in_each_chunk(store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]) -> None:
    bid, _, raw = three_chunks
    h = header_len(raw)
    for i, pos in enumerate([h, h + CT + 500, len(raw) - 1]):
        t = bytearray(raw)
        t[pos] ^= 0x80
        corrupt_and_check(store, acct, bid, bytes(t), f"chunk {i} of 3")


def test_flip_detected_by_partial_read(
    store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]
) -> None:
    bid, data, raw = three_chunks
    h = header_len(raw)
    t = bytearray(raw)
    t[h + 5] ^= 1
    store.path(acct, bid).write_bytes(bytes(t))
    with store.open(acct, bid) as r:  # opening checks only the header and the final chunk
        assert r.read_range(C, 100) == data[C : C + 100]
        with pytest.raises(BlobCorruptError, match="chunk 0 of 3"):
            r.read_range(0, 1)


def test_swap_chunks(store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]) -> None:
    bid, _, raw = three_chunks
    h = header_len(raw)
    c0, c1 = raw[h : h + CT], raw[h + CT : h + 2 * CT]
    corrupt_and_check(store, acct, bid, raw[:h] + c1 + c0 + raw[h + 2 * CT :], "chunk 0 of 3")


def test_truncate_at_chunk_boundary(
    store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]
) -> None:
    bid, _, raw = three_chunks
    h = header_len(raw)
    corrupt_and_check(store, acct, bid, raw[: h + 2 * CT], "chunk 1 of 2")  # drop the final chunk
    corrupt_and_check(store, acct, bid, raw[: h + CT], "chunk 0 of 1")
    corrupt_and_check(store, acct, bid, raw[:h], "chunk 0")


def test_truncate_exact_multiple(store: BlobStore, acct: str) -> None:
    data = os.urandom(2 * C)  # final chunk is full: dropping it leaves a plausible-looking file
    bid = put(store, acct, data)
    raw = store.path(acct, bid).read_bytes()
    corrupt_and_check(store, acct, bid, raw[: header_len(raw) + CT], "final chunk")


def test_truncate_mid_chunk(store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]) -> None:
    bid, _, raw = three_chunks
    h = header_len(raw)
    for cut in [len(raw) - 1, len(raw) - 20, h + 2 * CT - 1, h + CT + 100, h + 10, h - 1, 10]:
        corrupt_and_check(store, acct, bid, raw[:cut])


def test_append(store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]) -> None:
    bid, _, raw = three_chunks
    h = header_len(raw)
    corrupt_and_check(store, acct, bid, raw + raw[h : h + CT])  # a whole chunk
    corrupt_and_check(store, acct, bid, raw + raw[-26:])  # another final chunk
    corrupt_and_check(store, acct, bid, raw + b"\0")


def test_append_to_empty_message(store: BlobStore, acct: str) -> None:
    bid = put(store, acct, b"")
    raw = store.path(acct, bid).read_bytes()
    h = header_len(raw)
    assert len(raw) == h + 16
    with store.open(acct, bid) as r:
        assert r.read_all() == b"" and r.size == 0
    corrupt_and_check(store, acct, bid, raw + raw[h:])
    corrupt_and_check(store, acct, bid, raw[:h])


def test_copy_to_other_blob_id(store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]) -> None:
    bid, _, raw = three_chunks
    other = store.new_blob_id()
    dst = store.path(acct, other)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(raw)
    with pytest.raises(BlobCorruptError, match="copied from another message or account"):
        store.open(acct, other)


def test_move_to_other_account(
    store: BlobStore, keyring: Keyring, acct: str, three_chunks: tuple[str, bytes, bytes]
) -> None:
    bid, _, raw = three_chunks
    other = uuid.uuid4().hex
    keyring.create(other)
    dst = store.path(other, bid)
    dst.parent.mkdir(parents=True)
    shutil.move(store.path(acct, bid), dst)
    with pytest.raises(CryptoError):
        store.open(other, bid)
    with pytest.raises(NotFoundError):
        store.open(acct, bid)


def test_mix_chunks_between_messages(
    store: BlobStore, acct: str, three_chunks: tuple[str, bytes, bytes]
) -> None:
    bid, data, raw = three_chunks
    bid2 = put(store, acct, data)  # same plaintext, different message
    raw2 = store.path(acct, bid2).read_bytes()
    h, h2 = header_len(raw), header_len(raw2)
    mixed = raw[: h + CT] + raw2[h2 + CT : h2 + 2 * CT] + raw[h + 2 * CT :]  # chunk 1 from the other message
    corrupt_and_check(store, acct, bid, mixed, "chunk 1 of 3")
    corrupt_and_check(store, acct, bid, raw[: h + 2 * CT] + raw2[h2 + 2 * CT :], "chunk 2 of 3")


# -- crypto-erase, plaintext, lifecycle -------------------------------------------


def test_crypto_erase(tmp_path: Path, master: bytes, store: BlobStore, keyring: Keyring, acct: str) -> None:
    bid = put(store, acct, b"secret mail")
    keyring.destroy(acct)
    assert not any((tmp_path / "keys").rglob(f"{acct}*"))
    with pytest.raises(KeyMissingError, match="its key was destroyed"):
        store.open(acct, bid)
    fresh = BlobStore(tmp_path / "mail", Keyring(tmp_path / "keys", master))  # even with the master key
    with pytest.raises(KeyMissingError):
        fresh.open(acct, bid)
    fresh.keyring.create(acct)  # a new key for the same uuid does not revive old mail
    with pytest.raises(BlobCorruptError):
        fresh.open(acct, bid)


def test_no_plaintext_on_disk(tmp_path: Path, store: BlobStore, acct: str) -> None:
    word = f"Zanzibarquux{uuid.uuid4().hex}".encode()
    body = b"Subject: " + word + b"\r\n\r\n" + (b"hello " + word + b" ") * 20_000
    bid = store.new_blob_id()

    def scan() -> int:
        n = 0
        for p in tmp_path.rglob("*"):
            if p.is_file():
                assert word not in p.read_bytes(), p
                n += 1
        return n

    with store.writer(acct, bid, {"mailbox": "INBOX", "subject": word.decode()}) as w:
        for i in range(0, len(body), 1000):
            w.write(body[i : i + 1000])
            if i in (0, 100_000):
                w._flush_out()  # make what is "written" visible
                assert scan() >= 1
        w.finish()
        assert store.tmp_path(acct, bid).exists()
        assert scan() >= 2
    store.publish(acct, bid)
    assert scan() >= 2
    with store.open(acct, bid) as r:
        assert r.read_all() == body
        assert r.meta["subject"] == word.decode()


def test_abort_leaves_nothing(store: BlobStore, acct: str) -> None:
    bid = store.new_blob_id()
    w = store.writer(acct, bid, {})
    w.write(os.urandom(3 * C))
    w.abort()
    w.abort()
    assert not store.tmp_path(acct, bid).exists()

    with pytest.raises(RuntimeError):
        with store.writer(acct, bid, {}) as w:
            w.write(b"partial")
            raise RuntimeError("client went away")
    assert not store.tmp_path(acct, bid).exists()

    with store.writer(acct, bid, {}) as w:  # never finished: aborted too
        w.write(b"partial")
    assert not store.tmp_path(acct, bid).exists()
    assert store.iter_tmp(acct) == []
    assert list(store.iter_blob_ids(acct)) == []
    with pytest.raises(NotFoundError):
        store.publish(acct, bid)


def test_read_from_tmp_before_publish(store: BlobStore, acct: str) -> None:
    bid = store.new_blob_id()
    with store.writer(acct, bid, META) as w:
        w.write(b"in flight")
        w.finish()
    assert not store.exists(acct, bid)
    with store.open(acct, bid) as r:
        assert r.read_all() == b"in flight"
    [(tid, mtime)] = store.iter_tmp(acct)
    assert tid == bid and mtime > 0
    store.publish(acct, bid)
    store.publish(acct, bid)  # idempotent once published
    assert store.iter_tmp(acct) == []
    store.discard_tmp(acct, bid)  # no temp file: a no-op that must not touch the published one
    assert store.exists(acct, bid)
    bid2 = store.new_blob_id()
    with store.writer(acct, bid2, {}) as w:
        w.write(b"rolled back")
        w.finish()
    store.discard_tmp(acct, bid2)
    assert store.iter_tmp(acct) == [] and not store.exists(acct, bid2)


def test_publish_many_list_delete(tmp_path: Path, keyring: Keyring, acct: str) -> None:
    store = BlobStore(tmp_path / "mail", keyring)
    bids = []
    for i in range(5):
        bid = store.new_blob_id()
        with store.writer(acct, bid, {"i": i}) as w:
            w.write(b"m%d" % i)
            w.finish()
        bids.append(bid)
    store.publish_many([(acct, b) for b in bids])
    assert sorted(store.iter_blob_ids(acct)) == sorted(bids)
    assert list(store.iter_account_uuids()) == [acct]
    store.delete(acct, bids[0])
    store.delete(acct, bids[0])  # missing is fine
    store.delete_many([(acct, b) for b in bids[1:3]])
    assert sorted(store.iter_blob_ids(acct)) == sorted(bids[3:])
    with pytest.raises(NotFoundError):
        store.open(acct, bids[0])
    store.delete_account(acct)
    store.delete_account(acct)
    assert list(store.iter_account_uuids()) == []
    assert os.listdir(tmp_path / "mail") == []


def test_invalid_ids_and_meta(store: BlobStore, acct: str) -> None:
    for bad in ["../../x", "A" * 32, "0" * 31, ""]:
        with pytest.raises(InvalidInputError):
            store.writer(acct, bad, {})
    with pytest.raises(InvalidInputError):
        store.writer("../" + acct, store.new_blob_id(), {})
    with pytest.raises(InvalidInputError):
        store.writer(acct, store.new_blob_id(), {"x": object()})
    with pytest.raises(KeyMissingError):
        store.writer(uuid.uuid4().hex, store.new_blob_id(), {})
