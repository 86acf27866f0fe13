"""``appliance doctor``: is this instance healthy? One finding per check, each with a fix.

Sections: the system (schema, disk, queue, file owners), the licence, the
certificate, the services (every listener answers, rspamd answers), and the
DNS records of every domain, looked up with the configured resolver. The
same function feeds the CLI (console or JSON) and the panel's health page
(a BufferedOutput). Any error makes the command exit non-zero.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.i18n import _
from appliance.output import human_size

from . import i18n_zh  # noqa: F401 - registers the Chinese messages
from .checks import BufferedOutput
from .dnsrecords import Lookup, check_records, dkim_keys, expected_records, make_lookup
from .paths import SYSTEM_USER


def _connect(host: str, port: int, timeout: float = 2.0) -> bool:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_get(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the configured rspamd URL, on this host
            return r.read(200).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _addresses() -> tuple[list[str], list[str]]:
    from .survey import Survey, _nics

    nics, _ignored = _nics()
    s = Survey.__new__(Survey)
    s.nics = nics
    return s.global_addresses(4), s.global_addresses(6)


def _antispam_foreign(cfg: Any) -> list[Any]:
    """Listeners on the managed antispam's ports that the appliance did not start (antispam.ports)."""
    from antispam.ports import foreign

    return foreign(cfg)


@dataclass
class DoctorProbes:
    """How the doctor looks outside; tests replace parts."""

    connect: Callable[[str, int], bool] = _connect
    http_get: Callable[[str, float], str | None] = _http_get
    lookup: Lookup | None = None  # None: the resolvers of [dns]
    addresses: Callable[[], tuple[list[str], list[str]]] = _addresses
    licence_kw: dict[str, Any] | None = None  # fingerprint=, public_key= for tests
    antispam_foreign: Callable[[Any], list[Any]] = field(default_factory=lambda: _antispam_foreign)


def run_doctor(cfg: Any, out: BufferedOutput, *, dns: bool = True, probes: DoctorProbes | None = None) -> None:
    probes = probes or DoctorProbes()
    store = _system(cfg, out)
    try:
        if store is not None:
            _licence(store, out, probes)
        _certificate(cfg, out)
        _services(cfg, out, probes)
        if dns:
            domains = [d.name for d in store.directory.list_domains()] if store is not None else []
            _dns(cfg, domains, out, probes)
    finally:
        if store is not None:
            store.close()


# ---------------------------------------------------------------- system


def _system(cfg: Any, out: BufferedOutput) -> Any:
    from storage import db
    from storage.errors import StoreError
    from storage.store import Store

    from .upgrade import database_url

    out.add_heading(_("System"))
    data = Path(cfg.instance.data_dir)
    store = None
    try:
        store = Store.from_config(cfg)
        current, head = db.current_revision(store.engine), db.head_revision(store.engine)
        if current == head:
            out.print_ok(_("database schema {rev} is current").format(rev=current), check="schema")
        else:
            out.print_error(_("database schema {current} is behind {head}").format(current=current, head=head),
                            _("run: appliance upgrade"), check="schema")
    except (StoreError, OSError) as exc:
        out.print_error(_("cannot open the store at {url}: {error}").format(url=database_url(cfg), error=exc),
                        _("check the master key and the database (see the message)"), check="store")
    du = os.statvfs(data)
    free, total = du.f_bavail * du.f_frsize, du.f_blocks * du.f_frsize
    share = free / total if total else 0
    args = {"free": human_size(free), "total": human_size(total), "path": data}
    if free < 1024**3 or share < 0.02:
        out.print_error(_("only {free} free of {total} on {path}: mail will soon be refused").format(**args),
                        _("free space or grow the disk now"), check="disk")
    elif share < 0.10:
        out.print_warning(_("{free} free of {total} on {path}").format(**args), _("plan more disk space"), check="disk")
    else:
        out.print_ok(_("{free} free of {total} on {path}").format(**args), check="disk")
    _queue(cfg, data / "queue", out)
    _owners(data, out)
    return store


