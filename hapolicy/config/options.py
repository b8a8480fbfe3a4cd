"""Every option, declared once: flags, value parser and bounds, placeholder, help, scope.

The command line (cli.py), the config file (file.py), `--check-config`'s summary (`summary`),
`--help`, the man pages (manpage.py) and the manual's option table (`markdown_table`, printed
by `python -m hapolicy.config.options`; a test compares it with docs/configuration.md) are all
made from OPTIONS. A default is the field's own default in the record of the option's scope
(records.py; option.default_of), so it is written in one place too. No option is without
bounds (tests/system/test_config_bounds.py walks the table).

Config file: `key = value` lines, the key being an option's long name (`-` or `_`) or its
record's field, `service = SPEC` once per service, `#` comments.
"""

from __future__ import annotations

import sys

from hapolicy.config.cachecheck import (
    parse_cache_actions,
    parse_cache_key,
)
from hapolicy.config.option import (
    COMMAND,
    DAEMON,
    NUMBER_LENGTH,
    SECTION,
    YES_NO,
    Option,
    Value,
    bounds_of,
    default_of,
    flags_text,
    format_value,
    interval,
    path,
    percent,
    seconds,
    text,
    whole,
)
from hapolicy.config.parsers import (
    parse_all_down,
    parse_balance,
    parse_check_request,
    parse_context,
    parse_fail_answer,
    parse_hedge,
    parse_listen,
    parse_metrics_listen,
    parse_pool_name,
    parse_service,
    parse_state_file,
)
from hapolicy.config.values import (
    MAX_HOST,
    MAX_ID,
    MAX_LISTEN,
    MAX_PORT,
    MAX_PRIO,
    MAX_SECONDS,
    MAX_SERVICES,
    MAX_SPEC,
    MAX_UNIX_PATH,
    MAX_WEIGHT,
    MAX_WORKERS,
    nonempty,
    parse_group_id,
    parse_mode,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.config.records import DaemonConfig, PoolConfig

MAX_COUNT = 100  # check-rise and check-fall
MAX_INFLIGHT = 100000  # a service's requests in flight (max-inflight)
MAX_USE = 10**9
MAX_BACKLOG = 65535  # the kernel caps it at net.core.somaxconn anyway
MAX_ACTION = 2048  # as Postfix's line_length_limit; an SMTP reply line is 512 octets
MAX_PATTERN = 512  # fail-answer: at most 256 nested groups, far from the recursion limit
MAX_NAME = 256  # a user's or group's name (LOGIN_NAME_MAX)
MAX_TEXT = 4096  # listen, check-request: several words
MAX_BALANCE = 1024
MAX_METRICS_LISTEN = 300  # [IPv6 or a name]:PORT
MAX_CACHE_SIZE = 10**6  # entries of a pool's verdict cache: 288 MB
#: What every value must be, as docs/configuration.md and the man pages say it.
BOUNDS_RULE = ("Every value stays within the bounds its option states and holds printable "
               "characters only: no tab, CR, LF, NUL or other control character, no U+0085, "
               "U+2028 or U+2029. Any other value is a one-line error, from `--check-config` "
               "and at start, before any socket is bound.")

OPTIONS: tuple[Option, ...] = (
    Option("", ("-s", "--service"), "a policy service; repeat for more. HOST is a name, an IPv4 "
           "address or `[IPv6]`; `NAME=unix:/path[:PRIO...]` is a unix socket. Every optional "
           "field may be empty: `G=h:10023::3` sets only the weight",
           Value("service", parse_service, MAX_SPEC, f"at most {MAX_SERVICES} a pool, each at "
                 f"most {MAX_SPEC} characters; NAME 1-64 of A-Z a-z 0-9 _ . -; HOST at most "
                 f"{MAX_HOST} characters; PORT 1 to {MAX_PORT}; a unix path at most "
                 f"{MAX_UNIX_PATH} bytes"),
           metavar="NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]", scope=COMMAND),
    Option("default_action", ("-d", "--default"), "the answer when no service answers",
           text("default action", MAX_ACTION, nonempty("default action")), "ACTION",
           default_text="`dunno`"),
    Option("log_requests", ("-l", "--logging"), "log one line per request", YES_NO,
           scope=DAEMON, flag=True),
    Option("verbose", ("-v", "--verbose"), "also log every failed attempt and why", YES_NO,
           scope=DAEMON, flag=True),
    Option("log_stderr", ("-L", "--stdout"), "log to stderr instead of syslog (debugging at a "
           "terminal; never under spawn)", YES_NO, scope=DAEMON, flag=True),
    Option("total_timeout", ("--total-timeout",), "a request is answered within S seconds "
           "whatever the services do", seconds("total timeout"), "S"),
    Option("connect_timeout", ("--connect-timeout",), "seconds for a TCP connect; a blackholed "
           "host costs the smaller of this and its TIMEOUT", seconds("connect timeout"), "S"),
    Option("syslog_socket", ("--syslog-socket",), "where syslog lines go (facility mail, ident "
           "`hapolicy[PID]`; empty: none)", path("syslog socket", MAX_UNIX_PATH), "PATH",
           DAEMON, default_text="`/dev/log`"),
    Option("", ("-c", "--config"), "read settings and services from FILE; the command line "
           "overrides it", path("config file"), "FILE", COMMAND),
    Option("", ("--check-config",), "validate, print the effective configuration, exit 0 (or 2 "
           "with `FILE:LINE: what`)", YES_NO, scope=COMMAND, flag=True),
    Option("listen", ("--listen",), "run the daemon on `HOST:PORT`, `[IPv6]:PORT` or "
           "`unix:/path` (several: separated by blanks or commas)",
           text("listen", MAX_TEXT, parse_listen, f"at most {MAX_LISTEN} addresses; PORT 1 "
                 f"to {MAX_PORT}; a unix path at most {MAX_UNIX_PATH} bytes"), "ADDR",
           default_text="spawn mode"),
    Option("workers", ("--workers",), "worker processes", whole("workers", 1, MAX_WORKERS), "N",
           DAEMON, default_text="cores"),
    Option("max_use", ("--max-use",), "requests a worker serves before it is replaced; it keeps "
           "its connections until their clients close them, so about (requests/s ÷ N) × 1000 s "
           "retiring workers live beside the others", whole("max use", 1, MAX_USE), "N", DAEMON),
    Option("max_idle", ("--max-idle",), "close a client connection idle this long (Postfix "
           "closes its own after 300 s)", seconds("max idle"), "S", DAEMON),
    Option("retire_timeout", ("--retire-timeout",), "longest a retiring worker waits for its "
           "clients (Postfix's max_ttl is 1000 s)", seconds("retire timeout"), "S", DAEMON),
    Option("drain_timeout", ("--drain-timeout",), "on SIGTERM, time for in-flight requests to "
           "finish", seconds("drain timeout", allow_zero=True), "S", DAEMON),
    Option("summary_interval", ("--summary",), "the master logs one line of counters per pool "
           "every S seconds (0: never)", interval("summary", allow_zero=True), "S", DAEMON),
    Option("pidfile", ("--pidfile",), "write the master's pid here (removed at exit)",
           path("pidfile"), "PATH", DAEMON),
    Option("control", ("--control",), "a unix socket here (the master's, mode 0600, removed at "
           "exit; empty: none) answers `hapolicyctl` commands",
           path("control socket", MAX_UNIX_PATH), "PATH", DAEMON),
    Option("control_group", ("--control-group",), "let this group use the control socket too "
           "(mode 0660)", text("control group", MAX_NAME,
                               lambda value: parse_group_id(value, "control group"),
                               f"a name of at most {MAX_NAME} characters, or a number 0 to "
                               f"{MAX_ID}"), "GROUP", DAEMON),
    Option("metrics_listen", ("--metrics-listen",), "the monitor serves Prometheus metrics at "
           "`http://HOST:PORT/metrics` (`[IPv6]:PORT` too; empty: none), and a read-only HTML "
           "status page at `/` and `/status`",
           text("metrics listen", MAX_METRICS_LISTEN, parse_metrics_listen,
                 f"at most {MAX_METRICS_LISTEN} characters; PORT 1 to {MAX_PORT}"),
           "HOST:PORT", DAEMON),
    Option("daemonize", ("--daemonize",), "detach; return once the pidfile is written and the "
           "master runs (for init scripts)", YES_NO, scope=DAEMON, flag=True),
    Option("user", ("--user",), "the workers and the monitor (checks, control socket, "
           "metrics) drop to this user after the master bound the sockets",
           text("user", MAX_NAME), "USER", DAEMON),
    Option("group", ("--group",), "and to this group", text("group", MAX_NAME), "GROUP",
           DAEMON),
    Option("socket_mode", ("--socket-mode",), "mode of a unix listening socket",
           Value("socket mode", parse_mode, 4, "0 to 0777 (octal)", 0, 0o777), "MODE", DAEMON),
    Option("backlog", ("--backlog",), "length of the listen queue",
           whole("backlog", 1, MAX_BACKLOG), "N", DAEMON),
    Option("cooldown", ("--cooldown",), "without checks, a failed service is skipped for S "
           "seconds; after a timeout, doubled at each consecutive timeout up to --cooldown-max",
           seconds("cooldown"), "S"),
    Option("cooldown_max", ("--cooldown-max",), "the longest cool-down", seconds("cooldown max"),
           "S"),
    Option("slowstart", ("--slowstart",), "a service that comes back (a check or a probe "
           "found it up, `hapolicyctl enable`, new in a reload) gets a share of the round robin "
           "that grows from a twentieth of its weight to all of it over S seconds (a restarted "
           "service with a cold cache is not given its full share at once; hash pools keep "
           "their keys where they are), and a max-inflight that grows as well",
           seconds("slowstart", allow_zero=True), "S", default_text="0: off"),
    Option("max_inflight", ("--max-inflight",), "a service with N requests in flight (over "
           "all workers) gets no new one: in a weighted or least-latency pool the request goes "
           "to the next service with room, in a hashed pool (or to the service its transaction "
           "sticks to) it waits for a free slot up to queue-timeout",
           whole("max inflight", 0, MAX_INFLIGHT), "N", default_text="0: no limit"),
    Option("queue_timeout", ("--queue-timeout",), "the longest a request waits for a free "
           "slot of a service at its max-inflight; then it goes on as after a failure (the "
           "next service, or the default action: reason `queued-out`)",
           interval("queue timeout"), "S"),
    Option("state_file", ("--state-file",), "spawn mode: the file in which every process "
           "spawned with the same services shares their health (down, cool-down, probe, round "
           "robin); `none`: each process keeps its own. Daemon: the file in which the master "
           "keeps the operator's disable, drain and weight across a restart (default: none)",
           path("state file", parse=parse_state_file), "PATH", DAEMON,
           default_text="spawn mode: `/run/hapolicy/spawn/` when it is the user's own, else "
           "`$XDG_RUNTIME_DIR/hapolicy/` or `/tmp/hapolicy-UID/`, a file per service list"),
    Option("check_interval", ("--check-interval",), "the daemon checks every service every S "
           "seconds (0: off, requests probe instead)",
           interval("check interval", allow_zero=True), "S"),
    Option("check_down_interval", ("--check-down-interval",), "seconds between checks of a "
           "service that is down", interval("check down interval"), "S"),
    Option("check_timeout", ("--check-timeout",), "longest wait for a check's answer (and at "
           "most the service's TIMEOUT)", interval("check timeout"), "S"),
    Option("check_rise", ("--check-rise",), "answered checks in a row that bring a service back",
           whole("check rise", 1, MAX_COUNT), "N"),
    Option("check_fall", ("--check-fall",), "failed checks in a row that take a service down",
           whole("check fall", 1, MAX_COUNT), "N"),
    Option("check_request", ("--check-request",), "the check's attributes, `name=value` "
           "separated by spaces", text("check request", MAX_TEXT, parse_check_request,
                                       f"at most {MAX_TEXT} characters; each name 1-64 "
                                       "of A-Z a-z 0-9 _ . -"), "ATTRS",
           default_text="an RCPT from hapolicy-check@localhost"),
    Option("all_down", ("--all-down",), "when every service is down: answer the default action "
           "at once, or try them anyway (each costs its timeout)",
           Value("all-down", parse_all_down, 7, ""), choices=("default", "try")),
    Option("balance", ("--balance",), "how to choose among services of one priority: weighted "
           "round robin, the power of two choices by answer time and requests in flight "
           "(least-latency: for pools without state), or rendezvous hashing of these "
           "attributes",
           text("balance", MAX_BALANCE, parse_balance, f"at most {MAX_BALANCE} characters; "
                 "ATTR 1-64 of A-Z a-z 0-9 _ . -; a prefix /N 0 to 128"),
           "weighted|least-latency|hash:ATTR[,ATTR...]"),
    Option("sticky_instance", ("--sticky-instance",), "keep the requests of one SMTP "
           "transaction on one service", YES_NO, choices=("yes", "no")),
    Option("fail_answer", ("--fail-answer",), "an answer whose action matches this regular "
           "expression (case-insensitive search) is the service's failure: the next service "
           "is asked, and health counts it as a timeout",
           text("fail-answer", MAX_PATTERN, parse_fail_answer), "REGEX",
           default_text="none"),
    Option("policy_context", ("--policy-context",), "the `policy_context` of the requests "
           "this pool answers, when pools share a listen address; `*`: requests of no "
           "other pool's context", text("policy context", MAX_NAME, parse_context), "VALUE",
           SECTION, default_text="any"),
    Option("shadow", ("--shadow",), "another pool that gets a copy of each request this pool "
           "answered, after the answer went back; its answer is only compared, counted and "
           "logged (a pool used only as a shadow needs no listen)",
           text("shadow", 64, parse_pool_name, "1-64 of A-Z a-z 0-9 _ . -"), "POOL", SECTION,
           default_text="none"),
    Option("shadow_share", ("--shadow-share",), "the share of answered requests copied to the "
           "shadow (every 100/P-th, spread evenly)", percent("shadow share"), "PERCENT"),
    Option("hedge", ("--hedge",), "when a service has not answered within S seconds (or pNN: "
           "that percentile of its recent answer times), ask the next service too; the first "
           "good answer wins. Only for pools without state (see Hedged requests)",
           Value("hedge", parse_hedge, NUMBER_LENGTH, f"off or 0; more than 0, at most "
                 f"{MAX_SECONDS:g}; p50 to p99.9", 0.0, MAX_SECONDS), "S|pNN",
           default_text="off"),
    Option("hedge_max", ("--hedge-max",), "at most this share of the requests is hedged (a "
           "token bucket per worker)", percent("hedge max"), "PERCENT"),
    Option("cache", ("--cache",), "keep a good answer of a service S seconds under the values "
           "of cache-key; a request of the same key meanwhile is answered from the cache, "
           "without asking a service (one cache of all workers; spawn mode: of one process). "
           "Only for pools without state (see The verdict cache)",
           seconds("cache", allow_zero=True), "S", default_text="0: off"),
    Option("cache_key", ("--cache-key",), "the attributes a cached answer is kept under "
           "(with protocol_state), masks as in balance = hash:",
           text("cache-key", MAX_BALANCE, parse_cache_key, f"at most {MAX_BALANCE} characters; "
                "ATTR 1-64 of A-Z a-z 0-9 _ . -; a prefix /N 0 to 128"), "ATTR[/N][,ATTR...]",
           default_text="none (required with cache)"),
    Option("cache_stale", ("--cache-stale",), "when every service failed or is down, a request "
           "whose key has an answer younger than S seconds gets it instead of the default "
           "action (logged as stale=AGE)", seconds("cache stale", allow_zero=True), "S",
           default_text="0: never"),
    Option("cache_actions", ("--cache-actions",), "the answers kept: those whose action this "
           "regular expression matches from its start (case-insensitive); an answer that "
           "matches fail-answer, or longer than 254 bytes, never",
           text("cache-actions", MAX_PATTERN, parse_cache_actions), "REGEX",
           default_text="DUNNO, OK, PREPEND, REJECT and 5xx answers"),
    Option("cache_size", ("--cache-size",), "answers kept per pool (rounded up to a multiple "
           "of 4), oldest first out; 288 bytes each", whole("cache size", 1, MAX_CACHE_SIZE),
           "N"),
    Option("cache_force", ("--cache-force",), "cache a pool that hashes, keeps instances "
           "sticky, has a shadow or keeps temporary answers (services with state: refused "
           "without it)", YES_NO, choices=("yes", "no")),
)

SETTINGS = {o.key: o for o in OPTIONS if o.key}
# config file keys: the long names and the record fields
FILE_KEYS = {**{o.key: o for o in SETTINGS.values()},
             **{o.name.replace("-", "_"): o for o in SETTINGS.values()}}
SERVICE_FIELDS = (  # name, meaning, default, bounds
    ("PRIO", "lower is tried first; compared as numbers (9 before 10)", "10",
     f"0 to {MAX_PRIO}"),
    ("WEIGHT", "share of requests among services of one priority", "1", f"1 to {MAX_WEIGHT}"),
    ("TIMEOUT", "seconds the service has to connect and answer", "30",
     f"more than 0, at most {MAX_SECONDS:g}"),
)


def summary(config: DaemonConfig) -> list[str]:
    """The effective configuration as `key = value` lines (what --check-config prints): of a
    file without sections, every setting in the table's order and the services; with
    sections, the daemon's settings and then each pool's section."""
    if not config.sections:
        pool = config.pools[0]
        return [*(_line(o, config if o.scope == DAEMON else pool) for o in SETTINGS.values()),
                *_services(pool)]
    lines = [_line(o, config) for o in SETTINGS.values() if o.scope == DAEMON]
    for pool in config.pools:
        lines.extend(("", f"[pool {pool.name}]"))
        lines.extend(_line(o, pool) for o in SETTINGS.values() if o.scope != DAEMON)
        lines.extend(_services(pool))
    return lines


def _line(option: Option, record: DaemonConfig | PoolConfig) -> str:
    return f"{option.name} = {format_value(option, getattr(record, option.key))}"


def _services(pool: PoolConfig) -> list[str]:
    return [f"service = {s.spec}" for s in pool.services]


def markdown_table() -> str:
    """The option table of docs/configuration.md."""
    rows = ["| option | meaning | default | bounds |", "|---|---|---|---|"]
    for option in OPTIONS:
        flags = flags_text(option).replace("|", "\\|")
        rows.append(_row(f"`{flags}`", option.help, default_of(option), bounds_of(option)))
        if option.key == "" and option.flags[0] == "-s":
            rows.extend(_row(*field) for field in SERVICE_FIELDS)
    return "\n".join(rows) + "\n"


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
