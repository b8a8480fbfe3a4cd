"""Hedged requests in process (hapolicy.request.hedge): a dispatcher of ours, FakeBackends on
127.0.0.1, many requests at once.

docs/health.md, "Hedged requests": when the first service has not answered within the hedge delay the
next one is asked too; the first good answer wins and is delivered once, the other exchange
is abandoned (its connection closed, not counted against its service); a failure of one of
the two while the other runs does not end the request; hedges stay under hedge-max; a fast
primary is never hedged; `pNN` follows the service's recent answer times.
"""

from __future__ import annotations

import time

from testkit.backends import FakeBackend
from testkit.dispatching import Client
from testkit.logs import KeptLog
from testkit.protocol import request

from hapolicy.base.eventloop import EventLoop
from hapolicy.base.protocol import RequestFramer
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.request.assembly import make_dispatcher
from hapolicy.request.hedge import MIN_SAMPLES, Latency, warnings
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import ANSWERS, FAILURES, HEDGE_WON, HEDGED, UP


class Pool:
    """A dispatcher of a pool of services, asked many requests at once."""

    def __init__(self, *specs: str, log_requests: bool = False, **settings) -> None:
        settings.setdefault("sticky_instance", False)
        self.config = PoolConfig(services=tuple(parse_service(s) for s in specs), **settings)
        self.loop = EventLoop()
        self.table = HealthTable(len(specs), shared=False)
        self.log = KeptLog()
        self.dispatcher = make_dispatcher(self.loop, self.config, self.table, self.log,
                                          log_requests=log_requests)

    def ask_many(self, count: int, at_once: int = 20) -> tuple[list[bytes], list[float]]:
        """count requests, at_once of them in flight: (answers, seconds each took)."""
        answers: list[bytes] = []
        took: list[float] = []
        for start in range(0, count, at_once):
            batch = []
            for n in range(start, min(count, start + at_once)):
                client = Client()
                [framed] = RequestFramer().feed(request(recipient=f"r{n}@example.net"))
                batch.append((client, time.monotonic()))
                self.dispatcher.submit(framed, client)
            deadline = time.monotonic() + 30
            while any(not c.answers for c, _ in batch):
                assert time.monotonic() < deadline, "never answered"
                self.loop.run_once(0.05)
                for client, began in batch:
                    if client.answers and len(client.answers) == 1 and not hasattr(client, "t"):
                        client.t = time.monotonic() - began  # type: ignore[attr-defined]
            for client, _ in batch:
                answers.extend(client.answers)
                took.append(client.t)  # type: ignore[attr-defined]
        for _ in range(5):
            self.loop.run_once(0.01)
        assert self.dispatcher.in_flight == 0
        return answers, took

    def counter(self, word: int) -> int:
        return self.table.counter(word)

    def close(self) -> None:
        self.dispatcher.close()
        self.loop.close()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_hedging_cuts_the_tail_of_a_primary_slow_on_a_tenth_of_requests():
    """The same backends, without and then with a hedge at 50 ms: the slow tenth (500 ms)
    is answered by the second service; the p99 falls well below the slow answers; the
    second service's extra load stays under hedge-max; the primary is never blamed."""
    count = 200
    results = {}
    for hedge in ("", "0.05"):
        with FakeBackend(action="OK primary", slow_every=10, slow_delay=0.5) as primary, \
                FakeBackend(action="OK second") as second:
            pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge=hedge,
                        hedge_max=15, log_requests=True)
            try:
                answers, took = pool.ask_many(count)
                assert len(answers) == count  # one answer each
                results[hedge] = (p99(took), pool.counter(HEDGED), pool.counter(HEDGE_WON),
                                  len(second.requests), answers.count(b"action=OK second\n\n"))
                assert pool.table.service_counter(0, FAILURES) == 0
                assert pool.table.state(0, time.monotonic()) == UP
                if hedge:
                    assert " hedged=S" in pool.log.text("info")
            finally:
                pool.close()
    slow_p99, hedges, won, second_load, by_second = results[""]
    assert (hedges, won, second_load, by_second) == (0, 0, 0, 0)
    assert slow_p99 >= 0.5
    fast_p99, hedges, won, second_load, by_second = results["0.05"]
    assert count // 10 <= hedges <= count * 15 // 100  # every slow one, under hedge-max
    assert second_load == hedges and won == by_second >= count // 10
    assert fast_p99 / slow_p99 < 0.5, (fast_p99, slow_p99)


def test_a_uniformly_fast_primary_is_never_hedged():
    with FakeBackend(action="OK primary") as primary, FakeBackend(action="OK second") as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge="0.5",
                    hedge_max=50)
        try:
            answers, _ = pool.ask_many(200)
            assert answers == [b"action=OK primary\n\n"] * 200
            assert pool.counter(HEDGED) == 0 and second.requests == []
        finally:
            pool.close()


def test_hedges_never_pass_hedge_max():
    """A primary always slow: the bucket (hedge-max/100 of a token per request, none at the
    start) allows hedge-max percent of the requests, no more."""
    with FakeBackend(action="OK primary", delay=0.2) as primary, \
            FakeBackend(action="OK second") as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge="0.01",
                    hedge_max=10)
        try:
            pool.ask_many(100, at_once=25)
            assert 1 <= pool.counter(HEDGED) <= 10
            assert len(second.requests) == pool.counter(HEDGED)
        finally:
            pool.close()


