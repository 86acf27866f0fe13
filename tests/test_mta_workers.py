"""SMTP worker processes (``smtp.workers``): supervision, crash safety, the per-IP limit across workers.

Each test runs its own ``appliance up --service mta`` with two workers and
real smtplib clients; worker processes are found as the children of the
service process.
"""

from __future__ import annotations

import collections
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, Server, create_test_instance
from mtakit import inbox, message

from appliance.config import ConfigError, load_config

RECIPIENTS = ("alice@example.test", "bob@example.test", "admin@example.test")
SENDERS = 8


def workers_of(pid: int) -> list[int]:
    """Pids of the ``mta.worker`` children of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"mta.worker" in cmdline:
            out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start(tmp_path_factory, **overrides):  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path_factory.mktemp("workers"), overrides={"smtp.workers": 2, **overrides})
    srv = Server(inst, services=["mta"])
    wait_for(lambda: len(workers_of(srv.proc.pid)) == 2, 30, "two workers")
    return inst, srv


def sender_loop(port: int, n0: int, stop: threading.Event, acked: list[str], failures: list[str]) -> None:
    """Send until told to stop, reconnecting after a failure (the worker under us died)."""
    n = 0
    client = None
    while not stop.is_set():
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, local_hostname=f"load{n0}.example", timeout=20)
            rcpt = RECIPIENTS[(n0 + n) % len(RECIPIENTS)]
            mid = f"<w{n0}-n{n}@workers.example>"
            raw = message("load@sender.example", rcpt, f"load {n0}/{n}").replace(
                b"Message-ID: <", b"X-Old-Id: <").replace(b"\r\n\r\n", f"\r\nMessage-ID: {mid}\r\n\r\n".encode(), 1)
            n += 1
            client.sendmail("load@sender.example", [rcpt], raw)
            acked.append(mid)
        except (smtplib.SMTPException, OSError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            if client is not None:
                try:
                    client.close()
                except OSError:
                    pass
            client = None
            time.sleep(0.05)
    if client is not None:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass


def stored_ids(store) -> collections.Counter[str]:  # type: ignore[no-untyped-def]
    counts: collections.Counter[str] = collections.Counter()
    for rcpt in RECIPIENTS:
        user = store.directory.get_user(rcpt)
        mb = store.mail.get_mailbox(user.id, "INBOX")
        counts.update(s["message_id"] for s in store.mail.summaries(user, mb.id).values())
        assert all(raw.endswith(b"Hello there.\r\n") for raw in inbox(store, rcpt))  # every file whole and readable
    return counts


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_load_loses_and_duplicates_nothing(tmp_path_factory) -> None:
    inst, srv = start(tmp_path_factory)
    port = inst.ports["mx"]
    acked: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender_loop, args=(port, i, stop, acked, failures), daemon=True)
               for i in range(SENDERS)]
    try:
        before = workers_of(srv.proc.pid)
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 150, 60, "150 messages accepted")
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = len(acked)
        replaced = wait_for(lambda: (w := workers_of(srv.proc.pid)) and len(w) == 2 and victim not in w and w, 30,
                            "the dead worker replaced")
        wait_for(lambda: len(acked) >= killed_at + 150, 60, "150 more messages after the kill")
        assert srv.proc.poll() is None
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert srv.stop() == 0
    assert "exited with signal 9; starting it again" in srv.log()
    assert before[1] in replaced and victim not in replaced

    store = inst.store()
    try:
        counts = stored_ids(store)
    finally:
        store.close()
    missing = [m for m in acked if counts[m] == 0]
    duplicated = [m for m, k in counts.items() if k > 1]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    assert not duplicated, f"duplicated: {duplicated[:3]}"
    assert len(counts) - len(set(acked)) <= len(failures)  # only the ones in flight when a connection broke


def test_kill_9_of_the_service_leaves_no_worker(tmp_path_factory) -> None:
    inst, srv = start(tmp_path_factory)
    workers = workers_of(srv.proc.pid)
    client = smtplib.SMTP("127.0.0.1", inst.ports["mx"], timeout=15)  # an idle session in a worker
    try:
        client.ehlo()
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in workers), 30, "the workers to exit")
        code, text = client.getreply()  # the session was told, not dropped
        assert code == 421 and b"shutting down" in text
    finally:
        client.close()
    srv.stop()


def test_sigterm_stops_the_workers_and_the_service_exits_0(tmp_path_factory) -> None:
    inst, srv = start(tmp_path_factory)
    workers = workers_of(srv.proc.pid)
    with smtplib.SMTP("127.0.0.1", inst.ports["submission"], timeout=15) as client:
        client.ehlo()
        assert srv.stop() == 0
        code, text = client.getreply()
        assert code == 421 and b"shutting down" in text
    assert not any(alive(p) for p in workers)


def test_per_ip_limit_holds_across_workers(tmp_path_factory) -> None:
    """Connections from one address are counted over both workers (the kernel spreads them)."""
    inst, srv = start(tmp_path_factory, **{"smtp.max_connections_per_ip": 4})
    port = inst.ports["mx"]
    try:
        open_: list[smtplib.SMTP] = []
        try:
            for _ in range(4):
                c = smtplib.SMTP("127.0.0.1", port, timeout=15)
                assert c.noop()[0] == 250
                open_.append(c)
            for _ in range(6):  # every further one, whichever worker takes it, is refused
                with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                    greeting = s.recv(512)
                    assert greeting.startswith(b"421 4.7.0 Too many connections"), greeting
            open_.pop().quit()

            def accepted() -> bool:
                with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                    return s.recv(512).startswith(b"220 ")

            wait_for(accepted, 10, "a connection accepted again after one closed")
        finally:
            for c in open_:
                c.close()
    finally:
        assert srv.stop() == 0


def test_a_port_in_use_fails_the_start_clearly_and_leaves_no_worker(tmp_path_factory) -> None:
    inst = create_test_instance(tmp_path_factory.mktemp("workers"), overrides={"smtp.workers": 2})
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", inst.ports["submission"]))
        squatter.listen()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "appliance", "-c", str(inst.config_path), "up", "--service", "mta"],
                           capture_output=True, env=env, timeout=120)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "address already in use" in err.lower() and "Traceback" not in err, err
    assert time.monotonic() - t0 < 90
    leftover = subprocess.run(["pgrep", "-f", f"mta.worker --config {inst.config_path}"], capture_output=True)
    assert leftover.stdout == b""


PLAIN = '[instance]\ndata_dir = "."\n\n[listeners.mx]\nprotocol = "smtp"\nbind = "127.0.0.1:2525"\ntls = "none"\n\n'


def test_workers_setting(tmp_path_factory) -> None:
    from mta.workers import MAX_AUTO, worker_count

    base = tmp_path_factory.mktemp("cfg")
    for raw, loaded in (('"auto"', 0), ("1", 1), ("6", 6)):
        path = base / f"w{loaded}.toml"
        path.write_text(PLAIN + f"[smtp]\nworkers = {raw}\n")
        assert load_config(path).smtp.workers == loaded
    assert 1 <= worker_count(0) <= MAX_AUTO and worker_count(3) == 3
    for raw in ('"many"', "0", "-2", "true", "65"):
        path = base / "bad.toml"
        path.write_text(PLAIN + f"[smtp]\nworkers = {raw}\n")
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert "smtp.workers" in str(e.value)
