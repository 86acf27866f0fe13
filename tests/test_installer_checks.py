"""Preflight checks: every failure path, the output sinks, and that a failed check stops the install."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest
from test_installer_fixtures import G, cli, fake_survey, good_probes, hooks, install

from installer import checks
from installer.checks import BufferedOutput, ConsoleOutput, JsonOutput, PortUse, Preflight, run_preflight


def preflight(**kw) -> BufferedOutput:  # type: ignore[no-untyped-def]
    probes = kw.pop("probes", None) or good_probes()
    pf = Preflight(survey=kw.pop("survey", None) or fake_survey(), mailboxes=kw.pop("mailboxes", 25),
                   hostname=kw.pop("hostname", "mail.example.com"), probes=probes, **kw)
    out = BufferedOutput()
    run_preflight(pf, out)
    return out


def only(out: BufferedOutput, check: str, level: str) -> checks.Finding:
    found = [f for f in out.findings if f.check == check or (f.check or "").startswith(check)]
    assert found, [f.check for f in out.findings]
    bad = [f for f in found if f.level == level]
    assert bad, found
    if level != "ok":
        assert bad[0].fix, "every warning and failure says how to fix it"
    return bad[0]


# ---------------------------------------------------------------- sinks


def test_sinks_share_the_findings() -> None:
    buf = BufferedOutput()
    buf.add_heading("System")
    buf.print_ok("fine", check="a")
    buf.print_warning("hmm", "do this", check="b")
    buf.print_error("bad", "do that", check="c")
    assert (buf.errors, buf.warnings) == (1, 1)
    text = io.StringIO()
    buf.replay(ConsoleOutput(text))
    assert text.getvalue().splitlines() == [
        "System", "  ok    fine", "  warn  hmm", "        fix: do this", "  FAIL  bad", "        fix: do that"]
    js = io.StringIO()
    j = JsonOutput(js)
    buf.replay(j)
    j.close(instance="x")
    doc = json.loads(js.getvalue())
    assert doc["errors"] == 1 and doc["instance"] == "x"
    assert doc["findings"][2] == {"level": "error", "message": "bad", "fix": "do that", "check": "c", "section": "System"}


def test_a_healthy_host_passes() -> None:
    out = preflight()
    assert out.errors == 0 and out.warnings == 0, [f for f in out.findings if f.level != "ok"]


# ---------------------------------------------------------------- each failure path


def test_python_too_old() -> None:
    f = only(preflight(survey=fake_survey(python="3.9.2")), "python", "error")
    assert "3.9.2 is too old" in f.message


def test_full_disk() -> None:
    f = only(preflight(survey=fake_survey(free=int(0.5 * G))), "disk", "error")
    assert "only 512.0M free" in f.message
    only(preflight(survey=fake_survey(free=10 * G)), "disk", "warning")  # enough to start, less than recommended


def test_too_little_memory() -> None:
    only(preflight(survey=fake_survey(memory=G // 2)), "memory", "error")
    only(preflight(survey=fake_survey(memory=2 * G), mailboxes=200), "memory", "warning")


def test_taken_port_with_a_really_bound_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        use = checks.port_in_use(port)
        assert use is not None and not use.ours
        out = preflight(ports={port: "SMTP"}, probes=good_probes(port_in_use=checks.port_in_use))
        f = only(out, f"port-{port}", "error")
        assert f"port {port} (SMTP) is taken by python" in f.message
    assert checks.port_in_use(port) is None  # free again once closed


def test_port_held_by_the_appliance_itself_is_fine() -> None:
    out = preflight(probes=good_probes(port_in_use=lambda p: PortUse("appliance (pid 7)", ours=True) if p == 25 else None))
    assert "served by the appliance already" in only(out, "port-25", "ok").message


def test_host_name_must_be_fully_qualified() -> None:
    for name in ("mail", "localhost", "mail.local", "192.0.2.1"):
        only(preflight(hostname=name), "hostname", "error")


def test_host_name_that_does_not_resolve_warns() -> None:
    only(preflight(probes=good_probes(resolve=lambda n: [])), "resolve", "warning")
    f = only(preflight(probes=good_probes(resolve=lambda n: ["127.0.1.1"])), "resolve", "warning")
    assert "/etc/hosts" in f.message


def test_clock() -> None:
    only(preflight(probes=good_probes(clock=lambda: (False, "timedatectl"))), "clock", "warning")
    f = only(preflight(probes=good_probes(clock=lambda: (None, ""))), "clock", "warning")
    assert "cannot tell" in f.message


def test_missing_packages() -> None:
    installed: list[list[str]] = []
    missing = good_probes(package_installed=lambda n: n != "rspamd", install_packages=lambda names: (installed.append(names), (True, ""))[1])
    f = only(preflight(probes=missing), "packages", "error")
    assert "rspamd" in f.message and "--yes" in (f.fix or "") and installed == []
    out = preflight(probes=missing, consent=True)
    assert installed == [["rspamd"]] and out.errors == 0
    out = preflight(probes=missing, ask=lambda question: "rspamd" in question)  # asked on a terminal, answered yes
    assert installed[-1] == ["rspamd"] and out.errors == 0
    failing = good_probes(package_installed=lambda n: False, install_packages=lambda names: (False, "E: Unable to locate package"))
    f = only(preflight(probes=failing, consent=True), "packages", "error")
    assert "Unable to locate" in f.message and "mirror" in (f.fix or "")
    only(preflight(probes=failing, fake_root=True), "packages", "warning")  # --root never installs on the host


def test_root_is_needed() -> None:
    not_root = good_probes(is_root=lambda: False)
    only(preflight(probes=not_root), "root", "error")
    only(preflight(probes=not_root, dry_run=True), "root", "warning")
    only(preflight(probes=not_root, fake_root=True), "root", "ok")


def test_appliance_installed_where_the_services_cannot_run_it() -> None:
    hidden = good_probes(executables=lambda: ["/root/.pyenv/versions/3.11.7/bin/python3.11", "/root/venv/bin/appliance"])
    f = only(preflight(probes=hidden), "executable", "error")
    assert "/root/.pyenv" in f.message and "/opt/appliance" in (f.fix or "")
    only(preflight(), "executable", "ok")
    assert not [f for f in preflight(probes=hidden, fake_root=True).findings if f.check == "executable"]


def test_other_systems_warn() -> None:
    only(preflight(survey=fake_survey(os_id="ubuntu")), "os", "warning")


def test_database_choice() -> None:
    f = only(preflight(mailboxes=800, survey=fake_survey(free=2000 * G, memory=64 * G)), "database", "warning")
    assert "PostgreSQL is recommended above 500" in f.message
    s = fake_survey()
    s.postgresql = "unreachable (connection refused)"
    only(preflight(survey=s, database_url="postgresql://appliance@localhost/appliance"), "database", "error")


# ---------------------------------------------------------------- a failed check stops the install


@pytest.mark.parametrize("what", ["disk", "port", "python", "hostname", "memory"])
def test_failed_check_stops_the_install_with_nonzero_exit(tmp_path: Path, what: str) -> None:
    root = tmp_path / "root"
    h = hooks()
    opts = {}
    if what == "disk":
        h.survey = lambda **kw: fake_survey(free=G // 4)
    elif what == "python":
        h.survey = lambda **kw: fake_survey(python="3.10.0")
    elif what == "hostname":
        opts["hostname"] = "mail"
    elif what == "memory":
        h.survey = lambda **kw: fake_survey(memory=G // 2)
    else:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        h.probes = good_probes(port_in_use=lambda p: checks.port_in_use(taken) if p == 25 else None)
    try:
        rc, out = install(root, h, **opts)
    finally:
        if what == "port":
            s.close()
    assert rc == 1
    assert "[2/9] Preflight checks ... FAILED" in out and "[3/9]" not in out
    assert "FAIL " in out and "fix:" in out and "Install stopped at step 2 of 9" in out
    assert not root.exists(), "nothing is written before the checks pass"


def test_cli_install_exits_nonzero_on_a_failed_check(tmp_path: Path) -> None:
    rc, out, err = cli("install", "--root", str(tmp_path / "r"), "--domain", "example.com", "--hostname", "localhost", "--yes")
    assert rc == 1
    assert "localhost is not a fully qualified host name" in out
    assert not (tmp_path / "r").exists()
