"""Catching hijacked accounts: bursts freeze sending, admins are told, unfreeze works."""

from __future__ import annotations

import json
import multiprocessing
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from antispam.outbound import Limits, counters, is_frozen, record_failure, record_submission, unfreeze

HOUR = 3600.0
T0 = 1_790_000_000.0  # a fixed clock keeps the windows deterministic


@pytest.fixture
def inst(make_instance):  # type: ignore[no-untyped-def]
    return make_instance()


@pytest.fixture
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


def admin_inbox(store):  # type: ignore[no-untyped-def]
    admin = store.directory.get_user("admin@example.test")
    box = store.mail.get_mailbox(admin.id, "INBOX")
    return [store.mail.read(admin, m) for m in store.mail.messages(box.id)]


def test_a_burst_freezes_the_account_and_tells_the_admins(inst, store) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(messages_per_hour=20, recipients_per_hour=1000, usual_factor=0)
    for i in range(20):
        d = record_submission(store, "alice@example.test", [f"r{i}@far.example"], limits=limits, now=T0 + i)
        assert not d.frozen
    assert is_frozen(store, "alice@example.test") is None
    d = record_submission(store, "alice@example.test", ["r21@far.example"], limits=limits, now=T0 + 21)
    assert d.frozen and d.newly and "21 messages" in d.reason
    d = record_submission(store, "alice@example.test", ["r22@far.example"], limits=limits, now=T0 + 22)
    assert d.frozen and not d.newly  # told once

    frozen = is_frozen(store, "Alice@Example.Test")
    assert frozen and frozen.email == "alice@example.test" and frozen.reply.startswith("451 4.7.1 ")
    assert is_frozen(store, "bob@example.test") is None and is_frozen(store, "nobody@far.example") is None

    events = store.events.query(kind="security")
    assert [e.action for e in events] == ["outbound.freeze"] and events[0].subject == "alice@example.test"
    assert "21 messages" in events[0].detail["reason"]

    notices = admin_inbox(store)
    assert len(notices) == 1
    msg = message_from_bytes(notices[0], policy=default)
    body = msg.get_body().get_content()
    assert "alice@example.test" in msg["Subject"] and "冻结" in msg["Subject"]
    assert "appliance user unfreeze alice@example.test" in body
    assert "过去一小时发送了 21 封邮件" in body and "sent 21 messages in the last hour" in body

    # the operator lifts it; the burst is forgotten, so the next message does not freeze again
    r = inst.cli("user", "unfreeze", "alice@example.test")
    assert r.returncode == 0 and b"may send again" in r.stdout, r.stderr
    assert is_frozen(store, "alice@example.test") is None
    d = record_submission(store, "alice@example.test", ["again@far.example"], limits=limits, now=T0 + 30)
    assert not d.frozen
    r = inst.cli("user", "unfreeze", "alice@example.test")
    assert r.returncode == 0 and b"was not frozen" in r.stdout
    assert [e.action for e in store.events.query(kind="security")][0] == "outbound.unfreeze"


def test_distinct_recipients_and_failures_have_limits(store) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(messages_per_hour=0, recipients_per_hour=50, failures_per_hour=5, usual_factor=0)
    d = record_submission(store, "bob@example.test", [f"x{i}@far.example" for i in range(50)], limits=limits, now=T0)
    assert not d.frozen and d.counts["recipients"] == 50
    d = record_submission(store, "bob@example.test", ["x1@far.example"], limits=limits, now=T0 + 1)  # not new
    assert not d.frozen
    d = record_submission(store, "bob@example.test", ["new@far.example"], limits=limits, now=T0 + 2)
    assert d.frozen and "51 different recipients" in d.reason
    unfreeze(store, "bob@example.test", now=T0 + 3)

    for i in range(5):
        assert not record_failure(store, "alice@example.test", limits=limits, now=T0 + i).frozen
    d = record_failure(store, "alice@example.test", limits=limits, now=T0 + 6)
    assert d.frozen and "6 failed recipients" in d.reason


def test_the_window_slides(store) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(messages_per_hour=10, usual_factor=0)
    for i in range(10):
        record_submission(store, "bob@example.test", ["a@far.example"], limits=limits, now=T0 + i * 60)
    # an hour and more later the old ones no longer count
    assert not record_submission(store, "bob@example.test", ["a@far.example"], limits=limits, now=T0 + HOUR + 700).frozen
    assert counters(store, "bob@example.test", now=T0 + HOUR + 700)["messages"] == 1


