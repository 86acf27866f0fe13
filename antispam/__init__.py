"""Spam filtering with rspamd, learning from users, and catching hijacked accounts.

The API for the MTA (everything else is internal):

Inbound scanning, at the end of DATA::

    from antispam import get_scanner
    scanner = get_scanner(ctx)          # once, in mta.service.start(ctx)
    verdict = await scanner.check(raw, mail_from="a@x.example", rcpts=["bob@ours.example"],
                                  ip="192.0.2.1", helo="mx.x.example", hostname="mx.x.example",
                                  user=None, queue_id="Q123")
    # ip, helo, hostname describe the *client*: hostname is its reverse-DNS name (None lets
    # rspamd look it up), never our own host name; user is the SMTP AUTH login, if any
    if verdict.reply:                   # "550 5.7.1 ..." (reject) or "451 4.7.1 ..." (deferral)
        return verdict.reply
    # remove verdict.remove_headers from the message, then prepend verdict.headers
    # (name, value) in order; values may be folded (CRLF + space)
    # per recipient: verdict.junk(rcpt) -> deliver into junk_folder(store, rcpt), else INBOX

``check`` never raises for rspamd's sake: rspamd missing gives ``accept``
with ``X-Spam-Status: unchecked``; rspamd down or slow follows
``antispam.on_failure`` (the same, or a 451 reply). ``verdict.action`` is
``accept``, ``junk``, ``soft_reject`` or ``reject``; ``verdict.reason`` is
for the log. A rejected message is quarantined by ``check`` itself when the
recipient's domain keeps quarantine (``verdict.quarantine_id``).

Outbound abuse (blocking store calls: run them in the executor)::

    from antispam.outbound import is_frozen, record_submission, record_failure
    frozen = is_frozen(store, auth_user_email)           # at MAIL FROM of a submission
    if frozen:
        return frozen.reply                              # "451 4.7.1 Sending from this account is suspended ..."
    decision = record_submission(store, auth_user_email, rcpts, limits=cfg.limits)   # after 250
    record_failure(store, sender_email, count=1, limits=cfg.limits)  # per failed recipient / bounce

Signatures:

* ``get_scanner(ctx) -> Scanner``
* ``async Scanner.check(message: bytes, *, mail_from: str, rcpts: Sequence[str], ip: str | None = None,
  helo: str | None = None, hostname: str | None = None, user: str | None = None,
  queue_id: str | None = None) -> Verdict``
* ``Verdict.junk(rcpt: str) -> bool``; fields ``action, score, required, symbols, headers, reason,
  checked, reply, recipients, quarantine_id, remove_headers``
* ``junk_folder(store, email: str) -> str`` (blocking)
* ``attach_learning(ctx) -> Learner | None``: for imapd when it runs in its own process (systemd), so
  moves into/out of Junk made there teach rspamd; the antispam service does it for its own process
* ``outbound.is_frozen(store, email: str) -> Frozen | None`` (``Frozen.reply``, ``.reason``, ``.since``)
* ``outbound.record_submission(store, email: str, recipients: Iterable[str], *, limits=None,
  now: float | None = None) -> FreezeDecision`` (``.frozen``, ``.newly``, ``.reason``, ``.counts``)
* ``outbound.record_failure(store, email: str, count: int = 1, *, limits=None,
  now: float | None = None) -> FreezeDecision``

Outbound counters are exact across processes (one locked transaction per
update, about 1 ms; ``bench/outbound_counters_bench.py``). With
``antispam.virus_scan`` the managed service also runs clamd, and an infected
attachment gets ``verdict.reply`` = "550 5.7.1 Message rejected: it contains
a virus", whatever the recipients' allow lists say. ``antispam.ports`` tells
our daemons from a foreign program (Debian's rspamd.service) on our ports,
for ``appliance status`` and ``appliance doctor``.
"""

from __future__ import annotations

from typing import Any

from . import i18n_zh  # noqa: F401 - register the Chinese messages
from .client import SPAM_HEADERS, Scanner, Verdict

__all__ = ["SPAM_HEADERS", "Scanner", "Verdict", "attach_learning", "get_scanner", "junk_folder"]


def get_scanner(ctx: Any) -> Scanner:
    """The antispam service's scanner when it runs in this process, else one of our own for ``ctx.cfg``.

    The second case is the systemd layout (one process per service): the
    scanner then talks to the rspamd that ``appliance-antispam`` runs.
    """
    service = ctx.running.get("antispam")
    if service is not None and getattr(service, "scanner", None) is not None:
        return service.scanner
    from .daemons import missing_programs
    from .layout import Layout
    from .quarantine import Quarantine

    a = ctx.cfg.antispam
    problem = None
    if a.enabled and a.managed:
        missing = missing_programs()
        if "rspamd" in missing:
            problem = "rspamd is not installed"
    layout = Layout.from_config(ctx.cfg)
    return Scanner(ctx.cfg, ctx.store, available=problem is None, problem=problem,
                   quarantine=Quarantine(ctx.store, layout.quarantine), executor=ctx.executor)


def attach_learning(ctx: Any) -> Any:
    """Learn from moves into and out of Junk made by this process; returns the Learner, or None.

    The antispam service does this for its own process. A process that
    serves IMAP without it (``appliance up --service imapd`` under systemd)
    calls this once in its ``start(ctx)`` so its users' moves teach rspamd
    too; ``await learner.stop()`` in its ``stop()``. Idempotent per process.
    """
    service = ctx.running.get("antispam")
    if service is not None and getattr(service, "learner", None) is not None:
        return service.learner
    a = ctx.cfg.antispam
    if not a.enabled:
        return None
    existing = getattr(ctx.store, "_antispam_learner", None)
    if existing is not None:
        return existing
    from pathlib import Path

    from .client import RspamdClient
    from .learning import Learner

    client = RspamdClient(a.url, a.controller_url, password_file=Path(a.controller_password_file), timeout=a.timeout)
    learner = Learner(ctx.store, client, executor=ctx.executor, max_size=a.max_scan_size)
    learner.owns_client = True
    learner.start()
    ctx.store.add_move_hook(learner.hook)
    ctx.store._antispam_learner = learner
    return learner


def junk_folder(store: Any, email: str) -> str:
    """The name of the user's Junk mailbox (special use \\Junk), created if they have none. Blocking."""
    from storage.errors import ConflictError, NotFoundError

    user = store.directory.get_user(email)
    box = store.mail.find_special(user.id, "\\Junk")
    if box is not None:
        return box.name
    try:
        return store.mail.get_mailbox(user.id, "Junk").name
    except NotFoundError:
        pass
    try:
        return store.mail.create_mailbox(user.id, "Junk", "\\Junk").name
    except ConflictError:
        return "Junk"
