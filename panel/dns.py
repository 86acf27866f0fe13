"""DKIM keys of a domain: listing, creating, and the DNS records to publish.

Keys live in ``<keys_dir>/dkim/<domain>.<selector>.<algorithm>.key`` as
``appliance init`` writes them (``appliance.keys.generate_dkim_key``). The
records and the key listing are the installer's (``installer.dnsrecords``),
so the panel, ``appliance doctor`` and the installer show the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path

from appliance.keys import generate_dkim_key
from installer.dnsrecords import DkimKeyInfo, DnsRecord, dkim_keys, expected_records

SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ALGORITHMS = ("ed25519", "rsa")


def dkim_dir(keys_dir: Path) -> Path:
    return Path(keys_dir) / "dkim"


def list_keys(keys_dir: Path, domain: str) -> list[DkimKeyInfo]:
    """Blocking (reads key files): run in a thread."""
    return dkim_keys(keys_dir, domain)


def new_key(keys_dir: Path, domain: str, selector: str, algorithm: str) -> DkimKeyInfo:
    """Raise ValueError for a bad selector/algorithm, FileExistsError if that selector exists."""
    if not SELECTOR_RE.fullmatch(selector or ""):
        raise ValueError("bad selector")
    if algorithm not in ALGORITHMS:
        raise ValueError("bad algorithm")
    for other in ALGORITHMS:
        if (dkim_dir(keys_dir) / f"{domain}.{selector}.{other}.key").exists():
            raise FileExistsError(selector)
    key = generate_dkim_key(dkim_dir(keys_dir) / f"{domain}.{selector}.{algorithm}.key", algorithm)
    return DkimKeyInfo(selector, algorithm, key.txt_record)


def records(domain: str, hostname: str, keys: list[DkimKeyInfo], services: list[str]) -> list[DnsRecord]:
    return expected_records(domain, hostname, dkim=keys, services=services)
