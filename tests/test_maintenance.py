"""The daily maintenance job (appliance/maintenance.py) against a real store with old events."""

from __future__ import annotations

import asyncio
import email
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from storefix import new_store

from appliance import maintenance
from storage import policy, vacation

DAY = 86400.0


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = new_store(tmp_path / "store")
    s.create_user("alice@example.test", password="correct horse battery")
    yield s
    s.close()


def old_events(store, now: float) -> None:  # type: ignore[no-untyped-def]
    for age in (400, 200, 100, 10):
        store.events.record("login", action="login", subject="alice@example.test", result="ok", ts=now - age * DAY)
        store.events.record("delivery", action="deliver", subject="alice@example.test", result="delivered",
                            ts=now - age * DAY)


def headers() -> email.message.Message:
    return email.message_from_bytes(b"From: bob@remote.example\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\n")


def ages(store, now: float) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted({round((now - e.ts) / DAY) for e in store.events.query(kind="login", limit=None)})


def test_run_prunes_by_config_then_by_policy_and_says_so(store) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    old_events(store, now)
    vacation.save_settings(store, "alice@example.test", enabled=True, body="away")
    assert vacation.should_reply(store, "alice@example.test", "bob@remote.example", headers(), now=now - 40 * DAY)
    done = maintenance.run(store, 180 * DAY, now=now)
    assert done["events"] == 4 and done["vacation_replies"] == 1 and done["retention_days"] == 180
    assert ages(store, now) == [10, 100]
    # the memory of that reply is gone: the same sender gets a reply again
    assert vacation.should_reply(store, "alice@example.test", "bob@remote.example", headers(), now=now)
    store.set_setting(policy.KEY, json.dumps({"log_retention_days": 30}))  # the panel's policy wins
    done = maintenance.run(store, 180 * DAY, now=now)
    assert done["events"] == 2 and done["retention_days"] == 30
    assert ages(store, now) == [10]
    (record, *_older) = store.events.query(kind="admin", limit=None)
    assert record.actor == "maintenance" and record.action == "log.prune" and record.detail["events"] == 2
    assert maintenance.run(store, 180 * DAY, now=now)["events"] == 0  # nothing to remove: no audit record
    assert len(store.events.query(kind="admin", limit=None)) == 2


def test_the_job_runs_soon_after_start_in_one_process_only(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    old_events(store, now)
    lock = tmp_path / "maintenance.lock"

    async def scenario() -> tuple[int, int, dict | None]:
        executor = ThreadPoolExecutor(2)
        first = maintenance.Maintenance(store, 180 * DAY, lock, executor=executor, first_after=0.05, every=3600)
        first.start()
        deadline = time.monotonic() + 20
        while first.runs == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with maintenance._lock(lock) as mine:  # another process holds the lock: this one skips its turn
            assert mine
            second = maintenance.Maintenance(store, 180 * DAY, lock, executor=executor, first_after=0.0, every=3600)
            second.start()
            await asyncio.sleep(0.5)
        await first.stop()
        await second.stop()
        executor.shutdown()
        return first.runs, second.runs, first.last

    runs, skipped_runs, last = asyncio.run(scenario())
    assert runs == 1 and skipped_runs == 0
    assert last is not None and last["events"] == 4
    assert ages(store, now) == [10, 100]
