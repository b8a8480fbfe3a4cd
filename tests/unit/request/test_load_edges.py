"""Edges of least-latency and max-inflight: a service the hedge beats is learnt slow; an exception
in a waiter's has_room costs that waiter alone; a slot freed goes to the first in line, not to a
newcomer; a shadow's copies count against the shadow pool's max-inflight in the shared words; a
bad load word of another worker never makes a pick raise."""

from __future__ import annotations

import time

from testkit.backends import FakeBackend
from testkit.dispatching import Run
from testkit.protocol import request

from hapolicy.tables.layout import EWMA, SLOT
from hapolicy.tables.load import answer_time


def test_a_hedged_slow_service_is_learnt_slow():
    """With hedge and least-latency, a slow service whose requests the hedge wins is cancelled;
    the time it ran is still learnt, so it is not taken for the fastest service."""
    with FakeBackend(name="FAST") as fast, FakeBackend(name="SLOW", delay=0.3) as slow:
        run = Run(fast.spec(), slow.spec(), balance="least-latency", sticky_instance=False,
                  hedge="0.02", hedge_max=100.0)
        try:
            for _ in range(60):
                assert run.ask(request())[0] == b"action=DUNNO\n\n"
            now = time.monotonic()
            slow_ms = answer_time(run.health, 1, now) * 1000
            fast_ms = answer_time(run.health, 0, now) * 1000
            slow_firsts = len(slow.requests)
        finally:
            run.close()
    assert run.health.f[1 * SLOT + EWMA] > 0.0 and slow_ms > fast_ms, (slow_ms, fast_ms)
    assert slow_firsts < 20, slow_firsts  # of 60 requests


class Waiter:
    """A waiter of the line (job.Job's part): has_room raises or says `room`."""

    def __init__(self, raises: bool = False) -> None:
        self.answered = False
        self.raises = raises
        self.resumed = 0
        self.timed_out = 0

    def has_room(self) -> bool:
        if self.raises:
            raise ValueError("cannot convert float NaN to integer")  # Selector.limit, a NaN ramp
        return True

    def resume(self, now: float) -> None:
        self.resumed += 1
        self.answered = True

    def queued_out(self, now: float) -> None:
        self.timed_out += 1
        self.answered = True


def test_an_exception_in_has_room_costs_one_waiter_not_the_whole_line():
    """An exception in a waiter's has_room (a NaN slow-start word makes Selector.limit raise)
    makes that waiter leave as if its wait ran out; those behind it are served, and the poll
    timer is armed again."""
    from hapolicy.base.eventloop import EventLoop
    from hapolicy.request.waiting import WaitingLine

    loop = EventLoop()
    errors: list[Exception] = []
    loop.on_error = errors.append
    line = WaitingLine(loop)
    bad, good = Waiter(raises=True), Waiter()
    assert line.add(bad, time.monotonic() + 0.05) and line.add(good, time.monotonic() + 0.05)
    started = time.monotonic()
    while time.monotonic() - started < 0.2:
        loop.run_once(0.01)
    line.close()
    loop.close()
    assert good.resumed or good.timed_out, "the waiter behind was never served"
    assert bad.answered or bad.timed_out, "the waiter whose has_room raised was dropped"


def test_a_newcomer_does_not_take_the_slot_a_waiter_waits_for():
    """A slot another worker frees goes to the request in line for it, not to a newcomer
    submitted before the line's next poll."""
    from testkit.dispatching import Client
    from testkit.logs import KeptLog

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.protocol import RequestFramer
    from hapolicy.config.parsers import parse_service
    from hapolicy.config.records import PoolConfig
    from hapolicy.request.dispatch import Dispatcher
    from hapolicy.tables.health import HealthTable

    with FakeBackend(name="PG", delay=0.2) as pg:
        config = PoolConfig(services=(parse_service(pg.spec()),),
                            balance="hash:client_address", max_inflight=1, queue_timeout=5.0)
        loop = EventLoop()
        table = HealthTable(1, workers=2)
        d = Dispatcher(loop, config, table, KeptLog(), load_slot=0)
        other = d.load.slots[1]  # worker 1's in-flight word for the service
        try:
            table.f[other] = 1.0  # worker 1 has the one slot
            [first] = RequestFramer().feed(request())
            waiter = Client()
            d.submit(first, waiter)
            assert len(d.waiting) == 1
            table.f[other] = 0.0  # worker 1's request ended: the slot is free
            [second] = RequestFramer().feed(request())
            d.submit(second, Client())  # a newcomer, before the line's next poll
            # the waiter has the slot; the newcomer waits behind
            assert [job.client for job, _ in d.waiting.line] != [waiter], \
                "the newcomer took the slot; the waiter still waits"
            assert len(d.waiting) == 1
        finally:
            d.close()
            loop.close()
            table.close()


def test_a_shadow_copy_counts_against_the_shadow_pools_max_inflight():
    """A copy in flight to a shadow pool counts in the worker's load words, where every process
    reading the shadow pool's max-inflight sees it."""
    from testkit.dispatching import Client
    from testkit.logs import KeptLog

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.protocol import RequestFramer
    from hapolicy.config.parsers import parse_service
    from hapolicy.config.records import PoolConfig
    from hapolicy.request.assembly import make_dispatcher
    from hapolicy.request.shadow import make_mirrors
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.load import ServiceLoad

    with FakeBackend(name="REAL") as real, FakeBackend(name="PG", delay=0.5) as pg:
        live = PoolConfig(name="live", services=(parse_service(real.spec()),),
                          shadow="grey", sticky_instance=False)
        grey = PoolConfig(name="grey", services=(parse_service(pg.spec()),),
                          max_inflight=1, sticky_instance=False)
        loop = EventLoop()
        tables = {p.name: HealthTable(1, workers=2) for p in (live, grey)}
        log = KeptLog()
        dispatchers = {p.name: make_dispatcher(loop, p, tables[p.name], log, load_slot=0)
                       for p in (live, grey)}
        mirrors = make_mirrors(loop, [live, grey], dispatchers, tables, log, lambda: 0)
        try:
            client = Client()
            [framed] = RequestFramer().feed(request())
            dispatchers["live"].submit(framed, client)
            started = time.monotonic()
            while not pg.requests and time.monotonic() - started < 5:
                loop.run_once(0.01)
            assert pg.requests, "the copy never reached the shadow"
            seen = ServiceLoad(tables["grey"]).in_flight(0)  # as the monitor and workers see
        finally:
            for d in (*dispatchers.values(), *mirrors):
                d.close()
            loop.close()
            for t in tables.values():
                t.close()
    assert seen == 1, "the copy in flight to PG is counted nowhere another process looks"


def test_a_bad_load_word_of_another_worker_does_not_raise_in_the_pick():
    """A negative in-flight word of another worker (a bad word: unprivileged workers write the
    table) is read as none: the least-latency pick never divides by zero."""
    from hapolicy.config.parsers import parse_service
    from hapolicy.request.selection import Selector
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.load import ServiceLoad

    services = [parse_service("A=h:1"), parse_service("B=h:2")]
    table = HealthTable(2, workers=2)
    try:
        load = ServiceLoad(table, 0)
        chosen = Selector(services, table, load=load, least_latency=True)
        table.f[load.slots[1]] = -1.0  # worker 1's in-flight word for A
        now = time.monotonic()
        for _ in range(50):
            assert chosen.pick(0, now) in (0, 1)
    finally:
        table.close()
