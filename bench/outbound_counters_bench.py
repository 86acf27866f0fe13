#!/usr/bin/env python3
"""Micro-benchmark of the outbound abuse counters (``antispam.outbound.record_submission``).

    .venv/bin/python bench/outbound_counters_bench.py [--calls 2000] [--threads 1,8] [--processes 2]

A throw-away instance under /tmp (SQLite, the default durable store) with
20 users; every call counts one submission to 3 recipients, as the MTA does
after each accepted message. Prints per-call latency (p50/p99) and calls/s
in one thread, in N threads of one process (the MTA's executor), and in
several processes at once (mta, imapd and panel are separate processes
under systemd), then checks no count was lost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

USERS = 20
LIMITS = {"messages_per_hour": 10**9, "recipients_per_hour": 10**9, "failures_per_hour": 10**9, "usual_factor": 0}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


def _calls(config_path: str, calls: int, offset: int, threads: int, out: Any = None) -> tuple[float, list[float]]:
    from antispam.outbound import Limits, record_submission
    from appliance.config import load_config
    from storage.store import Store

    store = Store.from_config(load_config(Path(config_path)))
    limits = Limits(**LIMITS)
    lat: list[float] = []
    lock = threading.Lock()
    per = calls // threads

    def run(t: int) -> None:
        mine = []
        for i in range(per):
            n = offset + t * per + i
            began = time.perf_counter()
            record_submission(store, f"user{n % USERS}@example.test", [f"r{n}@far.example", f"s{n % 7}@far.example",
                                                                      "boss@far.example"], limits=limits)
            mine.append(time.perf_counter() - began)
        with lock:
            lat.extend(mine)

    began = time.perf_counter()
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    store.close()
    if out is not None:
        out.put((elapsed, lat))
    return elapsed, lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--threads", default="1,8")
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()

    from conftest import create_test_instance

    from antispam.outbound import counters

    with tempfile.TemporaryDirectory(prefix="outbound-bench-") as tmp:
        inst = create_test_instance(Path(tmp) / "inst", demo=False)
        store = inst.store()
        for n in range(USERS):
            store.create_user(f"user{n}@example.test")
        total = 0
        print(f"{'mode':<24} {'calls':>6} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for threads in [int(t) for t in args.threads.split(",")]:
            elapsed, lat = _calls(str(inst.config_path), args.calls, total, threads)
            total += len(lat)
            print(f"{f'{threads} thread(s)':<24} {len(lat):>6} {len(lat) / elapsed:>9.0f} {pct(lat, 50):>8.2f} {pct(lat, 99):>8.2f}")
        if args.processes > 1:
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            per = args.calls // args.processes
            procs = [ctx.Process(target=_calls, args=(str(inst.config_path), per, total + k * per, 1, q))
                     for k in range(args.processes)]
            began = time.perf_counter()
            for p in procs:
                p.start()
            results = [q.get(timeout=600) for _ in procs]
            for p in procs:
                p.join()
            wall = time.perf_counter() - began
            elapsed = max(e for e, _ls in results)  # the slowest process's own time, without interpreter start-up
            lat = [x for _e, ls in results for x in ls]
            total += len(lat)
            print(f"{f'{args.processes} processes':<24} {len(lat):>6} {len(lat) / elapsed:>9.0f} {pct(lat, 50):>8.2f} "
                  f"{pct(lat, 99):>8.2f}  ({wall:.1f}s wall with start-up)")
        counted = sum(counters(store, f"user{n}@example.test")["messages"] for n in range(USERS))
        print(f"recorded {total}, counted {counted}: {'no count lost' if counted == total else f'{total - counted} LOST'}")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
