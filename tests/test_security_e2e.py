"""Account security and self-service end to end: one ``appliance up`` (every service) for the module.

Real clients on real sockets: smtplib AUTH on the submission port, imaplib
LOGIN, poplib USER/PASS (each after STARTTLS/STLS), the panel in Debian's
Chromium through Playwright with TOTP codes from pyotp. Logins from "new
places" bind the client socket to other loopback addresses (127.0.x.y, a
different /24 than 127.0.0.1).
"""

from __future__ import annotations

import email
import imaplib
import io
import json
import poplib
import re
import smtplib
import socket
import ssl
import time
import zipfile
from email import policy as email_policy

import pyotp
import pytest

from tests.conftest import Server, create_test_instance
from tests.test_panel_e2e import CHROMIUM, new_page

LOCK_AT = 3
USERS = {
    "carol@example.test": "Carol-Passw0rd-11",
    "dan@example.test": "Dan-Passw0rd-22",
    "erin@example.test": "Erin-Passw0rd-33",
    "lock-smtp@example.test": "Lock-Passw0rd-44",
    "lock-imap@example.test": "Lock-Passw0rd-45",
    "lock-pop3@example.test": "Lock-Passw0rd-46",
    "lock-panel@example.test": "Lock-Passw0rd-47",
    "frank@example.test": "Frank-Passw0rd-55",
}
SECRETS: dict[str, str] = {}
LAST_STEP: dict[str, int] = {}


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def inst(tmp_path_factory):  # type: ignore[no-untyped-def]
    inst = create_test_instance(
        tmp_path_factory.mktemp("security"),
        overrides={"auth.max_failures_per_account": LOCK_AT, "auth.max_failures_per_ip": 1000, "auth.failure_delay": 0.05},
    )
    store = inst.store()
    try:
        for addr, pw in USERS.items():
            store.create_user(addr, password=pw, name=addr.split("@")[0].title())
        store.set_setting("policies", json.dumps({"app_passwords_required_with_totp": True, "admin_totp_required": True,
                                                  "user_totp_required": False, "forwarding_allowed": True}))
        erin = store.directory.get_user("erin@example.test")
        store.mail.create_mailbox(erin.id, "Projects/Q1")
        for i, (box, flags) in enumerate([("INBOX", ("\\Seen",)), ("INBOX", ("\\Flagged", "\\Answered")),
                                          ("Projects/Q1", ("\\Seen", "Work")), ("Sent", ("\\Seen",))]):
            raw = (f"From: Someone <s{i}@remote.example>\r\nTo: erin@example.test\r\nSubject: m{i} 项目\r\n"
                   f"Message-ID: <m{i}@remote.example>\r\n\r\nbody {i}\r\n").encode() + b"z" * (i * 70_000)
            store.append(erin, box, raw, flags=flags, internal_date=1_760_000_000 + i)
    finally:
        store.close()
    return inst


@pytest.fixture(scope="module")
def server(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst)
    yield srv
    srv.stop()


def need(server, what: str) -> None:  # type: ignore[no-untyped-def]
    """Skip only when the service is not listening in this tree (its package is not built yet)."""
    if f"listening: {what}" not in server.log():
        pytest.skip(f"no '{what}' listener in the server log")


@pytest.fixture(scope="module")
def base(server, inst) -> str:  # type: ignore[no-untyped-def]
    need(server, "panel http")
    return f"http://127.0.0.1:{inst.ports['panel']}"


# --------------------------------------------------------------------------- clients
class IMAP(imaplib.IMAP4):
    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self._source = source
        super().__init__("127.0.0.1", port, timeout=20)
        self.starttls(ssl_context=tls())

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


class POP3(poplib.POP3):
    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self._source = source
        super().__init__("127.0.0.1", port, timeout=20)
        self.stls(context=tls())

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


def imap_login(inst, user: str, secret: str, source: str = "127.0.0.1") -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    c = IMAP(inst.ports["imap"], source)
    try:
        c.login(user, secret)
        return True, "OK"
    except imaplib.IMAP4.error as exc:
        return False, str(exc)
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def smtp_login(inst, user: str, secret: str, source: str = "127.0.0.1") -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    with smtplib.SMTP("127.0.0.1", inst.ports["submission"], timeout=20, source_address=(source, 0)) as s:
        s.starttls(context=tls())
        try:
            s.login(user, secret)
            return True, "OK"
        except smtplib.SMTPAuthenticationError as exc:
            return False, f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
        except smtplib.SMTPResponseException as exc:
            return False, f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"


