"""One real antispam service (rspamd, redis, unbound) for the whole test session.

rspamd's first start compiles its rules (about a minute; seconds once
pytest's cache holds the compiled files), so the test modules that need a
real rspamd share one: ``shared_harness(request, tmp_path_factory)`` starts
it on first use, in an instance of its own (demo accounts, example.test),
and stops it when the session ends. ``unmanaged_overrides(harness)`` points
another instance (an ``appliance up`` under test) at that rspamd.

Tests may pause or kill its rspamd, but must leave it running and ready.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

from antispam import testing

_shared: dict[str, Any] = {}


def shared_harness(request: Any, tmp_path_factory: Any) -> testing.Harness:
    harness = _shared.get("harness")
    if harness is not None:
        return harness
    from conftest import create_test_instance

    extra: dict[str, Any] = {}
    if clamd_installed():
        signatures = tmp_path_factory.mktemp("clamav-db")
        write_test_signatures(signatures)
        extra = {"antispam.virus_scan": True, "antispam.virus_database_dir": str(signatures)}
    inst = create_test_instance(tmp_path_factory.mktemp("antispam-shared"), overrides=testing.overrides(**extra))
    cache = Path(request.config.cache.mkdir("rspamd-compiled"))
    testing.seed_cache(inst.path, cache)
    harness = testing.Harness(inst.config())
    harness.inst = inst  # type: ignore[attr-defined]
    if extra:
        clamd = harness.service.daemons["clamd"]
        if not harness.run(clamd.wait_ready(120), 130):
            raise RuntimeError("clamd did not start: see " + str(clamd.log_path))

    def close() -> None:
        _shared.pop("harness", None)
        harness.close()
        testing.save_cache(inst.path, cache)

    request.config.add_cleanup(close)
    _shared["harness"] = harness
    return harness


# The EICAR test file (https://www.eicar.org): every virus scanner reports it, and it harms nothing.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def clamd_installed() -> bool:
    return shutil.which("clamd") is not None or Path("/usr/sbin/clamd").exists()


def write_test_signatures(directory: Path) -> Path:
    """A ClamAV body signature for EICAR: the official signatures come from the internet (freshclam),
    which tests do not have; clamd refuses to start without any."""
    path = Path(directory) / "appliance-test.ndb"
    path.write_text(f"Appliance.Test.EICAR:0:*:{EICAR.hex()}\n")
    return path


def unmanaged_overrides(harness: testing.Harness, **extra: Any) -> dict[str, Any]:
    """Config overrides for an instance whose antispam uses the shared rspamd (not started by it)."""
    a = harness.cfg.antispam
    return {"antispam.enabled": True, "antispam.managed": False, "antispam.url": a.url,
            "antispam.controller_url": a.controller_url,
            "antispam.controller_password_file": str(a.controller_password_file), **extra}


def wait_ready(harness: testing.Harness, timeout: float = 120.0) -> None:
    """Wait until the shared rspamd answers (after a test paused or killed it)."""
    rspamd = harness.service.daemons["rspamd"]
    if not harness.run(rspamd.wait_ready(timeout), timeout + 10):
        raise RuntimeError("the shared rspamd did not come back")


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def redis_command(harness: testing.Harness, *args: str) -> Any:
    """One command to the shared redis (RESP over a socket; integers, bulk strings, arrays)."""
    password = (Path(harness.cfg.instance.data_dir) / "spam" / "redis.password").read_text().strip()
    with socket.create_connection(("127.0.0.1", harness.cfg.antispam.redis_port), timeout=10) as s:
        f = s.makefile("rb")

        def send(*a: str) -> Any:
            s.sendall(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x.encode()), x.encode()) for x in a))
            return read()

        def read() -> Any:
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise RuntimeError(f"unexpected redis reply {line!r}")

        send("AUTH", password)
        return send(*args)


def bayes_learns(harness: testing.Harness) -> dict[str, int]:
    """Messages learned per class, from rspamd's Bayes store in redis (hash ``RS``).

    The controller's /stat shows the same numbers per statfile (``revision``),
    but refreshes them from redis only every half minute or so.
    """
    values = redis_command(harness, "HMGET", "RS", "learns_spam", "learns_ham")
    return {"spam": int(values[0] or 0), "ham": int(values[1] or 0)}
