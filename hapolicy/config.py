"""Configuration: the `Service` and `Config` frozen records, service specs, value parsers.

A service spec is the original's `NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`; HOST is a name, an
IPv4 address or a bracketed IPv6 address, and `NAME=unix:/path[:PRIO[:WEIGHT[:TIMEOUT]]]` names a
unix socket. Every optional field may be left empty (`G=host:10031::2` sets only the weight).

The options that set a `Config` field, and the config file that holds them, are declared in
options.py. Every error is a `ConfigError` whose text is one line naming the bad value,
prefixed with `FILE:LINE:` when it comes from a file.
"""

from __future__ import annotations

import math
import os

from .frozen import factory, frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

DEFAULT_PRIO = 10
DEFAULT_WEIGHT = 1
DEFAULT_TIMEOUT = 30.0
MIN_INTERVAL = 0.1  # the shortest check interval or timeout: a check must be able to answer
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the final NUL
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class ConfigError(ValueError):
    """A configuration value is wrong; str() is one line for the postmaster."""


def is_name(text: str) -> bool:
    """1-64 of A-Z a-z 0-9 _ . - (a service's name, an attribute's)."""
    return 0 < len(text) <= 64 and NAME_CHARS.issuperset(text)


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


def fmt_num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def parse_int(text: str, what: str, minimum: int | None = None) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} {text!r} must be at least {minimum}")
    return value


def parse_interval(text: str, what: str, allow_zero: bool = False) -> float:
    """Seconds of at least MIN_INTERVAL (or 0 with allow_zero): a timer the master runs."""
    value = parse_seconds(text, what, allow_zero)
    if 0 < value < MIN_INTERVAL:
        raise ConfigError(f"{what} {text!r} must be at least {MIN_INTERVAL:g} seconds"
                          + (" (or 0)" if allow_zero else ""))
    return value


def parse_seconds(text: str, what: str, allow_zero: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what} {text!r} must be a finite number of seconds")
    if value < 0 or (value == 0 and not allow_zero):
        limit = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"{what} {text!r} must be {limit} seconds")
    return value


def parse_service(spec: str) -> Service:
    """Parse `NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]` or `NAME=unix:/path[:...]`."""
    if "\0" in spec:
        raise ConfigError(f"service {spec!r}: contains a NUL character")
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not rest:
        raise ConfigError(f"service {spec!r}: expected NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]")
    if not is_name(name):
        raise ConfigError(f"service {spec!r}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    host, port, path = "", 0, ""
    if rest.startswith("unix:"):
        path, _, tail = rest[5:].partition(":")
        if not path.startswith("/"):
            raise ConfigError(f"service {spec!r}: unix socket path must be absolute")
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise ConfigError(f"service {name}: unix socket path longer than {MAX_UNIX_PATH} bytes")
        optional = tail.split(":") if tail else []
    else:
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise ConfigError(f"service {spec!r}: expected [IPv6]:PORT")
            fields = tail[1:].split(":")
        else:
            fields = rest.split(":")
            host = fields.pop(0)
        if not host or not fields or not fields[0]:
            raise ConfigError(f"service {spec!r}: expected NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]")
        port = parse_int(fields[0], f"service {name}: port", 1)
        if port > 65535:
            raise ConfigError(f"service {name}: port {fields[0]!r} must be at most 65535")
        optional = fields[1:]
    if len(optional) > 3:
        raise ConfigError(f"service {spec!r}: too many fields after the address")
    optional += [""] * (3 - len(optional))
    prio_text, weight_text, timeout_text = optional
    prio = parse_int(prio_text, f"service {name}: priority", 0) if prio_text else DEFAULT_PRIO
    weight = parse_int(weight_text, f"service {name}: weight", 1) if weight_text else DEFAULT_WEIGHT
    timeout = (
        parse_seconds(timeout_text, f"service {name}: timeout") if timeout_text else DEFAULT_TIMEOUT
    )
    return Service(name, host, port, prio, weight, timeout, path)


def parse_listen(text: str) -> str:
    """Validate one or more of `HOST:PORT`, `[IPv6]:PORT` or `unix:/path`, separated by blanks
    or commas ('' for none); returns them joined by one space, each once."""
    addresses: list[str] = []
    for address in text.replace(",", " ").split():
        split_listen(address)
        if address not in addresses:
            addresses.append(address)
    return " ".join(addresses)


def parse_metrics_listen(text: str) -> str:
    """--metrics-listen: one `HOST:PORT` or `[IPv6]:PORT` ('' for none)."""
    text = text.strip()
    if not text:
        return ""
    if text.startswith("unix:") or len(text.replace(",", " ").split()) > 1:
        raise ConfigError(f"metrics listen address {text!r}: expected one HOST:PORT or "
                          "[IPv6]:PORT")
    split_listen(text)
    return text


def split_listen(text: str) -> tuple[str, int, str]:
    """(host, port, path) of a listen address."""
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            raise ConfigError(f"listen address {text!r}: unix socket path must be absolute")
        if len(os.fsencode(text[5:])) > MAX_UNIX_PATH:
            raise ConfigError(f"listen address {text!r}: longer than {MAX_UNIX_PATH} bytes")
        return "", 0, text[5:]
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text:
        raise ConfigError(f"listen address {text!r}: expected HOST:PORT, [IPv6]:PORT or unix:/path")
    port = parse_int(port_text, f"listen address {text!r}: port", 1)
    if port > 65535:
        raise ConfigError(f"listen address {text!r}: port must be at most 65535")
    return host, port, ""


def parse_balance(text: str) -> str:
    text = text.strip()
    if text == "weighted":
        return text
    if text.startswith("hash:"):
        for attr in text[5:].split(","):
            name, slash, bits = attr.partition("/")
            if not is_name(name) or (slash and not _is_prefix(bits)):
                break
        else:
            return text
    raise ConfigError(f"balance {text!r}: expected 'weighted' or 'hash:ATTR[/N][,ATTR...]' "
                      "(N: a prefix length, 0-32 for IPv4, 33-128 for IPv6)")


def _is_prefix(bits: str) -> bool:
    return bits.isascii() and bits.isdigit() and len(bits) <= 3 and int(bits) <= 128


def parse_fail_answer(text: str) -> str:
    """A regular expression searched (case-insensitive) in a service's action ('' for none)."""
    text = text.strip()
    if text:
        import re  # here: spawn mode's start pays for it only when the option is given

        try:
            re.compile(text)
        except re.error as exc:
            raise ConfigError(f"fail-answer {text!r} is not a regular expression: {exc}") from None
    return text


def parse_context(text: str) -> str:
    """A `policy_context` value, or `*` for requests of no known context."""
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"policy context {text!r} must be one word, or *")
    return text


