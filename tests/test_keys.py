"""appliance/keys.py: certificates, DKIM keys, secret files, the server SSL context."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path

import dkim
import pytest
from cryptography import x509

from appliance.config import ConfigError, load_config
from appliance.keys import generate_dkim_key, generate_self_signed_cert, ssl_server_context, write_secret_file

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: hello\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_secret_file(tmp_path: Path):
    old = os.umask(0)
    try:
        path = write_secret_file(tmp_path / "sub" / "secret", b"s3cret")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"s3cret"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    with pytest.raises(FileExistsError):
        write_secret_file(path, b"other")
    assert path.read_bytes() == b"s3cret"
    assert os.listdir(path.parent) == ["secret"]  # no temporary file left behind


def test_write_secret_file_refuses_a_dangling_symlink(tmp_path: Path):
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        write_secret_file(tmp_path / "link", b"x")
    assert not (tmp_path / "target").exists()


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    generate_self_signed_cert(d / "tls" / "cert.pem", d / "tls" / "key.pem", "mail.example.test", days=30)
    return d


def test_self_signed_cert(cert_dir: Path):
    cert_path, key_path = cert_dir / "tls" / "cert.pem", cert_dir / "tls" / "key.pem"
    assert mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_self_signed_cert_refuses_to_overwrite(cert_dir: Path, tmp_path: Path):
    with pytest.raises(FileExistsError):
        generate_self_signed_cert(cert_dir / "tls" / "cert.pem", tmp_path / "key.pem", "x.example")
    assert not (tmp_path / "key.pem").exists()  # nothing written when either file exists


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> str:
    """A TLS handshake in memory; returns the negotiated version."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c.version()
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("min_version", ["TLSv1.2", "TLSv1.3"])
def test_ssl_server_context(cert_dir: Path, tmp_path: Path, min_version: str):
    (tmp_path / "appliance.toml").write_text(
        f'[tls]\ncert_file = "{cert_dir}/tls/cert.pem"\nkey_file = "{cert_dir}/tls/key.pem"\n'
        f'min_version = "{min_version}"\n'
    )
    cfg = load_config(tmp_path / "appliance.toml")
    server = ssl_server_context(cfg)
    assert server.minimum_version == getattr(ssl.TLSVersion, min_version.replace(".", "_"))
    client = ssl.create_default_context(cafile=str(cert_dir / "tls" / "cert.pem"))
    assert handshake(server, client, "mail.example.test") in ("TLSv1.2", "TLSv1.3")
    assert handshake(server, client, "localhost")
    if min_version == "TLSv1.3":
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            handshake(server, client, "mail.example.test")


def test_ssl_server_context_bad_key(cert_dir: Path, tmp_path: Path):
    (tmp_path / "bad.pem").write_text("nonsense\n")

    class Tls:
        cert_file = cert_dir / "tls" / "cert.pem"
        key_file = tmp_path / "bad.pem"
        min_version = "TLSv1.2"

    class Cfg:
        path = Path("appliance.toml")
        tls = Tls

    with pytest.raises(ConfigError) as info:
        ssl_server_context(Cfg)
    assert str(info.value).startswith("appliance.toml: tls.")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_dkim_key_signs_and_verifies(tmp_path: Path, algorithm: str):
    key = generate_dkim_key(tmp_path / "keys" / f"sel.{algorithm}.key", algorithm)
    assert key.path == tmp_path / "keys" / f"sel.{algorithm}.key"
    assert mode(key.path) == 0o600
    assert key.txt_record == f"v=DKIM1; k={algorithm}; p={key.public_key}"
    assert "".join(key.txt_strings()) == key.txt_record
    assert all(len(s) <= 255 for s in key.txt_strings())

    signature = dkim.sign(
        MESSAGE, b"sel", b"example.com", key.path.read_bytes(),
        signature_algorithm=b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256",
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    looked_up = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name)
        return key.txt_record.encode() if name == b"sel._domainkey.example.com." else b""

    assert dkim.verify(signature + MESSAGE, dnsfunc=dnsfunc)
    assert looked_up == [b"sel._domainkey.example.com."]
    assert not dkim.verify(signature + MESSAGE.replace(b"Hi Bob", b"Hi Eve"), dnsfunc=dnsfunc)


def test_dkim_key_refuses_to_overwrite_and_bad_algorithm(tmp_path: Path):
    generate_dkim_key(tmp_path / "k", "ed25519")
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(FileExistsError):
        generate_dkim_key(tmp_path / "k", "ed25519")
    assert (tmp_path / "k").read_bytes() == before
    with pytest.raises(ValueError):
        generate_dkim_key(tmp_path / "k2", "dsa")
    assert not (tmp_path / "k2").exists()
