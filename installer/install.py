"""``appliance install`` and ``appliance uninstall``: the steps, their progress, the summary.

    [1/9] Survey the host ... ok
    [2/9] Preflight checks ... ok (1 warning)
    ...

A step that fails prints FAILED with what to do and the install stops with a
non-zero exit; nothing after that step is touched, and running the installer
again (after the fix) picks up where it stopped. Nothing here reaches the
network beyond this host: no step downloads anything unless the operator
consents to installing missing Debian packages from the configured sources.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.i18n import _

from . import i18n_zh  # noqa: F401 - registers the Chinese messages
from .checks import BufferedOutput, ConsoleOutput, Preflight, Probes, run_preflight
from .paths import SYSTEM_USER, Layout
from .provision import (
    Context,
    InstallError,
    InstallOptions,
    StepLog,
    ensure_config,
    ensure_database,
    ensure_directories,
    ensure_dkim,
    ensure_master_key,
    ensure_tls,
    ensure_user,
    fix_data_ownership,
    read_state,
    release_distribution_units,
    write_file,
    write_state,
)
from .survey import Survey, describe, survey_host

__all__ = ["Hooks", "InstallError", "InstallOptions", "run_install", "run_uninstall"]


@dataclass
class Hooks:
    """Everything the installer asks of the host; tests replace parts."""

    survey: Callable[..., Survey] = survey_host
    probes: Probes = field(default_factory=Probes)
    fingerprint: Callable[[], Any] | None = None  # () -> Fingerprint; None: the host's
    licence_public_key: Any = None  # tests: their own vendor key
    ask: Callable[[str], bool] | None = None  # interactive yes/no; None: no terminal
    systemctl: Callable[..., tuple[bool, str]] | None = None
    systemd_running: Callable[[Layout], bool] | None = None


def ask_terminal(question: str) -> bool:
    try:
        answer = input(f"{question} [Y/n] ").strip().lower()
    except EOFError:
        return False
    return answer in ("", "y", "yes", "是", "好")


class Progress:
    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total, self.n, self.stream = total, 0, stream

    def start(self, title: str) -> None:
        self.n += 1
        self.stream.write(f"[{self.n}/{self.total}] {title} ... ")
        self.stream.flush()

    def end(self, status: str, lines: list[str] = ()) -> None:  # type: ignore[assignment]
        self.stream.write(status + "\n")
        for line in lines:
            self.stream.write(f"      {line}\n")
        self.stream.flush()


def _warnings(log: StepLog) -> str:
    return (_("{n} warning") if log.warnings == 1 else _("{n} warnings")).format(n=log.warnings)


def _read_only_status(log: StepLog) -> str:
    return _("ok") + (f" ({_warnings(log)})" if log.warnings else "")


def _status(log: StepLog, dry_run: bool) -> str:
    extra = [_warnings(log)] if log.warnings else []
    if dry_run and log.changed:
        extra.append(_("dry run: nothing changed"))
    elif log.changed:
        extra.append(_("changed"))
    else:
        extra.append(_("unchanged"))
    return _("ok") + f" ({', '.join(extra)})"


STEPS = 9


def run_install(opts: InstallOptions, hooks: Hooks | None = None, stream: IO[str] | None = None) -> int:
    """Run the install; return the exit code (0 only when every step succeeded)."""
    hooks = hooks or Hooks()
    out = stream or sys.stdout
    layout = Layout(Path(opts.root).absolute())
    if opts.hostname is None:
        opts.hostname = _configured_hostname(layout)  # a re-run for another domain keeps the server's name
    ctx = Context(opts=opts, layout=layout)
    progress = Progress(STEPS, out)
    what = _("dry run: nothing will be changed") if opts.dry_run else ""
    out.write(_("Installing the mail appliance for {domain} on {host}").format(domain=opts.domain, host=ctx.hostname)
              + (f" ({what})" if what else "") + (_(" into {root}").format(root=layout.root) if layout.fake_root else "") + "\n")
    steps: list[tuple[str, Callable[[Context, Hooks], None]]] = [
        (_("Survey the host"), _step_survey),
        (_("Preflight checks"), _step_preflight),
        (_("Licence"), _step_licence),
        (_("System user and directories"), _step_dirs),
        (_("Keys and certificate"), _step_keys),
        (_("Configuration"), _step_config),
        (_("Database, domain and first admin"), _step_database),
        (_("systemd services"), _step_units),
        (_("DNS records and install report"), _step_report),
    ]
    old_umask = os.umask(0o077)  # what the installer creates is private unless it says otherwise
    try:
        return _run_steps(ctx, hooks, steps, progress, out)
    finally:
        os.umask(old_umask)


def _run_steps(ctx: Context, hooks: Hooks, steps: list[tuple[str, Callable[[Context, Hooks], None]]], progress: Progress,
               out: IO[str]) -> int:
    opts = ctx.opts
    for title, fn in steps:
        ctx.log = StepLog(dry_run=opts.dry_run)
        progress.start(title)
        try:
            fn(ctx, hooks)
        except InstallError as exc:
            lines = ctx.log.notes + [_("error: {message}").format(message=exc)]
            if exc.fix:
                lines.append(_("fix: {fix}").format(fix=exc.fix))
            progress.end(_("FAILED"), lines)
            out.write(_("Install stopped at step {n} of {total}; nothing after it was changed. "
                        "Fix the problem and run the same command again: it is safe to repeat.").format(n=progress.n, total=STEPS) + "\n")
            out.flush()
            return 1
        progress.end(ctx.log.status or _status(ctx.log, opts.dry_run), ctx.log.notes)
    _summary(ctx, out)
    return 0


def _configured_hostname(layout: Layout) -> str | None:
    import tomllib

    try:
        with open(layout.config, "rb") as f:
            name = tomllib.load(f).get("instance", {}).get("hostname")
    except (OSError, ValueError):
        return None
    return name if isinstance(name, str) and name else None


# ---------------------------------------------------------------- the steps


def _step_survey(ctx: Context, hooks: Hooks) -> None:
    ctx.survey = hooks.survey(data_dir=ctx.layout.data, database_url=ctx.opts.database_url)
    for line in describe(ctx.survey):
        ctx.log.note(line)
    ctx.log.status = _read_only_status(ctx.log)


def _step_preflight(ctx: Context, hooks: Hooks) -> None:
    from . import sizing

    o = ctx.opts
    buf = BufferedOutput()
    pf = Preflight(survey=ctx.survey, mailboxes=o.mailboxes, hostname=ctx.hostname, probes=hooks.probes, consent=o.yes,
                   ask=hooks.ask, fake_root=ctx.layout.fake_root, dry_run=o.dry_run, database_url=o.database_url)
    run_preflight(pf, buf)
    text = io.StringIO()
    buf.replay(ConsoleOutput(text, indent=""))
    lines = text.getvalue().splitlines()
    ctx.sizing = sizing.plan(ctx.survey, o.mailboxes, o.database_url)
    ctx.checks = buf
    if buf.errors:
        ctx.log.notes = lines
        raise InstallError(_("{n} of the checks failed").format(n=buf.errors), _("see the FAIL lines above"))
    ctx.log.warnings = buf.warnings
    ctx.log.status = _read_only_status(ctx.log)
    ctx.log.notes = lines
    if hooks.ask is not None and not o.yes and not o.dry_run and not hooks.ask(_("Go ahead and install?")):
        raise InstallError(_("cancelled; nothing was changed"), None)


def _step_licence(ctx: Context, hooks: Hooks) -> None:
    from appliance.licence_hook import TRIAL_DOMAINS, TRIAL_MAILBOXES

    from .licence import LicenceError, check_licence, parse_licence, read_text

    fp = hooks.fingerprint() if hooks.fingerprint else None
    ctx.licence_kw = {"fingerprint": fp.components if fp else None, "public_key": hooks.licence_public_key}
    if ctx.opts.licence is None:
        ctx.log.note(_("no licence given: trial mode, up to {n} mailboxes in up to {d} domains, no time limit").format(
            n=TRIAL_MAILBOXES, d=TRIAL_DOMAINS))
        ctx.log.note(_("to license: appliance licence request > request.json, send it to the vendor, then appliance licence install FILE"))
        if ctx.opts.mailboxes > TRIAL_MAILBOXES:
            ctx.log.warn(_("you plan {n} mailboxes; the trial allows {trial}").format(n=ctx.opts.mailboxes, trial=TRIAL_MAILBOXES))
        ctx.log.status = _read_only_status(ctx.log)
        return
    try:
        text = read_text(ctx.opts.licence)
        lic = parse_licence(text)
    except LicenceError as exc:
        raise InstallError(str(exc), _("use the licence file the vendor sent")) from None
    status = check_licence(lic, public_key=hooks.licence_public_key, fingerprint=fp.components if fp else None, domains=[ctx.domain])
    if not status.usable:
        raise InstallError(_("the licence {id} cannot be used: {problems}").format(id=lic.id, problems="; ".join(status.problems)),
                           _("ask the vendor for a licence for this host (appliance licence request)"))
    if status.uncovered:
        raise InstallError(_("the licence {id} is for {domains}, not for {domain}").format(id=lic.id, domains=", ".join(lic.domains), domain=ctx.domain),
                           _("install for a licensed domain, or ask the vendor to add {domain}").format(domain=ctx.domain))
    ctx.licence_text, ctx.licence_status = text, status
    ctx.log.note(_("licence {id} for {org}: {n} mailboxes, {domains}, valid until {date}").format(
        id=lic.id, org=lic.organisation, n=lic.mailboxes, domains=", ".join(lic.domains), date=lic.expires))
    for w in status.warnings:
        ctx.log.warn(w)
    if ctx.opts.mailboxes > lic.mailboxes:
        ctx.log.warn(_("you plan {n} mailboxes; the licence allows {allowed}").format(n=ctx.opts.mailboxes, allowed=lic.mailboxes))
    ctx.log.status = _read_only_status(ctx.log)


def _step_dirs(ctx: Context, hooks: Hooks) -> None:
    ensure_user(ctx)
    ensure_directories(ctx)


def _step_keys(ctx: Context, hooks: Hooks) -> None:
    ensure_master_key(ctx)
    ensure_tls(ctx)
    ensure_dkim(ctx)


def _step_config(ctx: Context, hooks: Hooks) -> None:
    for line in ctx.sizing.describe():
        ctx.log.note(line)
    ensure_config(ctx)


def _step_database(ctx: Context, hooks: Hooks) -> None:
    ensure_database(ctx)
    fix_data_ownership(ctx)


def _step_units(ctx: Context, hooks: Hooks) -> None:
    from . import units

    layout, log = ctx.layout, ctx.log
    rendered = units.render_units(layout, units.executable())
    state = read_state(layout)
    written = dict(state.get("units", {}))
    changed = False
    for name, text in rendered.items():
        path = layout.units / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        changed = True
        log.act(_("wrote {path}").format(path=path), _("would write {path}").format(path=path),
                lambda p=path, t=text: (p.parent.mkdir(parents=True, exist_ok=True), write_file(p, t, 0o644)))
        written[name] = True
    if not changed:
        log.note(_("units up to date in {path}").format(path=layout.units))
    write_state(ctx, units=written)
    link, exe = layout.command_link, units.executable()
    current = os.readlink(link) if link.is_symlink() else None
    if current != exe and (current is not None or not link.exists()):
        def make_link() -> None:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(exe)

        log.act(_("linked {link} to {exe}").format(link=link, exe=exe), _("would link {link} to {exe}").format(link=link, exe=exe), make_link)
    running = hooks.systemd_running(layout) if hooks.systemd_running else units.systemd_running(layout)
    systemctl = hooks.systemctl or units.systemctl
    if not running:
        log.note(_("systemd is not running here (or --root): start the services with 'systemctl enable --now appliance.target' "
                   "on the real host, or 'appliance -c {config} up' by hand").format(config=layout.config))
        return
    release_distribution_units(ctx, systemctl)  # Debian's rspamd.service would hold our rspamd's ports
    if ctx.opts.dry_run:
        log.note(_("would run: systemctl daemon-reload; systemctl enable --now appliance.target"))
        return
    for args in (("daemon-reload",), ("enable", "--now", units.TARGET)):
        ok, detail = systemctl(*args)
        if not ok:
            raise InstallError(_("systemctl {args} failed: {detail}").format(args=" ".join(args), detail=detail),
                               _("see journalctl -u 'appliance-*' and run the installer again"))
    if changed or ctx.log.changed:
        systemctl("try-restart", units.TARGET)
    ctx.services_started = True
    log.note(_("services enabled and started (appliance.target)"))


def _step_report(ctx: Context, hooks: Hooks) -> None:
    from . import dnsrecords
    from .fingerprint import host_fingerprint

    s: Survey = ctx.survey
    ipv4, ipv6 = s.global_addresses(4), s.global_addresses(6)
    records = dnsrecords.expected_records(ctx.domain, ctx.hostname, ipv4=ipv4, ipv6=ipv6, dkim=ctx.dkim)
    zone = dnsrecords.zone_text(records, hostname=ctx.hostname, addresses=ipv4 + ipv6)
    ctx.zone = zone
    path = ctx.layout.dns_records
    if not path.exists() or path.read_text(encoding="utf-8") != zone:
        ctx.log.act(_("saved the DNS records to {path}").format(path=path), _("would save the DNS records to {path}").format(path=path),
                    lambda: write_file(path, zone, 0o644))
    fp = hooks.fingerprint() if hooks.fingerprint else host_fingerprint()
    report = {
        "appliance_install_report": 1,
        "note": "Everything the installer read about this host. It stays here; nothing is sent anywhere.",
        "options": {"domain": ctx.domain, "hostname": ctx.hostname, "mailboxes": ctx.opts.mailboxes, "root": str(ctx.layout.root),
                    "database": ctx.sizing.database},
        "survey": s.to_dict(),
        "fingerprint": {"components": fp.components, "sources": fp.sources},
        "checks": ctx.checks.to_list() if ctx.checks else [],
        "sizing": {"workers": ctx.sizing.workers, "db_cache_size": ctx.sizing.db_cache_size, "database": ctx.sizing.database,
                   "reasons": ctx.sizing.reasons},
        "licence": ctx.licence_status.to_dict() if ctx.licence_status else {"state": "trial"},
        "dns_records": [r.__dict__ for r in records],
    }
    if ctx.opts.dry_run:
        ctx.log.note(_("would save what was collected to {path}").format(path=ctx.layout.report))
    else:
        write_file(ctx.layout.report, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", 0o640)
        ctx.log.note(_("saved what was collected to {path}").format(path=ctx.layout.report))
    if ctx.owner is not None and not ctx.opts.dry_run:
        for p in (ctx.layout.report, path, ctx.layout.state):
            if p.exists():
                os.chown(p, *ctx.owner)


def _summary(ctx: Context, out: IO[str]) -> None:
    L = ctx.layout
    w = out.write
    if ctx.opts.dry_run:
        w("\n" + _("Dry run finished: the checks passed and nothing was changed. Run again without --dry-run to install.") + "\n")
        return
    w("\n" + _("The mail appliance is installed for {domain} ({host}).").format(domain=ctx.domain, host=ctx.hostname) + "\n\n")
    rows = [
        (_("configuration"), str(L.config)),
        (_("data"), str(L.data)),
        (_("master key"), _("{path}  (back it up apart from the data)").format(path=L.master_key)),
        (_("certificate"), ctx.cert_summary),
        (_("licence"), (_("{id}, {n} mailboxes, until {date}").format(id=ctx.licence_status.licence.id, n=ctx.licence_status.licence.mailboxes,
                                                                        date=ctx.licence_status.licence.expires)
                         if ctx.licence_status else _("trial mode (no licence)"))),
        (_("report"), str(L.report)),
    ]
    width = max(len(k) for k, _v in rows)
    for k, v in rows:
        w(f"  {k:<{width}}  {v}\n")
    w("\n" + _("Administrator: {admin}").format(admin=ctx.admin_email) + "\n")
    if ctx.admin_password:
        w("  " + _("password: {password}   (shown once, stored nowhere: note it now)").format(password=ctx.admin_password) + "\n")
    elif ctx.opts.admin_password_file:
        w("  " + _("password: from {path}").format(path=ctx.opts.admin_password_file) + "\n")
    else:
        w("  " + _("password: unchanged (set a new one with: appliance user passwd {admin})").format(admin=ctx.admin_email) + "\n")
    w("\n" + _("Publish these DNS records (also in {path}):").format(path=L.dns_records) + "\n")
    for line in ctx.zone.splitlines():
        if not line.startswith(";"):
            w(f"  {line}\n")
    w("\n" + _("Next:") + "\n")
    if not ctx.services_started:
        w("  " + _("start the services: systemctl enable --now appliance.target") + "\n")
    w("  " + _("check everything: appliance doctor") + "\n")
    w("  " + _("add mailboxes: sudo -u {user} appliance user add alice@{domain}").format(user=SYSTEM_USER, domain=ctx.domain) + "\n")
    w("  " + _("web panel: https://{host}/").format(host=ctx.hostname) + "\n")
    out.flush()


# ---------------------------------------------------------------- uninstall


def run_uninstall(root: Path, *, purge: bool, yes: bool, hooks: Hooks | None = None, stream: IO[str] | None = None) -> int:
    from . import units

    hooks = hooks or Hooks()
    out = stream or sys.stdout
    layout = Layout(Path(root).absolute())
    if purge and not yes:
        question = _("--purge deletes all mail, keys and settings in {data} and {etc} for good. Continue?").format(data=layout.data, etc=layout.etc)
        if hooks.ask is None or not hooks.ask(question):
            out.write(_("not confirmed; nothing removed (add --yes to purge without asking)") + "\n")
            return 1
    running = hooks.systemd_running(layout) if hooks.systemd_running else units.systemd_running(layout)
    systemctl = hooks.systemctl or units.systemctl
    if running:
        systemctl("disable", "--now", units.TARGET, *[units.unit_name(s) for s in units.SERVICES])
        out.write(_("stopped and disabled the services") + "\n")
    removed = 0
    for name in units.render_units(layout):
        p = layout.units / name
        if p.exists():
            p.unlink()
            removed += 1
    if running:
        systemctl("daemon-reload")
        for unit in read_state(layout).get("masked_units", []):  # Debian's rspamd/redis units, masked by the install
            if systemctl("unmask", unit)[0]:
                out.write(_("unmasked {unit} (it stays disabled)").format(unit=unit) + "\n")
    out.write(_("removed {n} systemd units from {path}").format(n=removed, path=layout.units) + "\n")
    if layout.command_link.is_symlink():
        layout.command_link.unlink()
    if not purge:
        out.write(_("kept the data and configuration: {data}, {etc}, {log} (remove them with --purge)").format(
            data=layout.data, etc=layout.etc, log=layout.log) + "\n")
        return 0
    for p in (layout.data, layout.etc, layout.log):
        if p.exists():
            shutil.rmtree(p)
            out.write(_("deleted {path}").format(path=p) + "\n")
    if not layout.fake_root:
        import pwd
        import subprocess

        try:
            pwd.getpwnam(SYSTEM_USER)
            subprocess.run(["userdel", SYSTEM_USER], capture_output=True, check=False)
            out.write(_("removed the system user '{user}'").format(user=SYSTEM_USER) + "\n")
        except KeyError:
            pass
    return 0