def _queue(cfg: Any, queue: Path, out: BufferedOutput) -> None:
    if not queue.exists():
        out.print_ok(_("outbound queue is empty ({path} is created when the MTA first starts)").format(path=queue), check="queue")
        return
    if not (queue.is_dir() and os.access(queue, os.W_OK | os.X_OK)):
        out.print_error(_("the queue directory {path} is not writable").format(path=queue),
                        _("chown -R {user}:{user} {path}").format(user=SYSTEM_USER, path=queue), check="queue")
        return
    ready = [p for p in (queue / "ready").glob("*")] if (queue / "ready").is_dir() else []
    if not ready:
        out.print_ok(_("outbound queue is empty"), check="queue")
        return
    oldest = time.time() - min(p.stat().st_mtime for p in ready)
    args = {"n": len(ready), "age": _age(oldest)}
    if cfg.queue.delay_notice_after and oldest > cfg.queue.delay_notice_after:
        out.print_warning(_("{n} messages waiting in the outbound queue, the oldest for {age}").format(**args),
                          _("see why with: appliance log mail --result deferred"), check="queue")
    else:
        out.print_ok(_("{n} messages waiting in the outbound queue, the oldest for {age}").format(**args), check="queue")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _owners(data: Path, out: BufferedOutput) -> None:
    """Files the services cannot use because an operator command run as root created them."""
    owner = data.stat().st_uid
    if owner == 0:
        return  # a development instance or an install under --root: nothing to compare with
    wrong = []
    for p in [*data.iterdir(), *data.glob("keys/*"), *data.glob("keys/*/*"), *data.glob("mail/*")]:
        if p.lstat().st_uid != owner:
            wrong.append(p)
    if wrong:
        out.print_warning(_("{n} files in {path} belong to another user than the services', e.g. {example}").format(
            n=len(wrong), path=data, example=wrong[0]),
            _("chown -R {user}:{user} {path}, and run operator commands as: sudo -u {user} appliance ...").format(user=SYSTEM_USER, path=data),
            check="owners")
    else:
        out.print_ok(_("files in {path} belong to the services' user").format(path=data), check="owners")


# ---------------------------------------------------------------- licence


def _licence(store: Any, out: BufferedOutput, probes: DoctorProbes) -> None:
    from appliance.licence_hook import TRIAL_MAILBOXES, allowance

    out.add_heading(_("Licence"))
    a = allowance(store, **(probes.licence_kw or {}))
    active = store.directory.count_users(active_only=True)
    if a.mode == "licence":
        out.print_ok(a.describe() + _("; active mailboxes: {n}").format(n=active), check="licence")
        for w in a.status.warnings:
            out.print_warning(w, _("contact the vendor with: appliance licence request"), check="licence")
    elif a.reason:
        out.print_error(_("the installed licence is not valid: {reason}; running with the trial limits").format(reason=a.reason),
                        _("send 'appliance licence request' to the vendor and install the new licence"), check="licence")
    elif active > TRIAL_MAILBOXES:
        out.print_warning(a.describe() + _("; active mailboxes: {n}").format(n=active),
                          _("install a licence: appliance licence install FILE"), check="licence")
    else:
        out.print_ok(a.describe() + _("; active mailboxes: {n}").format(n=active), check="licence")


# ---------------------------------------------------------------- certificate


