"""Account security at the storage level, against a real store: lockout, app passwords,
new-place alerts, recovery codes, "this wasn't me", vacation replies, export, retention."""

from __future__ import annotations

import email
import io
import json
import threading
import time
import zipfile
from email import policy as email_policy

import pytest
from storefix import message, new_store

from storage import export, retention, security, vacation
from storage.auth import AuthSettings
from storage.errors import InvalidInputError

PW = "Alice-Passw0rd-1"


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = new_store(tmp_path / "inst")
    s.auth.settings = AuthSettings(failure_delay=0.0, max_failures_per_ip=1000, max_failures_per_account=3, lockout_time=900)
    s.create_user("alice@example.test", password=PW, name="Alice")
    yield s
    s.close()


def inbox(store, email_addr="alice@example.test"):  # type: ignore[no-untyped-def]
    user = store.directory.get_user(email_addr)
    mb = store.mail.get_mailbox(user.id, "INBOX")
    return user, mb, store.mail.messages(mb.id)


# ------------------------------------------------------------------ lockout
def test_locked_account_says_so_even_to_the_right_password_until_unlocked(store):  # type: ignore[no-untyped-def]
    for _i in range(3):
        assert store.auth.authenticate("alice@example.test", "wrong", protocol="imap", ip="127.0.0.1").reason == "bad_credentials"
    assert store.auth.failures("alice@example.test") == 3
    out = store.auth.authenticate("alice@example.test", PW, protocol="smtp", ip="127.0.0.2")
    assert (out.ok, out.reason, out.temporary) == (False, "locked", True)
    store.auth.unlock("alice@example.test", actor="admin@example.test")
    assert store.auth.failures("alice@example.test") == 0
    assert store.auth.authenticate("alice@example.test", PW, protocol="pop3", ip="127.0.0.1").ok


# ------------------------------------------------------------ app passwords
def test_app_password_works_until_revoked_and_is_not_cached(store):  # type: ignore[no-untyped-def]
    code = store.add_app_password("alice@example.test", "phone")
    out = store.auth.authenticate("alice@example.test", code, protocol="imap", ip="127.0.0.1")
    assert out.ok and out.via_app_password == "phone"
    [ap] = store.list_app_passwords("alice@example.test")
    assert ap.last_ip == "127.0.0.1" and ap.last_used
    store.revoke_app_password("alice@example.test", "phone")
    assert store.auth.authenticate("alice@example.test", code, protocol="imap", ip="127.0.0.1").reason == "bad_credentials"


def test_require_app_password_refuses_the_account_password_for_mail_protocols(store):  # type: ignore[no-untyped-def]
    store.directory.set_user_setting("alice@example.test", "require_app_password", True)
    code = store.add_app_password("alice@example.test", "laptop")
    for proto in ("imap", "pop3", "smtp"):
        assert not store.auth.authenticate("alice@example.test", PW, protocol=proto, ip="127.0.0.1").ok
        assert store.auth.authenticate("alice@example.test", code, protocol=proto, ip="127.0.0.1").ok
    assert store.auth.authenticate("alice@example.test", PW, protocol="panel", ip="127.0.0.1").ok


def test_password_change_forgets_the_login_cache(store):  # type: ignore[no-untyped-def]
    assert store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.0.1").ok  # cached now
    store.set_password("alice@example.test", "Another-Passw0rd-2")
    assert not store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.0.1").ok
    assert store.auth.authenticate("alice@example.test", "Another-Passw0rd-2", protocol="imap", ip="127.0.0.1").ok


# --------------------------------------------------------- new-place alerts
def test_places() -> None:
    assert security.network_of("192.0.2.77") == "192.0.2.0/24"
    assert security.network_of("::ffff:192.0.2.9") == "192.0.2.0/24"
    assert security.network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert security.network_of("fe80::1%eth0") == "fe80::/64"
    assert security.network_of("not an ip") is None and security.network_of(None) is None
    chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
    assert security.client_family(chrome) == "Chrome on Linux"
    assert security.client_family(chrome.replace("120.0", "121.0")) == "Chrome on Linux"
    edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36 Edg/120"
    assert security.client_family(edge) == "Edge on Windows"
    assert security.client_family("Thunderbird 115.3.1") == security.client_family("Thunderbird 128.0") == "thunderbird"
    assert security.client_family("K-9 Mail v6.7") == "k-9 mail"
    assert security.client_family("") is None and security.client_family(None) is None


