"""Revoked credentials end live IMAP and POP3 sessions, whichever process revoked them.

The server is the shared ``appliance up`` process; the changes are made by
the CLI (another process) or by a Store of this test process (a third
one), as the panel would. Each test opens sessions, changes something, and
reads the ``* BYE`` / ``-ERR`` the server sends on its own, timing it.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from imapkit import PASSWORD, Chat, imap, ok, pop3, store_of, tls_context

from storage import security

BOUND = 3.0  # seconds from the change to the BYE (the guard polls every 0.5 s)


@pytest.fixture
def user(server):  # type: ignore[no-untyped-def]
    inst = server.inst
    email = f"revoke-{uuid.uuid4().hex[:8]}@{inst.domain}"
    store_of(inst).create_user(email, password=PASSWORD)
    return email


def bye_of(c: imaplib.IMAP4, timeout: float = 10.0) -> tuple[bytes, float]:
    """Wait for the server's untagged line on an idle imaplib session: (the line, when it came)."""
    c.sock.settimeout(timeout)
    line = c.readline()
    return line.rstrip(), time.monotonic()


def pop_line(p: poplib.POP3, timeout: float = 10.0) -> tuple[bytes, float]:
    p.sock.settimeout(timeout)
    return p.file.readline().rstrip(), time.monotonic()


def still_alive(c: imaplib.IMAP4) -> bool:
    c.sock.settimeout(10)
    try:
        return c.noop()[0] == "OK"
    except (imaplib.IMAP4.abort, OSError):
        return False


def idle_chat(inst, email: str, secret: str) -> Chat:  # type: ignore[no-untyped-def]
    ch = Chat(inst.ports["imaps"], tls=True, timeout=15)
    ch.login(email, secret)
    ch.send("S SELECT INBOX")
    assert ch.tagged("S")[0].startswith(b"S OK")
    ch.send("I IDLE")
    ch.expect(rb"\+ ")
    return ch


def test_password_change_from_the_cli_ends_imap_pop3_and_idle_sessions(server, user) -> None:
    inst = server.inst
    plain = imap(inst, user)
    starttls = imap(inst, user, implicit=False)
    ok(starttls.select("INBOX"))
    idler = idle_chat(inst, user, PASSWORD)
    pop = pop3(inst, user)
    assert pop.stat() == (0, 0)
    t0 = time.monotonic()
    r = inst.cli("user", "passwd", user, "--password-stdin", input=b"Brand-new-Pa55word\n")
    assert r.returncode == 0, r.stderr
    changed = time.monotonic()
    for c in (plain, starttls):
        line, when = bye_of(c)
        assert line.startswith(b"* BYE [EXPIRED]") and b"password" in line, line
        assert when - changed < BOUND, f"BYE {when - changed:.2f}s after the change"
    line = idler.expect(rb"\* BYE")
    assert b"[EXPIRED]" in line
    assert idler.closed()
    line, when = pop_line(pop)
    assert line.startswith(b"-ERR [AUTH]") and b"password" in line, line
    assert when - t0 < BOUND + 5
    assert pop.file.readline() == b""  # and the connection is closed
    with pytest.raises(imaplib.IMAP4.error):
        imap(inst, user)  # the old password fails
    with pytest.raises(poplib.error_proto):
        pop3(inst, user)
    fresh = imap(inst, user, "Brand-new-Pa55word")
    assert still_alive(fresh)
    fresh.logout()


def test_revoking_one_app_password_ends_only_its_sessions(server, user) -> None:
    inst = server.inst
    store = store_of(inst)
    phone = store.add_app_password(user, "phone")
    laptop = store.add_app_password(user, "laptop")
    by_phone = imap(inst, user, phone)
    by_phone_pop = pop3(inst, user, phone)
    by_laptop = imap(inst, user, laptop)
    by_password = imap(inst, user)
    r = inst.cli("user", "app-password", "revoke", user, "phone")
    assert r.returncode == 0, r.stderr
    changed = time.monotonic()
    line, when = bye_of(by_phone)
    assert line.startswith(b"* BYE [EXPIRED]") and b"app password" in line, line
    assert when - changed < BOUND
    line, _ = pop_line(by_phone_pop)
    assert line.startswith(b"-ERR [AUTH]"), line
    time.sleep(1.2)  # a few guard rounds: the others must survive them
    assert still_alive(by_laptop)
    assert still_alive(by_password)
    with pytest.raises(imaplib.IMAP4.error):
        imap(inst, user, phone)
    again = imap(inst, user, laptop)
    again.logout()
    for c in (by_laptop, by_password):
        c.logout()


def test_this_was_not_me_ends_every_session_but_the_password_still_works(server, user) -> None:
    inst = server.inst
    store = store_of(inst)
    code = store.add_app_password(user, "mail app")
    by_app = imap(inst, user, code)
    by_password = imap(inst, user)
    pop = pop3(inst, user)
    done = security.report_not_me(store, user, event_id=None, ip="127.0.0.1")
    changed = time.monotonic()
    assert done["app_passwords_revoked"] == 1
    line, when = bye_of(by_app)
    assert line.startswith(b"* BYE"), line
    assert when - changed < BOUND
    line, when = bye_of(by_password)  # the password still works, but this session may be the intruder's
    assert line.startswith(b"* BYE") and b"sessions were ended" in line, line
    assert when - changed < BOUND
    line, _ = pop_line(pop)
    assert line.startswith(b"-ERR"), line
    with pytest.raises(imaplib.IMAP4.error):
        imap(inst, user, code)
    fresh = imap(inst, user)  # the password was not changed: a new login is the user's own
    assert still_alive(fresh)
    time.sleep(1.2)
    assert still_alive(fresh)  # sessions after the report are not ended by it
    fresh.logout()


