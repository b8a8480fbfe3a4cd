"""The requests of one pool in one process: where each goes, what it counts, who waits.

`Dispatcher.submit` answers one framed request: a refused or empty one at once with the
default action, any other through a `Job` (job.py), the attempt chain that answers it exactly
once. The dispatcher holds what a pool's requests share in a process: its settings, the
selector, the exchanges (`Backends`), the health table and its counters; it counts the good
answers (`count_answer`) and rate-limits the warnings of default answers and internal errors.

A request waiting on a service that is found dead meanwhile does not wait out its own timeout: when
a request of this process takes a service down, the others waiting on it move on at once; one taken
down by another process (or by a check) is noticed within SWEEP_SECONDS (the sweep rides on the
deadline tick of the exchanges in flight, backend/exchange.py). Who waits on a service is read from
those exchanges, not kept per request.

What a pool's settings ask for beyond that is attached from above by whoever builds the
dispatcher (assembly.py): the lane (lane.py) that the common request takes without a `Job`
(`attach_lane`), the hedger of a pool that hedges (hedge.py, `attach_hedger`) and the mirror
of a pool with a shadow (shadow.py, `attach_mirror`). This module imports none of them.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from hapolicy.backend.exchange import Backends
from hapolicy.base.eventloop import EventLoop
from hapolicy.base.log import Logger, RateLimited, describe_exception
from hapolicy.base.outcome import fail_answer
from hapolicy.base.protocol import Request, format_action
from hapolicy.config.records import PoolConfig
from hapolicy.request.hashkey import key_function
from hapolicy.request.job import Job
from hapolicy.request.selection import Selector
from hapolicy.request.waiting import WaitingLine
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    ANSWERS,
    BOUNDS,
    DEFAULT_INTERNAL,
    DEFAULT_REFUSED,
    DOWN_UNTIL,
    LATENCY_BUCKETS,
    LATENCY_SUM,
    REQUESTS,
    SLOT,
    STATS,
    UP,
)
from hapolicy.tables.load import ServiceLoad, observe
from hapolicy.tables.stats import FIRST_BOUND, action_offset
from hapolicy.tables.transitions import Health

# typing is imported for the type checker only: it costs a spawned process 3 ms of its start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol

    from hapolicy.backend.exchange import Connection
    from hapolicy.config.records import Service
    from hapolicy.request.job import Client, Hedger, Mirror

    class Cache(Protocol):
        """The verdict cache of a pool that caches (cache.Cache)."""

        def lookup(self, request: Request, client: Client
                   ) -> tuple[int, float] | None: ...  # None: answered
        def keep(self, job: Job, action: bytes) -> None: ...
        def stale(self, job: Job, why: str, word: int) -> bool: ...

    class Lane(Protocol):
        """The lane of a dispatcher (lane.Lane): it takes the client reads it is for, and
        makes the connections of the dispatcher's exchanges."""

        def take(self, client: Client, data: bytes, now: float) -> bool: ...
        def connection(self, backends: Backends, service: Service) -> Connection: ...


SWEEP_SECONDS = 0.1  # how soon a service taken down elsewhere releases our waiting requests
WARN_SECONDS = 1.0  # at most one "no service answered" warning this often (without -l)