def test_new_network_or_client_puts_a_bilingual_notice_in_the_inbox(store):  # type: ignore[no-untyped-def]
    login = store.auth.authenticate
    assert login("alice@example.test", PW, protocol="imap", ip="127.0.0.1", client="Thunderbird 115.3").ok  # first: the baseline
    assert login("alice@example.test", PW, protocol="smtp", ip="127.0.0.9").ok  # same /24, no client: nothing new
    assert login("alice@example.test", PW, protocol="imap", ip="127.0.0.1", client="Thunderbird 128.1").ok  # same family
    assert inbox(store)[2] == []
    assert login("alice@example.test", PW, protocol="imap", ip="127.0.7.3").ok  # a new network
    user, mb, msgs = inbox(store)
    assert len(msgs) == 1
    msg = email.message_from_bytes(store.mail.read(user, msgs[0]), policy=email_policy.default)
    assert msg["From"].addresses[0].addr_spec == "postmaster@example.test"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "127.0.7.3" in body and "IMAP" in body and "新的登录" in msg["Subject"] and "不是我" in body
    [ev] = store.events.query(kind="security", user="alice@example.test")
    assert ev.action == "login.new_place" and ev.detail["network"] == "127.0.7.0/24" and ev.detail["new_network"]
    assert login("alice@example.test", PW, protocol="pop3", ip="127.0.7.200").ok  # that network is known now
    assert login("alice@example.test", PW, protocol="imap", ip="127.0.0.1", client="K-9 Mail 6.7").ok  # a new client
    assert len(inbox(store)[2]) == 2
    assert not login("alice@example.test", "wrong", protocol="imap", ip="10.9.9.9").ok  # failures never alert
    assert len(inbox(store)[2]) == 2


def test_new_place_alerts_follow_the_policy(store):  # type: ignore[no-untyped-def]
    store.set_setting("policies", json.dumps({"new_login_alerts": False}))
    assert store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.0.1").ok
    assert store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.8.1").ok
    assert inbox(store)[2] == []


def test_the_baseline_comes_from_the_login_events(store):  # type: ignore[no-untyped-def]
    store.events.login("alice@example.test", protocol="imap", ip="127.0.3.3", client=None, result="ok")
    store.events.login("alice@example.test", protocol="imap", ip="127.0.4.4", client=None, result="fail")
    assert store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.3.9").ok
    assert inbox(store)[2] == []
    assert store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.4.4").ok  # only failed from there
    assert len(inbox(store)[2]) == 1


# ----------------------------------------------------------- recovery codes
def test_recovery_codes_are_digests_and_work_once(store):  # type: ignore[no-untyped-def]
    codes = security.new_recovery_codes(store, "alice@example.test")
    assert len(codes) == 10 and len(set(codes)) == 10
    user = store.directory.get_user("alice@example.test")
    stored = json.dumps(user.settings)
    assert not any(c in stored or c.replace("-", "") in stored for c in codes)
    assert security.recovery_codes_left(user) == 10
    assert security.use_recovery_code(store, "alice@example.test", codes[3].upper())
    assert not security.use_recovery_code(store, "alice@example.test", codes[3])
    assert not security.use_recovery_code(store, "alice@example.test", "aaaaa-bbbbb")
    assert security.recovery_codes_left(store.directory.get_user("alice@example.test")) == 9
    # racing uses of one code: exactly one wins
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(security.use_recovery_code(store, "alice@example.test", codes[0])))
               for _i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]


def test_update_user_settings_loses_no_concurrent_change(store):  # type: ignore[no-untyped-def]
    def add(i: int) -> None:
        store.directory.update_user_settings("alice@example.test", lambda s: s.setdefault("xs", []).append(i))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.directory.get_user("alice@example.test").settings["xs"]) == list(range(12))


