"""install, uninstall, doctor, licence, upgrade: putting the appliance on a host and keeping it right."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from installer import i18n_zh  # noqa: F401 - registers the Chinese messages

from .cli import EX_USAGE, CliError, actor, load, open_store
from .i18n import _, normalise_language, set_language


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install", help=_("install the appliance on this host (as root, on Debian)"))
    p.add_argument("--domain", required=True, help=_("the first mail domain, e.g. example.com"))
    p.add_argument("--hostname", help=_("this server's name, the MX target (default mail.DOMAIN)"))
    p.add_argument("--licence", type=Path, metavar="FILE", help=_("licence file from the vendor (default: trial mode)"))
    p.add_argument("--mailboxes", type=int, default=25, metavar="N", help=_("mailboxes you plan, for the checks and the sizing (default 25)"))
    p.add_argument("--admin", metavar="EMAIL", help=_("the first administrator (default admin@DOMAIN)"))
    p.add_argument("--admin-password-file", type=Path, metavar="FILE", help=_("read the admin password from FILE instead of generating one"))
    p.add_argument("--cert", type=Path, metavar="FILE", help=_("TLS certificate chain (PEM) to install instead of a self-signed one"))
    p.add_argument("--key", type=Path, metavar="FILE", help=_("private key (PEM) of --cert"))
    p.add_argument("--database-url", default="", metavar="URL", help=_("PostgreSQL URL (default: SQLite in the data directory)"))
    p.add_argument("--language", choices=["en", "zh-CN"], help=_("language of the panel and messages (default: $APPLIANCE_LANG or en)"))
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help=_("install under DIR instead of / (for tests)"))
    p.add_argument("--dry-run", action="store_true", help=_("check and show what would be done; change nothing"))
    p.add_argument("-y", "--yes", action="store_true", help=_("do not ask; install missing Debian packages"))
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("uninstall", help=_("remove the services; keep the data unless --purge"))
    p.add_argument("--purge", action="store_true", help=_("also delete all mail, keys and configuration"))
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR")
    p.add_argument("-y", "--yes", action="store_true")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("doctor", help=_("check this instance: services, certificate, licence, disk, DNS records"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-dns", action="store_true", help=_("skip the DNS checks"))
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("upgrade", help=_("back up the database and run the schema migrations"))
    p.add_argument("--backup-dir", type=Path, metavar="DIR", help=_("where the backup goes (default DATA_DIR/backups)"))
    p.set_defaults(func=cmd_upgrade)

    lic = sub.add_parser("licence", help=_("licence request, issue, install, show"))
    ls = lic.add_subparsers(dest="licence_cmd", metavar="ACTION")
    ls.required = True
    p = ls.add_parser("request", help=_("write a licence request for the vendor"))
    p.add_argument("--organisation", required=True)
    p.add_argument("--domain", action="append", help=_("licensed domain (repeatable; default: the domains of this instance)"))
    p.add_argument("--mailboxes", type=int, help=_("mailboxes to license (default: those in use, at least 25)"))
    p.add_argument("--output", type=Path, metavar="FILE", help=_("write here instead of standard output"))
    p.set_defaults(func=cmd_licence_request)
    p = ls.add_parser("issue", help=_("vendor: sign a licence request"))
    p.add_argument("request", type=Path)
    p.add_argument("--signing-key", type=Path, required=True, metavar="KEY")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--mailboxes", type=int, help=_("override the number of mailboxes requested"))
    p.add_argument("--output", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_licence_issue)
    p = ls.add_parser("install", help=_("verify a licence file and install it"))
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_licence_install)
    p = ls.add_parser("show", help=_("the licence, its state and the seats in use"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_licence_show)
    p = ls.add_parser("keygen", help=_("vendor: create a signing key pair"))
    p.add_argument("--output", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=cmd_licence_keygen)


# ---------------------------------------------------------------- install / uninstall


def cmd_install(args: argparse.Namespace) -> int:
    from installer.install import Hooks, InstallOptions, ask_terminal, run_install

    if args.mailboxes < 1:
        raise CliError(_("--mailboxes must be at least 1"), EX_USAGE)
    language = args.language or normalise_language(os.environ.get("APPLIANCE_LANG")) or "en"
    if args.language:
        set_language(args.language)
    opts = InstallOptions(
        domain=args.domain.strip().lower().rstrip("."), hostname=(args.hostname or "").strip().lower().rstrip(".") or None,
        licence=args.licence, dry_run=args.dry_run, root=args.root, yes=args.yes, mailboxes=args.mailboxes,
        admin=args.admin, admin_password_file=args.admin_password_file, cert=args.cert, key=args.key,
        database_url=args.database_url, language=language,
    )
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.yes
    return run_install(opts, Hooks(ask=ask_terminal if interactive else None))


def cmd_uninstall(args: argparse.Namespace) -> int:
    from installer.install import Hooks, ask_terminal, run_uninstall

    interactive = sys.stdin.isatty() and not args.yes
    return run_uninstall(args.root, purge=args.purge, yes=args.yes, hooks=Hooks(ask=ask_terminal if interactive else None))


# ---------------------------------------------------------------- doctor, upgrade


def cmd_doctor(args: argparse.Namespace) -> int:
    from installer.checks import ConsoleOutput, JsonOutput
    from installer.doctor import run_doctor

    cfg = load(args)
    out = JsonOutput() if args.json else ConsoleOutput()
    run_doctor(cfg, out, dns=not args.no_dns)
    if args.json:
        out.close(instance=cfg.instance.name)
    else:
        print("\n" + _("{errors} errors, {warnings} warnings").format(errors=out.errors, warnings=out.warnings))
    return 1 if out.errors else 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from installer.upgrade import UpgradeError, database_url, migrate, restart_hint

    cfg = load(args)
    backups = args.backup_dir or Path(cfg.instance.data_dir) / "backups"
    try:
        result = migrate(database_url(cfg), backups)
    except UpgradeError as exc:
        raise CliError(str(exc)) from None
    if not result.changed:
        print(_("the database schema is up to date ({rev}); nothing to do").format(rev=result.new))
        return 0
    print(_("backup of the database: {path}").format(path=result.backup))
    print(_("database schema migrated from {old} to {new}").format(old=result.old or "-", new=result.new))
    print(restart_hint())
    return 0


# ---------------------------------------------------------------- licence


def _write_out(doc: dict, output: Path | None, what: str) -> None:
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(_("{what} written to {path}").format(what=what, path=output), file=sys.stderr)


def _try_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .cli import config_path

    if not Path(config_path(args)).exists():
        return None, None
    cfg = load(args)
    return cfg, open_store(args)


def cmd_licence_request(args: argparse.Namespace) -> int:
    from appliance.licence_hook import TRIAL_MAILBOXES
    from installer.fingerprint import host_fingerprint
    from installer.licence import LicenceError, make_request

    cfg, store = _try_store(args)
    domains, mailboxes = args.domain, args.mailboxes
    hostname = cfg.instance.hostname if cfg is not None else socket.getfqdn()
    if store is not None:
        try:
            domains = domains or [d.name for d in store.directory.list_domains()]
            mailboxes = mailboxes or max(TRIAL_MAILBOXES, store.directory.count_users(active_only=True))
        finally:
            store.close()
    if not domains or not mailboxes:
        raise CliError(_("no instance here to read the domains and mailboxes from: give --domain and --mailboxes"), EX_USAGE)
    try:
        req = make_request(organisation=args.organisation, domains=domains, mailboxes=mailboxes,
                           fingerprint=host_fingerprint().components, hostname=hostname)
    except LicenceError as exc:
        raise CliError(str(exc), EX_USAGE) from None
    _write_out(req, args.output, _("licence request"))
    if args.output is not None:
        print(_("send it to the vendor; it holds only digests of this host's hardware, no serial numbers"), file=sys.stderr)
    return 0


def cmd_licence_issue(args: argparse.Namespace) -> int:
    from installer.licence import LicenceError, issue, load_signing_key, parse_request, read_text

    try:
        req = parse_request(read_text(args.request))
        doc = issue(req, load_signing_key(args.signing_key), days=args.days, mailboxes=args.mailboxes)
    except LicenceError as exc:
        raise CliError(str(exc)) from None
    _write_out(doc, args.output, _("licence {id}").format(id=doc["licence"]["id"]))
    return 0


def cmd_licence_keygen(args: argparse.Namespace) -> int:
    from installer.licence import LicenceError, generate_signing_key

    try:
        public = generate_signing_key(args.output)
    except LicenceError as exc:
        raise CliError(str(exc)) from None
    print(_("signing key written to {path} (keep it secret, off the appliances)").format(path=args.output))
    print(_("public key, for installer/vendor_key.py: {key}").format(key=public))
    return 0


def cmd_licence_install(args: argparse.Namespace) -> int:
    from appliance.licence_hook import SETTING
    from installer.licence import LicenceError, check_licence, parse_licence, read_text

    try:
        text = read_text(args.file)
        lic = parse_licence(text)
    except LicenceError as exc:
        raise CliError(str(exc)) from None
    store = open_store(args)
    try:
        domains = [d.name for d in store.directory.list_domains()]
        status = check_licence(lic, domains=domains, active_mailboxes=store.directory.count_users(active_only=True))
        if not status.usable:
            raise CliError(_("licence {id} not installed: {problems}").format(id=lic.id, problems="; ".join(status.problems)))
        if domains and len(status.uncovered) == len(domains):
            raise CliError(_("licence {id} not installed: it is for {licensed}, this appliance serves {domains}").format(
                id=lic.id, licensed=", ".join(lic.domains), domains=", ".join(domains)))
        store.set_setting(SETTING, text)
        store.events.admin(actor(), "licence.install", lic.id, detail=lic.summary())
    finally:
        store.close()
    print(_("licence {id} installed: {org}, {n} mailboxes for {domains}, valid until {date}").format(
        id=lic.id, org=lic.organisation, n=lic.mailboxes, domains=", ".join(lic.domains), date=lic.expires))
    for w in status.warnings:
        print(_("warning: {text}").format(text=w))
    return 0


def cmd_licence_show(args: argparse.Namespace) -> int:
    from appliance.licence_hook import TRIAL_DOMAINS, TRIAL_MAILBOXES, allowance

    from .output import print_json

    store = open_store(args)
    try:
        a = allowance(store)
        active = store.directory.count_users(active_only=True)
        ndomains = len(store.directory.list_domains())
    finally:
        store.close()
    st = a.status
    info = {"mode": a.mode, "active_mailboxes": active, "allowed_mailboxes": a.mailboxes, "domains_in_use": ndomains,
            "trial": {"mailboxes": TRIAL_MAILBOXES, "domains": TRIAL_DOMAINS}, "reason": a.reason or None,
            "licence": st.to_dict() if st is not None else None}
    invalid = st is not None and not st.usable
    if args.json:
        print_json(info)
        return 1 if invalid else 0
    if st is not None:
        lic = st.licence
        state = {"valid": _("valid"), "grace": _("expired, in the grace period"), "invalid": _("NOT VALID")}[st.state]
        rows = [
            (_("licence"), lic.id), (_("state"), state), (_("organisation"), lic.organisation),
            (_("domains"), ", ".join(lic.domains)), (_("mailboxes"), _("{active} in use of {n}").format(active=active, n=lic.mailboxes)),
            (_("valid until"), _("{date} ({days} days)").format(date=lic.expires, days=st.days_left)),
            (_("host"), _("matches") if not st.changed else _("changed: {names}").format(names=", ".join(st.changed))),
        ]
        width = max(len(k) for k, _v in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        for p in st.problems:
            print(_("problem: {text}").format(text=p))
        for w in st.warnings:
            print(_("warning: {text}").format(text=w))
    if a.mode == "trial":
        print(a.describe() + _("; in use: {active} mailboxes, {d} domains").format(active=active, d=ndomains))
    return 1 if invalid else 0
