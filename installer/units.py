"""The systemd units: one per service, and appliance.target that groups them.

Rendered here from the install layout; the files shipped in ``systemd/`` are
this rendering for the default paths (a test keeps them equal), so both stay
one source. Each service runs ``appliance -c /etc/appliance/appliance.toml
up --service NAME`` as the unprivileged ``appliance`` user with
``Type=notify`` and a watchdog, gets the master key as a systemd credential
(``LoadCredential=``), may bind ports below 1024 and write only to its data
and log directories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .paths import SYSTEM_USER, Layout

SHIPPED_EXECUTABLE = "/opt/appliance/bin/appliance"
TARGET = "appliance.target"
SERVICES: dict[str, str] = {
    "antispam": "spam filter (rspamd bridge)",
    "mta": "SMTP (25, submission 587 and 465)",
    "imapd": "IMAP and POP3 (143, 993, 110, 995)",
    "panel": "web panel (443)",
}
_AFTER = {
    "antispam": "network-online.target",
    "mta": "network-online.target appliance-antispam.service",
    "imapd": "network-online.target",
    "panel": "network-online.target",
}


def unit_name(service: str) -> str:
    return f"appliance-{service}.service"


def executable() -> str:
    """The ``appliance`` command of this installation (the venv's entry point)."""
    candidate = Path(sys.executable).with_name("appliance")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("appliance")
    return found or SHIPPED_EXECUTABLE


def render_units(layout: Layout = Layout(), exe: str = SHIPPED_EXECUTABLE) -> dict[str, str]:
    """File name -> content of every unit."""
    header = ("# Written by `appliance install`; the next install overwrites changes made here.\n"
              "# Put local changes in a drop-in instead: systemctl edit {name}\n")
    units: dict[str, str] = {}
    for service, description in SERVICES.items():
        name = unit_name(service)
        units[name] = header.format(name=name) + f"""
[Unit]
Description=Mail appliance {description}
PartOf={TARGET}
After={_AFTER[service]}
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} -c {layout.config} up --service {service}
Restart=on-failure
RestartSec=5s
TimeoutStartSec=120s
TimeoutStopSec=60s
WatchdogSec=60s
User={SYSTEM_USER}
Group={SYSTEM_USER}
UMask=0077
Environment=PYTHONUNBUFFERED=1
LoadCredential=master.key:{layout.master_key}
ProtectSystem=strict
ReadWritePaths={layout.data} {layout.log}
PrivateTmp=yes
PrivateDevices=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
LockPersonality=yes
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
LimitNOFILE=65536

[Install]
WantedBy={TARGET}
"""
    wants = " ".join(unit_name(s) for s in SERVICES)
    units[TARGET] = header.format(name=TARGET) + f"""
[Unit]
Description=Mail appliance (SMTP, IMAP/POP3, web panel, spam filter)
Wants={wants}
After=network-online.target

[Install]
WantedBy=multi-user.target
"""
    return units


def systemd_running(layout: Layout) -> bool:
    return not layout.fake_root and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def systemctl(*args: str) -> tuple[bool, str]:
    try:
        r = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    tail = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return r.returncode == 0, tail[-1] if tail else ""
