"""Debian's own rspamd.service and redis-server.service against the managed antispam.

The installer stops, disables and masks them (rspamd.service would hold our
rspamd's ports 11333/11334; redis-server.service is a second, password-less
redis nothing uses), keeps them masked on a re-run, and ``appliance
uninstall`` unmasks them. The host's systemd is never touched: a fake
``systemctl`` first on PATH records every call and keeps unit states in
files, and the installer runs its real ``units.systemctl`` against it.

``appliance status`` and ``appliance doctor`` name a program the appliance
did not start that holds one of the managed antispam's ports: here a real
process called ``rspamd`` listening on the instance's rspamd port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_installer_fixtures import hooks, install

from installer.install import run_uninstall

FAKE_SYSTEMCTL = textwrap.dedent('''\
    #!{python}
    """A stand-in for systemctl: logs its arguments, keeps unit states as files in $FAKE_SYSTEMD."""
    import os, sys
    from pathlib import Path
    root = Path(os.environ["FAKE_SYSTEMD"])
    args = sys.argv[1:]
    with open(root / "calls.log", "a") as log:
        log.write(" ".join(args) + "\\n")
    def state(unit, kind):
        f = root / f"{{unit}}.{{kind}}"
        return f.read_text().strip() if f.exists() else None
    def put(unit, kind, value):
        (root / f"{{unit}}.{{kind}}").write_text(value)
    verb, units = args[0], [a for a in args[1:] if not a.startswith("--")]
    known = [u for u in units if state(u, "enabled") is not None]
    if verb in ("is-enabled", "is-active"):
        unit = units[0]
        if state(unit, "enabled") is None:
            print(f"Failed to get unit file state for {{unit}}: No such file or directory", file=sys.stderr)
            sys.exit(1)
        value = state(unit, "enabled" if verb == "is-enabled" else "active")
        print(value)
        sys.exit(0 if value in ("enabled", "active") else 1)
    if verb == "disable":
        for u in known:
            put(u, "enabled", "disabled")
            if "--now" in args:
                put(u, "active", "inactive")
    elif verb == "mask":
        for u in known:
            put(u, "enabled", "masked")
    elif verb == "unmask":
        for u in known:
            put(u, "enabled", "disabled")
    elif verb == "stop":
        for u in known:
            put(u, "active", "inactive")
    sys.exit(0)
''')


@pytest.fixture
def systemd(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A fake systemd with Debian's rspamd and redis-server units enabled and running."""
    root = tmp_path / "systemd"
    bindir = tmp_path / "bin"
    root.mkdir()
    bindir.mkdir()
    exe = bindir / "systemctl"
    exe.write_text(FAKE_SYSTEMCTL.format(python=sys.executable))
    exe.chmod(0o755)
    for unit in ("rspamd.service", "redis-server.service", "unbound.service"):
        (root / f"{unit}.enabled").write_text("enabled")
        (root / f"{unit}.active").write_text("active")
    monkeypatch.setenv("FAKE_SYSTEMD", str(root))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    class Fake:
        def calls(self) -> list[str]:
            log = root / "calls.log"
            return log.read_text().splitlines() if log.exists() else []

        def state(self, unit: str) -> tuple[str, str]:
            return (root / f"{unit}.enabled").read_text(), (root / f"{unit}.active").read_text()

        def remove(self, unit: str) -> None:
            for kind in ("enabled", "active"):
                (root / f"{unit}.{kind}").unlink()

    return Fake()


def systemd_hooks():  # type: ignore[no-untyped-def]
    return hooks(systemd_running=lambda layout: True)  # systemctl: the real runner, which finds the fake on PATH


def test_install_stops_disables_and_masks_debians_rspamd_and_redis(tmp_path, systemd) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    rc, out = install(root, systemd_hooks())
    assert rc == 0, out
    calls = systemd.calls()
    for unit in ("rspamd.service", "redis-server.service"):
        assert systemd.state(unit) == ("masked", "inactive")
        assert f"disable --now {unit}" in calls and f"mask {unit}" in calls
        assert f"stopped, disabled and masked {unit}: the appliance runs its own" in out
        # before our services start, so our rspamd finds its ports free
        assert calls.index(f"mask {unit}") < calls.index("enable --now appliance.target")
    assert systemd.state("unbound.service") == ("enabled", "active")  # may be the host's resolver: left alone
    assert not any("unbound.service" in c for c in calls)
    state = json.loads((root / "var/lib/appliance/.installer-state.json").read_text())
    assert state["masked_units"] == ["redis-server.service", "rspamd.service"]

    # a re-run keeps them masked and changes nothing
    before = len(calls)
    rc, out = install(root, systemd_hooks())
    assert rc == 0, out
    again = systemd.calls()[before:]
    assert not any(c.startswith(("disable", "mask", "stop")) for c in again), again
    assert "rspamd.service stays masked (the appliance runs its own)" in out

    # uninstall gives them back to the operator: unmasked, still disabled
    out_stream = __import__("io").StringIO()
    assert run_uninstall(root, purge=False, yes=True, hooks=systemd_hooks(), stream=out_stream) == 0
    assert systemd.state("rspamd.service") == ("disabled", "inactive")
    assert "unmasked rspamd.service (it stays disabled)" in out_stream.getvalue()


