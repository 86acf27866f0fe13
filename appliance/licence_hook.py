"""What the licence allows: the seat check before adding a mailbox, the check at start.

The licence (``installer/licence.py``) lives in the store's settings, put
there by ``appliance install --licence`` or ``appliance licence install``.

Without a licence, or with one that does not verify (bad signature, another
host, expired past the grace period) the appliance runs in **trial mode**:
up to TRIAL_MAILBOXES active mailboxes in up to TRIAL_DOMAINS domains, no
time limit, every feature. Nothing ever stops existing mail: limits only
refuse *new* mailboxes, with a message saying why and what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from installer import i18n_zh  # noqa: F401 - registers the Chinese messages of this module

from .i18n import _

TRIAL_MAILBOXES = 25
TRIAL_DOMAINS = 3
SETTING = "licence"


@dataclass
class Allowance:
    mode: str  # "licence" or "trial"
    mailboxes: int
    domains: tuple[str, ...] | None  # None: any domain, up to max_domains
    max_domains: int | None
    status: Any = None  # installer.licence.LicenceStatus when a licence is installed
    reason: str = ""  # why trial mode although a licence is installed

    def describe(self) -> str:
        if self.mode == "licence":
            lic = self.status.licence
            return _("licensed to {org}: {n} mailboxes for {domains}, until {date}").format(
                org=lic.organisation, n=lic.mailboxes, domains=", ".join(lic.domains), date=lic.expires)
        return _("trial mode: up to {n} mailboxes in up to {d} domains").format(n=TRIAL_MAILBOXES, d=TRIAL_DOMAINS)


def allowance(store, *, fingerprint: Any = None, public_key: Any = None, today: Any = None) -> Allowance:  # type: ignore[no-untyped-def]
    """What the installed licence (or the trial) allows on this host today."""
    trial = Allowance("trial", TRIAL_MAILBOXES, None, TRIAL_DOMAINS)
    text = store.get_setting(SETTING)
    if not text:
        return trial
    from installer.licence import LicenceError, check_licence, parse_licence

    try:
        lic = parse_licence(text)
    except LicenceError as exc:
        trial.reason = str(exc)
        return trial
    domains = [d.name for d in store.directory.list_domains()]
    status = check_licence(lic, public_key=public_key, fingerprint=fingerprint, domains=domains,
                           active_mailboxes=store.directory.count_users(active_only=True), today=today)
    if not status.usable:
        trial.status = status
        trial.reason = "; ".join(status.problems)
        return trial
    return Allowance("licence", lic.mailboxes, lic.domains, None, status)


def _refuse(message: str) -> None:
    from storage.errors import QuotaExceededError

    raise QuotaExceededError(message)


def check_seat(store, email: str | None = None, **kw: Any) -> None:  # type: ignore[no-untyped-def]
    """Raise QuotaExceededError (one clear line) when one more active mailbox is not allowed.

    ``email``, when given, also checks that its domain is licensed.
    """
    a = allowance(store, **kw)
    active = store.directory.count_users(active_only=True)
    if a.mode == "trial":
        why = _(" (the installed licence is not valid: {reason})").format(reason=a.reason) if a.reason else ""
        if active >= TRIAL_MAILBOXES:
            _refuse(_("the trial allows {n} active mailboxes and {active} are in use{why}; install a licence "
                      "with 'appliance licence install FILE' to add more").format(n=TRIAL_MAILBOXES, active=active, why=why))
        return
    if active >= a.mailboxes:
        _refuse(_("the licence allows {n} active mailboxes and {active} are in use; disable or remove a mailbox, "
                  "or ask the vendor for a licence with more").format(n=a.mailboxes, active=active))
    if email and "@" in email:
        domain = email.rsplit("@", 1)[1].strip().lower().rstrip(".")
        if a.domains is not None and domain not in a.domains:
            _refuse(_("the licence does not cover the domain {domain} (it covers {domains}); ask the vendor to add it")
                    .format(domain=domain, domains=", ".join(a.domains)))


def check_domain(store, name: str, **kw: Any) -> None:  # type: ignore[no-untyped-def]
    """Raise QuotaExceededError when adding the domain ``name`` is not allowed."""
    a = allowance(store, **kw)
    name = name.strip().lower().rstrip(".")
    if a.mode == "licence":
        if a.domains is not None and name not in a.domains:
            _refuse(_("the licence does not cover the domain {domain} (it covers {domains}); ask the vendor to add it")
                    .format(domain=name, domains=", ".join(a.domains)))
        return
    if len(store.directory.list_domains()) >= TRIAL_DOMAINS:
        _refuse(_("the trial allows {n} domains; install a licence with 'appliance licence install FILE' to add more")
                .format(n=TRIAL_DOMAINS))


def startup_check(store, log: logging.Logger | None = None) -> Allowance | None:  # type: ignore[no-untyped-def]
    """Verify the licence when a service starts; say what holds. Never raises: mail must flow."""
    log = log or logging.getLogger("appliance")
    try:
        a = allowance(store)
    except Exception as exc:  # noqa: BLE001 - a broken licence check must not stop mail
        log.error("licence check failed: %s", exc)
        return None
    if a.mode == "licence":
        log.info("%s", a.describe())
        for w in a.status.warnings:
            log.warning(_("licence: {warning}").format(warning=w))
    elif a.reason:
        log.error(_("licence not valid, running with the trial limits ({n} mailboxes); existing mail keeps flowing: {reason}")
                  .format(n=TRIAL_MAILBOXES, reason=a.reason))
    else:
        log.info("%s", a.describe())
    return a
