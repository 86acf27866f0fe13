"""One line for ``appliance status``: is spam filtering on, installed, answering?"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from appliance.i18n import _


def _ping(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET /ping HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and data.rstrip().endswith(b"pong")


def describe(cfg: Any) -> dict[str, str]:
    """``{"state": "up" | "down" | "off" | "unavailable" | "conflict", "detail": ...}`` (translated detail).

    "conflict": a program the appliance did not start (Debian's rspamd.service...) holds a port of
    the managed rspamd, redis or unbound; the detail names it and the unit to stop.
    """
    from .daemons import missing_programs

    a = cfg.antispam
    if not a.enabled:
        return {"state": "off", "detail": _("antispam.enabled = false")}
    if a.managed:
        missing = missing_programs()
        if missing:
            return {"state": "unavailable", "detail": _("not installed: {packages} (apt install {packages}); mail is accepted unchecked").format(
                packages=" ".join(missing))}
        from .ports import foreign

        clash = foreign(cfg)
        if clash:
            return {"state": "conflict", "detail": "; ".join([*(h.describe() for h in clash), clash[0].fix()])}
    if _ping(a.url):
        detail = _("rspamd answers at {url}").format(url=a.url)
        if a.virus_scan and a.managed:
            detail += "; " + _virus_detail(cfg)
        return {"state": "up", "detail": detail}
    return {"state": "down", "detail": _("rspamd does not answer at {url}; mail follows antispam.on_failure = {policy}").format(
        url=a.url, policy=a.on_failure)}


def _clamd_answers(path: str, timeout: float = 1.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"zPING\0")
            return s.recv(16).rstrip(b"\0") == b"PONG"
    except OSError:
        return False


def _virus_detail(cfg: Any) -> str:
    from .daemons import virus_scanner_missing
    from .layout import Layout

    if virus_scanner_missing(cfg):
        return _("virus scanning off: clamd is not installed (apt install clamav-daemon)")
    if _clamd_answers(str(Layout.from_config(cfg).clamd_socket)):
        return _("virus scanning on (clamd answers)")
    return _("virus scanning unavailable: clamd does not answer (loading its signatures, or none in {path})").format(
        path=cfg.antispam.virus_database_dir)
