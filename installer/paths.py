"""Where a production install puts things; every path under ``root`` (``--root DIR`` for tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSTEM_USER = "appliance"


@dataclass(frozen=True)
class Layout:
    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def fake_root(self) -> bool:
        return self.root.resolve() != Path("/")

    # /etc/appliance: configuration, credentials, certificate (owned by root, read by the services)
    @property
    def etc(self) -> Path:
        return self.at("/etc/appliance")

    @property
    def config(self) -> Path:
        return self.etc / "appliance.toml"

    @property
    def credentials(self) -> Path:
        return self.etc / "credentials"

    @property
    def master_key(self) -> Path:
        return self.credentials / "master.key"

    @property
    def tls(self) -> Path:
        return self.etc / "tls"

    # /var/lib/appliance: the store (index, encrypted mail, account and DKIM keys, queue)
    @property
    def data(self) -> Path:
        return self.at("/var/lib/appliance")

    @property
    def keys(self) -> Path:
        return self.data / "keys"

    @property
    def backups(self) -> Path:
        return self.data / "backups"

    @property
    def report(self) -> Path:
        return self.data / "install-report.json"

    @property
    def dns_records(self) -> Path:
        return self.data / "dns-records.txt"

    @property
    def state(self) -> Path:
        return self.data / ".installer-state.json"

    @property
    def log(self) -> Path:
        return self.at("/var/log/appliance")

    @property
    def units(self) -> Path:
        return self.at("/etc/systemd/system")

    @property
    def command_link(self) -> Path:
        return self.at("/usr/local/sbin/appliance")

    def master_key_setting(self) -> str:
        """storage.master_key_file: the systemd credential for the services, the file for the operator."""
        return "${CREDENTIALS_DIRECTORY:-" + str(self.credentials) + "}/master.key"