class Dispatcher:
    """Answers the requests of one pool in one process (a worker, or spawn mode); the
    process's logging settings (DaemonConfig's) say whether each request (log_requests) and
    each failed attempt (verbose) is logged."""

    def __init__(self, loop: EventLoop, config: PoolConfig, table: HealthTable, log: Logger,
                 blames_deadline: bool = True, log_requests: bool = False,
                 verbose: bool = False, load_slot: int = -1) -> None:
        self.loop = loop
        self.config = config
        self.table = table
        self.health = Health(table, config.services, config, log)
        self.log = log
        self.hash_key = key_function(config.balance)
        self.fail_answer = fail_answer(config.fail_answer)
        self.backends = Backends(loop, config.connect_timeout)
        self._count_load(load_slot)
        self.selector = Selector(config.services, table, config.all_down == "try",
                                 config.slowstart, self.load, self.least_latency,
                                 config.max_inflight)
        self.default_answer = format_action(config.default_action)
        # read on every request: plain attributes, not through config
        self.services = config.services
        self.total_timeout = config.total_timeout
        # with one service a transaction's pick is that service, sticky or not (Selector.pick):
        # no instance to look up in each request, none to keep
        self.sticky = config.sticky_instance and len(config.services) > 1
        self.log_requests = log_requests
        self.verbose = verbose
        self.in_flight = 0
        # a timeout at the request's total deadline counts against the service (a service
        # that needs longer is no use); a shadow's mirror dispatcher (shadow.py) says no: its
        # short deadline is its own, not the shadow pool's measure
        self.blames_deadline = blames_deadline
        self.requests = 0
        # the table's counters (layout.py), added to in place: no call on the request path
        self.counts = table.f
        self.requests_word = table.header + REQUESTS
        self.default_word = table.header  # + DEFAULT_*
        self.stats = [table.stats + i * STATS for i in range(len(config.services))]
        self.actions: dict[bytes, int] = {}  # an action's first bytes: ANSWERS_BY_ACTION + k
        self.max_use = 0  # on_max_use is called at the max_use-th request (0: never)
        self.on_max_use: Callable[[], None] = _nothing
        self.warnings = RateLimited(log, loop.call_at, WARN_SECONDS)
        # what the builder attaches (assembly.py); None: the pool has none
        self.lane: Lane | None = None  # takes the common request without a Job (client.py)
        self.hedger: Hedger | None = None  # arms each job's hedge
        self.shadow: Mirror | None = None  # copies the answered requests to a shadow pool
        self.cache: Cache | None = None  # answers from and keeps in the pool's verdict cache
        self.backends.on_sweep(self.sweep, SWEEP_SECONDS)

    def _count_load(self, slot: int) -> None:
        """least-latency and max-inflight count each service's requests (load.py) in the
        worker's slot, the exchanges' ends giving their slots back; other pools none of it."""
        config = self.config
        self.load_slot = slot
        self.least_latency = config.balance == "least-latency"
        self.limited = config.max_inflight > 0
        self.load: ServiceLoad | None = None
        if self.least_latency or self.limited:
            self.load = ServiceLoad(self.table, slot)
            self.backends.on_end = self._exchange_ended
            self.index_of = {s.name: i for i, s in enumerate(config.services)}
        self.waiting = WaitingLine(self.loop)

    def call_at_request(self, count: int, callback: Callable[[], None]) -> None:
        """Call `callback` when this dispatcher has taken `count` requests in all (a worker's
        share of its max-use); 0: never."""
        self.max_use = count
        self.on_max_use = callback

    def attach_lane(self, lane: Lane) -> None:
        """The lane takes the requests it is for; it makes this dispatcher's connections."""
        self.lane = lane
        self.backends.connection_type = lane.connection

    def attach_hedger(self, hedger: Hedger) -> None:
        """Each request's first attempt arms a hedge (Job.next_attempt)."""
        self.hedger = hedger

    def attach_cache(self, cache: Cache) -> None:
        """Each request is looked up in the cache first (`submit`); the job gives it a good
        answer to keep and asks it for a stale one before a default (job.py)."""
        self.cache = cache

    def attach_mirror(self, mirror: Mirror) -> None:
        """Each request a service answered is copied to the mirror (Job.finish)."""
        self.shadow = mirror

    def count(self) -> None:
        """Count a request answered for this pool without it (a policy_context no pool serves):
        max-use counts every request the worker answered. submit counts its own inline."""
        self.requests += 1
        if self.requests == self.max_use:
            self.on_max_use()

    def submit(self, request: Request, client: Client) -> None:
        """Answer one request, now or later, through client.deliver."""
        self.requests += 1
        if self.requests == self.max_use:
            self.on_max_use()
        if request.error:
            self.counts[self.requests_word] += 1.0
            self.counts[self.default_word + DEFAULT_REFUSED] += 1.0
            self.warnings.warning(f"{self.config.log_prefix}request refused: {request.error}, "
                                  f"answering action={self.config.default_action}")
            client.deliver(self.default_answer)
            return
        if len(request.raw) <= 2:
            if self.verbose:
                self.log.info(f"empty request: answering action={self.config.default_action}")
            client.deliver(self.default_answer)
            return
        self.counts[self.requests_word] += 1.0
        if self.waiting.line:  # those in line first: a slot freed meanwhile is theirs
            self.waiting.serve(time.monotonic())
        key = epoch = None
        if self.cache is not None:
            missed = self.cache.lookup(request, client)
            if missed is None:
                return  # answered from the cache
            key, epoch = missed
        self.in_flight += 1
        job = Job(self, request, client, key, epoch)
        try:
            job.begin()
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            job.fail(exc)

    def release(self, index: int, since: float, why: str) -> None:
        """Move the requests waiting on service `index` since before `since` on at once."""
        service = self.services[index]
        for conn in [c for c in self.backends.in_flight
                     if c.service is service and c.started < since]:
            conn.abandon(why)  # nothing when it ended meanwhile (a release moved it on)

    def sweep(self, now: float) -> None:
        """Release requests waiting on services that another process took down."""
        table = self.table
        waited = {conn.service.name for conn in self.backends.in_flight}
        for index, service in enumerate(self.services):
            if service.name in waited and table.state(index, now) != UP:
                self.release(index, table.down_since(index), "marked down while waiting")

    def count_answer(self, index: int, action: bytes, elapsed: float) -> None:
        """Count a good answer of service index (its first line, action) that took elapsed."""
        counts = self.counts
        counts[index * SLOT + ANSWERS] += 1.0
        # the statistics (stats.py): latency histogram and sum, answers by action word
        base = self.stats[index]
        counts[base + LATENCY_SUM] += elapsed
        counts[base + LATENCY_BUCKETS
               + (0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed))] += 1.0
        offset = self.actions.get(action[7:23])
        if offset is None:
            offset = action_offset(self.actions, action)
        counts[base + offset] += 1.0
        if counts[index * SLOT + DOWN_UNTIL]:  # it was down: Health.ok may bring it back
            self.health.ok(index)
        if self.least_latency:
            observe(self.table, index, elapsed, self.loop.now)

    def _exchange_ended(self, service: Service) -> None:
        """An exchange with service ended: its slot is free (load.py), maybe for a waiter."""
        self.load.end(self.index_of[service.name])  # type: ignore[union-attr]
        if self.waiting.line:
            self.waiting.kick()

    def warn_default(self, why: str) -> None:
        """Log that a request got the default answer (rate-limited)."""
        self.warnings.warning(f"{self.config.log_prefix}no service answered ({why}): "
                              f"action={self.config.default_action}")

    def internal_error(self, exc: BaseException, answered: bool) -> None:
        """Count and log an exception while handling a request (rate-limited); it cost that
        request the default answer unless the request was answered already."""
        if not answered:
            self.counts[self.default_word + DEFAULT_INTERNAL] += 1.0
        cost = "" if answered else f": action={self.config.default_action}"
        self.warnings.warning(f"{self.config.log_prefix}internal error while answering a "
                              f"request ({describe_exception(exc)}){cost}")

    def close(self) -> None:
        self.waiting.close()
        if self.warnings.timer is not None:
            self.warnings.timer.cancel()
            self.warnings.flush()
        self.backends.close()


def _nothing() -> None:
    pass
