"""Web panel benchmark: page render time at scale, over real HTTP.

Builds a throw-away instance with 10,000 users (in 20 departments) and
1,000,000 sign-in events, starts ``appliance up --service panel`` and times
GET requests of a signed-in super admin (one keep-alive connection, as a
browser would): the user list (first page, a search, a deep page) and the
sign-in log (newest page, a user filter, failures only, an older page).
Prints p50/p99 per page in milliseconds.

    .venv/bin/python bench/panel_bench.py [--users 10000] [--events 1000000] [--requests 200]
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, create_test_instance  # noqa: E402


def fill(inst, n_users: int, n_events: int) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Bulk rows straight into the index (the directory API would spend minutes on keys and Argon2)."""
    store = inst.store()
    try:
        d = store.directory
        deps = [d.add_department(inst.domain, f"Department {i:02d}").id for i in range(20)]
        admin = d.get_user("admin@example.test")
        dom_id = d.get_domain(inst.domain).id
        from storage.crypto import hmac_key, load_master_key
        from storage.webadmin import WebAdmin

        web = WebAdmin(store, hmac_key(load_master_key(inst.config().storage.master_key_file), "web-panel-digests"))
        token = web.create_session(admin.id, stage="ok", ip="127.0.0.1", client="bench")
        db_path = store.database_url.removeprefix("sqlite:///")
    finally:
        store.close()
    now = time.time()
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    rnd = random.Random(7)
    first = ["Wei", "Li", "Anna", "Jonas", "Mei", "Omar", "Sara", "Tom", "Yuki", "Zhang"]
    users = []
    for i in range(n_users):
        name = f"{rnd.choice(first)} {i:05d}"
        users.append((uuid.uuid4().hex, dom_id, f"user{i:05d}@{inst.domain}", name, None, None, "active", 0, 0,
                      rnd.randrange(0, 2 * 1024**3), rnd.randrange(0, 50_000), rnd.choice(deps), "Staff", "",
                      now, now, "{}"))
    con.executemany(
        "INSERT INTO users (uuid, domain_id, email, name, password_hash, password_changed, state, quota_bytes,"
        " quota_messages, used_bytes, used_messages, department_id, title, phone, created, updated, settings)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", users)
    con.commit()
    batch = []
    t0 = now - 180 * 86400
    for i in range(n_events):
        who = f"user{rnd.randrange(n_users):05d}@{inst.domain}"
        ok = rnd.random() > 0.05
        batch.append((t0 + i * (180 * 86400 / n_events), "login", who, who, "login", rnd.choice(("imap", "smtp", "pop3")),
                      f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}", "bench",
                      "ok" if ok else "fail", "{}"))
        if len(batch) >= 100_000:
            con.executemany("INSERT INTO events (ts, kind, actor, subject, action, protocol, ip, client, result, detail)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?)", batch)
            batch.clear()
    if batch:
        con.executemany("INSERT INTO events (ts, kind, actor, subject, action, protocol, ip, client, result, detail)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?)", batch)
    con.commit()
    con.execute("ANALYZE")
    con.close()
    return deps[0], token


def measure(client: httpx.Client, path: str, n: int) -> tuple[float, float, int]:
    for _ in range(5):
        client.get(path)  # warm up
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        size = len(r.content)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))], size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="panel-bench-") as tmp:
        inst = create_test_instance(Path(tmp) / "inst", overrides={"storage.fsync": False})
        t = time.perf_counter()
        dep, token = fill(inst, args.users, args.events)
        print(f"filled {args.users} users and {args.events} events in {time.perf_counter() - t:.1f}s", flush=True)
        srv = Server(inst, services=["panel"])
        try:
            base = f"http://127.0.0.1:{inst.ports['panel']}"
            last = f"user{args.users - 1:05d}@{inst.domain}"
            with httpx.Client(base_url=base, cookies={"panel_session": token}, timeout=60) as c:
                r = c.get("/logs?kind=signins")
                m = re.search(r"before=([^\"&]+)", r.text)
                cursor = m.group(1) if m else ""
                pages = [
                    ("user list, page 1 (50 of 10,000)", "/users"),
                    ("user list, search 'user0999'", "/users?q=user0999"),
                    ("user list, one department", f"/users?department={dep}"),
                    ("user list, page 150", "/users?page=150"),
                    ("sign-in log, newest 50 of 1,000,000", "/logs?kind=signins"),
                    ("sign-in log, one user", f"/logs?kind=signins&user={last}"),
                    ("sign-in log, failures only", "/logs?kind=signins&result=fail"),
                    ("sign-in log, next (older) page", "/logs?kind=signins&before=" + cursor),
                    ("dashboard", "/"),
                ]
                print(f"{'page':44} {'p50 ms':>8} {'p99 ms':>8} {'bytes':>8}")
                for label, path in pages:
                    p50, p99, size = measure(c, path, args.requests)
                    print(f"{label:44} {p50:8.1f} {p99:8.1f} {size:8d}", flush=True)
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
