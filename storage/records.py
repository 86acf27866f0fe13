"""Plain records the storage API returns: no SQL objects leave the package."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Domain:
    id: int
    name: str
    active: bool
    created: float
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    id: int
    uuid: str
    email: str
    domain: str
    name: str
    state: str
    quota_bytes: int
    quota_messages: int
    used_bytes: int
    used_messages: int
    department_id: int | None
    title: str
    phone: str
    created: float
    password_hash: str | None = field(default=None, repr=False)
    settings: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True)
class Department:
    id: int
    domain: str
    parent_id: int | None
    name: str


@dataclass(frozen=True)
class Alias:
    source: str
    destination: str


@dataclass(frozen=True)
class Group:
    id: int
    email: str
    name: str
    post_policy: str
    members: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AppPassword:
    id: int
    name: str
    created: float
    last_used: float | None
    last_ip: str | None


@dataclass(frozen=True)
class Admin:
    id: int
    email: str
    role: str
    scope_domain: str | None
    scope_department_id: int | None


@dataclass(frozen=True)
class Mailbox:
    id: int
    user_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True)
class MailboxStatus:
    mailbox: Mailbox
    messages: int
    unseen: int
    size: int
    first_unseen_uid: int | None = None


@dataclass(frozen=True)
class MessageInfo:
    """Index facts of one message: never needs decryption of the body."""

    id: int
    mailbox_id: int
    uid: int
    blob_id: str
    size: int
    internal_date: float
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str
    actor: str | None
    subject: str | None
    action: str
    protocol: str | None
    ip: str | None
    client: str | None
    result: str
    detail: dict
