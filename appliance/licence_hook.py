"""Seat check before adding a mailbox.

The licence module (installer issue) replaces the trial limit with the
licensed mailbox count; until then the trial allows TRIAL_MAILBOXES.
"""

from __future__ import annotations

TRIAL_MAILBOXES = 1000


def check_seat(store) -> None:  # type: ignore[no-untyped-def]
    """Raise a clear error when one more active mailbox would exceed the allowance."""
    from storage.errors import QuotaExceededError

    active = store.directory.count_users(active_only=True)
    if active >= TRIAL_MAILBOXES:
        raise QuotaExceededError(f"the trial allows {TRIAL_MAILBOXES} mailboxes; install a licence to add more")
