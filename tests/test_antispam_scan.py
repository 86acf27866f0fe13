"""Scanning with a real rspamd (with redis and unbound), started once for this module.

GTUBE is rejected, ham accepted with headers, a message in the "add header"
range filed as junk; per-domain thresholds and per-user lists change the
verdict; rspamd down follows antispam.on_failure; a killed rspamd is
restarted; rejected mail is quarantined encrypted and can be released.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from antispam.client import RspamdClient, RspamdError

GTUBE = (b"From: x@spam.example\r\nTo: bob@example.test\r\nSubject: test\r\n"
         b"Message-ID: <gtube@spam.example>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n"
         b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
HAM = (b"From: Alice <alice@partner.example>\r\nTo: Bob <bob@example.test>\r\nSubject: Lunch tomorrow\r\n"
       b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <lunch-1@partner.example>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
       b"Hi Bob, shall we have lunch tomorrow at noon? The usual place is fine.\r\nAlice\r\n")
# no Date, no Message-ID, shouting base64 subject with money, HTML only with a link to an IP:
# about 10 points, between the junk (6) and reject (15) thresholds
SPAMMY = (b'From: "Prize Office" <winner@lottery-prize.example>\r\nTo: bob@example.test\r\n'
          b"Subject: =?utf-8?B?VVJHRU5UISEhIFlPVSBXT04gJDEwMDAwMDAhISE=?=\r\n"
          b"Reply-To: claims@other-domain.example\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
          b'<html><body><p>CONGRATULATIONS!!! You have WON $1,000,000. Click <a href="http://192.0.2.55/claim.php?id=1">here</a>'
          b' to claim your prize now!!!</p><img src="http://192.0.2.55/pixel.gif"></body></html>\r\n')
ENVELOPE = {"mail_from": "x@spam.example", "rcpts": ["bob@example.test"], "ip": "192.0.2.10",
            "helo": "mx.spam.example", "hostname": "mx.spam.example"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory, request):  # type: ignore[no-untyped-def]
    """The session's real rspamd (antispamkit): started once for all the antispam tests."""
    from antispamkit import shared_harness

    return shared_harness(request, tmp_path_factory)


@pytest.fixture(autouse=True)
def _fresh_policies(harness):  # type: ignore[no-untyped-def]
    harness.scanner.policies.clear()
    yield
    harness.scanner.policies.clear()


def header(verdict, name):  # type: ignore[no-untyped-def]
    return next((v for n, v in verdict.headers if n.lower() == name.lower()), None)


def test_gtube_is_rejected(harness) -> None:  # type: ignore[no-untyped-def]
    v = harness.check(GTUBE, **ENVELOPE, queue_id="Q1")
    assert v.action == "reject" and v.checked
    assert v.reply.startswith("550 5.7.1 ")
    assert "GTUBE" in dict(v.symbols)
    assert "X-Spam-Status" in v.remove_headers


def test_ham_is_accepted_with_headers(harness) -> None:  # type: ignore[no-untyped-def]
    v = harness.check(HAM, **{**ENVELOPE, "mail_from": "alice@partner.example"})
    assert v.action == "accept" and v.checked and v.reply is None
    assert header(v, "X-Spam-Status").startswith("No, score=")
    assert float(header(v, "X-Spam-Score")) < 6
    assert header(v, "X-Spam-Symbols")
    assert not v.junk("bob@example.test")
    for _name, value in v.headers:
        assert "\n" not in value.replace("\r\n ", "")  # folded, never a bare line break


def test_add_header_range_is_junk(harness) -> None:  # type: ignore[no-untyped-def]
    v = harness.check(SPAMMY, **{**ENVELOPE, "mail_from": "winner@lottery-prize.example"})
    assert v.action == "junk", (v.score, v.reason)
    assert 6 <= v.score < 15
    assert v.reply is None and v.junk("bob@example.test")
    assert header(v, "X-Spam-Status").startswith("Yes, score=")
    assert header(v, "X-Spam-Flag") == "YES"


def test_domain_thresholds_change_the_verdict(harness) -> None:  # type: ignore[no-untyped-def]
    from antispam.policy import set_thresholds

    store = harness.store
    set_thresholds(store, "example.test", 20, 30, (6.0, 15.0))
    try:
        v = harness.check(SPAMMY, **ENVELOPE)
        assert v.action == "accept" and not v.junk("bob@example.test")
        harness.scanner.policies.clear()
        set_thresholds(store, "example.test", 2, 8, (6.0, 15.0))
        v = harness.check(SPAMMY, **ENVELOPE)
        assert v.action == "reject" and v.reply.startswith("550")
    finally:
        set_thresholds(store, "example.test", None, None, (6.0, 15.0))


