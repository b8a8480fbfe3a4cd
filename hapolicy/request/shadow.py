"""Shadow pools: a copy of each request a pool answered goes to another pool, whose verdict is
compared with the real one, counted and logged, and never reaches Postfix.

A pool with `shadow = POOL2` gets a `Mirror` in each worker (`make_mirrors`, which attaches it
to the pool's dispatcher). After the real answer was delivered (Job.finish: client.deliver
already called), `Mirror.copy` takes the request's share (`shadow-share`: the n-th answered
request is copied when floor(n * P / 100) grows, so P % of them, spread evenly, the same ones in
every run) and submits it to the shadow pool's mirror dispatcher (one per shadow pool and
worker, apart from the pool's own dispatcher: its total timeout is at most TIMEOUT, and a copy
cut there is a failure of the copy but does not mark the shadow's service down (the shadow may
be a pool of its own, whose health is by its own timeouts and checks); it logs no request line
of its own, and its requests count neither toward max-use nor toward the worker's requests in
flight) with a `Sink` as its client. The sink compares the first words of the two actions,
case-insensitive (`DEFER_IF_PERMIT see http://...` agrees with `defer_if_permit 30 s`): agree or
disagree; a default answer of the shadow (all failed, down, its timeout) is a failure, never a
disagreement. Only requests answered by a service are copied (not default answers).

Bounded: at most MAX_IN_FLIGHT copies per worker (all pools together) wait on shadows; a
copy beyond that, or while the worker has more than BUSY real requests in flight (all its
pools), is dropped and counted. So a dead, slow or garbage shadow costs the real pool no
answer, no latency (the copy is made after the answer went out) and at most MAX_IN_FLIGHT
requests' memory per worker.

The results are counters in the real pool's health table (layout.SHADOW_*). A disagreement is
logged as one line (info), at most one a second and process with the count of those not
logged; with `-l` every copy's result is logged, each as a line of its own after the real
request's line (the shadow answers later):

    shadow pool=grey shadow=grey-next result=disagree client=NAME[ADDR] helo=<...>
    sender=<...> recipient=<...> action=DUNNO shadow_action=DEFER_IF_PERMIT ... delay=0.004s
"""

from __future__ import annotations

import time

