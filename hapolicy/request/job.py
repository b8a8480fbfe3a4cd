"""The attempt chain of one request: pick, exchange, fail over, answer exactly once.

A `Job` is made by its dispatcher (`Dispatcher.submit`, dispatch.py) for a request that the
lane did not take, or by the lane for one of its exchanges that did not end in a whole answer
(`Job.resumed`, lane.py). Each attempt is bounded by min(service timeout, what is left of the
request's total deadline); a failure tells the health table and moves on at once; when every
service failed or is down, or the deadline is reached, the answer is the default action.
Whatever happens, the client's `deliver` is called exactly once with the answer bytes
(`answered`); an exception in any step (`begin`, an exchange's end, its hedge's) costs this
request the default answer unless it was answered already (`fail`), never the worker.

In a pool with max-inflight, a request claims a slot of the service picked before it sends
(`ServiceLoad.claim`; the exchange's end gives it back, dispatch.py). A service at its limit is
skipped for the next one with room, or, when the request must stay with it (a hashed pool, the
service its transaction sticks to) or no service has room, the request waits in the pool's
line (waiting.py), up to queue-timeout from its first wait in all (a slot it saw free and lost
to another worker puts it back in line); then it goes on as after a failure of that service,
and a default answer it ends with is counted as `queued-out`.

Only a Job's own methods write its fields. What the dispatcher attached from above takes part
through them: the hedge (hedge.py) marks the service it asks as tried (`mark_tried`) and hands
its exchange over as the attempt in progress (`adopt`); a mirror (shadow.py) is given the
request once a service answered it (`finish`); the cache (cache.py) is given a service's good
answer (`keep`) and may answer instead of the default (`stale`). This module imports none of
them: it reads its dispatcher's `hedger`, `shadow` and `cache` (None when the pool has none);
`Owner` and the other protocols below say what it asks of each.
"""

from __future__ import annotations

import time

from hapolicy.base.outcome import ANSWERED, LOCAL, is_timeout
from hapolicy.tables.layout import (
    DEFAULT_DOWN,
    DEFAULT_FAILED,
    DEFAULT_QUEUED_OUT,
    DEFAULT_TIMEOUT,
)
from hapolicy.tables.load import observe

# typing is imported for the type checker only: it costs a spawned process 3 ms of its start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol

    from hapolicy.backend.exchange import Backends, Connection
    from hapolicy.base.log import Logger
    from hapolicy.base.outcome import FailAnswer
    from hapolicy.base.protocol import Request
    from hapolicy.config.records import PoolConfig, Service
    from hapolicy.request.selection import Selector
    from hapolicy.request.waiting import WaitingLine
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.load import ServiceLoad
    from hapolicy.tables.transitions import Health

    class Client(Protocol):
        """What a request needs to know of the connection it came on."""

        instance: bytes  # Postfix's `instance` of the transaction last answered by a service
        instance_service: int
        route: object  # the pool last asked on a shared address (routing.py)

        def deliver(self, answer: bytes) -> None: ...

    class Hedge(Protocol):
        """The second exchange of one request (hedge.Hedge)."""

        index: int  # its service, once asked (-1 before)

        def take_over(self) -> bool: ...  # the first attempt failed: True if the hedge goes on
        def end(self, answered: bool) -> None: ...  # the request is answered (by a service)

    class Hedger(Protocol):
        """The hedges of a pool that hedges (hedge.Hedger)."""

        def arm(self, job: Job, index: int, now: float) -> Hedge: ...

    class Mirror(Protocol):
        """What copies a pool's answered requests to its shadow (shadow.Mirror)."""

        def copy(self, request: Request, answer: bytes) -> None: ...

    class Cache(Protocol):
        """The verdict cache of a pool that caches (cache.Cache)."""

        def keep(self, job: Job, action: bytes) -> None: ...  # a service's answer
        def stale(self, job: Job, why: str, word: int) -> bool: ...  # instead of the default

    class Owner(Protocol):
        """What a Job reads and calls of the dispatcher that made it (dispatch.Dispatcher)."""

        config: PoolConfig
        services: list[Service]
        selector: Selector
        table: HealthTable
        load: ServiceLoad | None  # a pool with least-latency or max-inflight counts it
        limited: bool  # max-inflight
        least_latency: bool
        waiting: WaitingLine
        backends: Backends
        health: Health
        log: Logger
        hash_key: Callable[[Request], bytes] | None
        fail_answer: FailAnswer | None
        hedger: Hedger | None
        shadow: Mirror | None
        cache: Cache | None
        total_timeout: float
        sticky: bool
        log_requests: bool
        verbose: bool
        blames_deadline: bool
        default_answer: bytes
        counts: memoryview
        default_word: int
        in_flight: int

        def release(self, index: int, since: float, why: str) -> None: ...
        def count_answer(self, index: int, action: bytes, elapsed: float) -> None: ...
        def warn_default(self, why: str) -> None: ...
        def internal_error(self, exc: BaseException, answered: bool) -> None: ...


