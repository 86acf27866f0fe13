"""Antispam benchmark: /checkv2 scan rate and latency with our generated rspamd config.

    python bench/antispam_bench.py [--messages 1000] [--concurrency 1,8] [--size 4096]

Starts the real antispam service (redis, the loopback unbound, rspamd) for a
throw-away instance under /tmp, then scans 4 KB messages:

* through ``Scanner.check`` (what the MTA calls: recipient policy lookup,
  HTTP to rspamd, verdict and headers) at each concurrency: messages/s and
  p50/p99 latency;
* through the bare HTTP client (``RspamdClient.check``) one at a time, and
  rspamd's own ``time_real``: the difference is the cost our layer adds per
  message; the CPU time of this process per message is the client's share.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from antispam import testing  # noqa: E402

WORDS = ("the quarterly report meeting budget project server update review customer invoice schedule planning "
         "network storage backup release notes please find attached below thanks regards team office monday "
         "deadline contract proposal analysis results summary draft final agenda minutes roadmap migration").split()


def make_message(i: int, size: int, rng: random.Random) -> bytes:
    head = (f"From: Sender {i} <sender{i % 50}@partner{i % 7}.example>\r\nTo: user{i % 10}@example.test\r\n"
            f"Subject: {' '.join(rng.choices(WORDS, k=5))}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <bench-{i}-{rng.getrandbits(48):x}@partner.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n")
    body: list[str] = []
    length = len(head)
    while length < size:
        line = " ".join(rng.choices(WORDS, k=12)) + "\r\n"
        body.append(line)
        length += len(line)
    return (head + "".join(body)).encode()[:size]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


async def scan_all(scanner, messages: list[bytes], concurrency: int) -> tuple[float, list[float], dict]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    actions: dict[str, int] = {}
    queue = list(enumerate(messages))

    async def worker() -> None:
        while queue:
            i, raw = queue.pop()
            t = time.perf_counter()
            v = await scanner.check(raw, mail_from=f"sender{i % 50}@partner{i % 7}.example", rcpts=[f"user{i % 10}@example.test"],
                                    ip=f"192.0.2.{i % 250 + 1}", helo="mx.partner.example", hostname="mx.partner.example",
                                    queue_id=f"B{i}")
            latencies.append(time.perf_counter() - t)
            actions[v.action] = actions.get(v.action, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(messages) / (time.perf_counter() - began), latencies, actions


async def raw_scans(client, messages: list[bytes]) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    latencies, server = [], []
    for i, raw in enumerate(messages):
        t = time.perf_counter()
        result = await client.check(raw, mail_from=f"sender{i % 50}@partner.example", rcpts=[f"user{i % 10}@example.test"],
                                    ip="192.0.2.7", helo="mx.partner.example", hostname="mx.partner.example")
        latencies.append(time.perf_counter() - t)
        server.append(float(result.get("time_real") or 0))
    return latencies, server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "d" / "rspamd-compiled"),
                    help="directory of rspamd's compiled regexps (the tests keep one)")
    args = ap.parse_args()

    from conftest import create_test_instance

    rng = random.Random(42)
    messages = [make_message(i, args.size, rng) for i in range(args.messages)]
    with tempfile.TemporaryDirectory(prefix="antispam-bench-") as tmp:
        inst = create_test_instance(Path(tmp) / "inst", overrides=testing.overrides(), demo=False)
        store = inst.store()
        try:
            for n in range(10):
                store.create_user(f"user{n}@example.test")
        finally:
            store.close()
        testing.seed_cache(inst.path, Path(args.cache))
        started = time.perf_counter()
        h = testing.Harness(inst.config())
        print(f"antispam service ready in {time.perf_counter() - started:.1f}s "
              f"(rspamd {h.service.daemons['rspamd'].pid}, resolver on 127.0.0.1:{h.cfg.antispam.dns_port})")
        try:
            # warm-up, until rspamd's hs_helper has compiled its regexps (no new files for 3 s)
            db = inst.path / "spam" / "db"
            stable_since, count, deadline = time.monotonic(), -1, time.monotonic() + 180
            while time.monotonic() < deadline:
                h.run(scan_all(h.scanner, messages[:50], 4), 300)
                now_count = len(list(db.glob("*.hs")))
                if now_count != count:
                    count, stable_since = now_count, time.monotonic()
                elif time.monotonic() - stable_since > 3:
                    break
            testing.save_cache(inst.path, Path(args.cache))
            print(f"{'path':<28} {'conc':>4} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}  actions")
            for conc in [int(c) for c in args.concurrency.split(",")]:
                cpu = time.process_time()
                rate, lat, actions = h.run(scan_all(h.scanner, messages, conc), 3600)
                cpu_per = (time.process_time() - cpu) / len(messages) * 1000
                print(f"{'Scanner.check':<28} {conc:>4} {rate:>8.0f} {pct(lat, 50):>8.1f} {pct(lat, 99):>8.1f}  "
                      f"{actions}  (this process: {cpu_per:.2f} ms CPU/msg)")
            cpu = time.process_time()
            lat, server = h.run(raw_scans(h.service.client, messages), 3600)
            cpu_per = (time.process_time() - cpu) / len(messages) * 1000
            print(f"{'RspamdClient.check (bare)':<28} {1:>4} {len(lat) / sum(lat):>8.0f} {pct(lat, 50):>8.1f} {pct(lat, 99):>8.1f}  "
                  f"(this process: {cpu_per:.2f} ms CPU/msg)")
            print(f"{'rspamd time_real':<28} {'':>4} {'':>8} {pct(server, 50):>8.1f} {pct(server, 99):>8.1f}")
            _rate, seq, _a = h.run(scan_all(h.scanner, messages, 1), 3600)
            print(f"added by Scanner over the bare client, p50: {pct(seq, 50) - pct(lat, 50):+.2f} ms; "
                  f"over rspamd's own time, p50: {pct(seq, 50) - statistics.median(server) * 1000:+.2f} ms")
        finally:
            h.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
