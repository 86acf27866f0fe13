"""Where the antispam service keeps its files inside an instance.

``<data_dir>/spam/`` holds what is generated from appliance.toml and what
the daemons write (not ``antispam/``: a directory named like our package,
in the current directory, would shadow it for ``python -m appliance``); the sockets and pid files go to ``<data_dir>/run`` and the
daemons' logs to ``<data_dir>/log``, like the rest of the instance.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Layout:
    root: Path  # <data_dir>/spam
    run: Path  # <data_dir>/run
    log: Path  # <data_dir>/log
    password_file: Path  # the controller password (plain text, 0600)

    @classmethod
    def from_config(cls, cfg: Any) -> Layout:
        data = Path(cfg.instance.data_dir)
        return cls(root=data / "spam", run=data / "run", log=data / "log",
                   password_file=Path(cfg.antispam.controller_password_file))

    @property
    def conf(self) -> Path:
        """rspamd's LOCAL_CONFDIR: local.d/ and override.d/ are generated; rspamd.conf.override is the admin's."""
        return self.root / "conf"

    @property
    def db(self) -> Path:
        """rspamd's DBDIR (compiled regexp cache, history)."""
        return self.root / "db"

    @property
    def rspamd_run(self) -> Path:
        return self.run / "rspamd"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_conf(self) -> Path:
        return self.root / "redis.conf"

    @property
    def redis_socket(self) -> Path:
        return self.run / "antispam-redis.sock"

    @property
    def redis_password_file(self) -> Path:
        return self.root / "redis.password"

    @property
    def unbound_conf(self) -> Path:
        return self.root / "unbound.conf"

    @property
    def daemons_file(self) -> Path:
        """The pids (and start times) of the daemons this instance's antispam service runs (antispam.ports)."""
        return self.run / "antispam-daemons.json"

    @property
    def clamd_conf(self) -> Path:
        return self.root / "clamd.conf"

    @property
    def clamd_socket(self) -> Path:
        return self.run / "antispam-clamd.sock"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def make_dirs(self) -> None:
        for d in (self.root, self.conf, self.conf / "local.d", self.conf / "override.d", self.db, self.redis_dir,
                  self.run, self.rspamd_run, self.log, self.quarantine):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_if_changed(path: Path, text: str, mode: int = 0o600) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds it; True if it changed."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            if (path.stat().st_mode & 0o777) != mode:
                os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def read_or_create_secret(path: Path) -> str:
    """The secret in ``path`` (first line), created as a random token with mode 0600 when missing."""
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    write_if_changed(path, value + "\n", 0o600)
    return value
