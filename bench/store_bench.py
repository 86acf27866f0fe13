"""Store benchmark: delivery rate into the encrypted store, and index listing.

    python bench/store_bench.py [--messages 2000] [--threads 1,10] [--size 4096] [--big 100000]

Prints messages/s for deliveries (every one encrypted, fsynced and indexed
before it counts) and the time to list UIDs and flags, status and search
summaries of a large mailbox. Uses a throw-away instance under /tmp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from sqlalchemy import insert, update  # noqa: E402
from storefix import message, new_store  # noqa: E402

from storage import models as m  # noqa: E402


def deliveries(store, n: int, threads: int, size: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    body = "x" * max(0, size - 200)
    latencies: list[float] = []
    lock = threading.Lock()
    per = n // threads

    def work(t: int) -> None:
        for i in range(per):
            start = time.perf_counter()
            d = store.begin_delivery("bench@remote.example")
            d.add_recipient(f"user{(t * per + i) % 10}@example.test")
            d.write(message(subject=f"bench {t} {i}", body=body))
            d.commit()
            with lock:
                latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return per * threads / (time.perf_counter() - began), latencies


def big_mailbox(store, n: int) -> None:  # type: ignore[no-untyped-def]
    user = store.create_user("big@example.test")
    store.append(user, "INBOX", message(subject="template"))
    inbox = store.mail.get_mailbox(user.id, "INBOX")
    [tmpl] = store.mail.messages(inbox.id)
    with store.write() as c:
        c.execute(insert(m.messages), [
            {"mailbox_id": inbox.id, "uid": uid, "blob_id": tmpl.blob_id, "size": tmpl.size, "internal_date": tmpl.internal_date,
             "flags": uid % 2, "keywords": None, "modseq": 2} for uid in range(2, n + 1)
        ])
        c.execute(update(m.mailboxes).where(m.mailboxes.c.id == inbox.id).values(uidnext=n + 1))
    for name, fn in (
        ("uid+flags of all", lambda: store.mail.uid_flags(inbox.id)),
        ("status", lambda: store.mail.status(inbox.id)),
        ("message infos of all", lambda: store.mail.messages(inbox.id)),
        ("search summaries (cold)", lambda: store.mail.summaries(user, inbox.id)),
        ("search summaries (warm)", lambda: store.mail.summaries(user, inbox.id)),
    ):
        times = []
        for _ in range(3 if "cold" not in name else 1):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print(f"  {name:28s} {statistics.median(times) * 1000:8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--threads", default="1,10")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--big", type=int, default=100_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="storebench-"))
    try:
        store = new_store(root / "inst", fsync=True)
        for i in range(10):
            store.create_user(f"user{i}@example.test")
        print(f"delivery into the encrypted store, {args.size} B messages, fsync on ({os.cpu_count()} cores):")
        for threads in (int(x) for x in args.threads.split(",")):
            rate, lat = deliveries(store, args.messages, threads, args.size)
            lat.sort()
            print(f"  {threads:3d} threads: {rate:7.0f} msg/s  p50 {lat[len(lat) // 2] * 1000:.1f} ms  p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms")
        print(f"index of a {args.big}-message mailbox:")
        big_mailbox(store, args.big)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
