"""The host fingerprint a licence is bound to: a set of hashed components.

Four components, each the SHA-256 of what identifies one part of the machine:

- ``cpu``: the CPU model string;
- ``machine``: the DMI product UUID, else /etc/machine-id;
- ``nics``: the MAC addresses of the physical NICs (virtual ones filtered);
- ``disk``: the identity of the disk holding / (serial or WWID, else the
  filesystem UUID, else its device name and size).

Only digests leave this module (the licence request holds them, never a raw
serial). A licence tolerates one changed component, so replacing a NIC or a
disk does not stop mail; two changed components make it invalid.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.i18n import _

COMPONENTS = ("cpu", "machine", "nics", "disk")
_DOMAIN = b"appliance-fingerprint-v1"


def hash_component(name: str, value: str) -> str:
    """Digest of one component; the name is mixed in so equal values in two components differ."""
    return hashlib.sha256(_DOMAIN + b"\0" + name.encode() + b"\0" + value.strip().lower().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Fingerprint:
    components: dict[str, str]  # name -> digest
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # name -> where it was read (no values)

    def to_dict(self) -> dict[str, str]:
        return dict(self.components)


def changed_components(licensed: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Names of the components that differ (a component missing on either side counts as changed)."""
    return [n for n in sorted(set(licensed) | set(current)) if licensed.get(n) != current.get(n)]


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def machine_identity() -> tuple[str, str]:
    """(value, source): the DMI product UUID (absent in many VMs), else the systemd machine id."""
    for path, source in (("/sys/class/dmi/id/product_uuid", "dmi product_uuid"),
                         ("/etc/machine-id", "machine-id"), ("/var/lib/dbus/machine-id", "dbus machine-id")):
        value = _read(path)
        if value and value.strip("0-") != "":
            return value, source
    return "none", "none"


def _root_device() -> str | None:
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _sep, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and fields[4] == "/":
                return fields[2]  # major:minor
    except OSError:
        pass
    return None


def disk_identity() -> tuple[str, str]:
    """(value, source) of the disk holding /."""
    majmin = _root_device()
    if majmin and majmin.split(":")[0] != "0":
        block = Path(f"/sys/dev/block/{majmin}")
        try:
            block = block.resolve()
        except OSError:
            pass
        disk = block.parent if (block / "partition").exists() else block
        for leaf in ("device/wwid", "wwid", "serial", "device/serial", "device/vpd_pg80"):
            value = _read(disk / leaf)
            if value:
                return value, f"{disk.name} {leaf.split('/')[-1]}"
        by_uuid = Path("/dev/disk/by-uuid")
        if by_uuid.is_dir():
            for link in by_uuid.iterdir():
                try:
                    st = os.stat(link)
                except OSError:
                    continue
                if f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" == majmin:
                    return link.name, "filesystem uuid"
        return f"{disk.name}:{_read(disk / 'size')}", "device name and size"
    return f"root:{majmin or '?'}", "root mount"


def physical_macs() -> list[str]:
    from .survey import _nics

    nics, _ignored = _nics()
    return sorted({n.mac for n in nics})


_cache: tuple[float, Fingerprint] | None = None


def host_fingerprint(*, max_age: float = 600.0) -> Fingerprint:
    """This host's fingerprint (cached for ``max_age`` seconds in this process)."""
    global _cache
    if _cache is not None and time.monotonic() - _cache[0] < max_age:
        return _cache[1]
    from .survey import cpu_model

    machine, machine_src = machine_identity()
    disk, disk_src = disk_identity()
    macs = physical_macs()
    values = {"cpu": cpu_model(), "machine": machine, "nics": ",".join(macs) or "none", "disk": disk}
    fp = Fingerprint(
        {name: hash_component(name, values[name]) for name in COMPONENTS},
        {"cpu": "/proc/cpuinfo", "machine": machine_src,
         "nics": _("{n} physical NICs").format(n=len(macs)), "disk": disk_src},
    )
    _cache = (time.monotonic(), fp)
    return fp
