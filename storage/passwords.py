"""Password hashing (Argon2id), the login cache and app-password digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

APP_PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


class Passwords:
    """Argon2id hashing with a short-lived cache of successful verifications.

    The cache key covers the stored hash, so a changed password (new hash)
    can never hit an old entry; ``forget`` drops a user's entries at once.
    """

    def __init__(
        self,
        *,
        time_cost: int = 3,
        memory_cost_kib: int = 65536,
        parallelism: int = 4,
        cache_ttl: float = 3600.0,
        cache_size: int = 10000,
    ) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism)
        self._ttl = cache_ttl
        self._size = cache_size
        self._cache: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._salt = secrets.token_bytes(16)
        self._dummy: str | None = None  # made on first use: CLI commands never pay for it

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def _key(self, user_uuid: str, stored_hash: str, password: str) -> bytes:
        return hashlib.blake2b(
            b"\0".join([user_uuid.encode(), stored_hash.encode(), password.encode("utf-8", "surrogatepass")]),
            key=self._salt,
            digest_size=32,
        ).digest()

    def verify(self, user_uuid: str, stored_hash: str | None, password: str) -> bool:
        """Check a password; blocking (~100 ms at default cost): call from a thread."""
        if not stored_hash:
            self.burn()
            return False
        key = self._key(user_uuid, stored_hash, password)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] > now:
                self._cache.move_to_end(key)
                return True
        try:
            ok = self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if ok:
            with self._lock:
                self._cache[key] = (now + self._ttl, user_uuid)
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return ok

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def burn(self) -> None:
        """Spend the time of one verification, so unknown users look like known ones."""
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        try:
            self._hasher.verify(self._dummy, "x")
        except VerificationError:
            pass

    def forget(self, user_uuid: str) -> None:
        with self._lock:
            for k in [k for k, (_, u) in self._cache.items() if u == user_uuid]:
                del self._cache[k]


def new_app_password() -> str:
    """A 128-bit random code, grouped for typing on a phone: xxxx-xxxx-xxxx-xxxx-xxxx-xxxx."""
    raw = "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(28))
    return "-".join(raw[i : i + 4] for i in range(0, 28, 4))


def app_password_digest(key: bytes, code: str) -> str:
    normal = code.strip().lower().replace(" ", "").replace("-", "")
    return hmac.new(key, normal.encode(), hashlib.sha256).hexdigest()


def looks_like_app_password(code: str) -> bool:
    normal = code.strip().lower().replace(" ", "").replace("-", "")
    return len(normal) == 28 and all(ch in APP_PASSWORD_ALPHABET for ch in normal)
