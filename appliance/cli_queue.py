"""``appliance queue list|show|retry|delete|flush``: the outbound queue (mta/queue.py, mta/outbound.py).

Reading is done here (the files are decrypted with the instance's keys);
retry, flush and delete are requests the running MTA's delivery worker takes
within a second (``queue/kick/``). With no MTA running, delete removes the
files itself and retries wait for the next start.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .cli import actor, load, open_store
from .i18n import _
from .output import human_size, print_json, print_table, when

DELETE_WAIT = 5.0


def register(sub: argparse._SubParsersAction) -> None:
    import mta.i18n_zh  # noqa: F401 - Chinese messages

    q = sub.add_parser("queue", help=_("the outbound mail queue"))
    qs = q.add_subparsers(dest="queue_cmd", metavar="ACTION")
    qs.required = True
    p = qs.add_parser("list", help=_("queued messages: sender, recipients with their state, attempts, next try, last error"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = qs.add_parser("show", help=_("one queued message in detail (envelope, headers, each recipient)"))
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = qs.add_parser("retry", help=_("try to deliver a message now"))
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retry)
    p = qs.add_parser("delete", help=_("drop a message from the queue without delivering or bouncing it"))
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_delete)
    p = qs.add_parser("flush", help=_("try to deliver every queued message now"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flush)


def _open(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from mta.queue import OutboundQueue

    cfg = load(args)
    store = open_store(args)
    return cfg, store, OutboundQueue(store, cfg.instance.data_dir / "queue", fsync=cfg.storage.fsync)


def _entry(queue: Any, qid: str, *, frozen: Any = None) -> dict[str, Any]:
    msg = queue.load(qid)
    state = queue.load_state(qid) or {}
    rcpts = state.get("rcpts", {})
    recipients = []
    for r in msg.recipients:
        item = rcpts.get(r) or {}
        recipients.append({"address": r, "state": item.get("s", "pending"), "reply": item.get("reply") or item.get("text"),
                           "mx": item.get("mx"), "status": item.get("status"), "at": item.get("ts")})
    held = state.get("held")
    auth = msg.meta.get("auth")
    if frozen is not None and auth and frozen(auth):
        held = "account frozen"
    return {
        "id": qid, "sender": msg.sender, "recipients": recipients, "created": msg.created, "size": len(msg.raw),
        "attempts": state.get("attempts", 0), "next_try": state.get("next") or None,
        "last_attempt": state.get("last_attempt"), "last_error": state.get("last_error", ""), "held": held,
        "delay_notified": state.get("delay_notified", False), "meta": msg.meta, "_raw": msg.raw,
    }


def _frozen_check(store: Any) -> Any:
    try:
        from antispam import outbound
    except ImportError:
        return None
    return lambda email: outbound.is_frozen(store, email) is not None


def _state_word(state: str) -> str:
    return {"pending": _("pending"), "sent": _("sent"), "failed": _("failed"), "deferred": _("deferred")}.get(state, state)


def _next_try(e: dict[str, Any], worker: bool) -> str:
    if e["held"]:
        return _("held: {why}").format(why=_(e["held"]))
    if not worker:
        return _("when the MTA runs")
    nt = e["next_try"]
    return _("now") if not nt or nt <= time.time() else when(nt)


def cmd_list(args: argparse.Namespace) -> int:
    from storage.errors import CryptoError, NotFoundError

    cfg, store, queue = _open(args)
    try:
        frozen = _frozen_check(store)
        rows, bad = [], []
        for qid in queue.ids():
            try:
                rows.append(_entry(queue, qid, frozen=frozen))
            except NotFoundError:
                continue  # delivered meanwhile
            except CryptoError as exc:
                bad.append({"id": qid, "error": str(exc)})
        worker = queue.worker_running()
    finally:
        store.close()
    for r in rows:
        r.pop("_raw")
    if args.json:
        print_json({"messages": rows, "unreadable": bad, "delivering": worker and not cfg.queue.hold, "hold": cfg.queue.hold})
        return 0
    if not rows and not bad:
        print(_("the outbound queue is empty"))
        return 0
    print_table(
        [_("id"), _("sender"), _("recipients"), _("attempts"), _("next try"), _("last error")],
        [(r["id"], r["sender"] or "<>", ", ".join(f"{x['address']} ({_state_word(x['state'])})" for x in r["recipients"]),
          r["attempts"], _next_try(r, worker and not cfg.queue.hold), (r["last_error"] or "")[:70]) for r in rows],
    )
    for b in bad:
        print(_("{id}: cannot be read: {error}").format(**b))
    if cfg.queue.hold:
        print(_("queue.hold is set: nothing is delivered"))
    elif not worker:
        print(_("no MTA is running: nothing is delivered until `appliance up` runs"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mta import headers as hdrs

    cfg, store, queue = _open(args)
    try:
        e = _entry(queue, args.id, frozen=_frozen_check(store))
        worker = queue.worker_running() and not cfg.queue.hold
    finally:
        store.close()
    raw = e.pop("_raw")
    e["headers"] = {name: hdrs.field_values(raw, name) for name in ("from", "to", "cc", "subject", "date", "message-id")}
    if args.json:
        print_json(e)
        return 0
    print(_("id: {id}").format(id=e["id"]))
    print(_("sender: {sender}").format(sender=e["sender"] or "<>"))
    print(_("queued: {when}, size {size}").format(when=when(e["created"]), size=human_size(e["size"])))
    for name, values in e["headers"].items():
        for v in values:
            print(f"  {name.title()}: {v}")
    print(_("attempts: {n}, last {last}, next try {next}").format(n=e["attempts"], last=when(e["last_attempt"]),
                                                                   next=_next_try(e, worker)))
    if e["last_error"]:
        print(_("last error: {error}").format(error=e["last_error"]))
    if e["meta"].get("auth"):
        print(_("submitted by: {user}").format(user=e["meta"]["auth"]))
    print(_("recipients:"))
    for r in e["recipients"]:
        line = f"  {r['address']}: {_state_word(r['state'])}"
        if r["reply"]:
            line += f" - {r['reply']}"
        if r["mx"]:
            line += f" ({r['mx']})"
        print(line)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    cfg, store, queue = _open(args)
    try:
        if not queue.exists(args.id):
            from storage.errors import NotFoundError

            raise NotFoundError("no queued message {id}", id=args.id)
        queue.kick(args.id)
        worker = queue.worker_running() and not cfg.queue.hold
    finally:
        store.close()
    if args.json:
        print_json({"id": args.id, "scheduled": True, "delivering": worker})
    elif worker:
        print(_("{id} will be retried within a second").format(id=args.id))
    else:
        print(_("{id} will be retried when the MTA delivers again").format(id=args.id))
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    cfg, store, queue = _open(args)
    try:
        n = len(queue.ids())
        queue.kick(None)
        worker = queue.worker_running() and not cfg.queue.hold
    finally:
        store.close()
    if args.json:
        print_json({"messages": n, "delivering": worker})
    elif worker:
        print(_("{n} messages will be retried within a second").format(n=n))
    else:
        print(_("{n} messages will be retried when the MTA delivers again").format(n=n))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from storage.errors import NotFoundError

    cfg, store, queue = _open(args)
    try:
        if not queue.exists(args.id):
            raise NotFoundError("no queued message {id}", id=args.id)
        if queue.worker_running():
            queue.kick(args.id, delete=True)
            deadline = time.monotonic() + DELETE_WAIT
            while queue.exists(args.id) and time.monotonic() < deadline:
                time.sleep(0.1)
            done = not queue.exists(args.id)
        else:
            queue.remove(args.id)
            done = True
        store.events.admin(actor(), "queue.delete", args.id, detail={"done": done})
    finally:
        store.close()
    if args.json:
        print_json({"id": args.id, "deleted": done})
    elif done:
        print(_("{id} deleted").format(id=args.id))
    else:
        print(_("{id} will be deleted when its delivery attempt in progress ends").format(id=args.id))
    return 0