# ------------------------------------------------------------ not me
def test_this_was_not_me_ends_sessions_revokes_app_passwords_and_is_logged(store):  # type: ignore[no-untyped-def]
    from storage.crypto import hmac_key
    from storage.webadmin import WebAdmin

    web = WebAdmin(store, hmac_key(b"k" * 32, "web"))
    user = store.directory.get_user("alice@example.test")
    web.create_session(user.id, stage="ok", ip="127.0.0.1", client="x")
    web.create_session(user.id, stage="ok", ip="127.0.5.1", client="y")
    code = store.add_app_password("alice@example.test", "stolen")
    assert store.auth.authenticate("alice@example.test", PW, protocol="imap", ip="127.0.0.1").ok
    assert store.auth.authenticate("alice@example.test", code, protocol="imap", ip="127.0.6.6").ok
    bad = store.events.query(kind="login", user="alice@example.test", ip="127.0.6.6")[0]
    done = security.report_not_me(store, "alice@example.test", event_id=bad.id, ip="127.0.0.1")
    assert done["sessions_ended"] == 2 and done["app_passwords_revoked"] == 1 and done["event_ip"] == "127.0.6.6"
    assert web.list_user_sessions(user.id) == []
    assert not store.auth.authenticate("alice@example.test", code, protocol="imap", ip="127.0.6.6").ok
    ev = [e for e in store.events.query(kind="security", user="alice@example.test") if e.action == "login.not_me"]
    assert ev and ev[0].result == "reported"
    places = store.directory.get_user("alice@example.test").settings[security.PLACES_KEY]
    assert "127.0.6.0/24" not in places["nets"]  # from there again: a new alert
    # someone else's event id is not taken as the reported one
    other = security.report_not_me(store, "alice@example.test", event_id=10**9, ip=None)
    assert "event_id" not in other


# ---------------------------------------------------------------- vacation
def _headers(subject="Lunch?", to="alice@example.test", extra=""):  # type: ignore[no-untyped-def]
    return (f"From: Bob <bob@remote.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <m1@remote.example>\r\nReferences: <m0@remote.example>\r\n{extra}\r\nbody\r\n").encode()


@pytest.fixture
def away(store):  # type: ignore[no-untyped-def]
    vacation.save_settings(store, "alice@example.test", enabled=True, body="I am away until Monday.\n我周一回来。", days=7)
    return store


def test_vacation_replies_once_per_sender_per_period(away):  # type: ignore[no-untyped-def]
    store = away
    now = time.time()
    r = vacation.should_reply(store, "alice@example.test", "bob@remote.example", _headers(), now=now)
    assert r is not None and r.mail_from == "" and r.recipient == "bob@remote.example"
    msg = email.message_from_bytes(r.message, policy=email_policy.default)
    assert msg["Auto-Submitted"] == "auto-replied" and msg["Subject"] == "Auto: Lunch?"
    assert msg["In-Reply-To"] == "<m1@remote.example>" and msg["References"] == "<m0@remote.example> <m1@remote.example>"
    assert msg["To"] == "bob@remote.example" and msg["From"].addresses[0].addr_spec == "alice@example.test"
    assert "我周一回来" in msg.get_content()
    assert vacation.should_reply(store, "alice@example.test", "Bob@Remote.Example", _headers(), now=now + 60) is None
    assert vacation.should_reply(store, "alice@example.test", "carol@remote.example", _headers(), now=now + 60) is not None
    assert vacation.should_reply(store, "alice@example.test", "bob@remote.example", _headers(), now=now + 8 * 86400) is not None


def test_vacation_never_replies_to_lists_robots_or_itself(away):  # type: ignore[no-untyped-def]
    store = away
    store.directory.add_alias("al@example.test", "alice@example.test")

    def reply(sender: str, raw: bytes) -> object:
        return vacation.should_reply(store, "alice@example.test", sender, raw)

    assert reply("", _headers()) is None
    assert reply("<>", _headers()) is None
    for robot in ("MAILER-DAEMON@remote.example", "noreply@remote.example", "no-reply@remote.example",
                  "owner-list@remote.example", "list-request@remote.example", "postmaster@remote.example"):
        assert reply(robot, _headers()) is None, robot
    assert reply("alice@example.test", _headers()) is None
    assert reply("al@example.test", _headers()) is None
    for extra in ("List-Id: <team.remote.example>\r\n", "Precedence: bulk\r\n", "Precedence: junk\r\n", "Precedence: list\r\n",
                  "Auto-Submitted: auto-replied\r\n", "Auto-Submitted: auto-generated\r\n", "X-Spam-Flag: YES\r\n",
                  "List-Unsubscribe: <mailto:u@remote.example>\r\n", "X-Auto-Response-Suppress: OOF\r\n"):
        assert reply("dave@remote.example", _headers(extra=extra)) is None, extra
    assert reply("erin@remote.example", _headers(to="team@remote.example")) is None  # not addressed to her
    assert reply("frank@remote.example", _headers(extra="Auto-Submitted: no\r\n")) is not None
    r = reply("gina@remote.example", _headers(to="Al <AL@example.test>"))  # to an alias: answered from it
    assert r is not None and b"From: Alice <al@example.test>" in r.message  # type: ignore[attr-defined]


