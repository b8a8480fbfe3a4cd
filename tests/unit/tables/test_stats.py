"""The per-service statistics of the health table (stats.py), in process.

A Dispatcher against FakeBackends on 127.0.0.1 (testkit.dispatching.Run) counts good answers
by the first word of their action and in the latency histogram, failures by outcome category;
the state changes write the last change and the time down; carry_over keeps them for a service
that stays; the words after the pool's slot hold each worker's requests in flight. The control
socket's p50/p99 come from the histogram, interpolated as Prometheus does.
"""

from __future__ import annotations

import math
import time

import pytest
from testkit.backends import FakeBackend
from testkit.dispatching import Run
from testkit.ports import refused_port
from testkit.protocol import request

from hapolicy.base import outcome
from hapolicy.config.parsers import parse_service
from hapolicy.monitor.commands import age, milliseconds, status_row
from hapolicy.tables.health import HealthTable, carry_over, table_bytes
from hapolicy.tables.layout import (
    ACTIONS,
    ANSWERS,
    ANSWERS_BY_ACTION,
    BOUNDS,
    FAILURES,
    LAST_CHANGE,
    LATENCY_SUM,
    SLOT,
    STATS,
)
from hapolicy.tables.stats import (
    action_index,
    action_offset,
    answers_by_action,
    buckets,
    down_seconds,
    failures_by_outcome,
    quantile,
    word,
)


@pytest.mark.parametrize(("action", "expected"), [
    (b"action=OK", "OK"), (b"action=ok fine", "OK"), (b"action=DUNNO", "DUNNO"),
    (b"action=dunno\tx", "DUNNO"), (b"action=REJECT go away", "REJECT"),
    (b"action=Defer later", "DEFER"), (b"action=DEFER_IF_PERMIT Service unavailable",
                                       "DEFER_IF_PERMIT"),
    (b"action=450 4.7.1 try later", "4xx"), (b"action=554 5.7.1 no", "5xx"),
    (b"action=250 ok", "other"), (b"action=4500 x", "other"), (b"action=45x y", "other"),
    (b"action=PREPEND X-Foo: bar", "other"), (b"action=DEFER_IF_REJECT x", "other"),
    (b"action=", "other"), (b"action=   ", "other"), (b"action=DEFER_IF_PERMITTED", "other"),
    (b"action=" + b"\xff" * 40, "other"),
])
def test_the_action_word_is_one_of_a_bounded_set(action, expected):
    assert ACTIONS[action_index(action)] == expected


def test_the_action_cache_is_bounded():
    cache: dict[bytes, int] = {}
    for n in range(1000):
        assert action_offset(cache, f"action=REJECT {n:09d}".encode()) == ANSWERS_BY_ACTION + 2
    assert len(cache) == 256
    assert all(len(key) <= 16 for key in cache)


def test_quantiles_interpolate_inside_their_bucket():
    counts = [0] * (len(BOUNDS) + 1)
    assert quantile(counts, 0.5) is None
    counts[0] = 100  # all at or under 1 ms
    assert quantile(counts, 0.5) == pytest.approx(0.0005)
    counts[3] = 100  # and as many in (5 ms, 10 ms]
    assert quantile(counts, 0.5) == pytest.approx(0.001)
    assert quantile(counts, 0.99) == pytest.approx(0.005 + 0.005 * 98 / 100)
    counts[-1] = 1000
    assert quantile(counts, 0.99) == math.inf
    assert milliseconds(None) == "" and milliseconds(math.inf) == "inf"
    assert [milliseconds(s) for s in (0.0004, 0.0123, 0.25)] == ["0.40", "12.3", "250"]
    assert [age(s) for s in (5, 245, 3 * 3600 + 125, 2 * 86400 + 3 * 3600)] == \
        ["5s", "4m05s", "3h02m", "2d03h"]
    row = ["p", "s", "a", "up", "enabled", "1", "0", "0", "", "inf", "61", "0"]
    assert status_row(row)[8:] == ["-", ">10000", "1m01s"]