def _certificate(cfg: Any, out: BufferedOutput) -> None:
    from cryptography import x509

    out.add_heading(_("Certificate"))
    path = Path(cfg.tls.cert_file)
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError) as exc:
        out.print_error(_("cannot read the certificate {path}: {error}").format(path=path, error=getattr(exc, "strerror", None) or exc),
                        _("install a certificate: appliance install --cert FILE --key FILE"), check="certificate")
        return
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    args = {"path": path, "date": cert.not_valid_after_utc.date(), "days": left.days}
    if left.total_seconds() <= 0:
        out.print_error(_("the certificate {path} expired on {date}").format(**args),
                        _("renew it and install it: appliance install --cert FILE --key FILE"), check="certificate")
    elif left.days < 14:
        out.print_warning(_("the certificate {path} expires on {date}, in {days} days").format(**args),
                          _("renew it now: appliance install --cert FILE --key FILE"), check="certificate")
    else:
        out.print_ok(_("the certificate is valid until {date} ({days} days)").format(**args), check="certificate")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    host = cfg.instance.hostname
    if host not in names and not any(n.startswith("*.") and host.split(".", 1)[-1] == n[2:] for n in names):
        out.print_error(_("the certificate does not name {host} (it names {names})").format(host=host, names=", ".join(names) or "-"),
                        _("get a certificate for {host}").format(host=host), check="certificate")
    if cert.issuer == cert.subject:
        out.print_warning(_("the certificate is self-signed: mail clients warn and other servers may refuse TLS"),
                          _("install one from a CA: appliance install --cert FILE --key FILE"), check="certificate")


# ---------------------------------------------------------------- services


def _services(cfg: Any, out: BufferedOutput, probes: DoctorProbes) -> None:
    out.add_heading(_("Services"))
    for name, lst in cfg.listeners.items():
        if probes.connect(lst.host, lst.port):
            out.print_ok(_("{name} ({protocol}) answers on {bind}").format(name=name, protocol=lst.protocol, bind=lst.bind), check=f"listener-{name}")
        else:
            out.print_error(_("{name} ({protocol}) does not answer on {bind}").format(name=name, protocol=lst.protocol, bind=lst.bind),
                            _("systemctl start appliance.target (or run appliance up)"),
                            check=f"listener-{name}")
    if not cfg.antispam.enabled:
        out.print_warning(_("spam filtering is off (antispam.enabled = false)"), _("turn it on in appliance.toml"), check="rspamd")
        return
    clash = probes.antispam_foreign(cfg)
    for holder in clash:  # Debian's rspamd.service on our rspamd's ports: the scanner may be talking to it
        out.print_error(holder.describe(), holder.fix(), check=f"antispam-port-{holder.port}")
    reply = probes.http_get(cfg.antispam.url.rstrip("/") + "/ping", min(5.0, cfg.antispam.timeout))
    if reply is not None and reply.strip().lower().startswith("pong"):
        if not clash:
            out.print_ok(_("rspamd answers at {url}").format(url=cfg.antispam.url), check="rspamd")
    elif cfg.antispam.managed:
        out.print_error(_("rspamd does not answer at {url}").format(url=cfg.antispam.url),
                        _("systemctl restart appliance-antispam: it runs rspamd, redis and unbound (antispam.on_failure "
                          "decides what happens to mail meanwhile)"), check="rspamd")
    else:
        out.print_error(_("rspamd does not answer at {url}").format(url=cfg.antispam.url),
                        _("systemctl start rspamd redis-server (antispam.on_failure decides what happens to mail meanwhile)"), check="rspamd")


# ---------------------------------------------------------------- DNS


def _dns(cfg: Any, domains: list[str], out: BufferedOutput, probes: DoctorProbes) -> None:
    lookup = probes.lookup or make_lookup(cfg.dns.resolvers, cfg.dns.port, min(cfg.dns.timeout, 5))
    hostname = cfg.instance.hostname
    ipv4, ipv6 = probes.addresses()
    services = [n for n in cfg.listeners if n in ("submission", "submissions", "imap", "imaps", "pop3", "pop3s")]
    for domain in domains:
        out.add_heading(_("DNS for {domain}").format(domain=domain))
        if lookup(f"{domain}.", "SOA") is None and lookup(f"{domain}.", "MX") is None:
            where = ", ".join(cfg.dns.resolvers) or _("the system resolver")
            out.print_error(_("the resolver ({where}) does not answer; DNS records not checked").format(where=where),
                            _("check [dns] resolvers in appliance.toml and that the resolver runs"), check="dns")
            continue
        records = expected_records(domain, hostname, ipv4=ipv4, ipv6=ipv6, dkim=dkim_keys(Path(cfg.storage.keys_dir), domain),
                                   services=services)
        check_records(records, lookup, out)