def test_vacation_dates_and_switch(store):  # type: ignore[no-untyped-def]
    assert vacation.should_reply(store, "alice@example.test", "bob@remote.example", _headers()) is None  # off
    vacation.save_settings(store, "alice@example.test", enabled=True, body="away", start="2099-01-01", end="2099-01-31")
    assert vacation.should_reply(store, "alice@example.test", "bob@remote.example", _headers()) is None
    day = time.mktime((2099, 1, 15, 12, 0, 0, 0, 0, -1))
    assert vacation.should_reply(store, "alice@example.test", "bob@remote.example", _headers(), now=day) is not None
    with pytest.raises(InvalidInputError):
        vacation.save_settings(store, "alice@example.test", enabled=True, body="x", start="2099-02-01", end="2099-01-01")
    with pytest.raises(InvalidInputError):
        vacation.save_settings(store, "alice@example.test", enabled=True, body="  ")
    with pytest.raises(InvalidInputError):
        vacation.save_settings(store, "alice@example.test", enabled=True, body="x", days=99)


def test_vacation_concurrent_deliveries_from_one_sender_give_one_reply(away):  # type: ignore[no-untyped-def]
    results: list[object] = []

    def go() -> None:
        results.append(vacation.should_reply(away, "alice@example.test", "zed@remote.example", _headers()))

    threads = [threading.Thread(target=go) for _i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


# ------------------------------------------------------------------ export
def test_export_is_a_maildir_equal_to_the_mailbox(store):  # type: ignore[no-untyped-def]
    user = store.directory.get_user("alice@example.test")
    store.mail.create_mailbox(user.id, "Projects/2026.Q1")
    raws = {
        ("INBOX", 0): message("one", "first"),
        ("INBOX", 1): message("two", "x" * 300_000),  # several chunks
        ("Projects/2026.Q1", 0): message("three", "项目"),
        ("Sent", 0): message("four", "sent", sender="alice@example.test", to="bob@remote.example"),
    }
    flags = {("INBOX", 0): ("\\Seen", "\\Answered"), ("INBOX", 1): ("\\Flagged", "$Forwarded", "Work"),
             ("Projects/2026.Q1", 0): ("\\Seen", "\\Deleted", "\\Draft"), ("Sent", 0): ("\\Seen",)}
    for (box, _i), raw in raws.items():
        store.append(user, box, raw, flags=flags[(box, _i)], internal_date=1_700_000_000 + _i)
    buf = io.BytesIO()
    n = export.write_export(store, user.email, buf)
    assert n == len(buf.getvalue())
    zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    assert zf.testzip() is None
    manifest = json.loads(zf.read("manifest.json"))
    folders = {f["name"]: f for f in manifest["folders"]}
    assert set(folders) == {mb.name for mb in store.mail.list_mailboxes(user.id)}
    assert folders["INBOX"]["dir"] == "Maildir" and folders["Projects/2026.Q1"]["dir"] == "Maildir/.Projects.2026%2EQ1"
    seen = 0
    for mb in store.mail.list_mailboxes(user.id):
        f = folders[mb.name]
        assert f["uidvalidity"] == mb.uidvalidity
        by_uid = {e["uid"]: e for e in f["messages"]}
        msgs = store.mail.messages(mb.id)
        assert sorted(by_uid) == [m.uid for m in msgs]
        for msg in msgs:
            path = f["dir"] + "/" + by_uid[msg.uid]["file"]
            assert zf.read(path) == store.mail.read(user, msg)  # byte-identical
            info = path.rsplit(":2,", 1)[1]
            expect = "".join(sorted({"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "$Forwarded": "P", "\\Deleted": "T",
                                     "\\Draft": "D"}[x] for x in msg.flags if x.startswith("\\") or x == "$Forwarded"))
            assert info.rstrip("abcdefghijklmnopqrstuvwxyz") == expect
            assert set(by_uid[msg.uid]["flags"]) == set(msg.flags)
            seen += 1
    assert seen == 4
    kw = zf.read("Maildir/dovecot-keywords").decode()
    assert kw == "0 Work\n" and [n for n in zf.namelist() if n.startswith("Maildir/cur/") and n.endswith("FPa")]
    assert "Projects.2026%2EQ1" in zf.read("Maildir/subscriptions").decode()
    for d in ("Maildir/cur/", "Maildir/new/", "Maildir/tmp/", "Maildir/.Sent/cur/"):
        assert d in zf.namelist()
    assert "time,protocol,ip,client,result" in zf.read("signins.csv").decode("utf-8-sig")
    assert isinstance(json.loads(zf.read("signins.json")), list)


def test_export_streams_in_pieces(store):  # type: ignore[no-untyped-def]
    user = store.directory.get_user("alice@example.test")
    for i in range(5):
        store.append(user, "INBOX", message(f"m{i}", "y" * 100_000))
    parts = list(export.iter_export(store, user.email))
    assert len([p for p in parts if p]) > 5
    assert zipfile.ZipFile(io.BytesIO(b"".join(parts))).testzip() is None


# ---------------------------------------------------------------- retention
def test_prune_keeps_only_what_retention_requires(store):  # type: ignore[no-untyped-def]
    now = time.time()
    for age in (400, 200, 10):
        store.events.login("alice@example.test", protocol="imap", ip="127.0.0.1", client=None, result="ok")
        store.events.record("admin", action="x", actor="a", ts=now - age * 86400)
        store.events.record("login", action="login", subject="alice@example.test", ts=now - age * 86400)
    user = store.directory.get_user("alice@example.test")
    vacation.save_settings(store, user.email, enabled=True, body="away")
    assert vacation.should_reply(store, user.email, "bob@remote.example", _headers(), now=now - 40 * 86400)
    assert vacation.should_reply(store, user.email, "carl@remote.example", _headers(), now=now)
    assert retention.retention_seconds(store, 180 * 86400) == 180 * 86400
    store.set_setting("policies", json.dumps({"log_retention_days": 100}))
    keep = retention.retention_seconds(store, 180 * 86400)
    assert keep == 100 * 86400
    done = retention.prune(store, retention=keep, now=now)
    assert done["events"] == 4 and done["vacation_replies"] == 1
    old = store.events.query(until=now - 100 * 86400, limit=None)
    assert old == []
    assert len(store.events.query(kind="admin", limit=None)) == 1
    with pytest.raises(ValueError):
        retention.prune(store, retention=3600)


def test_removing_a_user_erases_mail_and_vacation_memory(away):  # type: ignore[no-untyped-def]
    store = away
    user = store.directory.get_user("alice@example.test")
    store.append(user, "INBOX", message("keep?", "secret words"))
    assert vacation.should_reply(store, user, "bob@remote.example", _headers()) is not None
    store.remove_user(user.email)
    from sqlalchemy import func, select

    from storage import models as m

    with store.read() as c:
        assert c.execute(select(func.count()).select_from(m.vacation_replies)).scalar_one() == 0
    assert not store.keyring.has(user.uuid)


def test_forwarding_target_needs_the_policy(store):  # type: ignore[no-untyped-def]
    from storage import forwarding

    store.directory.set_user_setting("alice@example.test", "forward_to", "alice@home.example")
    user = store.directory.get_user("alice@example.test")
    assert forwarding.target(store, user) == (None, True)  # the policy is off by default
    store.set_setting("policies", json.dumps({"forwarding_allowed": True}))
    assert forwarding.target(store, user) == ("alice@home.example", True)
    user = store.directory.set_user_setting("alice@example.test", "forward_keep", False)
    assert forwarding.target(store, user) == ("alice@home.example", False)