def test_allow_and_block_lists(harness) -> None:  # type: ignore[no-untyped-def]
    from antispam.policy import ALLOW, BLOCK, change_list

    store = harness.store
    change_list(store, "bob@example.test", ALLOW, "spam.example", add=True)
    change_list(store, "alice@example.test", BLOCK, "alice@partner.example", add=True)
    try:
        # bob allows the sender's domain: even GTUBE gets through for him
        v = harness.check(GTUBE, **ENVELOPE)
        assert v.action == "accept" and not v.junk("bob@example.test")
        # one SMTP answer for two recipients: accepted, but alice (no allow entry) gets it in Junk
        v = harness.check(GTUBE, **{**ENVELOPE, "rcpts": ["bob@example.test", "alice@example.test"]})
        assert v.action == "accept" and v.reply is None
        assert not v.junk("bob@example.test") and v.junk("alice@example.test")
        # alice blocks a ham sender: junk, and no scan was needed
        v = harness.check(HAM, **{**ENVELOPE, "mail_from": "alice@partner.example", "rcpts": ["alice@example.test"]})
        assert v.action == "junk" and v.junk("alice@example.test") and not v.checked
    finally:
        change_list(store, "bob@example.test", ALLOW, "spam.example", add=False)
        change_list(store, "alice@example.test", BLOCK, "alice@partner.example", add=False)


def test_controller_wants_the_password_even_from_loopback(harness) -> None:  # type: ignore[no-untyped-def]
    a = harness.cfg.antispam
    anonymous = RspamdClient(a.url, a.controller_url, password_file=None, timeout=5)
    with pytest.raises(RspamdError, match="HTTP 40[13]"):
        harness.run(anonymous.stat())
    harness.run(anonymous.close())
    assert "scanned" in harness.stat()
    assert os.stat(a.controller_password_file).st_mode & 0o777 == 0o600


def test_daemons_listen_on_loopback_only(harness) -> None:  # type: ignore[no-untyped-def]
    pids = [d.pid for d in harness.service.daemons.daemons.values()]
    addresses = set()
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    addresses.add(c.laddr.ip)
    assert addresses == {"127.0.0.1"}


def test_too_large_messages_are_not_scanned(harness, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(harness.scanner, "max_scan_size", 100)
    v = harness.check(GTUBE, **ENVELOPE)
    assert v.action == "accept" and not v.checked and v.headers == (("X-Spam-Status", "unchecked"),)


def test_rspamd_down_follows_the_policy(harness, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rspamd = harness.service.daemons["rspamd"]
    harness.run(rspamd.pause())
    try:
        v = harness.check(HAM, **ENVELOPE)
        assert v.action == "accept" and not v.checked
        assert v.headers == (("X-Spam-Status", "unchecked"),)
        assert "unavailable" in v.reason
        monkeypatch.setattr(harness.scanner, "on_failure", "tempfail")
        v = harness.check(HAM, **ENVELOPE)
        assert v.action == "soft_reject" and v.reply.startswith("451 4.7.1 ")
    finally:
        rspamd.resume()
    assert harness.run(rspamd.wait_ready(120), 130)
    monkeypatch.setattr(harness.scanner, "on_failure", "accept")
    assert harness.check(GTUBE, **ENVELOPE).action == "reject"


def test_a_killed_rspamd_is_restarted(harness) -> None:  # type: ignore[no-untyped-def]
    rspamd = harness.service.daemons["rspamd"]
    before, pid = rspamd.restarts, rspamd.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (rspamd.restarts == before or not rspamd.ready.is_set()):
        time.sleep(0.2)
    assert rspamd.restarts == before + 1 and rspamd.pid != pid
    assert harness.check(GTUBE, **ENVELOPE).action == "reject"


def test_rejected_mail_is_quarantined_encrypted_and_released(harness) -> None:  # type: ignore[no-untyped-def]
    from antispam.policy import set_quarantine_days

    store, inst = harness.store, harness.inst
    set_quarantine_days(store, "example.test", 3)
    try:
        v = harness.check(GTUBE, **ENVELOPE, queue_id="QQ1")
    finally:
        set_quarantine_days(store, "example.test", None)
    assert v.action == "reject" and v.quarantine_id
    qdir = inst.path / "spam" / "quarantine"
    files = list(qdir.iterdir())
    assert {f.suffix for f in files} == {".msg", ".meta"}
    for f in files:
        data = f.read_bytes()
        assert b"GTUBE" not in data and b"bob@example.test" not in data  # sealed at rest
    listed = inst.cli("quarantine", "list", "--json")
    assert listed.returncode == 0 and v.quarantine_id.encode() in listed.stdout
    released = inst.cli("quarantine", "release", v.quarantine_id)
    assert released.returncode == 0, released.stderr
    assert b"bob@example.test" in released.stdout
    bob = store.directory.get_user("bob@example.test")
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    raw = store.mail.read(bob, store.mail.messages(inbox.id)[-1])
    assert b"GTUBE-STANDARD" in raw and b"X-Quarantine-Released:" in raw
    assert not list(qdir.glob("*.meta"))
