"""The panel's parts without a browser: authorisation, translations, TOTP, CSV, cookies, idle timeout."""

from __future__ import annotations

import ast
import asyncio
import re
import time
from pathlib import Path

import pyotp
import pytest

from panel import policies, security
from panel.authz import (
    ADDRESSBOOK,
    DEPARTMENT,
    DOMAIN,
    GROUP,
    LOGS,
    QUARANTINE,
    QUEUE,
    READ,
    SYSTEM,
    TOKEN,
    USER,
    WRITE,
    Grant,
    Principal,
    Target,
    allowed,
    covers,
    user_scope,
)
from panel.i18n import _, choose_language, set_request_language, translate_error

PANEL = Path(__file__).resolve().parent.parent / "panel"


# ------------------------------------------------------------------ translations
def panel_strings() -> dict[str, str]:
    out: dict[str, str] = {}
    for f in sorted(PANEL.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_" and node.args:
                a = node.args[0]
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    out.setdefault(a.value, f.name)
    pat = re.compile(r'''_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\)''')
    for f in sorted((PANEL / "templates").glob("*.html")):
        for m in pat.finditer(f.read_text()):
            out.setdefault(m.group(1) if m.group(1) is not None else m.group(2), f.name)
    return out


def test_every_panel_string_has_chinese() -> None:
    from appliance.i18n import CATALOGUES

    strings = panel_strings()
    assert len(strings) > 250
    missing = {s: where for s, where in strings.items() if s not in CATALOGUES["zh-CN"]}
    assert not missing, f"add these to panel/i18n_zh.py: {missing}"
    for s in strings:  # placeholders survive translation
        assert set(re.findall(r"\{\w+\}", s)) == set(re.findall(r"\{\w+\}", CATALOGUES["zh-CN"][s])), s


def test_language_choice() -> None:
    assert choose_language(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert choose_language(None, "fr-FR, en-GB;q=0.7, zh;q=0.5") == "en"
    assert choose_language(None, "de, zh-Hans;q=0.3") == "zh-CN"
    assert choose_language(None, "") == "en"
    assert choose_language("en", "zh-CN") == "en"  # the switch wins
    assert choose_language("klingon", "zh-CN") == "zh-CN"


def test_store_errors_are_translated_per_request() -> None:
    from storage.errors import ConflictError

    err = ConflictError("domain {name} already exists", name="a.test")
    set_request_language("zh-CN")
    try:
        assert translate_error(err) == "域名 a.test 已存在"
        assert _("Users") == "用户"
    finally:
        set_request_language("en")
    assert translate_error(err) == "domain a.test already exists"


# ---------------------------------------------------------------- authorisation
SUPER = Principal("root@a.test", 1, (Grant("super"),))
AUDITOR = Principal("aud@a.test", 2, (Grant("auditor"),))
DOMAIN_A = Principal("da@a.test", 3, (Grant("domain", "a.test"),))
DEPT = Principal("dep@a.test", 4, (Grant("department", "a.test", 10, frozenset({10, 11, 12})),))


@pytest.mark.parametrize(
    "who, action, target, expected",
    [
        (SUPER, WRITE, Target(SYSTEM), True),
        (AUDITOR, READ, Target(SYSTEM), True),
        (AUDITOR, WRITE, Target(USER, "a.test", 10), False),
        (AUDITOR, READ, Target(USER, "b.test", None), True),
        (DOMAIN_A, WRITE, Target(USER, "a.test", None), True),
        (DOMAIN_A, WRITE, Target(USER, "b.test", None), False),
        (DOMAIN_A, WRITE, Target(DOMAIN, "a.test"), True),
        (DOMAIN_A, WRITE, Target(SYSTEM), False),
        (DOMAIN_A, READ, Target(SYSTEM), False),
        (DOMAIN_A, WRITE, Target(GROUP, "a.test"), True),
        (DEPT, WRITE, Target(USER, "a.test", 11), True),
        (DEPT, WRITE, Target(USER, "a.test", 13), False),
        (DEPT, WRITE, Target(USER, "a.test", None), False),
        (DEPT, WRITE, Target(USER, "b.test", 11), False),
        (DEPT, WRITE, Target(DEPARTMENT, "a.test", 10), True),  # add below its root
        (DEPT, WRITE, Target(DEPARTMENT, "a.test", None), False),  # its root's parent: no
        (DEPT, READ, Target(GROUP, "a.test"), False),
        (DEPT, READ, Target(ADDRESSBOOK, "a.test"), True),
        (DEPT, WRITE, Target(ADDRESSBOOK, "a.test"), False),
        (DEPT, READ, Target(LOGS), True),
        (DEPT, WRITE, Target(TOKEN), True),
        (None, READ, Target(LOGS), False),
        (DOMAIN_A, WRITE, Target(QUEUE, "a.test", None), True),  # any sender of its domain
        (DOMAIN_A, READ, Target(QUEUE, "b.test", None), False),
        (DOMAIN_A, READ, Target(QUEUE, None, None), False),  # bounces (null sender): super admins and auditors
        (DEPT, WRITE, Target(QUEUE, "a.test", 12), True),
        (DEPT, READ, Target(QUEUE, "a.test", None), False),  # a sender outside any department
        (DEPT, WRITE, Target(QUARANTINE, "a.test", 11), True),
        (DEPT, READ, Target(QUARANTINE, "a.test", 13), False),
        (AUDITOR, READ, Target(QUARANTINE, "b.test", 1), True),
        (AUDITOR, WRITE, Target(QUEUE, "b.test", 1), False),
    ],
)
def test_authorize(who, action, target, expected) -> None:  # type: ignore[no-untyped-def]
    assert allowed(who, action, target) is expected


def test_token_grants_never_exceed_their_creator() -> None:
    assert covers(SUPER.grants, Grant("auditor"))
    assert covers(DOMAIN_A.grants, Grant("department", "a.test", 10, frozenset({10})))
    assert not covers(DOMAIN_A.grants, Grant("domain", "b.test"))
    assert not covers(DOMAIN_A.grants, Grant("auditor"))
    assert covers(DEPT.grants, Grant("department", "a.test", 11, frozenset({11})))
    assert not covers(DEPT.grants, Grant("department", "a.test", 13, frozenset({13})))
    assert not covers(AUDITOR.grants, Grant("super"))


def test_user_listing_scope() -> None:
    assert user_scope(SUPER, None) == (None, None)
    assert user_scope(DOMAIN_A, "b.test") == ("a.test", None)  # asked for another domain: gets its own
    assert user_scope(DEPT, None) == ("a.test", {10, 11, 12})


# ------------------------------------------------------------------------ TOTP
def test_totp_code_works_once_and_only_near_now() -> None:
    secret = pyotp.random_base32()
    now = time.time()
    step = int(now // 30)
    code = pyotp.TOTP(secret).at(now)
    assert security.check_code(secret, code, None, now) == step
    assert security.check_code(secret, code, step, now) is None  # replay
    assert security.check_code(secret, pyotp.TOTP(secret).at(now - 90), None, now) is None  # too old
    assert security.check_code(secret, "12345", None, now) is None
    assert security.check_code(secret, code[:3] + " " + code[3:], None, now) == step  # a space is fine


def test_password_policy() -> None:
    pol = dict(policies.DEFAULTS, password_min_length=8, password_classes=3)
    assert policies.password_problem(pol, "short1A") is not None
    assert policies.password_problem(pol, "alllowercase") is not None
    assert policies.password_problem(pol, "Mixed-case1") is None
    with pytest.raises(ValueError):
        policies.validate({"password_min_length": "2"})
    assert policies.validate({"admin_totp_required": "on"})["admin_totp_required"] is True


def test_flash_cookie_is_signed() -> None:
    key = b"k" * 32
    value = security.encode_flash(key, "ok", "Saved.")
    assert security.decode_flash(key, value) == ("ok", "Saved.")
    body, _dot, mac = value.rpartition(".")
    assert security.decode_flash(key, body + "." + "0" * len(mac)) is None
    assert security.decode_flash(b"x" * 32, value) is None


# --------------------------------------------------------- the app in process
@pytest.fixture
def panel_app(make_instance):  # type: ignore[no-untyped-def]
    from panel.app import create_app, make_context

    inst = make_instance()
    store = inst.store()
    pc = make_context(store, inst.config(), secure_cookies=True)
    yield inst, store, pc, create_app(pc)
    store.close()


def in_app(app, scenario) -> None:  # type: ignore[no-untyped-def]
    """Run ``scenario(client)`` against the ASGI app over https (no server, no sockets)."""
    import httpx

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://panel.test") as client:
            await scenario(client)

    asyncio.run(main())


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, html[:500]
    return m.group(1)


async def _sign_in(inst, client) -> str:  # type: ignore[no-untyped-def]
    """Password, enrolment, code: returns the TOTP secret."""
    r = await client.get("/login")
    r = await client.post("/login", data={"csrf": _csrf(r.text), "email": "admin@example.test",
                                          "password": inst.accounts["admin@example.test"]})
    assert r.status_code == 303 and r.headers["location"] == "/login/enrol"
    r = await client.get("/login/enrol")
    secret = re.search(r'id="secret">([A-Z2-7 ]+)<', r.text).group(1).replace(" ", "")  # type: ignore[union-attr]
    qr = await client.get("/login/enrol/qr.svg")
    assert qr.headers["content-type"].startswith("image/svg+xml") and b"<svg" in qr.content
    r = await client.post("/login/enrol", data={"csrf": _csrf(r.text), "code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200 and 'id="recovery-codes"' in r.text  # recovery codes, shown once
    assert any(h.startswith("panel_session=") for h in r.headers.get_list("set-cookie"))
    return secret


def test_cookies_secure_under_tls_and_totp_sealed(panel_app) -> None:  # type: ignore[no-untyped-def]
    inst, store, pc, app = panel_app

    async def scenario(client) -> None:  # type: ignore[no-untyped-def]
        secret = await _sign_in(inst, client)
        r = await client.get("/")
        assert r.status_code == 200 and "Dashboard" in r.text
        r = await client.get("/login")  # signed in: sent on
        assert r.status_code == 303
        client.cookies.clear()
        r = await client.get("/login")
        r = await client.post("/login", data={"csrf": _csrf(r.text), "email": "admin@example.test",
                                              "password": inst.accounts["admin@example.test"]})
        session = next(h for h in r.headers.get_list("set-cookie") if h.startswith("panel_session="))
        assert "Secure" in session and "HttpOnly" in session and "SameSite=strict" in session
        assert r.headers["location"] == "/login/totp"  # enrolled: a code, not the QR page
        user = store.directory.get_user("admin@example.test")
        assert secret not in str(user.settings)  # sealed, not in plain text
        assert security.open_secret(store, user) == secret
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]

    in_app(app, scenario)


def test_idle_session_is_signed_out(panel_app) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from storage import models as m

    inst, store, pc, app = panel_app

    async def scenario(client) -> None:  # type: ignore[no-untyped-def]
        await _sign_in(inst, client)
        assert (await client.get("/users")).status_code == 200
        with store.write() as c:  # an hour without activity
            c.execute(update(m.web_sessions).values(last_seen=time.time() - 3600))
        r = await client.get("/users")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = await client.get(r.headers["location"])
        assert "inactivity" in r.text

    in_app(app, scenario)


def test_csv_import_reports_file_errors(panel_app) -> None:  # type: ignore[no-untyped-def]
    from panel import ops_directory as od

    inst, store, pc, app = panel_app
    p = Principal("admin@example.test", 1, (Grant("super"),))
    r = od._validate_import(pc, p, "\ufeffname,colour\nx,y\n")
    assert r.errors == ["the first line must name the columns, with at least: email"]
    r = od._validate_import(pc, p, "email,colour\nx@example.test,y\n")
    assert r.errors and "unknown columns: colour" in r.errors[0]
    r = od._validate_import(pc, p, "email,name\na@example.test,A,extra\n")
    assert r.rows[0].errors == ["more fields than columns"]
    r = od._validate_import(pc, p, "email\n")
    assert r.errors == ["the file has no rows"]
    r = od._validate_import(pc, p, "email,department\nz@example.test,\ny@example.test,Nowhere\nz@example.test,\n")
    assert r.rows[0].errors == [] and r.rows[1].errors and "appears twice" in r.rows[2].errors[0]
    assert not r.ok


def test_openapi_covers_every_api_route() -> None:
    from panel.openapi import openapi_document

    doc = openapi_document()
    src = (PANEL / "api.py").read_text()
    for path in re.findall(r'Route\(base \+ "([^"]+)"', src):
        if path != "/openapi.json":
            assert "/api/v1" + path in doc["paths"], path


def test_service_serves_https_and_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A listener with tls = "implicit" serves HTTPS with the instance certificate; stop() ends it."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from appliance.keys import ssl_server_context
    from appliance.services import ServiceContext
    from panel import service
    from tests.conftest import create_test_instance, free_port

    port = free_port()
    inst = create_test_instance(tmp_path / "i", overrides={
        "listeners": {"panel": {"protocol": "http", "bind": f"127.0.0.1:{port}", "tls": "implicit"}}})
    cfg = inst.config()
    store = inst.store()

    async def main() -> None:
        ctx = ServiceContext(cfg=cfg, store=store, executor=ThreadPoolExecutor(2), ssl_context=ssl_server_context(cfg),
                             log=logging.getLogger("test"))
        svc = await service.start(ctx)
        assert svc is not None and svc.endpoints == [f"https 127.0.0.1:{port}"]
        try:
            async with httpx.AsyncClient(verify=False) as c:
                r = await c.get(f"https://127.0.0.1:{port}/login")
                assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
        finally:
            await svc.stop()
        ctx.executor.shutdown()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(verify=False) as c:
                await c.get(f"https://127.0.0.1:{port}/login")

    try:
        asyncio.run(main())
    finally:
        store.close()


# ------------------------------------------------------- live DNS of a domain page
def test_dns_checker_statuses_cache_and_time_bound() -> None:
    import socket

    from dnsserver import FakeDNS

    from installer.dnsrecords import DnsRecord
    from panel.dnscheck import DnsChecker

    recs = [
        DnsRecord("a.test.", "MX", "10 mail.a.test.", "MX"),
        DnsRecord("a.test.", "TXT", '"v=spf1 mx -all"', "SPF"),
        DnsRecord("s1._domainkey.a.test.", "TXT", '"v=DKIM1; k=ed25519; p=AAAA"', "DKIM (ed25519)"),
        DnsRecord("_mta-sts.a.test.", "TXT", '"v=STSv1; id=1"', "MTA-STS", required=False),
        DnsRecord("mail.a.test.", "A", "<public IPv4 address of this server>", "A"),
        DnsRecord("autoconfig.a.test.", "CNAME", "mail.a.test.", "autoconfig (Thunderbird)", required=False),
    ]
    fake = FakeDNS()
    fake.set("a.test", "MX", "10 mail.a.test.")
    fake.set("a.test", "TXT", "v=spf1 mx -all")
    fake.set("_mta-sts.a.test", "TXT", "v=STSv0; id=9")
    fake.set("mail.a.test", "A", "192.0.2.7")
    checker = DnsChecker(["127.0.0.1"], fake.port, 2)
    try:
        got = {c.purpose: c for c in asyncio.run(checker.check(recs))}
        assert got["MX"].status == "ok" and got["SPF"].status == "ok"
        assert got["DKIM (ed25519)"].status == "missing" and got["DKIM (ed25519)"].found == ()
        assert got["MTA-STS"].status == "different" and got["MTA-STS"].found == ("v=STSv0; id=9",)
        assert got["A"].status == "ok" and got["A"].found == ("192.0.2.7",)  # the public address is the admin's call
        assert got["autoconfig (Thunderbird)"].status == "missing"
        asked = len(fake.queries)
        fake.set("s1._domainkey.a.test", "TXT", "v=DKIM1; k=ed25519; p=AAAA")
        again = {c.purpose: c for c in asyncio.run(checker.check(recs))}
        assert len(fake.queries) == asked and again["DKIM (ed25519)"].status == "missing"  # cached
        fresh = {c.purpose: c for c in asyncio.run(checker.check(recs, fresh=True))}
        assert len(fake.queries) > asked and fresh["DKIM (ed25519)"].status == "ok"
    finally:
        checker.close()
        fake.close()
    # a resolver that never answers: the page gets "checking" after the wait, then "no-answer" from the cache
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        checker = DnsChecker(["127.0.0.1"], silent.getsockname()[1], 0.5)
        try:
            t0 = time.monotonic()
            first = asyncio.run(checker.check(recs[:2], wait=0.2))
            assert time.monotonic() - t0 < 1.5 and {c.status for c in first} == {"checking"}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                later = asyncio.run(checker.check(recs[:2], wait=2))
                if {c.status for c in later} != {"checking"}:
                    break
            assert {c.status for c in later} == {"no-answer"}
            t0 = time.monotonic()  # the resolver just failed: the other records give up at once
            rest = asyncio.run(checker.check(recs[2:], wait=5))
            assert {c.status for c in rest} == {"no-answer"} and time.monotonic() - t0 < 1.0
        finally:
            checker.close()


# ---------------------------------------------------- queue and quarantine scopes
def test_queue_and_quarantine_follow_admin_scopes(panel_app) -> None:  # type: ignore[no-untyped-def]
    """Messages put where the MTA puts them (OutboundQueue.enqueue, Quarantine.hold); each admin sees its part."""
    from antispam.layout import Layout
    from antispam.quarantine import Quarantine
    from mta.queue import OutboundQueue
    from panel import ops_mail as om
    from panel.authz import Forbidden
    from panel.context import OpError

    inst, store, pc, app = panel_app
    d = store.directory
    d.add_domain("b.test")
    sales = d.add_department("example.test", "Sales")
    east = d.add_department("example.test", "East", sales.id)
    store.create_user("sam@example.test", password="Sam-Passw0rd-123", department_id=east.id)
    store.create_user("olga@b.test", password="Olga-Passw0rd-123")
    queue = OutboundQueue(store, inst.path / "queue", fsync=False)
    mail = b"From: x\r\nSubject: hi\r\n\r\nbody\r\n"
    ids = {s: queue.enqueue(s, [f"to-{i}@remote.example"], mail) for i, s in
           enumerate(["sam@example.test", "alice@example.test", "olga@b.test", ""])}
    q = Quarantine(store, Layout.from_config(pc.cfg).quarantine)
    both = q.hold(mail, sender="spam@x.example", recipients=["sam@example.test", "olga@b.test"], days=3, score=20.0,
                  symbols=[("GTUBE", 15.0)])
    only_b = q.hold(mail, sender="spam@x.example", recipients=["olga@b.test"], days=3, score=20.0)

    dom = Principal("da@example.test", 90, (Grant("domain", "example.test"),))
    dep = Principal("dep@example.test", 91, (Grant("department", "example.test", sales.id, frozenset({sales.id, east.id})),))
    aud = Principal("aud@example.test", 92, (Grant("auditor"),))
    sup = Principal("admin@example.test", 93, (Grant("super"),))

    def senders(p: Principal, **kw) -> set[str]:  # type: ignore[no-untyped-def]
        return {i.sender for i in asyncio.run(om.list_queue(pc, p, **kw)).items}

    assert senders(sup) == {"sam@example.test", "alice@example.test", "olga@b.test", ""}
    assert senders(dom) == {"sam@example.test", "alice@example.test"}
    assert senders(dep) == {"sam@example.test"}
    assert senders(sup, sender="OLGA") == {"olga@b.test"}
    assert senders(sup, rcpt_domain="nowhere.example") == set()
    assert senders(sup, state="pending") == senders(sup) and senders(sup, state="held") == set()
    with pytest.raises(OpError):
        asyncio.run(om.list_queue(pc, sup, state="bogus"))
    with pytest.raises(Forbidden):
        asyncio.run(om.retry_queued(pc, dep, "127.0.0.1", ids["alice@example.test"]))
    with pytest.raises(Forbidden):
        asyncio.run(om.retry_queued(pc, aud, "127.0.0.1", ids["sam@example.test"]))
    assert asyncio.run(om.queue_item(pc, aud, ids["olga@b.test"])).headers == {}  # headers: super admins only
    assert asyncio.run(om.queue_item(pc, sup, ids["olga@b.test"])).headers["subject"] == ["hi"]
    assert asyncio.run(om.delete_queued(pc, dep, "192.0.2.1", ids["sam@example.test"])) is True
    assert not queue.exists(ids["sam@example.test"])
    with pytest.raises(Forbidden):
        asyncio.run(om.flush_queue(pc, aud, None))
    n, _now = asyncio.run(om.flush_queue(pc, dom, None))
    assert n == 1 and (queue.kick_dir / ids["alice@example.test"]).exists() and not (queue.kick_dir / "all").exists()

    def held(p: Principal) -> dict[str, om.HeldItem]:
        return {i.id: i for i in asyncio.run(om.list_quarantine(pc, p)).items}

    assert set(held(sup)) == {both, only_b}
    mine = held(dep)
    assert set(mine) == {both} and mine[both].recipients == ["sam@example.test"]  # not olga: outside its scope
    assert mine[both].can_write is False and mine[both].symbols == [("GTUBE", 15.0)]
    with pytest.raises(Forbidden):
        asyncio.run(om.release_held(pc, dom, None, both))  # olga@b.test is not its to release
    with pytest.raises(Forbidden):
        asyncio.run(om.held_item(pc, dom, only_b))
    delivered, failed = asyncio.run(om.release_held(pc, sup, "192.0.2.9", both))
    assert sorted(delivered) == ["olga@b.test", "sam@example.test"] and not failed
    assert set(held(sup)) == {only_b}
    events = pc.web.search_events(kinds=("admin",), limit=10)
    acts = {(e.action, e.subject, e.ip) for e in events}
    assert ("quarantine.release", both, "192.0.2.9") in acts and ("queue.delete", ids["sam@example.test"], "192.0.2.1") in acts
    assert any(e.action == "queue.flush" and e.actor == "da@example.test" for e in events)
