"""The `appliance` command: each command and each error path, as a subprocess."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import create_test_instance, run_cli

MSG = b"From: Bob <bob@remote.example>\r\nTo: alice@example.test\r\nSubject: cli test\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def inst(tmp_path_factory):  # type: ignore[no-untyped-def]
    return create_test_instance(tmp_path_factory.mktemp("cli"))


def ok(inst, *args, input=None):  # type: ignore[no-untyped-def]
    p = inst.cli(*args, input=input)
    assert p.returncode == 0, (args, p.stderr.decode())
    return p.stdout.decode()


def fails(inst, *args, code=None, input=None, contains=None):  # type: ignore[no-untyped-def]
    p = inst.cli(*args, input=input)
    err = p.stderr.decode()
    assert p.returncode != 0, (args, p.stdout.decode())
    if code is not None:
        assert p.returncode == code, (args, p.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: "), err
    if contains:
        assert contains in err, err
    return err


def test_init_creates_instance_and_refuses_overwrite(tmp_path):  # type: ignore[no-untyped-def]
    target = tmp_path / "new"
    p = run_cli("init", str(target), "--domain", "corp.test", "--dev")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "admin@corp.test" in out and "_domainkey.corp.test" in out
    for f in ("appliance.toml", "keys/master.key", "tls/key.pem", "demo-accounts.json"):
        mode = stat.S_IMODE(os.stat(target / f).st_mode)
        if f != "appliance.toml":
            assert mode == 0o600, (f, oct(mode))
    assert json.loads((target / "demo-accounts.json").read_text()).keys() == {"admin@corp.test", "alice@corp.test", "bob@corp.test"}
    p = run_cli("init", str(target), "--domain", "corp.test")
    assert p.returncode == 1 and b"already exists" in p.stderr


def test_domain_user_alias_group_admin_commands(inst):  # type: ignore[no-untyped-def]
    ok(inst, "domain", "add", "Second.Test")
    assert "second.test" in json.dumps(json.loads(ok(inst, "domain", "list", "--json")))
    ok(inst, "user", "add", "carol@second.test", "--name", "Carol 陈", "--quota", "2G", "--password-stdin", input=b"carol-password\n")
    shown = json.loads(ok(inst, "user", "show", "carol@second.test", "--json"))
    assert shown["quota_bytes"] == 2 * 1024**3 and shown["name"] == "Carol 陈"
    users = json.loads(ok(inst, "user", "list", "--domain", "second.test", "--json"))
    assert [u["email"] for u in users] == ["carol@second.test"]
    ok(inst, "user", "passwd", "carol@second.test", "--password-stdin", input=b"new-password-1\n")
    ok(inst, "user", "disable", "carol@second.test")
    assert json.loads(ok(inst, "user", "show", "carol@second.test", "--json"))["state"] == "disabled"
    ok(inst, "user", "enable", "carol@second.test")
    ok(inst, "user", "quota", "carol@second.test", "500M")
    ok(inst, "alias", "add", "sales@second.test", "carol@second.test")
    assert json.loads(ok(inst, "alias", "list", "--json")) == [{"source": "sales@second.test", "destination": "carol@second.test"}]
    ok(inst, "group", "add", "all@second.test", "--post-policy", "domain")
    ok(inst, "group", "members", "add", "all@second.test", "carol@second.test", "friend@outside.example")
    members = json.loads(ok(inst, "group", "members", "list", "all@second.test", "--json"))
    assert {m["member"] for m in members} == {"carol@second.test", "friend@outside.example"}
    ok(inst, "group", "members", "remove", "all@second.test", "friend@outside.example")
    assert json.loads(ok(inst, "group", "list", "--json"))[0]["members"] == 1
    out = ok(inst, "department", "add", "second.test", "Sales")
    dept_id = out.strip().split()[-1]
    ok(inst, "admin", "add", "carol@second.test", "--role", "department", "--scope", dept_id)
    ok(inst, "admin", "add", "carol@second.test", "--role", "domain", "--scope", "second.test")
    roles = {(a["email"], a["role"]) for a in json.loads(ok(inst, "admin", "list", "--json"))}
    assert ("carol@second.test", "domain") in roles and ("admin@example.test", "super") in roles
    ok(inst, "admin", "remove", "carol@second.test", "--role", "department")
    ok(inst, "group", "remove", "all@second.test")
    ok(inst, "alias", "remove", "sales@second.test")
    ok(inst, "user", "remove", "carol@second.test", "--yes")
    ok(inst, "domain", "remove", "second.test")
    audit = json.loads(ok(inst, "log", "admin", "--json", "--limit", "100"))
    actions = {e["action"] for e in audit}
    assert {"domain.add", "user.add", "user.password", "alias.add", "group.add", "admin.add", "user.remove", "domain.remove"} <= actions
    assert all(e["actor"].startswith("cli:") for e in audit if e["action"] != "instance.create")


def test_app_password_commands(inst):  # type: ignore[no-untyped-def]
    out = ok(inst, "user", "app-password", "add", "alice@example.test", "--name", "phone")
    code = out.strip().splitlines()[-1]
    assert len(code.replace("-", "")) == 28
    listed = json.loads(ok(inst, "user", "app-password", "list", "alice@example.test", "--json"))
    assert [a["name"] for a in listed] == ["phone"]
    ok(inst, "user", "app-password", "revoke", "alice@example.test", "phone")
    fails(inst, "user", "app-password", "revoke", "alice@example.test", "phone", contains="no app password")


def test_deliver_and_mailbox_list(inst):  # type: ignore[no-untyped-def]
    before = {m["name"]: m for m in json.loads(ok(inst, "mailbox", "list", "alice@example.test", "--json"))}
    out = ok(inst, "deliver", "alice@example.test", input=MSG)
    assert "delivered to alice@example.test INBOX" in out
    after = {m["name"]: m for m in json.loads(ok(inst, "mailbox", "list", "alice@example.test", "--json"))}
    assert after["INBOX"]["messages"] == before["INBOX"]["messages"] + 1
    assert after["INBOX"]["unseen"] == before["INBOX"]["unseen"] + 1
    assert after["INBOX"]["size"] == before["INBOX"]["size"] + len(MSG)
    assert set(after) == {"INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"}
    log = json.loads(ok(inst, "log", "mail", "--since", "1h", "--json"))
    assert any(e["detail"]["recipients"] == ["alice@example.test"] for e in log)


def test_deliver_exit_codes(inst):  # type: ignore[no-untyped-def]
    fails(inst, "deliver", "nobody@example.test", input=MSG, code=67, contains="unknown user")
    fails(inst, "deliver", "not an address", input=MSG, code=67)
    fails(inst, "deliver", "alice@example.test", input=b"", code=65, contains="empty message")
    ok(inst, "user", "add", "tiny@example.test", "--quota", "1K", input=b"")
    ok(inst, "deliver", "tiny@example.test", input=MSG)
    big = MSG + b"x" * 2000 + b"\r\n"
    fails(inst, "deliver", "tiny@example.test", input=big, code=75, contains="full")


def test_errors_are_one_line(inst, tmp_path):  # type: ignore[no-untyped-def]
    fails(inst, "user", "show", "nobody@example.test", contains="no such user")
    fails(inst, "user", "add", "alice@example.test", input=b"", contains="already")
    fails(inst, "user", "add", "x@nowhere.test", input=b"", contains="no such domain")
    fails(inst, "user", "add", "bad address@example.test", input=b"", code=65)
    fails(inst, "user", "add", "q@example.test", "--quota", "lots", input=b"", code=65, contains="invalid size")
    fails(inst, "user", "passwd", "alice@example.test", "--password-stdin", input=b"short\n", code=65, contains="too short")
    fails(inst, "user", "remove", "alice@example.test", contains="--yes")
    fails(inst, "domain", "remove", "example.test", contains="still has")
    fails(inst, "group", "members", "add", "none@example.test", "a@example.test", contains="no such group")
    fails(inst, "admin", "add", "alice@example.test", "--role", "domain", contains="--scope")
    fails(inst, "nosuchcommand", code=64, contains="usage")
    fails(inst, "log", "mail", "--since", "yesterday-ish", code=64)
    # config errors: one line naming the key
    bad = tmp_path / "bad.toml"
    bad.write_text(inst.config_path.read_text().replace("max_recipients = 100", "max_recipients = -5"))
    p = run_cli("-c", str(bad), "user", "list")
    assert p.returncode == 78 and b"smtp.max_recipients" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli("-c", str(tmp_path / "missing.toml"), "status")
    assert p.returncode == 78 and b"Traceback" not in p.stderr
    p = run_cli("user", "list", env={"APPLIANCE_CONFIG": str(inst.config_path)})
    assert p.returncode == 0 and b"alice@example.test" in p.stdout


def test_status_and_migrate_and_store_check(inst):  # type: ignore[no-untyped-def]
    status = json.loads(ok(inst, "status", "--json"))
    assert {lst["name"] for lst in status["listeners"]} >= {"mx", "imap", "panel"}
    assert status["counts"]["users"] >= 3
    assert "up to date" in ok(inst, "migrate")
    ok(inst, "migrate", "--check")
    assert "0 problems" in ok(inst, "store", "check")


def test_chinese_messages(inst):  # type: ignore[no-untyped-def]
    p = run_cli("nosuchcommand", env={"APPLIANCE_LANG": "zh-CN"})
    assert p.returncode == 64 and "用法错误" in p.stderr.decode()
    p = run_cli("-c", str(inst.config_path), "status", env={"APPLIANCE_LANG": "zh-CN"})
    assert p.returncode == 0 and "邮件存储" in p.stdout.decode()
    p = run_cli("-c", str(inst.config_path), "user", "show", "nobody@example.test", env={"APPLIANCE_LANG": "zh-CN"})
    assert p.returncode == 67 and "用户不存在：nobody@example.test" in p.stderr.decode()


def test_no_plaintext_anywhere_in_the_instance(make_instance):  # type: ignore[no-untyped-def]
    inst = make_instance()
    word = b"quetzalcoatlunique"
    msg = (b"From: Bob <bob@remote.example>\r\nTo: alice@example.test\r\nSubject: the " + word +
           b" plan\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n" + word * 3 +
           b"\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=x.bin\r\n\r\n" + word +
           b"\r\n--b1--\r\n")
    p = inst.cli("deliver", "alice@example.test", "admin@example.test", input=msg)
    assert p.returncode == 0, p.stderr
    boxes = {b["name"]: b for b in json.loads(inst.cli("mailbox", "list", "alice@example.test", "--json").stdout)}
    assert boxes["INBOX"]["messages"] == 1
    found = []
    for path in inst.path.rglob("*"):
        if path.is_file() and word in path.read_bytes():
            found.append(str(path))
    assert found == []
