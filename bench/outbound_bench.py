#!/usr/bin/env python3
"""Outbound delivery benchmark: queued-to-delivered msg/s to a loopback peer, ours beside Postfix.

    .venv/bin/python bench/outbound_bench.py                   # 2000 x 4 KB, 10 connections, with Postfix
    .venv/bin/python bench/outbound_bench.py --count 500 --no-reference

The peer: an aiosmtpd sink in its own process on 127.0.0.1 that counts the
messages it accepted (the same peer for both MTAs).

Ours: a throw-away instance (fsync on) whose queue is filled while the MTA
is down (N messages of ~4 KB from a local user, as submission would queue
them, so each is DKIM-signed with Ed25519 + RSA-2048 at send time); then
``appliance up --service mta`` starts and the clock runs from its "ready"
line to the peer's count reaching N. MX lookups go to a fake DNS server
(peer.test MX -> 127.0.0.1), queue.remote_port is the peer's port,
queue.max_per_domain is --conns. Run once with DKIM and once without.

Postfix (../shared/anchors/reference-stack.sh, a private instance on port
10026 under /tmp/refstack-outbound): relayhost = [127.0.0.1]:PEER,
smtp destination concurrency = --conns. The queue is filled over SMTP with
``defer_transports = smtp`` (nothing leaves), then defer_transports is
cleared, postfix reloaded and ``postqueue -f`` run; the clock runs from the
flush to the peer's count reaching N. Postfix does not DKIM-sign (no
milter installed): its figure is the unsigned one.

Prints msg/s for each and the ratio ours/Postfix. ``--json FILE`` appends the results.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = Path(os.environ.get("ANCHORS", ROOT.parent / "shared" / "anchors"))
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

REF_ENV = {"REFSTACK_ROOT": "/tmp/refstack-outbound", "REFMAIL": "/tmp/refmail-outbound", "SMTP_PORT": "10026",
           "IMAP_PORT": "10144", "NUSERS": "2"}
WORDS = "the quarterly report meeting budget project server update review customer invoice schedule".split()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the peer


def run_sink(port: int, countfile: str) -> None:
    from aiosmtpd.controller import Controller

    class Sink:
        n = 0

        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            Sink.n += 1
            return "250 2.0.0 OK"

    Controller(Sink(), hostname="127.0.0.1", port=port, server_hostname="peer.test").start()
    last = -1
    while True:
        if Sink.n != last:
            last = Sink.n
            tmp = countfile + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(last))
            os.replace(tmp, countfile)
        time.sleep(0.02)


class PeerProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.countfile = tempfile.mktemp(prefix="outbound-bench-count-")
        self.proc = subprocess.Popen([sys.executable, __file__, "--sink", str(self.port), self.countfile])
        deadline = time.monotonic() + 15
        while not os.path.exists(self.countfile):
            if time.monotonic() > deadline:
                raise RuntimeError("peer did not start")
            time.sleep(0.05)

    def count(self) -> int:
        try:
            return int(Path(self.countfile).read_text() or 0)
        except (OSError, ValueError):
            return 0

    def wait(self, target: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.count() < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer has {self.count()} of {target} after {timeout}s")
            time.sleep(0.01)
        return time.monotonic()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        Path(self.countfile).unlink(missing_ok=True)


def message(i: int, size: int, sender: str) -> bytes:
    line = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) + "\r\n"
    body = line * max(1, (size - 300) // len(line))
    return (f"From: {sender}\r\nTo: user{i % 100}@peer.test\r\nSubject: outbound bench {i}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{i}.{time.time_ns()}@bench.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


# ---------------------------------------------------------------- ours


def run_ours(args: argparse.Namespace, peer: PeerProcess, *, dkim: bool) -> dict:
    from conftest import Server, create_test_instance
    from dnsserver import FakeDNS

    from mta.queue import OutboundQueue

    dns = FakeDNS(ttl=300)
    dns.set("peer.test", "MX", "10 mx.peer.test.")
    dns.set("mx.peer.test", "A", "127.0.0.1")
    tmp = Path(tempfile.mkdtemp(prefix="outbound-bench-"))
    inst = create_test_instance(tmp / "inst", overrides={
        "dns.resolvers": ["127.0.0.1"], "dns.port": dns.port, "queue.hold": False, "queue.remote_port": peer.port,
        "queue.max_per_domain": args.conns, "queue.mta_sts": False, "dkim.enabled": dkim})
    try:
        store = inst.store()
        queue = OutboundQueue(store, inst.path / "queue")
        sender = "alice@example.test"
        for i in range(args.count):
            queue.enqueue(sender, [f"user{i % 100}@peer.test"], message(i, args.size, sender), meta={"auth": sender})
        store.close()
        base = peer.count()
        srv = Server(inst, services=["mta"])
        start = time.monotonic()  # Server() returns at the "ready" line
        end = peer.wait(base + args.count, args.timeout)
        srv.stop()
        left = len(os.listdir(inst.path / "queue" / "ready"))
        return {"mta": "ours", "dkim": dkim, "count": args.count, "seconds": round(end - start, 3),
                "msg_per_s": round(args.count / (end - start), 1), "left_in_queue": left}
    finally:
        dns.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


# ---------------------------------------------------------------- Postfix


def _ref(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ANCHORS / "reference-stack.sh"), *cmd], env={**os.environ, **REF_ENV},
                          capture_output=True, text=True, timeout=120)


def _postconf(*settings: str) -> None:
    conf = Path(REF_ENV["REFSTACK_ROOT"]) / "etc" / "postfix"
    subprocess.run(["postconf", "-c", str(conf), "-e", *settings], check=True, capture_output=True)
    subprocess.run(["postfix", "-c", str(conf), "reload"], check=True, capture_output=True)


def run_postfix(args: argparse.Namespace, peer: PeerProcess) -> dict:
    conf = Path(REF_ENV["REFSTACK_ROOT"]) / "etc" / "postfix"
    if not conf.exists():
        r = _ref("install")
        if r.returncode:
            raise RuntimeError(f"reference-stack.sh install failed: {r.stderr[-500:]}")
    r = _ref("start")
    if r.returncode:
        raise RuntimeError(f"reference-stack.sh start failed: {r.stderr[-500:]}")
    try:
        _postconf(f"relayhost = [127.0.0.1]:{peer.port}", "defer_transports = smtp",
                  f"smtp_destination_concurrency_limit = {args.conns}", f"initial_destination_concurrency = {args.conns}",
                  "smtp_tls_security_level = none", "smtp_connection_cache_on_demand = yes")
        port = int(REF_ENV["SMTP_PORT"])
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            for i in range(args.count):
                c.sendmail("bench@bench.test", [f"user{i % 100}@peer.test"], message(i, args.size, "bench@bench.test"))
        queue_dir = Path(REF_ENV["REFSTACK_ROOT"]) / "spool" / "postfix"

        def queued() -> int:
            return sum(len(files) for sub in ("incoming", "active", "deferred") for _r, _d, files in os.walk(queue_dir / sub))

        deadline = time.monotonic() + 60
        while queued() < args.count and time.monotonic() < deadline:
            time.sleep(0.1)
        base = peer.count()
        _postconf("defer_transports =")
        start = time.monotonic()
        subprocess.run(["postqueue", "-c", str(conf), "-f"], check=True, capture_output=True)
        end = peer.wait(base + args.count, args.timeout)
        return {"mta": "postfix", "dkim": False, "count": args.count, "seconds": round(end - start, 3),
                "msg_per_s": round(args.count / (end - start), 1)}
    finally:
        _postconf("relayhost =", "defer_transports =")
        _ref("stop")


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--conns", type=int, default=10, help="connections to the peer (both MTAs)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--no-reference", action="store_true", help="skip Postfix")
    p.add_argument("--json", help="append the results as JSON lines to this file")
    p.add_argument("--sink", nargs=2, metavar=("PORT", "COUNTFILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sink:
        run_sink(int(args.sink[0]), args.sink[1])
        return 0
    peer = PeerProcess()
    results = []
    try:
        results.append(run_ours(args, peer, dkim=True))
        results.append(run_ours(args, peer, dkim=False))
        if not args.no_reference:
            try:
                results.append(run_postfix(args, peer))
            except Exception as exc:  # noqa: BLE001 - report ours anyway
                print(f"Postfix run failed: {exc}", file=sys.stderr)
    finally:
        peer.close()
    print(f"\nqueued -> delivered, {args.count} messages of ~{args.size} B, {args.conns} connections to one loopback peer")
    print(f"{'MTA':<10}{'DKIM':<8}{'seconds':>10}{'msg/s':>10}")
    for r in results:
        print(f"{r['mta']:<10}{('Ed25519+RSA' if r['dkim'] else 'none'):<8}{r['seconds']:>10}{r['msg_per_s']:>10}")
    pf = next((r for r in results if r["mta"] == "postfix"), None)
    if pf:
        for r in results:
            if r["mta"] == "ours":
                print(f"ratio ours/Postfix ({'signed' if r['dkim'] else 'unsigned'}): {r['msg_per_s'] / pf['msg_per_s']:.2f}")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps({**r, "size": args.size, "conns": args.conns, "ts": time.time()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
