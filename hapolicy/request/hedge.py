"""Hedged requests: when a pool's first service has not answered within the hedge delay, ask
the next service too; the first good answer wins and is delivered once.

A pool that sets `hedge` gets a `Hedger` in each process's dispatcher (attached by its builder,
assembly.py). Every request of the pool gets a `Hedge` at its first attempt (Job.hedge): it
arms one timer at the hedge delay, either `hedge = SECONDS` or `hedge = pNN`, that percentile
of the answer times of the service asked, as this process saw them lately (the last RING
answers; no hedge before it saw MIN_SAMPLES). When the timer fires and the request still
waits on an attempt, a token of the bucket pays for a second exchange with selection's next
pick (never a service this request tried). Tokens: each request adds hedge-max/100 of one, up
to BURST, so a worker never hedges more than hedge-max percent of its requests, whatever its
services do.

Then two exchanges run. The first good answer wins: the other exchange is abandoned (its
connection closed; ABANDONED counts against no service) and the answer goes through the
job's normal path once (counters, health, the log line's `hedged=NAME`). A failure of one of
the two is told to health as any failure is, and the request waits for the other: when the
first attempt fails, the hedge's exchange becomes the attempt in progress (`take_over`);
when the hedge fails, the first attempt goes on. A request is hedged at most once. The hedge
reads its job and changes it only through the job's methods (`mark_tried`, `adopt`).

A hedge's exchange on a service that is found dead meanwhile is abandoned like any request
waiting there (Dispatcher.release): it cannot win on a dead service; the first attempt goes on.

Only for pools of services without state (SPF, DNSBL checks, policyd-weight): a hedged
request may reach two servers, which for greylisting or rate limiting counts it twice.
`warnings` says so for pools that hash or keep instances sticky (--check-config).
"""

from __future__ import annotations

import time
from array import array

from hapolicy.base.outcome import ANSWERED
from hapolicy.tables.layout import HEDGE_WON, HEDGED
from hapolicy.tables.load import observe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.backend.exchange import Connection
    from hapolicy.config.records import DaemonConfig
    from hapolicy.request.dispatch import Dispatcher
    from hapolicy.request.job import Job

BURST = 10.0  # tokens a quiet spell can save for a slow one
RING = 256  # answer times kept per service and process, for pNN
MIN_SAMPLES = 32  # pNN hedges once this many answers of the service were seen
RECOMPUTE = 32  # the percentile is recomputed every this many answers


class Latency:
    """The recent answer times of one service, and a percentile of them."""

    __slots__ = ("count", "q", "ring", "value")

    def __init__(self, q: float) -> None:
        self.q = q
        self.ring = array("d", bytes(8 * RING))
        self.count = 0
        self.value = -1.0  # the percentile; -1 until MIN_SAMPLES were seen

    def add(self, seconds: float) -> None:
        self.ring[self.count % RING] = seconds
        self.count += 1
        if self.count >= MIN_SAMPLES and self.count % RECOMPUTE == 0:
            kept = sorted(self.ring[:min(self.count, RING)])
            self.value = kept[min(len(kept) - 1, int(len(kept) * self.q / 100.0))]


class Hedger:
    """The hedges of one pool in one process: the delay, the token bucket, the counters."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        config = dispatcher.config
        self.d = dispatcher
        self.fixed = 0.0 if config.hedge.startswith("p") else float(config.hedge)
        self.latency = ([Latency(float(config.hedge[1:])) for _ in config.services]
                        if config.hedge.startswith("p") else [])
        self.rate = config.hedge_max / 100.0
        self.tokens = 0.0
        self.counts = dispatcher.table.f
        self.hedged_word = dispatcher.table.header + HEDGED
        self.won_word = dispatcher.table.header + HEDGE_WON

    def arm(self, job: Job, index: int, now: float) -> Hedge:
        """A request's first attempt (on service index) starts now: its hedge."""
        self.tokens = min(BURST, self.tokens + self.rate)
        delay = self.fixed or self.latency[index].value
        return Hedge(self, job, index, now, delay)


