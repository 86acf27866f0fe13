"""What the installer reads about the host: CPU, memory, disks, NICs, names, OS, versions.

Read with psutil, /proc, /sys and /etc/os-release; nothing leaves the machine.
The survey is shown to the operator and saved as ``install-report.json`` in
the instance, exactly as collected. Identities used only for the host
fingerprint (machine id, disk serial) are not part of it: see fingerprint.py.

Tests replace the whole survey with a ``Survey`` of their own (a full disk,
too little memory): every check takes the survey as data.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from appliance.i18n import _
from appliance.output import human_size

# Interfaces that are never a physical NIC, by name.
VIRTUAL_PREFIXES = ("lo", "docker", "veth", "br-", "virbr", "tun", "tap", "vnet", "ifb", "dummy", "wg",
                    "vxlan", "flannel", "cni", "cali", "kube", "podman", "lxc", "zt", "tailscale")
PSEUDO_FILESYSTEMS = {"tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "devpts", "cgroup", "cgroup2",
                      "autofs", "fuse.lxcfs", "nsfs", "ramfs", "efivarfs", "iso9660"}
SYS_NET = Path("/sys/class/net")


@dataclass
class CpuInfo:
    model: str
    cores: int  # physical cores (logical if unknown)
    threads: int
    mhz: float | None  # highest known frequency


@dataclass
class MemoryInfo:
    total: int
    available: int
    swap: int


@dataclass
class DiskInfo:
    mountpoint: str
    device: str
    fstype: str
    total: int
    free: int


@dataclass
class NicInfo:
    name: str
    mac: str
    addresses: list[str] = field(default_factory=list)
    up: bool = True
    speed_mbps: int | None = None


@dataclass
class Survey:
    hostname: str
    fqdn: str
    cpu: CpuInfo
    memory: MemoryInfo
    disks: list[DiskInfo]
    data_disk: DiskInfo | None  # the filesystem that holds (or will hold) the data directory
    nics: list[NicInfo]
    ignored_nics: list[str]
    os: dict[str, str]
    kernel: str
    architecture: str
    python: str
    sqlite: str
    postgresql: str | None = None
    collected_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Survey:
        d = dict(data)
        d["cpu"] = CpuInfo(**d["cpu"])
        d["memory"] = MemoryInfo(**d["memory"])
        d["disks"] = [DiskInfo(**x) for x in d["disks"]]
        d["data_disk"] = DiskInfo(**d["data_disk"]) if d.get("data_disk") else None
        d["nics"] = [NicInfo(**x) for x in d["nics"]]
        return cls(**d)

    def global_addresses(self, version: int) -> list[str]:
        """Addresses of the physical NICs for DNS: the public ones, else the private ones (behind NAT)."""
        import ipaddress

        usable = []
        for nic in self.nics:
            for a in nic.addresses:
                ip = ipaddress.ip_address(a.split("%", 1)[0])
                if ip.version == version and not (ip.is_loopback or ip.is_link_local or ip.is_multicast):
                    usable.append(ip)
        public = [str(ip) for ip in usable if ip.is_global]
        return public or [str(ip) for ip in usable]


# ---------------------------------------------------------------- pieces


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            out[key.lower()] = value.strip().strip('"').strip("'")
    return {k: out[k] for k in ("id", "version_id", "version_codename", "pretty_name") if k in out}


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m and m.group(1).strip():
            return " ".join(m.group(1).split())
    return platform.processor() or platform.machine() or "unknown"


def _cpu() -> CpuInfo:
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cores = psutil.cpu_count(logical=False) or threads
    mhz = None
    try:
        f = psutil.cpu_freq()
        if f:
            mhz = float(f.max or f.current) or None
    except (OSError, NotImplementedError, AttributeError):
        pass
    return CpuInfo(model=cpu_model(), cores=cores, threads=threads, mhz=round(mhz, 1) if mhz else None)


def _memory() -> MemoryInfo:
    vm = psutil.virtual_memory()
    return MemoryInfo(total=vm.total, available=vm.available, swap=psutil.swap_memory().total)


def _disks() -> list[DiskInfo]:
    out, seen = [], set()
    for p in psutil.disk_partitions(all=False):
        if p.fstype in PSEUDO_FILESYSTEMS or p.mountpoint.startswith(("/proc", "/sys", "/dev", "/run", "/snap")):
            continue
        if (p.device, p.mountpoint) in seen:
            continue
        seen.add((p.device, p.mountpoint))
        try:
            u = psutil.disk_usage(p.mountpoint)
        except OSError:
            continue
        out.append(DiskInfo(p.mountpoint, p.device, p.fstype, u.total, u.free))
    return out


def existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_of(path: Path, disks: list[DiskInfo] | None = None) -> DiskInfo:
    """The filesystem holding ``path`` (or the nearest existing parent), with its free space now."""
    where = existing_ancestor(path)
    u = psutil.disk_usage(str(where))
    best: DiskInfo | None = None
    for d in disks if disks is not None else _disks():
        if (str(where) + "/").startswith(d.mountpoint.rstrip("/") + "/") and (best is None or len(d.mountpoint) > len(best.mountpoint)):
            best = d
    if best is None:
        return DiskInfo(str(where), "?", "?", u.total, u.free)
    return DiskInfo(best.mountpoint, best.device, best.fstype, u.total, u.free)


def is_laa(mac: str) -> bool:
    """Locally administered MAC (bit 1 of the first octet): set by software, often random."""
    try:
        return bool(int(mac.split(":")[0], 16) & 0x02)
    except ValueError:
        return True


def _sysfs(name: str, leaf: str) -> str | None:
    try:
        return (SYS_NET / name / leaf).read_text().strip()
    except OSError:
        return None


def is_physical_nic(name: str, mac: str, *, has_device: bool | None = None, assign_type: str | None = None) -> bool:
    """Is ``name`` a real NIC whose MAC may identify the host?

    Not: loopback, docker*, veth*, br-*, virbr*, tun/tap and the like (by
    name), devices without hardware behind them in /sys (``has_device`` False:
    bridges, bonds, ifb, dummies), and locally administered MACs the kernel
    made up (``assign_type`` "1" NET_ADDR_RANDOM, "3" set by software such as
    NetworkManager's MAC randomisation, or unknown). A locally administered
    MAC a hypervisor gave the device as its own ("0") is kept: it is stable.
    """
    if not mac or mac == "00:00:00:00:00:00" or name.startswith(VIRTUAL_PREFIXES):
        return False
    if has_device is False:
        return False
    return not (is_laa(mac) and assign_type in (None, "1", "3"))


def _nics() -> tuple[list[NicInfo], list[str]]:
    addrs = psutil.net_if_addrs()
    try:
        stats = psutil.net_if_stats()
    except OSError:
        stats = {}
    sysfs = SYS_NET.is_dir()
    nics, ignored = [], []
    for name, entries in sorted(addrs.items()):
        mac = next((a.address.lower() for a in entries if a.family == psutil.AF_LINK), "")
        has_device = (SYS_NET / name / "device").exists() if sysfs else None
        if not is_physical_nic(name, mac, has_device=has_device, assign_type=_sysfs(name, "addr_assign_type") if sysfs else None):
            ignored.append(name)
            continue
        ips = [a.address for a in entries if a.family in (socket.AF_INET, socket.AF_INET6)]
        st = stats.get(name)
        nics.append(NicInfo(name, mac, ips, bool(st.isup) if st else True, (st.speed or None) if st else None))
    return nics, ignored


def postgresql_version(database_url: str | None, timeout: float = 5.0) -> str | None:
    """The server version of a configured PostgreSQL; None when SQLite; "unreachable (...)" on error."""
    if not database_url or not database_url.startswith("postgresql"):
        return None
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url, connect_args={"connect_timeout": int(timeout)})
        try:
            with engine.connect() as c:
                return str(c.execute(text("SHOW server_version")).scalar_one())
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return _("unreachable ({error})").format(error=str(exc).splitlines()[0][:120])


def survey_host(*, data_dir: Path | None = None, database_url: str | None = None) -> Survey:
    """Read the host now. ``data_dir``: where the data will live (its filesystem is checked for space)."""
    disks = _disks()
    nics, ignored = _nics()
    hostname = socket.gethostname()
    try:
        fqdn = socket.getfqdn(hostname)
    except OSError:
        fqdn = hostname
    return Survey(
        hostname=hostname,
        fqdn=fqdn,
        cpu=_cpu(),
        memory=_memory(),
        disks=disks,
        data_disk=disk_of(data_dir, disks) if data_dir is not None else None,
        nics=nics,
        ignored_nics=ignored,
        os=read_os_release(),
        kernel=platform.release(),
        architecture=platform.machine(),
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        postgresql=postgresql_version(database_url),
        collected_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def describe(s: Survey) -> list[str]:
    """The survey as lines for the operator."""
    mhz = _(", {ghz:.1f} GHz").format(ghz=s.cpu.mhz / 1000) if s.cpu.mhz else ""
    lines = [
        _("CPU: {model}, {cores} cores / {threads} threads{mhz}").format(model=s.cpu.model, cores=s.cpu.cores, threads=s.cpu.threads, mhz=mhz),
        _("memory: {total} ({available} available), swap {swap}").format(
            total=human_size(s.memory.total), available=human_size(s.memory.available), swap=human_size(s.memory.swap)),
    ]
    for d in s.disks:
        lines.append(_("disk: {mount} on {device} ({fstype}), {free} free of {total}").format(
            mount=d.mountpoint, device=d.device, fstype=d.fstype, free=human_size(d.free), total=human_size(d.total)))
    if s.data_disk is not None:
        lines.append(_("data will live on {mount}: {free} free").format(mount=s.data_disk.mountpoint, free=human_size(s.data_disk.free)))
    for n in s.nics:
        lines.append(_("network: {name} {mac} {addresses}").format(name=n.name, mac=n.mac, addresses=" ".join(n.addresses) or "-"))
    if s.ignored_nics:
        lines.append(_("virtual interfaces ignored: {names}").format(names=", ".join(s.ignored_nics)))
    lines.append(_("host name: {hostname} (FQDN {fqdn})").format(hostname=s.hostname, fqdn=s.fqdn))
    lines.append(_("system: {os}, kernel {kernel}, {arch}").format(os=s.os.get("pretty_name", "?"), kernel=s.kernel, arch=s.architecture))
    versions = _("Python {python}, SQLite {sqlite}").format(python=s.python, sqlite=s.sqlite)
    if s.postgresql:
        versions += _(", PostgreSQL {version}").format(version=s.postgresql)
    lines.append(versions)
    return lines


def python_ok(version: str = platform.python_version()) -> bool:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= (3, 11)


__all__ = ["CpuInfo", "DiskInfo", "MemoryInfo", "NicInfo", "Survey", "describe", "disk_of", "is_physical_nic",
           "python_ok", "survey_host"]
