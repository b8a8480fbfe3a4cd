"""Active health checks: the monitor asks each service a harmless request on a timer.

Run by the monitor (monitor.py) in its own event loop, with the workers' own backend connections,
after it dropped to --user. Each service is checked every check-interval seconds while it is up and
every check-down-interval seconds while it is down (also when a live request took it down: the next
check is brought forward); a check waits at most min(TIMEOUT, check-timeout) for its answer. With
checks on, they own the recovery (the master says so in the table, which every worker reads:
`CheckerSet.replace`, so that a monitor that dies or is replaced never changes who owns it): live
requests never probe a service that is down, and only check-rise consecutive answered checks bring
it back. check-fall consecutive failed checks take an up service down (a failed live request takes
it down at once: a live timeout is expensive). A local failure (the monitor out of descriptors) says
nothing of the service and is not counted.

The request sent is check-request (default: an RCPT-stage request from
hapolicy-check@localhost to postmaster@localhost at 127.0.0.1, which greylisting and rate-limit
servers answer without harm).
"""

from __future__ import annotations

import time

from hapolicy.backend.exchange import Backends
from hapolicy.base.eventloop import EventLoop, Timer
from hapolicy.base.log import Logger
from hapolicy.base.outcome import ANSWERED, LOCAL, fail_answer
from hapolicy.config.records import PoolConfig
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import UP
from hapolicy.tables.transitions import Health


class Checker:
    """Checks every service on its own timer; at most one check per service in flight."""

    def __init__(self, loop: EventLoop, config: PoolConfig, table: HealthTable,
                 log: Logger) -> None:
        self.loop = loop
        self.config = config
        self.table = table
        self.health = Health(table, config.services, config, log)
        self.log = log
        self.payload = config.check_request.encode() + b"\n"
        self.fail_answer = fail_answer(config.fail_answer)
        self.backends = Backends(loop, config.connect_timeout)
        count = len(config.services)
        self.rise = [0] * count  # consecutive answered checks while down
        self.fall = [0] * count  # consecutive failed checks while up
        self.started = [0.0] * count
        self.timers: list[Timer | None] = [None] * count  # the next check (None: one in flight)
        self.watch_timer: Timer | None = None
        self.stopped = False

    def start(self) -> None:
        if self.config.check_interval > 0:
            for i in range(len(self.config.services)):
                self.timers[i] = self.loop.call_later(0.0, lambda i=i: self.check(i))
            self.watch_timer = self.loop.call_later(self.config.check_down_interval, self.watch)

    def stop(self) -> None:
        """Stop checking (who owns the table's recovery is the master's to say)."""
        if self.stopped:
            return
        self.stopped = True
        for timer in [*self.timers, self.watch_timer]:
            if timer is not None:
                timer.cancel()
        self.backends.close()

    def watch(self) -> None:
        """Bring forward the next check of a service that a live request took down."""
        now = time.monotonic()
        soon = self.config.check_down_interval
        for i, timer in enumerate(self.timers):
            if timer is not None and self.table.state(i, now) != UP:
                due = max(now, self.started[i] + soon)
                if timer.when > due:
                    timer.cancel()
                    self.timers[i] = self.loop.call_at(due, lambda i=i: self.check(i))
        self.watch_timer = self.loop.call_later(soon, self.watch)

    def check(self, i: int) -> None:
        self.timers[i] = None
        if self.stopped:
            return
        service = self.config.services[i]
        now = self.started[i] = time.monotonic()
        if self.table.disabled(i):  # taken out by the operator: not checked until enabled
            self.timers[i] = self.loop.call_later(self.config.check_interval,
                                                  lambda: self.check(i))
            return
        deadline = now + min(service.timeout, self.config.check_timeout)
        self.backends.exchange(service, self.payload, deadline,
                               lambda action, outcome, detail:
                               self.done(i, outcome, detail, action))

    def done(self, i: int, outcome: int, detail: str, action: bytes = b"") -> None:
        if self.stopped:
            return
        if self.fail_answer is not None:
            outcome, detail = self.fail_answer.judge(action, outcome, detail)
        now = time.monotonic()
        up = self.table.state(i, now) == UP
        config = self.config
        if outcome == LOCAL:
            self.log.error(f"pool={config.name} service={config.services[i].name} not checked: "
                           f"{detail}")
        elif outcome == ANSWERED:
            self.fall[i] = 0
            if not up:
                self.rise[i] += 1
                if self.rise[i] >= config.check_rise:
                    self.rise[i] = 0
                    self.health.mark_up(i, f": check answered {config.check_rise} times")
                    up = True
        else:
            self.rise[i] = 0
            if up:
                self.fall[i] += 1
                if self.fall[i] >= config.check_fall:
                    self.fall[i] = 0
                    self.health.mark_down(i, outcome, "check: " + detail, now)
                    up = False
        # a first failure is confirmed, and a down service watched, at the shorter interval
        interval = config.check_interval if up and not self.fall[i] else config.check_down_interval
        wait = max(0.0, self.started[i] + interval - now)
        self.timers[i] = self.loop.call_later(wait, lambda: self.check(i))


