"""The SQL schema of the index and directory.

SQLAlchemy Core tables: the storage package is the only code that touches
them. Alembic migrations under ``storage/migrations`` are the source of truth
for existing databases; this module describes the current shape and a test
checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

domains = Table(
    "domains",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(253), nullable=False, unique=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("created", Float, nullable=False),
    Column("settings", Text, nullable=False, default="{}"),
)

departments = Table(
    "departments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", Integer, ForeignKey("departments.id", ondelete="RESTRICT"), nullable=True),
    Column("name", String(200), nullable=False),
    Column("created", Float, nullable=False),
    UniqueConstraint("domain_id", "parent_id", "name", name="uq_departments_sibling_name"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(32), nullable=False, unique=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="RESTRICT"), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    Column("password_hash", String(256), nullable=True),
    Column("password_changed", Float, nullable=True),
    Column("state", String(16), nullable=False, default="active"),
    Column("quota_bytes", BigInteger, nullable=False, default=0),
    Column("quota_messages", Integer, nullable=False, default=0),
    Column("used_bytes", BigInteger, nullable=False, default=0),
    Column("used_messages", Integer, nullable=False, default=0),
    Column("department_id", Integer, ForeignKey("departments.id", ondelete="SET NULL"), nullable=True),
    Column("title", String(200), nullable=False, default=""),
    Column("phone", String(64), nullable=False, default=""),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("settings", Text, nullable=False, default="{}"),
    # credential epochs (see storage.auth.Authenticator.session_check): bumped when a login may no longer be valid
    Column("auth_epoch", Integer, nullable=False, default=0, server_default="0"),
    Column("sessions_epoch", Integer, nullable=False, default=0, server_default="0"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(320), nullable=False),
    Column("destination", String(320), nullable=False),
    Column("created", Float, nullable=False),
    UniqueConstraint("source", "destination", name="uq_aliases_source_destination"),
    Index("ix_aliases_source", "source"),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    Column("post_policy", String(16), nullable=False, default="members"),
    Column("created", Float, nullable=False),
)

group_members = Table(
    "group_members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
    # kind: "address" (a user, alias, group or external address) or "department"
    Column("kind", String(16), nullable=False, default="address"),
    Column("member", String(320), nullable=False),
    UniqueConstraint("group_id", "kind", "member", name="uq_group_members_member"),
)

app_passwords = Table(
    "app_passwords",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("last_used", Float, nullable=True),
    Column("last_ip", String(64), nullable=True),
    UniqueConstraint("user_id", "name", name="uq_app_passwords_user_name"),
)

admins = Table(
    "admins",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # role: super, domain, department, auditor
    Column("role", String(16), nullable=False),
    Column("scope_domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=True),
    Column("scope_department_id", Integer, ForeignKey("departments.id", ondelete="CASCADE"), nullable=True),
    Column("created", Float, nullable=False),
    UniqueConstraint("user_id", "role", "scope_domain_id", "scope_department_id", name="uq_admins_scope"),
)

mailboxes = Table(
    "mailboxes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(1000), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uidnext", BigInteger, nullable=False, default=1),
    Column("highestmodseq", BigInteger, nullable=False, default=1),
    Column("special_use", String(16), nullable=True),
    Column("subscribed", Boolean, nullable=False, default=True),
    Column("created", Float, nullable=False),
    UniqueConstraint("user_id", "name", name="uq_mailboxes_user_name"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("blob_id", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("internal_date", Float, nullable=False),
    Column("flags", Integer, nullable=False, default=0),
    Column("keywords", Text, nullable=True),
    Column("modseq", BigInteger, nullable=False),
    UniqueConstraint("mailbox_id", "uid", name="uq_messages_mailbox_uid"),
    Index("ix_messages_blob", "blob_id"),
    Index("ix_messages_mailbox_modseq", "mailbox_id", "modseq"),
)

# One row per message file; copies of a message share it. Kept apart from
# ``messages`` so the rows scanned by FETCH FLAGS stay narrow.
blobs = Table(
    "blobs",
    metadata,
    Column("blob_id", String(32), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("size", BigInteger, nullable=False),
    # sealed (encrypted) JSON: envelope, body structure, header summary
    Column("meta", LargeBinary, nullable=False),
    # sealed small JSON for SEARCH: decoded subject, addresses, sent date
    Column("summary", LargeBinary, nullable=False),
)

expunged = Table(
    "expunged",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    Index("ix_expunged_mailbox_modseq", "mailbox_id", "modseq"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    # kind: login, admin, delivery, security
    Column("kind", String(16), nullable=False),
    Column("actor", String(320), nullable=True),
    Column("subject", String(320), nullable=True),
    Column("action", String(64), nullable=False, default=""),
    Column("protocol", String(16), nullable=True),
    Column("ip", String(64), nullable=True),
    Column("client", String(200), nullable=True),
    Column("result", String(32), nullable=False, default="ok"),
    Column("detail", Text, nullable=False, default="{}"),
    Index("ix_events_kind_ts", "kind", "ts"),
    Index("ix_events_actor_ts", "actor", "ts"),
    Index("ix_events_subject_ts", "subject", "ts"),
    Index("ix_events_ip_ts", "ip", "ts"),
)

# The web panel's server-side sessions; the cookie holds a random token, the
# row only its HMAC digest. ``stage`` is "ok" once the second factor passed.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # stage: totp (password ok, code pending), enrol (TOTP enrolment pending), ok
    Column("stage", String(16), nullable=False, default="ok"),
    Column("created", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("ip", String(64), nullable=True),
    Column("client", String(200), nullable=True),
    Index("ix_web_sessions_user", "user_id"),
)

# API tokens for /api/v1: shown once, stored as an HMAC digest, scoped like admins.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    # the admin who created it; the token never has more rights than that admin
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(16), nullable=False),
    Column("scope_domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=True),
    Column("scope_department_id", Integer, ForeignKey("departments.id", ondelete="CASCADE"), nullable=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=True),
    Column("last_used", Float, nullable=True),
    Column("last_ip", String(64), nullable=True),
    UniqueConstraint("user_id", "name", name="uq_api_tokens_user_name"),
)

# Vacation auto-replies already sent: one row per (user, sender), so a sender
# gets one reply per period at most (RFC 3834 section 2). Rows older than the
# longest period are pruned with the event log.
vacation_replies = Table(
    "vacation_replies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("sender", String(320), nullable=False),
    Column("sent", Float, nullable=False),
    UniqueConstraint("user_id", "sender", name="uq_vacation_replies_user_sender"),
    Index("ix_vacation_replies_sent", "sent"),
)
