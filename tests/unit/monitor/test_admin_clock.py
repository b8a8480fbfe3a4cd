"""A service the operator gives back (`enable` after `disable` or `drain`) starts its weighted
round-robin clock level with its own priority group's, as one coming back from a failure does:
the next requests split by weight at once, not all to it until it caught up on what it missed.
A weight change splits by the new weights at once. Through the control commands, in process.
"""

from __future__ import annotations

from collections import Counter

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.monitor.commands import answer
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable, carry_over

# A has weight 2, B 1; C is a backup (another priority) that round robin never picks: its clock
# stays 0, so leveling A with every service instead of its group's would not level it at all
SPECS = ("A=h:1:10:2", "B=h:2:10:1", "C=h:3:20:1")


class Log:
    def __getattr__(self, level: str):
        return lambda text: None


def pool(specs=SPECS) -> tuple[DaemonConfig, dict[str, HealthTable], Selector]:
    services = tuple(parse_service(s) for s in specs)
    table = HealthTable(len(services), shared=False)
    config = DaemonConfig(pools=(PoolConfig(services=services),))
    return config, {"default": table}, Selector(services, table)


def run(config: DaemonConfig, health: dict[str, HealthTable], line: str, kept=()) -> None:
    assert answer(line, config, health, {}, None, Log(), kept).startswith("ok:"), line


def picks(selector: Selector, count: int) -> Counter:
    return Counter(selector.services[selector.pick(0, 1.0)].name for _ in range(count))


def within_ten_percent(got: Counter, expected: dict[str, int]) -> bool:
    return all(abs(got[name] - want) <= 0.1 * want for name, want in expected.items())


def test_enable_after_disable_or_drain_splits_by_weight_at_once():
    for out in ("disable", "drain"):
        config, health, selector = pool()
        assert picks(selector, 90) == {"A": 60, "B": 30}
        run(config, health, f"{out} default/A")
        assert picks(selector, 200) == {"B": 200}  # the maintenance window
        run(config, health, "enable default/A")
        first = picks(selector, 30)
        assert within_ten_percent(first, {"A": 20, "B": 10}), (out, first)
        assert within_ten_percent(picks(selector, 300), {"A": 200, "B": 100}), out


def test_enable_of_a_service_already_in_the_rotation_leaves_its_clock():
    config, health, selector = pool()
    picks(selector, 91)  # B's clock now half a step behind A's: its turn comes next
    clock = health["default"].served(1)
    assert clock < health["default"].served(0)
    run(config, health, "enable default/B")
    assert health["default"].served(1) == clock


def test_enable_levels_the_table_of_a_reload_s_retiring_workers_with_its_own_order():
    config, health, _ = pool()
    old_services = tuple(parse_service(s) for s in ("C=h:3:20:1", "B=h:2:10:1", "A=h:1:10:2"))
    old_table = HealthTable(3, shared=False)
    old = Selector(old_services, old_table)
    run(config, health, "disable default/A", kept=[(PoolConfig(services=old_services),
                                                     old_table)])
    assert picks(old, 100) == {"B": 100}
    run(config, health, "enable default/A", kept=[(PoolConfig(services=old_services),
                                                    old_table)])
    assert within_ten_percent(picks(old, 30), {"A": 20, "B": 10})


def test_a_weight_change_after_traffic_splits_by_the_new_weights_at_once():
    config, health, selector = pool(("A=h:1", "B=h:2"))
    assert picks(selector, 200) == {"A": 100, "B": 100}
    run(config, health, "weight default/B 3")
    first = picks(selector, 20)
    assert within_ten_percent(first, {"A": 5, "B": 15}), first
    run(config, health, "weight default/B 1")
    assert within_ten_percent(picks(selector, 20), {"A": 10, "B": 10})


def test_a_peer_out_of_the_rotation_does_not_hold_a_returning_clock_back():
    config, health, selector = pool(("A=h:1", "B=h:2", "C=h:3"))
    run(config, health, "disable default/C")  # stays out, its clock at 0
    picks(selector, 20)
    run(config, health, "disable default/A")
    assert picks(selector, 200) == {"B": 200}
    run(config, health, "enable default/A")
    assert within_ten_percent(picks(selector, 40), {"A": 20, "B": 20})


def test_a_service_new_in_a_reload_splits_by_weight_at_once():
    before = tuple(parse_service(s) for s in ("A=h:1", "B=h:2"))
    old = HealthTable(2, shared=False)
    selector = Selector(before, old)
    assert picks(selector, 200) == {"A": 100, "B": 100}
    after = (*before, parse_service("C=h:3"))
    table = carry_over(old, before, after)
    got = picks(Selector(after, table), 90)
    assert within_ten_percent(got, {"A": 30, "B": 30, "C": 30}), got
