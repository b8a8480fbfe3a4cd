"""The verdict cache as the monitor serves it: `cache-clear POOL` (commands.py), the cache
columns of `status` and `csv` (hits, misses, stale answers, evictions: the pool's, on each of
its rows; empty for a pool that does not cache) and the `hapolicy_cache` family of /metrics.
Each reads or writes the pool's verdict table (tables/verdicts.py), which the master made
before the fork beside the pool's health table (`HealthTable.verdicts`).
"""

from __future__ import annotations

from hapolicy.tables.layout import VERDICT_COUNTERS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.tables.health import HealthTable

COLUMNS = tuple(f"cache_{name}" for name, _ in VERDICT_COUNTERS)


def cells(table: HealthTable) -> list[str]:
    """The cache columns of a pool's rows ('' each when it does not cache)."""
    verdicts = table.verdicts
    if verdicts is None:
        return ["" for _ in VERDICT_COUNTERS]
    return [str(verdicts.counter(word)) for _, word in VERDICT_COUNTERS]


def clear(config: DaemonConfig, health: Mapping[str, HealthTable], args: Sequence[str],
          log: Logger) -> str:
    """`cache-clear POOL`: every entry of the pool's cache gone, in every worker at once. The
    retiring workers' older table, if a reload replaced the pool's, holds none: the reload
    retired it (tables/verdicts.py)."""
    if len(args) != 1:
        return "error: usage: cache-clear POOL\n"
    name = args[0]
    pool = next((p for p in config.pools if p.name == name), None)
    if pool is None or name not in health:
        return f"error: no pool {name[:80]!r}\n"
    verdicts = health[name].verdicts
    if verdicts is None:
        return f"error: pool {name!r} has no cache\n"
    verdicts.clear()
    log.notice(f"control: cache of pool {name} cleared")
    return f"ok: cache of pool {name} cleared\n"


def families(pools: Sequence[tuple[PoolConfig, HealthTable]]) -> Iterator[object]:
    """/metrics: `hapolicy_cache_total{pool,result}` of the pools that cache."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily("hapolicy_cache", "requests of a pool that caches by what "
                                 "its cache did (hits: answered from it; misses: sent to the "
                                 "services; stale: a stale answer instead of the default), and "
                                 "entries in use put out for another key (evictions)",
                                 labels=["pool", "result"])
    for pool, table in pools:
        if table.verdicts is not None:
            for name, word in VERDICT_COUNTERS:
                family.add_metric([pool.name, name], table.verdicts.counter(word))
    yield family