def test_disabling_and_deleting_end_sessions_with_the_reason(server, user) -> None:
    inst = server.inst
    c = imap(inst, user)
    pop = pop3(inst, user)
    r = inst.cli("user", "disable", user)
    assert r.returncode == 0, r.stderr
    changed = time.monotonic()
    line, when = bye_of(c)
    assert line.startswith(b"* BYE [CONTACTADMIN]") and b"disabled" in line, line
    assert when - changed < BOUND
    line, _ = pop_line(pop)
    assert line.startswith(b"-ERR [SYS/PERM]"), line
    r = inst.cli("user", "enable", user)
    assert r.returncode == 0, r.stderr
    c = imap(inst, user)
    r = inst.cli("user", "remove", user, "--yes")
    assert r.returncode == 0, r.stderr
    changed = time.monotonic()
    line, when = bye_of(c)
    assert line.startswith(b"* BYE [CONTACTADMIN]") and b"no longer exists" in line, line
    assert when - changed < BOUND


def test_requiring_app_passwords_ends_password_sessions_only(server, user) -> None:
    inst = server.inst
    store = store_of(inst)
    code = store.add_app_password(user, "client")
    by_password = imap(inst, user)
    by_app = imap(inst, user, code)
    store.directory.set_user_setting(user, "require_app_password", True)
    line, _ = bye_of(by_password)
    assert line.startswith(b"* BYE [EXPIRED]") and b"requires an app password" in line, line
    assert still_alive(by_app)
    by_app.logout()


def test_unrelated_changes_leave_sessions_alone(server, user) -> None:
    inst = server.inst
    store = store_of(inst)
    c = imap(inst, user)
    other = f"bystander-{uuid.uuid4().hex[:6]}@{inst.domain}"
    store.create_user(other, password=PASSWORD)
    store.set_password(other, "Another-Pa55word")  # someone else's password
    store.directory.update_user(user, name="Renamed")  # not a credential
    store.directory.set_user_setting(user, "vacation_note", "away")
    time.sleep(1.5)
    assert still_alive(c)
    c.logout()


def test_a_session_racing_the_change_is_not_missed(server, user) -> None:
    """Logins in flight while the password changes end too, unless they used the new one."""
    inst = server.inst
    store = store_of(inst)
    sessions = [imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=tls_context(), timeout=30) for _ in range(4)]
    for s in sessions[:2]:
        s.login(user, PASSWORD)
    store.set_password(user, "Raced-Pa55word")
    for s in sessions[2:]:
        s.login(user, "Raced-Pa55word")
    for s in sessions[:2]:
        assert bye_of(s)[0].startswith(b"* BYE [EXPIRED]")
    time.sleep(1.2)
    for s in sessions[2:]:
        assert still_alive(s)
        s.logout()


IN_PROCESS = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from concurrent.futures import ThreadPoolExecutor
    from appliance.config import load_config
    from appliance.runner import install_reactor
    from appliance.services import ServiceContext
    from storage.store import Store
    import logging

    async def main():
        cfg = load_config({config!r})
        store = Store.from_config(cfg)
        ex = ThreadPoolExecutor(4)
        import imapd.service
        ctx = ServiceContext(cfg=cfg, store=store, executor=ex, ssl_context=None, log=logging.getLogger("t"))
        svc = await imapd.service.start(ctx)
        svc.shared.guard.interval = 600  # no polling to speak of: only this process's own changes wake the guard
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                break
            email, new = line.split()
            await loop.run_in_executor(ex, store.set_password, email, new)  # as the panel does, in this process
            print("changed", flush=True)
        await svc.stop()
        store.close()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    install_reactor(loop)
    loop.run_until_complete(main())
""")


def test_a_change_made_in_the_serving_process_ends_sessions_at_once(tmp_path_factory) -> None:
    """The panel runs in the same process as imapd under ``appliance up``: no wait for a poll."""
    from conftest import ROOT, create_test_instance

    inst = create_test_instance(tmp_path_factory.mktemp("inproc"))
    email = f"inproc@{inst.domain}"
    store_of(inst).create_user(email, password=PASSWORD)
    script = IN_PROCESS.format(root=str(ROOT), config=str(inst.config_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
        c = imap(inst, email)
        pop = pop3(inst, email)
        proc.stdin.write(f"{email} Panel-set-Pa55word\n".encode())
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"changed"
        changed = time.monotonic()
        line, when = bye_of(c)
        assert line.startswith(b"* BYE [EXPIRED]"), line
        assert when - changed < BOUND
        assert pop_line(pop)[0].startswith(b"-ERR [AUTH]")
    finally:
        proc.stdin.close()
        proc.wait(20)
