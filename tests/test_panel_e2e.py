"""The web panel end to end: one ``appliance up --service panel`` for the module.

A headless Chromium (Debian's, through Playwright) signs in with a password
and a TOTP code computed here with pyotp, then drives each page's main
action; plain httpx calls exercise the JSON API with tokens. Screenshots of
every page at 1280 and 390 px go to tests/artifacts/panel/ (and, with
PANEL_SCREENSHOTS_TO_DOCS=1, the main ones to docs/screenshots/).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from tests.conftest import ROOT, Server, create_test_instance

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "panel"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
DOC_PAGES = {"login", "enrol", "dashboard", "users", "user", "import-errors", "org", "domain", "logs", "dashboard-zh",
             "queue", "queue-item", "quarantine", "held", "domain-dns", "queue-zh"}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEPT_ADMIN = "carol@example.test"
DEPT_ADMIN_PW = "Carol-Passw0rd-123"
TOTP: dict[str, str] = {}  # email -> base32 secret, filled by the enrolment


# --------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def inst(tmp_path_factory):  # type: ignore[no-untyped-def]
    from dnsserver import FakeDNS

    fake_dns = FakeDNS()  # the domain pages look records up: never with the host's resolver
    inst = create_test_instance(
        tmp_path_factory.mktemp("panel"),
        overrides={"auth.max_failures_per_account": 4, "auth.max_failures_per_ip": 1000, "auth.failure_delay": 0.05,
                   "dns.resolvers": ["127.0.0.1"], "dns.port": fake_dns.port},
    )
    store = inst.store()
    try:
        d = store.directory
        sales = d.add_department("example.test", "Sales")
        east = d.add_department("example.test", "East", sales.id)
        eng = d.add_department("example.test", "Engineering")
        store.create_user(DEPT_ADMIN, password=DEPT_ADMIN_PW, name="Carol", department_id=sales.id)
        store.create_user("dave@example.test", password="Dave-Passw0rd-123", name="Dave", department_id=east.id, title="Sales rep")
        store.create_user("erin@example.test", password="Erin-Passw0rd-123", name="Erin", department_id=eng.id, title="Engineer")
        d.add_admin(DEPT_ADMIN, "department", sales.id)
        inst.extra = {"sales": sales.id, "east": east.id, "eng": eng.id}  # type: ignore[attr-defined]
    finally:
        store.close()
    yield inst
    fake_dns.close()


@pytest.fixture(scope="module")
def server(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst, services=["panel"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base(server, inst) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{inst.ports['panel']}"


# --------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser, locale: str = "en-GB"):  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale=locale)
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    return page


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Screenshots at 1280 and 390 px wide; the page must not scroll sideways at 390."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        path = ARTIFACTS / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        if width == 390:
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at 390px"
        if os.environ.get("PANEL_SCREENSHOTS_TO_DOCS") and name in DOC_PAGES:
            DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS_SHOTS / path.name)
    page.set_viewport_size({"width": 1280, "height": 900})


def code_for(email: str) -> str:
    """A TOTP code the server has not seen yet: steps now-1, now and now+1 are valid, each once."""
    while True:
        now = time.time()
        if now % 30 > 28:  # too close to the next step for now-1
            time.sleep(30 - now % 30 + 0.1)
            continue
        step = int(now // 30)
        last = int(TOTP.get(email + ":last", -1))
        for s in (step - 1, step, step + 1):
            if s > last:
                TOTP[email + ":last"] = str(s)
                return pyotp.TOTP(TOTP[email]).at(s * 30)
        time.sleep(30 - now % 30 + 0.1)


def sign_in(page, base: str, email: str, password: str, *, enrol: bool = False, check_shots: bool = False) -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/login")
    if check_shots:
        shot(page, "login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    if enrol:
        page.wait_for_url(re.compile(r"/login/enrol"))
        secret = page.inner_text("#secret").replace(" ", "")
        TOTP[email] = secret
        TOTP.pop(email + ":last", None)  # a new secret (another test module's instance had its own)
        if check_shots:
            shot(page, "enrol")
        page.fill("#code", code_for(email))
    else:
        page.wait_for_url(re.compile(r"/login/totp"))
        page.fill("#code", code_for(email))
    page.click("button[type=submit]")
    if enrol:  # the recovery codes, shown once
        assert page.locator("#recovery-codes li").count() == 10
        page.click("#continue")
    page.wait_for_url(re.compile(r"/(\?.*)?$"))


@pytest.fixture(scope="module")
def admin(browser, base, inst):  # type: ignore[no-untyped-def]
    """The super admin, signed in; the first sign-in enrols TOTP through the QR page."""
    page = new_page(browser)
    sign_in(page, base, "admin@example.test", inst.accounts["admin@example.test"], enrol=True, check_shots=True)
    yield page
    page.context.close()


def flash(page) -> str:  # type: ignore[no-untyped-def]
    return page.inner_text(".flash")


# --------------------------------------------------------------------------- sign-in
def test_signin_needs_totp_after_enrolment(admin, browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    assert admin.locator("h1").inner_text() == "Dashboard"
    shot(admin, "dashboard")
    page = new_page(browser)
    try:
        page.goto(base + "/users")
        assert "/login" in page.url  # signed out: sent to sign in, the page remembered
        page.fill("#email", "admin@example.test")
        page.fill("#password", inst.accounts["admin@example.test"])
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/login/totp"))
        shot(page, "totp")
        page.fill("#code", "000000" if pyotp.TOTP(TOTP["admin@example.test"]).now() != "000000" else "111111")
        page.click("button[type=submit]")
        assert "not right" in page.inner_text(".flash")
        page.fill("#code", code_for("admin@example.test"))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/users$"))
        cookies = {c["name"]: c for c in page.context.cookies()}
        s = cookies["panel_session"]
        assert s["httpOnly"] and s["sameSite"] == "Strict"
    finally:
        page.context.close()


def test_lockout_after_failed_signins(browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser)
    try:
        for _ in range(4):
            page.goto(base + "/login")
            page.fill("#email", "bob@example.test")
            page.fill("#password", "wrong password")
            page.click("button[type=submit]")
            assert "Wrong email or password" in flash(page)
        page.fill("#email", "bob@example.test")
        page.fill("#password", inst.accounts["bob@example.test"])  # even the right password now
        page.click("button[type=submit]")
        assert "locked" in flash(page)
        shot(page, "login-locked")
    finally:
        page.context.close()


def test_non_admin_gets_my_account_only(base, inst) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=base) as c:
        r = c.get("/login")
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', r.text).group(1)  # type: ignore[union-attr]
        r = c.post("/login", data={"csrf": token, "email": "alice@example.test", "password": inst.accounts["alice@example.test"]})
        assert r.status_code == 303 and r.headers["location"] == "/"
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/me"
        r = c.get("/me")
        assert r.status_code == 200 and "alice@example.test" in r.text and 'href="/users"' not in r.text
        for path in ("/users", "/domains", "/policies", "/logs", "/tokens", "/users/bob@example.test/export.zip"):
            assert c.get(path).status_code == 403, path


def test_csrf_rejected(admin, base) -> None:  # type: ignore[no-untyped-def]
    cookies = {c["name"]: c["value"] for c in admin.context.cookies()}
    with httpx.Client(base_url=base, cookies={"panel_session": cookies["panel_session"]}) as c:
        assert c.get("/domains").status_code == 200  # the session works from here
        r = c.post("/domains", data={"name": "evil.test"})  # no token
        assert r.status_code == 403 and "not sent from this panel" in r.text
        r = c.post("/domains", data={"name": "evil.test", "csrf": "0" * 40})
        assert r.status_code == 403
    admin.goto(base + "/domains")
    assert "evil.test" not in admin.content()


# --------------------------------------------------------------------------- pages
def test_domains_add_and_dns_records(admin, base) -> None:  # type: ignore[no-untyped-def]
    admin.goto(base + "/domains")
    admin.fill("input[name=name]", "branch.test")
    admin.click("form[action='/domains'] button[type=submit]")
    admin.wait_for_url(re.compile(r"/domains/branch.test$"))
    text = admin.inner_text("main")
    assert "Domain branch.test added" in text
    for needle in ("MX", "v=spf1", "s1._domainkey.branch.test.", "k=ed25519", "_dmarc.branch.test.", "v=DMARC1"):
        assert needle in text
    assert admin.get_attribute("#dns-records tr[data-purpose='MX']", "data-status") == "missing"  # nothing published yet
    admin.fill("input[name=selector]", "s2025")
    admin.click("form:has(input[name=selector]) button[type=submit]")
    assert "s2025._domainkey.branch.test." in admin.inner_text("main")
    shot(admin, "domain")
    admin.goto(base + "/domains")
    shot(admin, "domains")


def test_users_add_edit_disable_reset_delete(admin, base, inst) -> None:  # type: ignore[no-untyped-def]
    admin.goto(base + "/users/new")
    shot(admin, "user-new")
    admin.fill("#email", "frank@example.test")
    admin.fill("#password", "short")
    admin.click("main button[type=submit]")
    assert "at least 10 characters" in admin.inner_text(".flash")  # the password policy
    admin.fill("#password", "Frank-Passw0rd-1")
    admin.fill("#name", "Frank")
    admin.select_option("#department_id", label="Engineering")
    admin.fill("#quota_bytes", "2G")
    admin.click("main button[type=submit]")
    admin.wait_for_url(re.compile(r"/users/frank@example.test$"))
    assert "User frank@example.test created" in flash(admin)
    admin.fill("#title", "Architect")
    admin.click("form:has(input[value=save]) button[type=submit]")
    assert "Saved" in flash(admin)
    assert admin.input_value("#title") == "Architect"
    shot(admin, "user")
    admin.click("form:has(input[value=disable]) button")
    assert "Account disabled" in flash(admin)
    admin.fill("input[name=password]", "")
    admin.click("form:has(input[value=password]) button")
    assert re.search(r"New password: \S{16}", flash(admin))
    admin.click("text=Delete user...")
    assert "erases all of their mail for good" in admin.inner_text("main")
    shot(admin, "user-delete")
    admin.fill("#confirm", "frank@example.test")
    admin.click("button.danger")
    admin.wait_for_url(re.compile(r"/users$"))
    assert "all their mail were erased" in flash(admin)
    admin.fill("input[name=q]", "dave")
    admin.click("form[role=search] button")
    assert "dave@example.test" in admin.inner_text("table")
    assert "erin@example.test" not in admin.inner_text("table")
    admin.goto(base + "/users")
    shot(admin, "users")


def test_csv_import_all_or_nothing(admin, base, inst) -> None:  # type: ignore[no-untyped-def]
    bad = (
        "email,name,department,quota,password\n"
        "gina@example.test,Gina,Sales/East,1G,\n"
        "not-an-address,X,,,\n"
        "harry@example.test,Harry,Nowhere,,\n"
        "alice@example.test,Alice again,,,\n"
        "ivan@example.test,Ivan,,lots,\n"
        "judy@example.test,Judy,,,short\n"
    )
    admin.goto(base + "/users/import")
    admin.fill("#text", bad)
    admin.click("#check")
    text = admin.inner_text("main")
    assert "Nothing was imported" in text and "5 of 6 rows have errors" in text
    for needle in ("invalid address", "no department Nowhere", "alice@example.test already exists", "quota must be", "at least 10"):
        assert needle in text, needle
    assert admin.locator("#apply").count() == 0
    shot(admin, "import-errors")
    store = inst.store()
    try:
        assert store.directory.find_user("gina@example.test") is None  # the good row was not applied either
    finally:
        store.close()
    good = "email,name,department,title,quota\ngina@example.test,Gina,Sales/East,Rep,1G\nharry@example.test,Harry,Engineering,,\n"
    admin.fill("#text", good)
    admin.click("#check")
    assert "All 2 rows are valid" in admin.inner_text("main")
    admin.click("#apply")
    assert "2 users imported" in admin.inner_text("main")
    shot(admin, "import-done")
    r = admin.request.get(base + "/users/export.csv")
    assert r.ok and r.headers["content-type"].startswith("text/csv")
    csv_text = r.text().lstrip("\ufeff")
    assert "gina@example.test,Gina,Sales/East,Rep,,1073741824,active" in csv_text


def dep_row(page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f"tr:has(td > a:text-is('{name}'))")


def test_org_tree_and_address_book(admin, base, inst) -> None:  # type: ignore[no-untyped-def]
    admin.goto(base + "/org")
    add = admin.locator("form:has(input[value=add])")
    add.locator("input[name=name]").fill("Support")
    add.locator("select[name=parent_id]").select_option(label="Engineering")
    add.locator("button").click()
    assert "Department Support added" in flash(admin)
    row = dep_row(admin, "Support")
    row.locator("summary").click()
    row.locator("form:has(input[value=rename]) input[name=name]").fill("Customer support")
    row.locator("form:has(input[value=rename]) button").click()
    assert "renamed" in flash(admin)
    row = dep_row(admin, "Customer support")
    row.locator("summary").click()
    row.locator("form:has(input[value=move]) select").select_option(label="Sales")
    row.locator("form:has(input[value=move]) button").click()
    assert "moved" in flash(admin)
    shot(admin, "org")
    row = dep_row(admin, "Customer support")
    row.locator("summary").click()
    row.locator("form:has(input[value=delete]) button").click()
    assert "Department deleted" in flash(admin)
    admin.goto(base + "/addressbook?q=dave")
    assert "Sales/East" in admin.inner_text("table") and "Sales rep" in admin.inner_text("table")
    admin.goto(base + "/addressbook")
    shot(admin, "addressbook")


def test_groups_and_aliases(admin, base, inst) -> None:  # type: ignore[no-untyped-def]
    admin.goto(base + "/groups")
    admin.fill("input[name=email]", "team@example.test")
    admin.fill("input[name=name]", "The team")
    admin.select_option("select[name=post_policy]", "domain")
    admin.click("main form[method=post] button[type=submit]")
    admin.wait_for_url(re.compile(r"/groups/team@example.test$"))
    admin.fill("input[type=email][name=member]", "alice@example.test")
    admin.click("form:has(input[value=add_member]):has(input[value=address]) button")
    admin.fill("input[type=email][name=member]", "partner@outside.example")
    admin.click("form:has(input[value=add_member]):has(input[value=address]) button")
    admin.select_option("select[name=department_id]", label="Engineering")
    admin.click("form:has(input[value=add_member]):has(input[value=department]) button")
    table = admin.inner_text("table")
    assert "alice@example.test" in table and "partner@outside.example" in table and "Engineering" in table
    admin.select_option("form:has(input[value=policy]) select", "members")
    admin.click("form:has(input[value=policy]) button")
    assert "Saved" in flash(admin)
    shot(admin, "group")
    admin.goto(base + "/groups")
    shot(admin, "groups")
    admin.goto(base + "/aliases")
    admin.fill("input[name=source]", "sales@example.test")
    admin.fill("input[name=destination]", "dave@example.test")
    admin.click("form:has(input[value=add]) button")
    assert "Alias added" in flash(admin)
    assert "sales@example.test" in admin.inner_text("table")
    shot(admin, "aliases")
    store = inst.store()
    try:
        local, external = store.directory.expand("team@example.test")
        assert "alice@example.test" in local and "erin@example.test" in local and external == ["partner@outside.example"]
    finally:
        store.close()


def test_policies_admins_logs_tokens_pages(admin, base, inst) -> None:  # type: ignore[no-untyped-def]
    admin.goto(base + "/policies")
    admin.fill("#password_min_length", "12")
    admin.click("main button[type=submit]")
    assert "Policies saved" in flash(admin)
    assert admin.input_value("#password_min_length") == "12"
    shot(admin, "policies")
    admin.goto(base + "/admins")
    admin.fill("input[type=email][name=email]", "erin@example.test")
    admin.select_option("select[name=role]", "auditor")
    admin.click("form:has(input[value=add]) button")
    assert "Admin added" in flash(admin)
    shot(admin, "admins")
    admin.goto(base + "/logs?kind=admin")
    text = admin.inner_text("table")
    assert "user.add" in text and "policies.set" in text and "admin@example.test" in text
    admin.goto(base + "/logs?kind=signins&user=bob@example.test&result=fail")
    assert "bob@example.test" in admin.inner_text("table")
    shot(admin, "logs")
    r = admin.request.get(base + "/logs/export.csv?kind=signins&user=bob@example.test")
    rows = r.text().splitlines()
    assert rows[0].startswith("time,kind,action") and len(rows) >= 5
    admin.goto(base + "/tokens")
    admin.fill("input[name=name]", "browser-made")
    admin.click("form:has(input[value=create]) button")
    assert admin.inner_text("#new-token").startswith("apt_")
    shot(admin, "tokens")
    admin.goto(base + "/account")
    shot(admin, "account")


def test_department_admin_confined_to_subtree(browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser)
    try:
        sign_in(page, base, DEPT_ADMIN, DEPT_ADMIN_PW, enrol=True)
        page.goto(base + "/users")
        table = page.inner_text("table")
        assert "dave@example.test" in table and "erin@example.test" not in table  # Engineering is outside
        nav = page.inner_text("nav")
        assert "Admins" not in nav and "Policies" not in nav
        for path in ("/users/erin@example.test", "/admins", "/policies", "/domains/example.test", "/groups"):
            r = page.goto(base + path)
            assert r.status == 403, path
            assert "does not cover" in page.inner_text("main")
        shot(page, "forbidden")
        page.goto(base + "/users/dave@example.test")
        page.fill("#title", "Senior rep")
        page.click("form:has(input[value=save]) button[type=submit]")
        assert "Saved" in flash(page)
        # a form posted with a department outside the subtree is refused by the server
        page.goto(base + "/users/dave@example.test")
        page.evaluate(f"document.querySelector('#department_id').add(new Option('x', '{inst.extra['eng']}', true, true))")
        page.click("form:has(input[value=save]) button[type=submit]")
        assert page.locator("h1").inner_text() == "Not allowed"
        # the organisation page: cannot touch its own root, can add below it
        page.goto(base + "/org")
        add = page.locator("form:has(input[value=add])")
        assert add.locator("option[value='']").count() == 0  # no top-level departments
        add.locator("input[name=name]").fill("West")
        add.locator("button").click()
        assert "Department West added" in flash(page)
    finally:
        page.context.close()


def test_chinese_rendering_and_switch(browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser, locale="zh-CN")
    try:
        page.goto(base + "/login")
        assert page.locator("h1").inner_text() == "登录"
        assert page.get_attribute("html", "lang") == "zh-CN"
        page.fill("#email", "admin@example.test")
        page.fill("#password", inst.accounts["admin@example.test"])
        page.click("button[type=submit]")
        page.fill("#code", code_for("admin@example.test"))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/$"))
        assert page.locator("h1").inner_text() == "仪表盘"
        nav = page.inner_text("nav")
        assert "用户" in nav and "组织架构" in nav
        shot(page, "dashboard-zh")
        page.goto(base + "/users")
        assert "添加用户" in page.inner_text("main")
        shot(page, "users-zh")
        page.goto(base + "/org")
        shot(page, "org-zh")
        page.click("footer >> text=English")
        assert page.locator("h1").inner_text().startswith("Organisation")
        page.click("footer >> text=简体中文")
        assert page.locator("h1").inner_text().startswith("组织架构")
    finally:
        page.context.close()


def test_sign_out_everywhere(browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    one, two = new_page(browser), new_page(browser)
    try:
        for p in (one, two):
            sign_in(p, base, DEPT_ADMIN, DEPT_ADMIN_PW)
        one.goto(base + "/account")
        assert one.locator("tbody tr").count() >= 2
        one.click("#signout-all")
        one.wait_for_url(re.compile(r"/login"))
        two.goto(base + "/users")
        assert "/login" in two.url
    finally:
        one.context.close()
        two.context.close()


# --------------------------------------------------------------------------- the JSON API
def make_token(inst, email: str, role: str, **scope) -> str:  # type: ignore[no-untyped-def]
    """A token made through the storage API, as the Tokens page does for that admin."""
    from storage.crypto import hmac_key, load_master_key
    from storage.webadmin import WebAdmin

    store = inst.store()
    try:
        web = WebAdmin(store, hmac_key(load_master_key(inst.config().storage.master_key_file), "web-panel-digests"))
        _tok, secret = web.create_token(store.directory.get_user(email).id, f"{role}-{time.time()}", role=role, **scope)
        return secret
    finally:
        store.close()


@pytest.fixture(scope="module")
def tokens(admin, base, inst):  # type: ignore[no-untyped-def]
    """A super token made on the Tokens page and a department admin's token."""
    admin.goto(base + "/tokens")
    admin.fill("input[name=name]", "super-script")
    admin.click("form:has(input[value=create]) button")
    return {"super": admin.inner_text("#new-token"),
            "dept": make_token(inst, DEPT_ADMIN, "department", scope_department_id=inst.extra["sales"])}


