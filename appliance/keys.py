"""Key material: the TLS certificate, DKIM keys, secret files, the server SSL context.

Used by ``appliance init`` and the installer. Nothing here overwrites an
existing file: replacing a key is a deliberate act done elsewhere.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import ConfigError
from appliance.i18n import _

__all__ = [
    "DkimKey",
    "generate_dkim_key",
    "generate_self_signed_cert",
    "ssl_server_context",
    "write_secret_file",
]


# ---------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_file(path: str | os.PathLike[str], data: bytes, mode: int) -> Path:
    """Write ``data`` to a new file atomically: tmp + fsync + link into place + fsync dir.

    Raises FileExistsError if ``path`` exists, also when it appears meanwhile.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away; set exactly ``mode``
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if path exists: no overwrite, unlike rename
        except FileExistsError:
            raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
        except OSError:  # a filesystem without hard links
            if path.exists():
                raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)
    return path


def write_secret_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Create ``path`` with mode 0600 holding ``data``, atomically and durably; never overwrite."""
    return _write_new_file(path, data, 0o600)


# ---------------------------------------------------------------- TLS


def generate_self_signed_cert(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], hostname: str, days: int = 825
) -> x509.Certificate:
    """Write a self-signed EC P-256 certificate for ``hostname`` (+ localhost, 127.0.0.1).

    The key file is 0600, the certificate 0644. Raises FileExistsError, before
    writing anything, if either file exists.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    for p in (cert_path, key_path):
        if p.exists() or p.is_symlink():
            raise FileExistsError(f"{p} already exists; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys([hostname, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(key_path, key_pem)
    try:
        _write_new_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return cert


_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def ssl_server_context(cfg: Any) -> ssl.SSLContext:
    """An SSLContext for servers from ``cfg.tls`` (cert_file, key_file, min_version).

    A certificate or key that cannot be loaded raises ConfigError naming the key.
    """
    tls = cfg.tls
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        if isinstance(e, ssl.SSLError):
            key, reason = _blame_tls_file(tls.cert_file)
        else:
            reason = e.strerror or str(e)
            same = e.filename is not None and os.fspath(e.filename) == os.fspath(tls.key_file)
            key = "tls.key_file" if same else "tls.cert_file"
        problem = _("cannot load the certificate and key ({reason})").format(reason=reason)
        raise ConfigError(f"{getattr(cfg, 'path', 'config')}: {key}: {problem}", key=key, problem=problem) from None
    return ctx


def _blame_tls_file(cert_file: Any) -> tuple[str, str]:
    """After load_cert_chain failed: which file is at fault, and why."""
    try:
        x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    except (OSError, ValueError):
        return "tls.cert_file", "not a PEM certificate"
    return "tls.key_file", "not a PEM private key, or it does not match the certificate"


# ---------------------------------------------------------------- DKIM


@dataclass(frozen=True)
class DkimKey:
    algorithm: str  # "ed25519" or "rsa"
    path: Path  # the private key, in the format dkim.sign() takes
    public_key: str  # base64, the p= value
    txt_record: str  # "v=DKIM1; k=ed25519; p=..."

    def txt_strings(self) -> list[str]:
        """The TXT value split into the <=255-byte strings a DNS zone needs."""
        return [self.txt_record[i : i + 255] for i in range(0, len(self.txt_record), 255)]


def generate_dkim_key(path: str | os.PathLike[str], algorithm: str = "ed25519", *, rsa_bits: int = 2048) -> DkimKey:
    """Write a new DKIM private key (0600) to ``path``; return it with its DNS TXT record.

    RSA keys are PEM PKCS#1; Ed25519 keys are the base64 32-byte seed, which
    is what dkimpy's ``dkim.sign`` expects (RFC 8463). Signing domains usually
    publish both: an RSA selector for old verifiers and an Ed25519 one.
    """
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        private = base64.b64encode(seed) + b"\n"
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    elif algorithm == "rsa":
        if rsa_bits < 1024:
            raise ValueError("RSA DKIM keys must have at least 1024 bits (2048 recommended)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}; use 'ed25519' or 'rsa'")
    path = write_secret_file(path, private)
    p = base64.b64encode(public).decode("ascii")
    return DkimKey(algorithm=algorithm, path=path, public_key=p, txt_record=f"v=DKIM1; k={algorithm}; p={p}")
