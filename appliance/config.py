"""appliance.toml: the one place the configuration file is read and validated.

The schema is data (``SCHEMA``): sections of options, each with a kind, a
default, help text and optional constraints. The same schema validates the
file (``load_config``), documents it (``render_default_config`` writes the
shipped, fully commented ``appliance.toml``) and can feed the CLI
(``iter_options``). Adding a key is one ``Option`` entry; adding a section is
one ``Section`` entry.

A bad file raises ``ConfigError`` whose text is one line: the file, the dotted
key and what is wrong, e.g.
``appliance.toml: listeners.imap.bind: port 70000 out of range 1-65535``.

Relative paths are resolved against the directory holding the config file,
except the ``[storage]`` paths, which are resolved against
``instance.data_dir`` (in the development default both are the same).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import textwrap
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.i18n import _, add_translations

__all__ = [
    "SCHEMA",
    "Config",
    "ConfigError",
    "Listener",
    "Option",
    "Section",
    "iter_options",
    "load_config",
    "parse_bind",
    "parse_duration",
    "parse_size",
    "render_default_config",
]

DEFAULT_CONFIG_NAME = "appliance.toml"


class ConfigError(Exception):
    """A bad configuration. ``str()`` is one line naming the file, the key and the problem."""

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None) -> None:
        message = re.sub(r"\s*[\r\n]+\s*", " ", str(message))
        super().__init__(message)
        self.key = key
        self.problem = problem if problem is not None else message


class _Invalid(Exception):
    """A problem with one value; the loader adds the file and the key."""

    def __init__(self, problem: str, key: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.key = key


# ---------------------------------------------------------------- sizes, durations, binds

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"(\d+)\s*(?:([KMGT])(?:I?B)?|B)?")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_size(value: str | int) -> int:
    """``"512K"``, ``"25M"``, ``"2G"`` (binary units; ``"25MB"``, ``"25MiB"`` too) or an int -> bytes.

    Raises ValueError with a one-line message for anything else (``"12Q"``, ``"-1"``, ``""``).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(_("must not be negative"))
        return value
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip().upper())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]
    raise ValueError(_('invalid size {value!r} (e.g. "512K", "25M", "2G")').format(value=value))


def parse_duration(value: str | int | float) -> int | float:
    """``"30s"``, ``"5m"``, ``"4h"``, ``"5d"``, ``"1w"`` or a number of seconds -> seconds.

    Whole numbers of seconds come back as int, fractions as float.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(_("must not be negative"))
        return value
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            return int(seconds) if seconds.is_integer() else seconds
    raise ValueError(_('invalid duration {value!r} (e.g. "30s", "5m", "4h", "5d")').format(value=value))


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


def format_duration(s: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if s and s % _DURATION_UNITS[unit] == 0:
            return f"{int(s // _DURATION_UNITS[unit])}{unit}"
    return f"{s:g}s"


_HOSTNAME_RE = re.compile(r"(?=.{1,253}\.?$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _check_host(host: str, value: str) -> str:
    if re.fullmatch(r"[\d.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(_("invalid host in {value!r}").format(value=value)) from None
    if not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(_("invalid host in {value!r}").format(value=value))
    return host


def parse_bind(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:25"``, ``"[::1]:25"``, ``"mail.example:25"`` -> (host, port); IPv6 hosts without brackets.

    With ``default_port`` the port may be left out.
    """
    if value.startswith("["):
        end = value.find("]")
        host, rest = (value[1:end], value[end + 1 :]) if end > 0 else ("", "")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(_("invalid host in {value!r}").format(value=value)) from None
        if rest and not rest.startswith(":"):
            raise ValueError(_("invalid port in {value!r}").format(value=value))
        port_s = rest[1:] if rest else None
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            host, port_s = value, None
        elif ":" in host:
            raise ValueError(
                _('IPv6 addresses must be in brackets, e.g. "[{host}]:{port}"').format(host=host, port=port_s)
            )
        host = _check_host(host, value)
    if port_s is None:
        if default_port is None:
            raise ValueError(_("missing port in {value!r}").format(value=value))
        return host, default_port
    if not (port_s.isascii() and port_s.isdigit()):
        raise ValueError(_("invalid port in {value!r}").format(value=value))
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ValueError(_("port {port} out of range {low}-{high}").format(port=port, low=1, high=65535))
    return host, port


def format_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- the schema's building blocks


@dataclass
class _Ctx:
    base_dir: Path
    data_dir: Path | None = None


