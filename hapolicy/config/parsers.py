"""The parsers of the values with a grammar of their own: a service spec, listen addresses,
a balance, a hedge, a fail-answer pattern, a check request, a pool's context and shadow.

A service spec is the original's `NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`; HOST is a name, an
IPv4 address or a bracketed IPv6 address, and `NAME=unix:/path[:PRIO[:WEIGHT[:TIMEOUT]]]` names a
unix socket. Every optional field may be left empty (`G=host:10031::2` sets only the weight).

Each parser takes the text an option's `Value` let through (at most its length, printable
only: option.py) and checks the rest of the value's bounds (values.py), raising a one-line
`ConfigError` naming the bad value.
"""

from __future__ import annotations

import os

from hapolicy.config.records import DEFAULT_PRIO, DEFAULT_TIMEOUT, DEFAULT_WEIGHT, Service
from hapolicy.config.values import (
    MAX_HOST,
    MAX_LISTEN,
    MAX_PORT,
    MAX_PRIO,
    MAX_SPEC,
    MAX_UNIX_PATH,
    MAX_WEIGHT,
    ConfigError,
    check_text,
    fmt_num,
    is_name,
    is_number_text,
    parse_int,
    parse_path,
    parse_seconds,
)

_SPEC = "expected NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]"


def parse_service(spec: str) -> Service:
    """Parse `NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]` or `NAME=unix:/path[:...]`."""
    check_text(spec, "service", MAX_SPEC)
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not rest:
        raise ConfigError(f"service {spec!r}: {_SPEC}")
    if not is_name(name):
        raise ConfigError(f"service {spec!r}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if rest.startswith("unix:"):
        host, port, path, optional = _unix_address(spec, name, rest[5:])
    else:
        host, port, path, optional = _inet_address(spec, name, rest)
    if len(optional) > 3:
        raise ConfigError(f"service {spec!r}: too many fields after the address")
    prio_text, weight_text, timeout_text = optional + [""] * (3 - len(optional))
    prio = (parse_int(prio_text, f"service {name}: priority", 0, MAX_PRIO) if prio_text
            else DEFAULT_PRIO)
    weight = (parse_int(weight_text, f"service {name}: weight", 1, MAX_WEIGHT) if weight_text
              else DEFAULT_WEIGHT)
    timeout = (
        parse_seconds(timeout_text, f"service {name}: timeout") if timeout_text else DEFAULT_TIMEOUT
    )
    return Service(name, host, port, prio, weight, timeout, path)


def _unix_address(spec: str, name: str, rest: str) -> tuple[str, int, str, list[str]]:
    """('', 0, path, the optional fields) of `/path[:PRIO...]`."""
    path, _, tail = rest.partition(":")
    if not path.startswith("/"):
        raise ConfigError(f"service {spec!r}: unix socket path must be absolute")
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(f"service {name}: unix socket path longer than {MAX_UNIX_PATH} bytes")
    return "", 0, path, tail.split(":") if tail else []


def _inet_address(spec: str, name: str, rest: str) -> tuple[str, int, str, list[str]]:
    """(host, port, '', the optional fields) of `HOST:PORT[:PRIO...]` or `[IPv6]:PORT...`."""
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise ConfigError(f"service {spec!r}: expected [IPv6]:PORT")
        fields = tail[1:].split(":")
    else:
        fields = rest.split(":")
        host = fields.pop(0)
    if not host or not fields or not fields[0]:
        raise ConfigError(f"service {spec!r}: {_SPEC}")
    if len(host) > MAX_HOST:
        raise ConfigError(f"service {name}: host longer than {MAX_HOST} characters")
    port = parse_int(fields[0], f"service {name}: port", 1, MAX_PORT)
    return host, port, "", fields[1:]


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
    if text in ("weighted", "least-latency"):
        return text
    if text.startswith("hash:"):
        for attr in text[5:].split(","):
            name, slash, bits = attr.partition("/")
            if not is_name(name) or (slash and not _is_prefix(bits)):
                break
        else:
            return text
    if "least-latency" in text:
        raise ConfigError(f"balance {text!r}: least-latency does not hash (a key must stay on "
                          "its service, whatever its answer time): 'least-latency' alone, or "
                          "'hash:ATTR[/N][,ATTR...]'")
    raise ConfigError(f"balance {text!r}: expected 'weighted', 'least-latency' or "
                      "'hash:ATTR[/N][,ATTR...]' (N: a prefix length, 0-32 for IPv4, 33-128 "
                      "for IPv6)")


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


def parse_check_request(text: str) -> str:
    """The check's `name=value` attributes, separated by blanks; one a line, as sent."""
    attrs = [a for a in text.split() if "=" in a]
    if not any(a.startswith("request=") for a in attrs):
        raise ConfigError(f"check request {text!r} has no request= attribute "
                          "(e.g. request=smtpd_access_policy)")
    for attr in attrs:
        name = attr.partition("=")[0]
        if not is_name(name):
            raise ConfigError(f"check request: attribute name {name!r} must be 1-64 of A-Z a-z "
                              "0-9 _ . -")
    return "".join(a + "\n" for a in attrs)


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


def parse_hedge(text: str) -> str:
    """'' (off), seconds (`0.05`), or `pNN`: that percentile of the service's recent answer
    times (p50..p99.9); returned as written, normalized."""
    text = text.strip().lower()
    if text in ("", "off", "none", "0"):
        return ""
    if text.startswith("p"):
        try:
            value = float(text[1:]) if is_number_text(text) else -1.0
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
