"""imapd in its own process (the systemd layout) teaches the spam filter from Junk moves.

``appliance up --service imapd`` runs without the antispam service, so the
IMAP service attaches a learner of its own. The rspamd controller here is a
small HTTP server of the test that records what it is taught (the real
rspamd end-to-end test lives in test_antispam_learning.py).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import Server, create_test_instance, free_port
from imapkit import PASSWORD, imap, message, ok, store_of


class Controller(BaseHTTPRequestHandler):
    learned: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.learned.append((self.path, self.headers.get("Password") or "", body))
        reply = b'{"success": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def controller():
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Controller)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _wait_for(pred, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    return pred()


def test_imapd_alone_learns_from_moves_into_and_out_of_junk(tmp_path_factory, controller) -> None:
    url = f"http://127.0.0.1:{controller.server_address[1]}"
    inst = create_test_instance(tmp_path_factory.mktemp("learn"), overrides={
        "antispam.enabled": True, "antispam.url": f"http://127.0.0.1:{free_port()}", "antispam.controller_url": url})
    cfg = inst.config()
    secret_file = cfg.antispam.controller_password_file
    from pathlib import Path

    Path(secret_file).parent.mkdir(parents=True, exist_ok=True)
    Path(secret_file).write_text("controller-secret\n")
    email = f"learner@{inst.domain}"
    store_of(inst).create_user(email, password=PASSWORD)
    srv = Server(inst, services=["imapd"])
    try:
        c = imap(inst, email)
        spam = message("cheap pills", "Buy cheap pills now, unique-spam-token-4711.\r\n")
        ok(c.append("INBOX", None, None, spam))
        ok(c.select("INBOX"))
        typ, data = c.uid("MOVE", "1:*", "Junk")
        assert typ == "OK", data
        got = _wait_for(lambda: [x for x in Controller.learned if x[0] == "/learnspam"])
        assert got, f"rspamd was not taught; server log:\n{srv.log()}"
        path, password, body = got[0]
        assert password == "controller-secret"
        assert b"unique-spam-token-4711" in body
        ok(c.select("Junk"))
        typ, data = c.uid("MOVE", "1:*", "INBOX")
        assert typ == "OK", data
        ham = _wait_for(lambda: [x for x in Controller.learned if x[0] == "/learnham"])
        assert ham and b"unique-spam-token-4711" in ham[0][2]
        # a move between two ordinary folders teaches nothing
        before = len(Controller.learned)
        ok(c.create("Projects"))
        ok(c.select("INBOX"))
        ok(c.uid("MOVE", "1:*", "Projects"))
        time.sleep(1.0)
        assert len(Controller.learned) == before
        c.logout()
    finally:
        assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log()
