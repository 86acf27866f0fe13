"""The steps of ``appliance install`` that change the host. Each is safe to run again.

Every step compares what is there with what should be, changes only what
differs and says so (created / repaired / kept); it never replaces data: an
existing master key, certificate, DKIM key, database or admin is kept, and an
appliance.toml the operator edited is left alone (the installer's version
goes next to it as appliance.toml.new). With ``dry_run`` nothing is written;
the notes say what would be done.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pwd
import secrets
import ssl
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.i18n import _

from .paths import SYSTEM_USER, Layout

PRODUCTION_LISTENERS: dict[str, dict[str, str]] = {
    "mx": {"protocol": "smtp", "bind": "0.0.0.0:25", "tls": "starttls"},
    "submission": {"protocol": "submission", "bind": "0.0.0.0:587", "tls": "starttls"},
    "submissions": {"protocol": "submission", "bind": "0.0.0.0:465", "tls": "implicit"},
    "imap": {"protocol": "imap", "bind": "0.0.0.0:143", "tls": "starttls"},
    "imaps": {"protocol": "imap", "bind": "0.0.0.0:993", "tls": "implicit"},
    "pop3": {"protocol": "pop3", "bind": "0.0.0.0:110", "tls": "starttls"},
    "pop3s": {"protocol": "pop3", "bind": "0.0.0.0:995", "tls": "implicit"},
    "panel": {"protocol": "http", "bind": "0.0.0.0:443", "tls": "implicit"},
}
DKIM_SELECTORS = (("s1", "ed25519"), ("s1r", "rsa"))


class InstallError(Exception):
    """A step cannot go on: ``str()`` says what is wrong, ``fix`` what to do."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


@dataclass
class InstallOptions:
    domain: str
    hostname: str | None = None
    licence: Path | None = None
    dry_run: bool = False
    root: Path = Path("/")
    yes: bool = False
    mailboxes: int = 25
    admin: str | None = None
    admin_password_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    database_url: str = ""
    language: str = "en"


@dataclass
class StepLog:
    """What a step did, for the lines under its progress line."""

    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    changed: bool = False
    warnings: int = 0
    status: str | None = None  # the progress line's word when not derived from the above

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warn(self, text: str) -> None:
        self.warnings += 1
        self.notes.append(_("warning: {text}").format(text=text))

    def act(self, done: str, would: str, fn: Callable[[], Any] | None = None) -> Any:
        """Do ``fn`` (unless dry run) and note ``done``; in a dry run note ``would``."""
        self.changed = True
        if self.dry_run:
            self.notes.append(would)
            return None
        result = fn() if fn is not None else None
        self.notes.append(done)
        return result


@dataclass
class Context:
    opts: InstallOptions
    layout: Layout
    log: StepLog = field(default_factory=StepLog)
    owner: tuple[int, int] | None = None  # uid, gid of the system user; None under --root
    survey: Any = None
    sizing: Any = None
    licence_text: str | None = None
    licence_status: Any = None
    licence_kw: dict[str, Any] = field(default_factory=dict)  # fingerprint=, public_key= for the seat checks
    admin_email: str = ""
    admin_password: str | None = None  # only when this run created the admin
    dkim: list[Any] = field(default_factory=list)
    cert_summary: str = ""
    services_started: bool = False
    checks: Any = None  # the preflight findings (BufferedOutput)
    zone: str = ""  # the DNS records, zone-file text

    @property
    def domain(self) -> str:
        return self.opts.domain

    @property
    def hostname(self) -> str:
        return self.opts.hostname or f"mail.{self.opts.domain}"


# ---------------------------------------------------------------- user and directories