from hapolicy.base.frozen import replace
from hapolicy.request.assembly import make_dispatcher
from hapolicy.tables.layout import (
    SHADOW_AGREE,
    SHADOW_DISAGREE,
    SHADOW_DROPPED,
    SHADOW_FAILED,
    SHADOW_RESULTS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Callable

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.base.protocol import Request
    from hapolicy.config.records import PoolConfig
    from hapolicy.request.dispatch import Dispatcher
    from hapolicy.tables.health import HealthTable

MAX_IN_FLIGHT = 32  # copies waiting on shadows, per worker
BUSY = 64  # real requests in flight in the worker above which copies are dropped
TIMEOUT = 2.0  # a copy's total timeout (the shadow pool's own, when shorter)
LOG_SECONDS = 1.0  # at most one disagreement line this often (without -l)


class Budget:
    """What the mirrors of one worker share: the copies in flight, how busy the worker is."""

    def __init__(self, busy: Callable[[], int]) -> None:
        self.in_flight = 0
        self.busy = busy  # the worker's real requests in flight


def verdict(answer: bytes) -> bytes:
    """The first word of an answer's action, lowercased: `action=DUNNO x\\n\\n` -> b'dunno'."""
    words = answer[7:].split(None, 1)
    return words[0].lower() if words else b""


class Mirror:
    """Copies the answered requests of one pool to its shadow, in one worker."""

    def __init__(self, pool: PoolConfig, target: Dispatcher, table: HealthTable, budget: Budget,
                 log: Logger, log_requests: bool = False) -> None:
        self.name = pool.name
        self.target = target
        self.budget = budget
        self.log = log
        self.log_requests = log_requests
        self.milli = round(pool.shadow_share * 1000)  # of 100000
        self.seen = 0
        self.taken = 0
        self.counts = table.f
        self.header = table.header
        self.quiet_until = 0.0
        self.held = 0

    def copy(self, request: Request, answer: bytes) -> None:
        """The real answer went out: send the request to the shadow, if its share and the
        worker's budget allow."""
        self.seen += 1
        taken = self.seen * self.milli // 100000
        if taken == self.taken:
            return
        self.taken = taken
        budget = self.budget
        if budget.in_flight >= MAX_IN_FLIGHT or budget.busy() > BUSY:
            self.counts[self.header + SHADOW_DROPPED] += 1.0
            if self.log_requests:
                self.log.info(self._line(request, SHADOW_DROPPED, answer, b"", 0.0))
            return
        budget.in_flight += 1
        self.target.submit(request, Sink(self, request, answer))

    def result(self, sink: Sink, answer: bytes) -> None:
        """The shadow's answer to a copy (its default answer when it failed)."""
        self.budget.in_flight -= 1
        if answer is self.target.default_answer:  # the very object: the shadow answered none
            word = SHADOW_FAILED
        elif verdict(answer) == verdict(sink.answer):
            word = SHADOW_AGREE
        else:
            word = SHADOW_DISAGREE
        self.counts[self.header + word] += 1.0
        delay = time.monotonic() - sink.started
        if self.log_requests:
            self.log.info(self._line(sink.request, word, sink.answer, answer, delay))
        elif word == SHADOW_DISAGREE:
            now = time.monotonic()
            if now < self.quiet_until:
                self.held += 1
                return
            more = f" ({self.held} more since the last line)" if self.held else ""
            self.log.info(self._line(sink.request, word, sink.answer, answer, delay) + more)
            self.quiet_until = now + LOG_SECONDS
            self.held = 0

    def _line(self, request: Request, word: int, real: bytes, shadow: bytes,
              delay: float) -> str:
        attrs = request.attrs
        line = (f"shadow pool={self.name} shadow={self.target.config.name} "
                f"result={SHADOW_RESULTS[word]} client={attrs.get('client_name', '')}"
                f"[{attrs.get('client_address', '')}] helo=<{attrs.get('helo_name', '')}>"
                f" sender=<{attrs.get('sender', '')}> recipient=<{attrs.get('recipient', '')}>"
                f" action={real[7:-2].decode('utf-8', 'replace')}")
        if word == SHADOW_DROPPED:
            return line
        return line + (f" shadow_action={shadow[7:-2].decode('utf-8', 'replace')}"
                       f" delay={delay:.3f}s")


class Sink:
    """The client of a copied request: takes the shadow's answer to the mirror."""

    __slots__ = ("answer", "instance", "instance_service", "mirror", "request", "route",
                 "started")

    def __init__(self, mirror: Mirror, request: Request, answer: bytes) -> None:
        self.mirror = mirror
        self.request = request
        self.answer = answer  # the real one
        self.started = time.monotonic()
        self.instance = b""  # copies are not sticky: each is balanced on its own
        self.instance_service = -1
        self.route = None

    def deliver(self, answer: bytes) -> None:
        self.mirror.result(self, answer)


def make_mirrors(loop: EventLoop, pools: Sequence[PoolConfig],
                 dispatchers: Mapping[str, Dispatcher], health: Mapping[str, HealthTable],
                 log: Logger, busy: Callable[[], int]) -> list[Dispatcher]:
    """Give each pool that has a shadow its Mirror (attached to its dispatcher); returns the
    mirror dispatchers made, one per shadow pool (the worker sweeps and closes them)."""
    budget = Budget(busy)
    by_name = {pool.name: pool for pool in pools}
    made: dict[str, Dispatcher] = {}
    for pool in pools:
        if not pool.shadow or pool.shadow not in by_name:
            continue
        real = dispatchers[pool.name]
        target = made.get(pool.shadow)
        if target is None:
            shadow = by_name[pool.shadow]
            config = replace(shadow, total_timeout=min(shadow.total_timeout, TIMEOUT))
            # a copy cut at TIMEOUT does not mark the shadow's service down; no request lines
            # its copies count in the worker's load words, as the shadow pool's own requests
            target = made[pool.shadow] = make_dispatcher(loop, config, health[shadow.name], log,
                                                         blames_deadline=False,
                                                         verbose=real.verbose,
                                                         load_slot=real.load_slot)
        real.attach_mirror(Mirror(pool, target, health[pool.name], budget, log,
                                  real.log_requests))
    return list(made.values())
