"""Who listens on the managed antispam's ports: our own daemons, or another program?

Debian's rspamd package starts its own ``rspamd.service`` on 11332-11334, the
ports our managed rspamd uses by default; ``redis-server.service`` listens
on 6379 and Debian's unbound on 53 (ours are on ``antispam.redis_port`` and
``antispam.dns_port``). When a program the appliance did not start holds one
of our ports, our daemon cannot bind it, and worse, the scanner may talk to
the foreign rspamd (another configuration, another controller password).
``appliance status`` and ``appliance doctor`` say so plainly, naming the
program and the systemd unit to stop; the installer stops, disables and
masks the distribution's units (``installer.provision.release_distribution_units``).

A listener is ours when it, or one of its parents, is a daemon the antispam
service recorded as started (pid and start time, in ``<data_dir>/run``), an
``appliance ... up`` process, or names this instance's data directory.
Without root the owner of another user's socket cannot be seen: such a port
is reported as held by "another program".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.i18n import _

# Debian's units that clash with (or duplicate) the managed daemons, by the program that shows up as the holder
DISTRIBUTION_UNITS = {"rspamd": "rspamd.service", "redis-server": "redis-server.service", "unbound": "unbound.service"}


@dataclass(frozen=True)
class Holder:
    key: str  # the config key of the port, e.g. "antispam.url"
    port: int
    program: str  # "rspamd", or "" when it cannot be seen
    pid: int | None
    ours: bool

    @property
    def unit(self) -> str | None:
        """The distribution's systemd unit that most likely runs this program."""
        return DISTRIBUTION_UNITS.get(self.program)

    def describe(self) -> str:
        who = (_("{program} (pid {pid})").format(program=self.program, pid=self.pid) if self.program and self.pid
               else _("another program"))
        return _("port {port} ({key}) is held by {who}, which the appliance did not start").format(
            port=self.port, key=self.key, who=who)

    def fix(self) -> str:
        if self.unit:
            return _("the appliance runs its own {program}: systemctl disable --now {unit} && systemctl mask {unit}, "
                     "then systemctl restart appliance-antispam").format(program=self.program, unit=self.unit)
        return _("stop that program, or choose another port for {key} in appliance.toml").format(key=self.key)


def managed_ports(cfg: Any) -> dict[str, int]:
    a = cfg.antispam
    return {"antispam.url": urlsplit(a.url).port or 80, "antispam.controller_url": urlsplit(a.controller_url).port or 80,
            "antispam.redis_port": a.redis_port, "antispam.dns_port": a.dns_port}


def _recorded(cfg: Any) -> set[tuple[int, int]]:
    """(pid, start time) of the daemons the antispam service recorded (``Layout.daemons_file``)."""
    import json

    from .layout import Layout

    try:
        data = json.loads(Layout.from_config(cfg).daemons_file.read_text())
        return {(int(pid), int(started)) for pid, started in data.values()}
    except (OSError, ValueError, TypeError, AttributeError):
        return set()


def _is_ours(proc: Any, data_dir: str, recorded: set[tuple[int, int]] | None = None) -> bool:
    p, depth = proc, 0
    while p is not None and depth < 5:
        try:
            argv = p.cmdline()
            if recorded and (p.pid, int(p.create_time())) in recorded:
                return True  # one of the daemons our antispam service started (or a worker of one)
        except Exception:  # noqa: BLE001 - gone, or not ours to read
            return False
        line = " ".join(argv)
        if data_dir and data_dir in line:
            return True
        if any(Path(x).name in ("appliance", "appliance.py") or x == "appliance" for x in argv) and "up" in argv:
            return True
        try:
            p = p.parent()
        except Exception:  # noqa: BLE001
            return False
        depth += 1
    return False


def _program(proc: Any) -> str:
    try:
        name = proc.name()
    except Exception:  # noqa: BLE001
        return ""
    # rspamd's workers are named "rspamd: normal process" and the like; redis shows "redis-server 127.0.0.1:6379"
    return name.split(":")[0].split()[0] if name else ""


def holders(cfg: Any, *, connections: list[Any] | None = None) -> list[Holder]:
    """Every listener on the managed antispam's ports, ours or not (empty when antispam is not managed)."""
    if not (cfg.antispam.enabled and cfg.antispam.managed):
        return []
    import psutil

    ports = managed_ports(cfg)
    by_port = {port: key for key, port in ports.items()}
    try:
        conns = connections if connections is not None else psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return []
    data_dir = str(Path(cfg.instance.data_dir).resolve())
    recorded = _recorded(cfg)
    seen: dict[int, Holder] = {}
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr or c.laddr.port not in by_port:
            continue
        port = c.laddr.port
        if port in seen and seen[port].pid is not None:
            continue
        program, ours = "", False
        if c.pid:
            try:
                proc = psutil.Process(c.pid)
                program, ours = _program(proc), _is_ours(proc, data_dir, recorded)
            except psutil.Error:
                pass
        seen[port] = Holder(by_port[port], port, program, c.pid, ours)
    return sorted(seen.values(), key=lambda h: h.port)


def foreign(cfg: Any) -> list[Holder]:
    """The listeners on our ports that the appliance did not start."""
    return [h for h in holders(cfg) if not h.ours]