def pop3_login(inst, user: str, secret: str, source: str = "127.0.0.1") -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    c = POP3(inst.ports["pop3"], source)
    try:
        c.user(user)
        c.pass_(secret)
        c.quit()
        return True, "OK"
    except poplib.error_proto as exc:
        return False, str(exc)
    finally:
        c.close()


LOGIN = {"smtp": smtp_login, "imap": imap_login, "pop3": pop3_login}
LISTENER = {"smtp": "mta submission", "imap": "imapd imap", "pop3": "imapd pop3"}


def code_for(email_addr: str) -> str:
    """A TOTP code not used yet for this account (each time step works once)."""
    totp = pyotp.TOTP(SECRETS[email_addr])
    while True:
        now = time.time()
        step = int(now // 30)
        if now % 30 > 28:
            time.sleep(30 - now % 30 + 0.1)
            continue
        for s in (step - 1, step, step + 1):
            if s > LAST_STEP.get(email_addr, -1):
                LAST_STEP[email_addr] = s
                return totp.at(s * 30)
        time.sleep(30 - now % 30 + 0.1)


def panel_sign_in(page, base: str, addr: str, password: str, code: str | None = None) -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/login")
    page.fill("#email", addr)
    page.fill("#password", password)
    page.click("button[type=submit]")
    if code is not None:
        page.wait_for_url(re.compile(r"/login/totp"))
        page.fill("#code", code)
        page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/me$"))


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from tests.test_panel_e2e import CHROMIUM_ARGS

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def admin(browser, base, inst):  # type: ignore[no-untyped-def]
    """The super admin in the panel (enrols TOTP on the first sign-in, as the policy requires)."""
    page = new_page(browser)
    page.goto(base + "/login")
    page.fill("#email", "admin@example.test")
    page.fill("#password", inst.accounts["admin@example.test"])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/login/enrol"))
    SECRETS["admin@example.test"] = page.inner_text("#secret").replace(" ", "")
    page.fill("#code", code_for("admin@example.test"))
    page.click("button[type=submit]")
    assert page.locator("#recovery-codes li").count() == 10
    page.click("#continue")
    page.wait_for_url(re.compile(r"/$"))
    yield page
    page.context.close()


def flash(page) -> str:  # type: ignore[no-untyped-def]
    return page.inner_text(".flash")


# --------------------------------------------------------------------------- lockout on every path
@pytest.mark.parametrize("proto", ["smtp", "imap", "pop3"])
def test_lockout_after_failures_and_unlock_on_each_protocol(proto, server, inst, admin, base) -> None:  # type: ignore[no-untyped-def]
    need(server, LISTENER[proto])
    user = f"lock-{proto}@example.test"
    login = LOGIN[proto]
    assert login(inst, user, USERS[user])[0]
    for _i in range(LOCK_AT):
        ok, why = login(inst, user, "Wrong-password-1")
        assert not ok
    ok, why = login(inst, user, USERS[user])  # the right password, but locked: and it says so
    assert not ok and "too many failed logins for this account" in why.lower(), why
    if proto == "imap":
        assert "UNAVAILABLE" in why
    if proto == "smtp":
        assert why.startswith("454")
    if proto == "pop3":  # unlock from the panel's user page
        admin.goto(f"{base}/users/{user}")
        assert "locked" in admin.inner_text("#lock-state")
        admin.click("#unlock")
        assert "lockout cleared" in flash(admin)
    else:  # unlock from the command line
        r = inst.cli("user", "unlock", user)
        assert r.returncode == 0, r.stderr
    assert login(inst, user, USERS[user])[0]


def test_lockout_in_the_panel_and_unlock(browser, base, inst, admin) -> None:  # type: ignore[no-untyped-def]
    user = "lock-panel@example.test"
    page = new_page(browser)
    try:
        for _i in range(LOCK_AT):
            page.goto(base + "/login")
            page.fill("#email", user)
            page.fill("#password", "Wrong-password-1")
            page.click("button[type=submit]")
            assert "Wrong email or password" in flash(page)
        page.fill("#email", user)
        page.fill("#password", USERS[user])
        page.click("button[type=submit]")
        assert "This account is locked" in flash(page)
        admin.goto(f"{base}/users/{user}")
        admin.click("#unlock")
        panel_sign_in(page, base, user, USERS[user])
        assert page.inner_text("#me-email") == user
    finally:
        page.context.close()


# --------------------------------------------------------------------------- new-place alerts
def test_login_from_a_new_network_puts_a_notice_in_the_inbox(server, inst) -> None:  # type: ignore[no-untyped-def]
    need(server, "imapd imap")
    user, pw = "dan@example.test", USERS["dan@example.test"]
    assert imap_login(inst, user, pw, "127.0.0.1")[0]  # the first sign-in: the baseline, no notice
    assert imap_login(inst, user, pw, "127.0.0.5")[0]  # same /24: nothing new
    c = IMAP(inst.ports["imap"], "127.0.0.1")
    c.login(user, pw)
    assert c.select("INBOX")[1] == [b"0"]
    c.logout()
    assert imap_login(inst, user, pw, "127.0.9.9")[0]  # a new network
    assert imap_login(inst, user, pw, "127.0.9.10")[0]  # same network again: no second notice
    c = IMAP(inst.ports["imap"], "127.0.0.1")
    c.login(user, pw)
    assert c.select("INBOX")[1] == [b"1"]
    _typ, data = c.fetch(b"1", "(BODY.PEEK[])")
    c.logout()
    msg = email.message_from_bytes(data[0][1], policy=email_policy.default)
    assert msg["From"].addresses[0].addr_spec == "postmaster@example.test"
    assert "New sign-in" in msg["Subject"] and "新的登录" in msg["Subject"]
    body = msg.get_content()
    assert "127.0.9.9" in body and "IMAP" in body and "This wasn't me" in body and "不是我" in body
    store = inst.store()
    try:
        evs = [e for e in store.events.query(kind="security", user=user) if e.action == "login.new_place"]
    finally:
        store.close()
    assert len(evs) == 1 and evs[0].ip == "127.0.9.9" and evs[0].detail["network"] == "127.0.9.0/24"


def test_smtp_login_from_a_new_network_also_alerts(server, inst) -> None:  # type: ignore[no-untyped-def]
    need(server, "mta submission")
    user, pw = "frank@example.test", USERS["frank@example.test"]
    assert smtp_login(inst, user, pw, "127.0.0.1")[0]
    assert smtp_login(inst, user, pw, "127.0.11.4")[0]
    store = inst.store()
    try:
        u = store.directory.get_user(user)
        msgs = store.mail.messages(store.mail.get_mailbox(u.id, "INBOX").id)
        assert len(msgs) == 1 and b"127.0.11.4" in store.mail.read(u, msgs[0])
    finally:
        store.close()


# --------------------------------------------------------------------------- self-service in the browser
@pytest.fixture(scope="module")
def carol(browser, base):  # type: ignore[no-untyped-def]
    page = new_page(browser)
    panel_sign_in(page, base, "carol@example.test", USERS["carol@example.test"])
    yield page
    page.context.close()


def test_user_enrols_totp_and_signs_in_with_it_and_with_a_recovery_code(carol, browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    addr, pw = "carol@example.test", USERS["carol@example.test"]
    carol.goto(base + "/me/security")
    assert carol.inner_text("#totp-state") == "off"
    carol.click("#totp-start")
    SECRETS[addr] = carol.inner_text("#secret").replace(" ", "")
    qr = carol.request.get(base + "/me/security/qr.svg")
    assert qr.ok and b"<svg" in qr.body()
    carol.fill("#code", code_for(addr))
    carol.click("#totp-confirm")
    codes = [c.strip() for c in carol.locator("#recovery-codes li").all_inner_texts()]
    assert len(codes) == 10
    carol.click("#continue")
    assert carol.inner_text("#totp-state") == "on"
    store = inst.store()
    try:
        settings = store.directory.get_user(addr).settings
    finally:
        store.close()
    assert settings["require_app_password"] is True  # the policy: app passwords for mail clients once 2FA is on
    assert not any(c in json.dumps(settings) for c in codes)
    page = new_page(browser)
    try:
        panel_sign_in(page, base, addr, pw, code_for(addr))
        page.context.clear_cookies()
        panel_sign_in(page, base, addr, pw, codes[0])  # a recovery code instead of the app
        page.context.clear_cookies()
        page.goto(base + "/login")
        page.fill("#email", addr)
        page.fill("#password", pw)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/login/totp"))
        page.fill("#code", codes[0])  # used once already
        page.click("button[type=submit]")
        assert "not right" in flash(page)
    finally:
        page.context.close()


def test_app_password_from_the_panel_works_in_imap_and_smtp_until_revoked(carol, server, base, inst) -> None:  # type: ignore[no-untyped-def]
    need(server, "imapd imap")
    need(server, "mta submission")
    addr, pw = "carol@example.test", USERS["carol@example.test"]
    carol.goto(base + "/me/app-passwords")
    carol.fill("#app-name", "Thunderbird at home")
    carol.click("#app-create")
    code = carol.inner_text("#new-app-password")
    assert re.fullmatch(r"([a-z2-9]{4}-){6}[a-z2-9]{4}", code)
    assert imap_login(inst, addr, code)[0]
    assert smtp_login(inst, addr, code)[0]
    assert not imap_login(inst, addr, pw)[0]  # 2FA on + policy: the account password no longer works for IMAP
    carol.goto(base + "/me/app-passwords")
    row = carol.locator("tr", has_text="Thunderbird at home").inner_text()
    assert "127.0.0.1" in row and "never" not in row
    carol.locator("tr", has_text="Thunderbird at home").locator("button").click()
    assert "revoked" in flash(carol)
    assert not imap_login(inst, addr, code)[0]
    assert not smtp_login(inst, addr, code)[0]
    r = inst.cli("user", "unlock", addr)  # the failures above counted; leave the account usable
    assert r.returncode == 0


def test_profile_mail_settings_and_password_change(carol, browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    addr = "carol@example.test"
    carol.goto(base + "/me")
    carol.fill("#f-name", "Carol Chen")
    assert carol.locator("#f-title").is_disabled()  # not editable by the default policy
    carol.click("form[action='/me'] button[type=submit]")
    assert "Saved" in flash(carol)
    carol.goto(base + "/me/mail")
    carol.check("#vacation-on")
    carol.fill("#v-body", "Away until Monday. 周一回来。")
    carol.click("form:has(#vacation-on) button[type=submit]")
    assert "Saved" in flash(carol)
    carol.fill("#allow", "Boss@Partner.Example\n@friends.example")
    carol.fill("#block", "spam.example")
    carol.click("form:has(#allow) button[type=submit]")
    assert "Saved" in flash(carol)
    carol.fill("#forward_to", "carol@home.example")
    carol.click("form:has(#forward_to) button[type=submit]")
    store = inst.store()
    try:
        u = store.directory.get_user(addr)
    finally:
        store.close()
    assert u.name == "Carol Chen"
    assert u.settings["spam_allow"] == ["boss@partner.example", "friends.example"] and u.settings["spam_block"] == ["spam.example"]
    assert u.settings["vacation"]["enabled"] and u.settings["forward_to"] == "carol@home.example"
    from antispam.policy import matches

    assert matches(u.settings["spam_allow"], "x@mail.friends.example") == "friends.example"

    other = new_page(browser)
    try:
        panel_sign_in(other, base, addr, USERS[addr], code_for(addr))
        carol.goto(base + "/me/password")
        carol.fill("#current", USERS[addr])
        carol.fill("#new", "onlylowercaseletters")
        carol.fill("#confirm", "onlylowercaseletters")
        carol.click("form[action='/me/password'] button[type=submit]")
        assert "at least" in carol.inner_text(".flash.error")
        new_pw = "Carol-New-Passw0rd-99"
        carol.fill("#current", USERS[addr])
        carol.fill("#new", new_pw)
        carol.fill("#confirm", new_pw)
        carol.click("form[action='/me/password'] button[type=submit]")
        assert "Password changed" in flash(carol)
        USERS[addr] = new_pw
        other.goto(base + "/me")
        assert "/login" in other.url  # the other session ended
        carol.goto(base + "/me")
        assert carol.inner_text("#me-email") == addr  # this one goes on
    finally:
        other.context.close()


def test_this_was_not_me(carol, base, inst) -> None:  # type: ignore[no-untyped-def]
    addr = "carol@example.test"
    carol.goto(base + "/me/app-passwords")
    carol.fill("#app-name", "old phone")
    carol.click("#app-create")
    carol.goto(base + "/me/activity")
    assert carol.locator("tbody tr").count() >= 3
    carol.locator("button.not-me").first.click()
    carol.wait_for_url(re.compile(r"/me/password"))
    assert "revoked" in flash(carol)
    store = inst.store()
    try:
        assert store.list_app_passwords(addr) == []
        ev = [e for e in store.events.query(kind="security", user=addr) if e.action == "login.not_me"]
    finally:
        store.close()
    assert ev and ev[0].result == "reported" and ev[0].detail["app_passwords_revoked"] == 1
    carol.goto(base + "/me")
    assert carol.inner_text("#me-email") == addr  # the reporting browser keeps a fresh session


# --------------------------------------------------------------------------- my data
def _check_export(data: bytes, inst, addr: str) -> None:  # type: ignore[no-untyped-def]
    zf = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(zf.read("manifest.json"))
    store = inst.store()
    try:
        user = store.directory.get_user(addr)
        folders = {f["name"]: f for f in manifest["folders"]}
        assert set(folders) == {mb.name for mb in store.mail.list_mailboxes(user.id)}
        n = 0
        for mb in store.mail.list_mailboxes(user.id):
            entries = {e["uid"]: e for e in folders[mb.name]["messages"]}
            for msg in store.mail.messages(mb.id):
                e = entries[msg.uid]
                assert zf.read(folders[mb.name]["dir"] + "/" + e["file"]) == store.mail.read(user, msg)
                assert set(e["flags"]) == set(msg.flags)
                n += 1
        assert n == 4
    finally:
        store.close()
    assert any(n.startswith("Maildir/.Projects.Q1/cur/") and n.endswith(":2,Sa") for n in zf.namelist())
    assert any(n.startswith("Maildir/cur/") and n.endswith(":2,FR") for n in zf.namelist())
    assert "time,protocol,ip,client,result" in zf.read("signins.csv").decode("utf-8-sig")


def test_my_data_download_matches_the_mailbox(browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser)
    try:
        panel_sign_in(page, base, "erin@example.test", USERS["erin@example.test"])
        page.goto(base + "/me/data")
        with page.expect_download() as dl:
            page.click("#download")
        path = dl.value.path()
        assert dl.value.suggested_filename.endswith(".zip")
        data = open(path, "rb").read()
    finally:
        page.context.close()
    _check_export(data, inst, "erin@example.test")


def test_admin_download_and_cli_export(admin, base, inst, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = admin.request.get(base + "/users/erin@example.test/export.zip")
    assert r.ok and r.headers["content-type"] == "application/zip"
    _check_export(r.body(), inst, "erin@example.test")
    out = tmp_path / "erin.zip"
    r2 = inst.cli("user", "export", "erin@example.test", "--output", str(out))
    assert r2.returncode == 0, r2.stderr
    _check_export(out.read_bytes(), inst, "erin@example.test")


def test_log_prune_cli(inst) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import os
    from pathlib import Path

    # hold the running server's daily job off (it skips while another process holds its lock),
    # so the ancient event is still there for the CLI to prune
    lock = os.open(Path(inst.config().instance.data_dir) / "maintenance.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = inst.store()
        try:
            store.events.record("admin", action="ancient", actor="x", ts=time.time() - 400 * 86400)
        finally:
            store.close()
        r = inst.cli("log", "prune", "--json")
    finally:
        os.close(lock)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["events"] >= 1
    assert inst.cli("log", "prune", "--older-than", "1h").returncode == 64


def test_my_account_pages_render_in_both_languages(browser, base, inst) -> None:  # type: ignore[no-untyped-def]
    from tests.test_panel_e2e import shot

    for locale, lang in (("en-GB", "en"), ("zh-CN", "zh")):
        page = new_page(browser, locale=locale)
        try:
            panel_sign_in(page, base, "erin@example.test", USERS["erin@example.test"])
            for path in ("/me", "/me/password", "/me/security", "/me/app-passwords", "/me/activity", "/me/mail", "/me/data"):
                page.goto(base + path)
                assert page.locator("h1").count() == 1
                shot(page, f"me{path.replace('/me', '').replace('/', '-') or '-profile'}-{lang}")
            if lang == "zh":
                page.goto(base + "/me/security")
                assert page.locator("h1").inner_text() == "两步验证"
                assert "设置两步验证" in page.inner_text("#totp-start")
            page.click("header button[type=submit]")  # sign out
            page.wait_for_url(re.compile(r"/login"))
            page.goto(base + "/me")
            assert "/login" in page.url
        finally:
            page.context.close()
