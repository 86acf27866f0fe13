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
