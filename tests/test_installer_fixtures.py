"""Helpers for the installer and licence tests (no tests here).

A fixed host survey, probes that report a healthy host, a test vendor key
pair and licences signed with it, and an in-process ``appliance install``
into a fake root.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from installer.checks import Probes
from installer.fingerprint import Fingerprint, hash_component
from installer.install import Hooks, run_install
from installer.licence import issue, make_request
from installer.provision import InstallOptions
from installer.survey import CpuInfo, DiskInfo, MemoryInfo, NicInfo, Survey

G = 1024**3
HOST = {"cpu": "Intel Xeon E-2388G", "machine": "4c4c4544-0042-3510-8051-b4c04f563532",
        "nics": "3c:ec:ef:10:20:30", "disk": "S5GXNF0R123456"}
FINGERPRINT = {name: hash_component(name, value) for name, value in HOST.items()}


def fake_survey(*, free: int = 500 * G, memory: int = 16 * G, python: str = "3.11.2", os_id: str = "debian", **_kw: Any) -> Survey:
    disk = DiskInfo("/", "/dev/sda2", "ext4", 1000 * G, free)
    return Survey(
        hostname="mx1", fqdn="mx1.example.com", cpu=CpuInfo(HOST["cpu"], 8, 16, 3200.0),
        memory=MemoryInfo(memory, memory // 2, 0), disks=[disk], data_disk=disk,
        nics=[NicInfo("eno1", HOST["nics"], ["203.0.113.25", "2001:db8::25", "fe80::1%eno1"], True, 1000)],
        ignored_nics=["lo", "docker0"], os={"id": os_id, "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        kernel="6.1.0-18-amd64", architecture="x86_64", python=python, sqlite="3.40.1", collected_at="2025-01-01T00:00:00+00:00",
    )


def good_probes(**overrides: Any) -> Probes:
    p = Probes(port_in_use=lambda port: None, resolve=lambda name: ["203.0.113.25"], clock=lambda: (True, "timedatectl"),
               package_installed=lambda name: True, install_packages=lambda names: (True, ""), is_root=lambda: True,
               executables=lambda: ["/opt/appliance/bin/python3.11", "/opt/appliance/bin/appliance"])
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


class VendorKey:
    """A vendor key pair of the tests' own, and licences signed with it."""

    def __init__(self) -> None:
        self.private = ed25519.Ed25519PrivateKey.generate()
        self.public = self.private.public_key()

    def write_public(self, path: Path) -> Path:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        path.write_text(base64.b64encode(raw).decode())
        return path

    def write_private(self, path: Path) -> Path:
        path.write_bytes(self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        return path

    def licence(self, *, domains: tuple[str, ...] = ("example.com",), mailboxes: int = 50, days: int = 365,
                fingerprint: dict[str, str] | None = None, issued: datetime.date | None = None) -> str:
        req = make_request(organisation="Example Ltd", domains=domains, mailboxes=mailboxes,
                           fingerprint=fingerprint or FINGERPRINT, hostname="mail.example.com")
        return json.dumps(issue(req, self.private, days=days, today=issued))


def hooks(vendor: VendorKey | None = None, **overrides: Any) -> Hooks:
    h = Hooks(survey=lambda **kw: fake_survey(), probes=good_probes(), fingerprint=lambda: Fingerprint(dict(FINGERPRINT)),
              licence_public_key=vendor.public if vendor else None, systemd_running=lambda layout: False)
    for k, v in overrides.items():
        setattr(h, k, v)
    return h


def install(root: Path, hooks_: Hooks | None = None, **opts: Any) -> tuple[int, str]:
    out = io.StringIO()
    options = InstallOptions(domain=opts.pop("domain", "example.com"), root=root, yes=True, **opts)
    rc = run_install(options, hooks_ or hooks(), stream=out)
    return rc, out.getvalue()


def config_path(root: Path) -> Path:
    return root / "etc/appliance/appliance.toml"


def open_store(root: Path):  # type: ignore[no-untyped-def]
    from appliance.config import load_config
    from storage.store import Store

    return Store.from_config(load_config(config_path(root)))


def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> tuple[int, str, str]:
    """``appliance ARGS`` in this process (the imports are paid once): (exit code, stdout, stderr)."""
    import contextlib
    import os
    import sys

    from appliance.cli import main
    from appliance.i18n import set_language

    set_language(None)  # a previous command may have set the language of its instance
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    old_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
    finally:
        set_language(None)
        sys.stdin = old_stdin
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, out.getvalue(), err.getvalue()
