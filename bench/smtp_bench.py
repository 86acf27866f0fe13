#!/usr/bin/env python3
"""SMTP delivery benchmark: our MTA beside Postfix + Dovecot, same load, same machine.

    .venv/bin/python bench/smtp_bench.py                 # 1/10/50 connections x 4 KB/100 KB
    .venv/bin/python bench/smtp_bench.py --count 500 --conns 10 --sizes 4096 --no-reference

Ours: a throw-away instance (domain bench.test, user0..user99, encrypted
store, fsync on, SPF/DKIM/DMARC checks on port 25 against a local fake DNS
server) running ``appliance up --service mta`` with ``--workers`` SMTP
worker processes (smtp.workers; default "auto", one per core; 1 is the
single-process server). A 250 from it means the
message is encrypted, fsynced and indexed, so its delivered rate is its
accepted rate; the bench checks the store holds exactly the accepted count.

Reference: Postfix 3.7 + Dovecot LMTP from ../shared/anchors/reference-stack.sh
(``install`` then ``start``); delivered is counted in its maildir.

The load generator is ../shared/anchors/smtp_load.py (imported), with
PIPELINING, one connection kept per worker, recipients rotating over 100
users. Prints a table with msg/s, p50/p99 latency and the ratio ours/theirs,
and the peak RSS of both sides. ``--json FILE`` appends the raw results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = Path(os.environ.get("ANCHORS", ROOT.parent / "shared" / "anchors"))
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ANCHORS)]

import smtp_load  # noqa: E402  (../shared/anchors, read-only)

NUSERS = 100
DOMAIN = "bench.test"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ memory


class RssWatch:
    """Peak summed RSS of process trees, sampled every 0.2 s in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        import rss_watch

        table = rss_watch.proc_table()
        return sum(table[p][1] for root in self.pids for p in rss_watch.tree(table, root) if p in table)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.sample())
            self._stop.wait(0.2)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ ours


class Ours:
    def __init__(self, keep: bool = False, workers: str = "auto") -> None:
        from dnsserver import FakeDNS

        from appliance.instance import create_instance

        self.dns = FakeDNS(negative_ttl=300)  # like a caching resolver: NXDOMAIN for load.example is cached
        self.dir = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
        self.keep = keep
        self.port = free_port()
        listeners = {"mx": {"protocol": "smtp", "bind": f"127.0.0.1:{self.port}", "tls": "starttls"}}
        inst = create_instance(
            self.dir, domain=DOMAIN, dev=True, demo_accounts=False,
            config_overrides={
                "listeners": listeners,
                "antispam.enabled": False,
                "smtp.max_connections_per_ip": 500,
                "smtp.workers": workers if workers == "auto" else int(workers),
                "dns.resolvers": ["127.0.0.1"],
                "dns.port": self.dns.port,
                "auth.argon2_time_cost": 1,
                "auth.argon2_memory_cost_kib": 8192,
                "auth.argon2_parallelism": 1,
                "log.level": "warning",
            },
        )
        self.config = inst.config_path
        store = self.store()
        try:
            for i in range(NUSERS):
                store.create_user(f"user{i}@{DOMAIN}", password="pass")
        finally:
            store.close()
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "-c", str(self.config), "up", "--service", "mta"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while b"ready;" not in (self.dir / "server.log").read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("our server did not start:\n" + (self.dir / "server.log").read_text())
            time.sleep(0.1)

    def store(self):  # type: ignore[no-untyped-def]
        from appliance.config import load_config
        from storage.store import Store

        return Store.from_config(load_config(self.config))

    def count(self) -> int:
        store = self.store()
        try:
            total = 0
            for i in range(NUSERS):
                user = store.directory.get_user(f"user{i}@{DOMAIN}")
                total += store.mail.status(store.mail.get_mailbox(user.id, "INBOX").id).messages
            return total
        finally:
            store.close()

    def vm_hwm_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.dns.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ the reference


class Reference:
    script = ANCHORS / "reference-stack.sh"

    def __init__(self) -> None:
        subprocess.run([str(self.script), "install"], check=True, capture_output=True)
        subprocess.run([str(self.script), "start"], check=True, capture_output=True)
        self.port = int(os.environ.get("SMTP_PORT", 10025))
        self.maildir = os.environ.get("REFMAIL", "/tmp/refmail")

    def pids(self) -> list[int]:
        root = Path(os.environ.get("REFSTACK_ROOT", "/tmp/refstack"))
        out = []
        for f in (root / "spool/postfix/pid/master.pid", root / "run/dovecot/master.pid"):
            try:
                out.append(int(f.read_text().strip()))
            except (OSError, ValueError):
                pass
        return out

    def close(self) -> None:
        subprocess.run([str(self.script), "stop"], capture_output=True)


