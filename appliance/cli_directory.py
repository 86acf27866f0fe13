"""domain, user, alias, group, admin: the directory from the command line.

Every change is written to the audit log with the Unix user as the actor.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from .cli import CliError, actor, open_store
from .config import ConfigError, parse_size
from .i18n import _
from .output import human_size, print_json, print_table, when


def _sub(parent: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    p = parent.add_parser(name, help=help)
    s = p.add_subparsers(dest=f"{name}_cmd", metavar="ACTION")
    s.required = True
    return s


def register(sub: argparse._SubParsersAction) -> None:
    d = _sub(sub, "domain", _("mail domains"))
    p = d.add_parser("add", help=_("add a domain"))
    p.add_argument("name")
    p.set_defaults(func=domain_add)
    p = d.add_parser("list", help=_("list domains"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=domain_list)
    p = d.add_parser("remove", help=_("remove a domain"))
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help=_("also remove its users and erase their mail"))
    p.set_defaults(func=domain_remove)

    u = _sub(sub, "user", _("mail users"))
    p = u.add_parser("add", help=_("add a user"))
    p.add_argument("email")
    p.add_argument("--name", default="")
    p.add_argument("--quota", help=_("mailbox size limit, e.g. 2G (0 = none)"))
    p.add_argument("--quota-messages", type=int, default=0)
    p.add_argument("--password-stdin", action="store_true", help=_("read the password from standard input"))
    p.set_defaults(func=user_add)
    p = u.add_parser("list", help=_("list users"))
    p.add_argument("--domain")
    p.add_argument("--search")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_list)
    p = u.add_parser("show", help=_("show one user"))
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_show)
    p = u.add_parser("passwd", help=_("set a user's password"))
    p.add_argument("email")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=user_passwd)
    for name, state in (("disable", "disabled"), ("enable", "active")):
        p = u.add_parser(name, help=_("{action} a user").format(action=name))
        p.add_argument("email")
        p.set_defaults(func=user_state, state=state)
    p = u.add_parser("remove", help=_("remove a user and erase its mail for good"))
    p.add_argument("email")
    p.add_argument("--yes", action="store_true", help=_("do not ask for confirmation"))
    p.set_defaults(func=user_remove)
    p = u.add_parser("quota", help=_("change a user's quota"))
    p.add_argument("email")
    p.add_argument("size")
    p.set_defaults(func=user_quota)
    p = u.add_parser("unlock", help=_("clear a login lockout"))
    p.add_argument("email")
    p.set_defaults(func=user_unlock)
    p = u.add_parser("export", help=_("write all of a user's mail (Maildir in a zip) and sign-in history to a file"))
    p.add_argument("email")
    p.add_argument("--output", "-o", required=True, help=_("the zip file to write ('-' for standard output)"))
    p.set_defaults(func=user_export)
    ap = u.add_parser("app-password", help=_("app passwords (client authorisation codes)"))
    aps = ap.add_subparsers(dest="ap_cmd", metavar="ACTION")
    aps.required = True
    p = aps.add_parser("add", help=_("create an app password and print it once"))
    p.add_argument("email")
    p.add_argument("--name", required=True)
    p.set_defaults(func=app_add)
    p = aps.add_parser("list", help=_("list app passwords"))
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=app_list)
    p = aps.add_parser("revoke", help=_("revoke an app password"))
    p.add_argument("email")
    p.add_argument("name")
    p.set_defaults(func=app_revoke)

    a = _sub(sub, "alias", _("address aliases"))
    p = a.add_parser("add", help=_("add an alias SOURCE -> DESTINATION"))
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=alias_add)
    p = a.add_parser("list", help=_("list aliases"))
    p.add_argument("--domain")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=alias_list)
    p = a.add_parser("remove", help=_("remove an alias"))
    p.add_argument("source")
    p.add_argument("destination", nargs="?")
    p.set_defaults(func=alias_remove)

    g = _sub(sub, "group", _("groups (mailing lists)"))
    p = g.add_parser("add", help=_("add a group"))
    p.add_argument("email")
    p.add_argument("--name", default="")
    p.add_argument("--post-policy", choices=["members", "domain", "anyone"], default="members")
    p.set_defaults(func=group_add)
    p = g.add_parser("list", help=_("list groups"))
    p.add_argument("--domain")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=group_list)
    p = g.add_parser("remove", help=_("remove a group"))
    p.add_argument("email")
    p.set_defaults(func=group_remove)
    mem = g.add_parser("members", help=_("group members"))
    ms = mem.add_subparsers(dest="members_cmd", metavar="ACTION")
    ms.required = True
    for name in ("add", "remove"):
        p = ms.add_parser(name, help=_("{action} members").format(action=name))
        p.add_argument("group")
        p.add_argument("members", nargs="+", help=_("addresses, or dept:ID for a whole department"))
        p.set_defaults(func=members_change, action=name)
    p = ms.add_parser("list", help=_("list members"))
    p.add_argument("group")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=members_list)

    ad = _sub(sub, "admin", _("administrators and their scopes"))
    p = ad.add_parser("add", help=_("make a user an administrator"))
    p.add_argument("email")
    p.add_argument("--role", required=True, choices=["super", "domain", "department", "auditor"])
    p.add_argument("--scope", help=_("the domain (domain admin) or department id (department admin)"))
    p.set_defaults(func=admin_add)
    p = ad.add_parser("list", help=_("list administrators"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=admin_list)
    p = ad.add_parser("remove", help=_("remove an administrator role"))
    p.add_argument("email")
    p.add_argument("--role", choices=["super", "domain", "department", "auditor"])
    p.set_defaults(func=admin_remove)

    dp = _sub(sub, "department", _("departments"))
    p = dp.add_parser("add", help=_("add a department"))
    p.add_argument("domain")
    p.add_argument("name")
    p.add_argument("--parent", type=int)
    p.set_defaults(func=dept_add)
    p = dp.add_parser("list", help=_("list departments"))
    p.add_argument("--domain")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=dept_list)
    p = dp.add_parser("remove", help=_("remove an empty department"))
    p.add_argument("id", type=int)
    p.set_defaults(func=dept_remove)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        data = sys.stdin.read(4096)
        pw = data.splitlines()[0] if data.strip() else ""
    elif sys.stdin.isatty():
        pw = getpass.getpass(_("password: "))
        if getpass.getpass(_("again: ")) != pw:
            raise CliError(_("the passwords do not match"))
    else:
        raise CliError(_("no password given: use --password-stdin or a terminal"))
    if len(pw) < 8:
        raise CliError(_("the password is too short (8 characters at least)"), 65)
    if len(pw) > 1024:
        raise CliError(_("the password is too long"), 65)
    return pw


def _size(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_size(value)
    except (ConfigError, ValueError) as exc:
        raise CliError(_("invalid size {value!r}: {error}").format(value=value, error=exc), 65) from None


# ------------------------------------------------------------------ domains
def domain_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        d = store.directory.add_domain(args.name)
        store.events.admin(actor(), "domain.add", d.name)
    finally:
        store.close()
    print(_("domain {name} added").format(name=d.name))
    return 0


def domain_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        doms = store.directory.list_domains()
        counts = {d.name: store.directory.count_users(domain=d.name) for d in doms}
    finally:
        store.close()
    if args.json:
        print_json([{"name": d.name, "active": d.active, "users": counts[d.name], "created": d.created} for d in doms])
    else:
        print_table([_("domain"), _("users"), _("created")], [(d.name, counts[d.name], when(d.created)) for d in doms])
    return 0


def domain_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.directory.remove_domain(args.name, force=args.force)
        store.events.admin(actor(), "domain.remove", args.name, detail={"force": args.force})
    finally:
        store.close()
    print(_("domain {name} removed").format(name=args.name))
    return 0


# -------------------------------------------------------------------- users
def user_add(args: argparse.Namespace) -> int:
    quota = _size(args.quota)
    password = _read_password(args.password_stdin) if (args.password_stdin or sys.stdin.isatty()) else None
    store = open_store(args)
    try:
        from .licence_hook import check_seat

        check_seat(store)
        u = store.create_user(args.email, password=password, name=args.name, quota_bytes=quota, quota_messages=args.quota_messages)
        store.events.admin(actor(), "user.add", u.email, detail={"quota": quota})
    finally:
        store.close()
    print(_("user {email} added").format(email=u.email) + ("" if password else _(" (no password set: use 'appliance user passwd')")))
    return 0


def _user_row(u) -> dict:  # type: ignore[no-untyped-def]
    return {
        "email": u.email, "name": u.name, "state": u.state, "quota_bytes": u.quota_bytes, "quota_messages": u.quota_messages,
        "used_bytes": u.used_bytes, "used_messages": u.used_messages, "department_id": u.department_id,
        "title": u.title, "phone": u.phone, "created": u.created,
    }


def user_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        users = store.directory.list_users(domain=args.domain, search=args.search, offset=args.offset, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json([_user_row(u) for u in users])
    else:
        print_table([_("email"), _("name"), _("state"), _("used"), _("quota")],
                    [(u.email, u.name, u.state, human_size(u.used_bytes), human_size(u.quota_bytes) if u.quota_bytes else "-") for u in users])
    return 0


def user_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        u = store.directory.get_user(args.email)
        admin = [a.role for a in store.directory.list_admins(u.email)]
        apps = store.list_app_passwords(u.email)
    finally:
        store.close()
    row = _user_row(u) | {"admin_roles": admin, "app_passwords": [a.name for a in apps]}
    if args.json:
        print_json(row)
    else:
        for k, v in row.items():
            print(f"{k}: {v}")
    return 0


def user_passwd(args: argparse.Namespace) -> int:
    pw = _read_password(args.password_stdin)
    store = open_store(args)
    try:
        store.set_password(args.email, pw)
        store.events.admin(actor(), "user.password", args.email)
    finally:
        store.close()
    print(_("password of {email} changed").format(email=args.email))
    return 0


def user_state(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        u = store.directory.update_user(args.email, state=args.state)
        store.events.admin(actor(), "user." + ("enable" if args.state == "active" else "disable"), u.email)
    finally:
        store.close()
    print(_("user {email} is now {state}").format(email=u.email, state=args.state))
    return 0


def user_quota(args: argparse.Namespace) -> int:
    quota = _size(args.size)
    store = open_store(args)
    try:
        u = store.directory.update_user(args.email, quota_bytes=quota)
        store.events.admin(actor(), "user.quota", u.email, detail={"quota": quota})
    finally:
        store.close()
    print(_("quota of {email} set to {size}").format(email=u.email, size=human_size(quota) if quota else _("unlimited")))
    return 0


def user_unlock(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        u = store.directory.get_user(args.email)
        store.auth.unlock(u.email, actor=actor())
        store.events.admin(actor(), "user.unlock", u.email)
    finally:
        store.close()
    print(_("login lockout of {email} cleared").format(email=args.email))
    return 0


def user_export(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from storage.export import write_export

    store = open_store(args)
    try:
        u = store.directory.get_user(args.email)
        if args.output == "-":
            size = write_export(store, u.email, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            target = Path(args.output)
            fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".zip", dir=str(target.parent.resolve()))
            try:
                with os.fdopen(fd, "wb") as f:
                    size = write_export(store, u.email, f)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        store.events.admin(actor(), "user.export", u.email, detail={"bytes": size})
    finally:
        store.close()
    if args.output != "-":
        print(_("mail and sign-in history of {email} written to {path} ({size})").format(
            email=u.email, path=args.output, size=human_size(size)))
    return 0


def user_remove(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(_("removing a user erases its mail for good; confirm with --yes"))
        answer = input(_("Erase {email} and all its mail for good? Type the address to confirm: ").format(email=args.email))
        if answer.strip().lower() != args.email.strip().lower():
            raise CliError(_("not confirmed; nothing removed"))
    store = open_store(args)
    try:
        store.remove_user(args.email)
        store.events.admin(actor(), "user.remove", args.email)
    finally:
        store.close()
    print(_("user {email} removed; its mail is erased").format(email=args.email))
    return 0


def app_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        code = store.add_app_password(args.email, args.name)
        store.events.admin(actor(), "app_password.add", args.email, detail={"name": args.name})
    finally:
        store.close()
    print(_("app password {name} for {email} (shown once):").format(name=args.name, email=args.email))
    print(code)
    return 0


def app_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        apps = store.list_app_passwords(args.email)
    finally:
        store.close()
    if args.json:
        print_json(apps)
    else:
        print_table([_("name"), _("created"), _("last used"), _("last IP")], [(a.name, when(a.created), when(a.last_used), a.last_ip or "-") for a in apps])
    return 0


def app_revoke(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.revoke_app_password(args.email, args.name)
        store.events.admin(actor(), "app_password.revoke", args.email, detail={"name": args.name})
    finally:
        store.close()
    print(_("app password {name} of {email} revoked").format(name=args.name, email=args.email))
    return 0


# ------------------------------------------------------------------ aliases
def alias_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        a = store.directory.add_alias(args.source, args.destination)
        store.events.admin(actor(), "alias.add", a.source, detail={"destination": a.destination})
    finally:
        store.close()
    print(_("alias {source} -> {destination} added").format(source=a.source, destination=a.destination))
    return 0


def alias_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        aliases = store.directory.list_aliases(args.domain)
    finally:
        store.close()
    if args.json:
        print_json(aliases)
    else:
        print_table([_("alias"), _("destination")], [(a.source, a.destination) for a in aliases])
    return 0


def alias_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        n = store.directory.remove_alias(args.source, args.destination)
        store.events.admin(actor(), "alias.remove", args.source, detail={"destination": args.destination})
    finally:
        store.close()
    print(_("{n} alias entries removed").format(n=n))
    return 0


# ------------------------------------------------------------------- groups
def group_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        g = store.directory.add_group(args.email, name=args.name, post_policy=args.post_policy)
        store.events.admin(actor(), "group.add", g.email, detail={"post_policy": g.post_policy})
    finally:
        store.close()
    print(_("group {email} added").format(email=g.email))
    return 0


def group_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        groups = store.directory.list_groups(args.domain)
    finally:
        store.close()
    if args.json:
        print_json([{"email": g.email, "name": g.name, "post_policy": g.post_policy, "members": len(g.members)} for g in groups])
    else:
        print_table([_("group"), _("name"), _("who may post"), _("members")], [(g.email, g.name, g.post_policy, len(g.members)) for g in groups])
    return 0


def group_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.directory.remove_group(args.email)
        store.events.admin(actor(), "group.remove", args.email)
    finally:
        store.close()
    print(_("group {email} removed").format(email=args.email))
    return 0


def _member(value: str) -> tuple[str, str]:
    if value.startswith("dept:"):
        return "department", value[5:]
    return "address", value


def members_change(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        for raw in args.members:
            kind, value = _member(raw)
            if args.action == "add":
                store.directory.add_group_member(args.group, value, kind=kind)
            else:
                store.directory.remove_group_member(args.group, value, kind=kind)
            store.events.admin(actor(), f"group.member.{args.action}", args.group, detail={"member": raw})
    finally:
        store.close()
    print(_("{n} members {action}ed").format(n=len(args.members), action="add" if args.action == "add" else "remov"))
    return 0


def members_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        g = store.directory.get_group(args.group)
    finally:
        store.close()
    if args.json:
        print_json([{"kind": k, "member": v} for k, v in g.members])
    else:
        for k, v in g.members:
            print(v if k == "address" else f"dept:{v}")
    return 0


# ------------------------------------------------------------------- admins
def admin_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        a = store.directory.add_admin(args.email, args.role, args.scope)
        store.events.admin(actor(), "admin.add", a.email, detail={"role": a.role, "scope": args.scope})
    finally:
        store.close()
    print(_("{email} is now {role} admin").format(email=a.email, role=a.role) + (f" ({args.scope})" if args.scope else ""))
    return 0


def admin_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        admins = store.directory.list_admins()
    finally:
        store.close()
    if args.json:
        print_json(admins)
    else:
        print_table([_("admin"), _("role"), _("scope")], [(a.email, a.role, a.scope_domain or (f"dept:{a.scope_department_id}" if a.scope_department_id else "-")) for a in admins])
    return 0


def admin_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        n = store.directory.remove_admin(args.email, args.role)
        store.events.admin(actor(), "admin.remove", args.email, detail={"role": args.role})
    finally:
        store.close()
    print(_("{n} admin roles removed").format(n=n))
    return 0


# -------------------------------------------------------------- departments
def dept_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        d = store.directory.add_department(args.domain, args.name, args.parent)
        store.events.admin(actor(), "department.add", d.name, detail={"id": d.id, "parent": d.parent_id})
    finally:
        store.close()
    print(_("department {name} added with id {id}").format(name=d.name, id=d.id))
    return 0


def dept_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        deps = store.directory.list_departments(args.domain)
    finally:
        store.close()
    if args.json:
        print_json(deps)
    else:
        print_table([_("id"), _("domain"), _("parent"), _("name")], [(d.id, d.domain, d.parent_id or "-", d.name) for d in deps])
    return 0


def dept_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.directory.remove_department(args.id)
        store.events.admin(actor(), "department.remove", str(args.id))
    finally:
        store.close()
    print(_("department {id} removed").format(id=args.id))
    return 0
