"""Create a new instance directory: config, master key, database, TLS, DKIM.

Used by ``appliance init`` (and so by ``make run``), by the installer and by
the tests. Refuses to touch a directory that already holds an instance.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_CONFIG_NAME, load_config, render_default_config
from .i18n import _

DEMO_PASSWORD_FILE = "demo-accounts.json"


class InstanceExistsError(Exception):
    pass


@dataclass
class NewInstance:
    path: Path
    config_path: Path
    domain: str
    hostname: str
    dkim_selector: str
    dkim_txt: str
    accounts: dict[str, str] = field(default_factory=dict)


def _password() -> str:
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(16))


def create_instance(
    path: Path,
    *,
    domain: str,
    hostname: str | None = None,
    dev: bool = False,
    demo_accounts: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> NewInstance:
    from storage.addresses import normalise_domain
    from storage.crypto import generate_master_key
    from storage.store import Store

    from .keys import generate_dkim_key, generate_self_signed_cert

    domain = normalise_domain(domain)
    hostname = hostname or f"mail.{domain}"
    path = Path(path).absolute()
    config_path = path / DEFAULT_CONFIG_NAME
    if config_path.exists() or (path / "keys" / "master.key").exists() or (path / "index.sqlite3").exists():
        raise InstanceExistsError(_("an instance already exists in {path}; refusing to overwrite it").format(path=path))
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o750)
    for sub in ("keys", "tls", "mail", "run", "log"):
        (path / sub).mkdir(mode=0o700, exist_ok=True)
    overrides: dict[str, Any] = {"instance.hostname": hostname, "instance.dev": dev, "instance.name": "dev" if dev else hostname}
    overrides.update(config_overrides or {})
    config_text = render_default_config(**overrides)
    generate_master_key(path / "keys" / "master.key")
    generate_self_signed_cert(path / "tls" / "cert.pem", path / "tls" / "key.pem", hostname)
    selector = "s1"
    dkim = generate_dkim_key(path / "keys" / "dkim" / f"{domain}.{selector}.ed25519.key", "ed25519")
    generate_dkim_key(path / "keys" / "dkim" / f"{domain}.{selector}r.rsa.key", "rsa")
    tmp = config_path.with_suffix(".tmp")
    tmp.write_text(config_text, encoding="utf-8")
    os.replace(tmp, config_path)
    cfg = load_config(config_path)
    store = Store.from_config(cfg, create_schema=True)
    try:
        store.directory.add_domain(domain)
        store.set_setting("instance.created_domain", domain)
        result = NewInstance(path, config_path, domain, hostname, selector, getattr(dkim, "txt_record", str(dkim)))
        if demo_accounts:
            for local, name, admin in (("admin", "Administrator", True), ("alice", "Alice", False), ("bob", "Bob", False)):
                pw = _password()
                email = f"{local}@{domain}"
                store.create_user(email, password=pw, name=name)
                if admin:
                    store.directory.add_admin(email, "super")
                result.accounts[email] = pw
            demo = path / DEMO_PASSWORD_FILE
            fd = os.open(demo, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(result.accounts, f, indent=2)
        store.events.admin("appliance init", "instance.create", domain)
    finally:
        store.close()
    return result
