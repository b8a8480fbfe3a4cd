"""The master's summary line: every --summary seconds, one line of counters per pool.

    summary pool=grey requests=1234 rate=20.5/s defaults=3 (failed=1 down=2 timeout=0 refused=0
    internal=0) services: GREY1 up answers=600 failures=0, GREY2 down answers=630 failures=12

(one line in the log), followed, for a pool that hedges, by `hedged=N (won=N)` and, for one with a
shadow, by `shadow NAME: agree=N disagree=N failed=N dropped=N`; for one that caches, by
`cache hits=N misses=N stale=N evictions=N` (its requests answered from the cache and stale
are counted in `requests`, not in the answers or defaults). A service's state is up or down, or
`disabled` or `drain` while the operator (hapolicyctl) keeps it so. The counters are the health
table's (layout.py), kept by the workers without locks: totals since the pool's table was made (a
reload keeps them for a pool that stays and for each service that keeps its name and address).
`rate` is the requests per second over the last interval. Requests still in flight are counted in
`requests` but not yet in the answers or defaults. A worker that retires after a reload that gave
its pool a new table counts its last requests in the old table: those are not in the summary.
"""

from __future__ import annotations

from hapolicy.tables.layout import (
    ANSWERS,
    DEFAULT_REASONS,
    ENABLED,
    FAILURES,
    HEDGE_WON,
    HEDGED,
    REQUESTS,
    SHADOW_RESULTS,
    UP,
    VERDICT_COUNTERS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.tables.health import HealthTable


def service_state(table: HealthTable, i: int, now: float) -> str:
    """up or down, or the admin state when the operator disabled or drains it."""
    admin = table.admin(i)
    if admin != ENABLED:
        return admin
    return "up" if table.state(i, now) == UP else "down"


def pool_line(name: str, table: HealthTable, names: Sequence[str], rate: float,
              now: float) -> str:
    """The summary line of one pool; now is the monotonic time the states are read at."""
    # queued-out only once there is one: only a pool with max-inflight has any
    defaults = [(reason, table.counter(word)) for reason, word in DEFAULT_REASONS
                if reason != "queued-out" or table.counter(word)]
    services = ", ".join(
        f"{service} {service_state(table, i, now)}"
        f" answers={table.service_counter(i, ANSWERS)}"
        f" failures={table.service_counter(i, FAILURES)}"
        for i, service in enumerate(names))
    return (f"summary pool={name} requests={table.counter(REQUESTS)} rate={rate:.1f}/s "
            f"defaults={sum(count for _, count in defaults)} ("
            + " ".join(f"{reason}={count}" for reason, count in defaults)
            + f") services: {services}")


def extras(pool: PoolConfig, table: HealthTable) -> str:
    """What a pool that hedges or has a shadow adds to its line."""
    text = ""
    if pool.hedge:
        text += f" hedged={table.counter(HEDGED)} (won={table.counter(HEDGE_WON)})"
    if table.verdicts is not None:
        text += " cache " + " ".join(f"{name}={table.verdicts.counter(word)}"
                                     for name, word in VERDICT_COUNTERS)
    if pool.shadow:
        text += f" shadow {pool.shadow}: " + " ".join(
            f"{result}={table.counter(word)}" for word, result in SHADOW_RESULTS.items())
    return text


class Summary:
    """The schedule of the summary lines and the request counts they compute the rate from."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.next = now + interval if interval > 0 else float("inf")
        self.last = now
        self.requests: dict[str, int] = {}  # by pool, at the last line

    def wait(self, now: float) -> float:
        """Seconds until the next line is due (inf: never)."""
        return max(0.0, self.next - now)

    def reconfigure(self, interval: float, now: float) -> None:
        """A reload's --summary: a new interval starts now; the same one keeps its schedule."""
        if interval != self.interval:
            self.interval = interval
            self.next = now + interval if interval > 0 else float("inf")

    def tick(self, config: DaemonConfig, tables: Mapping[str, HealthTable], log: Logger,
             now: float, clock: float) -> None:
        """Log the lines when they are due. now: the schedule's clock; clock: the tables'
        (monotonic) one, which the services' states are read with."""
        if now < self.next:
            return
        elapsed = max(now - self.last, 1e-9)
        counts = {}
        for pool in config.pools:
            table = tables.get(pool.name)
            if table is None:
                continue
            counts[pool.name] = requests = table.counter(REQUESTS)
            # a pool new since the last line counts from zero
            rate = max(requests - self.requests.get(pool.name, 0), 0) / elapsed
            names = [s.name for s in pool.services]
            log.info(pool_line(pool.name, table, names, rate, clock) + extras(pool, table))
        self.requests = counts
        self.last = now
        self.next = max(self.next + self.interval, now)