# ------------------------------------------------------------------ running loads


def load(port: int, *, count: int, conns: int, size: int, wait_maildir: str | None = None) -> dict:
    args = argparse.Namespace(
        host="127.0.0.1", port=port, count=count, concurrency=min(conns, count), size=size,
        rcpt="user{i}@" + DOMAIN, rcpt_range=(0, NUSERS - 1), mail_from="loadgen@load.example",
        subject="Load test message", msgs_per_conn=0, no_pipelining=False, engine="raw",
        wait_maildir=wait_maildir, wait_cmd=None, poll=0.05, timeout=600, wait_timeout=300, seed=1,
    )
    return asyncio.run(smtp_load.main_async(args))


def ours_row(server: Ours, *, count: int, conns: int, size: int) -> dict:
    before = server.count()
    res = load(server.port, count=count, conns=conns, size=size)
    stored = server.count() - before
    if stored != res["accepted"]:
        raise SystemExit(f"store holds {stored} new messages, {res['accepted']} were accepted")
    res["delivered"] = stored
    res["deliver_rate"] = res["accept_rate"]  # 250 = encrypted, fsynced and indexed
    return res


def fmt(r: dict | None) -> str:
    if not r:
        return f"{'-':>8} {'-':>7} {'-':>8}"
    return f"{r['deliver_rate'] or 0:8.1f} {r['lat_ms_p50'] or 0:7.1f} {r['lat_ms_p99'] or 0:8.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="messages per run (default 2000)")
    p.add_argument("--conns", default="1,10,50", help="concurrent connections, comma-separated")
    p.add_argument("--sizes", default="4096,102400", help="message sizes in bytes, comma-separated")
    p.add_argument("--no-reference", action="store_true", help="skip Postfix + Dovecot")
    p.add_argument("--keep", action="store_true", help="keep our instance directory")
    p.add_argument("--workers", default="auto", help='our smtp.workers: "auto" (one per core) or a number; 1 is one process')
    p.add_argument("--json", help="append the raw results as JSON lines to this file")
    a = p.parse_args()
    conns = [int(x) for x in a.conns.split(",")]
    sizes = [int(x) for x in a.sizes.split(",")]

    ours = Ours(keep=a.keep, workers=a.workers)
    ref = None if a.no_reference else Reference()
    rows = []
    try:
        load(ours.port, count=100, conns=10, size=4096)  # warm up both
        if ref:
            load(ref.port, count=100, conns=10, size=4096, wait_maildir=ref.maildir)
        idle_ours = ours.vm_hwm_kib()
        watch_ref = RssWatch(ref.pids()) if ref else None
        with RssWatch([ours.proc.pid]) as watch_ours:
            ctx = watch_ref or RssWatch([])
            with ctx:
                for size in sizes:
                    for c in conns:
                        mine = ours_row(ours, count=a.count, conns=c, size=size)
                        theirs = load(ref.port, count=a.count, conns=c, size=size, wait_maildir=ref.maildir) if ref else None
                        rows.append((size, c, mine, theirs))
                        print(f"  {size // 1024:>4} KB {c:>3} conns: ours {mine['deliver_rate']} msg/s"
                              + (f", reference {theirs['deliver_rate']} msg/s" if theirs else ""), flush=True)
                        if a.json:
                            with open(a.json, "a") as f:
                                f.write(json.dumps({"size": size, "conns": c, "ours": mine, "reference": theirs}) + "\n")
        print()
        print("Delivered msg/s, latency p50/p99 ms (accept to 250); ratio = ours / reference")
        print(f"{'size':>6} {'conns':>5} | {'ours':>8} {'p50':>7} {'p99':>8} | {'ref':>8} {'p50':>7} {'p99':>8} | {'ratio':>5}")
        for size, c, mine, theirs in rows:
            ratio = f"{mine['deliver_rate'] / theirs['deliver_rate']:5.2f}" if theirs and theirs.get("deliver_rate") else "    -"
            print(f"{size // 1024:>4}KB {c:>5} | {fmt(mine)} | {fmt(theirs)} | {ratio}")
        print()
        print(f"peak RSS, ours (smtp.workers = {a.workers}, summed over the service and its workers): "
              f"{watch_ours.peak_kib / 1024:.0f} MiB (service process idle after warm-up {idle_ours / 1024:.0f} MiB)")
        if watch_ref:
            print(f"peak RSS, reference (summed over its process trees): {watch_ref.peak_kib / 1024:.0f} MiB")
        failed = [r for r in rows if r[2]["failed"] or (r[3] and r[3]["failed"])]
        if failed:
            print(f"WARNING: {len(failed)} runs had failed messages")
    finally:
        ours.close()
        if ref:
            ref.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
