"""`appliance up`: starts every service, stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import re
import signal
import socket

import pytest
from conftest import Server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_serves_and_stops_cleanly(make_instance, sig):  # type: ignore[no-untyped-def]
    inst = make_instance(demo=False)
    srv = Server(inst)
    try:
        listening = [line for line in srv.log().splitlines() if line.startswith("listening:")]
        assert listening, srv.log()
        for line in listening:  # every endpoint it announced accepts connections
            m = re.search(r"(\[[0-9a-f:]+\]|[0-9.]+):(\d+)", line)
            assert m, line
            socket.create_connection((m.group(1).strip("[]"), int(m.group(2))), timeout=5).close()
    finally:
        code = srv.stop(sig)
    assert code == 0, srv.log()
    assert "stopped" in srv.log()
    assert "Traceback" not in srv.log()


def test_up_refuses_a_bad_config_in_one_line(make_instance, tmp_path):  # type: ignore[no-untyped-def]
    from conftest import run_cli

    inst = make_instance(demo=False)
    bad = inst.config_path.read_text().replace('[listeners.imap]\nprotocol = "imap"', '[listeners.imap]\nprotocol = "imap4"')
    path = inst.path / "bad.toml"
    path.write_text(bad)
    p = run_cli("-c", str(path), "up")
    assert p.returncode == 78
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "listeners.imap.protocol" in err[0]


def test_systemd_notify_and_watchdog_come_from_the_service_process_only(make_instance, tmp_path):  # type: ignore[no-untyped-def]
    """Type=notify with WatchdogSec: READY=1 once the SMTP workers listen, WATCHDOG=1 pings, STOPPING=1;
    every datagram from the service's own pid (systemd's NotifyAccess=main), none from a worker."""
    import os
    import struct
    import subprocess
    import sys
    import time

    from conftest import ROOT, create_test_instance

    inst = create_test_instance(tmp_path / "inst", overrides={"smtp.workers": 2}, demo=False)
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(60)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=path, WATCHDOG_USEC="600000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "-c", str(inst.config_path), "up", "--service", "mta"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    seen: list[tuple[int, str]] = []

    def receive() -> tuple[int, str]:
        data, anc, _flags, _addr = sock.recvmsg(1024, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("iII", d)[0] for level, kind, d in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        seen.append((pid, data.decode()))
        return seen[-1]

    try:
        while receive()[1] != "READY=1":
            pass
        socket.create_connection(("127.0.0.1", inst.ports["mx"]), timeout=5).close()  # the workers listen
        deadline = time.monotonic() + 10
        while sum(m == "WATCHDOG=1" for _p, m in seen) < 3 and time.monotonic() < deadline:
            receive()
        proc.send_signal(signal.SIGTERM)
        while receive()[1] != "STOPPING=1":
            pass
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert sum(m == "WATCHDOG=1" for _p, m in seen) >= 3, seen
    assert {p for p, _m in seen} == {proc.pid}, seen
