"""The bounds of every value, `ConfigError`, and the parsers of plain values.

Every value is bounded: a number has a least and a largest value and is finite, a text has a
most length and only printable characters (`check_text`: none that could end or forge a line
of the protocol or of a log), a path fits the kernel's limit. The parsers here read the values
that are a number, a number of seconds, a share, a switch, a mode, a path or a name; the
values with a grammar of their own (a service spec, a listen address, a balance) are
parsers.py's. Every error is a `ConfigError` whose text is one line naming the bad value
(file.py prefixes `FILE:LINE:` when it comes from a file).
"""

from __future__ import annotations

import math
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

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


def shown(text: str, most: int = 40) -> str:
    """repr(text), cut after `most` characters: an error line stays short."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."


def is_number_text(text: str) -> bool:
    """ASCII, no `_`: what int() and float() read beyond that (`1_000`, other scripts'
    digits) is no number a postmaster writes."""
    return text.isascii() and "_" not in text


def parse_int(text: str, what: str, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """A whole number of ASCII digits (a sign allowed), within [minimum, maximum]."""
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    if not (digits.isdigit() and is_number_text(digits)):
        raise ConfigError(f"{what} {text!r} is not a whole number")
    value = int(stripped, 10)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} {shown(text)} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{what} {shown(text)} must be at most {maximum}")
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
        if not is_number_text(text):
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
        raise ConfigError(f"{what} {shown(text)} must be at most {MAX_SECONDS:g} seconds")
    return value


def parse_percent(text: str, what: str) -> float:
    """A share of requests: more than 0, at most 100 (a trailing % is allowed)."""
    try:
        if not is_number_text(text):
            raise ValueError
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a percentage") from None
    if not 0 < value <= 100:
        raise ConfigError(f"{what} {text!r} must be more than 0 and at most 100")
    return value


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