def ensure_user(ctx: Context) -> None:
    log = ctx.log
    if ctx.layout.fake_root:
        log.note(_("system user '{user}': skipped under --root; files stay owned by the user running the installer").format(user=SYSTEM_USER))
        return
    try:
        pw = pwd.getpwnam(SYSTEM_USER)
        log.note(_("system user '{user}' exists (uid {uid})").format(user=SYSTEM_USER, uid=pw.pw_uid))
    except KeyError:
        def create() -> None:
            r = subprocess.run(["useradd", "--system", "--user-group", "--home-dir", str(ctx.layout.data), "--no-create-home",
                                "--shell", "/usr/sbin/nologin", "--comment", "Mail appliance", SYSTEM_USER],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise InstallError(_("useradd failed: {error}").format(error=r.stderr.strip()), _("create the user by hand: useradd --system appliance"))

        log.act(_("created the system user '{user}'").format(user=SYSTEM_USER),
                _("would create the system user '{user}' (useradd --system)").format(user=SYSTEM_USER), create)
        if ctx.opts.dry_run:
            return
        pw = pwd.getpwnam(SYSTEM_USER)
    ctx.owner = (pw.pw_uid, pw.pw_gid)


def _directories(ctx: Context) -> list[tuple[Path, int, str]]:
    """(path, mode, owner) with owner "root", "group" (root:appliance) or "user" (appliance:appliance)."""
    L = ctx.layout
    return [
        (L.etc, 0o755, "root"),
        (L.credentials, 0o700, "user"),
        (L.tls, 0o750, "group"),
        (L.data, 0o750, "user"),
        (L.keys, 0o700, "user"),
        (L.data / "mail", 0o700, "user"),
        (L.data / "queue", 0o700, "user"),
        (L.data / "run", 0o700, "user"),
        (L.backups, 0o700, "user"),
        (L.log, 0o750, "user"),
    ]


def _ids(ctx: Context, who: str) -> tuple[int, int] | None:
    if ctx.owner is None:
        return None
    return {"root": (0, 0), "group": (0, ctx.owner[1]), "user": ctx.owner}[who]


def set_owner_mode(ctx: Context, path: Path, mode: int, who: str) -> None:
    """Repair mode and owner of one path, noting each change."""
    st = path.lstat()
    if stat.S_IMODE(st.st_mode) != mode:
        ctx.log.act(_("set mode {mode:04o} on {path} (was {old:04o})").format(mode=mode, path=path, old=stat.S_IMODE(st.st_mode)),
                    _("would set mode {mode:04o} on {path}").format(mode=mode, path=path), lambda: os.chmod(path, mode))
    ids = _ids(ctx, who)
    if ids is not None and (st.st_uid, st.st_gid) != ids:
        ctx.log.act(_("set owner of {path}").format(path=path), _("would set owner of {path}").format(path=path),
                    lambda: os.chown(path, *ids, follow_symlinks=False))


def ensure_directories(ctx: Context) -> None:
    for path, mode, who in _directories(ctx):
        if not path.is_dir():
            def make(p: Path = path, m: int = mode) -> None:
                p.mkdir(parents=True, exist_ok=True)
                os.chmod(p, m)

            ctx.log.act(_("created {path} ({mode:04o})").format(path=path, mode=mode),
                        _("would create {path} ({mode:04o})").format(path=path, mode=mode), make)
        if path.is_dir():
            set_owner_mode(ctx, path, mode, who)
    if not ctx.log.changed:
        ctx.log.note(_("directories in place with the right owners and modes"))


def fix_data_ownership(ctx: Context) -> None:
    """Hand back to the system user whatever root created in the data directory (a CLI run as root)."""
    if ctx.owner is None or ctx.opts.dry_run:
        return
    uid, gid = ctx.owner
    fixed = 0
    for root, dirs, files in os.walk(ctx.layout.data):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(p, uid, gid, follow_symlinks=False)
                fixed += 1
    if fixed:
        ctx.log.changed = True
        ctx.log.note(_("gave {n} files in {path} back to '{user}'").format(n=fixed, path=ctx.layout.data, user=SYSTEM_USER))


# ---------------------------------------------------------------- keys and certificates


def _has_mail(ctx: Context) -> bool:
    keys = ctx.layout.keys
    account_keys = [p for p in keys.iterdir() if p.name != "dkim"] if keys.is_dir() else []
    return (ctx.layout.data / "index.sqlite3").exists() or bool(account_keys)


def ensure_master_key(ctx: Context) -> None:
    from storage.crypto import KEY_SIZE, generate_master_key

    path = ctx.layout.master_key
    if path.exists():
        if path.stat().st_size != KEY_SIZE:
            raise InstallError(_("{path} is not a master key ({n} bytes, expected {size})").format(path=path, n=path.stat().st_size, size=KEY_SIZE),
                               _("restore the master key from your key backup"))
        ctx.log.note(_("master key kept: {path}").format(path=path))
    elif _has_mail(ctx):
        raise InstallError(_("the master key {path} is missing but {data} holds mail; a new key would leave that mail unreadable").format(
            path=path, data=ctx.layout.data), _("restore the master key from your key backup to {path}, then run the installer again").format(path=path))
    else:
        ctx.log.act(_("created the master key {path} (back it up apart from the data)").format(path=path),
                    _("would create the master key {path}").format(path=path), lambda: generate_master_key(path))
    if path.exists():
        set_owner_mode(ctx, path, 0o600, "user")


def _cert_summary(cert_path: Path) -> tuple[str, Any]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    self_signed = cert.issuer == cert.subject
    cn = ", ".join(a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)) or "?"
    expires = cert.not_valid_after_utc.date()
    issuer = _("self-signed") if self_signed else _("issued by {issuer}").format(issuer=cert.issuer.rfc4514_string())
    return _("certificate for {cn}, {issuer}, valid until {date}").format(cn=cn, issuer=issuer, date=expires), cert


