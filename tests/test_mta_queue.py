"""The outbound queue's contract and on-disk format (mta/queue.py), in process."""

from __future__ import annotations

import os
import time

import pytest

from mta.queue import MAGIC, OutboundQueue, new_queue_id
from storage.errors import CryptoError, NotFoundError


@pytest.fixture
def inst(make_instance):  # type: ignore[no-untyped-def]
    return make_instance(demo=False)


@pytest.fixture
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


@pytest.fixture
def queue(inst, store) -> OutboundQueue:  # type: ignore[no-untyped-def]
    return OutboundQueue(store, inst.path / "queue")


RAW = b"From: a@example.test\r\nTo: b@remote.example\r\nSubject: queued\r\n\r\nbody\r\n"


def test_enqueue_load_remove_roundtrip(queue: OutboundQueue) -> None:
    qid = queue.enqueue("a@example.test", ["b@remote.example", "c@remote.example"], RAW, meta={"ip": "192.0.2.1"})
    assert queue.ids() == [qid]
    m = queue.load(qid)
    assert (m.id, m.sender, m.recipients, m.raw, m.meta) == (qid, "a@example.test", ["b@remote.example", "c@remote.example"], RAW, {"ip": "192.0.2.1"})
    assert abs(m.created - time.time()) < 60
    queue.remove(qid)
    assert queue.ids() == []
    queue.remove(qid)  # idempotent
    with pytest.raises(NotFoundError):
        queue.load(qid)


def test_ids_sort_by_arrival_and_survive_a_new_instance(queue: OutboundQueue, store) -> None:  # type: ignore[no-untyped-def]
    ids = []
    for i in range(3):
        ids.append(queue.enqueue("", [f"r{i}@remote.example"], RAW))
        time.sleep(0.002)
    assert queue.ids() == ids
    again = OutboundQueue(store, queue.root)  # same key from the settings table
    assert [again.load(q).recipients for q in ids] == [["r0@remote.example"], ["r1@remote.example"], ["r2@remote.example"]]


def test_file_is_encrypted_and_bound_to_its_id(queue: OutboundQueue) -> None:
    a = queue.enqueue("a@example.test", ["b@remote.example"], RAW)
    b = queue.enqueue("a@example.test", ["b@remote.example"], RAW)
    data = (queue.ready_dir / a).read_bytes()
    assert data.startswith(MAGIC)
    assert b"queued" not in data and b"remote.example" not in data
    os.replace(queue.ready_dir / a, queue.ready_dir / b)  # a file moved under another id does not open
    with pytest.raises(CryptoError):
        queue.load(b)


def test_tampering_is_detected(queue: OutboundQueue) -> None:
    qid = queue.enqueue("a@example.test", ["b@remote.example"], RAW)
    path = queue.ready_dir / qid
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CryptoError):
        queue.load(qid)


def test_recover_removes_only_old_temp_files(queue: OutboundQueue) -> None:
    old = queue.tmp_dir / new_queue_id()
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = queue.tmp_dir / new_queue_id()
    fresh.write_bytes(b"being written")
    assert queue.recover() == 1
    assert not old.exists() and fresh.exists()
    assert queue.ids() == []


def test_bad_ids_and_arguments(queue: OutboundQueue) -> None:
    with pytest.raises(NotFoundError):
        queue.load("../../etc/passwd")
    with pytest.raises(ValueError):
        queue.enqueue("a@example.test", [], RAW)
    assert len(new_queue_id()) == 20
