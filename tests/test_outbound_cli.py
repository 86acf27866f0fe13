"""`appliance queue ...` against a running MTA, frozen accounts in the queue, and `appliance dkim show|rotate`."""

from __future__ import annotations

import json
import os

import pytest
from conftest import Server, create_test_instance, free_port, run_cli
from dnsserver import FakeDNS
from mtakit import message, submission_client
from outboundkit import Peer, wait_for

from mta.dkimsign import DkimSigner, describe


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    server.set("dead.test", "MX", "10 mx.dead.test.")
    server.set("mx.dead.test", "A", "127.0.0.4")  # nothing listens there
    server.set("live.test", "MX", "10 mx.live.test.")
    server.set("mx.live.test", "A", "127.0.0.6")
    yield server
    server.close()


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def inst(tmp_path_factory, fake_dns, port):  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path_factory.mktemp("qcli"), overrides={
        "dns.resolvers": ["127.0.0.1"], "dns.port": fake_dns.port, "queue.hold": False, "queue.remote_port": port,
        "queue.retry_base": 1, "queue.retry_max": 3, "queue.connect_timeout": 1})
    srv = Server(inst, services=["mta"])
    yield inst
    srv.stop()


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.returncode, self.out, self.err = code, out, err


def cli(inst, *args: str) -> Result:  # type: ignore[no-untyped-def]
    """`appliance -c ... ARGS` in this process (a subprocess costs a second or two of imports)."""
    import contextlib
    import io

    from appliance.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-c", str(inst.config_path), *args])
    return Result(code, out.getvalue(), err.getvalue())


def cli_json(inst, *args: str) -> dict:  # type: ignore[no-untyped-def]
    r = cli(inst, *args, "--json")
    assert r.returncode == 0, r.err
    return json.loads(r.out)


def send(inst, rcpt: str, subject: str, login: str = "alice@example.test") -> None:  # type: ignore[no-untyped-def]
    with submission_client(inst.ports["submission"], login, inst.accounts[login]) as c:
        c.sendmail(login, [rcpt], message(login, rcpt, subject))


def queued(inst, rcpt: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m for m in cli_json(inst, "queue", "list")["messages"] if m["recipients"][0]["address"] == rcpt]


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


def states(inst, store, rcpt: str) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    """(id, state) of queued messages to ``rcpt``, read in process (cheaper than the CLI for polling)."""
    from mta.queue import OutboundQueue
    from storage.errors import NotFoundError

    q = OutboundQueue(store, inst.path / "queue")
    out = []
    for qid in q.ids():
        try:
            if q.load(qid).recipients == [rcpt]:
                out.append((qid, q.load_state(qid) or {}))
        except NotFoundError:
            continue
    return out


def test_list_show_retry_delete_flush(inst, store) -> None:  # type: ignore[no-untyped-def]
    send(inst, "a@dead.test", "stuck")
    wait_for(lambda: [q for q in states(inst, store, "a@dead.test") if q[1].get("attempts", 0) >= 1], 15)
    (m,) = queued(inst, "a@dead.test")
    assert m["sender"] == "alice@example.test" and m["recipients"][0]["state"] == "deferred"
    assert "refused" in m["last_error"] and "mx.dead.test" in m["last_error"]
    assert m["next_try"] is not None
    table = cli(inst, "queue", "list").out
    assert m["id"] in table and "a@dead.test (deferred)" in table
    shown = cli(inst, "queue", "show", m["id"]).out
    assert "Subject: stuck" in shown and "a@dead.test: deferred" in shown
    assert cli_json(inst, "queue", "show", m["id"])["headers"]["subject"] == ["stuck"]

    r = cli(inst, "queue", "retry", m["id"])
    assert r.returncode == 0 and "within a second" in r.out
    before = states(inst, store, "a@dead.test")[0][1]["attempts"]
    wait_for(lambda: [q for q in states(inst, store, "a@dead.test") if q[1]["attempts"] > before], 10)
    assert cli_json(inst, "queue", "flush")["messages"] >= 1

    r = cli(inst, "queue", "delete", m["id"])
    assert r.returncode == 0 and "deleted" in r.out, r.out + r.err
    assert queued(inst, "a@dead.test") == []
    missing = cli(inst, "queue", "show", m["id"])
    assert missing.returncode == 1 and "no queued message" in missing.err
    bad = cli(inst, "queue", "delete", "../../etc/passwd")
    assert bad.returncode == 1 and "invalid queue id" in bad.err


