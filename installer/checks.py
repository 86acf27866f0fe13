"""Checks and where their results go.

Every check writes to an output sink, Mail-in-a-Box style:
``out.print_ok(message)``, ``out.print_warning(message, fix)``,
``out.print_error(message, fix)``. ``ConsoleOutput`` prints as it goes,
``JsonOutput`` prints one JSON document at the end, ``BufferedOutput`` only
keeps the findings (the installer's progress lines, the panel's health page).
The same checks so feed ``appliance install``, ``appliance doctor`` and the panel.

This module holds the sinks and the preflight checks of the installer. What
the checks read about the host comes in as data (a ``Survey``) and through
``Probes`` (is a port free, does a name resolve, is the clock in sync, is a
package installed), so tests can stub a full disk or a taken port.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from appliance.i18n import _
from appliance.output import _pad, human_size

from . import sizing
from .survey import Survey, python_ok

REQUIRED_PACKAGES = ("rspamd", "redis-server", "unbound")
# port -> what listens there in production
STANDARD_PORTS: dict[int, str] = {25: "SMTP", 587: "submission", 465: "submissions", 143: "IMAP", 993: "IMAPS",
                                  110: "POP3", 995: "POP3S", 443: "HTTPS, web panel"}

# ---------------------------------------------------------------- output sinks


@dataclass
class Finding:
    level: str  # "ok", "warning", "error"
    message: str
    fix: str | None = None
    check: str | None = None
    section: str | None = None


class BufferedOutput:
    """Keeps the findings; the base of the other sinks."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.section: str | None = None

    def emit(self, finding: Finding) -> None:  # noqa: B027 - a hook for subclasses
        pass

    def emit_heading(self, title: str) -> None:  # noqa: B027 - a hook for subclasses
        pass

    def add_heading(self, title: str) -> None:
        """Start a section (``System``, ``DNS for example.com``); later findings belong to it."""
        self.section = title
        self.emit_heading(title)

    def _add(self, level: str, message: str, fix: str | None, check: str | None, section: str | None = None) -> None:
        if section is not None and section != self.section:
            self.add_heading(section)
        f = Finding(level, message, fix, check, self.section)
        self.findings.append(f)
        self.emit(f)

    def print_ok(self, message: str, *, check: str | None = None) -> None:
        self._add("ok", message, None, check)

    def print_warning(self, message: str, fix: str | None = None, *, check: str | None = None) -> None:
        self._add("warning", message, fix, check)

    def print_error(self, message: str, fix: str | None = None, *, check: str | None = None) -> None:
        self._add("error", message, fix, check)

    @property
    def errors(self) -> int:
        return sum(f.level == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level == "warning" for f in self.findings)

    def replay(self, other: BufferedOutput) -> None:
        for f in self.findings:
            other._add(f.level, f.message, f.fix, f.check, f.section)

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.findings]


class ConsoleOutput(BufferedOutput):
    """One line per finding (``ok``, ``warn``, ``FAIL``), the fix on the next line."""

    def __init__(self, stream: IO[str] | None = None, indent: str = "  ") -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self.indent = indent

    def emit(self, finding: Finding) -> None:
        label = {"ok": _("ok"), "warning": _("warn"), "error": _("FAIL")}[finding.level]
        print(f"{self.indent}{_pad(label, 5)} {finding.message}", file=self.stream)
        if finding.fix:
            print(f"{self.indent}{' ' * 6}{_('fix:')} {finding.fix}", file=self.stream)
        self.stream.flush()

    def emit_heading(self, title: str) -> None:
        print(("\n" if self.findings else "") + title, file=self.stream)


