"""Limits from [imap] on an instance of their own (connections per user and per IP), and
the Junk move hook reached by IMAP MOVE and by COPY, with a server started in a script."""

from __future__ import annotations

import imaplib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, Server
from imapkit import PASSWORD, Chat, account, imap, message, ok


@pytest.fixture(scope="module")
def limited(tmp_path_factory):  # type: ignore[no-untyped-def]
    from conftest import create_test_instance

    inst = create_test_instance(tmp_path_factory.mktemp("limits"), overrides={
        "imap.max_connections_per_user": 3,
        "imap.max_connections_per_ip": 6,
    })
    srv = Server(inst, services=["imapd"])
    yield inst
    srv.stop()


def test_connections_per_user(limited) -> None:
    user = account(limited, "limit-user")
    other = account(limited, "limit-other")
    held = [imap(limited, user) for _ in range(3)]
    ch = Chat(limited.ports["imaps"], tls=True)
    ch.expect(r"\* OK")
    ch.send(f'a LOGIN "{user}" "{PASSWORD}"')
    assert ch.tagged("a")[0].startswith(b"a NO [LIMIT]")
    ch.send(f'b LOGIN "{other}" "{PASSWORD}"')  # another account on the same connection is fine
    assert ch.tagged("b")[0].startswith(b"b OK")
    ch.close()
    held.pop().logout()
    time.sleep(0.2)
    imap(limited, user).logout()  # a slot came free
    for c in held:
        c.logout()


def test_connections_per_ip(limited) -> None:
    time.sleep(0.3)  # let the previous test's connections close
    chats = []
    for _ in range(6):
        ch = Chat(limited.ports["imaps"], tls=True)
        ch.expect(r"\* OK")
        chats.append(ch)
    extra = Chat(limited.ports["imap"])
    assert extra.readline().startswith(b"* BYE [UNAVAILABLE]")
    assert extra.closed()
    for ch in chats:
        ch.close()
    time.sleep(0.3)
    ch = Chat(limited.ports["imaps"], tls=True)
    assert ch.readline().startswith(b"* OK")
    ch.close()


HOOK_SERVER = textwrap.dedent("""
    import asyncio, json, sys
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
        out = open({log!r}, "a")

        def hook(user, src, dst, uids):
            out.write(json.dumps([user.email, src.name, dst.name, uids]) + "\\n")
            out.flush()

        store.add_move_hook(hook)
        ex = ThreadPoolExecutor(4)
        import imapd.service
        ctx = ServiceContext(cfg=cfg, store=store, executor=ex, ssl_context=None, log=logging.getLogger("t"))
        svc = await imapd.service.start(ctx)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await svc.stop()
        store.close()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    install_reactor(loop)
    loop.run_until_complete(main())
""")


def test_junk_moves_and_copies_reach_the_move_hook(tmp_path_factory) -> None:
    from conftest import create_test_instance
    from imapkit import tls_context

    inst = create_test_instance(tmp_path_factory.mktemp("hook"))
    log = inst.path / "moves.jsonl"
    script = HOOK_SERVER.format(root=str(ROOT), config=str(inst.config_path), log=str(log))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
        user = account(inst, "junk")
        c = imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=tls_context())
        ok(c.login(user, PASSWORD))
        for i in range(3):
            ok(c.append("INBOX", None, None, message(f"spam {i}")))
        ok(c.select("INBOX"))
        ok(c._simple_command("UID", "MOVE", "1", "Junk"))  # MOVE into Junk
        ok(c.uid("COPY", "2", "Junk"))  # COPY into Junk, as older clients do
        ok(c.uid("COPY", "3", "Archive"))  # nothing to do with Junk: no hook
        ok(c.select("Junk"))
        ok(c.uid("COPY", "1", "INBOX"))  # COPY out of Junk
        c.logout()
        time.sleep(0.2)
        moves = [json.loads(x) for x in log.read_text().splitlines()]
        assert moves == [[user, "INBOX", "Junk", [1]], [user, "INBOX", "Junk", [2]], [user, "Junk", "INBOX", [1]]]
    finally:
        proc.stdin.close()
        proc.wait(20)


def test_clean_stop_says_bye_to_sessions(tmp_path_factory) -> None:
    from conftest import create_test_instance

    inst = create_test_instance(tmp_path_factory.mktemp("stop"))
    srv = Server(inst, services=["imapd"])
    user = account(inst, "stopper")
    idle = Chat(inst.ports["imaps"], tls=True)
    idle.login(user)
    idle.send("s SELECT INBOX")
    idle.tagged("s")
    idle.send("i IDLE")
    idle.expect(r"\+ ")
    pop = Chat(inst.ports["pop3s"], tls=True)
    pop.expect(r"\+OK")
    start = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - start < 10
    assert idle.closed() and b"* BYE Server shutting down" in idle.buf
    assert pop.closed()
