"""least-latency and max-inflight inside one process: the peak-EWMA (load.py) jumps to a slower
answer and decays; a failure or a fail-answer hit counts as the service's timeout, so a service
that fails fast, though up, is next to never picked; equal answer times split by weight, a 40x
slower service gets next to nothing and a 2x slower one a fifth; a slot claimed over the limit
is given back, whoever claims it, and a new worker's slot starts empty; max-inflight grows over a
slow start; the waiting line is bounded.
"""

from __future__ import annotations

import time
from collections import Counter

from testkit.backends import FakeBackend
from testkit.dispatching import Run
from testkit.protocol import request

from hapolicy.base.eventloop import EventLoop
from hapolicy.config.parsers import parse_service
from hapolicy.request.selection import Selector
from hapolicy.request.waiting import MAX_WAITING, WaitingLine
from hapolicy.tables.health import HealthTable, peers
from hapolicy.tables.layout import EWMA, SLOT
from hapolicy.tables.load import DECAY_SECONDS, ServiceLoad, answer_time, observe


def selector(*specs: str, **settings) -> tuple[Selector, HealthTable]:
    services = [parse_service(s) for s in specs]
    table = HealthTable(len(services), shared=False)
    load = ServiceLoad(table)
    return Selector(services, table, load=load, least_latency=True, **settings), table


def shares(chosen: Selector, count: int) -> Counter:
    now = time.monotonic()
    return Counter(chosen.services[chosen.pick(0, now)].name for _ in range(count))


def test_the_peak_ewma_takes_a_slower_answer_at_once_and_decays_after():
    table = HealthTable(1, shared=False)
    observe(table, 0, 0.010, 100.0)
    assert table.f[EWMA] == 0.010
    observe(table, 0, 0.001, 100.0)  # a faster one pulls it down by a tenth of the gap
    assert abs(table.f[EWMA] - 0.0091) < 1e-9
    observe(table, 0, 0.050, 100.0)
    assert table.f[EWMA] == 0.050  # a slower one is the peak at once
    assert answer_time(table, 0, 100.0 + 3 * DECAY_SECONDS) < 0.050 / 2  # unread, it decays
    observe(table, 0, 0.001, 100.0 + 3 * DECAY_SECONDS)  # and an answer then starts from there
    assert table.f[EWMA] < 0.050 / 2


def test_a_service_failing_fast_counts_as_slow_and_is_next_to_never_picked():
    with FakeBackend(name="GOOD") as good, \
            FakeBackend(name="BAD", action="451 4.3.5 Server configuration problem") as bad:
        run = Run(good.spec(), bad.spec(timeout=3), balance="least-latency",
                  sticky_instance=False, fail_answer="^451")
        try:
            while not bad.requests:
                assert run.ask(request())[0] == b"action=DUNNO\n\n"
            assert run.health.f[1 * SLOT + EWMA] == 3.0  # its timeout, not its 1 ms
            run.health.record_success(1)  # up again (say, a check found it answering)
            got = shares(run.dispatcher.selector, 2000)
        finally:
            run.close()
    assert got["BAD"] < 0.05 * 2000, got


def test_equal_answer_times_split_by_weight_and_a_slow_one_gets_a_few_percent():
    chosen, table = selector("A=h:1:10:2", "B=h:2:10:1")
    now = time.monotonic()
    observe(table, 0, 0.002, now)
    observe(table, 1, 0.002, now)
    got = shares(chosen, 6000)
    assert abs(got["A"] / 6000 - 2 / 3) < 0.03, got
    chosen, table = selector("FAST=h:1", "SLOW=h:2")
    observe(table, 0, 0.001, now)
    observe(table, 1, 0.040, now)
    got = shares(chosen, 6000)
    assert got["SLOW"] / 6000 < 0.005, got  # about 1/1601: (1/40)^2 against 1
    chosen, table = selector("FAST=h:1", "SLOWER=h:2")
    observe(table, 0, 0.001, now)
    observe(table, 1, 0.002, now)
    got = shares(chosen, 6000)
    assert 0.15 < got["SLOWER"] / 6000 < 0.25, got  # 1/5: (1/2)^2 against 1


