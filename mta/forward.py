"""Forwarding set by a user (storage/forwarding.py): which accepted messages go on, to where, and how.

``plan`` runs inside the delivery (before the 250), so a forwarded copy is in
the outbound queue, durable, before the client is told the message is safe;
with ``keep_copy`` false that is the only copy, so it cannot be left to a
later step that a crash could skip.

The envelope sender of a forwarded copy is the forwarding user's own address
(not the original sender's, not SRS):

* SPF at the receiver checks our address against our domain's record, so it
  passes; the original sender's SPF would fail, since we are not their server;
* DMARC at the receiver still passes through the original DKIM signature, which
  survives: we only add a header on top and never touch the body;
* a bounce of the copy goes to the person who set up the forward, into their
  INBOX, where it tells them their forward is broken; it never goes to the
  original sender, who may be forged (a spam run forwarded by us would
  otherwise send bounces to innocent third parties: backscatter);
* there is no SRS secret to keep and no reverse path to accept on port 25.

The price: the original sender does not learn that the final destination
refused the copy (the message was delivered to the address they wrote to).

Never forwarded (the local copy is then kept whatever ``keep_copy`` says):

* messages judged spam (filed into Junk): forwarding spam would make our
  servers the spammer in the eyes of the target's provider;
* a message that already carries ``Delivered-To: <the user>``: we forwarded it
  once and it came back (a forward to an address that forwards back to us);
* a message with ``MAX_HOPS`` Received fields or more (a loop through others).

A forward to one of our own addresses is delivered into the target's mailbox
directly, in the same store transaction (the target's own forwarding is not
applied again: no chains, no loops).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from storage import forwarding
from storage.addresses import normalise_address
from storage.errors import InvalidInputError
from storage.records import User

from . import headers

log = logging.getLogger("mta")

MAX_HOPS = 30
_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)


@dataclass
class Plan:
    """What the delivery does for forwarding users, decided before anything is stored."""

    keep: list[User] = field(default_factory=list)  # local recipients whose own mailbox gets the message
    local_copies: list[User] = field(default_factory=list)  # forward targets that are our users
    remote: dict[str, list[str]] = field(default_factory=dict)  # forwarding user -> remote target addresses
    forwarded: dict[str, str] = field(default_factory=dict)  # forwarding user -> target (for the log)
    not_forwarded: dict[str, str] = field(default_factory=dict)  # forwarding user -> why not


def hops(raw: bytes) -> int:
    return len(_RECEIVED.findall(raw[: headers.header_end(raw)]))


def loop_reason(raw: bytes, user: User) -> str | None:
    """Why forwarding this message for ``user`` would loop, or None."""
    for value in headers.field_values(raw, "delivered-to"):
        try:
            if normalise_address(value.strip("<> ")) == user.email:
                return "loop: already forwarded for this user"
        except InvalidInputError:
            continue
    if hops(raw) >= MAX_HOPS:
        return f"loop: {MAX_HOPS} or more Received fields"
    return None


def copy_for(raw: bytes, user: User) -> bytes:
    """The forwarded copy: ``Delivered-To: <user>`` on top (our loop mark, RFC 9228), the rest untouched."""
    return f"Delivered-To: {user.email}\r\n".encode() + raw


def plan(store: Any, local: list[User], raw: bytes, junk: set[str]) -> Plan:
    """Blocking (reads the policy for users who set a forward). Never raises for one user's sake."""
    out = Plan()
    seen = {u.email for u in local}
    for user in local:
        try:
            target, keep = forwarding.target(store, user)
        except Exception:  # noqa: BLE001 - forwarding failing must not lose the message: keep it here
            log.exception("forwarding lookup for %s failed", user.email)
            target, keep = None, True
        if target is None:
            out.keep.append(user)
            continue
        why = "spam" if user.email in junk else loop_reason(raw, user)
        if why is not None:
            out.not_forwarded[user.email] = why
            out.keep.append(user)
            continue
        if store.directory.is_local_domain(target.rpartition("@")[2]):
            emails, external = store.directory.expand(target)
            if user.email in emails:
                why = "loop: the forwarding address leads back to this user"
            elif not emails and not external:
                why = "no such local address"
            if why is not None:
                out.not_forwarded[user.email] = why
                out.keep.append(user)
                continue
            for email in emails:
                u = store.directory.find_user(email)
                if u is not None and u.active and u.email not in seen:  # a recipient already has it
                    seen.add(u.email)
                    out.local_copies.append(u)
            if external:  # an alias or group of ours with outside members
                out.remote[user.email] = list(external)
        else:
            out.remote[user.email] = [target]
        if keep:
            out.keep.append(user)
        out.forwarded[user.email] = target
    return out