class Checked:
    """One table to check with one pool's configuration; its Checker once the monitor runs it."""

    def __init__(self, config: PoolConfig, table: HealthTable) -> None:
        self.config = config
        self.table = table
        self.checker: Checker | None = None

    def stop(self) -> None:
        if self.checker is not None:
            self.checker.stop()
            self.checker = None


class CheckerSet:
    """What is checked: each pool's current table, and the tables kept for workers still using
    them.

    The master keeps this plan (no Checker runs in it) and says in each current table whether
    checks own its recovery; the monitor, forked with a copy, starts a Checker per entry
    (`start`). On a reload with new services (or without a pool), the workers that retire keep
    serving on the old table until they exit; its entry is kept for them (else their down
    services would wait for a check that never comes), until no worker of its generation or an
    older one is left (`stop_unused`: the master on its reaps, the monitor from the worker
    table)."""

    def __init__(self) -> None:
        self.current: dict[str, Checked] = {}  # by pool name
        self.kept: list[tuple[int, Checked]] = []  # (last generation served, entry)

    def all(self) -> list[Checked]:
        return [*self.current.values(), *(entry for _, entry in self.kept)]

    @property
    def checking(self) -> bool:
        """Whether any table is checked at all (the monitor has this to do)."""
        return any(entry.config.check_interval > 0 for entry in self.all())

    def replace(self, config: PoolConfig, table: HealthTable, keep_for: int | None,
                now: float) -> None:
        """`table` is the pool's current table, checked with `config`. The old entry is kept
        while workers of generation `keep_for` or older live, or dropped when it is None."""
        self.retire(config.name, keep_for)
        self.current[config.name] = Checked(config, table)
        table.set_recovery(config.check_interval > 0, now)

    def retire(self, pool: str, keep_for: int | None) -> None:
        """The pool's current entry is no longer current: kept for `keep_for`, or dropped."""
        old = self.current.pop(pool, None)
        if old is None:
            return
        if keep_for is not None:  # checked, and reached by the control commands
            self.kept.append((keep_for, old))
        else:
            old.stop()

    def start(self, loop: EventLoop, log: Logger) -> None:
        """In the monitor: a Checker for every table checked."""
        for entry in self.all():
            if entry.config.check_interval > 0 and entry.checker is None:
                entry.checker = Checker(loop, entry.config, entry.table, log)
                entry.checker.start()

    def stop_unused(self, generations: set[int]) -> None:
        """Drop (and stop) the kept entries that no live worker's generation needs any more."""
        for item in list(self.kept):
            generation, entry = item
            if not any(g <= generation for g in generations):
                entry.stop()
                self.kept.remove(item)

    def stop_all(self) -> None:
        for entry in self.all():
            entry.stop()
