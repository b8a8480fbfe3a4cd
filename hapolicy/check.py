"""`hapolicyctl check`: a check for Nagios, Icinga and every Monitoring Plugins host.

    hapolicyctl [--control PATH | -c CONFIG] check [-w RANGE] [-c RANGE] [--pool NAME]
                [--interval SECONDS] [-t SECONDS]

It asks the daemon's control socket for `pools` (pooltotals.py) twice, --interval apart, and
prints one line as the Monitoring Plugins development guidelines say, text then perfdata:

    HAPOLICY OK - 2 pools: 4/4 services up, 0.00 default answers/s, 51.20 requests/s, p99 1.23 ms
    | services_up=4;;;0;4 default_answers_per_s=0.00;1;5;0 requests_per_s=51.20;;;0
    p99_latency=1.23ms;;;0   (one line)

and exits with its state (STATES: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN). RULES say which
state; the rates are the counters' differences over the time between the two answers, the p99
that of the good answers between them (from the services' latency histograms: `U` without
answers, or above the last bucket). Every error, the options' included, is one UNKNOWN line:
a check must never fail without telling its host why.
"""

from __future__ import annotations

import time

from hapolicy.base.ranges import RangeError, parse_range
from hapolicy.monitor.commands import milliseconds
from hapolicy.monitor.pooltotals import LATENCY_COLUMNS, POOL_COLUMNS
from hapolicy.tables.stats import quantile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from hapolicy.base.ranges import Range

    Reading = dict[str, dict[str, int]]  # pool: column: value

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
INTERVAL, MIN_INTERVAL, MAX_INTERVAL = 1.0, 0.1, 10.0
TIMEOUT, MIN_TIMEOUT, MAX_TIMEOUT = 10.0, 1.0, 60.0
#: check's options, as hapolicyctl --help and hapolicyctl(8) say them (and bash completion
#: completes them: completion.py).
OPTIONS = (
    ("-w, --warning RANGE", "WARNING when the default answers per second are outside RANGE "
     "(inside, for `@START:END`)"),
    ("-c, --critical RANGE", "CRITICAL likewise (after the command, -c is this option)"),
    ("--pool NAME", "check this pool only (default: every pool)"),
    ("--interval SECONDS", (f"the time between the two readings that make the rates "
                            f"({MIN_INTERVAL:g} to {MAX_INTERVAL:g}; default {INTERVAL:g})")),
    ("-t, --timeout SECONDS", (f"longest wait for each answer of the daemon ({MIN_TIMEOUT:g} to "
                               f"{MAX_TIMEOUT:g}; default {TIMEOUT:g})")),
)
#: Which state, worst first (a pool: each pool checked).
RULES = (
    ("CRITICAL", "a pool has no service up (down by its health, or disabled: it answers "
     "every request with its default action), or the default answers per second are outside "
     "-c's range"),
    ("WARNING", "a service that is not disabled is down, or the default answers per second "
     "are outside -w's range"),
    ("OK", "otherwise (a disabled service is the operator's choice and no warning; a drained "
     "one is up)"),
    ("UNKNOWN", "the control socket cannot be reached or does not answer in time, its answer "
     "is not the `pools` table, there is no such pool, the counters went back between the "
     "readings (a restart), or a wrong option"),
)
#: What hapolicyctl(8) says of it, before OPTIONS and RULES.
TEXT = ("`hapolicyctl check` is a check for Nagios, Icinga and every host of the Monitoring "
        "Plugins: it reads the control command `pools` twice, --interval apart, and prints one "
        "line as the plugins' guidelines say, `HAPOLICY STATE - text | perfdata`, then exits "
        "with the state: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The perfdata are services_up "
        "(max: the services), default_answers_per_s (with -w and -c), requests_per_s and "
        "p99_latency (of the good answers between the readings; U without any). A RANGE is "
        "the plugins': `10` alerts outside 0 to 10, `10:` below 10, `~:10` above 10, `10:20` "
        "outside 10 to 20, `@10:20` inside 10 to 20, ends included. Without -w and -c only "
        "the services' states count.")
