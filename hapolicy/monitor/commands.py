"""The control socket's commands (control.py), answered from the shared tables by the monitor.

COMMANDS lists them, with what each does: `help` prints that list, the man page is made from it,
and a test holds the table of docs/operating.md to it. state is the service's health (up or
down); admin is its admin state, `enabled`, `drain` or `disabled`, and weight its effective
weight (the operator's, else the configured one). The three are kept in the service's slot of
the pool's health table (layout.py), so every worker obeys them at once, a reload keeps them for
a service that stays (same name and address; a reload that changes the configured weight resets
the operator's) and the master saves them in --state-file so that a restart keeps them too
(adminstate.py). A daemon without pool sections has one pool, `default`. Each answer ends in a
newline; an error is one line that starts with `error:`.

p50_ms and p99_ms are the median and 99th percentile of a service's good answers' latency in
milliseconds, from its histogram of fixed buckets (stats.py; interpolated inside the bucket;
`-` in status and empty in csv without answers, `>10000` and `inf` above the last bucket);
last_change is the seconds since it last went down or came back (or since its table was made:
the start, or the reload that added it), shown as `4m05s` by status; down_s is the seconds it
has been down in all (checks and live failures alike; not the time it was disabled while up).
state is up, or down from a failure until it answered again (a check, or without checks a
probe after its cool-down).

ewma_ms is a least-latency pool's peak-EWMA answer time of the service (load.py; empty in
other pools, and before its first answer); in_flight and queued are its requests waiting for
its answer and for a free slot (max-inflight), over all workers, now; turned_away the requests
its max-inflight sent elsewhere or let wait in vain; queued_out, the pool's, its default answers
after such a wait.
"""

from __future__ import annotations

import time

from hapolicy.config.values import (
    MAX_WEIGHT,  # the weight command's bound is a configured weight's
)
from hapolicy.monitor import cachecounts
from hapolicy.monitor.pooltotals import pools_answer
from hapolicy.tables.health import peers, whole
from hapolicy.tables.layout import DISABLED, DRAINING, ENABLED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.workertable import WorkerTable

COLUMNS = ("pool", "service", "address", "state", "admin", "weight", "answers", "failures",
           "p50_ms", "p99_ms", "last_change", "down_s", "hedged", "hedge_won", "shadow_agree",
           "shadow_disagree", "shadow_failed", "shadow_dropped", "internal_errors", "ewma_ms",
           "in_flight", "queued", "turned_away", "queued_out", *cachecounts.COLUMNS)
COMMANDS = (
    ("status", ("a table, one line per service: the columns of csv except down_s, except "
                "the hedge and shadow columns when no pool hedges or has a shadow, the load "
                "columns when no pool has least-latency or max-inflight, and internal_errors "
                "while it is 0 in every pool")),
    ("csv", ("a `#` header line that names the columns, then one row per service, "
             "comma-separated (HAProxy `show stat` style): " + ", ".join(COLUMNS) + ". New "
             "columns are only ever appended; the hedge, shadow, internal_errors and "
             "queued_out columns are the pool's, on each of its rows (internal_errors: requests "
             "answered with the default action because of an exception while handling them; "
             "queued_out: after a wait for a free slot ran out). ewma_ms: a least-latency "
             "pool's answer time of the service; in_flight, queued: its requests now waiting "
             "for its answer, for a free slot; turned_away: requests its max-inflight sent "
             "elsewhere or let wait in vain; the cache columns: a cached pool's requests "
             "answered from its cache, sent to its services, answered stale, and its entries "
             "put out for another key")),
    ("disable POOL/SERVICE", ("take a service out: no worker sends it a request from now on, "
                             "and the checks leave it alone")),
    ("drain POOL/SERVICE", ("no new transaction and no hash key goes to the service; the "
                           "transactions sticky to it finish there (asked by others only when "
                           "no other service is up)")),
    ("enable POOL/SERVICE", "give a disabled or drained service back"),
    ("weight POOL/SERVICE N", (f"set its weight to N (1..{MAX_WEIGHT}) in every worker at once; "
                              "`weight POOL/SERVICE reset` gives back the configured one")),
    ("workers", "pid, requests served (as of its last heartbeat) and clients of each worker"),
    ("pools", ("a `#` header line, then one comma-separated row per pool: its services up, down "
               "and disabled, its requests, answers and default answers (in all and by reason) "
               "and its services' answers by latency bucket (what `hapolicyctl check` "
               "reads)")),
    ("ask [--dry-run] POOL", ("send a request through POOL as a live one (hapolicyctl ask POOL "
                              "ATTR=VALUE ..., or the request's name=value lines on standard "
                              "input; on the socket they follow the command line, ended by an "
                              "empty line): which service was asked, or why none, its answer "
                              "and time, and what the pool answers (the default and why). "
                              "Counted as a live request, but not toward max-use. --dry-run asks "
                              "none: the order the services would be tried in, with the hash "
                              "key and its masks")),
    ("cache-clear POOL", ("forget every answer the pool's cache keeps, in every worker at "
                          "once")),
    ("help", "this list"),
)
STATUS_COLUMNS = COLUMNS[:11] + COLUMNS[12:]  # all but down_s
PLAIN_COLUMNS = 11  # status's columns when no pool hedges or has a shadow
FEATURE_COLUMNS = range(11, 17)  # status's hedge and shadow columns
INTERNAL_COLUMN = 17  # status's internal_errors
LOAD_COLUMNS = range(18, 23)  # status's ewma_ms .. queued_out
# status's cache columns (shown when a pool caches), the last ones
CACHE_COLUMNS = range(STATUS_COLUMNS.index(cachecounts.COLUMNS[0]), len(STATUS_COLUMNS))
HELP = "commands:\n" + "".join(f"  {usage:<22} {what}\n" for usage, what in COMMANDS)
ADMIN_COMMANDS = {"disable": DISABLED, "drain": DRAINING, "enable": ENABLED}
Target = tuple  # (HealthTable, index of the service in it, its peers in round robin)


