"""Shared fixtures: instances on free loopback ports, and one running server.

``make_instance`` creates a throw-away instance (cheap Argon2, short failure
delay) with every listener on a free port. ``server`` is one ``appliance up``
process per test session, shared by the end-to-end tests of every protocol.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = {
    "mx": ("smtp", "starttls"),
    "submission": ("submission", "starttls"),
    "submissions": ("submission", "implicit"),
    "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
    "panel": ("http", "none"),
}
FAST_AUTH = {
    "auth.argon2_time_cost": 1,
    "auth.argon2_memory_cost_kib": 8192,
    "auth.argon2_parallelism": 1,
    "auth.failure_delay": 0.2,
}


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked, so the
    kernel cannot hand the same port out twice (one at a time, it sometimes did)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Instance:
    path: Path
    config_path: Path
    domain: str
    ports: dict[str, int]
    accounts: dict[str, str] = field(default_factory=dict)

    def config(self):  # type: ignore[no-untyped-def]
        from appliance.config import load_config

        return load_config(self.config_path)

    def store(self):  # type: ignore[no-untyped-def]
        from storage.store import Store

        return Store.from_config(self.config())

    def cli(self, *args: str, input: bytes | None = None, check: bool = False) -> subprocess.CompletedProcess:
        return run_cli("-c", str(self.config_path), *args, input=input, check=check)


def run_cli(*args: str, input: bytes | None = None, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    e["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], input=input, capture_output=True, check=check, timeout=120, env=e
    )


def create_test_instance(path: Path, *, domain: str = "example.test", overrides: dict | None = None, demo: bool = True) -> Instance:
    from appliance.instance import create_instance

    ports = dict(zip(PROTOCOLS, free_ports(len(PROTOCOLS)), strict=True))
    listeners = {
        name: {"protocol": proto, "bind": f"127.0.0.1:{ports[name]}", "tls": tls} for name, (proto, tls) in PROTOCOLS.items()
    }
    # queue.hold: test instances never send mail out (tests of delivery set it false, with a fake DNS)
    opts = {"listeners": listeners, **FAST_AUTH, "antispam.enabled": False, "queue.hold": True}
    opts.update(overrides or {})
    new = create_instance(path, domain=domain, dev=True, demo_accounts=demo, config_overrides=opts)
    return Instance(new.path, new.config_path, domain, ports, dict(new.accounts))


@pytest.fixture
def make_instance(tmp_path_factory):  # type: ignore[no-untyped-def]
    def make(**kw):  # type: ignore[no-untyped-def]
        return create_test_instance(tmp_path_factory.mktemp("inst"), **kw)

    return make


class Server:
    """An ``appliance up`` process: started, waited for, stopped by SIGTERM."""

    def __init__(self, inst: Instance, services: list[str] | None = None) -> None:
        self.inst = inst
        args = [sys.executable, "-m", "appliance", "-c", str(inst.config_path), "up"]
        for s in services or []:
            args += ["--service", s]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.log_path = inst.path / "log" / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            if b"ready;" in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def shared_instance(tmp_path_factory) -> Instance:  # type: ignore[no-untyped-def]
    return create_test_instance(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="session")
def server(shared_instance):  # type: ignore[no-untyped-def]
    srv = Server(shared_instance)
    yield srv
    srv.stop()


def load_accounts(inst: Instance) -> dict[str, str]:
    return json.loads((inst.path / "demo-accounts.json").read_text())
