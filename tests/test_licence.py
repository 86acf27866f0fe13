"""Licences: signature, expiry and grace, domains, mailbox count, host fingerprint, trial mode."""

from __future__ import annotations

import datetime
import json

import pytest
from conftest import run_cli
from test_installer_fixtures import FINGERPRINT, VendorKey, cli

from appliance import licence_hook
from appliance.licence_hook import TRIAL_MAILBOXES, allowance, check_domain, check_seat
from installer.fingerprint import changed_components, hash_component
from installer.licence import GRACE_DAYS, LicenceError, check_licence, parse_licence, parse_request
from storage.errors import QuotaExceededError

TODAY = datetime.date(2025, 6, 1)


@pytest.fixture(scope="module")
def vendor() -> VendorKey:
    return VendorKey()


def status(vendor: VendorKey, text: str, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("fingerprint", FINGERPRINT)
    kw.setdefault("domains", ["example.com"])
    kw.setdefault("today", TODAY)
    return check_licence(parse_licence(text), public_key=vendor.public, **kw)


def test_valid_licence(vendor: VendorKey) -> None:
    st = status(vendor, vendor.licence(issued=TODAY), active_mailboxes=10)
    assert st.state == "valid" and st.usable
    assert st.problems == [] and st.warnings == [] and st.changed == []
    assert st.days_left == 365


def test_signed_by_another_key(vendor: VendorKey) -> None:
    other = VendorKey()
    st = status(vendor, other.licence(issued=TODAY))
    assert st.state == "invalid"
    assert "signature does not verify" in st.problems[0]


def test_altered_licence_is_invalid(vendor: VendorKey) -> None:
    doc = json.loads(vendor.licence(issued=TODAY, mailboxes=50))
    doc["licence"]["mailboxes"] = 5000
    st = status(vendor, json.dumps(doc))
    assert st.state == "invalid" and "altered" in st.problems[0]


def test_expiring_soon_warns(vendor: VendorKey) -> None:
    st = status(vendor, vendor.licence(issued=TODAY - datetime.timedelta(days=350), days=365))
    assert st.state == "valid" and st.days_left == 15
    assert any("ask the vendor for a renewal" in w for w in st.warnings)


def test_expired_within_grace_keeps_working_with_a_warning(vendor: VendorKey) -> None:
    st = status(vendor, vendor.licence(issued=TODAY - datetime.timedelta(days=370), days=365))
    assert st.state == "grace" and st.usable
    assert st.days_left == -5
    assert any(f"{GRACE_DAYS - 5} days of grace remain" in w for w in st.warnings)


def test_expired_past_grace_is_invalid(vendor: VendorKey) -> None:
    st = status(vendor, vendor.licence(issued=TODAY - datetime.timedelta(days=365 + GRACE_DAYS + 1), days=365))
    assert st.state == "invalid"
    assert "grace period ended" in st.problems[0]


def test_another_domain_is_not_covered(vendor: VendorKey) -> None:
    st = status(vendor, vendor.licence(domains=("example.org",), issued=TODAY), domains=["example.com"])
    assert st.usable and st.uncovered == ["example.com"]
    assert any("example.com is not covered" in w for w in st.warnings)


def test_one_changed_component_is_tolerated(vendor: VendorKey) -> None:
    host = dict(FINGERPRINT, nics=hash_component("nics", "3c:ec:ef:99:99:99"))  # a replaced NIC
    st = status(vendor, vendor.licence(issued=TODAY), fingerprint=host)
    assert st.state == "valid" and st.changed == ["nics"]
    assert any("one hardware component changed" in w for w in st.warnings)


def test_two_changed_components_invalidate(vendor: VendorKey) -> None:
    host = dict(FINGERPRINT, nics=hash_component("nics", "x"), disk=hash_component("disk", "y"))
    st = status(vendor, vendor.licence(issued=TODAY), fingerprint=host)
    assert st.state == "invalid" and st.changed == ["disk", "nics"]
    assert "issued for another host: 2 of 4" in st.problems[0]


def test_changed_components() -> None:
    assert changed_components({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == ["b", "c"]


def test_fingerprint_holds_digests_only() -> None:
    from installer.fingerprint import host_fingerprint

    fp = host_fingerprint(max_age=0)
    assert set(fp.components) == {"cpu", "machine", "nics", "disk"}
    text = json.dumps(fp.components)
    machine_id = open("/etc/machine-id").read().strip() if __import__("os").path.exists("/etc/machine-id") else "none"
    assert machine_id not in text
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in fp.components.values())


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"type": "appliance-licence-request", "version": 1}', "not a licence file"),
    ('{"type": "appliance-licence", "version": 1, "licence": {"mailboxes": 5, "domains": ["example.com"], "issued": "x"}}',
     "issued is missing or wrong"),
])
def test_malformed_licence_files(text: str, message: str) -> None:
    with pytest.raises(LicenceError) as info:
        parse_licence(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_malformed_request() -> None:
    with pytest.raises(LicenceError, match="not a licence request"):
        parse_request('{"type": "x"}')
    with pytest.raises(LicenceError, match="at least 1"):
        parse_request(json.dumps({"type": "appliance-licence-request", "version": 1, "mailboxes": 0}))


# ---------------------------------------------------------------- seats in a store


def _users(store, n: int, domain: str = "example.test") -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        store.create_user(f"user{i}@{domain}")


def test_dev_instance_with_demo_users_is_within_the_trial(make_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    store = inst.store()
    try:
        a = allowance(store)
        assert a.mode == "trial" and a.mailboxes == TRIAL_MAILBOXES
        check_seat(store, "carol@example.test")  # the 4th mailbox is fine
    finally:
        store.close()


def test_trial_refuses_the_mailbox_beyond_its_limit(make_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    store = inst.store()
    try:
        _users(store, TRIAL_MAILBOXES - 3)  # 3 demo users already
        with pytest.raises(QuotaExceededError) as info:
            check_seat(store, "one-more@example.test")
        assert f"the trial allows {TRIAL_MAILBOXES} active mailboxes" in str(info.value)
        assert "appliance licence install" in str(info.value)
        store.directory.update_user("user0@example.test", state="disabled")  # a disabled mailbox frees a seat
        check_seat(store, "one-more@example.test")
    finally:
        store.close()


def test_licence_in_the_store_sets_the_seats(make_instance, vendor: VendorKey) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    store = inst.store()
    kw = {"fingerprint": FINGERPRINT, "public_key": vendor.public}
    try:
        store.set_setting(licence_hook.SETTING, vendor.licence(domains=("example.test",), mailboxes=5))
        a = allowance(store, **kw)
        assert a.mode == "licence" and a.mailboxes == 5
        _users(store, 1)
        check_seat(store, "x@example.test", **kw)
        with pytest.raises(QuotaExceededError, match="not cover the domain other.test"):
            check_seat(store, "x@other.test", **kw)
        store.create_user("user9@example.test")
        with pytest.raises(QuotaExceededError) as info:
            check_seat(store, "x@example.test", **kw)
        assert "the licence allows 5 active mailboxes and 5 are in use" in str(info.value)
        with pytest.raises(QuotaExceededError, match="not cover the domain"):
            check_domain(store, "other.test", **kw)
        check_domain(store, "example.test", **kw)
    finally:
        store.close()


def test_invalid_licence_falls_back_to_the_trial(make_instance, vendor: VendorKey) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    store = inst.store()
    try:
        store.set_setting(licence_hook.SETTING, VendorKey().licence(domains=("example.test",), mailboxes=500))
        a = allowance(store, fingerprint=FINGERPRINT, public_key=vendor.public)
        assert a.mode == "trial" and "signature" in a.reason
        _users(store, TRIAL_MAILBOXES - 3)
        with pytest.raises(QuotaExceededError, match="the installed licence is not valid"):
            check_seat(store, fingerprint=FINGERPRINT, public_key=vendor.public)
        assert licence_hook.startup_check(store) is not None  # logs, never raises
    finally:
        store.close()


def test_trial_domain_limit(make_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    store = inst.store()
    try:
        store.directory.add_domain("two.test")
        check_domain(store, "three.test")
        store.directory.add_domain("three.test")
        with pytest.raises(QuotaExceededError, match="the trial allows 3 domains"):
            check_domain(store, "four.test")
    finally:
        store.close()


# ---------------------------------------------------------------- the CLI, end to end


def test_licence_cli_round_trip(make_instance, tmp_path, vendor: VendorKey) -> None:  # type: ignore[no-untyped-def]
    inst = make_instance()
    c = ("-c", str(inst.config_path))
    env = {"APPLIANCE_LICENCE_PUBKEY_FILE": str(vendor.write_public(tmp_path / "vendor.pub"))}
    key = vendor.write_private(tmp_path / "vendor.pem")
    rc, out, err = cli(*c, "licence", "request", "--organisation", "Example Ltd", "--mailboxes", "4", "--output", str(tmp_path / "req.json"))
    assert rc == 0, err
    request = json.loads((tmp_path / "req.json").read_text())
    assert request["domains"] == ["example.test"] and request["mailboxes"] == 4
    assert set(request["fingerprint"]) == {"cpu", "machine", "nics", "disk"}
    rc, out, err = cli("licence", "issue", "--signing-key", str(key), str(tmp_path / "req.json"), "--days", "90",
                       "--output", str(tmp_path / "lic.json"))
    assert rc == 0, err

    rc, out, err = cli(*c, "licence", "install", str(tmp_path / "lic.json"))  # the built-in vendor key did not sign it
    assert rc == 1 and "signature does not verify" in err and len(err.splitlines()) == 1
    rc, out, err = cli(*c, "licence", "install", str(tmp_path / "lic.json"), env=env)
    assert rc == 0, err
    assert "4 mailboxes for example.test" in out
    rc, out, err = cli(*c, "licence", "show", env=env)
    assert rc == 0 and "3 in use of 4" in out and "matches" in out

    rc, out, err = cli(*c, "user", "add", "carol@example.test", env=env)
    assert rc == 0, err
    rc, out, err = cli(*c, "user", "add", "dave@example.test", env=env)
    assert rc != 0
    assert "the licence allows 4 active mailboxes and 4 are in use" in err and len(err.splitlines()) == 1
    # existing mail keeps flowing: a real process delivers to an existing mailbox
    p = run_cli(*c, "deliver", "bob@example.test", input=b"Subject: still flowing\r\n\r\nhi\r\n", env=env)
    assert p.returncode == 0 and b"delivered to bob@example.test" in p.stdout
    rc, out, err = cli(*c, "licence", "show")  # without the tests' vendor key the licence does not verify
    assert rc == 1 and "NOT VALID" in out and "trial mode" in out
