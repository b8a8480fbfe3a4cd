"""The control socket's `pools` command: one row per pool, its services' states and its counters,
for a program that reads them twice and makes rates of them (hapolicyctl check: check.py).

A `#` header line names the columns (POOL_COLUMNS), then one comma-separated row per pool. The
service columns count the pool's services: `up` neither down by its health nor disabled by the
operator (a drained one is up: it still stands in when no other is), `down` down by its health
and not disabled, `disabled` disabled by the operator. The counters are those of `/metrics` (the
same words of the shared table: docs/operating.md, Prometheus metrics), since the daemon's start
(a reload keeps them for a pool that stays): requests, good answers (the services' answers),
default answers in all and by reason, and the services' good answers by latency (`lat_1ms` ...
`lat_10000ms`: above the previous bound and at most this one; `lat_inf`: above the last), the
histogram of hapolicy_service_latency_seconds summed over the pool, not cumulative. New columns
are only ever appended.
"""

from __future__ import annotations

from hapolicy.tables.layout import ANSWERS, BOUNDS, DEFAULT_REASONS, REQUESTS
from hapolicy.tables.stats import buckets, is_up

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hapolicy.config.records import DaemonConfig
    from hapolicy.tables.health import HealthTable

LATENCY_COLUMNS = (*(f"lat_{bound * 1000:g}ms" for bound in BOUNDS), "lat_inf")
# the reasons of default answers there were when the latency columns came after them; a later
# reason's column comes after those (columns are only ever appended)
FIRST_REASONS = 5
POOL_COLUMNS = ("pool", "services", "up", "down", "disabled", "requests", "answers", "defaults",
                *(f"default_{reason}" for reason, _ in DEFAULT_REASONS[:FIRST_REASONS]),
                *LATENCY_COLUMNS,
                *(f"default_{reason.replace('-', '_')}"
                  for reason, _ in DEFAULT_REASONS[FIRST_REASONS:]))


def pool_row(name: str, size: int, table: HealthTable) -> list[str]:
    """The row of POOL_COLUMNS of a pool of `size` services."""
    up = down = disabled = answers = 0
    latency = [0] * len(LATENCY_COLUMNS)
    for i in range(size):
        if table.disabled(i):
            disabled += 1
        elif is_up(table, i):
            up += 1
        else:
            down += 1
        answers += table.service_counter(i, ANSWERS)
        latency = [a + b for a, b in zip(latency, buckets(table, i))]
    defaults = [table.counter(word) for _, word in DEFAULT_REASONS]
    return [name, *map(str, (size, up, down, disabled, table.counter(REQUESTS), answers,
                             sum(defaults), *defaults[:FIRST_REASONS], *latency,
                             *defaults[FIRST_REASONS:]))]


def pools_answer(config: DaemonConfig, health: Mapping[str, HealthTable]) -> str:
    """The `pools` command's answer."""
    rows = [pool_row(pool.name, len(pool.services), health[pool.name])
            for pool in config.pools if pool.name in health]
    return "# " + ",".join(POOL_COLUMNS) + "\n" + "".join(",".join(row) + "\n" for row in rows)
