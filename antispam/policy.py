"""Per-user allow/block lists and per-domain thresholds, kept in the directory.

* user setting ``spam_allow`` / ``spam_block``: lists of entries, each an
  address (``boss@partner.example``) or a domain (``partner.example``, which
  also covers its subdomains);
* domain setting ``spam_thresholds``: ``{"junk": 5.0, "reject": 12.0}``
  (either may be missing: the [antispam] default applies);
* domain setting ``quarantine_days``: keep rejected spam for that domain's
  recipients this many days (0: none; missing: ``antispam.quarantine_days``).

``PolicyCache`` reads them for the scanner with a short TTL, so a change made
with the CLI or the panel applies to new mail within ``ttl`` seconds in every
process, without a query per message.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from appliance.i18n import _
from storage.addresses import normalise_address, normalise_domain
from storage.errors import InvalidInputError, NotFoundError

ALLOW, BLOCK = "spam_allow", "spam_block"
THRESHOLDS = "spam_thresholds"
QUARANTINE_DAYS = "quarantine_days"
MAX_LIST = 1000


class PolicyError(ValueError):
    """A bad list entry or threshold, for the operator (already translated)."""


def normalise_entry(entry: str) -> str:
    """``Boss@Partner.Example`` -> ``boss@partner.example``; ``@partner.example`` or ``partner.example`` -> ``partner.example``."""
    e = (entry or "").strip()
    try:
        if "@" in e.lstrip("@"):
            return normalise_address(e)
        return normalise_domain(e.lstrip("@"))
    except InvalidInputError:
        raise PolicyError(_("{entry!r} is neither an address nor a domain").format(entry=entry)) from None


def matches(entries: list[str] | tuple[str, ...], address: str) -> str | None:
    """The entry that covers ``address`` (exactly, its domain, or a parent domain), or None."""
    address = (address or "").strip().lower()
    if "@" not in address:
        return None
    domain = address.rsplit("@", 1)[1]
    for e in entries:
        if e == address:
            return e
        if "@" not in e and (domain == e or domain.endswith("." + e)):
            return e
    return None


def lists(store: Any, email: str) -> tuple[list[str], list[str]]:
    user = store.directory.get_user(email)
    return list(user.settings.get(ALLOW) or []), list(user.settings.get(BLOCK) or [])


def change_list(store: Any, email: str, which: str, entry: str, *, add: bool) -> bool:
    """Add or remove ``entry`` on a user's allow (``which=ALLOW``) or block list; True if it changed.

    An entry is on one list at most: adding to one removes it from the other.
    """
    entry = normalise_entry(entry)
    user = store.directory.get_user(email)
    current = list(user.settings.get(which) or [])
    other = BLOCK if which == ALLOW else ALLOW
    if add:
        if entry in current:
            return False
        if len(current) >= MAX_LIST:
            raise PolicyError(_("a list holds at most {n} entries").format(n=MAX_LIST))
        store.directory.set_user_setting(user.email, which, sorted([*current, entry]))
        rest = [e for e in user.settings.get(other) or [] if e != entry]
        if rest != list(user.settings.get(other) or []):
            store.directory.set_user_setting(user.email, other, rest or None)
        return True
    if entry not in current:
        return False
    rest = [e for e in current if e != entry]
    store.directory.set_user_setting(user.email, which, rest or None)
    return True


def check_thresholds(junk: float | None, reject: float | None, defaults: tuple[float, float]) -> None:
    j = defaults[0] if junk is None else junk
    r = defaults[1] if reject is None else reject
    for v in (junk, reject):
        if v is not None and not -1000 <= v <= 1000:
            raise PolicyError(_("a score must be between -1000 and 1000"))
    if j >= r:
        raise PolicyError(_("the junk score ({junk:g}) must be below the reject score ({reject:g})").format(junk=j, reject=r))


def set_thresholds(store: Any, domain: str, junk: float | None, reject: float | None, defaults: tuple[float, float]) -> dict:
    """Set a domain's thresholds (None keeps the default for that one); returns what is stored."""
    check_thresholds(junk, reject, defaults)
    value = {k: v for k, v in (("junk", junk), ("reject", reject)) if v is not None}
    store.directory.set_domain_setting(domain, THRESHOLDS, value or None)
    return value


def set_quarantine_days(store: Any, domain: str, days: int | None) -> None:
    if days is not None and not 0 <= days <= 365:
        raise PolicyError(_("days must be between 0 and 365"))
    store.directory.set_domain_setting(domain, QUARANTINE_DAYS, days)


# ---------------------------------------------------------------- what the scanner reads


@dataclass(frozen=True)
class RecipientPolicy:
    address: str
    local: bool  # a user of ours (lists apply)
    allow: tuple[str, ...]
    block: tuple[str, ...]
    junk: float
    reject: float
    quarantine_days: int


class PolicyCache:
    """Recipient policies with a TTL; blocking (call from a worker thread)."""

    def __init__(self, store: Any, cfg: Any, ttl: float = 30.0) -> None:
        self._store = store
        self._a = cfg.antispam
        self._ttl = ttl
        self._users: dict[str, tuple[float, Any]] = {}
        self._domains: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def _get(self, cache: dict, key: str, load: Any) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        if load is None:
            raise KeyError(key)
        value = load(key)
        with self._lock:
            if len(cache) > 50_000:
                cache.clear()
            cache[key] = (now + self._ttl, value)
        return value

    def _load_user(self, address: str) -> Any:
        try:
            return self._store.directory.find_user(address)
        except InvalidInputError:
            return None

    def _load_domain(self, domain: str) -> dict:
        try:
            return dict(self._store.directory.get_domain(domain).settings)
        except (NotFoundError, InvalidInputError):
            return {}

    def recipient(self, address: str, *, cached_only: bool = False) -> RecipientPolicy:
        """The policy for one recipient; with ``cached_only`` KeyError instead of a database read."""
        addr = (address or "").strip().lower()
        user = self._get(self._users, addr, None if cached_only else self._load_user) if "@" in addr else None
        domain = user.domain if user is not None else addr.rsplit("@", 1)[-1]
        dset = self._get(self._domains, domain, None if cached_only else self._load_domain)
        th = dset.get(THRESHOLDS) or {}
        qdays = dset.get(QUARANTINE_DAYS)
        settings = user.settings if user is not None else {}
        return RecipientPolicy(
            address=addr,
            local=user is not None,
            allow=tuple(settings.get(ALLOW) or ()),
            block=tuple(settings.get(BLOCK) or ()),
            junk=float(th.get("junk", self._a.junk_score)),
            reject=float(th.get("reject", self._a.reject_score)),
            quarantine_days=int(self._a.quarantine_days if qdays is None else qdays),
        )

    def clear(self) -> None:
        with self._lock:
            self._users.clear()
            self._domains.clear()


_FROM = re.compile(rb"^From[ \t]*:((?:[^\r\n]*)(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_from(raw: bytes, limit: int = 256 * 1024) -> list[str]:
    """Addresses in the message's From header(s), lower-cased (reads only the header section)."""
    m = _HEADER_END.search(raw, 0, limit)
    head = raw[: m.start() if m else min(len(raw), limit)]
    values = [re.sub(rb"\r?\n[ \t]", b" ", v).decode("utf-8", "replace") for v in _FROM.findall(head)[:5]]
    try:
        return [addr.lower() for _name, addr in getaddresses(values) if "@" in addr][:5]
    except Exception:  # noqa: BLE001 - a broken header is rspamd's business, not ours
        return []