def test_ten_times_the_usual_rate_freezes(store) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(messages_per_hour=10_000, recipients_per_hour=10_000, usual_factor=10, usual_floor=20)
    # a week of 3 messages in each of 8 working hours a day
    for day in range(6):
        for hour in range(8):
            for k in range(3):
                t = T0 + day * 86400 + hour * HOUR + k * 60
                assert not record_submission(store, "bob@example.test", ["c@far.example"], limits=limits, now=t).frozen
    now = T0 + 6 * 86400
    assert counters(store, "bob@example.test", now=now)["usual_per_hour"] == 3.0
    # 10 x 3 = 30 but the floor is 20: the 31st message in an hour is too many
    decisions = [record_submission(store, "bob@example.test", [f"s{i}@far.example"], limits=limits, now=now + i)
                 for i in range(31)]
    assert not any(d.frozen for d in decisions[:30])
    assert decisions[30].frozen and "10 times the usual 3.0" in decisions[30].reason


def test_counters_stay_small(store) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(messages_per_hour=0, recipients_per_hour=100, usual_factor=0)
    user = store.directory.get_user("bob@example.test")
    for i in range(30):
        record_submission(store, "bob@example.test", [f"m{i}-{j}@far.example" for j in range(50)], limits=limits, now=T0 + i)
    state = json.loads(store.get_setting(f"outbound:{user.uuid}"))
    assert sum(len(v[2]) for v in state["w"].values()) <= 2 * 101


def _open_store(where: str | dict) -> Any:
    from storage.store import Store

    if isinstance(where, dict):  # Store(...) arguments (PostgreSQL)
        from storage.passwords import Passwords

        return Store(**where, passwords=Passwords(time_cost=1, memory_cost_kib=8192, parallelism=1))
    from appliance.config import load_config

    return Store.from_config(load_config(Path(where)))


def _submit_many(where: str | dict, email: str, n: int, go: Any, out: Any) -> None:
    """In another process: wait for the start signal, then count ``n`` submissions as fast as possible."""
    store = _open_store(where)
    limits = Limits(messages_per_hour=30, recipients_per_hour=10_000, usual_factor=0)
    store.directory.get_user(email)  # warm up (connections, imports) before the race
    out.put("ready")
    go.wait(60)
    decisions = [record_submission(store, email, [f"p{i}@far.example"], limits=limits) for i in range(n)]
    store.close()
    out.put([(d.frozen, d.newly) for d in decisions])


def _race(where: str | dict, email: str) -> list[tuple[bool, bool]]:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_submit_many, args=(where, email, 25, go, out)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        assert [out.get(timeout=120) for _ in procs] == ["ready", "ready"]
        go.set()  # both start at once
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    return [d for r in results for d in r]


def test_two_processes_share_the_counters_and_freeze_exactly_once(inst, store) -> None:  # type: ignore[no-untyped-def]
    """mta and panel/imapd are separate processes: their counts add up, and the 31st message freezes, once."""
    decisions = _race(str(inst.config_path), "alice@example.test")
    assert sum(1 for frozen, _ in decisions if not frozen) == 30  # no count lost or doubled
    assert sum(1 for _, newly in decisions if newly) == 1  # exactly one process froze it
    assert counters(store, "alice@example.test")["messages"] == 50
    assert is_frozen(store, "alice@example.test")
    assert [e.action for e in store.events.query(kind="security")] == ["outbound.freeze"]
    assert len(admin_inbox(store)) == 1


def test_two_processes_on_postgresql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same race on PostgreSQL (several front ends on one database): the row lock keeps the count exact."""
    import pgserver

    from storage.crypto import generate_master_key

    if not pgserver.available():
        pytest.skip("PostgreSQL is not installed")
    pg = pgserver.PgServer()
    try:
        key = tmp_path / "keys" / "master.key"
        key.parent.mkdir()
        generate_master_key(key)
        where = {"database_url": pg.new_database(), "mail_dir": tmp_path / "mail", "keys_dir": tmp_path / "keys",
                 "master_key_file": key}
        setup = _open_store({**where, "create_schema": True})
        try:
            setup.directory.add_domain("example.test")
            setup.create_user("dave@example.test")
        finally:
            setup.close()
        decisions = _race(where, "dave@example.test")
        store = _open_store(where)
        try:
            assert sum(1 for frozen, _ in decisions if not frozen) == 30
            assert sum(1 for _, newly in decisions if newly) == 1
            assert counters(store, "dave@example.test")["messages"] == 50
        finally:
            store.close()
    finally:
        pg.stop()