class Job:
    """The attempt chain of one request; it answers it exactly once (see the module doc)."""

    __slots__ = (
        "answered",
        "cache_epoch",
        "cache_key",
        "client",
        "current",
        "d",
        "deadline",
        "exchange",
        "failed",
        "hedge",
        "instance",
        "key",
        "queued",
        "queued_until",
        "request",
        "skipped",
        "started",
        "tried",
        "waiting",
    )

    def __init__(self, dispatcher: Owner, request: Request, client: Client,
                 cache_key: int | None = None, cache_epoch: float | None = None) -> None:
        self.d = dispatcher
        self.request = request
        self.client = client
        self.started = time.monotonic()
        self.deadline = self.started + dispatcher.total_timeout
        self.tried = 0  # a bit per service asked for this request
        self.failed: list[str] | None = None  # why each service tried failed
        self.key = None
        self.instance = request.instance() if dispatcher.sticky else b""
        self.exchange: Connection | None = None  # the connection of the attempt in progress
        self.current = -1  # the service of the attempt in progress (or of the answer)
        self.hedge: Hedge | None = None  # its second exchange, in a pool that hedges
        self.answered = False
        self.cache_key = cache_key  # the hash of its cache key, in a pool that caches
        self.cache_epoch = cache_epoch  # the cache's epoch when it was looked up
        # max-inflight: services passed over at their limit (a bit each); the service it
        # waits for in line (-1 while it does not); when its waiting must end (0.0: it never
        # waited); whether a wait ran out (its default answer is then `queued-out`)
        self.skipped = 0
        self.waiting = -1
        self.queued_until = 0.0
        self.queued = False

    @classmethod
    def resumed(cls, dispatcher: Owner, request: Request, client: Client, index: int,
                exchange: Connection) -> Job:
        """The job of a request whose first attempt, exchange on service index, was started
        without one (the lane's): the request's start and deadline are the exchange's, and
        the service is tried. The exchange's end goes to `on_exchange_done`."""
        job = cls(dispatcher, request, client)
        job.deadline = exchange.deadline
        job.started = exchange.deadline - dispatcher.total_timeout
        job.tried = 1 << index
        job.current = index
        job.exchange = exchange
        return job

    def begin(self) -> None:
        """Make the request's hash key, if its pool hashes, then the first attempt."""
        hash_key = self.d.hash_key
        if hash_key is not None:
            self.key = hash_key(self.request)
        self.next_attempt(self.started)

    def mark_tried(self, index: int) -> None:
        """Service index is being asked for this request beside the attempt in progress (its
        hedge's): it is not picked again."""
        self.tried |= 1 << index

    def adopt(self, exchange: Connection, index: int) -> None:
        """exchange, with service index, is this request's attempt in progress from now on
        (its hedge's, when the first attempt failed or was beaten to the answer)."""
        self.exchange = exchange
        self.current = index

    def fail(self, exc: BaseException) -> None:
        """An exception while handling the request: stop its exchanges and answer it the
        default, unless it was answered already; logged and counted once a request."""
        d = self.d
        d.internal_error(exc, self.answered)
        if self.answered:
            return
        self.answered = True
        if self.hedge is not None:
            self.hedge.end(False)
        if self.exchange is not None:
            self.exchange.cancel("internal error")
            self.exchange = None
        if self.waiting >= 0:
            d.load.queue(self.waiting, -1)
            self.waiting = -1
        d.in_flight -= 1
        self.client.deliver(d.default_answer)

    def next_attempt(self, now: float) -> None:
        """Ask the next service the selector picks, or answer the default when none is left
        or the deadline is reached."""
        d = self.d
        if now >= self.deadline:
            self.answer_default(f"total timeout {d.config.total_timeout:g}s reached",
                                DEFAULT_TIMEOUT)
            return
        sticky = -1
        if self.instance and self.instance == self.client.instance:
            sticky = self.client.instance_service
        index = d.selector.pick(self.tried | self.skipped, now, self.key, sticky)
        if index < 0:
            if self.skipped and not self.queued:
                self.wait(-1, now)  # every service it may ask is at its limit
            elif self.queued or self.skipped:
                self.answer_default("queued out: max-inflight", DEFAULT_QUEUED_OUT)
            elif self.tried:
                self.answer_default("all services failed", DEFAULT_FAILED)
            else:
                self.answer_default("all services down", DEFAULT_DOWN)
            return
        if d.load is not None and not d.load.claim(index, d.selector.limit(index)):
            if (self.key is not None or index == sticky) and not self.queued:
                self.wait(index, now)
            else:
                d.load.turned_away(index)
                self.skipped |= 1 << index
                self.next_attempt(now)
            return
        self.tried |= 1 << index
        self.current = index
        service = d.services[index]
        self.exchange = conn = d.backends.connection(service, now)
        if d.hedger is not None and self.hedge is None:
            self.hedge = d.hedger.arm(self, index, now)
        conn.run(self.request.raw, self.deadline, self.on_exchange_done, now)

    def wait(self, index: int, now: float) -> None:
        """Wait in line for a free slot of service index (-1: of any service skipped), up to
        queue-timeout from its first wait; a full line is a wait run out at once."""
        d = self.d
        self.waiting = index if index >= 0 else (self.skipped & -self.skipped).bit_length() - 1
        d.load.queue(self.waiting, 1)
        if not self.queued_until:
            self.queued_until = min(now + d.config.queue_timeout, self.deadline)
        if now >= self.queued_until or not d.waiting.add(self, self.queued_until):
            self.queued_out(now)

    def has_room(self) -> bool:
        """Whether what it waits for has a free slot now (the line asks)."""
        d = self.d
        load, limit = d.load, d.selector.limit
        mask = self.skipped | 1 << self.waiting
        return any(mask >> i & 1 and load.in_flight(i) < limit(i) for i in range(len(d.services)))

    def resume(self, now: float) -> None:
        """Out of the line to be sent: pick again, each service with room a candidate."""
        try:
            self.d.load.queue(self.waiting, -1)
            self.waiting = -1
            self.skipped = 0
            self.next_attempt(now)
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            self.fail(exc)

    def queued_out(self, now: float) -> None:
        """Out of the line unsent, its wait run out: on as after a failure of the service."""
        try:
            d = self.d
            index = self.waiting
            d.load.queue(index, -1)
            self.waiting = -1
            self.queued = True
            if not self.skipped:  # it waited for this one service: it fails over
                d.load.turned_away(index)
                self.tried |= 1 << index
                if self.failed is None:
                    self.failed = []
                self.failed.append(f"{d.services[index].name}: queued out")
            self.next_attempt(now)
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            self.fail(exc)

    def on_exchange_done(self, action: bytes, outcome: int, reason: str) -> None:
        """The attempt in progress ended: answer with its action, or fail over."""
        try:
            d = self.d
            index = self.current
            conn = self.exchange
            self.exchange = None
            if d.fail_answer is not None:
                outcome, reason = d.fail_answer.judge(action, outcome, reason)
            if outcome == ANSWERED:
                d.count_answer(index, action, conn.ended - conn.started)
                if d.cache is not None:
                    d.cache.keep(self, action)
                if self.instance:
                    self.client.instance = self.instance
                    self.client.instance_service = index
                self.finish(action + b"\n\n", d.services[index].name)
                return
            now = self.note_failure(index, outcome, reason)
            if self.hedge is not None and self.hedge.take_over():
                return  # the hedge's exchange goes on as the attempt in progress
            self.next_attempt(now)
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            self.fail(exc)

    def note_failure(self, index: int, outcome: int, reason: str) -> float:
        """Tell health and the log that service index failed this request; the time now."""
        d = self.d
        service = d.services[index]
        now = time.monotonic()
        if outcome == LOCAL:
            d.log.error(f"service={service.name} not asked: {reason}")
        elif not d.blames_deadline and now >= self.deadline and is_timeout(outcome):
            pass
        elif d.health.failed(index, outcome, reason, now):
            d.release(index, now, "marked down while waiting")
        if d.least_latency and outcome != LOCAL:  # a failure is as slow as can be
            observe(d.table, index, service.timeout, now)
        if d.verbose:
            d.log.info(f"service={service.name} address={service.address} failed: {reason}")
        if self.failed is None:
            self.failed = []
        self.failed.append(f"{service.name}: {reason}")
        return now

    def answer_default(self, why: str, word: int) -> None:
        """Answer the default action; word is the reason's counter (layout.DEFAULT_*)."""
        d = self.d
        if d.cache is not None and d.cache.stale(self, why, word):
            return
        d.counts[d.default_word + word] += 1.0
        self.finish(d.default_answer, "-", why)

    def finish(self, answer: bytes, service: str, default_why: str = "",
               stale: bool = False) -> None:
        """Deliver the answer (a service's; the default, with why; or a stale one of the cache
        instead of the default), logged as asked. Only a service's answer (or a cache hit's)
        ends the hedge as answered and is copied to the shadow."""
        d = self.d
        answered = not default_why and not stale
        if self.hedge is not None:
            self.hedge.end(answered)
        if d.log_requests or (default_why and d.verbose):
            self.log_request(service, answer[7:-2].decode("utf-8", "replace"), default_why)
        elif default_why:
            d.warn_default(default_why)
        self.answered = True
        d.in_flight -= 1
        self.client.deliver(answer)
        if d.shadow is not None and answered:
            d.shadow.copy(self.request, answer)

    def log_request(self, service: str, action: str, default_why: str) -> None:
        attrs = self.request.attrs
        line = (
            f"pool={self.d.config.name} service={service} client={attrs.get('client_name', '')}"
            f"[{attrs.get('client_address', '')}] helo=<{attrs.get('helo_name', '')}>"
            f" sender=<{attrs.get('sender', '')}> recipient=<{attrs.get('recipient', '')}>"
            f" delay={time.monotonic() - self.started:.3f}s action={action}"
        )
        if self.failed:
            line += ' failed="' + "; ".join(self.failed).replace('"', "'") + '"'
        if self.hedge is not None and self.hedge.index >= 0:
            line += f" hedged={self.d.services[self.hedge.index].name}"
        if default_why:
            line += f' default="{default_why}"'
        self.d.log.info(line)