def test_the_loser_is_abandoned_its_connection_closed_and_not_counted():
    with FakeBackend(action="OK primary", delay=1.0) as primary, \
            FakeBackend(action="OK second") as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge="0.05",
                    hedge_max=100)
        try:
            pool.dispatcher.hedger.tokens = 1.0
            answers, _ = pool.ask_many(1)
            assert answers == [b"action=OK second\n\n"]
            deadline = time.monotonic() + 5
            while primary.open_connections and time.monotonic() < deadline:
                time.sleep(0.01)
            assert primary.open_connections == 0  # closed by us
            assert pool.table.service_counter(0, FAILURES) == 0
            assert pool.table.service_counter(1, ANSWERS) == 1
            assert pool.counter(HEDGED) == pool.counter(HEDGE_WON) == 1
        finally:
            pool.close()


def test_a_hedge_that_fails_leaves_the_first_attempt_to_answer():
    with FakeBackend(action="OK primary", delay=0.3) as primary, \
            FakeBackend(mode="garbage") as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge="0.05",
                    hedge_max=100, log_requests=True)
        try:
            pool.dispatcher.hedger.tokens = 1.0
            answers, _ = pool.ask_many(1)
            assert answers == [b"action=OK primary\n\n"]
            assert pool.table.service_counter(1, FAILURES) == 1
            line = pool.log.text("info")
            assert 'failed="S: answer without action' in line and " hedged=S" in line, line
            assert pool.counter(HEDGE_WON) == 0
        finally:
            pool.close()


def test_a_first_attempt_that_fails_leaves_the_hedge_to_answer():
    with FakeBackend(mode="close_after_request", delay=0.2) as primary, \
            FakeBackend(action="OK second", delay=0.3) as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge="0.05",
                    hedge_max=100)
        try:
            pool.dispatcher.hedger.tokens = 1.0
            answers, took = pool.ask_many(1)
            assert answers == [b"action=OK second\n\n"]  # one answer: the hedge's
            assert took[0] >= 0.3
            assert pool.table.service_counter(0, FAILURES) == 1
            assert pool.counter(HEDGE_WON) == 1
            assert len(primary.requests) == len(second.requests) == 1  # no third attempt
        finally:
            pool.close()


def test_a_hedge_on_a_service_taken_down_elsewhere_is_abandoned_and_the_first_answers():
    with FakeBackend(action="OK primary", delay=0.5) as primary, \
            FakeBackend(mode="silent") as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2, timeout=5),
                    hedge="0.05", hedge_max=100, log_requests=True)
        try:
            pool.dispatcher.hedger.tokens = 1.0
            client = Client()
            [framed] = RequestFramer().feed(request())
            pool.dispatcher.submit(framed, client)
            deadline = time.monotonic() + 10
            while not second.requests:  # the hedge asked S, which never answers
                assert time.monotonic() < deadline
                pool.loop.run_once(0.01)
            pool.table.record_failure(1, time.monotonic(), 60.0, 60.0)  # another process
            while not client.answers:
                assert time.monotonic() < deadline
                pool.loop.run_once(0.01)
            assert client.answers == [b"action=OK primary\n\n"]
            line = pool.log.text("info")
            assert 'failed="S: marked down while waiting"' in line and " hedged=S" in line, line
            assert pool.table.service_counter(1, FAILURES) == 0  # abandoned: not counted
        finally:
            pool.close()


def test_a_percentile_hedge_follows_the_service_answer_times():
    with FakeBackend(action="OK primary") as primary, FakeBackend(action="OK second") as second:
        pool = Pool(primary.spec("P", prio=1), second.spec("S", prio=2), hedge="p90",
                    hedge_max=100)
        try:
            pool.ask_many(MIN_SAMPLES - 1, at_once=1)
            assert pool.counter(HEDGED) == 0  # no percentile before MIN_SAMPLES answers
            # fast answers: a small p90 (about a tenth of them, the slowest, may be hedged)
            pool.ask_many(MIN_SAMPLES + 1, at_once=1)
            assert 0 < pool.dispatcher.hedger.latency[0].value < 0.1
            before = pool.counter(HEDGED)
            primary.set_mode("answer", delay=0.5)
            answers, took = pool.ask_many(1)
            assert answers == [b"action=OK second\n\n"] and took[0] < 0.5
            assert pool.counter(HEDGED) == before + 1
        finally:
            pool.close()


def test_latency_ring_needs_samples_then_gives_the_percentile():
    ring = Latency(90.0)
    for n in range(MIN_SAMPLES - 1):
        ring.add(n / 1000)
    assert ring.value == -1.0
    for n in range(MIN_SAMPLES - 1, 100 * MIN_SAMPLES):
        ring.add((n % 100) / 1000)
    assert 0.085 <= ring.value <= 0.095


def test_check_config_warns_of_hedging_a_pool_with_state():
    pool = PoolConfig(name="grey", services=(parse_service("A=127.0.0.1:1"),), hedge="0.1",
                      balance="hash:sender")
    [line] = warnings(DaemonConfig(pools=(pool,)))
    assert line.startswith("pool grey: hedge with balance = hash:sender and "
                           "sticky-instance = yes: ")
    for other in (PoolConfig(services=pool.services, hedge="0.1", sticky_instance=False),
                  PoolConfig(services=pool.services, balance="hash:sender")):
        assert warnings(DaemonConfig(pools=(other,))) == []
