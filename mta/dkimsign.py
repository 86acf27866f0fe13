"""DKIM: signing outbound mail, and the keys of each domain with their rotation.

Keys are files ``<keys_dir>/dkim/<domain>.<selector>.<algorithm>.key``
(appliance/keys.py writes them): Ed25519 keys are the base64 raw seed under
selector ``sN``, RSA-2048 keys PEM under ``sNr``; ``sN`` and ``sNr`` form one
*generation* ``sN``. A domain signs with the keys of its active generation,
with both when both exist (RFC 8463: Ed25519 for new verifiers, RSA for the
rest).

Rotation (``appliance dkim rotate DOMAIN``), recorded in
``<keys_dir>/dkim/<domain>.rotation.json``::

    {"active": "s1", "pending": "s2" | null, "previous": "s0" | null, "switched": unix time}

1. start: new keys ``s(N+1)`` / ``s(N+1)r`` are written as *pending*; their
   TXT records are printed; mail is still signed with the active keys.
2. switch (run ``rotate`` again once the records are published; it looks them
   up with the configured resolver): the pending generation becomes active,
   the old one *previous*, still published.
3. finish (``rotate --finish``, after ``dkim.keep_old``): the previous keys
   move to ``<keys_dir>/dkim/retired/``; their DNS records may go.

Without a rotation file the active generation is the lowest one present.

Signing uses dkimpy's canonicalisation and header selection and does the
public-key step with ``cryptography`` (OpenSSL): dkimpy's pure-Python RSA
takes ~12 ms a signature, OpenSSL ~1.5 ms. Signatures are
``c=relaxed/relaxed``, over the RFC 6376 recommended fields present, with
From, Subject, Date, Message-ID, To, Cc and Reply-To signed once more than
they occur (so none can be added). ``DkimSigner`` is blocking.

Neither OpenSSL's RSA signing (as called by ``cryptography``) nor dkimpy's
regular expressions release the GIL, so signing in threads of the MTA process
would stall its event loop and use one core only. ``SigningPool`` runs
``DkimSigner`` in worker processes (``dkim.sign_processes``); only the new
header fields travel back.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from . import headers as hdrs

log = logging.getLogger("mta.dkim")

ALGORITHMS = ("ed25519", "rsa")
_SIGN = frozenset(n.lower() for n in dkim.DKIM.SHOULD)
_OVERSIGN = (b"from", b"subject", b"date", b"message-id", b"to", b"cc", b"reply-to")
_CANON = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_GEN = re.compile(r"s(\d+)")


# ---------------------------------------------------------------- keys on disk


@dataclass(frozen=True)
class KeyFile:
    domain: str
    selector: str  # as published: "s1" (ed25519), "s1r" (rsa)
    algorithm: str  # ed25519 | rsa
    path: Path

    @property
    def generation(self) -> str:
        return generation_of(self.selector, self.algorithm)

    def public_key(self) -> str:
        """The base64 p= value."""
        return base64.b64encode(_public_bytes(_load_private(self.path.read_bytes(), self.algorithm))).decode()

    def txt_record(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key()}"


def generation_of(selector: str, algorithm: str) -> str:
    if algorithm == "rsa" and selector.endswith("r") and len(selector) > 1:
        return selector[:-1]
    return selector


def selector_for(generation: str, algorithm: str) -> str:
    return generation + ("r" if algorithm == "rsa" else "")


def dkim_dir(keys_dir: Path | str) -> Path:
    return Path(keys_dir) / "dkim"


def key_files(keys_dir: Path | str, domain: str) -> list[KeyFile]:
    """Every DKIM key of ``domain`` (retired ones excepted), sorted by generation then algorithm."""
    directory = dkim_dir(keys_dir)
    out = []
    prefix = f"{domain}."
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".key")):
            continue
        selector, _dot, algorithm = name[len(prefix):-4].rpartition(".")
        if algorithm not in ALGORITHMS or not selector or "." in selector:
            continue
        out.append(KeyFile(domain, selector, algorithm, directory / name))
    return sorted(out, key=lambda k: (_gen_number(k.generation), k.generation, ALGORITHMS.index(k.algorithm)))


def _gen_number(generation: str) -> int:
    m = _GEN.fullmatch(generation)
    return int(m.group(1)) if m else 1_000_000


def _state_path(keys_dir: Path | str, domain: str) -> Path:
    return dkim_dir(keys_dir) / f"{domain}.rotation.json"


def rotation_state(keys_dir: Path | str, domain: str) -> dict[str, Any]:
    """The rotation record, completed from the keys present: active, pending, previous, switched."""
    state: dict[str, Any] = {"active": None, "pending": None, "previous": None, "switched": None}
    try:
        saved = json.loads(_state_path(keys_dir, domain).read_text())
        if isinstance(saved, dict):
            state.update({k: saved.get(k) for k in state})
    except (OSError, ValueError):
        pass
    generations = []
    for k in key_files(keys_dir, domain):
        if k.generation not in generations:
            generations.append(k.generation)
    if state["active"] not in generations:
        rest = [g for g in generations if g not in (state["pending"], state["previous"])]
        state["active"] = rest[0] if rest else None
    for key in ("pending", "previous"):
        if state[key] not in generations or state[key] == state["active"]:
            state[key] = None
    return state


def _save_state(keys_dir: Path | str, domain: str, state: dict[str, Any]) -> None:
    path = _state_path(keys_dir, domain)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def next_generation(keys_dir: Path | str, domain: str) -> str:
    """``s(N+1)`` for the highest N among current and retired keys."""
    numbers = [_gen_number(k.generation) for k in key_files(keys_dir, domain)]
    retired = dkim_dir(keys_dir) / "retired"
    if retired.is_dir():
        for name in os.listdir(retired):
            m = re.match(re.escape(domain) + r"\.s(\d+)r?\.(?:ed25519|rsa)\.key(?:\.\d+)?$", name)
            if m:
                numbers.append(int(m.group(1)))
    numbers = [n for n in numbers if n < 1_000_000]
    return f"s{max(numbers, default=0) + 1}"


def start_rotation(keys_dir: Path | str, domain: str) -> str:
    """Write a new pending generation (Ed25519 + RSA-2048); returns its name."""
    from appliance.keys import generate_dkim_key

    state = rotation_state(keys_dir, domain)
    gen = next_generation(keys_dir, domain)
    directory = dkim_dir(keys_dir)
    generate_dkim_key(directory / f"{domain}.{selector_for(gen, 'ed25519')}.ed25519.key", "ed25519")
    generate_dkim_key(directory / f"{domain}.{selector_for(gen, 'rsa')}.rsa.key", "rsa")
    state["pending"] = gen
    _save_state(keys_dir, domain, state)
    return gen


def switch_to_pending(keys_dir: Path | str, domain: str, *, now: float | None = None) -> dict[str, Any]:
    state = rotation_state(keys_dir, domain)
    if not state["pending"]:
        raise ValueError("no pending key")
    state["previous"], state["active"], state["pending"] = state["active"], state["pending"], None
    state["switched"] = time.time() if now is None else now
    _save_state(keys_dir, domain, state)
    return state


def retire_previous(keys_dir: Path | str, domain: str) -> list[KeyFile]:
    """Move the previous generation's keys to ``retired/``; returns them."""
    state = rotation_state(keys_dir, domain)
    old = state["previous"]
    if not old:
        return []
    retired_dir = dkim_dir(keys_dir) / "retired"
    retired_dir.mkdir(mode=0o700, exist_ok=True)
    moved = []
    for k in key_files(keys_dir, domain):
        if k.generation == old:
            target = retired_dir / k.path.name
            if target.exists():
                target = retired_dir / f"{k.path.name}.{int(time.time())}"
            os.replace(k.path, target)
            moved.append(k)
    state["previous"] = None
    _save_state(keys_dir, domain, state)
    return moved