def api(base: str, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=20)


def test_api_needs_a_token_and_publishes_openapi(base, tokens) -> None:  # type: ignore[no-untyped-def]
    with api(base, None) as c:
        assert c.get("/users").status_code == 401
        doc = c.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.") and "/api/v1/users" in doc["paths"] and "post" in doc["paths"]["/api/v1/users"]
    with api(base, "apt_not-a-real-token") as c:
        assert c.get("/me").status_code == 401


def test_api_users_crud_and_paging(base, tokens) -> None:  # type: ignore[no-untyped-def]
    with api(base, tokens["super"]) as c:
        assert c.get("/me").json()["grants"] == ["super"]
        r = c.post("/users", json={"email": "kim@example.test", "name": "Kim", "password": "Kim-Passw0rd-1234", "quota_bytes": "1G"})
        assert r.status_code == 201, r.text
        assert r.json()["quota_bytes"] == 1024**3
        assert c.post("/users", json={"email": "kim@example.test", "password": "Kim-Passw0rd-1234"}).status_code == 409
        assert c.post("/users", json={"email": "lee@example.test", "password": "weak"}).status_code == 400
        r = c.patch("/users/kim@example.test", json={"title": "CFO", "state": "disabled"})
        assert r.json()["title"] == "CFO" and r.json()["state"] == "disabled"
        page = c.get("/users", params={"q": "kim", "per_page": 1}).json()
        assert page["total"] == 1 and page["users"][0]["email"] == "kim@example.test"
        assert c.post("/users/kim@example.test/password", json={}).json()["password"]
        assert c.delete("/users/kim@example.test").status_code == 200
        assert c.get("/users/kim@example.test").status_code == 404
        r = c.post("/users/import", json={"csv": "email\nbad-row\n"})
        assert r.status_code == 400 and r.json()["rows"][0]["errors"]
        logs = c.get("/logs", params={"kind": "admin", "user": "admin@example.test", "limit": 5}).json()
        assert len(logs["events"]) == 5 and logs["next"]
        assert any(e["detail"].get("via") == "api" for e in logs["events"])
        older = c.get("/logs", params={"kind": "admin", "limit": 5, "before": logs["next"]}).json()["events"]
        assert older and older[0]["ts"] <= logs["events"][-1]["ts"]


