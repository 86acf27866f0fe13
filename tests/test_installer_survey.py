"""The host survey: what is read, which NICs count, the sizing drawn from it."""

from __future__ import annotations

import platform
import sqlite3
from pathlib import Path

import pytest
from test_installer_fixtures import G, fake_survey

from installer import sizing
from installer.survey import Survey, describe, disk_of, is_physical_nic, read_os_release, survey_host


def test_survey_of_this_host(tmp_path: Path) -> None:
    s = survey_host(data_dir=tmp_path / "not" / "yet" / "there")
    assert s.cpu.threads >= 1 and s.cpu.cores >= 1 and s.cpu.model
    assert s.memory.total > 0 and s.memory.available > 0
    assert s.data_disk is not None and s.data_disk.free > 0 and s.data_disk.total >= s.data_disk.free
    assert s.python == platform.python_version() and s.sqlite == sqlite3.sqlite_version
    assert s.postgresql is None  # not configured
    assert s.hostname and s.collected_at
    assert "lo" in s.ignored_nics and all(n.name != "lo" for n in s.nics)
    assert Survey.from_dict(s.to_dict()) == s
    lines = describe(s)
    assert lines[0].startswith("CPU: ") and any(line.startswith("memory: ") for line in lines)


@pytest.mark.parametrize("name, mac, has_device, assign_type, physical", [
    ("eno1", "3c:ec:ef:10:20:30", True, "0", True),
    ("eth0", "02:fc:00:00:00:01", True, "0", True),  # locally administered by the hypervisor, but the device's own
    ("wlan0", "5a:11:22:33:44:55", True, "3", False),  # randomised by NetworkManager
    ("eth1", "de:ad:be:ef:00:01", True, "1", False),  # random
    ("eth2", "de:ad:be:ef:00:02", None, None, False),  # random-looking and nothing in /sys to tell
    ("lo", "00:00:00:00:00:00", False, "0", False),
    ("docker0", "02:42:ac:11:00:02", False, "3", False),
    ("veth1a2b3c", "3c:ec:ef:00:00:09", None, None, False),
    ("br-5f1c2d", "3c:ec:ef:00:00:0a", None, None, False),
    ("virbr0", "52:54:00:12:34:56", None, None, False),
    ("tun0", "", None, None, False),
    ("tap0", "3c:ec:ef:00:00:0b", None, None, False),
    ("bond0", "3c:ec:ef:10:20:30", False, "2", False),  # virtual: borrows a slave's MAC
])
def test_virtual_interfaces_are_filtered(name: str, mac: str, has_device: bool | None, assign_type: str | None, physical: bool) -> None:
    assert is_physical_nic(name, mac, has_device=has_device, assign_type=assign_type) is physical


def test_os_release(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n# comment\n')
    assert read_os_release(f) == {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"}
    assert read_os_release(tmp_path / "missing") == {}


def test_disk_of_a_path_that_does_not_exist_yet(tmp_path: Path) -> None:
    d = disk_of(tmp_path / "a" / "b")
    assert d.free > 0 and Path(d.mountpoint).exists()


def test_global_addresses_prefer_public_ones() -> None:
    s = fake_survey()
    assert s.global_addresses(4) == ["203.0.113.25"]  # documentation addresses are not global: the fallback
    s.nics[0].addresses = ["10.0.0.5", "198.51.100.7", "8.8.4.4", "fe80::1"]
    assert s.global_addresses(4) == ["8.8.4.4"]
    s.nics[0].addresses = ["10.0.0.5"]
    assert s.global_addresses(4) == ["10.0.0.5"]  # behind NAT: the private one, for the operator to replace


def test_sizing_says_why() -> None:
    small = sizing.plan(fake_survey(memory=2 * G), 25)
    assert small.workers == 8  # 2 GiB / 4 / 64 MiB; the 16 threads would allow 64
    assert "lowered to 8" in small.reasons["tuning.workers"]
    big = sizing.plan(fake_survey(memory=64 * G), 2000)
    assert big.workers == 64 and big.db_cache_size == 256 * 1024**2 and big.database == "sqlite"
    assert "move to PostgreSQL" in big.reasons["storage.database_url"]
    pg = sizing.plan(fake_survey(), 2000, "postgresql://appliance@db/appliance")
    assert pg.database == "postgresql"
    assert sizing.disk_needed(25) < sizing.disk_recommended(25)
    assert sizing.memory_needed(1000) == G + 2000 * 1024**2


def test_annotate_puts_the_reason_above_the_key() -> None:
    text = "[tuning]\n# Threads.\nworkers = 0\n\n[other]\nworkers = 1\n"
    out = sizing.annotate(text, {"tuning.workers": "because"})
    assert out == "[tuning]\n# Threads.\n# installer: because\nworkers = 0\n\n[other]\nworkers = 1\n"
