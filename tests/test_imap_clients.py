"""Real clients from Debian against the server: mutt (batch mode and a scripted session),
mbsync (isync) and offlineimap3 syncing both ways until both sides hold the same mail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from imapkit import PASSWORD, account, fetch_map, imap, message, ok

pytestmark = pytest.mark.skipif(not all(shutil.which(x) for x in ("mutt", "mbsync", "offlineimap", "script")),
                                reason="mutt, isync and offlineimap3 (Debian) are needed")


@pytest.fixture(scope="module")
def inst(server):  # type: ignore[no-untyped-def]
    return server.inst


Mail = list[tuple[bytes, frozenset[str]]]


def server_mail(inst, user: str) -> dict[str, Mail]:  # type: ignore[no-untyped-def]
    """folder -> sorted [(normalised message, flags)] on the server: a duplicate counts twice."""
    c = imap(inst, user)
    out = {}
    for line in ok(c.list()):
        name = re.search(rb'"/" "?([^"]+)"?$', line).group(1).decode()
        n = int(ok(c.select(name, readonly=True))[0])
        out[name] = []
        if n:
            fetched = fetch_map(ok(c.fetch("1:*", "(FLAGS BODY.PEEK[])")))
            assert len(fetched) == n, (name, n, len(fetched))
            for v in fetched.values():
                out[name].append((norm(v["BODY[]"]), frozenset(f for f in v["FLAGS"] if f != "\\Recent")))
        out[name].sort()
    c.logout()
    return out


def same_everywhere(local: Path, srv: dict[str, Mail]) -> None:
    """Every server folder is a local Maildir with the same messages (bytes and flags), and the other way round."""
    here = {str(p.parent.relative_to(local)) for p in local.rglob("cur") if p.is_dir()}
    assert here == set(srv), (sorted(here), sorted(srv))
    for folder, mail in srv.items():
        assert maildir_mail(local / folder) == mail, folder


def norm(raw: bytes) -> bytes:
    """Line ends as Maildir keeps them; without the X-TUID header mbsync adds to what it copies."""
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", raw.replace(b"\r\n", b"\n"), count=1)


MAILDIR_FLAGS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered", "T": "\\Deleted", "D": "\\Draft"}


def maildir_mail(folder: Path) -> Mail:
    out = []
    for sub in ("cur", "new"):
        for f in (folder / sub).glob("*") if (folder / sub).is_dir() else []:
            info = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
            out.append((norm(f.read_bytes()), frozenset(MAILDIR_FLAGS[ch] for ch in info if ch in MAILDIR_FLAGS)))
    return sorted(out)


def deliver_maildir(folder: Path, raw: bytes, flags: str = "") -> Path:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time():.6f}.{os.getpid()}.test"
    path = folder / ("cur" if flags else "new") / (name + (f":2,{flags}" if flags else ""))
    path.write_bytes(raw.replace(b"\r\n", b"\n"))
    return path


def seed(inst, user: str) -> None:  # type: ignore[no-untyped-def]
    c = imap(inst, user)
    ok(c.create("Projects"))
    ok(c.append("INBOX", None, None, message("inbox one", "Hello from the server.\r\n")))
    ok(c.append("INBOX", "(\\Seen)", None, message("inbox two", "Already read.\r\n")))
    ok(c.append("Projects", "(\\Flagged)", None, message("project plan", "Milestones.\r\n")))
    c.logout()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


# ------------------------------------------------------------------ mutt


def muttrc(inst, user: str, home: Path) -> Path:  # type: ignore[no-untyped-def]
    rc = home / "muttrc"
    rc.write_text(f"""
