"""The configuration's frozen records: a `Service`, a pool's `PoolConfig`, the `DaemonConfig`.

Each option of the table (options.py) is a field of exactly one record, the one its scope
names: the process's settings (scope DAEMON: workers, users, logging, syslog, the state file)
are `DaemonConfig`'s, the settings of the services one balances (scope POOL and SECTION:
timeouts, health, balancing, listen) are `PoolConfig`'s. A field's default here is the
option's default: --help, the man pages and docs/configuration.md read it from here
(option.default_of). A `DaemonConfig` holds its pools; a dispatcher, a checker and health
take a `PoolConfig` (a selector its services), the master, the workers and the monitor the
`DaemonConfig`.

Spawn mode is the same `DaemonConfig`, of one pool that does not listen: the command line
and a config file make one record whatever the mode (the mode is whether a pool listens), so
they have one builder (file.assemble) and one --check-config; spawn mode reads its pool and
the few settings of the process it needs (logging, syslog, the state file) and leaves the
rest (workers, users, sockets). A record of its own for spawn mode would declare again the
fields it shares with the daemon.

Records are built once and never changed: a reload (SIGHUP) builds new ones.
"""

from __future__ import annotations

import os

from hapolicy.base.frozen import factory, frozen
from hapolicy.config.values import MAX_WORKERS, fmt_num

DEFAULT_PRIO = 10
DEFAULT_WEIGHT = 1
DEFAULT_TIMEOUT = 30.0
CHECK_REQUEST = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=SMTP\n"
    "client_address=127.0.0.1\nclient_name=localhost\nhelo_name=localhost\n"
    "sender=hapolicy-check@localhost\nrecipient=postmaster@localhost\n"
)


@frozen
class Service:
    """One backend policy service."""

    name: str
    host: str  # host name or address; "" for a unix socket
    port: int  # 0 for a unix socket
    prio: int = DEFAULT_PRIO
    weight: int = DEFAULT_WEIGHT
    timeout: float = DEFAULT_TIMEOUT
    path: str = ""  # unix socket path

    @property
    def address(self) -> str:
        """The address as a postmaster writes it: `10.0.0.1:10031`, `[::1]:10031`, `unix:/p`."""
        if self.path:
            return "unix:" + self.path
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def spec(self) -> str:
        return f"{self.name}={self.address}:{self.prio}:{self.weight}:{fmt_num(self.timeout)}"


@frozen
class PoolConfig:
    """One pool: its services and the settings of scope POOL and SECTION (options.py)."""

    services: tuple[Service, ...] = ()
    name: str = "default"
    from_section: bool = False  # a file's `[pool NAME]` section: its log lines name it
    default_action: str = "dunno"
    total_timeout: float = 60.0
    connect_timeout: float = 5.0
    listen: str = ""  # "": spawn mode
    cooldown: float = 2.0
    cooldown_max: float = 60.0
    check_interval: float = 5.0
    check_down_interval: float = 1.0
    check_timeout: float = 5.0
    check_rise: int = 2
    check_fall: int = 2
    check_request: str = CHECK_REQUEST
    all_down: str = "default"  # or "try": try services marked down, in order, when all are
    balance: str = "weighted"
    sticky_instance: bool = True
    slowstart: float = 0.0  # seconds over which a service back in the rotation gets its share
    max_inflight: int = 0  # a service's most requests in flight over all workers (0: no limit)
    queue_timeout: float = 5.0  # the longest wait for a free slot of a service at its limit
    fail_answer: str = ""  # a regular expression: an action it matches is a failure
    policy_context: str = ""  # the policy_context value this pool serves ("*": any other)
    shadow: str = ""  # a pool that gets a copy of each request answered (shadow.py)
    shadow_share: float = 100.0  # percent of the answered requests copied to the shadow
    hedge: str = ""  # "", seconds, or pNN: when to ask a second service too (hedge.py)
    hedge_max: float = 5.0  # percent of the requests that may be hedged (a token bucket)
    cache: float = 0.0  # seconds a good answer is kept (request/cache.py); 0: no cache
    cache_key: str = ""  # the attributes it is kept under: ATTR[/N],... as hash: takes them
    cache_stale: float = 0.0  # seconds a kept answer stands in for the default; 0: never
    cache_actions: str = ""  # a regular expression: the actions kept ("": cachecheck's default)
    cache_size: int = 10000  # entries kept per pool, oldest first out
    cache_force: bool = False  # cache a pool that may keep state (hash, sticky, shadow)

    @property
    def log_prefix(self) -> str:
        """`pool NAME: ` before the pool's log lines, when it is a file's section."""
        return f"pool {self.name}: " if self.from_section else ""


@frozen
class DaemonConfig:
    """The process's settings (scope DAEMON, options.py) and its pools, in the file's order."""

    pools: tuple[PoolConfig, ...] = ()
    config_file: str = ""  # the absolute path of the file read ("" for none)
    log_requests: bool = False
    verbose: bool = False
    log_stderr: bool = False
    syslog_socket: str = "/dev/log"
    workers: int = factory(lambda: min(os.cpu_count() or 1, MAX_WORKERS))
    max_use: int = 100000
    max_idle: float = 600.0
    retire_timeout: float = 1200.0
    drain_timeout: float = 30.0
    summary_interval: float = 0.0  # the master's summary line every S seconds (0: none)
    pidfile: str = ""
    control: str = ""  # the master's control socket (control.py); "" none
    control_group: str = ""  # a group let in to the control socket too
    metrics_listen: str = ""  # the monitor serves GET /metrics here (metrics.py); "" none
    daemonize: bool = False
    user: str = ""
    group: str = ""
    socket_mode: int = 0o666
    backlog: int = 1024
    state_file: str = ""  # spawn mode: "" the default place (statefile.py), "none" no file

    @property
    def sections(self) -> bool:
        """Whether the pools are a file's `[pool NAME]` sections (else one pool, `default`)."""
        return any(pool.from_section for pool in self.pools)

    @property
    def addresses(self) -> list[str]:
        """Every listen address of every pool, each once, in order ([]: spawn mode)."""
        seen: dict[str, None] = {}
        for pool in self.pools:
            seen.update(dict.fromkeys(pool.listen.split()))
        return list(seen)

    def pools_on(self, address: str) -> list[PoolConfig]:
        """The pools that listen on one address."""
        return [p for p in self.pools if address in p.listen.split()]
