"""``appliance install`` into a fake root: a fresh install, re-runs, repairs, licences, uninstall."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
from test_installer_fixtures import FINGERPRINT, VendorKey, cli, config_path, hooks, install, open_store

from appliance.config import load_config
from installer.fingerprint import Fingerprint, hash_component
from installer.paths import Layout

MESSAGE = b"From: bob@remote.example\r\nTo: admin@example.com\r\nSubject: kept across installs\r\n\r\nhello\r\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def inbox(root: Path, email: str = "admin@example.com") -> list[bytes]:
    store = open_store(root)
    try:
        user = store.directory.get_user(email)
        mb = store.mail.get_mailbox(user.id, "INBOX")
        return [store.mail.read(user, m) for m in store.mail.messages(mb.id)]
    finally:
        store.close()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fresh")
    rc, out = install(root)
    assert rc == 0, out
    return root, out


def test_every_step_reports_progress(installed) -> None:  # type: ignore[no-untyped-def]
    root, out = installed
    steps = re.findall(r"^\[(\d)/9\] (.+?) \.\.\. (\S+)", out, re.M)
    assert [int(n) for n, _t, _s in steps] == list(range(1, 10))
    assert all(status == "ok" for _n, _t, status in steps), out
    assert "The mail appliance is installed for example.com (mail.example.com)" in out
    assert "system user 'appliance': skipped under --root" in out
    assert "created a self-signed certificate for mail.example.com" in out


def test_files_and_permissions(installed) -> None:  # type: ignore[no-untyped-def]
    root, _out = installed
    L = Layout(root)
    assert mode(L.credentials) == 0o700 and mode(L.master_key) == 0o600 and L.master_key.stat().st_size == 32
    assert mode(L.tls / "key.pem") == 0o600 and mode(L.tls / "cert.pem") == 0o644
    assert mode(L.data) == 0o750 and mode(L.keys) == 0o700 and mode(L.log) == 0o750
    assert mode(L.config) == 0o640
    assert mode(L.data / "index.sqlite3") & 0o077 == 0, "the database holds password hashes"
    for unit in ("appliance-mta.service", "appliance-imapd.service", "appliance-panel.service", "appliance-antispam.service",
                 "appliance.target"):
        assert (L.units / unit).is_file()
    assert sorted(p.name for p in (L.keys / "dkim").iterdir()) == ["example.com.s1.ed25519.key", "example.com.s1r.rsa.key"]


def test_production_configuration(installed) -> None:  # type: ignore[no-untyped-def]
    root, _out = installed
    cfg = load_config(config_path(root))
    assert cfg.instance.dev is False and cfg.instance.hostname == "mail.example.com"
    binds = {name: lst.bind for name, lst in cfg.listeners.items()}
    assert binds == {"mx": "0.0.0.0:25", "submission": "0.0.0.0:587", "submissions": "0.0.0.0:465", "imap": "0.0.0.0:143",
                     "imaps": "0.0.0.0:993", "pop3": "0.0.0.0:110", "pop3s": "0.0.0.0:995", "panel": "0.0.0.0:443"}
    assert cfg.storage.master_key_file == Layout(root).master_key  # outside systemd: the file itself
    assert cfg.instance.data_dir == Layout(root).data
    text = config_path(root).read_text()
    assert '"${CREDENTIALS_DIRECTORY:-' in text
    assert "# installer: 16 CPU threads x 4 = 64 workers" in text  # the sizing says why
    assert "workers = 64" in text and "database_url = \"\"" in text
    assert "# installer: SQLite: 25 mailboxes is within the 500" in text


def test_admin_and_dns_records(installed) -> None:  # type: ignore[no-untyped-def]
    root, out = installed
    password = re.search(r"password: (\S+)   \(shown once", out).group(1)
    store = open_store(root)
    try:
        assert store.auth.authenticate("admin@example.com", password, protocol="imap").ok
        assert [a.role for a in store.directory.list_admins("admin@example.com")] == ["super"]
        assert store.directory.expand("postmaster@example.com")[0] == ["admin@example.com"]
    finally:
        store.close()
    zone = Layout(root).dns_records.read_text()
    for expected in ("example.com.", "MX     10 mail.example.com.", "A      203.0.113.25", "AAAA   2001:db8::25",
                     '"v=spf1 mx -all"', "s1._domainkey.example.com.", "k=ed25519", "s1r._domainkey.example.com.",
                     "_dmarc.example.com.", "_mta-sts.example.com.", "_smtp._tls.example.com.", "_submissions._tcp.example.com.",
                     "SRV    0 1 993 mail.example.com.", "autoconfig.example.com.", "autodiscover.example.com."):
        assert expected in zone, expected
    assert "Publish these DNS records" in out


def test_install_report_is_what_was_collected(installed) -> None:  # type: ignore[no-untyped-def]
    root, _out = installed
    report = json.loads(Layout(root).report.read_text())
    assert report["survey"]["cpu"]["model"] == "Intel Xeon E-2388G"
    assert report["survey"]["nics"][0]["mac"] == "3c:ec:ef:10:20:30"
    assert report["fingerprint"]["components"] == FINGERPRINT
    assert report["licence"] == {"state": "trial"}
    assert {c["check"] for c in report["checks"]} >= {"python", "disk", "memory", "port-25", "hostname", "clock"}
    text = Layout(root).report.read_text()
    assert "S5GXNF0R123456" not in text and "4c4c4544-0042" not in text  # serials only as digests


def test_rerun_is_safe_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "r"
    rc, first = install(root)
    assert rc == 0
    password = re.search(r"password: (\S+)   \(shown once", first).group(1)
    key = Layout(root).master_key.read_bytes()
    store = open_store(root)
    try:
        store.append(store.directory.get_user("admin@example.com"), "INBOX", MESSAGE)
    finally:
        store.close()
    rc, again = install(root)
    assert rc == 0, again
    for n in (4, 5, 6, 7, 8):
        assert re.search(rf"^\[{n}/9\] .* \.\.\. ok \(unchanged\)$", again, re.M), again
    assert "admin admin@example.com kept; password unchanged" in again and "shown once" not in again
    assert Layout(root).master_key.read_bytes() == key
    assert inbox(root) == [MESSAGE]
    store = open_store(root)
    try:
        assert store.auth.authenticate("admin@example.com", password, protocol="imap").ok
    finally:
        store.close()


def test_rerun_repairs_modes_and_keeps_an_edited_config(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert install(root)[0] == 0
    L = Layout(root)
    L.master_key.chmod(0o644)
    L.keys.chmod(0o755)
    edited = config_path(root).read_text().replace("max_recipients = 100", "max_recipients = 42")
    config_path(root).write_text(edited)
    rc, out = install(root, mailboxes=40)
    assert rc == 0, out
    assert f"set mode 0600 on {L.master_key} (was 0644)" in out and mode(L.master_key) == 0o600
    assert f"set mode 0700 on {L.keys} (was 0755)" in out
    assert "kept your edited" in out and config_path(root).read_text() == edited
    assert "max_recipients = 100" in (L.etc / "appliance.toml.new").read_text()
    assert load_config(config_path(root)).smtp.max_recipients == 42


def test_unedited_config_follows_the_installer(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert install(root)[0] == 0
    rc, out = install(root, mailboxes=700)
    assert rc == 0
    assert "(you had not edited it)" in out
    assert "700 mailboxes is above the 500 SQLite is sized for" in config_path(root).read_text()


def test_rerun_for_more_domains_respects_the_trial(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for domain in ("example.com", "example.org", "example.net"):
        assert install(root, domain=domain, admin="admin@example.com")[0] == 0
    rc, out = install(root, domain="example.info", admin="admin@example.com")
    assert rc == 1 and "the trial allows 3 domains" in out and "appliance licence install" in out
    assert load_config(config_path(root)).instance.hostname == "mail.example.com"  # the server keeps its name
    assert "MX     10 mail.example.com." in Layout(root).dns_records.read_text()


def test_missing_master_key_with_mail_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert install(root)[0] == 0
    Layout(root).master_key.unlink()
    rc, out = install(root)
    assert rc == 1
    assert "[5/9] Keys and certificate ... FAILED" in out
    assert "a new key would leave that mail unreadable" in out and "restore the master key" in out
    assert not Layout(root).master_key.exists()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "r"
    rc, out = install(root, dry_run=True)
    assert rc == 0, out
    assert "would create the master key" in out and "would write" in out
    assert "Dry run finished" in out
    assert not root.exists()


def test_imported_certificate(tmp_path: Path) -> None:
    from appliance.keys import generate_self_signed_cert

    generate_self_signed_cert(tmp_path / "c.pem", tmp_path / "k.pem", "mail.example.com")
    generate_self_signed_cert(tmp_path / "other.pem", tmp_path / "otherkey.pem", "mail.example.com")
    rc, out = install(tmp_path / "bad", cert=tmp_path / "c.pem", key=tmp_path / "otherkey.pem")
    assert rc == 1 and "cannot use --cert" in out
    rc, out = install(tmp_path / "r", cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    assert rc == 0, out
    assert "installed the certificate" in out
    assert (tmp_path / "r/etc/appliance/tls/cert.pem").read_bytes() == (tmp_path / "c.pem").read_bytes()


def test_admin_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("correct horse battery staple\n")
    rc, out = install(tmp_path / "r", admin="boss@example.com", admin_password_file=tmp_path / "pw")
    assert rc == 0, out
    assert "shown once" not in out
    store = open_store(tmp_path / "r")
    try:
        assert store.auth.authenticate("boss@example.com", "correct horse battery staple", protocol="imap").ok
    finally:
        store.close()


# ---------------------------------------------------------------- with a licence


@pytest.fixture(scope="module")
def vendor() -> VendorKey:
    return VendorKey()


def test_install_with_a_licence(tmp_path: Path, vendor: VendorKey) -> None:
    from appliance.licence_hook import allowance

    lic = tmp_path / "licence.json"
    lic.write_text(vendor.licence(mailboxes=100))
    rc, out = install(tmp_path / "r", hooks(vendor), licence=lic, mailboxes=80)
    assert rc == 0, out
    assert re.search(r"licence L-\S+ for Example Ltd: 100 mailboxes, example.com, valid until", out)
    store = open_store(tmp_path / "r")
    try:
        a = allowance(store, fingerprint=FINGERPRINT, public_key=vendor.public)
        assert a.mode == "licence" and a.mailboxes == 100
    finally:
        store.close()
    assert json.loads(Layout(tmp_path / "r").report.read_text())["licence"]["state"] == "valid"


@pytest.mark.parametrize("case, message", [
    ("other-key", "signature does not verify"),
    ("other-domain", "is for example.org, not for example.com"),
    ("other-host", "issued for another host: 2 of 4"),
    ("expired", "grace period ended"),
])
def test_install_refuses_an_unusable_licence(tmp_path: Path, vendor: VendorKey, case: str, message: str) -> None:
    import datetime

    h = hooks(vendor)
    if case == "other-key":
        text = VendorKey().licence()
    elif case == "other-domain":
        text = vendor.licence(domains=("example.org",))
    elif case == "expired":
        text = vendor.licence(days=30, issued=datetime.date.today() - datetime.timedelta(days=60))
    else:
        text = vendor.licence()
        h.fingerprint = lambda: Fingerprint(dict(FINGERPRINT, nics=hash_component("nics", "a"), disk=hash_component("disk", "b")))
    (tmp_path / "lic.json").write_text(text)
    rc, out = install(tmp_path / "r", h, licence=tmp_path / "lic.json")
    assert rc == 1
    assert "[3/9] Licence ... FAILED" in out and message in out
    assert not (tmp_path / "r").exists()


def test_install_with_a_licence_and_one_changed_component_warns(tmp_path: Path, vendor: VendorKey) -> None:
    (tmp_path / "lic.json").write_text(vendor.licence())
    h = hooks(vendor, fingerprint=lambda: Fingerprint(dict(FINGERPRINT, disk=hash_component("disk", "new disk"))))
    rc, out = install(tmp_path / "r", h, licence=tmp_path / "lic.json")
    assert rc == 0, out
    assert "[3/9] Licence ... ok (1 warning)" in out and "one hardware component changed since it was issued (disk)" in out


# ---------------------------------------------------------------- uninstall, CLI


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert install(root)[0] == 0
    L = Layout(root)
    rc, out, err = cli("uninstall", "--root", str(root))
    assert rc == 0, err
    assert not (L.units / "appliance-mta.service").exists()
    assert L.master_key.exists() and (L.data / "index.sqlite3").exists()
    assert "kept the data and configuration" in out
    rc, out, err = cli("uninstall", "--root", str(root), "--purge")  # no terminal, no --yes: refuses
    assert rc == 1 and L.data.exists()
    rc, out, err = cli("uninstall", "--root", str(root), "--purge", "--yes")
    assert rc == 0 and not L.data.exists() and not L.etc.exists()


def test_cli_install_in_chinese(tmp_path: Path) -> None:
    rc, out, err = cli("install", "--root", str(tmp_path / "r"), "--domain", "example.com", "--dry-run", "--yes",
                       "--hostname", "localhost", env={"APPLIANCE_LANG": "zh-CN"})
    assert rc == 1
    assert "预检" in out and "localhost" in out