EXAMPLE = ("$ hapolicyctl check --pool grey -w 1 -c 5\n"
           "HAPOLICY WARNING - pool grey: 1 of 2 services down; pool grey: 1/2 services up, 0.00 "
           "default answers/s, 48.75 requests/s, p99 0.99 ms | services_up=1;;;0;2 "
           "default_answers_per_s=0.00;1;5;0 requests_per_s=48.75;;;0 p99_latency=0.99ms;;;0")
COUNTERS = ("requests", "answers", "defaults", *LATENCY_COLUMNS)


class CheckError(Exception):
    """What makes the check UNKNOWN, in one line."""


class Settings:
    __slots__ = ("warning", "critical", "pool", "interval", "timeout")

    def __init__(self) -> None:
        self.warning: Range | None = None
        self.critical: Range | None = None
        self.pool = ""
        self.interval = INTERVAL
        self.timeout = TIMEOUT


def seconds(text: str, flag: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not low <= value <= high:  # also nan
        raise CheckError(f"{flag} {text[:20]!r}: expected seconds from {low:g} to {high:g}")
    return value


def parse(args: Sequence[str]) -> Settings:
    """Settings from check's arguments; CheckError when they are wrong."""
    settings = Settings()
    words = list(args)
    while words:
        flag, eq, value = words.pop(0).partition("=")
        if not eq and flag in ("-w", "--warning", "-c", "--critical", "--pool", "--interval",
                               "-t", "--timeout"):
            if not words:
                raise CheckError(f"{flag} needs a value")
            value = words.pop(0)
        elif not eq or not flag.startswith("--"):
            raise CheckError(f"unknown option {flag[:40]!r}; see hapolicyctl --help")
        try:
            if flag in ("-w", "--warning"):
                settings.warning = parse_range(value)
            elif flag in ("-c", "--critical"):
                settings.critical = parse_range(value)
            elif flag == "--pool":
                settings.pool = value
            elif flag == "--interval":
                settings.interval = seconds(value, flag, MIN_INTERVAL, MAX_INTERVAL)
            elif flag in ("-t", "--timeout"):
                settings.timeout = seconds(value, flag, MIN_TIMEOUT, MAX_TIMEOUT)
            else:
                raise CheckError(f"unknown option {flag[:40]!r}; see hapolicyctl --help")
        except RangeError as exc:
            raise CheckError(f"{flag}: {exc}") from None
    return settings


def read(text: str) -> Reading:
    """The `pools` answer as {pool: {column: value}}; CheckError when it is not that table."""
    lines = text.splitlines()
    if not lines:
        raise CheckError("the daemon sent no answer")
    if lines[0].startswith("error:"):
        raise CheckError(f"the daemon answered {lines[0][:100]!r}")
    header = lines[0][2:].split(",") if lines[0].startswith("# ") else []
    if header[:len(POOL_COLUMNS)] != list(POOL_COLUMNS) or len(lines) < 2:
        raise CheckError(f"the answer is not the pools table: {lines[0][:60]!r}")
    reading = {}
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) != len(header) or not all(cell.isdigit() and cell.isascii()
                                                for cell in cells[1:]):
            raise CheckError(f"the answer is not the pools table: {line[:60]!r}")
        reading[cells[0]] = {column: int(cell) for column, cell in zip(header[1:], cells[1:])}
    return reading


def measure(settings: Settings, path: str,
            ask: Callable[[str, str, float], str]) -> tuple[Reading, Reading, float]:
    """Two readings of `pools`, --interval apart, and the seconds between their answers."""
    first = read(ask(path, "pools", settings.timeout))
    start = time.monotonic()
    time.sleep(settings.interval)
    second = read(ask(path, "pools", settings.timeout))
    return first, second, time.monotonic() - start


