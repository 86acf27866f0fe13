"""spam, quarantine, user unfreeze: the antispam side of the command line.

Every change is written to the audit log with the Unix user as the actor.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from .cli import EX_TEMPFAIL, CliError, actor, load, open_store
from .i18n import _
from .output import print_json, print_table, when


def _sub(parent: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    p = parent.add_parser(name, help=help)
    s = p.add_subparsers(dest=f"{name}_cmd", metavar="ACTION")
    s.required = True
    return s


def _user_actions(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ACTION sub-parsers of ``appliance user`` (registered by cli_directory)."""
    user = sub.choices["user"]
    for action in user._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("appliance user has no sub-commands")  # pragma: no cover


def register(sub: argparse._SubParsersAction) -> None:
    import antispam  # noqa: F401 - registers the Chinese messages

    s = _sub(sub, "spam", _("spam filter: allow and block lists, thresholds, statistics"))
    for name, help in (("allow", _("always accept mail from ADDRESS_OR_DOMAIN for EMAIL")),
                       ("block", _("treat mail from ADDRESS_OR_DOMAIN as spam for EMAIL")),
                       ("unallow", _("remove ADDRESS_OR_DOMAIN from EMAIL's allow list")),
                       ("unblock", _("remove ADDRESS_OR_DOMAIN from EMAIL's block list"))):
        p = s.add_parser(name, help=help)
        p.add_argument("email")
        p.add_argument("entry", metavar="ADDRESS_OR_DOMAIN")
        p.set_defaults(func=spam_list_change, change=name)
    p = s.add_parser("list", help=_("show EMAIL's allow and block lists"))
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=spam_list)
    p = s.add_parser("threshold", help=_("show or set a domain's junk and reject scores"))
    p.add_argument("domain")
    p.add_argument("--junk", type=float, help=_("score from which mail goes to Junk"))
    p.add_argument("--reject", type=float, help=_("score from which mail is rejected"))
    p.add_argument("--clear", action="store_true", help=_("go back to the defaults of appliance.toml"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=spam_threshold)
    p = s.add_parser("stats", help=_("rspamd's counters (scanned, learned, actions)"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=spam_stats)
    p = s.add_parser("frozen", help=_("accounts whose sending is frozen"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=spam_frozen)

    q = _sub(sub, "quarantine", _("rejected spam kept for review"))
    p = q.add_parser("list", help=_("list quarantined messages"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=quarantine_list)
    p = q.add_parser("show", help=_("show a quarantined message"))
    p.add_argument("id")
    p.add_argument("--raw", action="store_true", help=_("print the whole message"))
    p.set_defaults(func=quarantine_show)
    p = q.add_parser("release", help=_("deliver a quarantined message to its recipients"))
    p.add_argument("id")
    p.set_defaults(func=quarantine_release)
    p = q.add_parser("delete", help=_("delete a quarantined message"))
    p.add_argument("id")
    p.set_defaults(func=quarantine_delete)
    p = q.add_parser("days", help=_("keep rejected spam for DOMAIN this many days (0: none)"))
    p.add_argument("domain")
    p.add_argument("days", type=int)
    p.set_defaults(func=quarantine_days)
    p = q.add_parser("purge", help=_("delete expired quarantined messages now"))
    p.set_defaults(func=quarantine_purge)

    u = _user_actions(sub)
    p = u.add_parser("unfreeze", help=_("let a user send again after an abuse freeze"))
    p.add_argument("email")
    p.set_defaults(func=user_unfreeze)


# ---------------------------------------------------------------- spam


def spam_list_change(args: argparse.Namespace) -> int:
    from antispam.policy import ALLOW, BLOCK, PolicyError, change_list

    which = ALLOW if args.change in ("allow", "unallow") else BLOCK
    add = args.change in ("allow", "block")
    store = open_store(args)
    try:
        try:
            changed = change_list(store, args.email, which, args.entry, add=add)
        except PolicyError as exc:
            raise CliError(str(exc), 65) from None
        if changed:
            store.events.admin(actor(), f"spam.{args.change}", args.email.lower(), detail={"entry": args.entry})
    finally:
        store.close()
    messages = {
        ("allow", True): _("{entry} added to the allow list of {email}"),
        ("block", True): _("{entry} added to the block list of {email}"),
        ("unallow", True): _("{entry} removed from the allow list of {email}"),
        ("unblock", True): _("{entry} removed from the block list of {email}"),
        ("allow", False): _("{entry} is already on the allow list of {email}"),
        ("block", False): _("{entry} is already on the block list of {email}"),
        ("unallow", False): _("{entry} is not on the allow list of {email}"),
        ("unblock", False): _("{entry} is not on the block list of {email}"),
    }
    print(messages[(args.change, changed)].format(entry=args.entry, email=args.email))
    return 0 if changed or add else 1


def spam_list(args: argparse.Namespace) -> int:
    from antispam.policy import lists

    store = open_store(args)
    try:
        allow, block = lists(store, args.email)
    finally:
        store.close()
    if args.json:
        print_json({"email": args.email.lower(), "allow": allow, "block": block})
        return 0
    print_table([_("list"), _("address or domain")], [(_("allow"), e) for e in allow] + [(_("block"), e) for e in block])
    return 0


def spam_threshold(args: argparse.Namespace) -> int:
    from antispam.policy import THRESHOLDS, PolicyError, set_thresholds

    cfg = load(args)
    defaults = (cfg.antispam.junk_score, cfg.antispam.reject_score)
    store = open_store(args)
    try:
        if args.clear or args.junk is not None or args.reject is not None:
            try:
                value = set_thresholds(store, args.domain, None if args.clear else args.junk,
                                       None if args.clear else args.reject, defaults)
            except PolicyError as exc:
                raise CliError(str(exc), 65) from None
            store.events.admin(actor(), "spam.threshold", args.domain.lower(), detail=value)
        stored = store.directory.get_domain(args.domain).settings.get(THRESHOLDS) or {}
    finally:
        store.close()
    junk, reject = stored.get("junk", defaults[0]), stored.get("reject", defaults[1])
    if args.json:
        print_json({"domain": args.domain.lower(), "junk": junk, "reject": reject, "default": not stored})
        return 0
    text = _("{domain}: junk from {junk:g}, reject from {reject:g}").format(domain=args.domain.lower(), junk=junk, reject=reject)
    print(text + (" " + _("(defaults)") if not stored else ""))
    return 0


def spam_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from antispam.client import RspamdClient, RspamdError

    cfg = load(args)
    a = cfg.antispam
    client = RspamdClient(a.url, a.controller_url, password_file=Path(a.controller_password_file), timeout=a.timeout)

    async def fetch() -> dict:
        try:
            return await client.stat()
        finally:
            await client.close()

    try:
        stat = asyncio.run(fetch())
    except RspamdError as exc:
        raise CliError(_("rspamd does not answer: {error}").format(error=exc), EX_TEMPFAIL) from None
    if args.json:
        print_json({k: v for k, v in stat.items() if k != "scan_times"})
        return 0
    print(_("scanned {scanned}, learned {learned}, spam {spam}, ham {ham}").format(
        scanned=stat.get("scanned", 0), learned=stat.get("learned", 0), spam=stat.get("spam_count", 0), ham=stat.get("ham_count", 0)))
    actions = stat.get("actions") or {}
    print_table([_("action"), _("messages")], sorted(actions.items()))
    return 0


def spam_frozen(args: argparse.Namespace) -> int:
    from antispam.outbound import frozen_accounts

    store = open_store(args)
    try:
        frozen = frozen_accounts(store)
    finally:
        store.close()
    if args.json:
        print_json([{"email": f.email, "reason": f.reason, "since": f.since} for f in frozen])
        return 0
    print_table([_("account"), _("frozen since"), _("reason")], [(f.email, when(f.since), f.reason) for f in frozen])
    return 0


# ---------------------------------------------------------------- quarantine


def _quarantine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from antispam.layout import Layout
    from antispam.quarantine import Quarantine

    cfg = load(args)
    store = open_store(args)
    return store, Quarantine(store, Layout.from_config(cfg).quarantine)


def quarantine_list(args: argparse.Namespace) -> int:
    store, q = _quarantine(args)
    try:
        held = q.list()
    finally:
        store.close()
    if args.json:
        print_json(held)
        return 0
    print_table([_("id"), _("held"), _("expires"), _("sender"), _("recipients"), _("score"), _("subject")],
                [(h.id, when(h.held_at), when(h.expires), h.sender or "<>", ", ".join(h.recipients),
                  "-" if h.score is None else f"{h.score:.1f}", h.subject[:50]) for h in held])
    return 0


def quarantine_show(args: argparse.Namespace) -> int:
    store, q = _quarantine(args)
    try:
        h = q.get(args.id)
        raw = q.read(args.id) if args.raw else b""
    finally:
        store.close()
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        return 0
    for label, value in ((_("id"), h.id), (_("held"), when(h.held_at)), (_("expires"), when(h.expires)),
                         (_("sender"), h.sender or "<>"), (_("recipients"), ", ".join(h.recipients)),
                         (_("subject"), h.subject), (_("score"), "-" if h.score is None else f"{h.score:.2f}"),
                         (_("reason"), h.reason), (_("size"), str(h.size)), (_("client"), h.ip or "-")):
        print(f"{label}: {value}")
    return 0


def quarantine_release(args: argparse.Namespace) -> int:
    store, q = _quarantine(args)
    try:
        delivered, failed = q.release(args.id)
        store.events.admin(actor(), "quarantine.release", args.id, detail={"delivered": delivered, "failed": list(failed)})
    finally:
        store.close()
    if delivered:
        print(_("released {id} to {recipients}").format(id=args.id, recipients=", ".join(delivered)))
    for rcpt, why in failed.items():
        print(_("not delivered to {rcpt}: {reason}").format(rcpt=rcpt, reason=why), file=sys.stderr)
    return 0 if delivered else 1


def quarantine_delete(args: argparse.Namespace) -> int:
    store, q = _quarantine(args)
    try:
        q.delete(args.id)
        store.events.admin(actor(), "quarantine.delete", args.id)
    finally:
        store.close()
    print(_("deleted {id}").format(id=args.id))
    return 0


def quarantine_days(args: argparse.Namespace) -> int:
    from antispam.policy import PolicyError, set_quarantine_days

    store = open_store(args)
    try:
        try:
            set_quarantine_days(store, args.domain, args.days)
        except PolicyError as exc:
            raise CliError(str(exc), 65) from None
        store.events.admin(actor(), "quarantine.days", args.domain.lower(), detail={"days": args.days})
    finally:
        store.close()
    if args.days:
        print(_("rejected spam for {domain} is kept {days} days").format(domain=args.domain.lower(), days=args.days))
    else:
        print(_("rejected spam for {domain} is not kept").format(domain=args.domain.lower()))
    return 0


def quarantine_purge(args: argparse.Namespace) -> int:
    store, q = _quarantine(args)
    try:
        n = q.purge(time.time())
    finally:
        store.close()
    print(_("{n} expired messages deleted").format(n=n))
    return 0


# ---------------------------------------------------------------- user unfreeze


def user_unfreeze(args: argparse.Namespace) -> int:
    from antispam.outbound import unfreeze

    store = open_store(args)
    try:
        was = unfreeze(store, args.email, actor=actor())
        if was:
            store.events.admin(actor(), "user.unfreeze", args.email.lower())
    finally:
        store.close()
    if was:
        print(_("{email} may send again").format(email=args.email.lower()))
        return 0
    print(_("{email} was not frozen").format(email=args.email.lower()))
    return 0
