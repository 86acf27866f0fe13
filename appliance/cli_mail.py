"""deliver, mailbox list, log: mail and events from the command line."""

from __future__ import annotations

import argparse
import re
import sys
import time

from .cli import EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, CliError, load, open_store
from .i18n import _, localise
from .output import human_size, print_json, print_table, when


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deliver", help=_("deliver a message from standard input into local mailboxes (like an LDA)"))
    p.add_argument("recipients", nargs="+")
    p.add_argument("--from", dest="sender", default="", help=_("envelope sender"))
    p.add_argument("--mailbox", default="INBOX", help=_("target mailbox (default INBOX)"))
    p.set_defaults(func=cmd_deliver)

    m = sub.add_parser("mailbox", help=_("a user's mailboxes"))
    ms = m.add_subparsers(dest="mailbox_cmd", metavar="ACTION")
    ms.required = True
    p = ms.add_parser("list", help=_("mailboxes with message count, unseen count and size"))
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mailbox_list)

    lg = sub.add_parser("log", help=_("the event log"))
    ls = lg.add_subparsers(dest="log_cmd", metavar="KIND")
    ls.required = True
    for kind, help_text in (("mail", _("deliveries")), ("login", _("logins")), ("admin", _("admin actions")), ("security", _("security events"))):
        p = ls.add_parser(kind, help=help_text)
        p.add_argument("--since", default="24h", help=_("how far back: 30m, 24h, 7d, or a date YYYY-MM-DD"))
        p.add_argument("--user")
        p.add_argument("--result")
        p.add_argument("--limit", type=int, default=100)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_log, kind={"mail": "delivery"}.get(kind, kind))
    p = ls.add_parser("prune", help=_("delete events older than the retention (policy, else log.retention); run daily"))
    p.add_argument("--older-than", help=_("override the retention, e.g. 90d (at least 1d)"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_log_prune)


def parse_since(value: str) -> float:
    from .config import parse_duration

    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return time.mktime(time.strptime(value, "%Y-%m-%d"))
    try:
        return time.time() - float(parse_duration(value))
    except Exception:  # noqa: BLE001
        raise CliError(_("invalid --since {value!r}: use 30m, 24h, 7d or YYYY-MM-DD").format(value=value), 64) from None


def cmd_deliver(args: argparse.Namespace) -> int:
    from storage.errors import InvalidInputError, NotFoundError, QuotaExceededError, StoreError

    cfg = load(args)
    limit = cfg.smtp.max_message_size
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise CliError(_("message larger than smtp.max_message_size ({size})").format(size=human_size(limit)), EX_DATAERR)
    if not data.strip():
        raise CliError(_("empty message on standard input"), EX_DATAERR)
    store = open_store(args)
    try:
        delivery = store.begin_delivery(args.sender, source="lda")
        for rcpt in args.recipients:
            try:
                locals_, _external = store.directory.expand(rcpt)
            except InvalidInputError as exc:
                raise CliError(localise(exc), EX_NOUSER) from None
            if not locals_:
                raise CliError(_("unknown user: {rcpt}").format(rcpt=rcpt), EX_NOUSER)
            for email in locals_:
                try:
                    delivery.add_recipient(email, mailbox=args.mailbox)
                except NotFoundError as exc:
                    raise CliError(localise(exc), EX_NOUSER) from None
                except InvalidInputError as exc:
                    raise CliError(localise(exc), EX_NOUSER) from None
        delivery.write(data)
        try:
            report = delivery.commit()
        except QuotaExceededError as exc:
            raise CliError(localise(exc), EX_TEMPFAIL) from None
        except NotFoundError as exc:
            raise CliError(localise(exc), EX_TEMPFAIL) from None
        except StoreError as exc:
            raise CliError(localise(exc), EX_TEMPFAIL) from None
        except OSError as exc:
            raise CliError(_("temporary failure: {error}").format(error=exc.strerror or exc), EX_TEMPFAIL) from None
        queue_id = report.stored[0].blob_id[:12] if report.stored else "-"
        store.events.delivery(queue_id, args.sender, [s.email for s in report.stored], len(data), "delivered",
                              detail={"source": "lda", "failed": {k: str(v) for k, v in report.failed.items()}})
    finally:
        store.close()
    for s in report.stored:
        print(_("delivered to {email} {mailbox} uid {uid}").format(email=s.email, mailbox=s.mailbox, uid=s.uid))
    for email, err in report.failed.items():
        print(_("not delivered to {email}: {error}").format(email=email, error=err), file=sys.stderr)
    return 0 if not report.failed else EX_TEMPFAIL


def cmd_mailbox_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        user = store.directory.get_user(args.email)
        rows = [store.mail.status(mb.id) for mb in store.mail.list_mailboxes(user.id)]
    finally:
        store.close()
    if args.json:
        print_json([
            {"name": s.mailbox.name, "special_use": s.mailbox.special_use, "messages": s.messages, "unseen": s.unseen,
             "size": s.size, "uidvalidity": s.mailbox.uidvalidity, "uidnext": s.mailbox.uidnext} for s in rows
        ])
    else:
        print_table([_("mailbox"), _("messages"), _("unseen"), _("size")],
                    [(s.mailbox.name, s.messages, s.unseen, human_size(s.size)) for s in rows])
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    store = open_store(args)
    try:
        events = store.events.query(kind=args.kind, since=since, user=args.user, result=args.result, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json(events)
        return 0
    if args.kind == "delivery":
        print_table([_("time"), _("queue id"), _("from"), _("to"), _("size"), _("result")],
                    [(when(e.ts), e.detail.get("queue_id", ""), e.actor, ",".join(e.detail.get("recipients", [])), e.detail.get("size", ""), e.result) for e in events])
    elif args.kind == "login":
        print_table([_("time"), _("user"), _("protocol"), _("IP"), _("client"), _("result")],
                    [(when(e.ts), e.subject, e.protocol, e.ip, e.client, e.result) for e in events])
    else:
        print_table([_("time"), _("who"), _("action"), _("target"), _("result")],
                    [(when(e.ts), e.actor, e.action, e.subject, e.result) for e in events])
    return 0


def cmd_log_prune(args: argparse.Namespace) -> int:
    from storage import retention

    from .cli import actor
    from .config import parse_duration

    cfg = load(args)
    keep = None
    if args.older_than:
        try:
            keep = float(parse_duration(args.older_than))
        except Exception:  # noqa: BLE001
            keep = None
        if keep is None or keep < retention.DAY:
            raise CliError(_("invalid --older-than {value!r}: use a duration of at least 1d, e.g. 90d").format(value=args.older_than), 64)
    store = open_store(args)
    try:
        seconds = keep if keep is not None else retention.retention_seconds(store, cfg.log.retention)
        done = retention.prune(store, retention=seconds)
        store.events.admin(actor(), "log.prune", None, detail={"retention_days": round(seconds / retention.DAY, 2),
                                                               "events": done["events"]})
    finally:
        store.close()
    if args.json:
        print_json(done)
    else:
        print(_("{n} events older than {date} deleted").format(n=done["events"], date=when(done["cutoff"])))
    return 0
