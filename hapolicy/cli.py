"""Command line: the original's options, the daemon's, `--check-config`, spawn or daemon mode.

`hapolicy [-d ACTION] [-l] [-v] [-L] -s NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]] ...` works as
the Perl original's did. Every error in a command line or config file exits 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .config import (
    ALIASES,
    SETTINGS,
    Config,
    ConfigError,
    build_config,
    parse_service,
    read_config_file,
)
from .log import Logger

EXIT_USAGE = 2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports an error as one line instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


FLAGS = {"logging": "log_requests", "verbose": "verbose", "stdout": "log_stderr",
         "daemonize": "daemonize"}


def make_parser() -> Parser:
    p = Parser(prog="hapolicy", allow_abbrev=False, description=(
        "High availability, weighted load balancing and a fallback action for Postfix policy "
        "delegation services. Without --listen, serves one client on stdin/stdout (spawn(8))."))
    p.add_argument("-s", "--service", action="append", metavar="NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]",
                   help="a policy service (repeat for more); HOST may be [IPv6]; NAME=unix:/path too")
    p.add_argument("-d", "--default", metavar="ACTION", help="answer when no service can (dunno)")
    p.add_argument("-l", "--logging", action="store_true", default=None, help="log every request")
    p.add_argument("-v", "--verbose", action="store_true", default=None, help="log every attempt")
    p.add_argument("-L", "--stdout", action="store_true", default=None,
                   help="log to stderr instead of syslog (debugging; never under spawn)")
    p.add_argument("-c", "--config", metavar="FILE", help="read settings and services from FILE")
    p.add_argument("--check-config", action="store_true",
                   help="validate, print the effective configuration and exit")
    p.add_argument("--version", action="version", version=f"hapolicy {__version__}")
    for key in SETTINGS:
        option = "--" + key.replace("_", "-")
        if key in ALIASES.values() or key in ("verbose",):
            continue
        if key == "daemonize":
            p.add_argument(option, action="store_true", default=None)
        elif key == "sticky_instance":
            p.add_argument(option, choices=["yes", "no"])
        elif key == "all_down":
            p.add_argument(option, choices=["default", "try"])
        else:
            p.add_argument(option, metavar=key.split("_")[-1].upper())
    return p


# The original's long options. Its Getopt::Long took any unique prefix of them (`--serv`,
# `--def`); so do we, but only of these five: prefixes of the daemon's options stay errors.
ORIGINAL_LONG = ("service", "default", "logging", "verbose", "stdout")


def expand_original_abbreviations(argv: Sequence[str]) -> list[str]:
    """`--serv=X` -> `--service=X` when the prefix names exactly one of ORIGINAL_LONG and no
    option of ours; everything after a bare `--` is left alone."""
    known = {a for action in make_parser()._actions for a in action.option_strings}
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        name, eq, value = arg.partition("=")
        if name.startswith("--") and len(name) > 2 and name not in known:
            full = [o for o in ORIGINAL_LONG if o.startswith(name[2:])]
            if len(full) == 1:
                arg = "--" + full[0] + eq + value
        out.append(arg)
    return out


def load_config(argv: Sequence[str]) -> tuple[Config, argparse.Namespace]:
    """Build the Config from a config file (if any) and the command line, which wins."""
    args = make_parser().parse_args(expand_original_abbreviations(argv))
    settings: dict[str, Any] = {}
    services = []
    if args.config:
        settings, services = read_config_file(args.config)
        settings["config_file"] = os.path.abspath(args.config)
    for name, key in FLAGS.items():
        if getattr(args, name):
            settings[key] = True
    if args.default is not None:
        settings["default_action"] = SETTINGS["default_action"](args.default)
    for key, parse in SETTINGS.items():
        value = getattr(args, key, None)
        if value is not None and key not in FLAGS.values():
            try:
                settings[key] = parse(value)
            except ConfigError as exc:
                raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None
    if args.service:
        services = [parse_service(spec) for spec in args.service]
    return build_config(settings, services), args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, args = load_config(argv)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc), argv)
    log = Logger(config.syslog_socket, config.log_stderr)
    if args.check_config:
        print("\n".join(config.summary()))
        return 0
    if config.listen:
        from .master import run_daemon

        return run_daemon(config, log, lambda: load_config(argv)[0])
    from .spawn import run_spawn, silence_stderr

    if not config.log_stderr:
        silence_stderr()
    try:
        return run_spawn(config, log)
    except Exception as exc:  # noqa: BLE001 - a bug: log it on one line, never on Postfix's socket
        log.error(f"internal error: {type(exc).__name__}: {exc}")
        return 1


def _fail(message: str, argv: Sequence[str]) -> int:
    line = f"hapolicy: error: {message}"
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if "-L" not in argv and "--stdout" not in argv:
        Logger().error(line[10:])
    return EXIT_USAGE


def run() -> NoReturn:
    sys.exit(main())
