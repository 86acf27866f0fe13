"""Virus scanning: the managed clamd (Debian's clamav-daemon) through rspamd's antivirus module.

The session's shared antispam service runs with ``antispam.virus_scan`` on
when clamd is installed (antispamkit), with a signature for the EICAR test
file (the official signatures need the internet). A message carrying EICAR
as an attachment is rejected with a 550 saying it holds a virus, whatever
the recipient's allow list says;
clean mail with an attachment is accepted; a clamd that is down lets mail
through unscanned for viruses, marked as such, and is restarted.
"""

from __future__ import annotations

import base64
import os
import signal
import time

import pytest
from antispamkit import EICAR, clamd_installed, shared_harness, wait_for

pytestmark = pytest.mark.skipif(not clamd_installed(), reason="clamav-daemon is not installed (apt install clamav-daemon)")

ENVELOPE = {"mail_from": "sender@partner.example", "rcpts": ["bob@example.test"], "ip": "192.0.2.10",
            "helo": "mx.partner.example", "hostname": "mx.partner.example"}


@pytest.fixture(scope="module")
def harness(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    return shared_harness(request, tmp_path_factory)


def infected() -> bytes:
    """EICAR with a unique tail: rspamd caches scan results by content, and a cached result would not ask clamd."""
    return EICAR + b"\n" + os.urandom(8).hex().encode() + b"\n"


def with_attachment(data: bytes, name: str) -> bytes:
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"From: Sender <sender@partner.example>\r\nTo: Bob <bob@example.test>\r\nSubject: The file you asked for\r\n"
            b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <file-" + str(time.time_ns()).encode() +
            b"@partner.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi Bob, here is the file from our meeting.\r\n"
            b"--b1\r\nContent-Type: application/octet-stream; name=\"" + name.encode() + b"\"\r\n"
            b"Content-Disposition: attachment; filename=\"" + name.encode() + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--b1--\r\n")


def test_an_infected_attachment_is_rejected_naming_the_virus(harness) -> None:  # type: ignore[no-untyped-def]
    v = harness.check(with_attachment(infected(), "invoice.com"), **ENVELOPE)
    assert v.action == "reject" and v.checked
    assert v.reply == "550 5.7.1 Message rejected: it contains a virus"
    assert "CLAM_VIRUS" in dict(v.symbols)
    assert v.reason == "virus found: Appliance.Test.EICAR.UNOFFICIAL"


def test_no_allow_list_lets_a_virus_through(harness) -> None:  # type: ignore[no-untyped-def]
    from antispam.policy import ALLOW, change_list

    change_list(harness.store, "bob@example.test", ALLOW, "partner.example", add=True)
    harness.scanner.policies.clear()
    try:
        v = harness.check(with_attachment(infected(), "from-a-friend.com"), **ENVELOPE)
        assert v.action == "reject" and v.reply.startswith("550 5.7.1 ")
        # the same sender's clean mail is let through by the allow list
        assert harness.check(with_attachment(b"clean\n" * 20, "notes.txt"), **ENVELOPE).action == "accept"
    finally:
        change_list(harness.store, "bob@example.test", ALLOW, "partner.example", add=False)
        harness.scanner.policies.clear()


def test_a_clean_attachment_is_accepted(harness) -> None:  # type: ignore[no-untyped-def]
    v = harness.check(with_attachment(b"Quarterly figures: 12, 15, 19.\n" * 40, "figures.txt"), **ENVELOPE)
    assert v.action == "accept" and v.checked
    assert not any(name.startswith("CLAM_VIRUS") for name, _ in v.symbols)


def test_status_says_virus_scanning_is_on(harness) -> None:  # type: ignore[no-untyped-def]
    r = harness.inst.cli("status")
    assert r.returncode == 0 and b"virus scanning on (clamd answers)" in r.stdout, r.stdout


def test_a_dead_clamd_lets_mail_through_and_is_restarted(harness) -> None:  # type: ignore[no-untyped-def]
    clamd = harness.service.daemons["clamd"]
    before, pid = clamd.restarts, clamd.pid
    harness.run(clamd.pause())
    try:
        v = harness.check(with_attachment(infected(), "again.com"), **ENVELOPE)
        # rspamd could not ask clamd: the mail is not rejected for a virus, and rspamd says why
        # (an attachment it had scanned before would still be refused: rspamd caches the result)
        assert v.action != "reject" and "CLAM_VIRUS" not in dict(v.symbols)
        assert "CLAM_VIRUS_FAIL" in dict(v.symbols)
        r = harness.inst.cli("status")
        assert b"virus scanning unavailable: clamd does not answer" in r.stdout, r.stdout
    finally:
        clamd.resume()
    assert harness.run(clamd.wait_ready(120), 130)
    os.kill(clamd.pid, signal.SIGKILL)  # a crash: the supervisor starts it again
    assert wait_for(lambda: clamd.restarts == before + 1 and clamd.ready.is_set() and clamd.pid not in (None, pid), 90)
    assert harness.check(with_attachment(infected(), "third.com"), **ENVELOPE).action == "reject"


def test_virus_scanning_needs_the_managed_rspamd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from appliance.config import ConfigError, load_config, render_default_config

    p = tmp_path / "appliance.toml"
    plain = {"panel": {"protocol": "http", "bind": "127.0.0.1:8080", "tls": "none"}}
    p.write_text(render_default_config(listeners=plain, **{"antispam.virus_scan": True, "antispam.managed": False}))
    with pytest.raises(ConfigError, match="antispam.virus_scan: virus scanning needs the managed rspamd"):
        load_config(p)