def test_three_services_each_get_picked_and_the_slow_least():
    chosen, table = selector("A=h:1", "B=h:2", "C=h:3")
    now = time.monotonic()
    for i, seconds in enumerate((0.001, 0.001, 0.003)):
        observe(table, i, seconds, now)
    got = shares(chosen, 6000)
    # C is in two draws of three and wins a tenth of them (1/9 against 1): about 1/15 of all
    assert got["C"] < got["A"] / 5 and got["C"] < got["B"] / 5 and got["C"] > 50, got


def test_requests_in_flight_weigh_in_the_cost():
    chosen, table = selector("A=h:1", "B=h:2")
    now = time.monotonic()
    observe(table, 0, 0.002, now)
    observe(table, 1, 0.002, now)
    for _ in range(9):
        assert chosen.load.claim(0, 0)
    got = shares(chosen, 4000)
    assert got["A"] < got["B"] / 5, got  # 10x its cost


def test_a_slot_over_the_limit_is_given_back_whoever_claims_it():
    table = HealthTable(2, workers=3)
    first, second, monitor = ServiceLoad(table, 0), ServiceLoad(table, 2), ServiceLoad(table)
    assert first.claim(1, 2) and second.claim(1, 2)
    assert not first.claim(1, 2) and not second.claim(1, 2)  # nothing kept over the limit
    assert monitor.in_flight(1) == 2 and monitor.in_flight(0) == 0
    first.end(1)
    assert second.claim(1, 2) and monitor.in_flight(1) == 2
    first.end(1)  # it has none left: no count goes below 0
    assert monitor.in_flight(1) == 2
    second.queue(1, 1)
    assert monitor.queued(1) == 1
    table.clear_slot(2)  # a new worker in slot 2: the dead one's requests are gone
    assert monitor.in_flight(1) == 0 and monitor.queued(1) == 0
    private = ServiceLoad(table, 7)  # no such slot (the monitor's ask): words of its own,
    assert first.claim(0, 1) and not private.claim(0, 1)  # which see the workers' slots
    first.end(0)
    assert private.claim(0, 1) and first.in_flight(0) == 0  # and only it sees
    table.close()


def test_max_inflight_grows_over_a_slow_start(monkeypatch):
    services = [parse_service("A=h:1"), parse_service("B=h:2")]
    table = HealthTable(2, shared=False)
    chosen = Selector(services, table, slowstart=10.0, load=ServiceLoad(table),
                      max_inflight=20)
    assert chosen.limit(0) == 20  # never came back: all of it
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    table.rejoin(0, peers(services, 0))
    assert chosen.limit(0) == 1  # a twentieth of 20
    now[0] += 5.0
    assert chosen.limit(0) == 10
    now[0] += 5.0
    assert chosen.limit(0) == 20
    assert Selector(services, table, max_inflight=0).limit(0) == 0  # no limit


class Waiter:
    answered = False

    def has_room(self) -> bool:
        return False


def test_the_waiting_line_is_bounded():
    loop = EventLoop()
    line = WaitingLine(loop)
    waiters = [Waiter() for _ in range(MAX_WAITING + 1)]
    assert all(line.add(w, time.monotonic() + 60) for w in waiters[:-1])
    assert not line.add(waiters[-1], time.monotonic() + 60)
    line.close()
    loop.close()


def test_only_the_slots_in_use_are_summed():
    """A table has room for many worker slots; the load's readers sum those below the bound
    the master raises as it starts workers (0: all of them)."""
    table = HealthTable(1, workers=8)
    first, reader = ServiceLoad(table, 0), ServiceLoad(table)
    table.f[reader.slots[5]] = 3.0  # a word of slot 5, where no worker was started
    assert first.claim(0, 0) and reader.in_flight(0) == 4  # bound 0: every slot
    table.clear_slot(0, used=True)
    table.clear_slot(1, used=True)
    assert first.claim(0, 0) and reader.in_flight(0) == 1  # slots 0 and 1 only
    table.clear_slot(5, used=True)  # a worker starts in slot 5: its words count from now
    table.f[reader.slots[5]] = 2.0
    assert reader.in_flight(0) == 3 and first.in_flight(0) == 3
    late = ServiceLoad(table, 6)  # a slot above the bound: its own words still count for it
    assert late.claim(0, 0) and late.in_flight(0) == 4 and reader.in_flight(0) == 3
    table.close()
