"""Shadow pools in process (hapolicy.request.shadow): a real pool's dispatcher and its shadow's mirror
dispatcher on one event loop of ours, FakeBackends on 127.0.0.1.

docs/health.md, "Shadow pools": a copy of each answered request goes to the shadow after the real
answer; verdicts are compared by their first word; a shadow's default answer is a failure;
`shadow-share` picks an exact, evenly spread share; copies in flight are bounded per worker
and dropped (counted) beyond it or while the worker is busy; nothing of the shadow reaches
the client, whose answers and latency stay what they are without it.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import pytest
from testkit.backends import FakeBackend
from testkit.dispatching import Client
from testkit.logs import KeptLog
from testkit.ports import refused_port
from testkit.protocol import request

from hapolicy.base.eventloop import EventLoop
from hapolicy.base.protocol import RequestFramer
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.request import shadow as shadow_module
from hapolicy.request.assembly import make_dispatcher
from hapolicy.request.shadow import MAX_IN_FLIGHT, make_mirrors, verdict
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    REQUESTS,
    SHADOW_AGREE,
    SHADOW_DISAGREE,
    SHADOW_DROPPED,
    SHADOW_FAILED,
    UP,
)

WORDS = {"agree": SHADOW_AGREE, "disagree": SHADOW_DISAGREE, "failed": SHADOW_FAILED,
         "dropped": SHADOW_DROPPED}


class Pools:
    """Pool `real` (its shadow `next` unless shadow=""), pool `plain` on the same services
    without a shadow, and `next`: dispatchers and a mirror as a worker makes them."""

    def __init__(self, real: list[str], shadow: list[str], share: float = 100.0,
                 log_requests: bool = False, **settings) -> None:
        self.loop = EventLoop()
        self.log = KeptLog()
        services = tuple(parse_service(s) for s in real)
        self.configs = [
            PoolConfig(name="real", services=services, shadow="next", shadow_share=share,
                       **settings),
            PoolConfig(name="plain", services=services, **settings),
            PoolConfig(name="next", services=tuple(parse_service(s) for s in shadow)),
        ]
        self.tables = {c.name: HealthTable(len(c.services), shared=False) for c in self.configs}
        self.dispatchers = {c.name: make_dispatcher(self.loop, c, self.tables[c.name], self.log,
                                                    log_requests=log_requests and
                                                    c.name != "next")
                            for c in self.configs}
        self.busy = 0
        self.mirrors = make_mirrors(self.loop, self.configs, self.dispatchers, self.tables,
                                    self.log, lambda: self.busy)
        self.mirror = self.dispatchers["real"].shadow
        self.most_in_flight = 0

    def counts(self) -> dict[str, int]:
        return {name: self.tables["real"].counter(word) for name, word in WORDS.items()}

    def ask(self, data: bytes, pool: str = "real") -> tuple[bytes, float]:
        """(the one answer, seconds from submit to deliver)."""
        client = Client()
        [framed] = RequestFramer().feed(data)
        started = time.monotonic()
        self.dispatchers[pool].submit(framed, client)
        while not client.answers:
            assert time.monotonic() - started < 40, "never answered"
            self.loop.run_once(0.05)
        took = time.monotonic() - started
        self.most_in_flight = max(self.most_in_flight, self.mirror.budget.in_flight)
        return client.answers[0], took

    def settle(self, copies: int, timeout: float = 20.0) -> None:
        """Run the loop until `copies` copies have a result (and none is in flight)."""
        deadline = time.monotonic() + timeout
        while sum(self.counts().values()) < copies or self.mirror.budget.in_flight:
            assert time.monotonic() < deadline, (self.counts(), self.mirror.budget.in_flight)
            self.loop.run_once(0.05)

    def close(self) -> None:
        for dispatcher in [*self.dispatchers.values(), *self.mirrors]:
            dispatcher.close()
        self.loop.close()


@pytest.fixture
def pools():
    made: list[Pools] = []

    def make(*args, **kwargs) -> Pools:
        made.append(Pools(*args, **kwargs))
        return made[-1]

    yield make
    for made_pools in made:
        made_pools.close()


def test_verdict_is_the_first_word_of_the_action_lowercased():
    assert verdict(b"action=DEFER_IF_PERMIT see http://x/ for 300 seconds\n\n") == \
        b"defer_if_permit"
    assert verdict(b"action=dunno\n\n") == b"dunno"
    assert verdict(b"action=\n\n") == b""


def test_a_shadow_that_disagrees_on_a_known_share_is_counted_exactly(pools):
    """share 50: the 2nd, 4th, ... answered requests are copied; the shadow echoes a verdict
    that disagrees on every 4th request (0-based 3, 7, ...), which are all copied ones."""
    with FakeBackend(action="DUNNO") as real, \
            FakeBackend(mode="echo", attr="x_verdict") as shadow:
        run = pools([real.spec("R")], [shadow.spec("S")], share=50)
        sent = {}
        for n in range(100):
            sent[f"t{n}"] = "DEFER_IF_PERMIT greylisted" if n % 4 == 3 else "dunno ok"
            answer, _ = run.ask(request(x_verdict=sent[f"t{n}"], instance=f"t{n}"))
            assert answer == b"action=DUNNO\n\n"  # the real answer, whatever the shadow says
        run.settle(50)
        # the copies as a multiset, each request's own: copies in flight at once reach the
        # shadow on connections of their own, in any order
        copies = Counter((r["instance"], r["x_verdict"]) for r in shadow.requests)
        expected = Counter((f"t{n}", sent[f"t{n}"]) for n in range(1, 100, 2))
        assert not copies - expected
        # a copy is dropped only when MAX_IN_FLIGHT wait on the shadow (a loaded machine):
        # then the counts are those of the copies the shadow got, and the drops the rest
        dropped = 50 - sum(copies.values())
        assert dropped == 0 or run.most_in_flight >= MAX_IN_FLIGHT, run.most_in_flight
        disagree = sum(n for (_, said), n in copies.items() if said.startswith("DEFER"))
        assert run.counts() == {"agree": 50 - dropped - disagree, "disagree": disagree,
                                "failed": 0, "dropped": dropped}
        assert run.tables["next"].counter(REQUESTS) == 50 - dropped  # the shadow pool's own
        lines = [m for m in run.log.text("info").splitlines() if m.startswith("shadow ")]
        # without -l: the first disagreement at once, then at most one line a second
        assert 1 <= len(lines) <= 5, lines
        assert lines[0].startswith("shadow pool=real shadow=next result=disagree "
                                   "client=mail.example.org[192.0.2.10] helo=<mail.example.org> "
                                   "sender=<a@example.org> recipient=<b@example.net> "
                                   "action=DUNNO shadow_action=DEFER_IF_PERMIT greylisted "
                                   "delay="), lines[0]


def test_with_logging_every_copy_has_its_line(pools):
    with FakeBackend(action="OK") as real, FakeBackend(action="REJECT no") as shadow:
        run = pools([real.spec("R")], [shadow.spec("S")], share=100, log_requests=True)
        for n in range(4):
            run.ask(request(instance=f"t{n}"))
        run.settle(4)
        lines = [m for m in run.log.text("info").splitlines() if m.startswith("shadow ")]
        assert len(lines) == 4 and all(" result=disagree " in line for line in lines)
        real_lines = [m for m in run.log.text("info").splitlines() if m.startswith("pool=real")]
        assert len(real_lines) == 4  # the real request's own line, as before


@pytest.mark.parametrize("kind", ["dead", "slow", "garbage"])
def test_a_bad_shadow_changes_neither_the_answers_nor_the_latency(pools, kind):
    """Pool real (with the bad shadow) and pool plain (without) are asked in turn on the same
    backend: the same answers; median latencies within a generous ratio; copies in flight
    never above MAX_IN_FLIGHT (the memory bound), the rest dropped and counted."""
    with FakeBackend(mode="echo", attr="recipient") as real, \
            FakeBackend(mode="silent" if kind == "slow" else "garbage") as bad:
        spec = f"S=127.0.0.1:{refused_port()}" if kind == "dead" else bad.spec("S")
        if kind == "slow":
            bad.set_mode("answer", action="DUNNO", delay=10.0)
        run = pools([real.spec("R")], [spec])
        took: dict[str, list[float]] = {"real": [], "plain": []}
        for n in range(300):
            for pool in ("real", "plain"):
                rcpt = f"{pool}{n}@example.net"
                answer, seconds = run.ask(request(recipient=rcpt, instance=f"{pool}{n}"), pool)
                assert answer == f"action={rcpt}\n\n".encode()
                took[pool].append(seconds)
        assert run.most_in_flight <= MAX_IN_FLIGHT
        run.settle(300)
        counts = run.counts()
        assert counts["agree"] == counts["disagree"] == 0
        assert counts["failed"] + counts["dropped"] == 300, counts
        if kind == "slow":  # 32 wait out the copy's timeout, the others find no room
            assert run.most_in_flight == MAX_IN_FLIGHT and counts["dropped"] > 0
            # cut at the copy's own deadline: the shadow pool's service is not marked down
            assert run.tables["next"].state(0, time.monotonic()) == UP
        ratio = statistics.median(took["real"]) / statistics.median(took["plain"])
        assert ratio < 3.0, (ratio, statistics.median(took["plain"]))


def test_copies_are_dropped_while_the_worker_is_busy(pools, monkeypatch):
    with FakeBackend(action="OK") as real, FakeBackend(action="OK") as shadow:
        run = pools([real.spec("R")], [shadow.spec("S")])
        run.busy = shadow_module.BUSY + 1
        for n in range(5):
            run.ask(request(instance=f"t{n}"))
        run.busy = 0
        run.ask(request(instance="t5"))
        run.settle(6)
        assert run.counts() == {"agree": 1, "disagree": 0, "failed": 0, "dropped": 5}
        assert len(shadow.requests) == 1


def test_default_answers_are_not_copied(pools):
    with FakeBackend(action="OK") as shadow:
        run = pools([f"R=127.0.0.1:{refused_port()}"], [shadow.spec("S")])
        assert run.ask(request())[0] == b"action=dunno\n\n"
        for _ in range(5):
            run.loop.run_once(0.01)
        assert sum(run.counts().values()) == 0 and shadow.requests == []