def rows(config: DaemonConfig, health: Mapping[str, HealthTable], now: float,
         wall: float) -> list[list[str]]:
    """One row of COLUMNS per service of every pool (raw values, as csv gives them); now is
    the monotonic time, wall the time of day."""
    from hapolicy.tables.layout import (
        ANSWERS,
        DEFAULT_INTERNAL,
        DEFAULT_QUEUED_OUT,
        FAILURES,
        HEDGE_WON,
        HEDGED,
        LAST_CHANGE,
        SHADOW_COUNTERS,
        TURNED_AWAY,
    )
    from hapolicy.tables.load import ServiceLoad, ewma
    from hapolicy.tables.stats import buckets, down_seconds, is_up, quantile, word

    out = []
    for pool in config.pools:
        table = health.get(pool.name)
        if table is None:
            continue
        pooled = [str(table.counter(word))
                  for word in (HEDGED, HEDGE_WON, *SHADOW_COUNTERS, DEFAULT_INTERNAL)]
        load = ServiceLoad(table)
        queued_out = str(table.counter(DEFAULT_QUEUED_OUT))
        least_latency = pool.balance == "least-latency"
        cached = cachecounts.cells(table)
        for i, service in enumerate(pool.services):
            latency = buckets(table, i)
            loaded = [milliseconds(ewma(table, i, now) if least_latency else None),
                      str(load.in_flight(i)), str(load.queued(i)),
                      str(whole(word(table, i, TURNED_AWAY))), queued_out]
            out.append([pool.name, service.name, service.address,
                        "up" if is_up(table, i) else "down", table.admin(i),
                        str(table.weight(i, service.weight)),
                        str(table.service_counter(i, ANSWERS)),
                        str(table.service_counter(i, FAILURES)),
                        milliseconds(quantile(latency, 0.5)),
                        milliseconds(quantile(latency, 0.99)),
                        str(max(0, int(wall - word(table, i, LAST_CHANGE)))),
                        str(int(down_seconds(table, i, now))), *pooled, *loaded,
                        *cached])
    return out


def milliseconds(seconds: float | None) -> str:
    """A latency in ms with three significant digits at most; '' for none, 'inf'."""
    if seconds is None:
        return ""
    if seconds == float("inf"):
        return "inf"
    ms = seconds * 1000.0
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def status_row(row: list[str]) -> list[str]:
    """A csv row as status shows it: no down_s, `-` and `>10000` latencies, ages as 4m05s."""
    latencies = ["-" if v == "" else ">10000" if v == "inf" else v for v in row[8:10]]
    return [*row[:8], *latencies, age(int(row[10])), *row[12:]]


