"""init, up, status, migrate, store check."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from .cli import CliError, actor, load, open_store
from .i18n import _
from .output import human_size, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help=_("create a new instance in DIR"))
    p.add_argument("dir")
    p.add_argument("--domain", required=True)
    p.add_argument("--hostname")
    p.add_argument("--dev", action="store_true", help=_("development instance on 127.0.0.1 with demo accounts"))
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("up", help=_("run the services in the foreground"))
    p.add_argument("--service", action="append", choices=["mta", "imapd", "panel", "antispam"], help=_("run only this service (repeatable)"))
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("status", help=_("what listens where, store size, counts"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("migrate", help=_("bring the database schema up to date"))
    p.add_argument("--check", action="store_true", help=_("only say whether migrations are pending"))
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("store", help=_("check the store"))
    ssub = p.add_subparsers(dest="store_cmd", metavar="ACTION")
    ssub.required = True
    c = ssub.add_parser("check", help=_("verify every message file against the index"))
    c.add_argument("--repair", action="store_true", help=_("rebuild lost index entries from the files"))
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_store_check)


def cmd_init(args: argparse.Namespace) -> int:
    from .instance import InstanceExistsError, create_instance

    try:
        new = create_instance(Path(args.dir), domain=args.domain, hostname=args.hostname, dev=args.dev, demo_accounts=args.dev)
    except InstanceExistsError as exc:
        raise CliError(str(exc)) from None
    print(_("instance created in {path}").format(path=new.path))
    print(_("config: {path}").format(path=new.config_path))
    print(_("DKIM record to publish: {selector}._domainkey.{domain} TXT \"{txt}\"").format(selector=new.dkim_selector, domain=new.domain, txt=new.dkim_txt))
    if new.accounts:
        print(_("demo accounts (saved in {file}, mode 0600):").format(file=new.path / "demo-accounts.json"))
        for email, pw in new.accounts.items():
            print(f"  {email}  {pw}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .runner import run

    cfg = load(args)
    return run(cfg, only=args.service)


def _probe(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from storage import models as m

    cfg = load(args)
    store = open_store(args)
    try:
        listeners = [
            {"name": n, "protocol": lst.protocol, "bind": lst.bind, "tls": lst.tls, "up": _probe(lst.host, lst.port)}
            for n, lst in cfg.listeners.items()
        ]
        with store.read() as c:
            counts = {
                "domains": c.execute(select(func.count()).select_from(m.domains)).scalar_one(),
                "users": c.execute(select(func.count()).select_from(m.users)).scalar_one(),
                "messages": c.execute(select(func.count()).select_from(m.messages)).scalar_one(),
            }
        store_bytes = _dir_size(Path(cfg.storage.mail_dir))
        db_bytes = _dir_size(Path(cfg.instance.data_dir)) - store_bytes
    finally:
        store.close()
    from antispam.status import describe

    antispam = describe(cfg)
    info = {"instance": cfg.instance.name, "hostname": cfg.instance.hostname, "listeners": listeners, "counts": counts,
            "mail_bytes": store_bytes, "other_bytes": db_bytes, "antispam": antispam}
    if args.json:
        print_json(info)
        return 0
    print(_("instance {name} ({hostname})").format(name=cfg.instance.name, hostname=cfg.instance.hostname))
    print_table([_("listener"), _("protocol"), _("address"), _("tls"), _("state")],
                [(x["name"], x["protocol"], x["bind"], x["tls"], _("up") if x["up"] else _("down")) for x in listeners])
    print(_("domains {domains}, users {users}, messages {messages}").format(**counts))
    print(_("mail store {size}").format(size=human_size(store_bytes)))
    print(_("antispam: {state} ({detail})").format(state=_(antispam["state"]), detail=antispam["detail"]))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage import db

    cfg = load(args)
    url = cfg.storage.database_url or db.sqlite_url(Path(cfg.instance.data_dir) / "index.sqlite3")
    engine = db.make_engine(url)
    try:
        current, head = db.current_revision(engine), db.head_revision(engine)
        if args.check:
            print(_("schema {current}, latest {head}").format(current=current or "-", head=head))
            return 0 if current == head else 1
        if current == head:
            print(_("schema is up to date ({head})").format(head=head))
            return 0
        db.upgrade(engine)
        print(_("schema migrated from {current} to {head}").format(current=current or "-", head=head))
    finally:
        engine.dispose()
    return 0


def cmd_store_check(args: argparse.Namespace) -> int:
    from storage.check import check_store

    store = open_store(args)
    try:
        report = check_store(store, repair=args.repair)
        if args.repair:
            store.events.admin(actor(), "store.repair", None, detail={"problems": len(report.problems), "repaired": report.repaired})
    finally:
        store.close()
    if args.json:
        print_json(report)
    else:
        for p in report.problems:
            print(f"{p.kind}: {p.detail}")
        print(_("checked {n} message files in {a} accounts: {p} problems, {r} repaired").format(
            n=report.files, a=report.accounts, p=len(report.problems), r=report.repaired))
    unresolved = len(report.problems) - report.repaired
    return 0 if not report.problems or (args.repair and unresolved <= 0) else 1
