"""The ``appliance`` command: everything an operator does by hand.

Each sub-command lives in a small module (cli_ops, cli_directory, cli_mail)
that registers its parsers; this module parses, loads the config once and
turns every expected error into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from . import i18n_cli_zh, i18n_store_zh  # noqa: F401 - register the Chinese catalogues
from .config import ConfigError
from .i18n import _, localise, set_language

DEFAULT_CONFIG = "/etc/appliance/appliance.toml"
EX_USAGE, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 64, 65, 67, 70, 75, 78


class CliError(Exception):
    """An error for the operator: one line, and the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(_("usage error: {message} (see --help)").format(message=message), EX_USAGE)


def config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("APPLIANCE_CONFIG") or DEFAULT_CONFIG


def load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .config import load_config

    cfg = load_config(config_path(args))
    if not os.environ.get("APPLIANCE_LANG"):
        set_language(cfg.instance.language)
    return cfg


def open_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from storage.store import Store

    return Store.from_config(load(args))


def actor() -> str:
    """Who an audit record names for a CLI action: the Unix user."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001
        return f"cli:uid{os.getuid()}"


def build_parser() -> argparse.ArgumentParser:
    from . import cli_antispam, cli_directory, cli_dkim, cli_install, cli_mail, cli_ops, cli_queue

    p = _Parser(prog="appliance", description=_("Private mail server appliance: command line for operators."))
    p.add_argument("-c", "--config", help=_("path of appliance.toml (default $APPLIANCE_CONFIG, else /etc/appliance/appliance.toml)"))
    p.add_argument("--debug", action="store_true", help=_("show a traceback on errors"))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (cli_ops, cli_directory, cli_mail, cli_install, cli_antispam, cli_queue, cli_dkim):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], int | None] = args.func
        return func(args) or 0
    except CliError as exc:
        return _fail(str(exc), exc.code, args)
    except ConfigError as exc:
        return _fail(str(exc), EX_CONFIG, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for operators
        from storage.errors import InvalidInputError, NotFoundError, StoreError

        if isinstance(exc, NotFoundError):
            return _fail(localise(exc), EX_NOUSER if "user" in exc.template else 1, args)
        if isinstance(exc, InvalidInputError):
            return _fail(localise(exc), EX_DATAERR, args)
        if isinstance(exc, StoreError):
            return _fail(localise(exc), 1, args)
        if isinstance(exc, OSError):
            return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1, args)
        return _fail(_("internal error: {error} (run with --debug for details)").format(error=f"{type(exc).__name__}: {exc}"), EX_SOFTWARE, args)


def _fail(message: str, code: int, args: argparse.Namespace | None) -> int:
    if args is not None and getattr(args, "debug", False):
        traceback.print_exc()
    first_line = (message or "error").strip().splitlines()[0] if message.strip() else "error"
    print(f"appliance: {first_line}", file=sys.stderr)
    return code
