"""Configuration of rspamd, redis and unbound, generated from appliance.toml.

Desired state is computed here and written only where it changed
(``write_if_changed``), so ``generate`` says what changed and a restart is
needed only then. rspamd keeps Debian's /etc/rspamd/rspamd.conf and gets our
``LOCAL_CONFDIR``: ``local.d/`` and ``override.d/`` there are ours and
rewritten (files we did not generate are removed); an administrator's own
settings go in ``<data_dir>/spam/conf/rspamd.conf.override``, which we
never touch.

What the generated rspamd does:

* the normal and controller workers listen on 127.0.0.1 only, the proxy and
  fuzzy workers are off;
* the controller wants its password from every peer: ``secure_ip`` is empty,
  because Debian's default lets loopback in without one and every local user
  is on loopback;
* Bayes statistics and the other state are in our redis (password protected);
* SPF, DKIM, DMARC and ARC are off (the MTA does them), greylisting is off
  unless enabled, and the modules that ask the network (RBL, SURBL/URIBL,
  fuzzy, ASN, DCC, hfilter's DNS, remote maps) are off unless
  ``antispam.network_checks``;
* DNS goes to our unbound on 127.0.0.1, which forwards to ``dns.resolvers``
  when set and otherwise answers on its own at once (NXDOMAIN), so a host
  without an upstream never waits on DNS timeouts;
* with ``antispam.virus_scan``, the antivirus module sends every attachment
  (and archive) to our clamd on a unix socket, and a virus forces the reject
  action (550 at SMTP time); without it the module is off. clamd reads its
  signatures from ``antispam.virus_database_dir``; a scan error (clamd down,
  no signatures) lets the mail through, marked by rspamd's CLAM_VIRUS_FAIL.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .layout import Layout, read_or_create_secret, write_if_changed

log = logging.getLogger("antispam")

ALWAYS_OFF = ("spf", "dkim", "dmarc", "arc", "dkim_signing", "whitelist", "rspamd_update", "url_redirector")
NETWORK_MODULES = ("rbl", "surbl", "fuzzy_check", "asn", "dcc", "emails", "hfilter", "mx_check", "bimi")


def _q(value: str | Path) -> str:
    """A double-quoted string for UCL, redis.conf and unbound.conf."""
    s = str(value)
    if any(ch in s for ch in '"\\\n\r'):
        raise ValueError(f"refusing to write {s!r} into a configuration file")
    return f'"{s}"'


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or 80


def controller_password_hash(layout: Layout, password: str) -> str:
    """rspamd's PBKDF2 form of the password, cached so the generated file stays the same between runs."""
    cache = layout.root / "controller.hash"
    digest = hashlib.sha256(password.encode()).hexdigest()
    try:
        want, hashed = cache.read_text().split("\n")[:2]
        if want == digest and hashed.startswith("$"):
            return hashed
    except (FileNotFoundError, ValueError):
        pass
    rspamadm = shutil.which("rspamadm")
    if rspamadm is None:
        return password  # rspamd also accepts the plain text; the file is 0600 like the password file
    out = subprocess.run([rspamadm, "pw", "-q", "-p", password], capture_output=True, text=True, timeout=30, check=False)
    hashed = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    if not hashed.startswith("$"):
        return password
    write_if_changed(cache, f"{digest}\n{hashed}\n")
    return hashed