def test_list_in_chinese(inst, store) -> None:  # type: ignore[no-untyped-def]
    send(inst, "b@dead.test", "zh")
    wait_for(lambda: states(inst, store, "b@dead.test"), 10)
    r = run_cli("-c", str(inst.config_path), "queue", "list", env={"APPLIANCE_LANG": "zh-CN"})
    out = r.stdout.decode()
    assert "发件人" in out and "尝试次数" in out, out


def test_mail_of_a_frozen_account_is_held_until_the_freeze_is_lifted(inst, store, port) -> None:  # type: ignore[no-untyped-def]
    from antispam import outbound

    peer = Peer("127.0.0.6", port)
    try:
        outbound.freeze(store, "bob@example.test", "test", notify=False)
        # bob was frozen after submitting: queue his message as the MTA would have
        from mta.queue import OutboundQueue

        qid = OutboundQueue(store, inst.path / "queue").enqueue(
            "bob@example.test", ["x@live.test"], message("bob@example.test", "x@live.test", "frozen"),
            meta={"auth": "bob@example.test"})
        cli(inst, "queue", "retry", qid)
        wait_for(lambda: [q for q in states(inst, store, "x@live.test") if q[1].get("held")], 10)
        (m,) = queued(inst, "x@live.test")
        assert m["held"] == "account frozen" and m["attempts"] == 0
        assert "held" in cli(inst, "queue", "list").out
        assert peer.messages == []
        assert outbound.unfreeze(store, "bob@example.test")
        cli(inst, "queue", "retry", qid)
        wait_for(lambda: peer.messages, 15)
        assert peer.messages[0][1] == ["x@live.test"]
    finally:
        peer.close()


# ---------------------------------------------------------------- dkim


def test_dkim_show_and_rotate(tmp_path_factory, fake_dns) -> None:  # type: ignore[no-untyped-def]
    inst = create_test_instance(tmp_path_factory.mktemp("dkim"), demo=False,
                                overrides=fake_dns.overrides(timeout=1))
    keys = inst.path / "keys"
    shown = cli_json(inst, "dkim", "show", "example.test")
    assert shown["active"] == "s1" and {k["selector"] for k in shown["keys"]} == {"s1", "s1r"}
    assert cli(inst, "dkim", "show", "nowhere.test").returncode == 67

    started = cli_json(inst, "dkim", "rotate", "example.test")
    assert started["step"] == "started" and started["pending"] == "s2"
    assert {r["name"] for r in started["records"]} == {"s2._domainkey.example.test", "s2r._domainkey.example.test"}
    text = cli(inst, "dkim", "show", "example.test").out
    assert "s2._domainkey.example.test. 3600 IN TXT" in text and "waiting for its DNS record" in text
    signer = DkimSigner(keys, recheck=0)
    assert {k.selector for k in signer.keys("example.test")} == {"s1", "s1r"}  # still the old key

    refused = cli(inst, "dkim", "rotate", "example.test")  # the new records are not in DNS yet
    assert refused.returncode == 75 and "not in DNS" in refused.err
    for r in started["records"]:
        fake_dns.set(r["name"], "TXT", r["value"])
    switched = cli_json(inst, "dkim", "rotate", "example.test")
    assert switched == {"domain": "example.test", "step": "switched", "active": "s2", "previous": "s1"}
    assert {k.selector for k in signer.keys("example.test")} == {"s2", "s2r"}
    check = cli_json(inst, "dkim", "show", "example.test", "--check")
    assert {k["selector"]: k["published"] for k in check["keys"] if k["generation"] == "s2"} == {"s2": True, "s2r": True}

    early = cli(inst, "dkim", "rotate", "example.test", "--finish")  # dkim.keep_old is 7 days
    assert early.returncode == 75 and "--force" in early.err
    done = cli_json(inst, "dkim", "rotate", "example.test", "--finish", "--force")
    assert done["step"] == "finished" and sorted(done["retired"]) == ["s1", "s1r"]
    assert os.listdir(keys / "dkim" / "retired")
    assert {k["selector"] for k in describe(keys, "example.test")["keys"]} == {"s2", "s2r"}
    again = cli_json(inst, "dkim", "rotate", "example.test")  # the next rotation starts at s3
    assert again["pending"] == "s3"
