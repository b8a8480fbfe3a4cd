"""The health tables' state as a document another program reads: what an upgrade in place
hands from the old master to the new one (daemon/handover.py).

`take(pools, tables)` gives a JSON-able dict: per pool its counters, and per service (by name
and address) its configured weight, admin state and operator's weight, which are named, and
the words of its slot and of its statistics slot, which follow TABLE_LAYOUT (layout.py).
`restore(document, pools, tables)` applies one to a new master's fresh tables, before any of
its workers starts: to a service that keeps its name and address, its admin state and weight
always (the operator's weight dropped when the configured one changed, as a reload does), its
health and statistics only when the document's layout is this program's (another version may
lay them out otherwise); each pool's counters likewise. A service or pool the document lacks
starts new. Whatever in the document is not as `take` writes it is skipped and counted: the
document comes from the old program, which may be another version.
"""

from __future__ import annotations

import array
import math

from hapolicy.tables.layout import ADMIN_STATES, POOL_COUNTERS, SLOT, STATS, TABLE_LAYOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hapolicy.config.records import PoolConfig
    from hapolicy.tables.health import HealthTable

MAX_WEIGHT_WORD = 1e9  # the bound HealthTable.weight reads an operator's weight within
MAX_INT_WORD = 1 << 53  # a word given as an int: at most what a float holds exactly


def take(pools: Sequence[PoolConfig], tables: Mapping[str, HealthTable]) -> dict:
    """The state of every pool's table, as `restore` reads it."""
    document: dict = {"layout": TABLE_LAYOUT, "pools": []}
    for pool in pools:
        table = tables.get(pool.name)
        if table is None:
            continue
        services = []
        for i, service in enumerate(pool.services):
            stats = table.stats + i * STATS
            services.append({
                "name": service.name, "address": service.address,
                "configured": service.weight, "admin": table.admin(i),
                "weight": table.weight(i, 0),
                "slot": list(table.f[i * SLOT:(i + 1) * SLOT]),
                "stats": list(table.f[stats:stats + STATS]),
            })
        counters = [table.f[table.header + word] for word in POOL_COUNTERS]
        document["pools"].append({"name": pool.name, "counters": counters,
                                  "services": services})
    return document


def restore(document: object, pools: Sequence[PoolConfig],
            tables: Mapping[str, HealthTable]) -> tuple[int, int]:
    """Apply a document of `take` to fresh tables; (services carried, entries skipped)."""
    if not isinstance(document, dict) or not isinstance(document.get("pools"), list):
        return 0, 1
    words = document.get("layout") == TABLE_LAYOUT
    by_name = {pool.name: pool for pool in pools}
    carried = skipped = 0
    for entry in document["pools"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        pool = by_name.get(name) if isinstance(name, str) else None
        if pool is None or pool.name not in tables:
            skipped += not isinstance(entry, dict)
            continue
        table = tables[pool.name]
        if words and _floats(entry.get("counters"), len(POOL_COUNTERS)):
            for word, value in zip(POOL_COUNTERS, entry["counters"]):
                table.f[table.header + word] = value
        services = entry.get("services")
        for service in services if isinstance(services, list) else ():
            done = _restore_service(service, pool, table, words)
            carried += done
            skipped += not done and not _gone(service, pool)
    return carried, skipped


def _restore_service(entry: object, pool: PoolConfig, table: HealthTable, words: bool) -> bool:
    if not isinstance(entry, dict):
        return False
    index = {(s.name, s.address): i for i, s in enumerate(pool.services)}
    key = (entry.get("name"), entry.get("address"))
    i = index.get(key) if all(isinstance(part, str) for part in key) else None
    admin, weight = entry.get("admin"), entry.get("weight")
    if i is None or admin not in ADMIN_STATES or not _count(weight):
        return False
    if words and _floats(entry.get("slot"), SLOT) and _floats(entry.get("stats"), STATS):
        table.f[i * SLOT:(i + 1) * SLOT] = _array(entry["slot"])
        stats = table.stats + i * STATS
        table.f[stats:stats + STATS] = _array(entry["stats"])
    table.set_admin(i, admin)
    same = entry.get("configured") == pool.services[i].weight
    table.set_weight(i, weight if same else 0)
    return True


def _gone(entry: object, pool: PoolConfig) -> bool:
    """A well-formed entry of a service the configuration no longer has (not a fault)."""
    return isinstance(entry, dict) and all(
        (entry.get("name"), entry.get("address")) != (s.name, s.address) for s in pool.services)


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_WEIGHT_WORD


def _floats(values: object, length: int) -> bool:
    """length words, each a float but NaN (inf is a word's value: down until a check says)
    or an int a float holds."""
    return (isinstance(values, list) and len(values) == length
            and all((type(v) is float and not math.isnan(v))
                    or (type(v) is int and -MAX_INT_WORD <= v <= MAX_INT_WORD) for v in values))


def _array(values: list) -> memoryview:
    return memoryview(array.array("d", [float(v) for v in values]))
