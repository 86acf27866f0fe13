"""The MTA as a service: graceful stop, listener configuration errors."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from conftest import Server, create_test_instance
from mtakit import inbox, message
from smtpchat import Chat


def test_sigterm_lets_a_data_transfer_finish_and_closes_idle_sessions(make_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    srv = Server(inst, services=["mta"])
    port = inst.ports["mx"]
    idle = Chat(port)
    busy = Chat(port)
    try:
        idle.expect("220 ")
        idle.ehlo()
        busy.expect("220 ")
        busy.ehlo()
        busy.send("MAIL FROM:<x@sender.example>")
        busy.expect("250 ")
        busy.send("RCPT TO:<alice@example.test>")
        busy.expect("250 ")
        busy.send("DATA")
        busy.expect("354 ")
        raw = message("x@sender.example", "alice@example.test", "in flight")
        busy.raw(raw[:40])
        srv.proc.send_signal(signal.SIGTERM)
        idle.expect(r"421 4\.3\.2 Service shutting down")
        assert idle.closed()
        time.sleep(0.3)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        busy.raw(raw[40:] + b".\r\n")
        busy.expect(r"250 2\.0\.0 Ok: queued as")
        busy.expect(r"421 4\.3\.2")
        assert busy.closed()
        assert srv.proc.wait(30) == 0
    finally:
        idle.close()
        busy.close()
        srv.stop()
    store = inst.store()
    try:
        assert [m for m in inbox(store, "alice@example.test") if b"Subject: in flight" in m]
    finally:
        store.close()


def test_submission_without_tls_is_a_clear_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path)
    text = inst.config_path.read_text()
    text = text.replace(f'bind = "127.0.0.1:{inst.ports["submission"]}"\ntls = "starttls"',
                        f'bind = "127.0.0.1:{inst.ports["submission"]}"\ntls = "none"')
    inst.config_path.write_text(text)
    out = inst.cli("up", "--service", "mta")
    assert out.returncode != 0
    err = out.stderr.decode()
    assert "listeners.submission.tls" in err and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("appliance: ") and "listeners.submission.tls: submission without TLS" in last
