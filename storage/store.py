"""The store: the one API that mta/, imapd/, panel/ and the CLI use.

``Store`` composes the directory, the mail index, the encrypted blob store,
the keyring, the event log and the login policy over one database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select, update

from . import db
from . import models as m
from .auth import Authenticator, AuthSettings
from .blobs import BlobStore
from .crypto import Keyring, hmac_key, load_master_key
from .directory import Directory
from .errors import NotFoundError, StoreError
from .events import EventLog
from .ingest import Delivery, Ingest, IngestReport, Target
from .mail import MailStore
from .passwords import Passwords, app_password_digest, new_app_password
from .records import AppPassword, Mailbox, User

MoveHook = Callable[[User, Mailbox, Mailbox, list[int]], None]


class SchemaMissingError(StoreError):
    pass


class Store:
    def __init__(
        self,
        *,
        database_url: str,
        mail_dir: Path,
        keys_dir: Path,
        master_key_file: Path,
        fsync: bool = True,
        passwords: Passwords | None = None,
        auth: AuthSettings | None = None,
        max_message_size: int = 50 * 1024 * 1024,
        max_mime_depth: int = 64,
        max_mailboxes: int = 1000,
        create_schema: bool = False,
    ) -> None:
        self.database_url = database_url
        self.engine = db.make_engine(database_url, durable=fsync)
        if create_schema:
            db.upgrade(self.engine)
        elif not db.has_schema(self.engine):
            raise SchemaMissingError("the database at {database_url} has no schema; run 'appliance init' or 'appliance migrate'", database_url=database_url)
        master = load_master_key(master_key_file)
        self.keyring = Keyring(keys_dir, master)
        self.blobs = BlobStore(mail_dir, self.keyring, fsync=fsync)
        self.app_password_key = hmac_key(master, "app-passwords")
        self.mail_dir = mail_dir
        self.passwords = passwords or Passwords()
        self.max_message_size = max_message_size
        self.max_mime_depth = max_mime_depth
        self.max_mailboxes = max_mailboxes
        self.directory = Directory(self)
        self.mail = MailStore(self)
        self.events = EventLog(self)
        self.ingest = Ingest(self)
        self.auth = Authenticator(self, auth or AuthSettings())
        self._listeners: dict[int, list[Callable[[int], None]]] = {}
        self._listeners_lock = threading.Lock()
        self._move_hooks: list[MoveHook] = []
        self._credential_listeners: list[Callable[[int], None]] = []

    @classmethod
    def from_config(cls, cfg, *, create_schema: bool = False) -> Store:  # type: ignore[no-untyped-def]
        st, au = cfg.storage, cfg.auth
        url = st.database_url or db.sqlite_url(Path(cfg.instance.data_dir) / "index.sqlite3")
        return cls(
            database_url=url,
            mail_dir=Path(st.mail_dir),
            keys_dir=Path(st.keys_dir),
            master_key_file=Path(st.master_key_file),
            fsync=st.fsync,
            passwords=Passwords(
                time_cost=au.argon2_time_cost,
                memory_cost_kib=au.argon2_memory_cost_kib,
                parallelism=au.argon2_parallelism,
                cache_ttl=au.login_cache_ttl,
            ),
            auth=AuthSettings(
                failure_delay=au.failure_delay,
                max_failures_per_ip=au.max_failures_per_ip,
                max_failures_per_account=au.max_failures_per_account,
                lockout_time=au.lockout_time,
            ),
            max_message_size=max(cfg.smtp.max_message_size, cfg.imap.max_literal_size),
            max_mime_depth=cfg.imap.max_mime_depth,
            create_schema=create_schema,
        )

    def close(self) -> None:
        self.ingest.committer.close()
        self.engine.dispose()

    # -------------------------------------------------------- transactions
    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as c, c.begin():
            yield c

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction. ``durable=False`` on SQLite commits without an fsync
        (synchronous=NORMAL for this one transaction): for changes whose loss in a
        power cut is harmless (IMAP flags); the next durable commit syncs them too."""
        if durable or self.engine.dialect.name != "sqlite" or not self.blobs.fsync:
            with self.engine.connect().execution_options(immediate=True) as c, c.begin():
                yield c
            return
        with self.engine.connect().execution_options(immediate=True) as c:
            raw = c.connection.dbapi_connection
            raw.execute("PRAGMA synchronous=NORMAL")  # autocommit mode: outside any transaction
            try:
                with c.begin():
                    yield c
            finally:
                raw.execute("PRAGMA synchronous=FULL")

    # ---------------------------------------------------------- accounts
    def create_user(self, email: str, *, password: str | None = None, **fields: object) -> User:
        """A user with its data key and the default mailboxes."""
        pw_hash = self.passwords.hash(password) if password else None
        user = self.directory.insert_user(email, password_hash=pw_hash, **fields)  # type: ignore[arg-type]
        try:
            self.keyring.create(user.uuid)
            self.mail.create_default_mailboxes(user.id)
        except BaseException:
            self.keyring.destroy(user.uuid)
            self.directory.delete_user_row(user.id)
            raise
        return user

    def set_password(self, email: str, password: str) -> None:
        user = self.directory.get_user(email)
        self.directory.set_password_hash(user.email, self.passwords.hash(password))
        self.passwords.forget(user.uuid)

    def remove_user(self, email: str) -> None:
        """Crypto-erase first (the key), then the index rows, then the files.

        Live sessions of the account end: other processes see its row gone.
        """
        user = self.directory.get_user(email)
        self.keyring.destroy(user.uuid)
        self.passwords.forget(user.uuid)
        self.directory.delete_user_row(user.id)
        self.credentials_changed(user.id)
        self.blobs.delete_account(user.uuid)

    # ------------------------------------------------- sessions and revocation
    def end_sessions(self, email: str) -> int:
        """End every IMAP/POP3 session of the user, in every process, whatever secret it used.

        The credentials themselves stay valid: a new login works. (The panel
        ends its own web sessions.) Returns the user's new credential epoch.
        """
        user = self.directory.get_user(email)
        self.passwords.forget(user.uuid)
        return self.directory.bump_auth_epoch(user.id, end_sessions=True)

    def add_credentials_listener(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(user_id)`` (in the changing thread) after this process changed a user's credentials.

        Other processes' changes are seen by polling ``directory.auth_epochs``.
        Returns a function that removes the listener.
        """
        self._credential_listeners.append(callback)

        def cancel() -> None:
            if callback in self._credential_listeners:
                self._credential_listeners.remove(callback)

        return cancel

    def credentials_changed(self, user_id: int) -> None:
        """A user's password, app passwords, state or sessions changed: tell this process's services."""
        for cb in list(self._credential_listeners):
            try:
                cb(user_id)
            except Exception:  # noqa: BLE001 - a broken listener must not fail the change
                pass

    # ----------------------------------------------------- app passwords
    def add_app_password(self, email: str, name: str) -> str:
        user = self.directory.get_user(email)
        name = (name or "").strip()
        if not name or len(name) > 100 or any(ord(ch) < 32 for ch in name):
            from .errors import InvalidInputError

            raise InvalidInputError("an app password needs a name of 1-100 printable characters")
        code = new_app_password()
        with self.write() as c:
            if c.execute(select(m.app_passwords.c.id).where(m.app_passwords.c.user_id == user.id, m.app_passwords.c.name == name)).first():
                from .errors import ConflictError

                raise ConflictError("{email} already has an app password named {name}", email=user.email, name=name)
            c.execute(
                insert(m.app_passwords).values(
                    user_id=user.id, name=name, digest=app_password_digest(self.app_password_key, code), created=time.time()
                )
            )
        return code

    def list_app_passwords(self, email: str) -> list[AppPassword]:
        user = self.directory.get_user(email)
        with self.read() as c:
            rows = c.execute(select(m.app_passwords).where(m.app_passwords.c.user_id == user.id).order_by(m.app_passwords.c.name)).all()
        return [AppPassword(r.id, r.name, r.created, r.last_used, r.last_ip) for r in rows]

    def revoke_app_password(self, email: str, name: str | None = None) -> int:
        user = self.directory.get_user(email)
        q = delete(m.app_passwords).where(m.app_passwords.c.user_id == user.id)
        if name is not None:
            q = q.where(m.app_passwords.c.name == name)
        with self.write() as c:
            n = c.execute(q).rowcount
            if n:
                self.directory.bump_epoch_in(c, user.id)  # sessions logged in with it end
        if name is not None and not n:
            raise NotFoundError("{email} has no app password named {name}", email=user.email, name=name)
        if n:
            self.credentials_changed(user.id)
        return n

    # ---------------------------------------------------------- delivery
    def begin_delivery(self, sender: str = "", *, source: str = "smtp") -> Delivery:
        return Delivery(self, sender, source=source)

    def append(self, user: User, mailbox: str, raw: bytes, *, flags: tuple[str, ...] = (), internal_date: float | None = None) -> IngestReport:
        return self.ingest.ingest([Target(user, mailbox, flags)], raw, internal_date=internal_date, source="append")

    def gc_blobs(self, user_id: int, blob_ids: set[str]) -> None:
        """Delete the files of blobs no message row refers to any more."""
        if not blob_ids:
            return
        user = self.directory.get_user_by_id(user_id)
        with self.write() as c:
            dead = [b for b in blob_ids if self.mail.blob_refcount(c, user_id, b) == 0]
            if dead:
                c.execute(delete(m.blobs).where(m.blobs.c.blob_id.in_(dead)))
        for b in dead:
            self.blobs.delete(user.uuid, b)

    # ------------------------------------------------------ notifications
    def subscribe(self, mailbox_id: int, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(mailbox_id)`` after each change made by this process.

        Changes by other processes are seen by polling ``mail.versions``
        (see ``storage.watch``). Returns an unsubscribe function.
        """
        with self._listeners_lock:
            self._listeners.setdefault(mailbox_id, []).append(callback)

        def cancel() -> None:
            with self._listeners_lock:
                lst = self._listeners.get(mailbox_id, [])
                if callback in lst:
                    lst.remove(callback)
                if not lst:
                    self._listeners.pop(mailbox_id, None)

        return cancel

    def notify(self, mailbox_id: int) -> None:
        with self._listeners_lock:
            callbacks = list(self._listeners.get(mailbox_id, ()))
        for cb in callbacks:
            try:
                cb(mailbox_id)
            except Exception:  # noqa: BLE001 - one broken watcher must not break a delivery
                pass

    def add_move_hook(self, hook: MoveHook) -> None:
        """Hook called after messages move between mailboxes (spam learning)."""
        self._move_hooks.append(hook)

    def remove_move_hook(self, hook: MoveHook) -> None:
        """Undo ``add_move_hook`` (a service stopping in a process that keeps the store)."""
        if hook in self._move_hooks:
            self._move_hooks.remove(hook)

    def on_move(self, src: Mailbox, dst: Mailbox, uids: list[int]) -> None:
        if not self._move_hooks:
            return
        user = self.directory.get_user_by_id(src.user_id)
        for hook in self._move_hooks:
            try:
                hook(user, src, dst, uids)
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------ recovery
    def recover(self, *, orphan_age: float = 3600.0) -> dict[str, int]:
        """Finish interrupted deliveries: publish indexed tmp files, drop stale unindexed ones."""
        published = removed = 0
        now = time.time()
        for account in self.blobs.iter_account_uuids():
            for blob_id, mtime in self.blobs.iter_tmp(account):
                with self.read() as c:
                    indexed = c.execute(select(m.messages.c.id).where(m.messages.c.blob_id == blob_id).limit(1)).first()
                if indexed or self.blobs.exists(account, blob_id):
                    self.blobs.publish(account, blob_id)
                    published += 1
                elif now - mtime > orphan_age:
                    self.blobs.discard_tmp(account, blob_id)
                    removed += 1
        return {"published": published, "removed": removed}

    # ---------------------------------------------------------- settings
    def get_setting(self, key: str, default: str | None = None) -> str | None:
        with self.read() as c:
            v = c.execute(select(m.settings.c.value).where(m.settings.c.key == key)).scalar()
        return default if v is None else v

    def set_setting(self, key: str, value: str) -> None:
        with self.write() as c:
            if c.execute(select(m.settings.c.key).where(m.settings.c.key == key)).first():
                c.execute(update(m.settings).where(m.settings.c.key == key).values(value=value))
            else:
                c.execute(insert(m.settings).values(key=key, value=value))
