"""`appliance spam ...`, `appliance quarantine ...`, the status line, and `appliance up --service antispam`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from antispam import testing
from tests.conftest import Server


@pytest.fixture
def inst(make_instance):  # type: ignore[no-untyped-def]
    return make_instance()


def test_allow_and_block_lists(inst) -> None:  # type: ignore[no-untyped-def]
    r = inst.cli("spam", "allow", "bob@example.test", "Boss@Partner.Example")
    assert r.returncode == 0 and b"added to the allow list" in r.stdout, r.stderr
    assert inst.cli("spam", "block", "bob@example.test", "@spam.example").returncode == 0
    assert inst.cli("spam", "block", "bob@example.test", "spam.example").stdout.startswith(b"spam.example is already")
    listed = json.loads(inst.cli("spam", "list", "bob@example.test", "--json").stdout)
    assert listed == {"email": "bob@example.test", "allow": ["boss@partner.example"], "block": ["spam.example"]}
    # an entry lives on one list: blocking an allowed address moves it
    assert inst.cli("spam", "block", "bob@example.test", "boss@partner.example").returncode == 0
    listed = json.loads(inst.cli("spam", "list", "bob@example.test", "--json").stdout)
    assert listed["allow"] == [] and listed["block"] == ["boss@partner.example", "spam.example"]
    assert inst.cli("spam", "unblock", "bob@example.test", "spam.example").returncode == 0
    r = inst.cli("spam", "unblock", "bob@example.test", "spam.example")
    assert r.returncode == 1 and b"is not on the block list" in r.stdout
    r = inst.cli("spam", "allow", "bob@example.test", "not an address")
    assert r.returncode == 65 and b"neither an address nor a domain" in r.stderr
    r = inst.cli("spam", "allow", "nobody@example.test", "x.example")
    assert r.returncode == 67 and b"nobody@example.test" in r.stderr
    store = inst.store()
    try:
        actions = [e.action for e in store.events.query(kind="admin")]
    finally:
        store.close()
    assert "spam.allow" in actions and "spam.block" in actions


def test_domain_thresholds(inst) -> None:  # type: ignore[no-untyped-def]
    r = inst.cli("spam", "threshold", "example.test")
    assert r.returncode == 0 and b"junk from 6, reject from 15 (defaults)" in r.stdout
    r = inst.cli("spam", "threshold", "example.test", "--junk", "4.5", "--reject", "12")
    assert r.returncode == 0 and b"junk from 4.5, reject from 12" in r.stdout
    shown = json.loads(inst.cli("spam", "threshold", "example.test", "--json").stdout)
    assert shown == {"domain": "example.test", "junk": 4.5, "reject": 12.0, "default": False}
    r = inst.cli("spam", "threshold", "example.test", "--junk", "20")
    assert r.returncode == 65 and b"must be below the reject score" in r.stderr
    assert b"(defaults)" in inst.cli("spam", "threshold", "example.test", "--clear").stdout
    r = inst.cli("spam", "threshold", "nowhere.example", "--junk", "3")
    assert r.returncode != 0 and b"nowhere.example" in r.stderr


def test_quarantine_commands(inst) -> None:  # type: ignore[no-untyped-def]
    from antispam.layout import Layout
    from antispam.quarantine import Quarantine

    store = inst.store()
    try:
        q = Quarantine(store, Layout.from_config(inst.config()).quarantine)
        raw = b"From: a@spam.example\r\nTo: bob@example.test\r\nSubject: =?utf-8?q?Cheap_=E2=82=AC?=\r\n\r\nbuy\r\n"
        kept = q.hold(raw, sender="a@spam.example", recipients=["bob@example.test"], days=2, score=16.5, reason="score")
        gone = q.hold(raw, sender="a@spam.example", recipients=["bob@example.test"], days=1, now=0)
    finally:
        store.close()
    listed = json.loads(inst.cli("quarantine", "list", "--json").stdout)
    assert {h["id"] for h in listed} == {kept, gone}
    assert next(h for h in listed if h["id"] == kept)["subject"] == "Cheap €"
    shown = inst.cli("quarantine", "show", kept)
    assert shown.returncode == 0 and b"a@spam.example" in shown.stdout and b"16.50" in shown.stdout
    assert inst.cli("quarantine", "show", kept, "--raw").stdout == raw
    r = inst.cli("quarantine", "purge")
    assert r.returncode == 0 and r.stdout.startswith(b"1 ")
    r = inst.cli("quarantine", "release", gone)
    assert r.returncode == 1 and b"no such quarantined message" in r.stderr
    r = inst.cli("quarantine", "release", "../../keys/master")
    assert r.returncode == 1 and b"no such quarantined message" in r.stderr
    r = inst.cli("quarantine", "delete", kept)
    assert r.returncode == 0 and inst.cli("quarantine", "list", "--json").stdout.strip() == b"[]"
    r = inst.cli("quarantine", "days", "example.test", "7")
    assert r.returncode == 0 and b"kept 7 days" in r.stdout
    store = inst.store()
    try:
        assert store.directory.get_domain("example.test").settings["quarantine_days"] == 7
    finally:
        store.close()


def test_chinese_messages(inst) -> None:  # type: ignore[no-untyped-def]
    env = {"APPLIANCE_LANG": "zh-CN"}
    from tests.conftest import run_cli

    r = run_cli("-c", str(inst.config_path), "spam", "allow", "bob@example.test", "partner.example", env=env)
    assert r.returncode == 0 and "已加入 bob@example.test 的白名单" in r.stdout.decode()
    r = run_cli("-c", str(inst.config_path), "status", env=env)
    assert "反垃圾邮件：已关闭" in r.stdout.decode()


def test_status_says_when_rspamd_is_missing(make_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance(overrides=testing.overrides(), demo=False)
    r = inst.cli("status")
    assert r.returncode == 0 and b"antispam: down (rspamd does not answer" in r.stdout
    from tests.conftest import run_cli

    r = run_cli("-c", str(inst.config_path), "status", "--json", env={"PATH": "/nonexistent"})
    info = json.loads(r.stdout)["antispam"]
    assert info["state"] == "unavailable" and "rspamd" in info["detail"] and "apt install" in info["detail"]


def test_service_without_rspamd_is_unavailable_and_mail_goes_unchecked(make_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import antispam.service

    monkeypatch.setattr(antispam.service, "missing_programs", lambda: ["rspamd"])
    inst = make_instance(overrides=testing.overrides(), demo=False)
    h = testing.Harness(inst.config())
    try:
        assert not h.service.available and h.service.daemons is None
        assert h.service.endpoints == [] and "rspamd" in h.service.problem
        v = h.check(b"Subject: x\r\n\r\nhello\r\n", mail_from="a@far.example", rcpts=["admin@example.test"])
        assert v.action == "accept" and v.headers == (("X-Spam-Status", "unchecked"),) and not v.checked
    finally:
        h.close()


def _daemon_pids(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_appliance_up_runs_and_stops_the_daemons(make_instance, request) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance(overrides=testing.overrides(), demo=False)
    cache = Path(request.config.cache.mkdir("rspamd-compiled"))
    testing.seed_cache(inst.path, cache)
    srv = Server(inst, services=["antispam"])
    try:
        assert "listening: antispam rspamd 127.0.0.1:" in srv.log()
        # rspamd forks its workers once its rules are compiled (a minute on a first start, longer on a busy machine)
        deadline = time.monotonic() + 240
        while len(pids := _daemon_pids(srv.proc.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(pids) >= 5, pids  # redis, unbound, rspamd main, normal and controller workers
        status = inst.cli("status")
        assert b"antispam: up (rspamd answers at" in status.stdout, status.stdout
        stats = inst.cli("spam", "stats", "--json")
        assert stats.returncode == 0 and "scanned" in json.loads(stats.stdout)
        conf = inst.path / "spam" / "conf"
        assert "secure_ip = [];" in (conf / "override.d" / "worker-controller.inc").read_text()
        assert oct(os.stat(conf / "override.d" / "worker-controller.inc").st_mode & 0o777) == "0o600"
    finally:
        assert srv.stop() == 0
    assert "stopped" in srv.log()
    assert [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
    testing.save_cache(inst.path, cache)
    r = inst.cli("status")
    assert b"antispam: down" in r.stdout


def test_config_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from appliance.config import ConfigError, load_config, render_default_config

    def load(**kw):  # type: ignore[no-untyped-def]
        p = tmp_path / "appliance.toml"
        plain = {"panel": {"protocol": "http", "bind": "127.0.0.1:8080", "tls": "none"}}
        p.write_text(render_default_config(listeners=plain, **{"antispam.enabled": True, **kw}))
        return load_config(p)

    assert load().antispam.junk_score == 6.0
    with pytest.raises(ConfigError, match="antispam.junk_score: must be below antispam.reject_score"):
        load(**{"antispam.junk_score": 15})
    with pytest.raises(ConfigError, match="antispam.url: a managed rspamd listens on 127.0.0.1 only"):
        load(**{"antispam.url": "http://10.0.0.1:11333"})
    assert load(**{"antispam.url": "http://10.0.0.1:11333", "antispam.managed": False}).antispam.managed is False
    with pytest.raises(ConfigError, match="antispam.redis_port: port 11333 is already used by antispam.url"):
        load(**{"antispam.redis_port": 11333})
    with pytest.raises(ConfigError, match="antispam.junk_score: expected a number"):
        load(**{"antispam.junk_score": "high"})


def test_generated_configuration(make_instance) -> None:  # type: ignore[no-untyped-def]
    from antispam.generate import generate, unbound_config
    from antispam.layout import Layout

    inst = make_instance(overrides=testing.overrides(), demo=False)
    cfg = inst.config()
    layout = Layout.from_config(cfg)
    assert generate(cfg, layout)
    stray = layout.conf / "local.d" / "stray.conf"
    stray.write_text("enabled = true;\n")
    (layout.conf / "rspamd.conf.override").write_text("# the admin's\n")
    assert generate(cfg, layout) == ["rspamd:local.d/stray.conf"]  # only what differs is rewritten
    assert not stray.exists() and (layout.conf / "rspamd.conf.override").exists()
    assert generate(cfg, layout) == []
    local = layout.conf / "local.d"
    for module in ("spf", "dkim", "dmarc", "rbl", "fuzzy_check", "asn", "greylist", "surbl", "dcc"):
        assert (local / f"{module}.conf").read_text().endswith("enabled = false;\n"), module
    assert f'nameserver = ["127.0.0.1:{cfg.antispam.dns_port}"]' in (local / "options.inc").read_text()
    assert 'local-zone: "." static' in unbound_config(cfg, layout)  # no upstream: answer at once
    assert "forward-zone" not in unbound_config(cfg, layout)
    password = layout.password_file.read_text().strip()
    assert len(password) >= 24 and password not in (layout.conf / "override.d" / "worker-controller.inc").read_text()
    assert os.stat(layout.password_file).st_mode & 0o777 == 0o600

    import socket

    from antispam.daemons import DaemonSet

    with socket.socket() as taken:  # another program (Debian's rspamd.service...) on one of our ports
        taken.bind(("127.0.0.1", cfg.antispam.redis_port))
        taken.listen()
        assert DaemonSet(cfg, layout).busy_ports() == [f"antispam.redis_port {cfg.antispam.redis_port}"]

    with_dns = make_instance(overrides=testing.overrides(**{"dns.resolvers": ["192.0.2.53"], "dns.port": 5300}), demo=False)
    text = unbound_config(with_dns.config(), Layout.from_config(with_dns.config()))
    assert "forward-addr: 192.0.2.53@5300" in text and '"." static' not in text


def test_loopback_resolver_fails_fast(make_instance) -> None:  # type: ignore[no-untyped-def]
    """No upstream: unbound answers NXDOMAIN at once instead of letting rspamd wait on timeouts."""
    import time

    import dns.exception
    import dns.resolver

    from antispam.generate import generate
    from antispam.layout import Layout

    inst = make_instance(overrides=testing.overrides(), demo=False)
    cfg = inst.config()
    layout = Layout.from_config(cfg)
    generate(cfg, layout)
    proc = subprocess.Popen(["unbound", "-d", "-c", str(layout.unbound_conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], cfg.antispam.dns_port, 2.0
        deadline = time.monotonic() + 10
        while True:
            try:
                r.resolve("localhost.", "A")
                break
            except dns.exception.DNSException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        started = time.monotonic()
        for name in ("maps.rspamd.com", "1.0.0.127.zen.spamhaus.org", "10.2.0.192.in-addr.arpa"):
            with pytest.raises(dns.resolver.NXDOMAIN):
                r.resolve(name, "PTR" if name.endswith("arpa") else "A")
        assert time.monotonic() - started < 1.0
    finally:
        proc.terminate()
        proc.wait(10)