class Hedge:
    """The second exchange of one request (see the module doc)."""

    __slots__ = ("conn", "first", "first_started", "hedger", "index", "job", "started", "timer")

    def __init__(self, hedger: Hedger, job: Job, first: int, now: float, delay: float) -> None:
        self.hedger = hedger
        self.job = job
        self.first = first
        self.first_started = now
        self.index = -1  # the hedge's service, once asked
        self.started = 0.0
        self.conn: Connection | None = None
        self.timer = hedger.d.loop.call_at(now + delay, self.fire) if delay >= 0 else None

    def fire(self) -> None:
        """The delay passed: ask the next service, if a token and a service are left."""
        self.timer = None
        try:
            self._ask_next()
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            self.job.fail(exc)

    def _ask_next(self) -> None:
        job, hedger = self.job, self.hedger
        d = hedger.d
        now = time.monotonic()
        if job.exchange is None or hedger.tokens < 1.0 or now >= job.deadline:
            return
        index = d.selector.pick(job.tried, now, job.key, -1, last_resort=False)  # no dead one
        if index < 0 or (d.load is not None
                         and not d.load.claim(index, d.selector.limit(index))):
            return  # none left, or the one left at its max-inflight: no hedge
        hedger.tokens -= 1.0
        job.mark_tried(index)
        self.index = index
        self.started = now
        hedger.counts[hedger.hedged_word] += 1.0
        self.conn = conn = d.backends.connection(d.services[index], now)
        conn.run(job.request.raw, job.deadline, self.on_done, now)

    def on_done(self, action: bytes, outcome: int, reason: str) -> None:
        """The hedge's exchange ended while the first attempt still runs."""
        try:
            self._ended(action, outcome, reason)
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            self.job.fail(exc)

    def _ended(self, action: bytes, outcome: int, reason: str) -> None:
        conn = self.conn
        self.conn = None
        job = self.job
        d = job.d
        if d.fail_answer is not None:
            outcome, reason = d.fail_answer.judge(action, outcome, reason)
        if outcome != ANSWERED:
            job.note_failure(self.index, outcome, reason)
            return
        first = job.exchange
        if first is not None:  # abandoned: closed, counted against nobody, its end ignored
            first.cancel("another service answered first")
            self._learn_slow(self.first, self.first_started)
        job.adopt(conn, self.index)  # whose start the answer's latency counts from
        job.on_exchange_done(action, outcome, reason)

    def _learn_slow(self, index: int, started: float) -> None:
        """Service index lost to another and was cancelled: least-latency learns it took at
        least this long (else a service the hedge always beats would never look slow)."""
        d = self.job.d
        if d.least_latency:
            now = time.monotonic()
            observe(d.table, index, now - started, now)

    def take_over(self) -> bool:
        """The first attempt failed: the hedge's exchange, if it runs, is the attempt now."""
        conn = self.conn
        if conn is None:
            return False
        self.conn = None
        job = self.job
        job.adopt(conn, self.index)
        conn.on_done = job.on_exchange_done
        return True

    def end(self, answered: bool) -> None:
        """The request is answered: stop what still runs; learn the answer time if a service
        answered (not the default, an internal error or a stale answer of the cache)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.cancel("another service answered first")
            self._learn_slow(self.index, self.started)
        if not answered:
            return
        hedger = self.hedger
        current = self.job.current
        if current == self.index:
            hedger.counts[hedger.won_word] += 1.0
        if hedger.latency:
            now = time.monotonic()
            if current == self.first:
                hedger.latency[current].add(now - self.first_started)
            elif current == self.index:
                hedger.latency[current].add(now - self.started)


def warnings(config: DaemonConfig) -> list[str]:
    """One line per pool that hedges although it hashes or keeps instances sticky."""
    lines = []
    for pool in config.pools:
        if not pool.hedge:
            continue
        why = [w for w, on in (("balance = " + pool.balance, pool.balance.startswith("hash:")),
                               ("sticky-instance = yes", pool.sticky_instance)) if on]
        if why:
            lines.append(f"pool {pool.name}: hedge with {' and '.join(why)}: a hedged request "
                         "may reach two servers, which greylisting and rate limiting count "
                         "twice; hedge only pools without state (sticky-instance = no)")
    return lines