def _describe(raw: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    name = kind.get(type(raw), type(raw).__name__)
    if isinstance(raw, dict):
        return name
    shown = _toml_value(raw) if isinstance(raw, bool | int | float | str | list) else str(raw)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{name} {shown}"


def _expected(what: str, raw: Any) -> _Invalid:
    return _Invalid(_("expected {kind}, got {got}").format(kind=what, got=_describe(raw)))


def _from_parser(parser: Callable[[Any], Any], raw: Any) -> Any:
    try:
        return parser(raw)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _conv_str(raw: Any, opt: Option, ctx: _Ctx) -> str:
    if not isinstance(raw, str):
        raise _expected(_("a string"), raw)
    return raw


def _conv_bool(raw: Any, opt: Option, ctx: _Ctx) -> bool:
    if not isinstance(raw, bool):
        raise _expected(_("true or false"), raw)
    return raw


def _conv_int(raw: Any, opt: Option, ctx: _Ctx) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _expected(_("an integer"), raw)
    return raw


def _conv_float(raw: Any, opt: Option, ctx: _Ctx) -> float:
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        raise _expected(_("a number"), raw)
    return float(raw)


def _conv_size(raw: Any, opt: Option, ctx: _Ctx) -> int:
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise _expected(_('a size such as "512K", "25M", "2G" or a number of bytes'), raw)
    return _from_parser(parse_size, raw)


def _conv_duration(raw: Any, opt: Option, ctx: _Ctx) -> int | float:
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise _expected(_('a duration such as "30s", "5m", "4h", "5d" or a number of seconds'), raw)
    return _from_parser(parse_duration, raw)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(raw: str) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in a path from the environment.

    For systemd credentials: ``"${CREDENTIALS_DIRECTORY:-/etc/appliance/credentials}/master.key"``
    is the credential systemd hands a service (LoadCredential=), and the file
    itself for the operator's commands. An unset variable without a default is an error.
    """

    def value(m: re.Match[str]) -> str:
        found = os.environ.get(m.group(1))
        if found:
            return found
        if m.group(2) is not None:
            return m.group(2)
        raise _Invalid(_("environment variable {name} is not set (give a default: ${{{name}:-/path}})").format(name=m.group(1)))

    return _ENV_REF.sub(value, raw)


def _conv_path(raw: Any, opt: Option, ctx: _Ctx) -> Path | None:
    if not isinstance(raw, str):
        raise _expected(_("a path"), raw)
    raw = expand_env(raw)
    if raw == "":
        if opt.optional:
            return None
        raise _Invalid(_("must not be empty"))
    base = ctx.data_dir if opt.relative_to == "data_dir" and ctx.data_dir is not None else ctx.base_dir
    return Path(os.path.normpath(base / Path(raw).expanduser()))


def _conv_ip_list(raw: Any, opt: Option, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _expected(_("a list of IP addresses"), raw)
    out = []
    for item in raw:
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise _Invalid(_("{value!r} is not an IP address").format(value=item)) from None
    return tuple(out)


def _conv_domain_list(raw: Any, opt: Option, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _expected(_("a list of domain names"), raw)
    out = []
    for item in raw:
        if not _HOSTNAME_RE.fullmatch(item):
            raise _Invalid(_("invalid host name {value!r}").format(value=item))
        out.append(item.rstrip(".").lower())
    return tuple(out)


def _conv_bind(raw: Any, opt: Option, ctx: _Ctx) -> tuple[str, int]:
    if not isinstance(raw, str):
        raise _expected(_('"host:port" (IPv6 as "[::1]:port")'), raw)
    return _from_parser(parse_bind, raw)


def _conv_processes(raw: Any, opt: Option, ctx: _Ctx) -> int:
    """A number of processes, or "auto" (loaded as 0: the service picks one per CPU core)."""
    if raw == "auto":
        return 0
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _expected(_('"auto" or a number of processes'), raw)
    if raw < 1:
        raise _Invalid(_("{value} is below the minimum {low}").format(value=raw, low=1))
    return raw


add_translations("zh-CN", {'"auto" or a number of processes': '"auto" 或进程数'})


# kind -> (converter, Python type of the loaded value, formatter for limits in messages)
_KINDS: dict[str, tuple[Callable[[Any, Option, _Ctx], Any], Any, Callable[[Any], str]]] = {
    "str": (_conv_str, str, str),
    "bool": (_conv_bool, bool, str),
    "int": (_conv_int, int, str),
    "float": (_conv_float, float, lambda v: f"{v:g}"),
    "size": (_conv_size, int, format_size),
    "duration": (_conv_duration, float, format_duration),
    "path": (_conv_path, Path, str),
    "ip_list": (_conv_ip_list, tuple, str),
    "domain_list": (_conv_domain_list, tuple, str),
    "bind": (_conv_bind, tuple, str),
    "processes": (_conv_processes, int, lambda v: "auto" if v == 0 else str(v)),
}


@dataclass(frozen=True)
class Option:
    """One key: its kind (see ``_KINDS``), default (as written in TOML), help and constraints.

    ``check(value, ctx)`` may reject the value (raise ``_Invalid``) or return a normalised one.
    """

    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    check: Callable[[Any, _Ctx], Any] | None = None
    optional: bool = False  # paths: "" means none
    relative_to: str = "config"  # paths: "config" (the file's directory) or "data_dir"

    def constraint_text(self) -> str:
        fmt = _KINDS[self.kind][2]
        if self.choices:
            return "One of: " + ", ".join(json.dumps(c) for c in self.choices) + "."
        if self.min is not None and self.max is not None:
            return f"Range: {fmt(self.min)} to {fmt(self.max)}."
        if self.min is not None:
            return f"At least {fmt(self.min)}."
        return ""


@dataclass(frozen=True)
class Section:
    """A ``[section]``; with ``named`` its entries are ``[section.NAME]`` tables built by ``factory``."""

    help: str
    options: Mapping[str, Option]
    named: bool = False
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    factory: Callable[[str, dict[str, Any]], Any] | None = None


# ---------------------------------------------------------------- validators


def _writable_dir(path: Path, ctx: _Ctx) -> Path:
    if not path.exists():
        raise _Invalid(_("{path} does not exist").format(path=path))
    if not path.is_dir():
        raise _Invalid(_("{path} is not a directory").format(path=path))
    if not os.access(path, os.W_OK | os.X_OK):
        raise _Invalid(_("{path} is not writable").format(path=path))
    return path


def _readable_file(path: Path | None, ctx: _Ctx | None = None) -> Path | None:
    if path is None:
        return None
    if not path.exists():
        raise _Invalid(_("{path} does not exist").format(path=path))
    if not path.is_file():
        raise _Invalid(_("{path} is not a file").format(path=path))
    if not os.access(path, os.R_OK):
        raise _Invalid(_("{path} is not readable").format(path=path))
    return path


def _hostname(value: str, ctx: _Ctx) -> str:
    if not _HOSTNAME_RE.fullmatch(value):
        raise _Invalid(_("invalid host name {value!r}").format(value=value))
    return value.rstrip(".").lower()


def _database_url(value: str, ctx: _Ctx) -> str:
    """"" -> SQLite file in the data dir; a relative SQLite path is taken relative to the data dir."""
    assert ctx.data_dir is not None
    if value == "":
        return f"sqlite:///{ctx.data_dir / 'index.sqlite3'}"
    if value.startswith("sqlite:///"):
        rest = value[len("sqlite:///") :]
        file = rest.split("?", 1)[0]
        if file and file != ":memory:" and not file.startswith("/"):
            return f"sqlite:///{Path(os.path.normpath(ctx.data_dir / rest))}"
        return value
    if value.startswith("sqlite://") or value.startswith("postgresql"):
        return value
    raise _Invalid(_("must start with sqlite:// or postgresql"))


def _http_url(value: str, ctx: _Ctx) -> str:
    if not re.fullmatch(r"https?://[^/\s:]+(:\d+)?(/\S*)?", value):
        raise _Invalid(_("must be an http:// or https:// URL with a host"))
    return value


def _smarthost(value: str, ctx: _Ctx) -> str:
    if value:
        _from_parser(lambda v: parse_bind(v, default_port=25), value)
    return value


# ---------------------------------------------------------------- listeners


@dataclass(frozen=True)
class Listener:
    name: str
    protocol: str  # smtp, submission, imap, pop3, http
    host: str  # IPv6 without brackets
    port: int
    tls: str  # none, starttls, implicit

    @property
    def bind(self) -> str:
        return format_bind(self.host, self.port)

    @property
    def uses_tls(self) -> bool:
        return self.tls != "none"


def _make_listener(name: str, values: dict[str, Any]) -> Listener:
    host, port = values["bind"]
    return Listener(name=name, protocol=values["protocol"], host=host, port=port, tls=values["tls"])


_PROTOCOLS = ("smtp", "submission", "imap", "pop3", "http")
_TLS_MODES = ("none", "starttls", "implicit")

LISTENER_OPTIONS: dict[str, Option] = {
    "protocol": Option("str", None, "What is spoken on the port.", choices=_PROTOCOLS),
    "bind": Option("bind", None, 'Address and port, "host:port"; IPv6 as "[::1]:port", all addresses "0.0.0.0:25" or "[::]:25".'),
    "tls": Option("str", None, "none, starttls (plain, upgraded by STARTTLS/STLS) or implicit (TLS from the first byte).", choices=_TLS_MODES),
}


def _listener(protocol: str, bind: str, tls: str) -> dict[str, Any]:
    return {"protocol": protocol, "bind": bind, "tls": tls}


DEFAULT_LISTENERS: dict[str, dict[str, Any]] = {
    "mx": _listener("smtp", "127.0.0.1:2525", "starttls"),
    "submission": _listener("submission", "127.0.0.1:2587", "starttls"),
    "submissions": _listener("submission", "127.0.0.1:2465", "implicit"),
    "imap": _listener("imap", "127.0.0.1:2143", "starttls"),
    "imaps": _listener("imap", "127.0.0.1:2993", "implicit"),
    "pop3": _listener("pop3", "127.0.0.1:2110", "starttls"),
    "pop3s": _listener("pop3", "127.0.0.1:2995", "implicit"),
    "panel": _listener("http", "127.0.0.1:8080", "none"),
}

# ---------------------------------------------------------------- the schema

K, M, G = 1024, 1024**2, 1024**3
MINUTE, HOUR, DAY = 60, 3600, 86400

SCHEMA: dict[str, Section] = {
    "instance": Section("This instance: its name, host name and where its data lives.", {
        "name": Option("str", "dev", "Short name of this instance, shown in the panel and in logs."),
        "hostname": Option("str", "mail.example.test", "Fully qualified host name: the SMTP greeting, the HELO name for outgoing mail and the TLS certificate name.", check=_hostname),
        "dev": Option("bool", True, "Development instance: high ports on 127.0.0.1 and relaxed checks. The installer sets false."),
        "data_dir": Option("path", ".", "Directory holding the mail store, keys and index; must exist and be writable. \".\" is the directory of this file.", check=_writable_dir),
        "language": Option("str", "en", "Language of the panel, the CLI and notices to users.", choices=("en", "zh-CN")),
    }),
    "storage": Section("The mail store. Relative paths here are relative to instance.data_dir.", {
        "database_url": Option("str", "", "SQL index and directory. \"\" is the SQLite file <data_dir>/index.sqlite3; otherwise an SQLAlchemy URL starting with sqlite:// or postgresql (password via ~/.pgpass or PGPASSFILE, never here).", check=_database_url),
        "mail_dir": Option("path", "mail", "Encrypted message files (maildir layout).", relative_to="data_dir"),
        "keys_dir": Option("path", "keys", "Wrapped per-account data keys and DKIM keys.", relative_to="data_dir"),
        "master_key_file": Option("path", "keys/master.key", "The instance master key that wraps every account key (mode 0600). Without it the mail cannot be read: back it up apart from the data.", relative_to="data_dir"),
        "fsync": Option("bool", True, "fsync files and directories before acknowledging a message. Turn off only for throw-away test instances."),
    }),
    "tls": Section("Certificate for every listener that uses TLS. `appliance init` makes a self-signed one.", {
        "cert_file": Option("path", "tls/cert.pem", "PEM certificate chain, leaf first."),
        "key_file": Option("path", "tls/key.pem", "PEM private key of the certificate (mode 0600)."),
        "min_version": Option("str", "TLSv1.2", "Oldest TLS version accepted.", choices=("TLSv1.2", "TLSv1.3")),
    }),
    "listeners": Section(
        "Named listeners, one [listeners.NAME] table each, with protocol, bind and tls. "
        "If the file has no listeners at all, these defaults are used; if it has any, only those run.",
        LISTENER_OPTIONS, named=True, defaults=DEFAULT_LISTENERS, factory=_make_listener,
    ),
    "smtp": Section("Inbound SMTP (port 25) and submission (587/465) limits.", {
        "max_message_size": Option("size", "25M", "Largest message accepted, announced in EHLO SIZE.", min=1 * K, max=2 * G),
        "max_recipients": Option("int", 100, "Most RCPT TO per message.", min=1, max=100_000),
        "max_line_length": Option("size", 4096, "Longest command or DATA line in bytes, CRLF included. RFC 5321 requires at least 1000; more tolerates broken senders.", min=1000, max=1 * M),
        "max_header_size": Option("size", "64K", "Largest message header section.", min=1 * K, max=64 * M),
        "max_connections_per_ip": Option("int", 20, "Concurrent connections from one IP address.", min=1, max=100_000),
        "max_errors": Option("int", 10, "Bad commands before the connection is dropped.", min=1, max=1000),
        "idle_timeout": Option("duration", "5m", "Drop a connection silent for this long (RFC 5321 asks for at least 5m).", min=1),
        "require_tls_for_auth": Option("bool", True, "Offer AUTH only after TLS. Keep true."),
        "reject_dmarc": Option("bool", True, "Reject mail failing DMARC with policy p=reject instead of filing it as spam."),
        "workers": Option("processes", "auto", "Processes that accept SMTP and submission connections and deliver the mail they receive (SO_REUSEPORT on every SMTP listener; the service's own process keeps the outbound queue and the daily jobs). \"auto\" is one per CPU core, at most 8; 1 serves the listeners in the service's own process.", max=64),
        "directory_cache_ttl": Option("duration", "5s", "How long the MTA trusts a directory answer (a user, its state and quota, a group's members); changes made in the panel or the CLI reach SMTP within this time. 0 asks the directory every time.", min=0, max=HOUR),
    }),
    "imap": Section("IMAP and POP3 limits.", {
        "max_line_length": Option("size", "64K", "Longest command line.", min=1 * K, max=16 * M),
        "max_literal_size": Option("size", "25M", "Largest literal (APPEND message) accepted.", min=1 * K, max=2 * G),
        "max_connections_per_user": Option("int", 50, "Concurrent sessions of one account.", min=1, max=100_000),
        "max_connections_per_ip": Option("int", 100, "Concurrent connections from one IP address.", min=1, max=100_000),
        "idle_timeout": Option("duration", "30m", "Log out a client silent for this long (RFC 9051 asks for at least 30m).", min=MINUTE),
        "max_search_depth": Option("int", 32, "Deepest nesting of a SEARCH expression.", min=1, max=1000),
        "max_mime_depth": Option("int", 64, "Deepest MIME nesting parsed for BODYSTRUCTURE.", min=1, max=1000),
    }),
    "auth": Section("Passwords (Argon2id) and login throttling, shared by SMTP, IMAP, POP3 and the panel.", {
        "argon2_time_cost": Option("int", 3, "Argon2id iterations.", min=1, max=100),
        "argon2_memory_cost_kib": Option("int", 65536, "Argon2id memory per hash, KiB.", min=1024, max=4 * M),
        "argon2_parallelism": Option("int", 4, "Argon2id lanes.", min=1, max=64),
        "login_cache_ttl": Option("duration", "1h", "Remember a successful login this long so clients that reconnect often do not pay Argon2 each time; 0 disables.", min=0, max=DAY),
        "failure_delay": Option("duration", "2s", "Every failed login answers after this long.", min=0, max=MINUTE),
        "max_failures_per_ip": Option("int", 20, "Failed logins from one IP address before it is locked out.", min=1, max=100_000),
        "max_failures_per_account": Option("int", 10, "Failed logins for one account before it is locked out.", min=1, max=100_000),
        "lockout_time": Option("duration", "15m", "How long a lockout lasts.", min=0, max=7 * DAY),
    }),
    "dns": Section("DNS lookups (MX, SPF, DKIM, DMARC).", {
        "resolvers": Option("ip_list", [], "Resolver IP addresses; [] uses the system resolver (/etc/resolv.conf)."),
        "timeout": Option("duration", "5s", "Timeout of one lookup.", min=0.1, max=MINUTE),
        "port": Option("int", 53, "Port of the resolvers above (UDP, TCP for long answers); tests use a high port.", min=1, max=65535),
    }),
    "queue": Section("Outbound mail queue and delivery to other mail servers (mta/outbound.py).", {
        "max_lifetime": Option("duration", "5d", "Give up and bounce after this long.", min=1, max=30 * DAY),
        "delay_notice_after": Option("duration", "4h", "Tell the sender a message is delayed after this long; 0 never.", min=0),
        "retry_base": Option("duration", "5m", "First retry delay; later ones back off exponentially.", min=1, max=DAY),
        "retry_max": Option("duration", "1h", "Longest wait between two attempts: the back-off doubles from retry_base up to this.", min=1, max=DAY),
        "max_per_domain": Option("int", 5, "Concurrent deliveries to one destination domain.", min=1, max=1000),
        "max_connections": Option("int", 50, "Outbound SMTP connections open at once, all destinations together.", min=1, max=10_000),
        "connect_timeout": Option("duration", "30s", "Timeout of one TCP connection to a mail server.", min=0.1, max=10 * MINUTE),
        "command_timeout": Option("duration", "5m", "Timeout of each SMTP reply (greeting, EHLO, MAIL, RCPT, DATA, end of data); RFC 5321 asks for 5 to 10 minutes.", min=1, max=HOUR),
        "remote_port": Option("int", 25, "Port of remote MX hosts. Keep 25; tests and special setups (a port-forwarding relay) change it.", min=1, max=65535),
        "tls_required_domains": Option("domain_list", [], "Destination domains reached only over TLS with a valid certificate for the MX host name (strict TLS); mail to them waits in the queue otherwise. Other domains use STARTTLS when offered (opportunistic)."),
        "tls_ca_file": Option("path", "", "CA certificates (PEM) for verifying remote MX hosts and the smarthost (strict TLS, MTA-STS); \"\" uses the system's.", optional=True, check=_readable_file),
        "mta_sts": Option("bool", True, "Honour the MTA-STS policy (RFC 8461) a destination domain publishes: fetched over HTTPS with a 10s timeout, cached for its max_age."),
        "hold": Option("bool", False, "Keep outbound mail in the queue without delivering it (maintenance, test instances); `appliance queue list` still shows it."),
        "smarthost": Option("str", "", "Relay all outbound mail through \"host[:port]\" (IPv6 \"[addr]:port\"); \"\" delivers directly by MX.", check=_smarthost),
        "smarthost_tls": Option("str", "starttls", "TLS to the smarthost: starttls (required, certificate verified), implicit (TLS from the first byte, usually port 465, verified) or opportunistic (STARTTLS when offered, not verified). AUTH is only ever sent over TLS.", choices=("starttls", "implicit", "opportunistic")),
        "smarthost_user": Option("str", "", "Login at the smarthost; \"\" for none."),
        "smarthost_password_file": Option("path", "", "File holding the smarthost password (mode 0600); \"\" for none.", optional=True, check=_readable_file),
    }),
    "dkim": Section("DKIM signing of outbound mail. Keys live in <keys_dir>/dkim/<domain>.<selector>.<ed25519|rsa>.key; see `appliance dkim show|rotate DOMAIN`.", {
        "enabled": Option("bool", True, "Sign mail whose From: is one of our domains with that domain's active keys (Ed25519 and RSA-2048 when both exist)."),
        "keep_old": Option("duration", "7d", "After a rotation switches to the new key, keep the old key published this long before `appliance dkim rotate DOMAIN --finish` retires it (mail still in transit must verify).", min=0, max=365 * DAY),
        "sign_processes": Option("int", 0, "Processes that compute signatures for the MTA (RSA signing holds a CPU for ~1.5 ms and blocks Python threads); 0 is automatic: one per CPU core beyond the first, 1 to 4.", min=0, max=64),
    }),
    "antispam": Section("Spam filtering with rspamd.", {
        "enabled": Option("bool", True, "Scan inbound mail with rspamd."),
        "url": Option("str", "http://127.0.0.1:11333", "rspamd normal worker.", check=_http_url),
        "controller_url": Option("str", "http://127.0.0.1:11334", "rspamd controller (learning spam/ham).", check=_http_url),
        "timeout": Option("duration", "10s", "Timeout of one scan.", min=0.1, max=10 * MINUTE),
        "on_failure": Option("str", "accept", "When rspamd is down or slow: accept the mail unscanned, or tempfail (4xx) so the sender retries.", choices=("accept", "tempfail")),
        "managed": Option("bool", True, "Start and supervise rspamd, redis and a loopback DNS resolver (unbound) from the antispam service, with configuration generated into <data_dir>/spam; false uses an rspamd already running at url."),
        "redis_port": Option("int", 11379, "Port of the managed redis (on 127.0.0.1; Bayes statistics and counters).", min=1, max=65535),
        "dns_port": Option("int", 11353, "Port of the managed loopback resolver (unbound on 127.0.0.1) that rspamd asks. It forwards to dns.resolvers when set, else answers locally at once (air-gapped hosts).", min=1, max=65535),
        "controller_password_file": Option("path", "spam/controller.password", "Password of the rspamd controller (learning, statistics), mode 0600; created with a random password when missing.", relative_to="data_dir"),
        "junk_score": Option("float", 6.0, "Score from which mail is filed into the recipient's Junk folder (per domain: `appliance spam threshold`).", min=-1000, max=1000),
        "reject_score": Option("float", 15.0, "Score from which mail is rejected at SMTP time (per domain: `appliance spam threshold`).", min=-1000, max=1000),
        "block_action": Option("str", "junk", "What happens to mail from a sender on a user's block list.", choices=("junk", "reject")),
        "network_checks": Option("bool", False, "Let rspamd use network services (RBL, URIBL/SURBL, fuzzy hashes, ASN, rDNS of HELO). Off for private and air-gapped deployments."),
        "greylisting": Option("bool", False, "Greylist doubtful mail from unknown senders (delays first deliveries by minutes)."),
        "bayes_persist": Option("bool", True, "Keep the learned Bayes statistics across restarts (redis snapshots in <data_dir>/spam/redis); false keeps them in memory only."),
        "max_scan_size": Option("size", "20M", "Larger messages are accepted unscanned (X-Spam-Status: unchecked).", min=1 * K, max=2 * G),
        "quarantine_days": Option("int", 0, "Keep rejected spam encrypted this many days for review (`appliance quarantine`); 0 keeps none. A domain can set its own (`appliance quarantine days`).", min=0, max=365),
        "virus_scan": Option("bool", False, "Scan attachments for viruses with ClamAV (Debian's clamav-daemon, started by the antispam service) through rspamd's antivirus module; infected mail is rejected at SMTP time. Needs a managed rspamd and signatures in antispam.virus_database_dir; clamd with the full signatures takes about 1.5 GB of memory."),
        "virus_database_dir": Option("path", "/var/lib/clamav", "ClamAV signatures for the managed clamd: where freshclam keeps them (copy main/daily .cvd files in by hand on an air-gapped host); .ndb/.hdb files of your own there are used too."),
    }),
    "limits": Section("Per-account sending limits against a compromised password; 0 means no limit.", {
        "outbound_messages_per_hour": Option("int", 500, "Messages one account may send per hour.", min=0, max=10**9),
        "outbound_recipients_per_hour": Option("int", 2000, "Distinct recipients one account may send to per hour.", min=0, max=10**9),
        "outbound_failures_per_hour": Option("int", 100, "Failed recipients and bounces of one account per hour.", min=0, max=10**9),
        "outbound_usual_factor": Option("int", 10, "Freeze an account sending this many times its usual hourly rate (its average over the busy hours of the last 7 days); 0 turns this check off.", min=0, max=10**6),
        "outbound_usual_floor": Option("int", 100, "The usual-rate check applies only from this many messages in an hour.", min=1, max=10**9),
    }),
    "tuning": Section("Sizing of the services; `appliance install` sets these from the host and the number of mailboxes, with a comment saying why.", {
        "workers": Option("int", 0, "Threads for password hashing, DKIM signing and decryption in each service process; 0 is automatic (4 per CPU core, at least 4).", min=0, max=1024),
        "db_cache_size": Option("size", "32M", "SQLite page cache of each database connection of a running service (PostgreSQL sizes its own).", min=1 * M, max=4 * G),
    }),
    "log": Section("Logs and the event log (logins, admin actions, deliveries).", {
        "retention": Option("duration", "180d", "Keep events this long.", min=DAY),
        "level": Option("str", "info", "Log level.", choices=("debug", "info", "warning", "error")),
    }),
}


def _section_class(name: str, section: Section) -> type:
    fields = []
    for key, opt in section.options.items():
        typ = _KINDS[opt.kind][1]
        fields.append((key, typ | None if opt.optional else typ))
    cls = dataclasses.make_dataclass(f"{name.title()}Config", fields, frozen=True)
    cls.__module__ = __name__
    return cls


_SECTION_CLASSES = {name: _section_class(name, s) for name, s in SCHEMA.items() if not s.named}


def iter_options() -> Iterator[tuple[str, Option]]:
    """Every option as ("section.key", Option); named sections as "listeners.NAME.key"."""
    for name, section in SCHEMA.items():
        for key, opt in section.options.items():
            yield (f"{name}.NAME.{key}" if section.named else f"{name}.{key}"), opt


# ---------------------------------------------------------------- the loaded config


@dataclass(frozen=True)
class Config:
    """The loaded configuration: ``cfg.smtp.max_message_size``, ``cfg.listeners["imap"].port``..."""

    path: Path
    base_dir: Path
    sections: Mapping[str, Any] = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "sections":
            raise AttributeError(name)
        try:
            return self.sections[name]
        except KeyError:
            raise AttributeError(f"no config section {name!r}") from None

    @property
    def listeners(self) -> Mapping[str, Listener]:
        return self.sections["listeners"]

    @property
    def uses_tls(self) -> bool:
        return any(lst.uses_tls for lst in self.listeners.values())

    def get(self, dotted: str) -> Any:
        """``cfg.get("smtp.max_message_size")``, ``cfg.get("listeners.imap.port")``."""
        obj: Any = self
        for part in dotted.split("."):
            obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
        return obj


def _unknown(name: str, known: Iterator[str] | list[str], prefix: str, what: str) -> _Invalid:
    candidates = list(known)
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = _(" (did you mean {suggestion}?)").format(suggestion=prefix + close[0]) if close else ""
    return _Invalid(what + hint, key=prefix + name)


def _convert(dotted: str, opt: Option, raw: Any, ctx: _Ctx) -> Any:
    try:
        value = _KINDS[opt.kind][0](raw, opt, ctx)
        fmt = _KINDS[opt.kind][2]
        if opt.choices and value not in opt.choices:
            choices = ", ".join(opt.choices)
            raise _Invalid(_("{value} is not one of {choices}").format(value=_toml_value(value), choices=choices))
        if opt.min is not None and value < opt.min:
            raise _Invalid(_("{value} is below the minimum {low}").format(value=fmt(value), low=fmt(opt.min)))
        if opt.max is not None and value > opt.max:
            raise _Invalid(_("{value} is above the maximum {high}").format(value=fmt(value), high=fmt(opt.max)))
        if opt.check is not None:
            value = opt.check(value, ctx)
        return value
    except _Invalid as e:
        e.key = e.key or dotted
        raise


def _table(raw: Any, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Invalid(_("expected a table"), key=key)
    return raw


def _load_options(prefix: str, options: Mapping[str, Option], table: dict[str, Any], ctx: _Ctx,
                  *, required: bool = False) -> dict[str, Any]:
    for key in table:
        if key not in options:
            raise _unknown(key, list(options), prefix, _("unknown key"))
    values = {}
    for key, opt in options.items():
        if key not in table and required:
            raise _Invalid(_("missing (every listener needs protocol, bind and tls)"), key=prefix + key)
        values[key] = _convert(prefix + key, opt, table.get(key, opt.default), ctx)
        if key == "data_dir" and prefix == "instance.":
            ctx.data_dir = values[key]
    return values


def _load_named(name: str, section: Section, raw: Any, ctx: _Ctx) -> Mapping[str, Any]:
    tables = section.defaults if raw is None else _table(raw, name)
    items = {}
    for item, table in tables.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", item):
            raise _Invalid(_("invalid listener name (use letters, digits, '-' and '_')"), key=f"{name}.{item}")
        values = _load_options(f"{name}.{item}.", section.options, _table(table, f"{name}.{item}"), ctx,
                               required=True)
        items[item] = section.factory(item, values) if section.factory else MappingProxyType(values)
    return MappingProxyType(items)


def _build(data: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    for name in data:
        if name not in SCHEMA:
            raise _unknown(name, list(SCHEMA), "", _("unknown section"))
    sections: dict[str, Any] = {}
    for name, section in SCHEMA.items():
        raw = data.get(name)
        if section.named:
            sections[name] = _load_named(name, section, raw, ctx)
        else:
            values = _load_options(f"{name}.", section.options, _table(raw or {}, name), ctx)
            sections[name] = _SECTION_CLASSES[name](**values)
    return sections


def _overlap(a: str, b: str) -> bool:
    """Would binding both hosts on one port clash? "::" takes every address (dual stack), 0.0.0.0 the IPv4 ones."""
    if a == b or "::" in (a, b):
        return True
    if "0.0.0.0" in (a, b):
        other = b if a == "0.0.0.0" else a
        return ":" not in other
    return False


def _check_listeners(cfg: Config) -> None:
    seen: dict[tuple[str, int], str] = {}
    for name, lst in cfg.listeners.items():
        for (host, port), other in seen.items():
            if port == lst.port and _overlap(host, lst.host):
                raise _Invalid(_("{bind} is already used by listeners.{other}").format(bind=lst.bind, other=other),
                               key=f"listeners.{name}.bind")
        seen[(lst.host, lst.port)] = name
        if lst.protocol == "http" and lst.tls == "starttls":
            raise _Invalid(_("{tls} is not possible with protocol {protocol}").format(tls=lst.tls, protocol=lst.protocol),
                           key=f"listeners.{name}.tls")


def _check_tls(cfg: Config) -> None:
    users = [name for name, lst in cfg.listeners.items() if lst.uses_tls]
    if not users:
        return
    for key in ("cert_file", "key_file"):
        path = getattr(cfg.tls, key)
        if not path.exists():
            raise _Invalid(
                _("{path} does not exist (listeners.{listener} uses TLS; `appliance init` creates a self-signed certificate)")
                .format(path=path, listener=users[0]), key=f"tls.{key}")
        try:
            _readable_file(path)
        except _Invalid as e:
            e.key = f"tls.{key}"
            raise
    from appliance.keys import ssl_server_context  # keys imports this module

    try:
        ssl_server_context(cfg)
    except ConfigError as e:
        raise _Invalid(e.problem, key=e.key) from None


def _check_queue(cfg: Config) -> None:
    q = cfg.queue
    if q.smarthost_user and q.smarthost_password_file is None:
        raise _Invalid(_("required when queue.smarthost_user is set"), key="queue.smarthost_password_file")
    if q.delay_notice_after and q.delay_notice_after >= q.max_lifetime:
        raise _Invalid(_("must be shorter than queue.max_lifetime"), key="queue.delay_notice_after")


def _check_antispam(cfg: Config) -> None:
    a = cfg.antispam
    if a.junk_score >= a.reject_score:
        raise _Invalid(_("must be below antispam.reject_score"), key="antispam.junk_score")
    if not a.managed:
        if a.virus_scan:
            raise _Invalid(_("virus scanning needs the managed rspamd (antispam.managed = true); configure the antivirus module of your own rspamd instead"), key="antispam.virus_scan")
        return
    ports: dict[int, str] = {}
    for key in ("url", "controller_url"):
        m = re.fullmatch(r"https?://([^/\s:]+)(?::(\d+))?(/\S*)?", getattr(a, key))
        if not m or m.group(1) not in ("127.0.0.1", "localhost"):
            raise _Invalid(_("a managed rspamd listens on 127.0.0.1 only: use http://127.0.0.1:PORT (or set antispam.managed = false)"), key=f"antispam.{key}")
        port = int(m.group(2) or 80)
        if port in ports:
            raise _Invalid(_("port {port} is already used by {other}").format(port=port, other=ports[port]), key=f"antispam.{key}")
        ports[port] = f"antispam.{key}"
    for key in ("redis_port", "dns_port"):
        port = getattr(a, key)
        if port in ports:
            raise _Invalid(_("port {port} is already used by {other}").format(port=port, other=ports[port]), key=f"antispam.{key}")
        ports[port] = f"antispam.{key}"


# Checks across keys, run after every value is valid on its own; add more here.
_CHECKS: list[Callable[[Config], None]] = [_check_listeners, _check_tls, _check_queue, _check_antispam]


def _read_toml(path: Path) -> dict[str, Any]:
    shown = str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(f"{shown}: " + _("cannot read: {reason}").format(reason=reason), problem=reason) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: " + _("not valid UTF-8")) from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m:
            problem = _("line {line}, column {column}: invalid TOML: {reason}").format(
                line=m.group(1), column=m.group(2), reason=msg[: m.start()])
        else:
            problem = _("invalid TOML: {reason}").format(reason=msg)
        raise ConfigError(f"{shown}: {problem}", problem=problem) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raise ConfigError (one line) on any problem."""
    path = Path(path)
    data = _read_toml(path)
    abspath = Path(os.path.abspath(path))
    ctx = _Ctx(base_dir=abspath.parent)
    try:
        cfg = Config(path=abspath, base_dir=ctx.base_dir, sections=MappingProxyType(_build(data, ctx)))
        for check in _CHECKS:
            check(cfg)
    except _Invalid as e:
        raise ConfigError(f"{path}: {e.key}: {e.problem}", key=e.key, problem=e.problem) from None
    return cfg


# ---------------------------------------------------------------- rendering the default file

_HEADER = """\
# appliance.toml: configuration of this mail appliance.
#
# Every key is listed with its default and what it does. `appliance init`
# writes this file; the installer fills in production values.
# Relative paths are resolved against the directory holding this file, the
# [storage] paths against instance.data_dir.
# Sizes: "512K", "25M", "2G" or a number of bytes.
# Durations: "30s", "5m", "4h", "5d" or a number of seconds.
# Secrets are never written here, only the path of a file holding them.
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, 78, initial_indent="# " + indent, subsequent_indent="# " + indent + "  " * bool(indent),
                         break_on_hyphens=False, break_long_words=False)


def render_default_config(**overrides: Any) -> str:
    """The fully commented appliance.toml, with defaults replaced by ``overrides``.

    Override a key with ``section__key=value`` (or ``**{"section.key": value}``);
    replace the listeners with ``listeners={"mx": {"protocol": "smtp", "bind": "0.0.0.0:25", "tls": "starttls"}}``.
    """
    values: dict[str, dict[str, Any]] = {}
    listeners = DEFAULT_LISTENERS
    for name, value in overrides.items():
        if name == "listeners":
            listeners = value
            continue
        section, sep, key = name.replace("__", ".", 1).partition(".")
        if not sep or section not in SCHEMA or SCHEMA[section].named or key not in SCHEMA[section].options:
            raise TypeError(f"render_default_config: unknown key {name!r}")
        values.setdefault(section, {})[key] = value

    out = _HEADER.splitlines()
    for name, section in SCHEMA.items():
        out.append("")
        out += _comment(section.help)
        if section.named:
            for key, opt in section.options.items():
                out += _comment(f"{key}: {opt.help} {opt.constraint_text()}".rstrip(), indent="  ")
            for i, (item, table) in enumerate(listeners.items()):
                out += [""] * bool(i) + [f"[{name}.{item}]"]
                out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
            continue
        out.append(f"[{name}]")
        for i, (key, opt) in enumerate(section.options.items()):
            out += [""] * bool(i) + _comment(f"{opt.help} {opt.constraint_text()}".rstrip())
            out.append(f"{key} = {_toml_value(values.get(name, {}).get(key, opt.default))}")
    return "\n".join(out) + "\n"