set folder="imaps://127.0.0.1:{inst.ports['imaps']}/"
set imap_user="{user}"
set imap_pass="{PASSWORD}"
set certificate_file="{inst.path / 'tls' / 'cert.pem'}"
set spoolfile="+INBOX"
set record="+Sent"
set sendmail="/bin/true"
set copy=yes
set from="{user}"
set use_from=yes
set mail_check=0
set quit=yes
set confirmappend=no
set confirmcreate=no
set move=no
set header_cache=""
""")
    return rc


def test_mutt_batch_send_files_to_sent_and_scripted_copy(inst, tmp_path) -> None:
    user = account(inst, "mutt")
    c = imap(inst, user)
    ok(c.append("INBOX", None, None, message("tangerine report", "for mutt\r\n")))
    ok(c.append("INBOX", None, None, message("other", "not this one\r\n")))
    c.logout()
    rc = muttrc(inst, user, tmp_path)
    env = dict(os.environ, HOME=str(tmp_path), TERM="xterm")
    run(["mutt", "-n", "-F", str(rc), "-s", "mutt batch subject", "someone@example.test"], input=b"Sent by mutt.\n", env=env)
    keys = "<tag-pattern>~s tangerine<enter><tag-prefix><copy-message>=Archive<enter><sync-mailbox><quit>"
    run(["script", "-qec", f"mutt -n -F {rc} -e 'push \"{keys}\"'", "/dev/null"], env=env, stdin=subprocess.DEVNULL)
    mail = server_mail(inst, user)
    sent = [raw for raw, _f in mail["Sent"]]
    assert len(sent) == 1 and b"Subject: mutt batch subject" in sent[0] and b"Sent by mutt." in sent[0]
    assert b"To: someone@example.test" in sent[0] and f"<{user}>".encode() in sent[0]
    archived = [raw for raw, _f in mail["Archive"]]
    assert len(archived) == 1 and b"Subject: tangerine report" in archived[0] and b"for mutt" in archived[0]
    inbox = [raw for raw, _f in mail["INBOX"]]
    assert len(inbox) == 2 and archived[0] in inbox  # a copy, byte for byte; the original stays


# ---------------------------------------------------------------- mbsync


def test_mbsync_both_ways(inst, tmp_path) -> None:
    user = account(inst, "mbsync")
    seed(inst, user)
    local = tmp_path / "Mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount test
Host 127.0.0.1
Port {inst.ports['imaps']}
User {user}
Pass {PASSWORD}
SSLType IMAPS
CertificateFile {inst.path / 'tls' / 'cert.pem'}

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel test
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
""")
    env = dict(os.environ, HOME=str(tmp_path))
    run(["mbsync", "-c", str(rc), "-a"], env=env)
    srv = server_mail(inst, user)
    same_everywhere(local, srv)
    assert len(srv["INBOX"]) == 2 and len(srv["Projects"]) == 1
    # local -> server: a new message, a flag change, a new folder
    deliver_maildir(local / "Projects", message("written offline", "Drafted on the train.\r\n"), "S")
    deliver_maildir(local / "Travel", message("tickets", "Seat 42.\r\n"))
    first = next((local / "INBOX" / "cur").glob("*")) if list((local / "INBOX" / "cur").glob("*")) else next(
        (local / "INBOX" / "new").glob("*"))
    base = first.name.split(":2,")[0]
    first.rename(local / "INBOX" / "cur" / (base + ":2,FS"))
    # server -> local: a new message and an expunge
    c = imap(inst, user)
    ok(c.append("INBOX", None, None, message("arrived meanwhile", "New on the server.\r\n")))
    ok(c.select("Projects"))
    ok(c.store("1", "+FLAGS", "(\\Deleted)"))
    ok(c.expunge())
    c.logout()
    run(["mbsync", "-c", str(rc), "-a"], env=env)
    srv = server_mail(inst, user)
    same_everywhere(local, srv)
    assert len(srv["INBOX"]) == 3 and len(srv["Projects"]) == 1 and len(srv["Travel"]) == 1
    assert any(f == {"\\Flagged", "\\Seen"} for _raw, f in srv["INBOX"])
    assert b"Drafted on the train." in srv["Projects"][0][0] and srv["Projects"][0][1] == {"\\Seen"}
    assert b"Seat 42." in srv["Travel"][0][0]
    # a third run with nothing new changes nothing on either side
    run(["mbsync", "-c", str(rc), "-a"], env=env)
    assert server_mail(inst, user) == srv
    same_everywhere(local, srv)


# ------------------------------------------------------------ offlineimap3


def test_offlineimap_both_ways(inst, tmp_path) -> None:
    user = account(inst, "offlineimap")
    seed(inst, user)
    local = tmp_path / "Mail"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""
[general]
accounts = test
metadata = {tmp_path / 'meta'}
ui = quiet

[Account test]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}
sep = /

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {inst.ports['imaps']}
remoteuser = {user}
remotepass = {PASSWORD}
ssl = yes
sslcacertfile = {inst.path / 'tls' / 'cert.pem'}
createfolders = True
""")
    env = dict(os.environ, HOME=str(tmp_path))
    run(["offlineimap", "-c", str(rc), "-o", "-u", "quiet"], env=env)
    srv = server_mail(inst, user)
    same_everywhere(local, srv)
    assert len(srv["INBOX"]) == 2 and len(srv["Projects"]) == 1
    deliver_maildir(local / "Projects", message("offline note", "Written locally.\r\n"), "F")
    victim = next(iter((local / "INBOX" / "cur").glob("*")))
    victim.unlink()  # deleting locally deletes on the server
    c = imap(inst, user)
    ok(c.append("Projects", "(\\Answered)", None, message("server side", "Came in later.\r\n")))
    c.logout()
    run(["offlineimap", "-c", str(rc), "-o", "-u", "quiet"], env=env)
    srv = server_mail(inst, user)
    same_everywhere(local, srv)
    assert len(srv["INBOX"]) == 1 and len(srv["Projects"]) == 3
    assert {f for _raw, f in srv["Projects"]} >= {frozenset({"\\Flagged"}), frozenset({"\\Answered"})}
    assert any(b"Written locally." in raw for raw, _f in srv["Projects"])
    # a run with nothing new changes nothing on either side
    run(["offlineimap", "-c", str(rc), "-o", "-u", "quiet"], env=env)
    assert server_mail(inst, user) == srv
    same_everywhere(local, srv)
