"""How an option is declared: `Option`, the `Value` that reads it within bounds, the kinds of
values, and what the docs say of one option (its flags, default and bounds).

Every option's value is read through a `Value`: at most its length in characters, printable
characters only (values.check_text), then its parser, which checks the rest of its bounds (a
number's least and largest value, a path's bytes, a pattern that compiles); the `bounds` text
says them in --help, the man pages and docs/configuration.md.

An option's scope says whom its setting belongs to, and so which record holds it
(records.py): the process (DAEMON: `DaemonConfig`), the services it balances (POOL:
`PoolConfig`; in a file with `[pool NAME]` sections, set before the first section it is
every pool's default), a pool alone (SECTION: `PoolConfig`, not a default for every pool),
or a command-line-only action (COMMAND: no record). Its default is that record's field's.
"""

from __future__ import annotations

from hapolicy.base import frozen
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.config.values import (
    MAX_PATH,
    MAX_SECONDS,
    MIN_INTERVAL,
    check_text,
    fmt_num,
    parse_bool,
    parse_int,
    parse_interval,
    parse_path,
    parse_percent,
    parse_seconds,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

DAEMON, POOL, SECTION, COMMAND = "daemon", "pool", "section", "command"
NUMBER_LENGTH = 32  # the text of any number


class Value:
    """How an option's text becomes its value, within bounds: at most `length` characters,
    each one printable (values.check_text), then `parse`, which checks the rest and returns
    the value. `bounds` says them as the docs do ('' for a switch or a choice: the tag says
    it); a number's `low` and `high` are its least and largest value."""

    __slots__ = ("what", "parse", "length", "bounds", "low", "high")

    def __init__(self, what: str, parse: Callable[[str], Any], length: int, bounds: str,
                 low: float | None = None, high: float | None = None) -> None:
        self.what = what
        self.parse = parse
        self.length = length
        self.bounds = bounds
        self.low = low
        self.high = high

    def __call__(self, text: str) -> Any:
        check_text(text, self.what, self.length)
        return self.parse(text)


@frozen.frozen
class Option:
    """One option. `key` is its field in the record of its scope ("" for the command-line-only
    actions)."""

    key: str
    flags: tuple[str, ...]
    help: str
    parse: Value  # reads the value within its bounds
    metavar: str = ""
    scope: str = POOL
    choices: tuple[str, ...] = ()
    flag: bool = False  # no value on the command line; yes/no in the config file
    default_text: str = ""  # the default as the docs say it, where the value does not

    @property
    def name(self) -> str:
        """The long name without dashes: the config file's key."""
        return self.flags[-1][2:]


def seconds(what: str, allow_zero: bool = False) -> Value:
    return Value(what, lambda value: parse_seconds(value, what, allow_zero), NUMBER_LENGTH,
                 f"{'0 to' if allow_zero else 'more than 0, at most'} {MAX_SECONDS:g}",
                 0.0, MAX_SECONDS)


def interval(what: str, allow_zero: bool = False) -> Value:
    return Value(what, lambda value: parse_interval(value, what, allow_zero), NUMBER_LENGTH,
                 f"{'0, or ' if allow_zero else ''}{MIN_INTERVAL:g} to {MAX_SECONDS:g}",
                 0.0 if allow_zero else MIN_INTERVAL, MAX_SECONDS)


def whole(what: str, low: int, high: int) -> Value:
    return Value(what, lambda value: parse_int(value, what, low, high), NUMBER_LENGTH,
                 f"{low} to {high}", low, high)


def percent(what: str) -> Value:
    return Value(what, lambda value: parse_percent(value, what), NUMBER_LENGTH,
                 "more than 0, at most 100", 0.0, 100.0)


def text(what: str, length: int, parse: Callable[[str], Any] = str.strip,
         bounds: str = "") -> Value:
    return Value(what, parse, length, bounds or f"at most {length} characters")


def path(what: str, max_bytes: int = MAX_PATH,
         parse: Callable[[str], Any] | None = None) -> Value:
    return Value(what, parse or (lambda value: parse_path(value, what, max_bytes)), max_bytes,
                 f"at most {max_bytes} bytes")


YES_NO = Value("a switch", parse_bool, 5, "")


def record_of(option: Option) -> type:
    """The record that holds the option's setting (see the module doc)."""
    return DaemonConfig if option.scope == DAEMON else PoolConfig


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
    """The default as the docs say it: the record's field's, unless default_text says it."""
    if option.default_text or not option.key:
        return option.default_text
    value = frozen.default_of(record_of(option), option.key)
    if option.flag:
        return "on" if value else "off"
    return format_value(option, value)


def bounds_of(option: Option) -> str:
    """The bounds of the option's value as the docs say them ('' for a switch or a choice)."""
    return option.parse.bounds


def flags_text(option: Option) -> str:
    """`-d, --default ACTION` as the option table of docs/configuration.md writes it."""
    flags = ", ".join(option.flags)
    if option.choices:
        return f"{flags} {'/'.join(option.choices)}"
    return f"{flags} {option.metavar}" if option.metavar else flags
