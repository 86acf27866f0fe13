#!/usr/bin/env python3
"""Inbound SMTP on port 25 with rspamd in the path, and without it: what spam filtering costs.

    .venv/bin/python bench/inbound_spam_bench.py [--count 2000] [--conns 10] [--size 4096]

Two throw-away instances under /tmp, identical but for ``antispam.enabled``
(domain bench.test, user0..user99, encrypted store, fsync on, SPF/DKIM/DMARC
on port 25 against a local fake DNS server):

* **with rspamd**: ``appliance up --service mta --service antispam``, the
  managed rspamd + redis + unbound (network checks off, the default);
* **without**: ``appliance up --service mta`` with antispam disabled.

The same message mix goes to both, over the same number of connections
(one kept per worker, MAIL/RCPT/DATA pipelined): 4 KB plain-text business
mail, every tenth one a lottery-style HTML message that rspamd files into
Junk. Each run is preceded by a warm-up (rspamd compiles its regexps on
first use). Prints msg/s for both, the ratio, the p50/p99 latency of each
(MAIL FROM to the 250 after DATA) and the difference: the latency rspamd adds
per message. Checks the store holds exactly what was accepted, and that the
filtered run filed the spammy messages into Junk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from antispam_bench import make_message  # noqa: E402

from antispam import testing  # noqa: E402

NUSERS = 100
DOMAIN = "bench.test"
SPAMMY = ('From: "Prize Office" <winner@lottery-prize.example>\r\nTo: {rcpt}\r\n'
          "Subject: =?utf-8?B?VVJHRU5UISEhIFlPVSBXT04gJDEwMDAwMDAhISE=?=\r\n"
          "Reply-To: claims@other-domain.example\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
          '<html><body><p>CONGRATULATIONS!!! You have WON $1,000,000. Click <a href="http://192.0.2.55/claim.php?id={i}">'
          'here</a> to claim your prize now!!!</p><img src="http://192.0.2.55/pixel.gif"></body></html>\r\n')


def messages(count: int, size: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """(recipient, message) pairs: the same mix for every run."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        rcpt = f"user{i % NUSERS}@{DOMAIN}"
        if i % 10 == 9:
            raw = SPAMMY.format(rcpt=rcpt, i=i).encode()
        else:
            raw = make_message(i, size, rng)
            raw = raw[: raw.rfind(b"\r\n") + 2]  # cut at a line end (a stray CR is refused as smuggling)
        out.append((rcpt, raw))
    return out


def dot_stuff(raw: bytes) -> bytes:
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    lines = raw.split(b"\r\n")
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines) + b".\r\n"


# ------------------------------------------------------------------ the load


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3])


