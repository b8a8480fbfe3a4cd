"""The tables' state an upgrade in place hands over (tables/snapshot.py): taken from one
configuration's tables and restored into another's, by service name and address; the admin
state and weight always, the health and statistics words only between equal layouts; and a
document that is not what `take` writes is skipped, never raised on.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.tables import snapshot
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import ANSWERS, DOWN, REQUESTS, TABLE_LAYOUT, UP

NOW = 1000.0


def pool(*specs: str, name: str = "grey") -> PoolConfig:
    return PoolConfig(services=tuple(parse_service(s) for s in specs), name=name)


def tables_of(*pools: PoolConfig) -> dict[str, HealthTable]:
    return {p.name: HealthTable(len(p.services), shared=False) for p in pools}


def old_state() -> tuple[PoolConfig, dict[str, HealthTable]]:
    old = pool("A=127.0.0.1:1", "B=127.0.0.1:2:10:3", "C=127.0.0.1:3")
    tables = tables_of(old)
    table = tables["grey"]
    table.record_failure(1, NOW, 300.0, 300.0)  # B down until NOW + 300
    table.set_admin(2, "disabled")
    table.set_weight(0, 7)
    table.f[ANSWERS] = 41.0  # A's answers
    table.f[table.header + REQUESTS] = 99.0
    return old, tables


def restored(document: object, new: PoolConfig) -> tuple[HealthTable, tuple[int, int]]:
    tables = tables_of(new)
    # through JSON, as the handover carries it
    result = snapshot.restore(json.loads(json.dumps(document)), [new], tables)
    return tables[new.name], result


def test_state_follows_each_service_by_name_and_address_into_a_new_order():
    old, tables = old_state()
    document = snapshot.take([old], tables)
    new = pool("C=127.0.0.1:3", "D=127.0.0.1:4", "A=127.0.0.1:1", "B=127.0.0.1:2:10:3")
    table, (carried, skipped) = restored(document, new)
    assert (carried, skipped) == (3, 0)
    assert [table.admin(i) for i in range(4)] == ["disabled", "enabled", "enabled", "enabled"]
    assert table.weight(2, 1) == 7 and table.weight(1, 1) == 1
    assert table.state(3, NOW + 1) == DOWN and table.state(3, NOW + 301) != UP
    assert table.state(1, NOW) == UP  # D is new
    assert table.service_counter(2, ANSWERS) == 41
    assert table.counter(REQUESTS) == 99


def test_a_service_that_moved_or_whose_weight_changed_is_new_or_loses_the_operators_weight():
    old, tables = old_state()
    document = snapshot.take([old], tables)
    new = pool("A=127.0.0.1:1:10:5", "B=127.0.0.1:9", "C=127.0.0.1:3")
    table, (carried, skipped) = restored(document, new)
    assert (carried, skipped) == (2, 0)  # B moved: a service the configuration lacks now
    assert table.weight(0, 5) == 5  # the configured weight changed: the new one wins
    assert table.state(1, NOW + 1) == UP
    assert table.admin(2) == "disabled"


def test_another_layout_carries_the_admin_state_and_weight_but_no_words():
    old, tables = old_state()
    document = snapshot.take([old], tables)
    document["layout"] = TABLE_LAYOUT + 1
    table, (carried, _) = restored(document, old)
    assert carried == 3
    assert table.admin(2) == "disabled" and table.weight(0, 1) == 7
    assert table.state(1, NOW + 1) == UP  # B's health words were not copied
    assert table.service_counter(0, ANSWERS) == 0 and table.counter(REQUESTS) == 0


def test_a_pool_that_is_gone_or_new_is_left_alone():
    old, tables = old_state()
    document = snapshot.take([old], tables)
    other = pool("A=127.0.0.1:1", name="rate")
    new_tables = tables_of(other)
    assert snapshot.restore(document, [other], new_tables) == (0, 0)
    assert new_tables["rate"].weight(0, 1) == 1


@pytest.mark.parametrize("document", [
    None, [], "x", {"pools": "x"}, {"pools": [1, None, {"name": 3}]},
    {"pools": [{"name": "grey", "services": [{"name": "A", "address": "127.0.0.1:1",
                                              "admin": "sleeping", "weight": 0}]}]},
    {"pools": [{"name": "grey", "services": [{"name": "A", "address": "127.0.0.1:1",
                                              "admin": "enabled", "weight": -1}]}]},
    {"layout": TABLE_LAYOUT, "pools": [{"name": "grey", "counters": [math.nan] * 3,
                                        "services": [{"name": "A", "address": "127.0.0.1:1",
                                                      "admin": "enabled", "weight": 2,
                                                      "slot": ["x"] * 16, "stats": [0] * 40}]}]},
])
def test_what_is_not_a_document_of_take_is_skipped_and_counted(document):
    new = pool("A=127.0.0.1:1")
    tables = tables_of(new)
    carried, skipped = snapshot.restore(document, [new], tables)
    assert skipped >= 1 or carried == 1
    table = tables["grey"]
    assert table.state(0, NOW) == UP and table.counter(REQUESTS) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=20)


def maybe(good: st.SearchStrategy) -> st.SearchStrategy:
    return good | json_values


services = st.fixed_dictionaries({
    "name": maybe(st.just("A")), "address": maybe(st.just("127.0.0.1:1")),
    "configured": maybe(st.integers(0, 3)), "admin": maybe(st.sampled_from(
        ["enabled", "drain", "disabled"])), "weight": maybe(st.integers(-1, 10**10)),
    "slot": maybe(st.lists(st.floats(), min_size=16, max_size=16)),
    "stats": maybe(st.lists(st.floats(), min_size=40, max_size=40))})
documents = st.fixed_dictionaries({
    "layout": maybe(st.just(TABLE_LAYOUT)),
    "pools": maybe(st.lists(maybe(st.fixed_dictionaries({
        "name": maybe(st.just("grey")),
        "counters": maybe(st.lists(st.floats(), min_size=13, max_size=13)),
        "services": maybe(st.lists(maybe(services), max_size=3))})), max_size=3))})


@given(maybe(documents))
def test_restore_never_raises_on_any_json(document):
    new = pool("A=127.0.0.1:1")
    tables = tables_of(new)
    carried, skipped = snapshot.restore(document, [new], tables)
    assert 0 <= carried <= 3
    assert tables["grey"].admin(0) in ("enabled", "drain", "disabled")