def test_with_virus_scanning_debians_clamd_is_masked_too_but_not_freshclam(tmp_path, systemd) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    fake = Path(os.environ["FAKE_SYSTEMD"])
    for unit in ("clamav-daemon.service", "clamav-freshclam.service"):
        (fake / f"{unit}.enabled").write_text("enabled")
        (fake / f"{unit}.active").write_text("active")
    assert install(root, hooks())[0] == 0  # first without systemd, to get a config to edit
    config = root / "etc/appliance/appliance.toml"
    config.write_text(config.read_text().replace("virus_scan = false", "virus_scan = true"))
    rc, out = install(root, systemd_hooks())
    assert rc == 0, out
    assert systemd.state("clamav-daemon.service") == ("masked", "inactive")
    assert systemd.state("clamav-freshclam.service") == ("enabled", "active")  # keeps the signatures fresh


def test_a_masked_unit_that_still_runs_is_stopped_and_missing_packages_are_skipped(tmp_path, systemd) -> None:  # type: ignore[no-untyped-def]
    systemd.remove("redis-server.service")  # package not installed
    (Path(os.environ["FAKE_SYSTEMD"]) / "rspamd.service.enabled").write_text("masked")
    rc, out = install(tmp_path / "root", systemd_hooks())
    assert rc == 0, out
    calls = systemd.calls()
    assert "stop rspamd.service" in calls and systemd.state("rspamd.service") == ("masked", "inactive")
    assert "stopped rspamd.service (masked, but still running)" in out
    assert not any(c.startswith(("disable", "mask")) and "redis-server" in c for c in calls)


def test_dry_run_only_says_what_it_would_do(tmp_path, systemd) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert install(root, hooks())[0] == 0  # installed without systemd: the config exists
    rc, out = install(root, systemd_hooks(), dry_run=True)
    assert rc == 0, out
    assert "would stop, disable and mask rspamd.service" in out
    assert systemd.state("rspamd.service") == ("enabled", "active")
    assert not any(c.startswith(("disable", "mask", "stop", "enable")) for c in systemd.calls())


def test_a_failing_systemctl_stops_the_install_with_a_fix(tmp_path, systemd, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from installer import units

    def failing(*args: str) -> tuple[bool, str]:
        if args[0] == "mask":
            return False, "Access denied"
        return units.systemctl(*args)

    rc, out = install(tmp_path / "root", hooks(systemd_running=lambda layout: True, systemctl=failing))
    assert rc == 1
    assert "systemctl mask rspamd.service failed: Access denied" in out
    assert "systemctl disable --now rspamd.service; systemctl mask rspamd.service" in out
    assert "enable --now appliance.target" not in systemd.calls()


# ---------------------------------------------------------------- status and doctor name a foreign rspamd


@pytest.fixture
def foreign_rspamd(tmp_path):  # type: ignore[no-untyped-def]
    """Start a real process named rspamd, not started by the appliance, listening on a port; yields (port, pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = tmp_path / "rspamd"
    exe.symlink_to(sys.executable)  # the kernel names the process after the path it was started by
    code = ("import socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('127.0.0.1', {port}))\ns.listen()\nprint('listening', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([str(exe), "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"listening"
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_status_and_doctor_name_a_foreign_rspamd_on_our_port(make_instance, foreign_rspamd) -> None:  # type: ignore[no-untyped-def]
    from antispam import testing

    port, pid = foreign_rspamd
    inst = make_instance(overrides=testing.overrides(**{"antispam.url": f"http://127.0.0.1:{port}"}), demo=False)
    r = inst.cli("status")
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert f"antispam: conflict (port {port} (antispam.url) is held by rspamd (pid {pid}), which the appliance did not start" in text
    assert "systemctl disable --now rspamd.service && systemctl mask rspamd.service" in text
    info = json.loads(inst.cli("status", "--json").stdout)["antispam"]
    assert info["state"] == "conflict"

    r = inst.cli("doctor", "--no-dns")
    text = r.stdout.decode()
    assert r.returncode != 0
    assert f"port {port} (antispam.url) is held by rspamd (pid {pid})" in text
    assert "systemctl mask rspamd.service" in text

    # in Chinese too
    from tests.conftest import run_cli

    r = run_cli("-c", str(inst.config_path), "status", env={"APPLIANCE_LANG": "zh-CN"})
    assert "端口冲突" in r.stdout.decode() and "不是本系统启动的" in r.stdout.decode()


def test_our_own_daemons_are_not_a_conflict(make_instance) -> None:  # type: ignore[no-untyped-def]
    """A listener whose parent is an ``appliance ... up`` process is ours."""
    from antispam import ports, testing

    inst = make_instance(overrides=testing.overrides(), demo=False)
    cfg = inst.config()
    port = cfg.antispam.redis_port
    code = ("import socket, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', "
            f"\"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)\"])\n"
            "time.sleep(60)\n")
    # argv like "python -m appliance -c CONFIG up", as the antispam service runs
    parent = subprocess.Popen([sys.executable, "-c", code, "appliance", "-c", str(inst.config_path), "up"],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        found: list = []
        while time.monotonic() < deadline and not found:
            found = ports.holders(cfg)
            time.sleep(0.1)
        assert [(h.port, h.ours) for h in found] == [(port, True)]
        assert ports.foreign(cfg) == []
    finally:
        os.killpg(parent.pid, 9)
        parent.wait()