async def _worker(port: int, wid: int, queue: list[tuple[str, bytes]], lat: list[float], codes: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        assert await _reply(reader) == 220
        writer.write(b"EHLO load%d.example\r\n" % wid)
        assert await _reply(reader) == 250
        while queue:
            rcpt, raw = queue.pop()
            started = time.perf_counter()
            writer.write(b"MAIL FROM:<news@partner.example>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt.encode())
            got = [await _reply(reader) for _ in range(3)]
            if got[2] != 354:
                codes[got[2]] = codes.get(got[2], 0) + 1
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(dot_stuff(raw))
            code = await _reply(reader)
            codes[code] = codes.get(code, 0) + 1
            if code == 250:
                lat.append(time.perf_counter() - started)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def run_load(port: int, batch: list[tuple[str, bytes]], conns: int) -> tuple[float, list[float], dict[int, int]]:
    queue = list(reversed(batch))
    lat: list[float] = []
    codes: dict[int, int] = {}
    began = time.perf_counter()
    await asyncio.gather(*(_worker(port, w, queue, lat, codes) for w in range(conns)))
    return time.perf_counter() - began, lat, codes


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000 if values else 0.0


# ------------------------------------------------------------------ the instances


class Instance:
    def __init__(self, *, antispam: bool, dns_port: int, cache: Path) -> None:
        from conftest import free_port

        from appliance.instance import create_instance

        self.dir = Path(tempfile.mkdtemp(prefix=f"inbound-spam-bench-{'on' if antispam else 'off'}-"))
        self.port = free_port()
        overrides = {
            "listeners": {"mx": {"protocol": "smtp", "bind": f"127.0.0.1:{self.port}", "tls": "starttls"}},
            "smtp.max_connections_per_ip": 500,
            "dns.resolvers": ["127.0.0.1"],
            "dns.port": dns_port,
            "auth.argon2_time_cost": 1,
            "auth.argon2_memory_cost_kib": 8192,
            "auth.argon2_parallelism": 1,
            "log.level": "warning",
        }
        overrides.update(testing.overrides() if antispam else {"antispam.enabled": False})
        inst = create_instance(self.dir, domain=DOMAIN, dev=True, demo_accounts=False, config_overrides=overrides)
        self.config = inst.config_path
        store = self.store()
        try:
            for i in range(NUSERS):
                store.create_user(f"user{i}@{DOMAIN}", password="pass")
        finally:
            store.close()
        self.cache = cache
        self.antispam = antispam
        services = ["--service", "mta"] + (["--service", "antispam"] if antispam else [])
        if antispam:
            testing.seed_cache(self.dir, cache)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "-c", str(self.config), "up", *services],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while b"ready;" not in (self.dir / "server.log").read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start:\n" + (self.dir / "server.log").read_text())
            time.sleep(0.1)
        if antispam:
            self._wait_rspamd(300)

    def _wait_rspamd(self, timeout: float) -> None:
        from appliance.config import load_config

        url = load_config(self.config).antispam.url + "/ping"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.read().strip() == b"pong":
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("rspamd did not answer")

    def store(self):  # type: ignore[no-untyped-def]
        from appliance.config import load_config
        from storage.store import Store

        return Store.from_config(load_config(self.config))

    def counts(self) -> tuple[int, int]:
        """(messages in INBOXes, messages in Junk folders)."""
        store = self.store()
        try:
            inbox = junk = 0
            for i in range(NUSERS):
                user = store.directory.get_user(f"user{i}@{DOMAIN}")
                inbox += store.mail.status(store.mail.get_mailbox(user.id, "INBOX").id).messages
                box = store.mail.find_special(user.id, "\\Junk")
                junk += store.mail.status(box.id).messages if box is not None else 0
            return inbox, junk
        finally:
            store.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        if self.antispam:
            testing.save_cache(self.dir, self.cache)
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(inst: Instance, batch: list[tuple[str, bytes]], warmup: list[tuple[str, bytes]], conns: int) -> dict:
    asyncio.run(run_load(inst.port, warmup, conns))
    before = inst.counts()
    elapsed, lat, codes = asyncio.run(run_load(inst.port, batch, conns))
    after = inst.counts()
    stored = (after[0] - before[0]) + (after[1] - before[1])
    accepted = codes.get(250, 0)
    if stored != accepted:
        raise SystemExit(f"the store holds {stored} new messages, {accepted} were accepted")
    return {"rate": len(batch) / elapsed, "p50": pct(lat, 50), "p99": pct(lat, 99), "codes": codes,
            "inbox": after[0] - before[0], "junk": after[1] - before[1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "d" / "rspamd-compiled"),
                    help="directory of rspamd's compiled regexps (the tests keep one)")
    args = ap.parse_args()

    from dnsserver import FakeDNS

    dns = FakeDNS(negative_ttl=300)  # like a caching resolver: NXDOMAIN for partner.example is cached
    batch = messages(args.count, args.size)
    warmup = messages(args.warmup, args.size, seed=99)
    results = {}
    try:
        for antispam in (False, True):
            started = time.perf_counter()
            inst = Instance(antispam=antispam, dns_port=dns.port, cache=Path(args.cache))
            print(f"{'with' if antispam else 'without'} rspamd: instance ready in {time.perf_counter() - started:.1f}s",
                  flush=True)
            try:
                results[antispam] = measure(inst, batch, warmup, args.conns)
            finally:
                inst.close()
    finally:
        dns.close()
    off, on = results[False], results[True]
    print(f"\n{args.count} messages ({args.size} B, every tenth spammy), {args.conns} connections, port 25")
    print(f"{'':<16} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}  {'INBOX':>6} {'Junk':>6}  replies")
    for name, r in (("without rspamd", off), ("with rspamd", on)):
        print(f"{name:<16} {r['rate']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f}  {r['inbox']:>6} {r['junk']:>6}  {r['codes']}")
    print(f"ratio with/without: {on['rate'] / off['rate']:.2f}; added latency per message: "
          f"p50 {on['p50'] - off['p50']:+.1f} ms, p99 {on['p99'] - off['p99']:+.1f} ms")
    if on["junk"] == 0:
        print("warning: rspamd filed nothing into Junk: was it scanning?")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