# ---------------------------------------------------------------- signing


def _load_private(data: bytes, algorithm: str) -> Any:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip()))
    key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    return key


def _public_bytes(key: Any) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str
    key: Any  # cryptography private key

    def sign_digest(self, digest: bytes) -> bytes:
        if self.algorithm == "ed25519":
            return self.key.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 hash
        return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))

    @property
    def a_tag(self) -> bytes:
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"


def signature_fields(raw: bytes, keys: list[SigningKey], *, now: float | None = None) -> bytes:
    """The DKIM-Signature fields (CRLF-terminated) for ``raw`` with each key, to put on top of it.

    The h= names are joined with ": " so that folding (at a space, column 72) never splits a
    field name: RFC 6376 allows FWS around the colons only, and a name broken in two
    ("c\r\n ontent-transfer-encoding") makes every verifier fail the signature."""
    if not keys:
        return b""
    headers, body = dkim.rfc822_parse(raw)
    body_hash = base64.b64encode(hashlib.sha256(_CANON.canonicalize_body(body)).digest())
    present = [name.lower() for name, _ in headers]
    include = [n for n in present if n in _SIGN]
    include += [n for n in _OVERSIGN if n in present]
    if b"from" not in include:
        raise dkim.ParameterError("the message has no From: field")
    canonical = _CANON.canonicalize_headers(headers)
    stamp = str(int(time.time() if now is None else now)).encode()
    out = []
    for key in keys:
        fields = [
            (b"v", b"1"), (b"a", key.a_tag), (b"c", b"relaxed/relaxed"), (b"d", key.domain.encode()),
            (b"s", key.selector.encode()), (b"t", stamp), (b"h", b": ".join(include)), (b"bh", body_hash),
            (b"b", b""),
        ]
        unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(b"DKIM-Signature"))
        h = hashlib.sha256()
        dkim.hash_headers(h, _CANON, canonical, include, (b"DKIM-Signature", b" " + unsigned), dict(fields))
        fields[-1] = (b"b", base64.b64encode(key.sign_digest(h.digest())))
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(b"DKIM-Signature"))
        out.append(b"DKIM-Signature: " + value)
    return b"".join(reversed(out))