def differences(first: Reading, second: Reading, names: Sequence[str]) -> dict[str, int]:
    """The counters' increase between the readings, summed over the pools `names`."""
    total = dict.fromkeys(COUNTERS, 0)
    for name in names:
        if name not in first:
            raise CheckError(f"pool {name!r} came between the readings (a reload)")
        for column in COUNTERS:
            step = second[name][column] - first[name][column]
            if step < 0:
                raise CheckError(f"pool {name!r}: its counters went back between the readings "
                                 "(a restart)")
            total[column] += step
    return total


def verdict(settings: Settings, first: Reading, second: Reading,
            elapsed: float) -> tuple[int, str]:
    """The state and the line (without the `HAPOLICY STATE - ` prefix)."""
    if settings.pool and settings.pool not in second:
        raise CheckError(f"no pool {settings.pool[:60]!r} (pools: {', '.join(second)[:200]})")
    names = [settings.pool] if settings.pool else list(second)
    steps = differences(first, second, names)
    problems = []
    for name in names:
        row = second[name]
        if not row["up"]:
            problems.append((CRITICAL, f"pool {name}: no service up"))
        elif row["down"]:
            problems.append((WARNING, f"pool {name}: {row['down']} of {row['services']} "
                                      f"services down"))
    defaults = steps["defaults"] / elapsed
    for state, limit, word in ((CRITICAL, settings.critical, "critical"),
                               (WARNING, settings.warning, "warning")):
        if limit is not None and limit.alerts(defaults):
            problems.append((state, f"{defaults:.2f} default answers/s ({word}: {limit.text})"))
            break
    problems.sort(key=lambda problem: -problem[0])
    state = problems[0][0] if problems else OK
    text = "; ".join(what for _, what in problems)
    return state, (text + "; " if text else "") + summary(settings, second, names, steps,
                                                           elapsed)


def summary(settings: Settings, second: Reading, names: Sequence[str], steps: dict[str, int],
            elapsed: float) -> str:
    """What the check saw, then ` | ` and the perfdata."""
    up = sum(second[name]["up"] for name in names)
    services = sum(second[name]["services"] for name in names)
    disabled = sum(second[name]["disabled"] for name in names)
    defaults, requests = steps["defaults"] / elapsed, steps["requests"] / elapsed
    p99 = quantile([steps[column] for column in LATENCY_COLUMNS], 0.99)
    p99_text = milliseconds(p99) if p99 is not None and p99 != float("inf") else ""
    where = (f"pool {names[0]}" if settings.pool
             else f"{len(names)} pool{'s' if len(names) > 1 else ''}")
    seen = (f"{where}: {up}/{services} services up"
            + (f" ({disabled} disabled)" if disabled else "")
            + f", {defaults:.2f} default answers/s, {requests:.2f} requests/s, p99 "
            + (f"{p99_text} ms" if p99_text else "- (no answer)" if p99 is None else ">10000 ms"))
    limits = ";".join(r.text if r else "" for r in (settings.warning, settings.critical))
    perfdata = (f"services_up={up};;;0;{services} default_answers_per_s={defaults:.2f};"
                f"{limits};0 requests_per_s={requests:.2f};;;0 p99_latency="
                + (f"{p99_text}ms;;;0" if p99_text else "U"))
    return f"{seen} | {perfdata}"


def run(path: str, args: Sequence[str], ask: Callable[[str, str, float], str]) -> int:
    """Print the check's line, return its state (the exit status)."""
    try:
        settings = parse(args)
        first, second, elapsed = measure(settings, path, ask)
        state, text = verdict(settings, first, second, elapsed)
    except CheckError as exc:
        state, text = UNKNOWN, str(exc)
    except OSError as exc:
        state, text = UNKNOWN, f"{path}: {exc.strerror or exc}"
    print(f"HAPOLICY {STATES[state]} - {text}")
    return state
