"""The panel's mail pages end to end: the outbound queue, the quarantine, live DNS status of a domain.

One ``appliance up --service mta --service panel`` for the module, with
``queue.hold`` on (nothing leaves) and ``[dns]`` pointed at a FakeDNS.
Queued mail is submitted by real users over SMTP submission; quarantined
mail is stored by ``antispam.quarantine.Quarantine.hold``, the MTA's path
for a rejected-and-kept message (rspamd is not started: its first start
compiles rules for a minute). Headless Chromium drives each page's main
action; httpx drives the JSON API with tokens.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dnsserver import FakeDNS
from mtakit import inbox, message, submission_client

from tests.conftest import Server, create_test_instance
from tests.test_panel_e2e import CHROMIUM, CHROMIUM_ARGS, api, flash, make_token, new_page, shot, sign_in

DOMAIN_ADMIN = "dora@example.test"
DOMAIN_ADMIN_PW = "Dora-Passw0rd-123"
OLGA = "olga@other.test"
OLGA_PW = "Olga-Passw0rd-123"


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    yield server
    server.close()


@pytest.fixture(scope="module")
def inst(tmp_path_factory, fake_dns):  # type: ignore[no-untyped-def]
    from installer.dnsrecords import dkim_keys

    inst = create_test_instance(tmp_path_factory.mktemp("panelmail"), overrides=fake_dns.overrides())
    # example.test publishes MX, SPF, DMARC and an address; not its DKIM key; a wrong MTA-STS record
    fake_dns.set("example.test", "MX", "10 mail.example.test.")
    fake_dns.set("example.test", "TXT", "v=spf1 mx -all")
    fake_dns.set("_dmarc.example.test", "TXT", "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test")
    fake_dns.set("mail.example.test", "A", "192.0.2.25")
    fake_dns.set("_mta-sts.example.test", "TXT", "v=STSv0; id=old")
    store = inst.store()
    try:
        store.directory.add_domain("other.test")
        store.create_user(DOMAIN_ADMIN, password=DOMAIN_ADMIN_PW, name="Dora")
        store.directory.add_admin(DOMAIN_ADMIN, "domain", "example.test")
        store.create_user(OLGA, password=OLGA_PW, name="Olga")
        inst.dkim_txt = next(k.txt for k in dkim_keys(inst.path / "keys", "example.test") if k.selector == "s1")  # type: ignore[attr-defined]
    finally:
        store.close()
    inst.accounts[OLGA] = OLGA_PW
    return inst


@pytest.fixture(scope="module")
def server(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst, services=["mta", "panel"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base(server, inst) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{inst.ports['panel']}"


def queue_ids(inst) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Subject -> queue id of every queued message (read as `appliance queue` reads it)."""
    from mta.queue import OutboundQueue

    store = inst.store()
    try:
        q = OutboundQueue(store, inst.path / "queue", fsync=False)
        out = {}
        for qid in q.ids():
            raw = q.load(qid).raw
            subject = re.search(rb"Subject: (.*)\r\n", raw).group(1).decode()  # type: ignore[union-attr]
            out[subject] = qid
        return out
    finally:
        store.close()


