"""SORT and THREAD benchmark: our imapd against Dovecot on the same mailbox.

    .venv/bin/python bench/imap_sort_bench.py [--messages 10000] [--runs 3] [--no-dovecot] [--keep]
    .venv/bin/python bench/imap_sort_bench.py --reuse DIR   # an instance kept by an earlier run

Fills one mailbox of --messages messages (ours through the store API, Dovecot
as Maildir files: ``imap_bench.fill_big``, the synthetic corpus with replies
carrying In-Reply-To and References), then on a fresh connection times
SORT (DATE), SORT (SUBJECT), SORT (FROM), THREAD REFERENCES and THREAD
ORDEREDSUBJECT over ALL: the first run (our caches cold: the server never
read this mailbox), the median of --runs more on the same connection, and
the best of --runs new connections (the server warm, the session new). While one more THREAD
REFERENCES runs, a second connection sends NOOPs and the slowest answer is
shown: a long SORT or THREAD must not hold other sessions up.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_bench import (  # noqa: E402
    ANCHORS,
    Target,
    check,
    cpu_ms,
    fill_big,
    login,
    mailbox_size,
    reuse_ours,
    start_dovecot,
    start_ours,
)

BOX = "bench-sort"
OPS = {
    "sort_date": ("SORT", "(DATE)", "UTF-8", "ALL"),
    "sort_subject": ("SORT", "(SUBJECT)", "UTF-8", "ALL"),
    "sort_from": ("SORT", "(FROM)", "UTF-8", "ALL"),
    "thread_references": ("THREAD", "REFERENCES", "UTF-8", "ALL"),
    "thread_orderedsubject": ("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL"),
}


def timed(c, cmd: tuple[str, ...]) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    typ, data = c._simple_command(*cmd)
    check(typ, data, cmd[0])
    dt = (time.perf_counter() - t0) * 1000
    got = c._untagged_response(typ, data, cmd[0])[1]
    return dt, len(got[0] or b"")


def noop_latency_during(t: Target, cmd: tuple[str, ...]) -> tuple[float, float]:
    """(duration of ``cmd``, slowest NOOP answered on another connection meanwhile), in ms."""
    other = login(t)
    check(*other.select(BOX, readonly=True), what="SELECT")
    c = login(t)
    check(*c.select(BOX, readonly=True), what="SELECT")
    done = threading.Event()
    worst = [0.0]

    def noops() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            check(*other.noop(), what="NOOP")
            worst[0] = max(worst[0], (time.perf_counter() - t0) * 1000)
            time.sleep(0.005)

    th = threading.Thread(target=noops)
    th.start()
    try:
        dt, _ = timed(c, cmd)
    finally:
        done.set()
        th.join()
    c.logout()
    other.logout()
    return dt, worst[0]


def measure(t: Target, runs: int) -> dict:
    out: dict = {}
    c = login(t)
    check(*c.select(BOX, readonly=True), what="SELECT")
    for name, cmd in OPS.items():
        cpu0 = cpu_ms(t.pids)
        first, size = timed(c, cmd)
        cpu_first = cpu_ms(t.pids) - cpu0
        times = [timed(c, cmd)[0] for _ in range(runs)]
        out[name] = {"first_ms": round(first, 1), "median_ms": round(statistics.median(times), 1),
                     "server_cpu_first_ms": round(cpu_first), "reply_bytes": size}
        print(f"[{t.name}] {name}: first {first:.0f} ms, median {statistics.median(times):.0f} ms", flush=True)
    c.logout()
    for name, cmd in OPS.items():  # a new session of a warm server: what a client opening the mailbox waits
        best = []
        for _ in range(runs):
            c = login(t)
            check(*c.select(BOX, readonly=True), what="SELECT")
            best.append(timed(c, cmd)[0])
            c.logout()
        out[name]["new_session_ms"] = round(min(best), 1)
        print(f"[{t.name}] {name}: new session {out[name]['new_session_ms']:.0f} ms", flush=True)
    dt, worst = noop_latency_during(t, OPS["thread_references"])
    out["noop_during_thread"] = {"thread_ms": round(dt, 1), "slowest_noop_ms": round(worst, 1)}
    print(f"[{t.name}] NOOP on another connection during THREAD REFERENCES ({dt:.0f} ms): "
          f"slowest {worst:.1f} ms", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep our instance (for --reuse)")
    ap.add_argument("--reuse", type=Path, help="run on an instance kept by an earlier run")
    a = ap.parse_args()

    t, server = reuse_ours(a.reuse) if a.reuse else start_ours(1)
    targets = [t]
    stop_dovecot = False
    try:
        if not a.no_dovecot:
            d, was_running = start_dovecot()
            stop_dovecot = not was_running
            targets.append(d)
        for x in targets:
            if mailbox_size(x, BOX) != a.messages:
                print(f"[{x.name}] filling {a.messages} messages ...", flush=True)
                print(f"[{x.name}] {fill_big(x, a.messages, BOX)}", flush=True)
        results = {x.name: measure(x, a.runs) for x in targets}
    finally:
        server.stop()
        if stop_dovecot:
            subprocess.run([str(ANCHORS / "reference-stack.sh"), "stop"], capture_output=True)
        if a.keep:
            print(f"[ours] instance kept: {t.inst.path}")  # type: ignore[attr-defined]
        elif not a.reuse:
            shutil.rmtree(t.inst.path, ignore_errors=True)  # type: ignore[attr-defined]
    print(f"\n{a.messages} messages        " + "".join(f"{n:>24}" for n in results) + ("       ratio" if len(results) > 1 else ""))
    for op in OPS:
        for k in ("first_ms", "new_session_ms", "median_ms"):
            vals = [results[n][op][k] for n in results]
            ratio = f"{vals[1] / vals[0]:10.2f}x" if len(vals) > 1 and vals[0] else ""
            print(f"{op + ' ' + k:<28}" + "".join(f"{v:>24}" for v in vals) + ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
