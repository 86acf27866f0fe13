"""The outbound parts in process: MTA-STS, strict TLS, smarthost AUTH, DKIM signing, DSNs, expiry.

Scripted aiosmtpd peers listen on 127.0.0.x (one port for all, as queue.remote_port is one port), the
fake DNS answers for the test domains, and ``outboundkit.Worker`` runs the delivery worker on a loop in
a thread over a real store and queue.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import ssl
import threading
import time

import dkim
import pytest
from conftest import create_test_instance, free_port
from dnsserver import FakeDNS
from mtakit import inbox, message
from outboundkit import Peer, Worker, wait_for

from appliance.i18n import set_language
from appliance.keys import generate_self_signed_cert
from mta.dkimsign import DkimSigner, describe
from mta.dsn import RecipientStatus, build_dsn
from mta.mtasts import MtaSts, PolicyError, https_fetch, parse_policy, parse_txt
from mta.mx import MxResolver, RouteError
from mta.outbound import backoff
from mta.queue import OutboundQueue
from mta.smtpclient import dot_stuff

POLICY = "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmx: *.backup.test\nmax_age: 86400\n"


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    yield server
    server.close()


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def inst(tmp_path_factory):  # type: ignore[no-untyped-def]
    return create_test_instance(tmp_path_factory.mktemp("units"))


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


@pytest.fixture
def queue(inst, store, tmp_path):  # type: ignore[no-untyped-def]
    return OutboundQueue(store, tmp_path / "queue")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("certs")
    out = {}
    for host in ("mx.sts.test", "relay.test", "mta-sts.sts.test"):
        generate_self_signed_cert(d / f"{host}.pem", d / f"{host}.key", host)
        out[host] = (d / f"{host}.pem", d / f"{host}.key")
    return out


def enqueue(queue: OutboundQueue, rcpt: str, subject: str = "unit") -> str:
    return queue.enqueue("alice@example.test", [rcpt], message("alice@example.test", rcpt, subject),
                         meta={"auth": "alice@example.test"})


# ---------------------------------------------------------------- pure functions


def test_policy_parser_and_mx_patterns() -> None:
    p = parse_policy(POLICY, policy_id="abc")
    assert (p.mode, p.mx, p.max_age, p.id, p.enforced) == ("enforce", ("mx.sts.test", "*.backup.test"), 86400, "abc", True)
    assert p.matches("mx.sts.test") and p.matches("MX.STS.TEST.") and p.matches("a.backup.test")
    assert not p.matches("a.b.backup.test") and not p.matches("backup.test") and not p.matches("evil.test")
    assert parse_policy("version: STSv1\r\nmode: none\r\nmax_age: 0\r\n").mode == "none"
    for bad in ("mode: enforce\nmx: a\nmax_age: 1\n", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmx: a\nmax_age: x\n",
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n", "garbage"):
        with pytest.raises(PolicyError):
            parse_policy(bad)
    assert parse_txt(["v=STSv1; id=20240101T000000"]) == "20240101T000000"
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two records: none
    assert parse_txt(["v=spf1 -all"]) is None and parse_txt(["v=STSv1; id=bad id!"]) is None


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff(n, 60, 1800) for n in range(1, 8)]
    assert 60 <= delays[0] <= 66 and 120 <= delays[1] <= 132 and 240 <= delays[2] <= 264
    assert all(1800 <= d <= 1980 for d in delays[5:])


def test_dot_stuffing() -> None:
    assert dot_stuff(b".a\r\n..b\r\nc") == b"..a\r\n...b\r\nc\r\n.\r\n"


def test_dkim_signatures_verify_and_follow_the_from_domain(inst) -> None:  # type: ignore[no-untyped-def]
    keys = {f"{k['name']}.".encode(): k["txt"].encode() for k in describe(inst.path / "keys", "example.test")["keys"]}
    signer = DkimSigner(inst.path / "keys")
    raw = message("Alice <alice@example.test>", "b@x.test", "signed", ".leading dot\r\n\r\n  trailing  \r\n")
    signed = signer.sign(raw)
    d = dkim.DKIM(signed)
    assert [d.verify(idx=i, dnsfunc=lambda name, timeout=5: keys.get(name)) for i in range(2)] == [True, True]
    assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed and b"d=example.test" in signed
    sub = signer.sign(message("noreply@lists.example.test", "b@x.test"))  # a subdomain signs with its parent's keys
    assert b"d=example.test" in sub.split(b"\r\n\r\n")[0]
    other = message("x@other.test", "b@x.test")
    assert signer.sign(other) == other  # not our domain: untouched
    assert signer.sign(b"Subject: no from\r\n\r\nbody\r\n") == b"Subject: no from\r\n\r\nbody\r\n"

    # the usual MIME fields of a mail client make h= long enough to fold: it still verifies
    mime = ("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "In-Reply-To: <a@b>\r\nReferences: <a@b>\r\nAuto-Submitted: auto-replied\r\n")
    signed = signer.sign(message("alice@example.test", "b@x.test", "folded", extra=mime))
    assert b"\r\n ontent" not in signed
    d = dkim.DKIM(signed)
    assert [d.verify(idx=i, dnsfunc=lambda name, timeout=5: keys.get(name)) for i in range(2)] == [True, True]


def test_dsn_structure_and_language() -> None:
    original = message("alice@example.test", "b@x.test", "original")
    statuses = [RecipientStatus("b@x.test", "delayed", "4.4.1", "connection refused", "mx.x.test", None, time.time())]
    raw = build_dsn(hostname="mail.example.test", queue_id="0" * 20, sender="alice@example.test", original=original,
                    arrival=time.time() - 3600, statuses=statuses, delayed=True, retry_until=time.time() + 86400)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = parts[1].get_payload()
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Will-Retry-Until"]
    assert b"original" in raw and msg["Subject"] == "Delayed Mail (still being retried)"
    set_language("zh-CN")
    try:
        zh = email.message_from_bytes(build_dsn(hostname="h.test", queue_id="1" * 20, sender="a@b.test", original=original,
                                                arrival=time.time(), statuses=statuses), policy=email.policy.default)
    finally:
        set_language(None)
    assert zh["Subject"] == "邮件无法投递，已退回发件人"
    assert "邮件投递系统" in zh["From"]
    assert "您的邮件无法投递" in list(zh.iter_parts())[0].get_content()


# ---------------------------------------------------------------- DNS routes


def test_mx_routes(fake_dns) -> None:  # type: ignore[no-untyped-def]
    fake_dns.set("pref.test", "MX", "20 b.pref.test.", "10 a.pref.test.")
    fake_dns.set("nomx.test", "A", "127.0.0.1")
    fake_dns.set("null.test", "MX", "0 .")
    r = MxResolver(["127.0.0.1"], port=fake_dns.port, timeout=2)

    async def run() -> None:
        assert await r.mx_hosts("pref.test") == ["a.pref.test", "b.pref.test"]
        assert await r.mx_hosts("nomx.test") == ["nomx.test"]
        assert await r.addresses("nomx.test") == ["127.0.0.1"]
        assert await r.addresses("[192.0.2.7]") == ["192.0.2.7"]
        for domain, status in (("null.test", "5.1.10"), ("missing.test", "5.1.2")):
            with pytest.raises(RouteError) as err:
                await r.mx_hosts(domain)
            assert err.value.status == status and not err.value.temporary

    asyncio.run(run())


# ---------------------------------------------------------------- MTA-STS


def test_sts_policy_cache_follows_the_txt_id(fake_dns) -> None:  # type: ignore[no-untyped-def]
    fetched: list[str] = []
    text = {"v": POLICY}

    async def fetcher(domain: str) -> str:
        fetched.append(domain)
        if text["v"] is None:
            raise OSError("unreachable")
        return text["v"]

    fake_dns.set("_mta-sts.cache.test", "TXT", "v=STSv1; id=one")
    resolver = MxResolver(["127.0.0.1"], port=fake_dns.port, timeout=2)
    resolver.resolver.cache = None  # see each change of the record at once
    sts = MtaSts(resolver, fetcher)

    async def run() -> None:
        assert (await sts.policy("cache.test")).id == "one"
        assert (await sts.policy("cache.test")).id == "one" and len(fetched) == 1  # cached
        fake_dns.set("_mta-sts.cache.test", "TXT", "v=STSv1; id=two")
        text["v"] = POLICY.replace("enforce", "testing")
        p = await sts.policy("cache.test")
        assert (p.id, p.mode) == ("two", "testing") and len(fetched) == 2
        fake_dns.remove("_mta-sts.cache.test")
        assert (await sts.policy("cache.test")).id == "two"  # the record went: the cached policy stays in force
        fake_dns.set("_mta-sts.cache.test", "TXT", "v=STSv1; id=three")
        text["v"] = None
        assert (await sts.policy("cache.test")).id == "two"  # fetching failed: keep the cached one
        assert await sts.policy("nothing.test") is None

    asyncio.run(run())


def test_https_fetch_from_a_local_server(fake_dns, certs) -> None:  # type: ignore[no-untyped-def]
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = POLICY.encode() if self.path == "/.well-known/mta-sts.txt" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, certs["mta-sts.sts.test"]))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fake_dns.set("mta-sts.sts.test", "A", "127.0.0.1")
    resolver = MxResolver(["127.0.0.1"], port=fake_dns.port, timeout=2)
    try:
        text = asyncio.run(https_fetch("sts.test", resolver=resolver, port=httpd.server_address[1],
                                       ca_file=str(certs["mta-sts.sts.test"][0]), timeout=5))
        assert parse_policy(text).mx == ("mx.sts.test", "*.backup.test")
        with pytest.raises(ssl.SSLError):  # a certificate we do not trust
            asyncio.run(https_fetch("sts.test", resolver=resolver, port=httpd.server_address[1], timeout=5))
    finally:
        httpd.shutdown()


def test_sts_enforce_requires_verified_tls_to_a_listed_mx(fake_dns, store, queue, port, certs) -> None:  # type: ignore[no-untyped-def]
    fake_dns.set("sts.test", "MX", "10 mx.sts.test.")
    fake_dns.set("mx.sts.test", "A", "127.0.0.7")
    fake_dns.set("_mta-sts.sts.test", "TXT", "v=STSv1; id=1")
    fake_dns.set("sts2.test", "MX", "10 mx.sts.test.")
    fake_dns.set("_mta-sts.sts2.test", "TXT", "v=STSv1; id=1")
    policies = {"sts.test": POLICY, "sts2.test": POLICY.replace("mx: mx.sts.test\n", "")}

    async def fetcher(domain: str) -> str:
        return policies[domain]

    peer = Peer("127.0.0.7", port, cert=certs["mx.sts.test"])
    worker = Worker(store, queue, fake_dns.port, remote_port=port, fetcher=fetcher,
                    connect={"ca_file": str(certs["mx.sts.test"][0])})
    try:
        enqueue(queue, "a@sts.test")
        wait_for(lambda: peer.messages, 15)
        assert peer.tls == [True]
        qid = enqueue(queue, "b@sts2.test")  # its policy does not list mx.sts.test
        wait_for(lambda: (queue.load_state(qid) or {}).get("attempts"), 15)
        assert "MTA-STS" in queue.load_state(qid)["last_error"] and len(peer.messages) == 1
    finally:
        worker.stop()
        peer.close()


def test_strict_tls_domains_wait_for_tls_others_go_plain(fake_dns, store, queue, port) -> None:  # type: ignore[no-untyped-def]
    for d in ("strict.test", "plain.test"):
        fake_dns.set(d, "MX", f"10 mx.{d}.")
        fake_dns.set(f"mx.{d}", "A", "127.0.0.8")
    peer = Peer("127.0.0.8", port)  # no STARTTLS
    worker = Worker(store, queue, fake_dns.port, remote_port=port,
                    connect={"tls_required_domains": frozenset({"strict.test"})})
    try:
        strict = enqueue(queue, "a@strict.test")
        enqueue(queue, "a@plain.test")
        wait_for(lambda: peer.messages, 15)
        assert peer.messages[0][1] == ["a@plain.test"] and peer.tls == [False]
        wait_for(lambda: (queue.load_state(strict) or {}).get("attempts"), 15)
        assert "does not offer STARTTLS" in queue.load_state(strict)["last_error"]
        assert len(peer.messages) == 1
    finally:
        worker.stop()
        peer.close()


def test_smarthost_with_auth_over_starttls(fake_dns, store, queue, port, certs) -> None:  # type: ignore[no-untyped-def]
    fake_dns.set("relay.test", "A", "127.0.0.9")
    peer = Peer("127.0.0.9", port, cert=certs["relay.test"], logins={"relay": "s3cret"})
    base = {"smarthost": ("relay.test", port), "smarthost_tls": "starttls", "ca_file": str(certs["relay.test"][0]),
            "smarthost_user": "relay"}
    worker = Worker(store, queue, fake_dns.port, connect={**base, "smarthost_password": "wrong"})
    try:
        qid = enqueue(queue, "someone@anywhere.test")
        wait_for(lambda: (queue.load_state(qid) or {}).get("attempts"), 15)
        assert "refused our login" in queue.load_state(qid)["last_error"] and peer.messages == []
    finally:
        worker.stop()
    worker = Worker(store, queue, fake_dns.port, connect={**base, "smarthost_password": "s3cret"})
    try:
        wait_for(lambda: peer.messages, 15)
        assert peer.logins == ["relay"] and peer.tls == [True]
        assert peer.messages[0][1] == ["someone@anywhere.test"]
        wait_for(lambda: not queue.ids(), 5)
    finally:
        worker.stop()
        peer.close()


def test_expiry_and_delay_notice_from_config(tmp_path_factory, fake_dns, port) -> None:  # type: ignore[no-untyped-def]
    fake_dns.set("dead.test", "MX", "10 mx.dead.test.")
    fake_dns.set("mx.dead.test", "A", "127.0.0.4")  # nothing listens: connection refused
    inst = create_test_instance(tmp_path_factory.mktemp("expiry"), overrides={
        "queue.max_lifetime": 4, "queue.delay_notice_after": 1, "queue.retry_base": 1, "queue.retry_max": 1,
        "queue.remote_port": port, "queue.connect_timeout": 1})
    store = inst.store()
    queue = OutboundQueue(store, inst.path / "queue")
    worker = Worker(store, queue, fake_dns.port, config=inst.config())
    try:
        assert worker.settings.max_lifetime == 4 and worker.settings.delay_notice_after == 1
        qid = enqueue(queue, "x@dead.test", "will expire")
        reports = wait_for(lambda: [m for m in inbox(store, "alice@example.test") if b"multipart/report" in m
                                    and b"Action: failed" in m], 15)
        wait_for(lambda: not queue.ids(), 5)
    finally:
        worker.stop()
        store.close()
    mail = inbox(inst.store(), "alice@example.test")
    delayed = [m for m in mail if b"Action: delayed" in m]
    assert len(delayed) == 1 and len(reports) == 1  # one delay notice, then the bounce
    report = email.message_from_bytes(reports[0], policy=email.policy.default)
    block = list(report.iter_parts())[1].get_payload()[1]
    assert block["Status"] == "4.4.7" and block["Action"] == "failed"
    text = list(report.iter_parts())[0].get_content()
    assert "delivery time expired" in text and "Connection refused" in text and qid.encode() in reports[0]
