"""Configuration: the `Service` and `Config` frozen records, service specs, value parsers.

A service spec is the original's `NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`; HOST is a name, an
IPv4 address or a bracketed IPv6 address, and `NAME=unix:/path[:PRIO[:WEIGHT[:TIMEOUT]]]` names a
unix socket. Every optional field may be left empty (`G=host:10031::2` sets only the weight).

The options that set a `Config` field, and the config file that holds them, are declared in
options.py, each with its bounds; the parsers here check them. Every value is bounded: a
number has a least and a largest value and is finite, a text has a most length and only
printable characters (`check_text`: none that could end or forge a line of the protocol or of
a log), a path fits the kernel's limit. Every error is a `ConfigError` whose text is one line
naming the bad value, prefixed with `FILE:LINE:` when it comes from a file.
"""

from __future__ import annotations

import math
import os

from hapolicy.base.frozen import factory, frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

DEFAULT_PRIO = 10
DEFAULT_WEIGHT = 1
DEFAULT_TIMEOUT = 30.0
MIN_INTERVAL = 0.1  # the shortest check interval or timeout: a check must be able to answer
MAX_SECONDS = 86400.0  # every timeout, interval and pause: at most a day
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the final NUL
MAX_PATH = 4095  # PATH_MAX holds 4096 bytes with the final NUL
MAX_PORT = 65535
MAX_PRIO = 65535  # as an MX preference
MAX_WEIGHT = 10000  # as the control socket's weight command
MAX_HOST = 253  # the longest DNS name
MAX_LISTEN = 64  # listen addresses: each is a socket in every worker
MAX_WORKERS = 1024
MAX_SPEC = 512  # a service spec: name, host and the optional fields, with room to spare
MAX_SERVICES = 1024  # of one pool
MAX_ID = 2**32 - 2  # the largest uid or gid (2**32 - 1 is -1: "no change" to chown)
_CHARACTER_NAMES = {0: "NUL", 9: "tab", 10: "LF", 13: "CR"}
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


def check_text(text: str, what: str, length: int) -> None:
    """Refuse a text longer than `length` characters, or with a character that is not
    printable (str.isprintable): a control character (NUL, tab, CR, LF, U+0085), a line or
    paragraph separator (U+2028, U+2029), a format character, an undecodable byte of the
    command line. Such a character ends or forges a line of the protocol, of the config
    file or of a log, or hides in them."""
    if len(text) > length:
        raise ConfigError(f"{what} is longer than {length} characters")
    if not text.isprintable():
        char = next(c for c in text if not c.isprintable())
        name = _CHARACTER_NAMES.get(ord(char), "")
        raise ConfigError(f"{what} {text!r} has an unprintable character (U+{ord(char):04X}"
                          f"{' ' + name if name else ''})")


