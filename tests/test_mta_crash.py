"""kill -9 during a load of concurrent senders: every message that got 250 is stored exactly once."""

from __future__ import annotations

import collections
import signal
import smtplib
import threading
import time

import pytest
from conftest import Server, create_test_instance
from mtakit import inbox, inbox_message_ids, message

SENDERS = 10
RECIPIENTS = ("alice@example.test", "bob@example.test", "admin@example.test")


def sender_loop(port: int, worker: int, stop: threading.Event, acked: list[tuple[str, str]]) -> None:
    n = 0
    try:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname=f"load{worker}.example", timeout=10)
    except OSError:
        return
    try:
        while not stop.is_set():
            rcpt = RECIPIENTS[(worker + n) % len(RECIPIENTS)]
            mid = f"<w{worker}-n{n}@crash.example>"
            raw = message("load@sender.example", rcpt, f"crash {worker}/{n}").replace(
                b"Message-ID: <", b"X-Old-Id: <"
            ).replace(b"\r\n\r\n", f"\r\nMessage-ID: {mid}\r\n\r\n".encode(), 1)
            n += 1
            try:
                client.sendmail("load@sender.example", [rcpt], raw)
            except (smtplib.SMTPException, OSError):
                return  # the server died under us: this one is unknown, not acknowledged
            acked.append((rcpt, mid))
    finally:
        try:
            client.close()
        except OSError:
            pass


@pytest.mark.slow
def test_kill_9_during_load_loses_and_duplicates_nothing(tmp_path_factory) -> None:
    inst = create_test_instance(tmp_path_factory.mktemp("crash"))
    srv = Server(inst, services=["mta"])
    port = inst.ports["mx"]
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender_loop, args=(port, i, stop, acked), daemon=True) for i in range(SENDERS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 50, f"only {len(acked)} messages accepted before the kill"
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        srv.stop()

    # restart: recovery publishes indexed files and drops unacknowledged temp files
    srv = Server(inst, services=["mta"])
    try:
        store = inst.store()
        try:
            counts: collections.Counter[str] = collections.Counter()
            for rcpt in RECIPIENTS:
                counts.update(inbox_message_ids(store, rcpt))
                assert all(raw.endswith(b"Hello there.\r\n") for raw in inbox(store, rcpt))  # every file whole and readable
            acked_ids = {mid for _, mid in acked}
            missing = [mid for mid in acked_ids if counts[mid] == 0]
            duplicated = [mid for mid, n in counts.items() if n > 1]
            assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
            assert not duplicated, f"duplicated: {duplicated[:3]}"
            assert len(counts) - len(acked_ids) <= SENDERS  # at most the one in flight per sender
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # and it serves again
                client.sendmail("x@sender.example", ["alice@example.test"], message("x@sender.example", "alice@example.test", "after"))
        finally:
            store.close()
    finally:
        srv.stop()
