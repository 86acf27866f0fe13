"""Master key, keyring (wrap, crypto-erase) and sealed records."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from storage.crypto import Keyring, generate_master_key, hmac_key, load_master_key
from storage.errors import ConflictError, CryptoError, InvalidInputError, KeyMissingError


def _uuid() -> str:
    return uuid.uuid4().hex


# -- master key ---------------------------------------------------------------


def test_generate_and_load_master_key(tmp_path: Path) -> None:
    p = tmp_path / "master.key"
    generate_master_key(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    key = load_master_key(p)
    assert len(key) == 32
    assert [n for n in os.listdir(tmp_path)] == ["master.key"]  # no temp file left


def test_generate_refuses_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "master.key"
    generate_master_key(p)
    before = p.read_bytes()
    with pytest.raises(FileExistsError):
        generate_master_key(p)
    assert p.read_bytes() == before


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="missing"):
        load_master_key(tmp_path / "nope.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_load_rejects_group_or_other_access(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "master.key"
    generate_master_key(p)
    p.chmod(mode)
    with pytest.raises(CryptoError, match="chmod 600") as ei:
        load_master_key(p)
    assert f"{mode:04o}" in str(ei.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_load_rejects_wrong_size(tmp_path: Path, size: int) -> None:
    p = tmp_path / "master.key"
    p.write_bytes(b"x" * size)
    p.chmod(0o600)
    with pytest.raises(CryptoError, match=f"{size} bytes, expected 32"):
        load_master_key(p)


def test_hmac_key_is_per_purpose() -> None:
    m = os.urandom(32)
    a, b = hmac_key(m, "app-password"), hmac_key(m, "other")
    assert len(a) == 32 and a != b and a != m
    assert hmac_key(m, "app-password") == a
    with pytest.raises(InvalidInputError):
        hmac_key(m, "")


# -- keyring -----------------------------------------------------------------


@pytest.fixture
def master() -> bytes:
    return os.urandom(32)


@pytest.fixture
def keyring(tmp_path: Path, master: bytes) -> Keyring:
    return Keyring(tmp_path / "keys", master)


def test_keyring_create_get_persist(tmp_path: Path, master: bytes, keyring: Keyring) -> None:
    a = _uuid()
    assert not keyring.has(a)
    keyring.create(a)
    assert keyring.has(a)
    k = keyring.get(a)
    assert len(k) == 32
    kf = tmp_path / "keys" / "accounts" / f"{a}.key"
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    assert k not in kf.read_bytes()  # stored wrapped
    assert Keyring(tmp_path / "keys", master).get(a) == k  # fresh process, no cache
    assert keyring.account_uuids() == [a]


def test_keyring_create_twice_conflicts(keyring: Keyring) -> None:
    a = _uuid()
    keyring.create(a)
    k = keyring.get(a)
    with pytest.raises(ConflictError):
        keyring.create(a)
    assert keyring.get(a) == k


def test_keyring_get_unknown(keyring: Keyring) -> None:
    a = _uuid()
    with pytest.raises(KeyMissingError, match=f"mail of account {a} cannot be read"):
        keyring.get(a)


def test_keyring_rejects_bad_uuid(keyring: Keyring) -> None:
    for bad in ["../etc", "ABCDEF" * 6, "", "0" * 31, str(uuid.uuid4())]:
        with pytest.raises(InvalidInputError):
            keyring.create(bad)


def test_keyring_wrong_master_key(tmp_path: Path, keyring: Keyring) -> None:
    a = _uuid()
    keyring.create(a)
    with pytest.raises(CryptoError, match="wrong master key"):
        Keyring(tmp_path / "keys", os.urandom(32)).get(a)


def test_keyring_key_file_copied_to_other_account(tmp_path: Path, master: bytes, keyring: Keyring) -> None:
    a, b = _uuid(), _uuid()
    keyring.create(a)
    d = tmp_path / "keys" / "accounts"
    (d / f"{b}.key").write_bytes((d / f"{a}.key").read_bytes())
    with pytest.raises(CryptoError):
        Keyring(tmp_path / "keys", master).get(b)


def test_keyring_destroy(tmp_path: Path, master: bytes, keyring: Keyring) -> None:
    a, b = _uuid(), _uuid()
    keyring.create(a)
    keyring.create(b)
    keyring.get(a)
    keyring.destroy(a)
    assert not keyring.has(a)
    assert not (tmp_path / "keys" / "accounts" / f"{a}.key").exists()
    with pytest.raises(KeyMissingError):
        keyring.get(a)
    with pytest.raises(KeyMissingError):
        Keyring(tmp_path / "keys", master).get(a)
    keyring.destroy(a)  # idempotent
    assert keyring.account_uuids() == [b]
    keyring.get(b)


# -- sealed records ------------------------------------------------------------


def test_seal_open_round_trip(keyring: Keyring) -> None:
    a = _uuid()
    keyring.create(a)
    for data in [b"", b"x", os.urandom(300), os.urandom(5000)]:
        s = keyring.seal(a, data, b"ctx|1")
        assert len(s) == len(data) + 29
        assert keyring.open(a, s, b"ctx|1") == data
    assert keyring.seal(a, b"same", b"c") != keyring.seal(a, b"same", b"c")  # random nonce


def test_seal_tamper_and_context(keyring: Keyring) -> None:
    a, b = _uuid(), _uuid()
    keyring.create(a)
    keyring.create(b)
    s = keyring.seal(a, b"subject: hello", b"msg|7")
    with pytest.raises(CryptoError):
        keyring.open(a, s, b"msg|8")
    with pytest.raises(CryptoError):
        keyring.open(b, s, b"msg|7")
    for i in range(len(s)):
        t = bytearray(s)
        t[i] ^= 0x01
        with pytest.raises(CryptoError):
            keyring.open(a, bytes(t), b"msg|7")
    for cut in [0, 1, 13, 28, len(s) - 1]:
        with pytest.raises(CryptoError):
            keyring.open(a, s[:cut], b"msg|7")


def test_seal_after_destroy(keyring: Keyring) -> None:
    a = _uuid()
    keyring.create(a)
    s = keyring.seal(a, b"x", b"c")
    keyring.destroy(a)
    with pytest.raises(KeyMissingError):
        keyring.open(a, s, b"c")
    with pytest.raises(KeyMissingError):
        keyring.seal(a, b"x", b"c")
