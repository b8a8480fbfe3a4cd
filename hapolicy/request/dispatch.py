"""The way of one request: pick a service, exchange, fail over, answer exactly once.

`Dispatcher.submit` runs the attempt chain of one framed request. Each attempt is bounded by
min(service timeout, what is left of the request's total deadline); a failure tells the health
table and moves on at once; when every service failed or is down, or the deadline is reached,
the answer is the default action. Whatever happens, `deliver` is called exactly once with the
answer bytes.

A request waiting on a service that is found dead meanwhile does not wait out its own timeout:
when a request of this process takes a service down, the others waiting on it move on at once;
one taken down by another process (or by a check) is noticed within SWEEP_SECONDS (the sweep
rides on the deadline tick of the exchanges in flight, backend.py). Who waits on a service is
read from those exchanges, not kept per request.

The common request of a pool that neither hashes, hedges, shadows, judges answers nor logs
each request takes the lane (lane.py) while every service of its first priority group is up
and none is drained: it makes the pick itself and no `Job` unless its exchange fails;
everything here is what it falls back on.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from hapolicy.backend.exchange import Backends, Connection
from hapolicy.base.eventloop import EventLoop
from hapolicy.base.log import Logger, RateLimited, describe_exception
from hapolicy.base.outcome import ANSWERED, LOCAL, fail_answer, is_timeout
from hapolicy.base.protocol import Request, format_action
from hapolicy.config.records import PoolConfig
from hapolicy.request.hashkey import key_function
from hapolicy.request.lane import Lane, qualifies
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    ANSWERS,
    BOUNDS,
    DEFAULT_DOWN,
    DEFAULT_FAILED,
    DEFAULT_INTERNAL,
    DEFAULT_REFUSED,
    DEFAULT_TIMEOUT,
    DOWN_UNTIL,
    LATENCY_BUCKETS,
    LATENCY_SUM,
    REQUESTS,
    SLOT,
    STATS,
    UP,
)
from hapolicy.tables.stats import FIRST_BOUND, action_offset
from hapolicy.tables.transitions import Health

# typing is imported for the type checker only: it costs a spawned process 3 ms of its start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol

    class Client(Protocol):
        """What a request needs to know of the connection it came on."""

        instance: bytes  # Postfix's `instance` of the transaction last answered by a service
        instance_service: int
        route: object  # the pool last asked on a shared address (routing.py)

        def deliver(self, answer: bytes) -> None: ...

    from hapolicy.request.hedge import Hedge, Hedger
    from hapolicy.request.shadow import Mirror


SWEEP_SECONDS = 0.1  # how soon a service taken down elsewhere releases our waiting requests
WARN_SECONDS = 1.0  # at most one "no service answered" warning this often (without -l)


class Dispatcher:
    """Answers the requests of one pool in one process (a worker, or spawn mode); the
    process's logging settings (DaemonConfig's) say whether each request (log_requests) and
    each failed attempt (verbose) is logged."""

    def __init__(self, loop: EventLoop, config: PoolConfig, table: HealthTable, log: Logger,
                 log_requests: bool = False, verbose: bool = False) -> None:
        self.loop = loop
        self.config = config
        self.table = table
        self.health = Health(table, config.services, config, log)
        self.log = log
        self.hash_key = key_function(config.balance)
        self.fail_answer = fail_answer(config.fail_answer)
        self.selector = Selector(config.services, table, config.all_down == "try")
        self.backends = Backends(loop, config.connect_timeout)
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
        self.blames_deadline = True
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
        self.shadow: Mirror | None = None  # copies answered requests to a shadow (worker.py)
        self.hedger: Hedger | None = None
        if config.hedge:
            from hapolicy.request.hedge import (
                Hedger,  # here: only a pool that hedges pays for its import
            )

            self.hedger = Hedger(self)
        self.backends.on_sweep(self.sweep, SWEEP_SECONDS)
        self.lane: Lane | None = Lane(self) if qualifies(self) else None
        if self.lane is not None:
            self.backends.connection_type = self.lane.connection

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
        self.in_flight += 1
        self.counts[self.requests_word] += 1.0
        job = Job(self, request, client)
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
        if self.warnings.timer is not None:
            self.warnings.timer.cancel()
            self.warnings.flush()
        self.backends.close()


def _nothing() -> None:
    pass


class Job:
    """The attempt chain of one request; it answers it exactly once (`answered`).

    An exception in any of its steps (`begin`, an exchange's end, its hedge's) costs this
    request the default answer, unless it was answered already (`fail`), never the worker."""

    __slots__ = (
        "answered",
        "client",
        "current",
        "d",
        "deadline",
        "exchange",
        "failed",
        "hedge",
        "instance",
        "key",
        "request",
        "started",
        "tried",
    )

    def __init__(self, dispatcher: Dispatcher, request: Request, client: Client) -> None:
        self.d = dispatcher
        self.request = request
        self.client = client
        self.started = time.monotonic()
        self.deadline = self.started + dispatcher.total_timeout
        self.tried = 0
        self.failed: list[str] | None = None  # why each service tried failed
        self.key = None
        self.instance = request.instance() if dispatcher.sticky else b""
        self.exchange: Connection | None = None  # the connection of the attempt in progress
        self.current = -1
        self.hedge: Hedge | None = None  # its second exchange, in a pool that hedges
        self.answered = False

    def begin(self) -> None:
        """Make the request's hash key, if its pool hashes, then the first attempt."""
        hash_key = self.d.hash_key
        if hash_key is not None:
            self.key = hash_key(self.request)
        self.next_attempt(self.started)

    def fail(self, exc: BaseException) -> None:
        """An exception while handling the request: stop its exchanges and answer it the
        default, unless it was answered already; logged and counted once a request."""
        d = self.d
        d.internal_error(exc, self.answered)
        if self.answered:
            return
        self.answered = True
        if self.hedge is not None:
            self.hedge.end("internal error")
        if self.exchange is not None:
            self.exchange.cancel("internal error")
            self.exchange = None
        d.in_flight -= 1
        self.client.deliver(d.default_answer)

    def next_attempt(self, now: float) -> None:
        d = self.d
        if now >= self.deadline:
            self.answer_default(f"total timeout {d.config.total_timeout:g}s reached",
                                DEFAULT_TIMEOUT)
            return
        sticky = -1
        if self.instance and self.instance == self.client.instance:
            sticky = self.client.instance_service
        index = d.selector.pick(self.tried, now, self.key, sticky)
        if index < 0:
            if self.tried:
                self.answer_default("all services failed", DEFAULT_FAILED)
            else:
                self.answer_default("all services down", DEFAULT_DOWN)
            return
        self.tried |= 1 << index
        self.current = index
        service = d.services[index]
        self.exchange = conn = d.backends.connection(service, now)
        if d.hedger is not None and self.hedge is None:
            self.hedge = d.hedger.arm(self, index, now)
        conn.run(self.request.raw, self.deadline, self.on_exchange_done, now)

    def on_exchange_done(self, action: bytes, outcome: int, reason: str) -> None:
        try:
            d = self.d
            index = self.current
            conn = self.exchange
            self.exchange = None
            if d.fail_answer is not None:
                outcome, reason = d.fail_answer.judge(action, outcome, reason)
            if outcome == ANSWERED:
                d.count_answer(index, action, conn.ended - conn.started)
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
        if d.verbose:
            d.log.info(f"service={service.name} address={service.address} failed: {reason}")
        if self.failed is None:
            self.failed = []
        self.failed.append(f"{service.name}: {reason}")
        return now

    def answer_default(self, why: str, word: int) -> None:
        """Answer the default action; word is the reason's counter (layout.DEFAULT_*)."""
        d = self.d
        d.counts[d.default_word + word] += 1.0
        self.finish(d.default_answer, "-", why)

    def finish(self, answer: bytes, service: str, default_why: str = "") -> None:
        """Deliver the answer (a service's, or the default with why), logged as asked."""
        d = self.d
        if self.hedge is not None:
            self.hedge.end(default_why)
        if d.log_requests or (default_why and d.verbose):
            self.log_request(service, answer[7:-2].decode("utf-8", "replace"), default_why)
        elif default_why:
            d.warn_default(default_why)
        self.answered = True
        d.in_flight -= 1
        self.client.deliver(answer)
        if d.shadow is not None and not default_why:
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
