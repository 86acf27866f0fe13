"""Air-gapped: install and a mail round trip inside a network namespace that has only loopback.

Nothing the installer or the store does may need the internet; in a fresh
network namespace any attempt fails at once (no route), so a step that
needed it would fail here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

READ_BACK = textwrap.dedent("""
    import sys
    from appliance.config import load_config
    from storage.store import Store
    store = Store.from_config(load_config(sys.argv[1]))
    user = store.directory.get_user("admin@example.com")
    mb = store.mail.get_mailbox(user.id, "INBOX")
    sys.stdout.buffer.write(store.mail.read(user, store.mail.messages(mb.id)[0]))
    store.close()
""")


def _netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0


@pytest.mark.skipif(not _netns_available(), reason="needs root and unshare -n (a network namespace)")
def test_install_and_mail_round_trip_without_a_network(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = root / "etc/appliance/appliance.toml"
    (tmp_path / "read.py").write_text(READ_BACK)
    message = b"From: bob@remote.example\r\nTo: admin@example.com\r\nSubject: air-gapped\r\n\r\nno network needed\r\n"
    (tmp_path / "msg.eml").write_bytes(message)
    py = sys.executable
    script = f"""
        set -e
        ip link set lo up
        if ip -o link | grep -v ': lo:' | grep -q .; then echo "unexpected interface"; exit 9; fi
        {py} -m appliance install --root {root} --domain example.com --yes --mailboxes 10
        {py} -m appliance -c {config} deliver admin@example.com < {tmp_path / 'msg.eml'}
        {py} {tmp_path / 'read.py'} {config} > {tmp_path / 'out.eml'}
    """
    env = dict(os.environ, PYTHONPATH=str(REPO), APPLIANCE_LANG="en")
    p = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[9/9] DNS records and install report ... ok" in p.stdout
    assert "delivered to admin@example.com INBOX uid 1" in p.stdout
    assert (tmp_path / "out.eml").read_bytes() == message
