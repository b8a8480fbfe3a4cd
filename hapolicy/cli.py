"""Command line: the original's options, the daemon's, `--check-config`, spawn or daemon mode.

`hapolicy [-d ACTION] [-l] [-v] [-L] -s NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]] ...` works as
the Perl original's did. Every error in a command line or config file exits 2 with one line.

A command line is read by cmdline.py straight from the option table when it can; argparse (made
from the same table) is imported only for what cmdline.py leaves to it: `--help`, `--version`,
errors and rare spellings. Spawn mode starts a new process per SMTP connection, and argparse
would cost it a few milliseconds each time.
"""

from __future__ import annotations

import os
import sys

from hapolicy import __version__
from hapolicy.base.log import Logger
from hapolicy.config import cmdline
from hapolicy.config.file import assemble, read_config_file
from hapolicy.config.option import bounds_of, default_of
from hapolicy.config.options import OPTIONS, SETTINGS, summary
from hapolicy.config.parsers import parse_service
from hapolicy.config.values import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from hapolicy.config.records import DaemonConfig

EXIT_USAGE = 2
CONFIG_FILE = cmdline.LONG["--config"]


class UsageError(Exception):
    pass


def make_parser() -> argparse.ArgumentParser:
    """The command line as argparse reads it, from the option table."""
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse that reports an error as one line instead of printing the usage."""

        def error(self, message: str) -> NoReturn:
            raise UsageError(message)

    p = Parser(prog="hapolicy", allow_abbrev=False, description=(
        "High availability, weighted load balancing and a fallback action for Postfix policy "
        "delegation services. Without --listen, serves one client on stdin/stdout (spawn(8))."))
    for option in OPTIONS:
        default = default_of(option).replace("`", "")
        said = [f"default: {default}"] if default else []
        said += [f"bounds: {bounds_of(option)}"] if bounds_of(option) else []
        text = option.help.replace("`", "") + (f" ({'; '.join(said)})" if said else "")
        text = text.replace("%", "%%")
        dest = cmdline.dest(option)
        if option.flag:
            p.add_argument(*option.flags, dest=dest, action="store_true", default=None, help=text)
        elif option.choices:
            p.add_argument(*option.flags, dest=dest, choices=option.choices, help=text)
        elif option.flags[0] == "-s":
            p.add_argument(*option.flags, dest=dest, action="append", metavar=option.metavar,
                           help=text)
        else:
            p.add_argument(*option.flags, dest=dest, metavar=option.metavar, help=text)
    p.add_argument("--version", action="version", version=f"hapolicy {__version__}")
    return p


def parse_command_line(argv: Sequence[str]) -> dict[str, Any]:
    """Every option's value by destination (None when not given); UsageError when wrong."""
    expanded = cmdline.expand_original_abbreviations(argv)
    values = cmdline.parse(expanded)
    if values is None:
        values = vars(make_parser().parse_args(expanded))
    return values


def load_config(argv: Sequence[str]) -> tuple[DaemonConfig, dict[str, Any]]:
    """Build the configuration from a config file (if any) and the command line, which wins; with
    the command line's values (parse_command_line)."""
    args = parse_command_line(argv)
    settings: dict[str, Any] = {}
    services = []
    parsed = None
    if args["config"]:
        try:
            CONFIG_FILE.parse(args["config"])
        except ConfigError as exc:
            raise ConfigError(f"--config: {exc}") from None
        parsed = read_config_file(args["config"])
        settings["config_file"] = os.path.abspath(args["config"])
    for key, option in SETTINGS.items():
        value = args[key]
        if value is None:
            continue
        if option.flag:
            settings[key] = True
            continue
        try:
            settings[key] = option.parse(value)  # type: ignore[misc]
        except ConfigError as exc:
            raise ConfigError(f"--{option.name}: {exc}") from None
    if args["service"]:
        services = [parse_service(spec) for spec in args["service"]]
    return assemble(parsed, settings, services), args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, args = load_config(argv)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc), argv)
    log = Logger(config.syslog_socket, config.log_stderr)
    if args["check_config"]:
        print("\n".join(summary(config)))
        for line in _warnings(config):
            sys.stderr.write(f"hapolicy: warning: {line}\n")
        return 0
    if config.addresses:
        from hapolicy.daemon.runner import run_daemon

        for line in _warnings(config):
            log.warning(line)

        return run_daemon(config, log, lambda: load_config(argv)[0])
    from hapolicy.spawn.mode import run_spawn, silence_stderr

    if not config.log_stderr:
        silence_stderr()
    try:
        return run_spawn(config, log)
    except Exception as exc:  # noqa: BLE001 - a bug: log it on one line, never on Postfix's socket
        log.error(f"internal error: {type(exc).__name__}: {exc}")
        return 1


def _warnings(config: DaemonConfig) -> list[str]:
    """--check-config's and the daemon's start's warnings of settings that work against each
    other, and of a pool that caches in spawn mode."""
    from hapolicy.request.selection import warnings as balance_warnings

    found = balance_warnings(config)
    if any(pool.hedge for pool in config.pools):
        from hapolicy.request.hedge import warnings

        found += warnings(config)
    if any(pool.cache for pool in config.pools) and not config.addresses:
        from hapolicy.request.cache import warnings as cache_warnings

        found += cache_warnings(config)
    return found


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