def test_api_department_token_refused_outside_subtree(base, tokens, inst) -> None:  # type: ignore[no-untyped-def]
    with api(base, tokens["dept"]) as c:
        users = [u["email"] for u in c.get("/users").json()["users"]]
        assert "dave@example.test" in users and "erin@example.test" not in users
        assert c.get("/users/erin@example.test").status_code == 403
        assert c.patch("/users/erin@example.test", json={"title": "x"}).status_code == 403
        assert c.delete("/users/erin@example.test").status_code == 403
        assert c.patch("/users/dave@example.test", json={"department_id": inst.extra["eng"]}).status_code == 403
        r = c.post("/users", json={"email": "mia@example.test", "password": "Mia-Passw0rd-12345", "department_id": inst.extra["eng"]})
        assert r.status_code == 403
        assert c.post("/domains", json={"name": "x.test"}).status_code == 403
        assert c.get("/admins").status_code == 403
        assert c.put("/policies", json={"password_min_length": 6}).status_code == 403
        assert c.delete(f"/departments/{inst.extra['sales']}").status_code == 403  # its own root
        r = c.post("/users", json={"email": "mia@example.test", "password": "Mia-Passw0rd-12345", "department_id": inst.extra["east"]})
        assert r.status_code == 201, r.text
        assert c.get("/users/erin@example.test").json() == {"error": "this token's role does not cover this operation"}