def _shown(text: str, most: int = 40) -> str:
    """repr(text), cut after `most` characters: an error line stays short."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."


def _is_number_text(text: str) -> bool:
    """ASCII, no `_`: what int() and float() read beyond that (`1_000`, other scripts'
    digits) is no number a postmaster writes."""
    return text.isascii() and "_" not in text


def parse_int(text: str, what: str, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """A whole number of ASCII digits (a sign allowed), within [minimum, maximum]."""
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    if not (digits.isdigit() and _is_number_text(digits)):
        raise ConfigError(f"{what} {text!r} is not a whole number")
    value = int(stripped, 10)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} {_shown(text)} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{what} {_shown(text)} must be at most {maximum}")
    return value


def parse_interval(text: str, what: str, allow_zero: bool = False) -> float:
    """Seconds of at least MIN_INTERVAL (or 0 with allow_zero): a timer the master runs."""
    value = parse_seconds(text, what, allow_zero)
    if 0 < value < MIN_INTERVAL:
        raise ConfigError(f"{what} {text!r} must be at least {MIN_INTERVAL:g} seconds"
                          + (" (or 0)" if allow_zero else ""))
    return value


def parse_seconds(text: str, what: str, allow_zero: bool = False) -> float:
    """Seconds: more than 0 (or 0 with allow_zero), at most MAX_SECONDS."""
    try:
        if not _is_number_text(text):
            raise ValueError
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what} {text!r} must be a finite number of seconds")
    if value < 0 or (value == 0 and not allow_zero):
        limit = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"{what} {text!r} must be {limit} seconds")
    if value > MAX_SECONDS:
        raise ConfigError(f"{what} {_shown(text)} must be at most {MAX_SECONDS:g} seconds")
    return value


def parse_service(spec: str) -> Service:
    """Parse `NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]` or `NAME=unix:/path[:...]`."""
    check_text(spec, "service", MAX_SPEC)
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
        if len(host) > MAX_HOST:
            raise ConfigError(f"service {name}: host longer than {MAX_HOST} characters")
        port = parse_int(fields[0], f"service {name}: port", 1, MAX_PORT)
        optional = fields[1:]
    if len(optional) > 3:
        raise ConfigError(f"service {spec!r}: too many fields after the address")
    optional += [""] * (3 - len(optional))
    prio_text, weight_text, timeout_text = optional
    prio = (parse_int(prio_text, f"service {name}: priority", 0, MAX_PRIO) if prio_text
            else DEFAULT_PRIO)
    weight = (parse_int(weight_text, f"service {name}: weight", 1, MAX_WEIGHT) if weight_text
              else DEFAULT_WEIGHT)
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
    if len(addresses) > MAX_LISTEN:
        raise ConfigError(f"listen: more than {MAX_LISTEN} addresses")
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
    if len(host) > MAX_HOST:
        raise ConfigError(f"listen address {text!r}: host longer than {MAX_HOST} characters")
    port = parse_int(port_text, f"listen address {text!r}: port", 1)
    if port > MAX_PORT:
        raise ConfigError(f"listen address {text!r}: port must be at most {MAX_PORT}")
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
    """A regular expression searched (case-insensitive) in a service's action ('' for none),
    compiled here as the workers compile it; its length bound (options.py) keeps its nesting
    far from the recursion limit, and a pattern too deep or too large for `re` anyway is a
    one-line error too."""
    text = text.strip()
    if text:
        import re  # here: spawn mode's start pays for it only when the option is given

        from hapolicy.base.outcome import compile_fail_answer

        try:
            compile_fail_answer(text)
        except re.error as exc:
            raise ConfigError(f"fail-answer {text!r} is not a regular expression: {exc}") from None
        except (OverflowError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ConfigError(f"fail-answer {text!r} is not a usable regular expression: "
                              f"{why}") from None
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


def parse_pool_name(text: str) -> str:
    """The name of another pool (shadow), or '' for none."""
    text = text.strip()
    if text and not is_name(text):
        raise ConfigError(f"pool name {text!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return text


def parse_percent(text: str, what: str) -> float:
    """A share of requests: more than 0, at most 100 (a trailing % is allowed)."""
    try:
        if not _is_number_text(text):
            raise ValueError
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a percentage") from None
    if not 0 < value <= 100:
        raise ConfigError(f"{what} {text!r} must be more than 0 and at most 100")
    return value


def parse_hedge(text: str) -> str:
    """'' (off), seconds (`0.05`), or `pNN`: that percentile of the service's recent answer
    times (p50..p99.9); returned as written, normalized."""
    text = text.strip().lower()
    if text in ("", "off", "none", "0"):
        return ""
    if text.startswith("p"):
        try:
            value = float(text[1:]) if _is_number_text(text) else -1.0
        except ValueError:
            value = -1.0
        if not 50 <= value < 100:
            raise ConfigError(f"hedge {text!r}: a percentile is p50 to p99.9")
        return "p" + fmt_num(value)
    return fmt_num(parse_seconds(text, "hedge"))


def parse_state_file(text: str) -> str:
    """'' (the default place), `none` (no file: each spawned process keeps its own table) or
    an absolute path to a file."""
    text = text.strip()
    if text in ("", "none"):
        return text
    if not text.startswith("/") or text.endswith("/") or "\0" in text:
        raise ConfigError(f"state file {text!r}: expected an absolute path to a file, or none")
    return parse_path(text, "state file")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"{text!r} is not yes or no")


def parse_mode(text: str) -> int:
    """A file mode: octal digits, 0 to 0777."""
    digits = text.strip()
    if not digits or not set(digits) <= set("01234567"):
        raise ConfigError(f"socket mode {text!r} is not an octal mode like 0660")
    mode = int(digits, 8)
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"socket mode {text!r} is out of range (0 to 0777)")
    return mode


def nonempty(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if not text:
            raise ConfigError(f"{what} must not be empty")
        return text

    return parse


def parse_path(text: str, what: str, max_bytes: int = MAX_PATH) -> str:
    """A path ('' for none) of at most max_bytes bytes (MAX_UNIX_PATH for a unix socket)."""
    text = text.strip()
    if len(os.fsencode(text)) > max_bytes:
        raise ConfigError(f"{what} {text!r} is longer than {max_bytes} bytes")
    return text


def parse_group_id(text: str, what: str) -> str:
    """A group's name, or its number (ASCII digits, 0 to MAX_ID); '' for none."""
    text = text.strip()
    if text.isdigit() and not (text.isascii() and int(text) <= MAX_ID):
        raise ConfigError(f"{what} {text!r}: a group number is 0 to {MAX_ID}")
    return text


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
    shadow: str = ""  # a pool that gets a copy of each request answered (shadow.py)
    shadow_share: float = 100.0  # percent of the answered requests copied to the shadow
    hedge: str = ""  # "", seconds, or pNN: when to ask a second service too (hedge.py)
    hedge_max: float = 5.0  # percent of the requests that may be hedged (a token bucket)
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
    if len(services) > MAX_SERVICES:
        raise ConfigError(f"{where}more than {MAX_SERVICES} services")
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