class JsonOutput(BufferedOutput):
    """Everything as one JSON document, written by ``close()``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def close(self, **extra: Any) -> None:
        doc = {"errors": self.errors, "warnings": self.warnings, "findings": self.to_list(), **extra}
        json.dump(doc, self.stream, ensure_ascii=False, indent=2)
        self.stream.write("\n")


# ---------------------------------------------------------------- probes of the host


@dataclass(frozen=True)
class PortUse:
    holder: str  # "postfix (pid 812)", or "another program"
    ours: bool = False  # held by this appliance's own services (a re-run)


def _holder(port: int) -> PortUse:
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                p = psutil.Process(c.pid)
                cmdline = " ".join(p.cmdline())
                ours = "appliance" in cmdline and " up" in cmdline
                return PortUse(f"{p.name()} (pid {c.pid})", ours)
    except Exception:  # noqa: BLE001 - naming the holder is a courtesy
        pass
    return PortUse(_("another program"))


def port_in_use(port: int) -> PortUse | None:
    """None if ``port`` can be bound on every address (IPv4 and IPv6), else who holds it."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
        except PermissionError:  # not root: a port below 1024 cannot be bound; see whether anyone answers
            with socket.socket(family, socket.SOCK_STREAM) as c:
                c.settimeout(1)
                if c.connect_ex(("127.0.0.1" if family == socket.AF_INET else "::1", port)) == 0:
                    return _holder(port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return _holder(port)
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
        finally:
            s.close()
    return None


def resolve(name: str, timeout: float = 5.0) -> list[str]:
    """Addresses ``name`` resolves to with the system resolver (/etc/hosts, DNS); [] if none in ``timeout``."""
    result: list[str] = []

    def lookup() -> None:
        try:
            result.extend(sorted({ai[4][0] for ai in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}))
        except (OSError, UnicodeError):
            pass

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    return list(result)


def _run(argv: list[str], timeout: float = 5.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def clock_status() -> tuple[bool | None, str]:
    """(synchronised?, by what): True/False from timedatectl or chrony, None when neither can tell."""
    if shutil.which("timedatectl"):
        r = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if r is not None and r.returncode == 0 and r.stdout.strip() in ("yes", "no"):
            return r.stdout.strip() == "yes", "timedatectl"
    if shutil.which("chronyc"):
        r = _run(["chronyc", "-n", "tracking"])
        if r is not None and r.returncode == 0:
            m = re.search(r"^Leap status\s*:\s*(.+)$", r.stdout, re.M)
            if m:
                return m.group(1).strip() == "Normal", "chrony"
    return None, ""


def package_installed(name: str) -> bool:
    r = _run(["dpkg-query", "-W", "-f=${Status}", name])
    return r is not None and r.returncode == 0 and r.stdout.strip().endswith("install ok installed")


def apt_install(packages: list[str]) -> tuple[bool, str]:
    """Install Debian packages from the configured sources (a local mirror on air-gapped networks)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                           capture_output=True, text=True, timeout=1800, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    tail = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return r.returncode == 0, tail[-1] if tail else ""


def executables() -> list[str]:
    """The interpreter and the command running now, symlinks resolved."""
    return [os.path.realpath(sys.executable), os.path.realpath(sys.argv[0] or sys.executable)]


@dataclass
class Probes:
    """How the checks look at the host; tests replace any of these."""

    port_in_use: Callable[[int], PortUse | None] = port_in_use
    resolve: Callable[[str], list[str]] = resolve
    clock: Callable[[], tuple[bool | None, str]] = clock_status
    package_installed: Callable[[str], bool] = package_installed
    install_packages: Callable[[list[str]], tuple[bool, str]] = apt_install
    is_root: Callable[[], bool] = field(default=lambda: os.geteuid() == 0)
    executables: Callable[[], list[str]] = executables


# ---------------------------------------------------------------- preflight


@dataclass
class Preflight:
    survey: Survey
    mailboxes: int
    hostname: str
    probes: Probes = field(default_factory=Probes)
    ports: dict[int, str] = field(default_factory=lambda: dict(STANDARD_PORTS))
    packages: tuple[str, ...] = REQUIRED_PACKAGES
    consent: bool = False  # --yes: install missing packages without asking
    ask: Callable[[str], bool] | None = None  # interactive yes/no, when there is a terminal
    fake_root: bool = False  # --root: nothing is installed on the host itself
    dry_run: bool = False
    database_url: str = ""


def check_privileges(pf: Preflight, out: BufferedOutput) -> None:
    if pf.fake_root or pf.probes.is_root():
        out.print_ok(_("running as root") if not pf.fake_root else _("installing into a directory (--root): root is not needed"),
                     check="root")
    elif pf.dry_run:
        out.print_warning(_("not running as root: fine for a dry run, the real install needs root"),
                          _("run the real install with sudo"), check="root")
    else:
        out.print_error(_("the installer needs root to create the system user, directories and services"),
                        _("run it again with sudo"), check="root")


HIDDEN_FROM_SERVICES = ("/home/", "/root/", "/run/user/")  # ProtectHome=yes in the units


def check_executable(pf: Preflight, out: BufferedOutput) -> None:
    """The services (user appliance, ProtectHome=yes) must be able to run this very installation."""
    if pf.fake_root:
        return
    paths = pf.probes.executables()
    hidden = next((p for p in paths if p.startswith(HIDDEN_FROM_SERVICES)), None)
    if hidden:
        out.print_error(_("the appliance runs from {path}, which the services cannot reach (home directories are hidden from them)").format(path=hidden),
                        _("install it under /opt: python3 -m venv /opt/appliance && /opt/appliance/bin/pip install mail-appliance"),
                        check="executable")
    else:
        out.print_ok(_("the services can run {path}").format(path=paths[0]), check="executable")


def check_os(pf: Preflight, out: BufferedOutput) -> None:
    os_id = pf.survey.os.get("id", "")
    name = pf.survey.os.get("pretty_name", os_id or "?")
    if os_id == "debian":
        out.print_ok(_("operating system: {name}").format(name=name), check="os")
    else:
        out.print_warning(_("operating system: {name}; only Debian 12 or newer is supported").format(name=name),
                          _("install on Debian 12 (bookworm) or newer"), check="os")


def check_python(pf: Preflight, out: BufferedOutput) -> None:
    if python_ok(pf.survey.python):
        out.print_ok(_("Python {version}").format(version=pf.survey.python), check="python")
    else:
        out.print_error(_("Python {version} is too old; 3.11 or newer is needed").format(version=pf.survey.python),
                        _("install on Debian 12 (bookworm) or newer, which ships Python 3.11"), check="python")


def check_disk(pf: Preflight, out: BufferedOutput) -> None:
    disk = pf.survey.data_disk
    if disk is None:
        out.print_warning(_("cannot tell the free space where the data will live"), _("check it with df -h /var/lib"), check="disk")
        return
    need, want = sizing.disk_needed(pf.mailboxes), sizing.disk_recommended(pf.mailboxes)
    args = {"free": human_size(disk.free), "mount": disk.mountpoint, "need": human_size(need), "want": human_size(want), "n": pf.mailboxes}
    if disk.free < need:
        out.print_error(_("only {free} free on {mount}; {n} mailboxes need at least {need}").format(**args),
                        _("free space or add a disk for /var/lib/appliance, or plan fewer mailboxes (--mailboxes)"), check="disk")
    elif disk.free < want:
        out.print_warning(_("{free} free on {mount}: enough to start, {want} recommended for {n} mailboxes").format(**args),
                          _("plan more disk space as mailboxes fill up"), check="disk")
    else:
        out.print_ok(_("{free} free on {mount} ({want} recommended for {n} mailboxes)").format(**args), check="disk")


def check_memory(pf: Preflight, out: BufferedOutput) -> None:
    total = pf.survey.memory.total
    need, want = sizing.memory_needed(pf.mailboxes), sizing.memory_recommended(pf.mailboxes)
    args = {"total": human_size(total), "need": human_size(need), "want": human_size(want), "n": pf.mailboxes}
    if total < need:
        out.print_error(_("{total} of memory; {n} mailboxes need at least {need}").format(**args),
                        _("add memory, or plan fewer mailboxes (--mailboxes)"), check="memory")
    elif total < want:
        out.print_warning(_("{total} of memory: enough to start, {want} recommended for {n} mailboxes").format(**args),
                          _("add memory before the mailboxes fill up"), check="memory")
    else:
        out.print_ok(_("{total} of memory ({want} recommended for {n} mailboxes)").format(**args), check="memory")


def check_ports(pf: Preflight, out: BufferedOutput) -> None:
    for port, what in sorted(pf.ports.items()):
        use = pf.probes.port_in_use(port)
        if use is None:
            out.print_ok(_("port {port} ({what}) is free").format(port=port, what=what), check=f"port-{port}")
        elif use.ours:
            out.print_ok(_("port {port} ({what}) is served by the appliance already").format(port=port, what=what), check=f"port-{port}")
        else:
            out.print_error(_("port {port} ({what}) is taken by {holder}").format(port=port, what=what, holder=use.holder),
                            _("stop and disable that service (e.g. systemctl disable --now postfix), then run the installer again"),
                            check=f"port-{port}")


def is_fqdn(name: str) -> bool:
    from appliance.config import _HOSTNAME_RE

    name = name.rstrip(".").lower()
    return bool(_HOSTNAME_RE.fullmatch(name)) and "." in name and not name.endswith((".localhost", ".local", ".localdomain")) \
        and not re.fullmatch(r"[\d.]+", name)


def check_hostname(pf: Preflight, out: BufferedOutput) -> None:
    name = pf.hostname
    if not is_fqdn(name):
        out.print_error(_("{name} is not a fully qualified host name").format(name=name),
                        _("pass --hostname mail.example.com (the name the MX record will point to)"), check="hostname")
        return
    out.print_ok(_("{name} is a fully qualified host name").format(name=name), check="hostname")
    addresses = pf.probes.resolve(name)
    if not addresses:
        out.print_warning(_("{name} does not resolve yet").format(name=name),
                          _("publish its A record (printed at the end) so that clients and other servers find it"), check="resolve")
    elif all(a.startswith("127.") or a == "::1" for a in addresses):
        out.print_warning(_("{name} resolves only to {addresses} (from /etc/hosts)").format(name=name, addresses=", ".join(addresses)),
                          _("publish its A record with the public address in DNS"), check="resolve")
    else:
        out.print_ok(_("{name} resolves to {addresses}").format(name=name, addresses=", ".join(addresses)), check="resolve")


def check_clock(pf: Preflight, out: BufferedOutput) -> None:
    synced, how = pf.probes.clock()
    if synced:
        out.print_ok(_("the clock is synchronised ({how})").format(how=how), check="clock")
    elif synced is False:
        out.print_warning(_("the clock is not synchronised ({how}); TLS, DKIM and two-factor codes need the right time").format(how=how),
                          _("enable NTP: timedatectl set-ntp true (or point chrony at your time server)"), check="clock")
    else:
        out.print_warning(_("cannot tell whether the clock is synchronised (neither timedatectl nor chrony answers)"),
                          _("install and enable systemd-timesyncd or chrony"), check="clock")


def check_packages(pf: Preflight, out: BufferedOutput) -> None:
    missing = [p for p in pf.packages if not pf.probes.package_installed(p)]
    for p in pf.packages:
        if p not in missing:
            out.print_ok(_("Debian package {name} is installed").format(name=p), check=f"package-{p}")
    if not missing:
        return
    names = " ".join(missing)
    if pf.fake_root:
        out.print_warning(_("Debian packages missing: {names} (not installed under --root)").format(names=names),
                          _("apt-get install {names}").format(names=names), check="packages")
        return
    consent = pf.consent or (pf.ask is not None and not pf.dry_run
                             and pf.ask(_("Install the missing Debian packages {names} with apt-get?").format(names=names)))
    if pf.dry_run:
        out.print_warning(_("Debian packages missing: {names} (the install would add them with --yes)").format(names=names),
                          _("apt-get install {names}").format(names=names), check="packages")
    elif not consent:
        out.print_error(_("Debian packages missing: {names}").format(names=names),
                        _("apt-get install {names}, or run the installer again with --yes").format(names=names), check="packages")
    else:
        ok, detail = pf.probes.install_packages(missing)
        if ok:
            out.print_ok(_("installed the Debian packages {names}").format(names=names), check="packages")
        else:
            out.print_error(_("apt-get could not install {names}: {detail}").format(names=names, detail=detail),
                            _("make a Debian mirror reachable (a local one on an air-gapped network) or install the packages from media"),
                            check="packages")


def check_database(pf: Preflight, out: BufferedOutput) -> None:
    if pf.database_url.startswith("postgresql"):
        version = pf.survey.postgresql or ""
        if re.match(r"\d", version):
            out.print_ok(_("PostgreSQL {version} answers").format(version=version), check="database")
        else:
            out.print_error(_("PostgreSQL at --database-url does not answer: {detail}").format(detail=version or "?"),
                            _("check the URL, that the server runs and that ~/.pgpass holds the password"), check="database")
    elif pf.mailboxes > sizing.SQLITE_MAX_MAILBOXES:
        out.print_warning(_("{n} mailboxes on SQLite: PostgreSQL is recommended above {max}").format(
            n=pf.mailboxes, max=sizing.SQLITE_MAX_MAILBOXES),
            _("create a PostgreSQL database and pass --database-url postgresql://appliance@localhost/appliance"), check="database")
    else:
        out.print_ok(_("SQLite {version} for up to {max} mailboxes").format(version=pf.survey.sqlite, max=sizing.SQLITE_MAX_MAILBOXES),
                     check="database")


PREFLIGHT: list[Callable[[Preflight, BufferedOutput], None]] = [
    check_privileges, check_executable, check_os, check_python, check_disk, check_memory, check_ports, check_hostname, check_clock,
    check_packages, check_database,
]


def run_preflight(pf: Preflight, out: BufferedOutput) -> None:
    for check in PREFLIGHT:
        check(pf, out)
