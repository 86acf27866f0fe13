"""Who may send what to whom: recipient resolution and sender rules.

Blocking (directory reads): the SMTP handler calls these in the executor
(or inline on the event loop when the answer is cached). Lookups are cached
for ``smtp.directory_cache_ttl`` (5 s by default) so a burst of mail to the
same recipients costs one directory walk, while a new user, a disabled
account or a changed quota is seen within that time. The RCPT-time quota
check is advisory: the store checks the quota again when it commits.

Rules (documented in the module so tests and the panel can point here):

* RCPT to a local domain resolves through ``Directory.expand`` (aliases,
  groups, departments); each local user is delivered to once per message,
  external members of aliases/groups go to the outbound queue.
* A single-target recipient (a user, or an alias to one user) that is
  disabled gets 550 5.2.1; one whose mailbox is already full 452 4.2.2, or
  552 5.2.2 when the SIZE declared at MAIL cannot fit. Members of a group or
  a multi-target alias that are disabled or full are skipped (and logged);
  the rest still get the message.
* Group post policy, checked at RCPT when the recipient is a group:
  ``anyone``: everybody; ``members``: the sender must be one of the group's
  (expanded) members; ``domain``: the sender must be a user of the group's
  domain. On submission the sender is the authenticated user (with its
  aliases); on port 25 it is the envelope sender, and only when that is not
  in one of our domains (our own users must submit on 587/465, so a local
  address arriving on port 25 proves nothing). Hence ``members`` and
  ``domain`` groups accept mail on port 25 only from external members.
  Only the group named in RCPT is checked, not groups reached through an
  alias.
* Sending as: an authenticated user may use as envelope sender and in
  From: its own address, the aliases that lead to it
  (``Directory.addresses_of``) and the address of any group it is a member
  of (members may post on behalf of the team address).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from storage import policy as policies
from storage.addresses import normalise_address, split_address
from storage.errors import InvalidInputError
from storage.records import Group, User

from .replies import R


@dataclass(frozen=True)
class Resolution:
    """What a RCPT address means here."""

    address: str  # normalised
    kind: str  # user, alias, group, remote, unknown
    users: tuple[User, ...] = ()  # local users that exist (any state)
    external: tuple[str, ...] = ()
    group: Group | None = None
    members: frozenset[str] = frozenset()  # a group's expanded members (local and external)


@dataclass
class Verdict:
    """Outcome of one RCPT: a reply, and what to add to the envelope when accepted."""

    reply: str
    users: list[User] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # member -> why

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")


def is_full(user: User) -> bool:
    return bool(
        (user.quota_bytes and user.used_bytes >= user.quota_bytes)
        or (user.quota_messages and user.used_messages >= user.quota_messages)
    )


def fits(user: User, size: int) -> bool:
    return not (user.quota_bytes and user.used_bytes + size > user.quota_bytes)


class NotCached(Exception):
    """Raised inside ``cache_only()`` when an answer needs the directory."""


_local = threading.local()


@contextmanager
def cache_only() -> Iterator[None]:
    """Answer from the cache or raise NotCached: lets the event loop skip the executor on a hit."""
    _local.cache_only = True
    try:
        yield
    finally:
        _local.cache_only = False


def from_cache(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under ``cache_only()``, without a generator per call (every MAIL and RCPT)."""
    _local.cache_only = True
    try:
        return fn(*args, **kwargs)
    finally:
        _local.cache_only = False


