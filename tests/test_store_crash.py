"""Crash safety and concurrency of delivery, with real processes and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from storefix import new_store, open_store

ROOT = Path(__file__).resolve().parent.parent

CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from storefix import open_store, message
    from storage.store import Store
    import storage.ingest as ingest
    from storage.blobs import BlobStore
    point = sys.argv[2]
    die = lambda *a, **k: os._exit(9)
    store = open_store(__import__("pathlib").Path(sys.argv[1]))
    if point == "after_tmp":
        Store.write = die
        ingest.GroupCommitter._transaction = die  # the committer's own connection: same point
    elif point == "in_transaction":
        original = ingest.index_message
        def index_then_die(*a, **k):
            original(*a, **k)  # rows written, transaction not committed
            os._exit(9)
        ingest.index_message = index_then_die
    elif point == "after_index_commit":
        BlobStore.publish_many = die  # index committed, files still in tmp/
    elif point == "after_publish":
        Store.notify = die
    d = store.begin_delivery("bob@remote.example")
    d.add_recipient("alice@example.test")
    d.write(message(subject="crash " + point, body="x" * 200000))
    d.commit()
    print("COMMITTED")
    """
)


@pytest.mark.parametrize(
    ("point", "visible"),
    [("after_tmp", 0), ("in_transaction", 0), ("after_index_commit", 1), ("after_publish", 1), ("none", 1)],
)
def test_crash_at_each_step_of_delivery(tmp_path, point, visible):  # type: ignore[no-untyped-def]
    root = tmp_path / "inst"
    store = new_store(root)
    user = store.create_user("alice@example.test")
    store.close()
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    proc = subprocess.run([sys.executable, str(script), str(root), point], capture_output=True, text=True, timeout=60)
    assert proc.returncode == (0 if point == "none" else 9), proc.stderr
    store = open_store(root)
    try:
        store.recover(orphan_age=0)
        inbox = store.mail.get_mailbox(user.id, "INBOX")
        msgs = store.mail.messages(inbox.id)
        assert len(msgs) == visible
        for info in msgs:  # whatever is visible is whole and authentic
            assert store.mail.read(user, info).endswith(b"x" * 1000 + b"\r\n")
        leftovers = list((root / "mail" / user.uuid / "tmp").glob("*"))
        assert leftovers == []
        assert store.mail.usage(user.id)[1] == visible
    finally:
        store.close()


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from storefix import open_store, message
    store = open_store(__import__("pathlib").Path(sys.argv[1]))
    tag = sys.argv[2]
    for i in range(int(sys.argv[3])):
        d = store.begin_delivery("bob@remote.example")
        d.add_recipient("alice@example.test")
        d.write(message(subject=f"{{tag}}-{{i}}"))
        d.commit()
        print(f"{{tag}}-{{i}}", flush=True)
    """
)


def _subjects(store, user) -> list[str]:  # type: ignore[no-untyped-def]
    inbox = store.mail.get_mailbox(user.id, "INBOX")
    return [store.mail.meta(user, i)["env"]["subject"] for i in store.mail.messages(inbox.id)]


def test_two_processes_deliver_at_once(tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path / "inst"
    store = new_store(root)
    user = store.create_user("alice@example.test")
    store.close()
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    procs = [subprocess.Popen([sys.executable, str(script), str(root), tag, "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in "ab"]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    store = open_store(root)
    try:
        subjects = _subjects(store, user)
        assert sorted(subjects) == sorted(f"{t}-{i}" for t in "ab" for i in range(40))
        assert store.mail.uids(store.mail.get_mailbox(user.id, "INBOX").id) == list(range(1, 81))
    finally:
        store.close()


@pytest.mark.slow
def test_kill_9_during_deliveries_loses_nothing_acknowledged(tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path / "inst"
    store = new_store(root)
    user = store.create_user("alice@example.test")
    store.close()
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    acked: list[str] = []
    for round_no in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(root), f"r{round_no}", "100000"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        # kill in the middle of the load, not before it starts: a busy machine can take
        # seconds to start the loader, so wait for its first acknowledgements, not a fixed time
        round_acks: list[str] = []
        watchdog = threading.Timer(120, proc.kill)  # a loader that hangs cannot hang the test
        watchdog.start()
        while len(round_acks) < 5 + 5 * round_no:
            line = proc.stdout.readline()
            if not line:
                break
            round_acks.append(line.decode().strip())
        watchdog.cancel()
        time.sleep(0.1 * round_no)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        acked += round_acks + out.decode().split()
    store = open_store(root)
    try:
        store.recover(orphan_age=0)
        subjects = _subjects(store, user)
        assert len(acked) > 20
        assert set(acked) <= set(subjects), "a message that was acknowledged is missing"
        assert len(subjects) == len(set(subjects)), "a message is there twice"
        assert len(subjects) - len(acked) <= 5  # at most the one in flight per kill
        inbox = store.mail.get_mailbox(user.id, "INBOX")
        for info in store.mail.messages(inbox.id):
            store.mail.read(user, info)  # every visible message decrypts and authenticates
    finally:
        store.close()