@pytest.fixture(scope="module")
def mail(server, inst):  # type: ignore[no-untyped-def]
    """Three messages held in the queue (two from example.test, one from other.test) and two in quarantine."""
    from antispam.layout import Layout
    from antispam.quarantine import Quarantine

    for login, rcpt, subject in (("alice@example.test", "ann@remote.example", "to retry and delete"),
                                 ("alice@example.test", "ben@remote.example", "stays queued"),
                                 (OLGA, "cat@remote.example", "from the other domain")):
        with submission_client(inst.ports["submission"], login, inst.accounts[login]) as c:
            c.sendmail(login, [rcpt], message(login, rcpt, subject))
    ids = queue_ids(inst)
    assert set(ids) == {"to retry and delete", "stays queued", "from the other domain"}
    gtube = "XJS*C4JDBQADN1.NSB5$AJ_1*EFL8$U5QB)4$*8$&QRA2$D4*7$^$0YE_3I3$$I*F$Q7X$A[(7$^$7$YBN$U04JFI5"
    store = inst.store()
    try:
        q = Quarantine(store, Layout.from_config(inst.config()).quarantine)
        held = {
            "bob": q.hold(message("win@prize.example", "bob@example.test", "You have won", gtube + "\r\n"),
                          sender="win@prize.example", recipients=["bob@example.test"], days=14, score=1015.2,
                          reason="score 1015.20, junk from 6, reject from 15", ip="203.0.113.9",
                          symbols=[("GTUBE", 1000.0), ("R_SUSPICIOUS_URL", 5.5), ("MISSING_DATE", 1.0)]),
            "bob2": q.hold(message("deals@cheap.example", "bob@example.test", "Cheap pills"), sender="deals@cheap.example",
                           recipients=["bob@example.test"], days=14, score=22.0, symbols=[("BAYES_SPAM", 8.0)]),
            "olga": q.hold(message("win@prize.example", OLGA, "You have won too", gtube + "\r\n"),
                           sender="win@prize.example", recipients=[OLGA], days=14, score=1015.2, symbols=[("GTUBE", 1000.0)]),
        }
    finally:
        store.close()
    return {"queue": ids, "held": held}


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def watch_errors(page) -> list[str]:  # type: ignore[no-untyped-def]
    """Console errors and script errors of ``page`` (a refused page's own 403 is expected, not an error)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 403" not in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


@pytest.fixture(scope="module")
def admin(browser, base, inst):  # type: ignore[no-untyped-def]
    page = new_page(browser)
    page.errors = watch_errors(page)
    sign_in(page, base, "admin@example.test", inst.accounts["admin@example.test"], enrol=True)
    yield page
    assert page.errors == []
    page.context.close()


def admin_events(inst, action: str) -> list:  # type: ignore[no-untyped-def]
    store = inst.store()
    try:
        from storage.crypto import hmac_key, load_master_key
        from storage.webadmin import WebAdmin

        web = WebAdmin(store, hmac_key(load_master_key(inst.config().storage.master_key_file), "web-panel-digests"))
        return [e for e in web.search_events(kinds=("admin",), limit=200) if e.action == action]
    finally:
        store.close()


# --------------------------------------------------------------------------- queue
def test_queue_list_filter_retry_and_delete(admin, base, inst, mail) -> None:  # type: ignore[no-untyped-def]
    ids = mail["queue"]
    admin.goto(base + "/")
    assert admin.inner_text("#queue-count .n") == "3" and admin.inner_text("#quarantine-count .n") == "3"
    admin.click("#queue-count")
    admin.wait_for_url(re.compile(r"/queue$"))
    table = admin.inner_text("#queue")
    assert "alice@example.test" in table and OLGA in table and "ann@remote.example" in table
    assert "queue.hold is set" in admin.inner_text("#queue-hold")
    shot(admin, "queue")
    admin.fill("input[name=sender]", "olga")
    admin.click("form[role=search] button")
    table = admin.inner_text("#queue")
    assert OLGA in table and "alice@example.test" not in table
    admin.goto(base + "/queue?domain=nowhere.example")
    assert "No queued messages match" in admin.inner_text("#queue")

    qid = ids["to retry and delete"]
    admin.goto(base + "/queue")
    admin.click(f"a[href='/queue/{qid}']")
    admin.wait_for_url(re.compile(rf"/queue/{qid}$"))
    assert "ann@remote.example" in admin.inner_text("#recipients")
    assert "to retry and delete" in admin.inner_text("#headers")  # a super admin sees header fields
    assert "Hello there" not in admin.content()  # never the body
    shot(admin, "queue-item")
    admin.click("#retry")
    assert f"{qid} will be retried when the MTA delivers again" in flash(admin)
    assert (inst.path / "queue" / "kick" / qid).exists()  # the request the delivery worker takes
    admin.click("#delete")
    assert "no bounce is sent to alice@example.test" in admin.inner_text("main")
    admin.click("#confirm-delete")
    admin.wait_for_url(re.compile(r"/queue$"))
    assert f"{qid} deleted" in flash(admin)
    assert not (inst.path / "queue" / "ready" / qid).exists()
    retry = [e for e in admin_events(inst, "queue.retry") if e.subject == qid]
    delete = [e for e in admin_events(inst, "queue.delete") if e.subject == qid]
    assert retry and retry[0].actor == "admin@example.test" and retry[0].ip == "127.0.0.1"
    assert delete and delete[0].detail["recipients"] == ["ann@remote.example"] and delete[0].detail["done"] is True
    assert admin.errors == []


# ---------------------------------------------------------------------- quarantine
def test_quarantine_release_and_delete(admin, base, inst, mail) -> None:  # type: ignore[no-untyped-def]
    held = mail["held"]
    admin.goto(base + "/quarantine")
    table = admin.inner_text("#quarantine")
    assert "You have won" in table and "bob@example.test" in table and "1015.2" in table and "GTUBE" in table
    shot(admin, "quarantine")
    admin.click(f"a[href='/quarantine/{held['bob']}']")
    symbols = admin.inner_text("#symbols")
    assert "R_SUSPICIOUS_URL" in symbols and "5.50" in symbols
    shot(admin, "held")
    admin.click("#release")
    admin.wait_for_url(re.compile(r"/quarantine$"))
    assert "Released to the Inbox of bob@example.test" in flash(admin)
    store = inst.store()
    try:
        released = [m for m in inbox(store, "bob@example.test") if b"You have won" in m]
        assert len(released) == 1 and b"X-Quarantine-Released:" in released[0]
    finally:
        store.close()
    admin.goto(base + f"/quarantine/{held['bob2']}")
    admin.click("#delete")
    assert "erased for good" in admin.inner_text("main")
    admin.click("#confirm-delete")
    admin.wait_for_url(re.compile(r"/quarantine$"))
    assert f"Message {held['bob2']} deleted" in flash(admin)
    table = admin.inner_text("#quarantine")
    assert "Cheap pills" not in table and "You have won too" in table
    assert [e.ip for e in admin_events(inst, "quarantine.release") if e.subject == held["bob"]] == ["127.0.0.1"]
    assert [e.actor for e in admin_events(inst, "quarantine.delete") if e.subject == held["bob2"]] == ["admin@example.test"]
    assert admin.errors == []


# -------------------------------------------------------------------- live DNS
def status_of(page, purpose: str) -> str:  # type: ignore[no-untyped-def]
    return page.get_attribute(f"#dns-records tr[data-purpose='{purpose}']", "data-status")


def test_domain_page_shows_live_dns_and_checks_again(admin, base, inst, fake_dns) -> None:  # type: ignore[no-untyped-def]
    admin.goto(base + "/domains/example.test")
    assert status_of(admin, "MX") == "ok" and status_of(admin, "SPF") == "ok" and status_of(admin, "DMARC") == "ok"
    assert status_of(admin, "A") == "ok" and "192.0.2.25" in admin.inner_text("#dns-records tr[data-purpose='A']")
    assert status_of(admin, "DKIM (ed25519)") == "missing"
    assert status_of(admin, "MTA-STS") == "different"
    assert "v=STSv0; id=old" in admin.inner_text("#dns-records tr[data-purpose='MTA-STS']")
    shot(admin, "domain-dns")
    fake_dns.set("s1._domainkey.example.test", "TXT", inst.dkim_txt)
    admin.goto(base + "/domains/example.test")
    assert status_of(admin, "DKIM (ed25519)") == "missing"  # answers are cached for a minute
    admin.click("#dns-check")
    admin.wait_for_url(re.compile(r"/domains/example.test(#dns)?$"))
    assert status_of(admin, "DKIM (ed25519)") == "ok"
    assert admin.errors == []


# ------------------------------------------------------------------- scopes
def test_domain_admin_sees_its_domain_only(browser, base, inst, mail) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser)
    errors = watch_errors(page)
    try:
        sign_in(page, base, DOMAIN_ADMIN, DOMAIN_ADMIN_PW, enrol=True)
        assert page.inner_text("#queue-count .n") == "1"  # "stays queued"; olga's is another domain's
        page.goto(base + "/queue")
        table = page.inner_text("#queue")
        assert "ben@remote.example" in table and OLGA not in table
        page.goto(base + "/quarantine")
        assert "You have won too" not in page.inner_text("#quarantine")
        for path in (f"/queue/{mail['queue']['from the other domain']}", f"/quarantine/{mail['held']['olga']}"):
            r = page.goto(base + path)
            assert r.status == 403, path
            assert "does not cover" in page.inner_text("main")
        # its own message: retry works, no header fields (super admins only)
        page.goto(base + f"/queue/{mail['queue']['stays queued']}")
        assert page.locator("#headers").count() == 0
        page.click("#retry")
        assert "will be retried" in flash(page)
        assert errors == []
    finally:
        page.context.close()
    assert queue_ids(inst).keys() >= {"from the other domain", "stays queued"}


def test_api_queue_quarantine_dns_scoped_like_admins(base, inst, mail) -> None:  # type: ignore[no-untyped-def]
    other_q, own_q = mail["queue"]["from the other domain"], mail["queue"]["stays queued"]
    other_h = mail["held"]["olga"]
    with api(base, make_token(inst, DOMAIN_ADMIN, "domain", scope_domain="example.test")) as c:
        listed = c.get("/queue").json()
        assert [m["id"] for m in listed["messages"]] == [own_q] and listed["hold"] is True
        assert c.get(f"/queue/{other_q}").status_code == 403
        assert c.post(f"/queue/{other_q}/retry").status_code == 403
        assert c.delete(f"/queue/{other_q}").status_code == 403
        assert c.get(f"/quarantine/{other_h}").status_code == 403
        assert c.post(f"/quarantine/{other_h}/release").status_code == 403
        assert c.delete(f"/quarantine/{other_h}").status_code == 403
        assert other_h not in [m["id"] for m in c.get("/quarantine").json()["messages"]]
        assert c.get("/domains/other.test/dns-check").status_code == 403
        r = c.post(f"/queue/{own_q}/retry")
        assert r.status_code == 200 and r.json() == {"id": own_q, "scheduled": True, "delivering": False}
        detail = c.get(f"/queue/{own_q}").json()
        assert detail["recipients"][0] == {"address": "ben@remote.example", "state": "pending", "reply": "", "mx": None, "at": None}
        assert "headers" not in detail
        assert c.get("/queue", params={"state": "nonsense"}).status_code == 400
        assert c.get("/queue/not-a-queue-id").status_code == 404
    with api(base, make_token(inst, "admin@example.test", "auditor")) as c:
        assert {m["id"] for m in c.get("/queue").json()["messages"]} == {own_q, other_q}
        assert c.post(f"/queue/{own_q}/retry").status_code == 403
        assert c.post("/queue/flush").status_code == 403
        assert c.post(f"/quarantine/{other_h}/release").status_code == 403
    with api(base, make_token(inst, "admin@example.test", "super")) as c:
        checks = {r["purpose"]: r for r in c.get("/domains/example.test/dns-check").json()["records"]}
        assert checks["MX"]["status"] == "ok" and checks["MTA-STS"]["found"] == ["v=STSv0; id=old"]
        doc = c.get("/openapi.json").json()
        for path in ("/api/v1/queue", "/api/v1/queue/{id}/retry", "/api/v1/quarantine/{id}/release",
                     "/api/v1/domains/{name}/dns-check"):
            assert path in doc["paths"], path
        held = c.get("/quarantine", params={"recipient": OLGA}).json()["messages"]
        assert [h["id"] for h in held] == [other_h] and held[0]["symbols"] == [{"name": "GTUBE", "score": 1000.0}]
        r = c.post(f"/quarantine/{other_h}/release")
        assert r.status_code == 200 and r.json() == {"delivered": [OLGA], "failed": {}}
        assert c.delete(f"/queue/{other_q}").json() == {"id": other_q, "deleted": True}
        assert c.post("/queue/flush").json() == {"messages": 1, "delivering": False}
    events = admin_events(inst, "queue.delete")
    assert any(e.subject == other_q and e.detail.get("via") == "api" for e in events)


def test_queue_page_in_chinese(browser, base, inst, mail) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser, locale="zh-CN")
    try:
        sign_in(page, base, DOMAIN_ADMIN, DOMAIN_ADMIN_PW)
        page.goto(base + "/queue")
        assert page.locator("h1").inner_text() == "邮件队列"
        assert "发件人" in page.inner_text("#queue") and "等待中" in page.inner_text("#queue")
        shot(page, "queue-zh")
        page.goto(base + "/quarantine")
        assert page.locator("h1").inner_text() == "隔离区"
        page.goto(base + "/domains/example.test")
        assert "实时 DNS" in page.inner_text("#dns-records")
    finally:
        page.context.close()
