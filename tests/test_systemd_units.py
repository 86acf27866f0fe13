"""The systemd units: shipped = rendered, systemd-analyze verify, hardening, watchdog, credentials."""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_installer_fixtures import install

from appliance.config import ConfigError, load_config
from installer.paths import Layout
from installer.units import SERVICES, executable, render_units

REPO = Path(__file__).resolve().parent.parent


def parse(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def test_shipped_units_are_the_rendered_ones() -> None:
    rendered = render_units()
    shipped = {p.name: p.read_text() for p in (REPO / "systemd").iterdir()}
    assert shipped == rendered, "regenerate systemd/ from installer.units.render_units()"


def test_units_run_one_service_each_unprivileged_and_sandboxed() -> None:
    units = render_units()
    for service in SERVICES:
        s = parse(units[f"appliance-{service}.service"])["Service"]
        assert s["ExecStart"].endswith(f"appliance -c /etc/appliance/appliance.toml up --service {service}")
        assert s["Type"] == "notify" and s["WatchdogSec"] == "60s"
        assert s["User"] == "appliance" and s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
        assert s["ProtectSystem"] == "strict" and s["ReadWritePaths"] == "/var/lib/appliance /var/log/appliance"
        assert s["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE" and s["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
        assert s["LoadCredential"] == "master.key:/etc/appliance/credentials/master.key"
    target = parse(units["appliance.target"])
    assert target["Unit"]["Wants"].split() == [f"appliance-{s}.service" for s in SERVICES]


def _verify(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, files)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # the shipped units, with ExecStart pointing at this checkout's appliance command
    for name, text in render_units(Layout(), executable()).items():
        (tmp_path / name).write_text(text)
    p = _verify(sorted(tmp_path.iterdir()))
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    # the units an install writes into a fake root
    root = tmp_path / "root"
    assert install(root)[0] == 0
    p = _verify(sorted((root / "etc/systemd/system").iterdir()))
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


def test_watchdog_pings_and_readiness(make_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance(demo=False)
    sock_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(30)
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="200000")
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "-c", str(inst.config_path), "up", "--service", "antispam"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 30
            while seen.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
                seen.append(sock.recv(100).decode())
            assert seen[0] == "READY=1" and seen.count("WATCHDOG=1") >= 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            while (msg := sock.recv(100).decode()) == "WATCHDOG=1":
                pass
            assert msg == "STOPPING=1"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_watchdog_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.runner import watchdog_interval

    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None


def test_master_key_from_the_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.config import render_default_config

    (tmp_path / "creds").mkdir()
    text = render_default_config(**{"storage.master_key_file": "${CREDENTIALS_DIRECTORY:-/etc/appliance/credentials}/master.key",
                                    "listeners": {"panel": {"protocol": "http", "bind": "127.0.0.1:8080", "tls": "none"}}})
    (tmp_path / "appliance.toml").write_text(text)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load_config(tmp_path / "appliance.toml").storage.master_key_file == Path("/etc/appliance/credentials/master.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert load_config(tmp_path / "appliance.toml").storage.master_key_file == tmp_path / "creds" / "master.key"
    (tmp_path / "appliance.toml").write_text(text.replace("${CREDENTIALS_DIRECTORY:-/etc/appliance/credentials}", "${NO_SUCH_VAR}"))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "appliance.toml")
    assert str(info.value).endswith("storage.master_key_file: environment variable NO_SUCH_VAR is not set "
                                    "(give a default: ${NO_SUCH_VAR:-/path})")
