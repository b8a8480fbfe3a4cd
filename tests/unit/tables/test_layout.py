"""The shared tables' layout (hapolicy.tables.layout) holds together: the words of each slot are
distinct and inside it, the multi-word regions of a statistics slot do not overlap, the regions
of a health table follow each other, and the state file's LAYOUT names this very layout (a
change of a word here without a new LAYOUT would have spawn mode read old files wrongly). The
modules that read the layout do not import each other both ways (health and stats were one
layout split across two files that imported each other).
"""

from __future__ import annotations

from testkit import imports

from hapolicy.base.outcome import NAMES
from hapolicy.spawn import statefile
from hapolicy.tables import layout
from hapolicy.tables.health import HealthTable, table_bytes

SERVICE_WORDS = ("DOWN_UNTIL", "PROBE_UNTIL", "SERVED", "STREAK", "DOWN_SINCE", "ANSWERS",
                 "FAILURES", "ADMIN", "DRAIN", "WEIGHT", "BACK_SINCE", "EWMA", "EWMA_AT")
POOL_WORDS = ("CHECKED", "REQUESTS", "DEFAULT_FAILED", "DEFAULT_DOWN", "DEFAULT_TIMEOUT",
              "DEFAULT_REFUSED", "SHADOW_AGREE", "SHADOW_DISAGREE", "SHADOW_FAILED",
              "SHADOW_DROPPED", "HEDGED", "HEDGE_WON", "DEFAULT_INTERNAL", "DEFAULT_QUEUED_OUT", "LOAD_SLOTS")
WORKER_WORDS = ("WORKER_CLIENTS", "WORKER_ACCEPTING", "WORKER_HEARTBEAT", "WORKER_REQUESTS",
                "WORKER_PID", "WORKER_GENERATION")
# the words of the state file's LAYOUT 6 (and of the tables' TABLE_LAYOUT 6): a change here
# needs a new statefile.LAYOUT and TABLE_LAYOUT
LAYOUT_6 = {
    "SLOT": 16, "DOWN_UNTIL": 0, "PROBE_UNTIL": 1, "SERVED": 2, "STREAK": 3, "DOWN_SINCE": 4,
    "ANSWERS": 5, "FAILURES": 6, "ADMIN": 7, "DRAIN": 8, "WEIGHT": 9, "BACK_SINCE": 10,
    "EWMA": 11, "EWMA_AT": 12,
    "CHECKED": 0, "REQUESTS": 1, "DEFAULT_FAILED": 2, "DEFAULT_DOWN": 3, "DEFAULT_TIMEOUT": 4,
    "DEFAULT_REFUSED": 5, "SHADOW_AGREE": 6, "SHADOW_DISAGREE": 7, "SHADOW_FAILED": 8,
    "SHADOW_DROPPED": 9, "HEDGED": 10, "HEDGE_WON": 11, "DEFAULT_INTERNAL": 12,
    "DEFAULT_QUEUED_OUT": 13, "LOAD_SLOTS": 14,
    "STATS": 40, "FAILURES_BY_OUTCOME": 0, "ANSWERS_BY_ACTION": 10, "LAST_CHANGE": 18,
    "DOWN_TOTAL": 19, "LATENCY_SUM": 20, "LATENCY_BUCKETS": 21, "TURNED_AWAY": 35,
    "LOAD": 2, "LOAD_IN_FLIGHT": 0, "LOAD_QUEUED": 1,
}


def words(names: tuple[str, ...]) -> list[int]:
    return [getattr(layout, name) for name in names]


def test_the_words_of_each_slot_are_distinct_and_inside_it():
    for names, size in ((SERVICE_WORDS, layout.SLOT), (POOL_WORDS, layout.SLOT),
                        (WORKER_WORDS, layout.WORKER_SLOT)):
        found = words(names)
        assert len(set(found)) == len(found)
        assert all(0 <= word < size for word in found)
    assert layout.DOWN_UNTIL < 8 and layout.ADMIN < 8 and layout.DRAIN < 16  # read per pick
    assert set(layout.POOL_COUNTERS) == set(words(POOL_WORDS)) - {layout.CHECKED,
                                                                  layout.LOAD_SLOTS}


def test_the_regions_of_a_statistics_slot_do_not_overlap_and_fit_in_it():
    regions = sorted([(layout.FAILURES_BY_OUTCOME, len(NAMES)),
                      (layout.ANSWERS_BY_ACTION, len(layout.ACTIONS)),
                      (layout.LAST_CHANGE, 1), (layout.DOWN_TOTAL, 1), (layout.LATENCY_SUM, 1),
                      (layout.LATENCY_BUCKETS, len(layout.BOUNDS) + 1),
                      (layout.TURNED_AWAY, 1)])
    for (start, size), (following, _) in zip(regions, regions[1:]):
        assert start + size <= following
    start, size = regions[-1]
    assert start + size <= layout.STATS


def test_the_regions_of_a_table_follow_each_other():
    count, workers = 3, 5
    assert layout.pool_start(count) == count * layout.SLOT
    assert layout.stats_start(count) == layout.pool_start(count) + layout.SLOT
    assert layout.in_flight_start(count) == layout.stats_start(count) + count * layout.STATS
    assert layout.load_start(count, workers) == layout.in_flight_start(count) + workers
    assert layout.table_words(count, workers) == (layout.load_start(count, workers)
                                                  + workers * count * layout.LOAD)
    table = HealthTable(count, shared=False, workers=workers)
    assert len(table.f) * 8 == table_bytes(count, workers)
    assert (table.header, table.stats, table.in_flight) == (
        layout.pool_start(count), layout.stats_start(count), layout.in_flight_start(count))
    table.close()


def test_the_state_file_s_layout_is_this_one():
    assert statefile.LAYOUT == 6 and layout.TABLE_LAYOUT == 6
    assert {name: getattr(layout, name) for name in LAYOUT_6} == LAYOUT_6
    assert len(NAMES) == 10 and len(layout.ACTIONS) == 8 and len(layout.BOUNDS) == 13


def test_the_readers_of_the_layout_do_not_import_each_other_both_ways():
    edges = imports.graph()
    modules = ("tables.layout", "tables.health", "tables.stats", "tables.transitions",
               "tables.workertable")
    graph = {module: edges[module] for module in modules}
    assert graph["tables.layout"] == set()
    for a in modules:
        for b in modules:
            assert not (b in graph[a] and a in graph[b]), (a, b)
    assert "request.shadow" not in edges["monitor.metrics"]
