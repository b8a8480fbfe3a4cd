"""Every option, declared once: flags, value parser, placeholder, help, scope.

The command line (cli.py), the config file (`read_config_file`), `--check-config`'s summary
(`summary`), `--help` and the README's option table (`markdown_table`, printed by
`python -m hapolicy.options`; a test compares it with README.md) are all made from OPTIONS.
A default is the `Config` field's own default, so it is written in one place too.

Config file: `key = value` lines, the key being an option's long name (`-` or `_`) or its
`Config` field, `service = SPEC` once per service, `#` comments.

Scope says whom a setting belongs to: the process ("daemon": workers, users, syslog), the
services it balances ("pool": timeouts, health, balancing; in a file with `[pool NAME]`
sections, set before the first section it is every pool's default), a pool alone
("section": not a default for every pool), or a command-line-only action.
"""

from __future__ import annotations

import sys

from . import frozen
from .config import (
    Config,
    ConfigError,
    fmt_num,
    nonempty,
    parse_all_down,
    parse_balance,
    parse_bool,
    parse_context,
    parse_fail_answer,
    parse_hedge,
    parse_int,
    parse_interval,
    parse_listen,
    parse_metrics_listen,
    parse_mode,
    parse_percent,
    parse_pool_name,
    parse_seconds,
    parse_state_file,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

DAEMON, POOL, SECTION, COMMAND = "daemon", "pool", "section", "command"
MAX_COUNT = 100  # check-rise and check-fall


@frozen.frozen
class Option:
    """One option. `key` is its `Config` field ("" for the command-line-only actions)."""

    key: str
    flags: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str = ""
    scope: str = POOL
    choices: tuple[str, ...] = ()
    flag: bool = False  # no value on the command line; yes/no in the config file
    default_text: str = ""  # the default as the docs say it, where the value does not

    @property
    def name(self) -> str:
        """The long name without dashes: the config file's key."""
        return self.flags[-1][2:]


def _seconds(what: str, allow_zero: bool = False) -> Callable[[str], float]:
    return lambda text: parse_seconds(text, what, allow_zero)


def _whole(what: str, minimum: int) -> Callable[[str], int]:
    return lambda text: parse_int(text, what, minimum)


def _interval(what: str, allow_zero: bool = False) -> Callable[[str], float]:
    return lambda text: parse_interval(text, what, allow_zero)


def _count(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_int(text, what, 1)
        if value > MAX_COUNT:
            raise ConfigError(f"{what} {text!r} must be at most {MAX_COUNT}")
        return value

    return parse


def _text(text: str) -> str:
    return text.strip()


def _attributes(text: str) -> str:
    attrs = [a for a in text.split() if "=" in a]
    if not any(a.startswith("request=") for a in attrs):
        raise ConfigError(f"check request {text!r} has no request= attribute "
                          "(e.g. request=smtpd_access_policy)")
    return "".join(a + "\n" for a in attrs)


OPTIONS: tuple[Option, ...] = (
    Option("", ("-s", "--service"), "a policy service; repeat for more. HOST is a name, an IPv4 "
           "address or `[IPv6]`; `NAME=unix:/path[:PRIO...]` is a unix socket. Every optional "
           "field may be empty: `G=h:10023::3` sets only the weight",
           metavar="NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]", scope=COMMAND),
    Option("default_action", ("-d", "--default"), "the answer when no service answers",
           nonempty("default action"), "ACTION", default_text="`dunno`"),
    Option("log_requests", ("-l", "--logging"), "log one line per request", parse_bool,
           scope=DAEMON, flag=True),
    Option("verbose", ("-v", "--verbose"), "also log every failed attempt and why", parse_bool,
           scope=DAEMON, flag=True),
    Option("log_stderr", ("-L", "--stdout"), "log to stderr instead of syslog (debugging at a "
           "terminal; never under spawn)", parse_bool, scope=DAEMON, flag=True),
    Option("total_timeout", ("--total-timeout",), "a request is answered within S seconds "
           "whatever the services do", _seconds("total timeout"), "S"),
    Option("connect_timeout", ("--connect-timeout",), "seconds for a TCP connect; a blackholed "
           "host costs the smaller of this and its TIMEOUT", _seconds("connect timeout"), "S"),
    Option("syslog_socket", ("--syslog-socket",), "where syslog lines go (facility mail, ident "
           "`hapolicy[PID]`)", _text, "PATH", DAEMON, default_text="`/dev/log`"),
    Option("", ("-c", "--config"), "read settings and services from FILE; the command line "
           "overrides it", metavar="FILE", scope=COMMAND),
    Option("", ("--check-config",), "validate, print the effective configuration, exit 0 (or 2 "
           "with `FILE:LINE: what`)", scope=COMMAND, flag=True),
    Option("listen", ("--listen",), "run the daemon on `HOST:PORT`, `[IPv6]:PORT` or "
           "`unix:/path` (several: separated by blanks or commas)", parse_listen, "ADDR",
           default_text="spawn mode"),
    Option("workers", ("--workers",), "worker processes", _whole("workers", 1), "N", DAEMON,
           default_text="cores"),
    Option("max_use", ("--max-use",), "requests a worker serves before it is replaced; it keeps "
           "its connections until their clients close them, so about (requests/s ÷ N) × 1000 s "
           "retiring workers live beside the others", _whole("max use", 1), "N", DAEMON),
    Option("max_idle", ("--max-idle",), "close a client connection idle this long (Postfix "
           "closes its own after 300 s)", _seconds("max idle"), "S", DAEMON),
    Option("retire_timeout", ("--retire-timeout",), "longest a retiring worker waits for its "
           "clients (Postfix's max_ttl is 1000 s)", _seconds("retire timeout"), "S", DAEMON),
    Option("drain_timeout", ("--drain-timeout",), "on SIGTERM, time for in-flight requests to "
           "finish", _seconds("drain timeout", allow_zero=True), "S", DAEMON),
    Option("summary_interval", ("--summary",), "the master logs one line of counters per pool "
           "every S seconds (0: never)", _interval("summary", allow_zero=True), "S", DAEMON),
    Option("pidfile", ("--pidfile",), "write the master's pid here (removed at exit)", _text,
           "PATH", DAEMON),
    Option("control", ("--control",), "a unix socket here (the master's, mode 0600, removed at "
           "exit; empty: none) answers `hapolicyctl` commands", _text, "PATH", DAEMON),
    Option("control_group", ("--control-group",), "let this group use the control socket too "
           "(mode 0660)", _text, "GROUP", DAEMON),
    Option("metrics_listen", ("--metrics-listen",), "the monitor serves Prometheus metrics at "
           "`http://HOST:PORT/metrics` (`[IPv6]:PORT` too; empty: none)", parse_metrics_listen,
           "HOST:PORT", DAEMON),
    Option("daemonize", ("--daemonize",), "detach; return once the pidfile is written and the "
           "master runs (for init scripts)", parse_bool, scope=DAEMON, flag=True),
    Option("user", ("--user",), "the workers and the monitor (checks, control socket, "
           "metrics) drop to this user after the master bound the sockets", _text, "USER",
           DAEMON),
    Option("group", ("--group",), "and to this group", _text, "GROUP", DAEMON),
    Option("socket_mode", ("--socket-mode",), "mode of a unix listening socket", parse_mode,
           "MODE", DAEMON),
    Option("backlog", ("--backlog",), "length of the listen queue", _whole("backlog", 1), "N",
           DAEMON),
    Option("cooldown", ("--cooldown",), "without checks, a failed service is skipped for S "
           "seconds; after a timeout, doubled at each consecutive timeout up to --cooldown-max",
           _seconds("cooldown"), "S"),
    Option("cooldown_max", ("--cooldown-max",), "the longest cool-down", _seconds("cooldown max"),
           "S"),
    Option("state_file", ("--state-file",), "spawn mode: the file in which every process "
           "spawned with the same services shares their health (down, cool-down, probe, round "
           "robin); `none`: each process keeps its own. Daemon: the file in which the master "
           "keeps the operator's disable, drain and weight across a restart (default: none)",
           parse_state_file, "PATH", DAEMON,
           default_text="spawn mode: `/run/hapolicy/spawn/` when it is the user's own, else "
           "`$XDG_RUNTIME_DIR/hapolicy/` or `/tmp/hapolicy-UID/`, a file per service list"),
    Option("check_interval", ("--check-interval",), "the daemon checks every service every S "
           "seconds (0: off, requests probe instead)",
           _interval("check interval", allow_zero=True), "S"),
    Option("check_down_interval", ("--check-down-interval",), "seconds between checks of a "
           "service that is down", _interval("check down interval"), "S"),
    Option("check_timeout", ("--check-timeout",), "longest wait for a check's answer (and at "
           "most the service's TIMEOUT)", _interval("check timeout"), "S"),
    Option("check_rise", ("--check-rise",), "answered checks in a row that bring a service back",
           _count("check rise"), "N"),
    Option("check_fall", ("--check-fall",), "failed checks in a row that take a service down",
           _count("check fall"), "N"),
    Option("check_request", ("--check-request",), "the check's attributes, `name=value` "
           "separated by spaces", _attributes, "ATTRS",
           default_text="an RCPT from hapolicy-check@localhost"),
    Option("all_down", ("--all-down",), "when every service is down: answer the default action "
           "at once, or try them anyway (each costs its timeout)", parse_all_down,
           choices=("default", "try")),
    Option("balance", ("--balance",), "how to choose among services of one priority: weighted "
           "round robin, or rendezvous hashing of these attributes", parse_balance,
           "weighted|hash:ATTR[,ATTR...]"),
    Option("sticky_instance", ("--sticky-instance",), "keep the requests of one SMTP "
           "transaction on one service", parse_bool, choices=("yes", "no")),
    Option("fail_answer", ("--fail-answer",), "an answer whose action matches this regular "
           "expression (case-insensitive search) is the service's failure: the next service "
           "is asked, and health counts it as a timeout", parse_fail_answer, "REGEX",
           default_text="none"),
    Option("policy_context", ("--policy-context",), "the `policy_context` of the requests "
           "this pool answers, when pools share a listen address; `*`: requests of no "
           "other pool's context", parse_context, "VALUE", SECTION, default_text="any"),
    Option("shadow", ("--shadow",), "another pool that gets a copy of each request this pool "
           "answered, after the answer went back; its answer is only compared, counted and "
           "logged (a pool used only as a shadow needs no listen)", parse_pool_name, "POOL",
           SECTION, default_text="none"),
    Option("shadow_share", ("--shadow-share",), "the share of answered requests copied to the "
           "shadow (every 100/P-th, spread evenly)", lambda text: parse_percent(text, "shadow "
           "share"), "PERCENT"),
    Option("hedge", ("--hedge",), "when a service has not answered within S seconds (or pNN: "
           "that percentile of its recent answer times), ask the next service too; the first "
           "good answer wins. Only for pools without state (see Hedged requests)", parse_hedge,
           "S|pNN", default_text="off"),
    Option("hedge_max", ("--hedge-max",), "at most this share of the requests is hedged (a "
           "token bucket per worker)", lambda text: parse_percent(text, "hedge max"),
           "PERCENT"),
)

SETTINGS = {o.key: o for o in OPTIONS if o.key}
# config file keys: the long names and the Config fields
FILE_KEYS = {**{o.key: o for o in SETTINGS.values()},
             **{o.name.replace("-", "_"): o for o in SETTINGS.values()}}
SERVICE_FIELDS = (
    ("PRIO", "lower is tried first; compared as numbers (9 before 10)", "10"),
    ("WEIGHT", "share of requests among services of one priority (1 or more)", "1"),
    ("TIMEOUT", "seconds the service has to connect and answer", "30"),
)


def format_value(option: Option, value: Any) -> str:
    """A value as the config file and --check-config write it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if option.key == "socket_mode":
        return f"{value:04o}"
    if option.key == "check_request":
        return value.strip().replace("\n", " ")
    if isinstance(value, float):
        return fmt_num(value)
    return str(value)


def default_of(option: Option) -> str:
    """The default as the docs say it."""
    if option.default_text or not option.key:
        return option.default_text
    value = frozen.default_of(Config, option.key)
    if option.flag:
        return "on" if value else "off"
    return format_value(option, value)


def summary(config: Config) -> list[str]:
    """The effective configuration as `key = value` lines (what --check-config prints); with
    pools, the daemon's settings and then each pool's section."""
    if not config.pool_configs:
        return _lines(config, SETTINGS.values(), config.services)
    lines = _lines(config, [o for o in SETTINGS.values() if o.scope == DAEMON], ())
    for pool in config.pools:
        lines.extend(("", f"[pool {pool.name}]"))
        lines.extend(_lines(pool, [o for o in SETTINGS.values() if o.scope != DAEMON],
                            pool.services))
    return lines


def _lines(config: Config, options: Any, services: Any) -> list[str]:
    lines = [f"{o.name} = {format_value(o, getattr(config, o.key))}" for o in options]
    lines.extend(f"service = {s.spec}" for s in services)
    return lines


def flags_text(option: Option) -> str:
    """`-d, --default ACTION` as the README's table writes it."""
    text = ", ".join(option.flags)
    if option.choices:
        return f"{text} {'/'.join(option.choices)}"
    return f"{text} {option.metavar}" if option.metavar else text


def markdown_table() -> str:
    """The README's option table."""
    rows = ["| option | meaning | default |", "|---|---|---|"]
    for option in OPTIONS:
        flags = flags_text(option).replace("|", "\\|")
        rows.append(_row(f"`{flags}`", option.help, default_of(option)))
        if option.key == "" and option.flags[0] == "-s":
            rows.extend(_row(*field) for field in SERVICE_FIELDS)
    return "\n".join(rows) + "\n"


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