def parse_all_down(text: str) -> str:
    text = text.strip()
    if text not in ("default", "try"):
        raise ConfigError(f"all-down {text!r}: expected 'default' or 'try'")
    return text


def parse_state_file(text: str) -> str:
    """'' (the default place), `none` (no file: each spawned process keeps its own table) or
    an absolute path to a file."""
    text = text.strip()
    if text in ("", "none"):
        return text
    if not text.startswith("/") or text.endswith("/") or "\0" in text:
        raise ConfigError(f"state file {text!r}: expected an absolute path to a file, or none")
    return text


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"{text!r} is not yes or no")


def parse_mode(text: str) -> int:
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ConfigError(f"socket mode {text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"socket mode {text!r} is out of range")
    return mode


def nonempty(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if not text or "\n" in text:
            raise ConfigError(f"{what} must not be empty")
        return text

    return parse


@frozen
class Config:
    """Everything one hapolicy process needs; built once, never changed (HUP builds a new one)."""

    services: tuple[Service, ...] = ()
    default_action: str = "dunno"
    log_requests: bool = False
    verbose: bool = False
    log_stderr: bool = False
    syslog_socket: str = "/dev/log"
    total_timeout: float = 60.0
    connect_timeout: float = 5.0
    # daemon mode
    listen: str = ""
    workers: int = factory(lambda: os.cpu_count() or 1)
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
    # health and balancing
    cooldown: float = 2.0
    cooldown_max: float = 60.0
    state_file: str = ""  # spawn mode: "" the default place (statefile.py), "none" no file
    all_down: str = "default"  # or "try": try services marked down, in order, when all are
    check_interval: float = 5.0
    check_down_interval: float = 1.0
    check_timeout: float = 5.0
    check_rise: int = 2
    check_fall: int = 2
    check_request: str = (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=SMTP\n"
        "client_address=127.0.0.1\nclient_name=localhost\nhelo_name=localhost\n"
        "sender=hapolicy-check@localhost\nrecipient=postmaster@localhost\n"
    )
    balance: str = "weighted"
    sticky_instance: bool = True
    fail_answer: str = ""  # a regular expression: an action it matches is a failure
    config_file: str = ""
    # pools: a Config per pool (a file's [pool NAME] sections); none: this Config is the one pool
    name: str = "default"
    policy_context: str = ""  # the policy_context value this pool serves ("*": any other)
    log_prefix: str = ""  # `pool NAME: ` before a pool's log lines, when it is a file's section
    pool_configs: tuple = ()

    @property
    def pools(self) -> tuple[Config, ...]:
        """Every pool, in the order of the file; a Config without sections is its own pool."""
        return self.pool_configs or (self,)

    @property
    def addresses(self) -> list[str]:
        """Every listen address of every pool, each once, in order."""
        seen: dict[str, None] = {}
        for pool in self.pools:
            seen.update(dict.fromkeys(pool.listen.split()))
        return list(seen)

    def pools_on(self, address: str) -> list[Config]:
        """The pools that listen on one address."""
        return [p for p in self.pools if address in p.listen.split()]


def build_config(settings: dict[str, Any], services: list[Service], where: str = "") -> Config:
    """Check the whole and make the frozen Config (`where`: the pool named in errors)."""
    if not services:
        raise ConfigError(f"{where}no service given: use "
                          + ("service = NAME=HOST:PORT[...]" if where else
                             "-s NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]"))
    names: set[str] = set()
    for service in services:
        if service.name in names:
            raise ConfigError(f"service name {service.name!r} is given twice")
        names.add(service.name)
    config = Config(services=tuple(services), **settings)
    if config.cooldown_max < config.cooldown:
        raise ConfigError(f"{where}cooldown-max {config.cooldown_max} is below cooldown "
                          f"{config.cooldown}")
    return config