def test_api_auditor_reads_but_changes_nothing(base, tokens, inst) -> None:  # type: ignore[no-untyped-def]
    with api(base, tokens["super"]) as c:
        assert c.post("/admins", json={"email": "dave@example.test", "role": "auditor"}).status_code == 201
    with api(base, make_token(inst, "dave@example.test", "auditor")) as c:
        assert c.get("/users").json()["total"] >= 5
        assert c.get("/logs", params={"kind": "signins"}).status_code == 200
        assert c.get("/policies").status_code == 200
        assert c.post("/users", json={"email": "nat@example.test"}).status_code == 403
        assert c.patch("/users/alice@example.test", json={"title": "x"}).status_code == 403
        assert c.put("/policies", json={"password_min_length": 6}).status_code == 403
        assert c.post("/users/import", json={"csv": "email\nnat@example.test\n"}).status_code == 403


def test_api_revoked_token_stops_working(base, inst) -> None:  # type: ignore[no-untyped-def]
    secret = make_token(inst, "admin@example.test", "super")
    with api(base, secret) as c:
        assert c.get("/me").status_code == 200
        tok = next(t for t in c.get("/me").json()["grants"])
        assert tok == "super"
    store = inst.store()
    try:
        from storage.crypto import hmac_key, load_master_key
        from storage.webadmin import WebAdmin

        web = WebAdmin(store, hmac_key(load_master_key(inst.config().storage.master_key_file), "web-panel-digests"))
        found = web.find_token(secret)
        assert found is not None
        web.revoke_token(found.id)
    finally:
        store.close()
    with api(base, secret) as c:
        assert c.get("/me").status_code == 401