def test_answers_by_action_and_latency_are_counted():
    with FakeBackend(action="REJECT no thanks") as rej, FakeBackend(action="OK") as ok:
        run = Run(rej.spec("REJ", prio=10), ok.spec("OK1", prio=20))
        try:
            for _ in range(3):
                assert run.ask(request())[0] == b"action=REJECT no thanks\n\n"
            rej.set_mode("answer", action="450 4.7.1 later", delay=0.03)
            assert run.ask(request())[0] == b"action=450 4.7.1 later\n\n"
        finally:
            run.close()
    table = run.health
    assert answers_by_action(table, 0) == [0, 0, 3, 0, 0, 1, 0, 0]
    assert answers_by_action(table, 1) == [0] * len(ACTIONS)
    counts = buckets(table, 0)
    assert sum(counts) == 4 == table.service_counter(0, ANSWERS)
    # the delayed answer is in a bucket over 25 ms, the sum counts it
    assert sum(counts[BOUNDS.index(0.025) + 1:]) >= 1
    assert 0.03 <= word(table, 0, LATENCY_SUM) < 30


def test_failures_are_counted_by_outcome():
    with FakeBackend(mode="garbage") as bad, FakeBackend(action="OK") as good:
        run = Run(f"DEAD=127.0.0.1:{refused_port()}:10", bad.spec("BAD", prio=20),
                  good.spec("GOOD", prio=30))
        try:
            assert run.ask(request())[0] == b"action=OK\n\n"
        finally:
            run.close()
    table = run.health
    assert failures_by_outcome(table, 0)[outcome.CONNECT_FAILED] == 1
    assert failures_by_outcome(table, 1)[outcome.INVALID] == 1
    assert sum(failures_by_outcome(table, 0).values()) == table.service_counter(0, FAILURES)
    assert set(failures_by_outcome(table, 2)) == {
        outcome.CONNECT_FAILED, outcome.RESET, outcome.CONNECT_TIMEOUT, outcome.ANSWER_TIMEOUT,
        outcome.CLOSED, outcome.INVALID, outcome.FAIL_ANSWER}


def test_state_changes_write_the_last_change_and_the_time_down():
    table = HealthTable(1, shared=False)
    made = word(table, 0, LAST_CHANGE)
    assert made == pytest.approx(time.time(), abs=5)
    assert down_seconds(table, 0, 100.0) == 0.0
    table.record_failure(0, 100.0, 2.0, 60.0)
    assert down_seconds(table, 0, 103.5) == pytest.approx(3.5)
    table.record_failure(0, 101.0, 2.0, 60.0)  # down already: still down since 100
    assert table.record_success(0, now=110.0)
    assert down_seconds(table, 0, 500.0) == pytest.approx(10.0)
    assert word(table, 0, LAST_CHANGE) >= made
    table.record_failure(0, 600.0, 2.0, 60.0)
    assert table.record_success(0, now=601.0)
    assert down_seconds(table, 0, 700.0) == pytest.approx(11.0)
    table.close()


def test_carry_over_keeps_a_staying_service_s_statistics():
    before = tuple(parse_service(s) for s in ("A=127.0.0.1:1", "B=127.0.0.1:2"))
    after = tuple(parse_service(s) for s in ("C=127.0.0.1:3", "B=127.0.0.1:2"))
    old = HealthTable(2, shared=False, workers=4)
    for k in range(STATS):
        old.f[old.stats + 1 * STATS + k] = float(k + 1)
    old.f[old.stats + ANSWERS_BY_ACTION] = 99.0  # A's: gone with A
    new = carry_over(old, before, after)
    assert list(new.f[new.stats + STATS:new.stats + 2 * STATS]) == [float(k + 1)
                                                                  for k in range(STATS)]
    assert answers_by_action(new, 0) == [0] * len(ACTIONS)
    assert new.workers == 4
    old.close()
    new.close()


def test_requests_in_flight_have_a_word_per_worker_slot():
    table = HealthTable(2, workers=3)
    assert len(table.f) * 8 == table_bytes(2, 3) == ((3 * SLOT) + 2 * STATS + 3 + 3 * 2 * 2) * 8
    table.set_in_flight(0, 4)
    table.set_in_flight(2, 5)
    table.set_in_flight(7, 100)  # no such slot: ignored
    assert table.requests_in_flight([0, 1, 2]) == 9
    assert table.requests_in_flight([0, 7]) == 4
    assert table.f[table.stats - 1] == 0.0 and table.f[table.stats + 2 * STATS - 1] == 0.0
    table.close()
    spawned = HealthTable(2, shared=False)  # spawn mode: no worker slots
    spawned.set_in_flight(0, 1)
    assert spawned.requests_in_flight([0]) == 0
    spawned.close()