@dataclass
class _DomainKeys:
    checked: float
    stamp: tuple[Any, ...]
    keys: list[SigningKey] = field(default_factory=list)


class DkimSigner:
    """Signs with the active keys of the From: domain (or of its nearest parent that has keys).

    Keys are read once and re-read within ``recheck`` seconds after a
    rotation (another process changes the files). Thread-safe; blocking.
    """

    def __init__(self, keys_dir: Path | str, *, recheck: float = 5.0) -> None:
        self.keys_dir = Path(keys_dir)
        self.recheck = recheck
        self._cache: dict[str, _DomainKeys] = {}
        self._lock = threading.Lock()

    def _stamp(self, domain: str) -> tuple[Any, ...]:
        directory = dkim_dir(self.keys_dir)
        out: list[Any] = []
        for p in (directory, _state_path(self.keys_dir, domain)):
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def keys(self, domain: str) -> list[SigningKey]:
        domain = domain.lower().rstrip(".")
        now = time.monotonic()
        hit = self._cache.get(domain)
        if hit is not None and now - hit.checked < self.recheck:
            return hit.keys
        stamp = self._stamp(domain)
        if hit is not None and hit.stamp == stamp:
            hit.checked = now
            return hit.keys
        loaded = self._load(domain)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[domain] = _DomainKeys(now, stamp, loaded)
        return loaded

    def _load(self, domain: str) -> list[SigningKey]:
        active = rotation_state(self.keys_dir, domain)["active"]
        out = []
        for k in key_files(self.keys_dir, domain):
            if k.generation != active:
                continue
            try:
                out.append(SigningKey(domain, k.selector, k.algorithm, _load_private(k.path.read_bytes(), k.algorithm)))
            except (OSError, ValueError, TypeError) as exc:
                log.error("DKIM key %s unusable: %s", k.path, exc)
        return out

    def keys_for_address_domain(self, domain: str) -> list[SigningKey]:
        """Keys of ``domain`` or of its closest parent domain that has any (relaxed DMARC alignment)."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            found = self.keys(".".join(labels[i:]))
            if found:
                return found
        return []

    def signatures(self, raw: bytes, *, now: float | None = None) -> bytes:
        """The DKIM-Signature fields for ``raw`` (b"" when no key applies)."""
        froms = hdrs.from_addresses(raw)
        if not froms or len(froms) != 1:
            return b""
        keys = self.keys_for_address_domain(froms[0].rpartition("@")[2].strip("<> "))
        if not keys:
            return b""
        try:
            return signature_fields(raw, keys, now=now)
        except (dkim.DKIMException, ValueError) as exc:
            log.warning("not DKIM-signed: %s", exc)
            return b""

    def sign(self, raw: bytes, *, now: float | None = None) -> bytes:
        """``raw`` with DKIM-Signature fields on top, or ``raw`` unchanged when no key applies."""
        return self.signatures(raw, now=now) + raw


_process_signer: DkimSigner | None = None


def _init_process(keys_dir: str) -> None:
    global _process_signer
    # Ctrl-C reaches the whole process group: the parent owns shutdown, a
    # signing worker must not die mid-job with a traceback on the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _process_signer = DkimSigner(keys_dir)
    parent = os.getppid()

    def watch() -> None:  # a signing process must not outlive the MTA (kill -9 leaves it blocked on its queue)
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _signatures_in_process(raw: bytes) -> bytes:
    assert _process_signer is not None
    return _process_signer.signatures(raw)


def _ping() -> int:
    return os.getpid()


class SigningPool:
    """``DkimSigner`` in ``processes`` worker processes (spawned, so nothing of this process is inherited).

    ``await pool.sign(raw)``; falls back to signing in a thread of this
    process if the pool breaks. The workers exit with this process.
    """

    def __init__(self, keys_dir: Path | str, processes: int) -> None:
        self.keys_dir = Path(keys_dir)
        self.local = DkimSigner(keys_dir)
        self.processes = max(1, processes)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = concurrent.futures.ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_process,
            initargs=(str(self.keys_dir),))

    async def start(self) -> None:
        """Spawn the workers now rather than at the first message."""
        if self._pool is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(self._pool, _ping) for _ in range(self.processes)))
        except Exception as exc:  # noqa: BLE001 - sign in this process instead
            log.warning("DKIM signing processes unavailable (%s); signing in threads", exc)
            self.close()

    async def sign(self, raw: bytes, executor: Any = None) -> bytes:
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            try:
                return await loop.run_in_executor(self._pool, _signatures_in_process, raw) + raw
            except concurrent.futures.process.BrokenProcessPool:
                log.warning("DKIM signing processes died; signing in threads from now on")
                self.close()
        return await loop.run_in_executor(executor, self.local.sign, raw)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def describe(keys_dir: Path | str, domain: str) -> dict[str, Any]:
    """Keys of ``domain`` with their state and DNS records (for ``appliance dkim show``)."""
    state = rotation_state(keys_dir, domain)
    roles = {state["active"]: "active", state["pending"]: "pending", state["previous"]: "previous"}
    keys = []
    for k in key_files(keys_dir, domain):
        with contextlib.suppress(OSError, ValueError, TypeError):
            keys.append({"selector": k.selector, "algorithm": k.algorithm, "generation": k.generation,
                         "state": roles.get(k.generation, "unused"), "name": f"{k.selector}._domainkey.{domain}",
                         "txt": k.txt_record(), "path": str(k.path)})
    return {"domain": domain, **state, "keys": keys}