def age(seconds: int) -> str:
    """`12s`, `4m05s`, `3h02m`, `2d03h`."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def aligned(header: Sequence[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    lines = [list(header), *body]
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n"
                   for line in lines)


def find(config: DaemonConfig, health: Mapping[str, HealthTable], name: str,
         kept: Sequence[tuple[PoolConfig, HealthTable]] = ()) -> tuple[list[Target], int, str]:
    """Where POOL/SERVICE is: (table, index, round-robin peers) in the pool's table and in each
    older table of the pool that retiring workers still use (the same name and address), and
    its configured weight; or an error line."""
    pool_name, slash, service_name = name.partition("/")
    if not slash or not pool_name or not service_name:
        return [], 0, f"error: {name[:80]!r} is not POOL/SERVICE\n"
    pool = next((p for p in config.pools if p.name == pool_name), None)
    if pool is None or pool.name not in health:
        return [], 0, f"error: no pool {pool_name[:80]!r}\n"
    found = [i for i, s in enumerate(pool.services) if s.name == service_name]
    if not found:
        return [], 0, f"error: no service {service_name[:80]!r} in pool {pool_name!r}\n"
    targets = [(health[pool.name], i, peers(pool.services, i)) for i in found]
    addresses = {pool.services[i].address for i in found}
    for old, table in kept:
        if old.name == pool.name and table is not health[pool.name]:
            targets += [(table, i, peers(old.services, i)) for i, s in enumerate(old.services)
                        if s.name == service_name and s.address in addresses]
    return targets, pool.services[found[0]].weight, ""


def set_admin(config: DaemonConfig, health: Mapping[str, HealthTable], name: str, state: str,
              log: Logger, kept: Sequence[tuple[PoolConfig, HealthTable]] = ()) -> str:
    targets, _, error = find(config, health, name, kept)
    if error:
        return error
    for table, i, group in targets:
        if state == ENABLED and table.admin(i) != ENABLED:
            # back in the rotation: level its clock, or it takes every new transaction until
            # it has caught up on all it missed; before it is back, so no pick races this
            table.rejoin(i, group)
        table.set_admin(i, state)
    word = {DISABLED: "disabled", DRAINING: "draining", ENABLED: "enabled"}[state]
    log.notice(f"control: service {name} {word}")
    return f"ok: {name} {word}\n"


def set_weight(config: DaemonConfig, health: Mapping[str, HealthTable], name: str, text: str,
               log: Logger, kept: Sequence[tuple[PoolConfig, HealthTable]] = ()) -> str:
    targets, configured, error = find(config, health, name, kept)
    if error:
        return error
    if text.lower() == "reset":
        weight = 0
    elif text.isdigit() and 1 <= int(text) <= MAX_WEIGHT:
        weight = int(text)
    else:
        return f"error: weight {text[:40]!r}: expected 1..{MAX_WEIGHT} or reset\n"
    for table, i, _ in targets:
        table.set_weight(i, weight)
    log.notice(f"control: service {name} weight {weight or configured}"
               + (" (configured)" if not weight else ""))
    return f"ok: {name} weight {weight or configured}\n"


def workers_answer(workers: Mapping[int, int], table: WorkerTable) -> str:
    """`workers` is pid: slot in the worker table (WorkerTable.workers())."""
    body = [[str(pid), str(table.requests(slot)), str(table.clients(slot))]
            for pid, slot in sorted(workers.items())]
    return aligned(("pid", "requests", "clients"), body)


def answer(line: str, config: DaemonConfig, health: Mapping[str, HealthTable],
           workers: Mapping[int, int], table: WorkerTable, log: Logger,
           kept: Sequence[tuple[PoolConfig, HealthTable]] = ()) -> str:
    """The answer of one command line. kept: (pool config, table) of the older tables that
    retiring workers still use (a reload gave their pools new ones): disable, drain and
    weight reach them too, so that every worker obeys at once."""
    words = line.split()
    if not words:
        return "error: empty command; try help\n"
    command, args = words[0].lower(), words[1:]
    if command in ADMIN_COMMANDS:
        if len(args) != 1:
            return f"error: usage: {command} POOL/SERVICE\n"
        return set_admin(config, health, args[0], ADMIN_COMMANDS[command], log, kept)
    if command == "weight":
        if len(args) != 2:
            return "error: usage: weight POOL/SERVICE N\n"
        return set_weight(config, health, args[0], args[1], log, kept)
    if command == "cache-clear":
        return cachecounts.clear(config, health, args, log)
    if command == "ask":  # control.py gives it, with its request, to the monitor (ask.py)
        return "error: ask needs its request: hapolicyctl ask POOL ATTR=VALUE ...\n"
    if args:
        return f"error: {command} takes no arguments\n"
    if command == "status":
        body = [status_row(row) for row in rows(config, health, time.monotonic(), time.time())]
        shown = list(range(PLAIN_COLUMNS))
        if any(pool.hedge or pool.shadow for pool in config.pools):
            shown += FEATURE_COLUMNS
        if any(row[INTERNAL_COLUMN] != "0" for row in body):
            shown.append(INTERNAL_COLUMN)
        if any(pool.balance == "least-latency" or pool.max_inflight for pool in config.pools):
            shown += LOAD_COLUMNS
        if any(pool.cache for pool in config.pools):
            shown += CACHE_COLUMNS
        return aligned([STATUS_COLUMNS[k] for k in shown], [[row[k] for k in shown]
                                                            for row in body])
    if command == "csv":
        return "# " + ",".join(COLUMNS) + "\n" + "".join(
            ",".join(row) + "\n" for row in rows(config, health, time.monotonic(), time.time()))
    if command == "workers":
        return workers_answer(workers, table)
    if command == "pools":
        return pools_answer(config, health)
    if command == "help":
        return HELP
    return f"error: unknown command {command[:40]!r}; try help\n"