class _TTLCache:
    def __init__(self, ttl: float, max_entries: int = 20_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if getattr(_local, "cache_only", False):
            raise NotCached(key)
        value = compute()
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (now + self.ttl, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class Policy:
    def __init__(self, store: Any, *, ttl: float = 5.0) -> None:
        self._s = store
        self._cache = _TTLCache(ttl)

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------ lookups
    def policies(self) -> dict[str, Any]:
        """The panel's policies (storage/policy.py), cached like the directory."""
        return self._cache.get(("policies",), lambda: policies.load(self._s))

    def max_message_size(self, configured: int) -> int:
        """The policy ``max_message_size`` when set, else ``configured`` (smtp.max_message_size)."""
        return policies.or_configured(self.policies(), "max_message_size", configured)

    def outbound_per_hour(self, configured: int) -> int:
        """The policy ``outbound_per_hour`` when set, else ``configured`` (limits.outbound_messages_per_hour)."""
        return policies.or_configured(self.policies(), "outbound_per_hour", configured)

    def is_local_domain(self, domain: str) -> bool:
        return self._cache.get(("domain", domain.lower()), lambda: self._s.directory.is_local_domain(domain))

    def user(self, email: str) -> User | None:
        return self._cache.get(("user", email), lambda: self._s.directory.find_user(email))

    def addresses_of(self, email: str) -> frozenset[str]:
        return self._cache.get(("addresses", email), lambda: frozenset(self._s.directory.addresses_of(email)))

    def resolve(self, address: str) -> Resolution | None:
        """None for an address that is not a valid mailbox address."""
        return self._cache.get(("rcpt", address), lambda: self._normalise_and_resolve(address))

    def _normalise_and_resolve(self, address: str) -> Resolution | None:
        try:
            addr = normalise_address(address)
        except InvalidInputError:
            return None
        return self._cache.get(("resolve", addr), lambda: self._resolve(addr))

    def _resolve(self, addr: str) -> Resolution:
        d = self._s.directory
        if not self.is_local_domain(split_address(addr)[1]):
            return Resolution(addr, "remote", external=(addr,))
        user = self.user(addr)
        if user is not None:  # an address is a user, a group or an alias source, never two of them
            return Resolution(addr, "user", (user,))
        local, external = d.expand(addr)
        users = tuple(u for u in (self.user(e) for e in local) if u is not None)
        group = d.find_group(addr)
        if group is not None:
            return Resolution(addr, "group", users, tuple(external), group, frozenset(local) | frozenset(external))
        if not users and not external:
            return Resolution(addr, "unknown")
        direct = len(users) == 1 and users[0].email == addr and not external
        return Resolution(addr, "user" if direct else "alias", users, tuple(external))

    # ------------------------------------------------------------- RCPT
    def check_recipient(
        self,
        address: str,
        *,
        submission: bool,
        identities: frozenset[str],
        identity_domains: frozenset[str],
        declared_size: int = 0,
    ) -> Verdict:
        res = self.resolve(address)
        if res is None:
            return Verdict(R.RCPT_BAD_ADDRESS)
        if res.kind == "remote":
            if not submission:
                return Verdict(R.RCPT_RELAY_DENIED)
            return Verdict(R.RCPT_OK, external=[res.address])
        if res.kind == "unknown":
            return Verdict(R.RCPT_UNKNOWN)
        if res.group is not None:
            refusal = self._post_refusal(res, identities, identity_domains)
            if refusal:
                return Verdict(refusal)
        single = len(res.users) == 1 and not res.external and res.group is None
        if single:
            u = res.users[0]
            if not u.active:
                return Verdict(R.RCPT_DISABLED)
            if is_full(u):
                return Verdict(R.RCPT_FULL)
            if declared_size and not fits(u, declared_size):
                return Verdict(R.RCPT_WONT_FIT)
            return Verdict(R.RCPT_OK, users=[u])
        v = Verdict(R.RCPT_OK, external=list(res.external))
        for u in res.users:
            if not u.active:
                v.skipped[u.email] = "disabled"
            elif is_full(u) or (declared_size and not fits(u, declared_size)):
                v.skipped[u.email] = "mailbox full"
            else:
                v.users.append(u)
        if not v.users and not v.external:
            v.reply = R.RCPT_NO_MEMBERS
        return v

    def _post_refusal(self, res: Resolution, identities: frozenset[str], identity_domains: frozenset[str]) -> str | None:
        assert res.group is not None
        policy = res.group.post_policy
        if policy == "anyone":
            return None
        if policy == "domain":
            group_domain = split_address(res.group.email)[1]
            return None if group_domain in identity_domains else R.RCPT_GROUP_DOMAIN
        return None if identities & res.members else R.RCPT_GROUP_MEMBERS

    # ------------------------------------------------------------ senders
    def identities_for_user(self, user: User) -> tuple[frozenset[str], frozenset[str]]:
        addresses = self.addresses_of(user.email) | {user.email}
        return frozenset(addresses), frozenset({user.domain})

    def identities_for_envelope(self, mail_from: str) -> tuple[frozenset[str], frozenset[str]]:
        """Port 25: the envelope sender counts only when it is not one of our domains."""
        return self._cache.get(("sender", mail_from), lambda: self._identities_for_envelope(mail_from))

    def _identities_for_envelope(self, mail_from: str) -> tuple[frozenset[str], frozenset[str]]:
        try:
            addr = normalise_address(mail_from)
        except InvalidInputError:
            return frozenset(), frozenset()
        if self.is_local_domain(split_address(addr)[1]):
            return frozenset(), frozenset()
        return frozenset({addr}), frozenset()

    def may_send_as(self, user: User, address: str) -> bool:
        return self._cache.get(("send-as", user.email, address), lambda: self._may_send_as(user, address))

    def _may_send_as(self, user: User, address: str) -> bool:
        try:
            addr = normalise_address(address)
        except InvalidInputError:
            return False
        if addr in self.addresses_of(user.email):
            return True
        res = self.resolve(addr)
        return bool(res and res.group is not None and user.email in {u.email for u in res.users})