def _check_import(cert: Path, key: Path, hostname: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InstallError(_("cannot use --cert {cert} with --key {key}: {error}").format(cert=cert, key=key, error=getattr(exc, "strerror", None) or exc),
                           _("give a PEM certificate chain and its PEM private key")) from None
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        raise InstallError(_("the certificate {cert} expired on {date}").format(cert=cert, date=leaf.not_valid_after_utc.date()),
                           _("renew it, then run the installer again"))


def ensure_tls(ctx: Context) -> None:
    from appliance.keys import _write_new_file, generate_self_signed_cert, write_secret_file

    cert_path, key_path = ctx.layout.tls / "cert.pem", ctx.layout.tls / "key.pem"
    opts = ctx.opts
    if bool(opts.cert) != bool(opts.key):
        raise InstallError(_("--cert and --key go together"), _("give both, or neither for a self-signed certificate"))
    if opts.cert and opts.key:
        _check_import(opts.cert, opts.key, ctx.hostname)
        new_cert, new_key = opts.cert.read_bytes(), opts.key.read_bytes()
        same = cert_path.exists() and key_path.exists() and cert_path.read_bytes() == new_cert and key_path.read_bytes() == new_key
        if not same:
            def install() -> None:
                stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
                for p in (cert_path, key_path):
                    if p.exists():
                        os.replace(p, p.with_name(f"{p.name}.old-{stamp}"))
                write_secret_file(key_path, new_key)
                _write_new_file(cert_path, new_cert, 0o644)

            ctx.log.act(_("installed the certificate {cert} and its key").format(cert=opts.cert),
                        _("would install the certificate {cert} and its key").format(cert=opts.cert), install)
    elif cert_path.exists() and key_path.exists():
        pass
    else:
        if cert_path.exists() != key_path.exists():
            raise InstallError(_("only one of {cert} and {key} exists").format(cert=cert_path, key=key_path),
                               _("restore the other one, or remove both to get a new self-signed certificate"))
        ctx.log.act(_("created a self-signed certificate for {host}: mail clients will warn until you install one from a CA (--cert/--key)").format(host=ctx.hostname),
                    _("would create a self-signed certificate for {host}").format(host=ctx.hostname),
                    lambda: generate_self_signed_cert(cert_path, key_path, ctx.hostname))
    if cert_path.exists():
        summary, cert = _cert_summary(cert_path)
        ctx.cert_summary = summary
        ctx.log.note(summary)
        from cryptography import x509

        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        if ctx.hostname not in names:
            ctx.log.warn(_("the certificate does not name {host}; clients will refuse it").format(host=ctx.hostname))
        set_owner_mode(ctx, key_path, 0o600, "user")
        set_owner_mode(ctx, cert_path, 0o644, "root")


def ensure_dkim(ctx: Context) -> None:
    from appliance.keys import generate_dkim_key

    from .dnsrecords import dkim_keys

    existing = dkim_keys(ctx.layout.keys, ctx.domain)
    if existing:
        ctx.log.note(_("DKIM keys of {domain} kept: {selectors}").format(domain=ctx.domain, selectors=", ".join(k.selector for k in existing)))
    else:
        for selector, algorithm in DKIM_SELECTORS:
            path = ctx.layout.keys / "dkim" / f"{ctx.domain}.{selector}.{algorithm}.key"
            ctx.log.act(_("created the DKIM key {selector} ({algorithm}) for {domain}").format(selector=selector, algorithm=algorithm, domain=ctx.domain),
                        _("would create the DKIM key {selector} ({algorithm}) for {domain}").format(selector=selector, algorithm=algorithm, domain=ctx.domain),
                        lambda p=path, a=algorithm: generate_dkim_key(p, a))
    ctx.dkim = dkim_keys(ctx.layout.keys, ctx.domain)


# ---------------------------------------------------------------- configuration


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def read_state(layout: Layout) -> dict[str, Any]:
    try:
        return json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return {}


def write_state(ctx: Context, **updates: Any) -> None:
    if ctx.opts.dry_run:
        return
    state = read_state(ctx.layout)
    state.update(updates)
    write_file(ctx.layout.state, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o600)


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically (tmp + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def desired_config(ctx: Context) -> str:
    from appliance.config import render_default_config

    from .sizing import annotate

    L = ctx.layout
    overrides: dict[str, Any] = {
        "instance.name": ctx.hostname,
        "instance.hostname": ctx.hostname,
        "instance.dev": False,
        "instance.data_dir": str(L.data),
        "instance.language": ctx.opts.language,
        "storage.database_url": ctx.opts.database_url,
        "storage.master_key_file": L.master_key_setting(),
        "tls.cert_file": str(L.tls / "cert.pem"),
        "tls.key_file": str(L.tls / "key.pem"),
        "listeners": PRODUCTION_LISTENERS,
        **ctx.sizing.overrides(),
    }
    notes = dict(ctx.sizing.reasons)
    notes["storage.master_key_file"] = _("the services get the key as a systemd credential (LoadCredential=); "
                                         "commands run by the operator read the file")
    return annotate(render_default_config(**overrides), notes)


def ensure_config(ctx: Context) -> None:
    """Write appliance.toml when it is missing or still as the installer wrote it; keep an edited one."""
    path = ctx.layout.config
    desired = desired_config(ctx)
    state = read_state(ctx.layout)
    if not path.exists():
        ctx.log.act(_("wrote {path}").format(path=path), _("would write {path}").format(path=path), lambda: write_file(path, desired, 0o640))
    else:
        current = path.read_bytes()
        if current == desired.encode():
            ctx.log.note(_("{path} is up to date").format(path=path))
        elif _sha(current) == state.get("config_sha256"):
            ctx.log.act(_("updated {path} (you had not edited it)").format(path=path), _("would update {path}").format(path=path),
                        lambda: write_file(path, desired, 0o640))
        else:
            new = path.with_name(path.name + ".new")
            if not new.exists() or new.read_text(encoding="utf-8") != desired:
                ctx.log.act(_("kept your edited {path}; the installer's version is in {new}: compare them with diff").format(path=path, new=new),
                            _("would keep your edited {path} and write the installer's version to {new}").format(path=path, new=new),
                            lambda: write_file(new, desired, 0o640))
            else:
                ctx.log.note(_("kept your edited {path}; the installer's version is in {new}").format(path=path, new=new))
    if path.exists() and not ctx.opts.dry_run:
        set_owner_mode(ctx, path, 0o640, "group")
        if path.read_bytes() == desired.encode():
            write_state(ctx, config_sha256=_sha(path.read_bytes()))
        from appliance.config import ConfigError, load_config

        try:
            load_config(path)
        except ConfigError as exc:
            raise InstallError(str(exc), _("correct {path} and run the installer again").format(path=path)) from None


# ---------------------------------------------------------------- database, domain, first admin


def _read_password_file(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(_("cannot read {path}: {reason}").format(path=path, reason=getattr(exc, "strerror", None) or exc),
                           _("give a file whose first line is the password")) from None
    pw = lines[0].strip() if lines else ""
    if len(pw) < 10:
        raise InstallError(_("the admin password in {path} is shorter than 10 characters").format(path=path),
                           _("choose a longer password")) from None
    return pw


def _password() -> str:
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4))


def ensure_database(ctx: Context) -> None:
    from appliance.config import load_config
    from appliance.licence_hook import SETTING, check_domain, check_seat
    from storage import db
    from storage.errors import ConflictError, NotFoundError, StoreError
    from storage.store import Store

    from .upgrade import database_url, migrate

    ctx.admin_email = (ctx.opts.admin or f"admin@{ctx.domain}").lower()
    if ctx.opts.dry_run:
        ctx.log.changed = True
        ctx.log.note(_("would create or update the database, the domain {domain} and the admin {admin}").format(
            domain=ctx.domain, admin=ctx.admin_email))
        return
    cfg = load_config(ctx.layout.config)
    url = database_url(cfg)
    engine = db.make_engine(url)
    try:
        fresh = not db.has_schema(engine)
        current, head = (None, None) if fresh else (db.current_revision(engine), db.head_revision(engine))
    finally:
        engine.dispose()
    if current != head:
        result = migrate(url, ctx.layout.backups)
        ctx.log.act(_("migrated the database from {old} to {new} (backup {backup})").format(old=result.old, new=result.new, backup=result.backup), "")
    store = Store.from_config(cfg, create_schema=fresh)
    try:
        if fresh:
            ctx.log.act(_("created the database ({kind})").format(kind=url.split(":", 1)[0]), "")
        if ctx.licence_text is not None and store.get_setting(SETTING) != ctx.licence_text:
            ctx.log.act(_("installed the licence {id}").format(id=ctx.licence_status.licence.id), "",
                        lambda: store.set_setting(SETTING, ctx.licence_text))
            store.events.admin("appliance install", "licence.install", ctx.licence_status.licence.id)
        try:
            store.directory.get_domain(ctx.domain)
        except NotFoundError:
            try:
                check_domain(store, ctx.domain, **ctx.licence_kw)
            except StoreError as exc:
                raise InstallError(str(exc), _("install the licence first: appliance licence install FILE")) from None
            ctx.log.act(_("added the domain {domain}").format(domain=ctx.domain), "", lambda: store.directory.add_domain(ctx.domain))
            if fresh:
                store.set_setting("instance.created_domain", ctx.domain)
        user = store.directory.find_user(ctx.admin_email)
        if user is None:
            password = _read_password_file(ctx.opts.admin_password_file) if ctx.opts.admin_password_file else _password()
            try:
                check_seat(store, ctx.admin_email, **ctx.licence_kw)
                store.create_user(ctx.admin_email, password=password, name="Administrator")
                store.directory.add_admin(ctx.admin_email, "super")
            except StoreError as exc:
                raise InstallError(_("cannot create the admin {admin}: {error}").format(admin=ctx.admin_email, error=exc),
                                   _("pass another --admin address")) from None
            ctx.admin_password = None if ctx.opts.admin_password_file else password
            ctx.log.act(_("created the admin {admin}").format(admin=ctx.admin_email), "")
            for local in ("postmaster", "abuse"):
                alias = f"{local}@{ctx.domain}"
                if alias != ctx.admin_email and store.directory.find_user(alias) is None:
                    try:
                        store.directory.add_alias(alias, ctx.admin_email)
                        ctx.log.note(_("{alias} delivers to {admin}").format(alias=alias, admin=ctx.admin_email))
                    except (ConflictError, StoreError):
                        pass
        else:
            if not store.directory.list_admins(ctx.admin_email):
                store.directory.add_admin(ctx.admin_email, "super")
                ctx.log.act(_("made {admin} an administrator").format(admin=ctx.admin_email), "")
            ctx.log.note(_("admin {admin} kept; password unchanged").format(admin=ctx.admin_email))
        store.events.admin("appliance install", "instance.install", ctx.domain, detail={"hostname": ctx.hostname})
    finally:
        store.close()
    if not ctx.log.changed:
        ctx.log.note(_("database up to date"))


# ---------------------------------------------------------------- the distribution's own spam daemons

# Installing Debian's rspamd and redis-server packages (the managed antispam runs their programs) also
# enables their own units: rspamd.service takes 11332-11334, our managed rspamd's default ports, and
# redis-server.service runs a second, password-less redis on 6379 that nothing uses. unbound.service is
# left alone: it may be the host's own resolver, and ours listens on another port (antispam.dns_port).
# With antispam.virus_scan, clamav-daemon.service would load a second copy of the signatures (about
# 1.5 GB); clamav-freshclam.service stays: it keeps the signatures our clamd reads up to date.
DISTRIBUTION_UNITS = ("rspamd.service", "redis-server.service")
VIRUS_UNITS = ("clamav-daemon.service",)


def _unit_state(systemctl: Callable[..., tuple[bool, str]], verb: str, unit: str) -> str:
    _ok, detail = systemctl(verb, unit)
    return detail.strip()


def release_distribution_units(ctx: Context, systemctl: Callable[..., tuple[bool, str]]) -> list[str]:
    """Stop, disable and mask Debian's rspamd.service and redis-server.service if the managed antispam is on.

    Masked, not only disabled: a package upgrade or a dependency could start a disabled unit again and
    take the ports back. Returns the units this run masked (``appliance uninstall`` unmasks them).
    Needs systemd; the caller decides whether it runs.
    """
    from appliance.config import ConfigError, load_config

    if not ctx.layout.config.exists():
        return []  # a dry run of a first install
    try:
        a = load_config(ctx.layout.config).antispam
    except (ConfigError, OSError):
        return []  # ensure_config has said what is wrong
    if not (a.enabled and a.managed):
        ctx.log.note(_("antispam is not managed by the appliance: left {units} alone").format(units=", ".join(DISTRIBUTION_UNITS)))
        return []
    masked = []
    for unit in DISTRIBUTION_UNITS + (VIRUS_UNITS if a.virus_scan else ()):
        state = _unit_state(systemctl, "is-enabled", unit)
        if state in ("", "not-found") or "No such file" in state or "not found" in state or "does not exist" in state:
            continue  # the package is not installed
        if state.startswith("masked"):
            if _unit_state(systemctl, "is-active", unit) in ("active", "activating", "reloading"):
                ctx.log.act(_("stopped {unit} (masked, but still running)").format(unit=unit),
                            _("would stop {unit}").format(unit=unit), lambda u=unit: _must(systemctl, "stop", u))
            else:
                ctx.log.note(_("{unit} stays masked (the appliance runs its own)").format(unit=unit))
            continue

        def release(u: str = unit) -> None:
            _must(systemctl, "disable", "--now", u)
            _must(systemctl, "mask", u)

        ctx.log.act(_("stopped, disabled and masked {unit}: the appliance runs its own").format(unit=unit),
                    _("would stop, disable and mask {unit}").format(unit=unit), release)
        masked.append(unit)
    if masked and not ctx.opts.dry_run:
        earlier = read_state(ctx.layout).get("masked_units", [])
        write_state(ctx, masked_units=sorted({*earlier, *masked}))
    return masked


def _must(systemctl: Callable[..., tuple[bool, str]], *args: str) -> None:
    ok, detail = systemctl(*args)
    if not ok:
        raise InstallError(_("systemctl {args} failed: {detail}").format(args=" ".join(args), detail=detail),
                           _("stop it by hand (systemctl disable --now {unit}; systemctl mask {unit}) and run the installer "
                             "again: it would take the ports of the appliance's own rspamd").format(unit=args[-1]))
