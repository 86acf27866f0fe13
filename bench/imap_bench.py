"""IMAP benchmark: our imapd against Dovecot, the same load on both, side by side.

    .venv/bin/python bench/imap_bench.py [--messages 10000] [--runs 3] [--mixed-seconds 30]
                                         [--clients 10] [--idle 1000] [--no-dovecot] [--json FILE]
    .venv/bin/python bench/imap_bench.py --host H --port P --user U --password PW   # any one server

By default it makes a throw-away instance of ours under /tmp (a plaintext
IMAP listener on loopback, fsync on, 100 bench users), starts
``appliance up --service imapd``, and starts Dovecot with
``../shared/anchors/reference-stack.sh start`` (stopped again only if this run
started it). Then, on each server:

1. fill: APPEND --messages messages one at a time (``msgcorpus``: the CPython
   email test corpus, then synthetic mail; every 100th Subject has the word);
2. --runs times on a fresh connection: LOGIN, SELECT, UID FETCH 1:* (FLAGS),
   FETCH 1:* (ENVELOPE), UID SEARCH SUBJECT <word>, UID SEARCH BODY <word>,
   100 x UID FETCH <random> (BODY[]) (one command each); the median is shown;
3. mixed load: --clients processes for --mixed-seconds, each on its own
   connection doing a mail client's mix (header lists, bodies, flag changes,
   searches, appends, NOOP); completed commands per second and p50/p99;
4. memory: --idle connections that log in, SELECT INBOX and IDLE; the summed
   RSS (and PSS) of the server's process tree, before and with them open.

Times include imaplib's parsing on the client side, the same for both servers
(``uid_fetch_flags_raw`` is the same UID FETCH read as bytes, unparsed: the
server's own time to send 1:* FLAGS, which the parsing otherwise dwarfs);
the CPU rows give what the server's own processes spent on each operation
(user + system time, in 10 ms ticks), which the client's share of the two
cores does not blur. Prints ours, Dovecot's and the ratio (>1 means ours is
faster / leaner).

--big N adds the read operations on an N-message mailbox filled directly
(ours through the store API, Dovecot as Maildir files). With --keep the
instance of ours stays; --reuse DIR runs on it again and --big-reuse skips the
fill where the mailbox already holds N messages, on both servers. --ops times
only the named operations (e.g. ``--ops uid_fetch_flags`` with many --runs or
--big-runs, to compare one row on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import multiprocessing
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "anchors"
sys.path[:0] = [str(ROOT), str(ANCHORS)]

MAILBOX = "bench-ops"
WORD = "kumquat"
BODY_WORD = "roadmap"
OPS = ["login", "select", "uid_fetch_flags", "uid_fetch_flags_raw", "fetch_envelope", "search_subject", "search_body",
       "fetch_body_100"]
ACTIVE = list(OPS)  # --ops: the timed operations of this run (login and select always)


@dataclass
class Target:
    name: str
    host: str
    port: int
    user: str
    password: str
    pids: list[int] = field(default_factory=list)  # roots of the process trees to measure
    idle_users: list[tuple[str, str]] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    inst: object = None  # ours: the instance, for a direct bulk fill
    maildir: str | None = None  # Dovecot: the user's Maildir, for a direct bulk fill


# ------------------------------------------------------------------ helpers


def connect(t: Target, timeout: float = 300) -> imaplib.IMAP4:
    c = imaplib.IMAP4(t.host, t.port, timeout=timeout)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def check(typ: str, data: list, what: str) -> list:
    if typ != "OK":
        raise RuntimeError(f"{what} failed: {typ} {data[:1]!r}")
    return data


def login(t: Target) -> imaplib.IMAP4:
    c = connect(t)
    check(*c.login(t.user, t.password), what="LOGIN")
    return c


def fill(t: Target, n: int, box: str = MAILBOX) -> dict:
    import msgcorpus

    msgs, hits = msgcorpus.corpus(n, seed=1, subject_word=WORD)
    c = login(t)
    c.delete(box)
    check(*c.create(box), what="CREATE")
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        check(*c.append(box, None, None, m), what=f"APPEND #{i}")
    dt = time.perf_counter() - t0
    c.logout()
    return {"messages": n, "append_secs": round(dt, 2), "append_rate": round(n / dt, 1),
            "mib": round(sum(map(len, msgs)) / 1048576, 1), "subject_hits": hits}


def cpu_ms(roots: list[int]) -> float:
    """CPU time (user + system) used so far by the process trees under ``roots``, in ms."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(roots):
        try:
            stat = Path(f"/proc/{p}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * 1000 / tick


def raw_command(c: imaplib.IMAP4, command: bytes) -> int:
    """Send ``command`` and read its whole answer as bytes, up to the tagged line, without parsing it.

    imaplib's parsing of 10,000 FETCH lines costs the client ~100 ms and
    blurs the servers' difference; this is the time the server takes to send
    it all. Returns the byte count.
    """
    tag = c._new_tag()  # type: ignore[attr-defined]
    c.send(tag + b" " + command + b"\r\n")
    end = b"\r\n" + tag + b" "
    tail, total = b"\r\n", 0
    while True:
        chunk = c.file.read1(1 << 16)  # type: ignore[attr-defined]
        if not chunk:
            raise RuntimeError("connection closed during " + command.decode())
        total += len(chunk)
        tail = tail[-len(end) - 200:] + chunk
        i = tail.rfind(end)
        if i >= 0 and tail.find(b"\r\n", i + len(end)) >= 0:
            if tail[i + len(end):i + len(end) + 2] != b"OK":
                raise RuntimeError(f"{command.decode()} failed: {tail[i:][:100]!r}")
            return total


def one_run(t: Target, rng: random.Random, box: str = MAILBOX) -> dict:
    """One timed pass; ``times_ms`` is what the client waited, ``cpu_ms`` what the server's processes spent."""
    tm: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        c0 = cpu_ms(t.pids) if t.pids else 0.0
        t0 = time.perf_counter()
        out = fn()
        tm[name] = (time.perf_counter() - t0) * 1000
        if t.pids:
            cpu[name] = cpu_ms(t.pids) - c0
        return out

    c = connect(t)
    timed("login", lambda: check(*c.login(t.user, t.password), what="LOGIN"))
    exists = int(timed("select", lambda: check(*c.select(box), what="SELECT"))[0])
    envelopes = subject_hits = body_hits = nbytes = 0
    uids: list[int] = []
    if "uid_fetch_flags" in ACTIVE or "fetch_body_100" in ACTIVE:
        data = timed("uid_fetch_flags", lambda: check(*c.uid("FETCH", "1:*", "(FLAGS)"), what="UID FETCH"))
        uids = [int(m.group(1)) for d in data if isinstance(d, bytes) for m in [re.search(rb"UID (\d+)", d)] if m]
    if "uid_fetch_flags_raw" in ACTIVE:
        timed("uid_fetch_flags_raw", lambda: raw_command(c, b"UID FETCH 1:* (FLAGS)"))
    if "fetch_envelope" in ACTIVE:
        data = timed("fetch_envelope", lambda: check(*c.fetch("1:*", "(ENVELOPE)"), what="FETCH ENVELOPE"))
        envelopes = sum(1 for d in data if d is not None
                        and re.match(rb"\d+ \(ENVELOPE", d[0] if isinstance(d, tuple) else d))
    if "search_subject" in ACTIVE:
        data = timed("search_subject", lambda: check(*c.uid("SEARCH", "SUBJECT", WORD), what="SEARCH SUBJECT"))
        subject_hits = len(data[0].split()) if data and data[0] else 0
    if "search_body" in ACTIVE:
        data = timed("search_body", lambda: check(*c.uid("SEARCH", "BODY", BODY_WORD), what="SEARCH BODY"))
        body_hits = len(data[0].split()) if data and data[0] else 0
    pick = rng.sample(uids, min(100, len(uids)))

    def bodies() -> int:
        total = 0
        for u in pick:
            for part in check(*c.uid("FETCH", str(u), "(BODY[])"), what="FETCH BODY"):
                if isinstance(part, tuple):
                    total += len(part[1])
        return total

    if "fetch_body_100" in ACTIVE:
        nbytes = timed("fetch_body_100", bodies)
    c.logout()
    return {"times_ms": tm, "cpu_ms": cpu, "exists": exists, "flags": len(uids), "envelopes": envelopes,
            "subject_hits": subject_hits, "body_hits": body_hits, "body_bytes": nbytes}


def mailbox_size(t: Target, box: str) -> int | None:
    """EXISTS of ``box`` (None if it does not exist)."""
    c = login(t)
    try:
        typ, data = c.select(box, readonly=True)
        return int(data[0]) if typ == "OK" else None
    finally:
        c.logout()


def fill_big(t: Target, n: int, box: str) -> dict:
    """A large mailbox without n APPENDs: ours through the store API (8 threads, another
    process from the server's view), Dovecot as Maildir files it indexes on first SELECT."""
    import concurrent.futures

    import msgcorpus

    c = login(t)
    c.delete(box)
    check(*c.create(box), what="CREATE")
    c.logout()
    t0 = time.perf_counter()
    hits = 0
    if t.inst is not None:
        store = t.inst.store()  # type: ignore[attr-defined]
        user = store.directory.get_user(t.user)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for k in range(0, n, 10000):
                msgs, h = msgcorpus.corpus(min(10000, n - k), seed=11 + k, subject_word=WORD, corpus_dir="/nonexistent")
                hits += h
                list(pool.map(lambda m: store.append(user, box, m), msgs))
        store.close()
    else:
        import pwd

        folder = Path(t.maildir) / f".{box}"  # type: ignore[arg-type]
        vmail = pwd.getpwnam("vmail")
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            os.chown(folder / sub, vmail.pw_uid, vmail.pw_gid)
        os.chown(folder, vmail.pw_uid, vmail.pw_gid)
        for k in range(0, n, 10000):
            msgs, h = msgcorpus.corpus(min(10000, n - k), seed=11 + k, subject_word=WORD, corpus_dir="/nonexistent")
            hits += h
            for i, m in enumerate(msgs):
                path = folder / "cur" / f"{1700000000 + k + i}.M{k + i}P1.bench,S={len(m)}:2,"
                path.write_bytes(m)
                os.chown(path, vmail.pw_uid, vmail.pw_gid)
    return {"messages": n, "fill_secs": round(time.perf_counter() - t0, 1), "subject_hits": hits}


# ------------------------------------------------------------- mixed load


def _mixed_client(args: tuple) -> dict:
    host, port, user, password, seconds, seed, box = args
    rng = random.Random(seed)
    t = Target("", host, port, user, password)
    c = login(t)
    exists = int(check(*c.select(box), what="SELECT")[0])
    uids = [int(x) for x in check(*c.uid("SEARCH", "ALL"), what="SEARCH")[0].split()]
    small = b"From: a@bench.test\r\nTo: b@bench.test\r\nSubject: mixed load\r\n\r\nhello\r\n"
    lat: list[float] = []
    ops = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r = rng.random()
        t0 = time.perf_counter()
        if r < 0.30:
            lo = rng.randint(1, max(1, exists - 20))
            check(*c.fetch(f"{lo}:{lo + 19}", "(UID FLAGS RFC822.SIZE ENVELOPE)"), what="FETCH list")
        elif r < 0.55:
            check(*c.uid("FETCH", str(rng.choice(uids)), "(BODY.PEEK[])"), what="FETCH body")
        elif r < 0.70:
            check(*c.uid("STORE", str(rng.choice(uids)), rng.choice(["+FLAGS", "-FLAGS"]), "(\\Flagged)"), what="STORE")
        elif r < 0.80:
            check(*c.uid("SEARCH", rng.choice(["UNSEEN", "FLAGGED", f"FROM {rng.choice(['alice', 'bob', 'smith'])}"])),
                  what="SEARCH")
        elif r < 0.90:
            check(*c.append(box + "-mixed", None, None, small), what="APPEND")
        else:
            check(*c.noop(), what="NOOP")
        lat.append((time.perf_counter() - t0) * 1000)
        ops += 1
    c.logout()
    return {"ops": ops, "lat": lat}


def mixed(t: Target, clients: int, seconds: float) -> dict:
    c = login(t)
    c.delete(MAILBOX + "-mixed")
    c.create(MAILBOX + "-mixed")
    c.logout()
    jobs = [(t.host, t.port, t.user, t.password, seconds, i, MAILBOX) for i in range(clients)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        res = pool.map(_mixed_client, jobs)
    dt = time.perf_counter() - t0
    lat = sorted(x for r in res for x in r["lat"])
    total = sum(r["ops"] for r in res)
    return {"ops_per_s": round(total / seconds, 1), "ops": total, "wall_s": round(dt, 1),
            "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
            "p99_ms": round(lat[int(len(lat) * 0.99)], 2) if lat else None}


# ------------------------------------------------------------------ memory


def tree_pids(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory(roots: list[int]) -> dict:
    rss = pss = 0
    pids = tree_pids(roots)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1), "procs": len(pids)}


async def _idle_conn(t: Target, user: str, password: str, sem: asyncio.Semaphore) -> asyncio.StreamWriter | None:
    async with sem:
        try:
            r, w = await asyncio.open_connection(t.host, t.port)

            async def until(prefix: bytes) -> None:
                while True:
                    line = await asyncio.wait_for(r.readline(), 60)
                    if not line:
                        raise ConnectionError("closed")
                    if line.startswith(prefix):
                        if b" OK" not in line and not prefix.startswith(b"+"):
                            raise ConnectionError(line.decode(errors="replace"))
                        return

            await asyncio.wait_for(r.readline(), 60)
            w.write(f'a LOGIN "{user}" "{password}"\r\n'.encode())
            await until(b"a ")
            w.write(b"b SELECT INBOX\r\n")
            await until(b"b ")
            w.write(b"c IDLE\r\n")
            await until(b"+")
            return w
        except (OSError, ConnectionError, TimeoutError):
            return None


async def _idle(t: Target, n: int) -> dict:
    before = memory(t.pids)
    sem = asyncio.Semaphore(50)
    users = t.idle_users or [(t.user, t.password)]
    writers = await asyncio.gather(*(_idle_conn(t, *users[i % len(users)], sem) for i in range(n)))
    live = [w for w in writers if w is not None]
    await asyncio.sleep(2)
    peak = before
    for _ in range(5):
        m = memory(t.pids)
        if m["rss_mib"] > peak["rss_mib"]:
            peak = m
        await asyncio.sleep(0.5)
    for w in live:
        w.close()
    await asyncio.sleep(1)
    return {"connections": len(live), "before": before, "peak": peak,
            "kib_per_conn": round((peak["pss_mib"] - before["pss_mib"]) * 1024 / max(1, len(live)), 1)}


def idle_memory(t: Target, n: int) -> dict:
    return asyncio.run(_idle(t, n))


# ------------------------------------------------------------------ servers


def start_ours(n_users: int):  # type: ignore[no-untyped-def]
    from tests.conftest import FAST_AUTH, Server, create_test_instance, free_port

    port = free_port()
    overrides = {
        "listeners": {"imap": {"protocol": "imap", "bind": f"127.0.0.1:{port}", "tls": "none"}},
        "imap.max_connections_per_user": 5000,
        "imap.max_connections_per_ip": 5000,
        **FAST_AUTH,
    }
    inst = create_test_instance(Path(tempfile.mkdtemp(prefix="imapbench-")), overrides=overrides)
    store = inst.store()
    try:
        users = []
        for i in range(n_users):
            email = f"bench{i}@{inst.domain}"
            store.create_user(email, password="bench-pass-123")
            users.append((email, "bench-pass-123"))
    finally:
        store.close()
    server = Server(inst, services=["imapd"])
    print(f"[ours] instance {inst.path}", flush=True)
    t = Target("ours", "127.0.0.1", port, users[0][0], users[0][1], [server.proc.pid], users, inst=inst)
    return t, server


def reuse_ours(path: Path):  # type: ignore[no-untyped-def]
    """Our server on an instance made by an earlier run with --keep (same users, same mail)."""
    import tomllib

    from tests.conftest import Instance, Server

    config_path = path / "appliance.toml"
    cfg = tomllib.loads(config_path.read_text())
    port = int(cfg["listeners"]["imap"]["bind"].rsplit(":", 1)[1])
    domain = cfg["instance"].get("domain") or cfg["instance"]["hostname"].split(".", 1)[1]
    inst = Instance(path, config_path, domain, {"imap": port})
    users = [(f"bench{i}@{domain}", "bench-pass-123") for i in range(100)]
    server = Server(inst, services=["imapd"])
    print(f"[ours] reusing instance {inst.path}", flush=True)
    return Target("ours", "127.0.0.1", port, users[0][0], users[0][1], [server.proc.pid], users, inst=inst), server


def dovecot_running() -> bool:
    out = subprocess.run([str(ANCHORS / "reference-stack.sh"), "status"], capture_output=True, text=True).stdout
    return "dovecot running" in out


def start_dovecot() -> tuple[Target, bool]:
    was_running = dovecot_running()
    subprocess.run([str(ANCHORS / "reference-stack.sh"), "start"], check=True, capture_output=True)
    root = os.environ.get("REFSTACK_ROOT", "/tmp/refstack")
    pid = int(Path(root, "run", "dovecot", "master.pid").read_text().strip())
    users = [(f"user{i}", "pass") for i in range(100)]
    maildir = str(Path(os.environ.get("REFMAIL", "/tmp/refmail")) / "bench.test" / "user1" / "Maildir")
    return Target("dovecot", "127.0.0.1", int(os.environ.get("IMAP_PORT", 10143)), "user1", "pass", [pid], users,
                  maildir=maildir), was_running


# ------------------------------------------------------------------- report


def run_targets(targets: list[Target], a: argparse.Namespace) -> None:
    """Fill each server, then alternate the timed runs between them (the machine's load drifts)."""
    for t in targets:
        t.results["runs"] = []
        if a.messages:
            print(f"[{t.name}] fill: APPEND {a.messages} messages ...", flush=True)
            t.results["fill"] = fill(t, a.messages)
            print(f"[{t.name}]   {t.results['fill']}", flush=True)
    rng = random.Random(7)
    for i in range(a.runs if a.messages else 0):
        for t in targets:
            r = one_run(t, random.Random(rng.random()))
            t.results["runs"].append(r)
            print(f"[{t.name}] run {i + 1}: " + " ".join(f"{k}={r['times_ms'][k]:.1f}ms" for k in ACTIVE)
                  + f"  exists={r['exists']} subject={r['subject_hits']} body={r['body_hits']}", flush=True)
    for t in targets:
        runs = t.results["runs"][1:] or t.results["runs"]  # the first run is cold (caches being built)
        if runs:
            t.results["median_ms"] = {k: round(statistics.median(r["times_ms"][k] for r in runs), 1) for k in ACTIVE}
            if all(r.get("cpu_ms") for r in runs):
                t.results["median_cpu_ms"] = {k: round(statistics.median(r["cpu_ms"][k] for r in runs), 1) for k in ACTIVE}
            t.results["cold_ms"] = t.results["runs"][0]["times_ms"]
    if a.mixed_seconds > 0 and a.messages:
        for t in targets:
            t.results["mixed"] = mixed(t, a.clients, a.mixed_seconds)
            print(f"[{t.name}] mixed: {t.results['mixed']}", flush=True)
    if a.idle > 0:
        for t in targets:
            if t.pids:
                t.results["idle"] = idle_memory(t, a.idle)
                print(f"[{t.name}] idle: {t.results['idle']}", flush=True)
    if a.big > 0:
        box = f"bench-{a.big // 1000}k"
        for t in targets:
            have = mailbox_size(t, box)
            if a.big_reuse and have == a.big:
                print(f"[{t.name}] {box} already holds {have} messages: reused", flush=True)
            else:
                print(f"[{t.name}] big fill: {a.big} messages ...", flush=True)
                t.results["big_fill"] = fill_big(t, a.big, box)
                print(f"[{t.name}]   {t.results['big_fill']}", flush=True)
            t.results["big_runs"] = []
        for i in range(max(3, a.big_runs)):
            for t in targets:
                r = one_run(t, random.Random(i), box)
                t.results["big_runs"].append(r)
                print(f"[{t.name}] {box} run {i + 1}: " + " ".join(f"{k}={r['times_ms'][k]:.1f}ms" for k in ACTIVE)
                      + f"  exists={r['exists']} subject={r['subject_hits']} body={r['body_hits']}", flush=True)
        for t in targets:
            runs = t.results["big_runs"]
            t.results["big_median_ms"] = {k: round(statistics.median(r["times_ms"][k] for r in runs[1:]), 1) for k in ACTIVE}
            if all(r.get("cpu_ms") for r in runs[1:]):
                t.results["big_median_cpu_ms"] = {k: round(statistics.median(r["cpu_ms"][k] for r in runs[1:]), 1)
                                                  for k in ACTIVE}
            t.results["big_cold_ms"] = runs[0]["times_ms"]


def report(targets: list[Target], a: argparse.Namespace) -> None:
    names = [t.name for t in targets]
    print(f"\nIMAP, {a.messages:,}-message mailbox (median of runs 2..{a.runs}, run 1 is cold; "
          "ratio = Dovecot / ours, >1 means ours is better)")
    head = f"{'operation':<24}" + "".join(f"{n:>14}" for n in names) + ("   ratio" if len(targets) == 2 else "")
    print(head)

    def row(label: str, values: list[float | None], unit: str, higher_better: bool) -> None:
        cells = "".join(f"{(f'{v:,.1f} {unit}' if v is not None else '-'):>14}" for v in values)
        ratio = ""
        if len(values) == 2 and all(values):
            ours, theirs = values
            r = (ours / theirs) if higher_better else (theirs / ours)  # type: ignore[operator]
            ratio = f"   {r:5.2f}"
        print(f"{label:<24}{cells}{ratio}")

    if all("median_ms" in t.results for t in targets):
        row("APPEND", [t.results["fill"]["append_rate"] for t in targets], "msg/s", True)
        for k in ACTIVE:
            row(k, [t.results["median_ms"][k] for t in targets], "ms", False)
        for k in [k for k in ("select", "fetch_envelope", "search_subject", "search_body") if k in ACTIVE]:
            row(f"{k} (cold)", [t.results["cold_ms"][k] for t in targets], "ms", False)
        if all("median_cpu_ms" in t.results for t in targets):
            print("  -- server CPU per operation (user + system of the server's processes, 10 ms ticks)")
            for k in ACTIVE[1:]:
                row(f"{k} CPU", [t.results["median_cpu_ms"][k] for t in targets], "ms", False)
    if all("big_median_ms" in t.results for t in targets):
        print(f"  -- {a.big:,}-message mailbox (median of runs 2..{max(3, a.big_runs)}; run 1 cold)")
        for k in ACTIVE[1:]:
            row(f"{k}", [t.results["big_median_ms"][k] for t in targets], "ms", False)
        for k in [k for k in ("select", "fetch_envelope", "search_subject", "search_body") if k in ACTIVE]:
            row(f"{k} (cold)", [t.results["big_cold_ms"][k] for t in targets], "ms", False)
        if all("big_median_cpu_ms" in t.results for t in targets):
            for k in ACTIVE[1:]:
                row(f"{k} CPU", [t.results["big_median_cpu_ms"][k] for t in targets], "ms", False)
    if all("mixed" in t.results for t in targets):
        row(f"mixed {a.clients} clients", [t.results["mixed"]["ops_per_s"] for t in targets], "op/s", True)
        row("  p99 latency", [t.results["mixed"]["p99_ms"] for t in targets], "ms", False)
    if all("idle" in t.results for t in targets):
        row(f"{a.idle} IDLE: RSS", [t.results["idle"]["peak"]["rss_mib"] for t in targets], "MiB", False)
        row(f"{a.idle} IDLE: PSS", [t.results["idle"]["peak"]["pss_mib"] for t in targets], "MiB", False)
        print("  connections held: " + ", ".join(f"{t.name} {t.results['idle']['connections']}" for t in targets))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--mixed-seconds", type=float, default=30)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--big", type=int, default=0, help="also time the read operations on a mailbox this large (e.g. 100000)")
    p.add_argument("--big-runs", type=int, default=3, help="timed passes over the --big mailbox (the first is cold)")
    p.add_argument("--big-reuse", action="store_true",
                   help="skip the --big fill on a server whose mailbox already holds exactly that many messages")
    p.add_argument("--reuse", metavar="DIR", help="run our server on an instance kept by an earlier --keep (its mail stays)")
    p.add_argument("--no-dovecot", action="store_true")
    p.add_argument("--only-dovecot", action="store_true")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--pid", type=int, action="append", default=[], help="server process(es) to measure (generic mode)")
    p.add_argument("--ops", help="comma-separated timed operations (default all): " + ",".join(OPS[2:]))
    p.add_argument("--json")
    p.add_argument("--keep", action="store_true", help="keep our throw-away instance (its path is printed)")
    a = p.parse_args()
    if a.ops:
        wanted = {o.strip() for o in a.ops.split(",") if o.strip()}
        unknown = wanted - set(OPS)
        if unknown:
            p.error("unknown --ops: " + ", ".join(sorted(unknown)))
        ACTIVE[:] = [o for o in OPS if o in wanted or o in ("login", "select")]
    targets: list[Target] = []
    cleanup = []
    try:
        if a.host:
            targets.append(Target("server", a.host, a.port or 143, a.user, a.password, a.pid))
        else:
            if not a.only_dovecot:
                t, server = reuse_ours(Path(a.reuse)) if a.reuse else start_ours(100)
                targets.append(t)
                if not a.keep and not a.reuse:
                    import shutil

                    cleanup.append(lambda p=server.inst.path: shutil.rmtree(p, ignore_errors=True))
                cleanup.append(server.stop)
            if not a.no_dovecot:
                t, was_running = start_dovecot()
                targets.append(t)
                if not was_running:
                    cleanup.append(lambda: subprocess.run([str(ANCHORS / "reference-stack.sh"), "stop"], capture_output=True))
        run_targets(targets, a)
        report(targets, a)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({t.name: t.results for t in targets}) + "\n")
    finally:
        for fn in reversed(cleanup):
            fn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