def scan_workers() -> int:
    """rspamd scanning processes: half the cores (the MTA and IMAP want the rest), 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def rspamd_files(cfg: Any, layout: Layout, *, password_hash: str, redis_password: str) -> dict[str, str]:
    """Relative path under LOCAL_CONFDIR -> content, for every file we own."""
    a = cfg.antispam
    redis = f"127.0.0.1:{a.redis_port}"
    level = "info" if cfg.log.level == "debug" else "warning"
    files = {
        "override.d/worker-normal.inc": f'bind_socket = "127.0.0.1:{_port(a.url)}";\ncount = {scan_workers()};\n',
        "override.d/worker-controller.inc": (
            f'bind_socket = "127.0.0.1:{_port(a.controller_url)}";\n'
            f"password = {_q(password_hash)};\n"
            f"enable_password = {_q(password_hash)};\n"
            "secure_ip = [];\n"
            'static_dir = "${WWWDIR}";\n'
        ),
        "override.d/worker-proxy.inc": "enabled = false;\ncount = 0;\n",
        "override.d/worker-fuzzy.inc": "enabled = false;\ncount = -1;\n",
        "override.d/logging.inc": f'type = "console";\nlevel = "{level}";\ncolor = false;\n',
        "local.d/options.inc": (
            "dns {\n"
            f'  nameserver = ["127.0.0.1:{a.dns_port}"];\n'
            "  timeout = 1s;\n"
            "  retransmits = 2;\n"
            "}\n"
            f"disable_monitoring = {'false' if a.network_checks else 'true'};\n"
        ),
        "local.d/redis.conf": f"servers = {_q(redis)};\npassword = {_q(redis_password)};\n",
        "local.d/classifier-bayes.conf": (
            'backend = "redis";\n'
            f"servers = {_q(redis)};\n"
            f"password = {_q(redis_password)};\n"
        ),
        "local.d/actions.conf": (
            f"reject = {a.reject_score:g};\n"
            f"add_header = {a.junk_score:g};\n"
            "rewrite_subject = null;\n"
            + (f"greylist = {a.junk_score - 2:g};\n" if a.greylisting else "greylist = null;\n")
        ),
        "local.d/greylist.conf": "enabled = true;\n" if a.greylisting else "enabled = false;\n",
        "local.d/antivirus.conf": antivirus_config(cfg, layout),
    }
    for module in ALWAYS_OFF:
        files[f"local.d/{module}.conf"] = "enabled = false;\n"
    if not a.network_checks:
        for module in NETWORK_MODULES:
            files[f"local.d/{module}.conf"] = "enabled = false;\n"
        # the stock multimap rules are remote maps (freemail, disposable senders)
        files["override.d/multimap.conf"] = "# no remote maps without antispam.network_checks\n"
    header = "# Generated from appliance.toml by the antispam service; changes here are overwritten.\n"
    return {name: header + text for name, text in files.items()}


def antivirus_config(cfg: Any, layout: Layout) -> str:
    a = cfg.antispam
    if not a.virus_scan:
        return "enabled = false;\n"
    return (
        "clamav {\n"
        '  type = "clamav";\n'
        f"  servers = {_q(layout.clamd_socket)};\n"
        '  symbol = "CLAM_VIRUS";\n'
        '  action = "reject";\n'
        "  message = '${SCANNER}: virus found: \"${VIRUS}\"';\n"
        "  scan_mime_parts = true;\n"
        "  scan_text_mime = false;\n"
        "  scan_image_mime = false;\n"
        f"  max_size = {int(a.max_scan_size)};\n"
        "  timeout = 15.0;\n"
        "  retransmits = 1;\n"
        "  log_clean = false;\n"
        "}\n"
    )


def clamd_config(cfg: Any, layout: Layout) -> str:
    a = cfg.antispam
    return "\n".join([
        "# Generated from appliance.toml by the antispam service; changes here are overwritten.",
        "Foreground yes",
        f"LocalSocket {layout.clamd_socket}",
        "LocalSocketMode 600",
        "FixStaleSocket yes",
        f"DatabaseDirectory {a.virus_database_dir}",
        "LogTime yes",
        "LogVerbose no",
        "SelfCheck 3600",
        f"StreamMaxLength {max(int(a.max_scan_size), 1024 * 1024)}",
        "MaxThreads 4",
        "",
    ])


def unbound_config(cfg: Any, layout: Layout) -> str:
    a, dns = cfg.antispam, cfg.dns
    lines = [
        "# Generated from appliance.toml by the antispam service; changes here are overwritten.",
        "# The loopback resolver rspamd asks.",
        "server:",
        "  interface: 127.0.0.1",
        f"  port: {a.dns_port}",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f"  directory: {_q(layout.root)}",
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        "  num-threads: 1",
        "  access-control: 127.0.0.0/8 allow",
        "  module-config: \"iterator\"",
        "  do-ip6: " + ("yes" if any(ipaddress.ip_address(r).version == 6 for r in dns.resolvers) else "no"),
        "  do-not-query-localhost: no",
        "  prefetch: yes",
        "  serve-expired: yes",
        "  local-zone: \"localhost.\" redirect",
        "  local-data: \"localhost. A 127.0.0.1\"",
    ]
    if dns.resolvers:
        lines += ["forward-zone:", '  name: "."']
        lines += [f"  forward-addr: {r}@{dns.port}" for r in dns.resolvers]
    elif not a.network_checks:
        # No upstream: answer every name at once (NXDOMAIN) instead of timing out.
        lines.insert(lines.index("  local-zone: \"localhost.\" redirect"), '  local-zone: "." static')
    # else: full recursion from the root servers (a connected host without configured resolvers)
    lines += ["remote-control:", "  control-enable: no", ""]
    return "\n".join(lines)


def redis_config(cfg: Any, layout: Layout, *, password: str) -> str:
    a = cfg.antispam
    save = "save 3600 1 300 100 60 10000" if a.bayes_persist else 'save ""'
    return "\n".join([
        "# Generated from appliance.toml by the antispam service; changes here are overwritten.",
        "bind 127.0.0.1",
        f"port {a.redis_port}",
        "protected-mode yes",
        f"unixsocket {_q(layout.redis_socket)}",
        "unixsocketperm 700",
        "daemonize no",
        f"dir {_q(layout.redis_dir)}",
        "dbfilename bayes.rdb",
        save,
        "appendonly no",
        f"requirepass {_q(password)}",
        'logfile ""',
        "loglevel warning",
        "",
    ])


def generate(cfg: Any, layout: Layout | None = None) -> list[str]:
    """Write every generated file that differs from its desired content; the names of those that changed."""
    layout = layout or Layout.from_config(cfg)
    layout.make_dirs()
    password = read_or_create_secret(layout.password_file)
    redis_password = read_or_create_secret(layout.redis_password_file)
    changed: list[str] = []
    files = rspamd_files(cfg, layout, password_hash=controller_password_hash(layout, password), redis_password=redis_password)
    for name, text in files.items():
        if write_if_changed(layout.conf / name, text):
            changed.append(f"rspamd:{name}")
    for sub in ("local.d", "override.d"):
        for path in (layout.conf / sub).iterdir():
            if f"{sub}/{path.name}" not in files and path.is_file():
                path.unlink()
                changed.append(f"rspamd:{sub}/{path.name}")
    if write_if_changed(layout.unbound_conf, unbound_config(cfg, layout)):
        changed.append("unbound")
    if write_if_changed(layout.redis_conf, redis_config(cfg, layout, password=redis_password)):
        changed.append("redis")
    if cfg.antispam.virus_scan:
        if write_if_changed(layout.clamd_conf, clamd_config(cfg, layout)):
            changed.append("clamd")
    else:
        layout.clamd_conf.unlink(missing_ok=True)
    if changed:
        log.info("antispam configuration written: %s", ", ".join(changed))
    return changed


def rspamd_argv(layout: Layout, *, as_root: bool) -> list[str]:
    argv = [shutil.which("rspamd") or "rspamd", "-f", "-c", "/etc/rspamd/rspamd.conf",
            f"--var=LOCAL_CONFDIR={layout.conf}", f"--var=DBDIR={layout.db}",
            f"--var=RUNDIR={layout.rspamd_run}", f"--var=LOGDIR={layout.log}"]
    if as_root:
        # rspamd refuses to run its workers as root without this; production runs as the
        # unprivileged appliance user, so this is for development machines only.
        argv.insert(2, "--insecure")
    return argv
