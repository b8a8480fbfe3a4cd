"""Slow start (selection.py): a service back in the rotation counts in round robin with a part
of its weight that grows over `slowstart` seconds, from MIN_SHARE to all of it; without
slowstart, or for a service that never came back, nothing changes. The clock is the module's
time.monotonic, replaced here.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from hapolicy.config.parsers import parse_service
from hapolicy.request.selection import MIN_SHARE, Selector
from hapolicy.tables.health import HealthTable, peers


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock(1000.0)
    monkeypatch.setattr(time, "monotonic", clock)  # selection's and health's clock
    return clock


def pool(slowstart: float, *specs: str) -> tuple[Selector, HealthTable]:
    services = [parse_service(s) for s in specs or ("A=h:1", "B=h:2")]
    table = HealthTable(len(services), shared=False)
    return Selector(services, table, slowstart=slowstart), table


def picks_over(selector: Selector, clock: Clock, start: float, end: float,
               count: int) -> Counter:
    """count picks spread evenly over [start, end) seconds of the clock."""
    got: Counter = Counter()
    for k in range(count):
        clock.now = 1000.0 + start + (end - start) * k / count
        got[selector.services[selector.pick(0, clock.now)].name] += 1
    return got


def back(selector: Selector, table: HealthTable, i: int) -> None:
    """Service i comes back into the rotation now (as enable, a check or a probe does)."""
    table.rejoin(i, peers(selector.services, i))


def test_a_service_back_gets_under_a_quarter_of_its_share_at_first_and_all_after(clock):
    selector, table = pool(10.0)
    picks_over(selector, clock, -5, 0, 100)  # both up and even before
    back(selector, table, 1)
    first = picks_over(selector, clock, 0, 2, 400)
    assert first["B"] < 0.25 * 200, first  # its share is half: under a quarter of it
    assert first["B"] >= MIN_SHARE * 200 * 0.5, first  # but not nothing
    picks_over(selector, clock, 2, 10, 400)
    after = picks_over(selector, clock, 10, 12, 400)
    assert abs(after["B"] - 200) <= 20, after


def test_the_share_grows_along_the_way(clock):
    selector, table = pool(10.0)
    back(selector, table, 1)
    shares = [picks_over(selector, clock, t, t + 1, 200)["B"] for t in range(0, 10, 3)]
    assert shares == sorted(shares) and shares[0] < shares[-1], shares


def test_without_slowstart_or_never_back_the_split_is_the_weights(clock):
    for slowstart, comes_back in ((0.0, True), (10.0, False)):
        selector, table = pool(slowstart, "A=h:1:10:2", "B=h:2:10:1")
        if comes_back:
            back(selector, table, 1)
        got = picks_over(selector, clock, 0, 1, 300)
        assert got == {"A": 200, "B": 100}, (slowstart, got)


def test_weights_hold_in_the_ramp(clock):
    selector, table = pool(10.0, "A=h:1:10:2", "B=h:2:10:2", "C=h:3:10:1")
    back(selector, table, 0)
    picks_over(selector, clock, 0, 10, 500)
    after = picks_over(selector, clock, 10, 11, 500)
    assert all(abs(after[n] - want) <= 20 for n, want in (("A", 200), ("B", 200), ("C", 100)))
