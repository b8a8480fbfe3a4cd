"""Active health checks: the master asks each service a harmless request on a timer.

Run by the master in its own event loop, with the workers' own backend connections. Each
service is checked every check-interval seconds while it is up and every check-down-interval seconds
while it is down (also when a live request took it down: the next check is brought forward);
a check waits at most min(TIMEOUT, check-timeout) for its answer. With checks on, they own the
recovery (the checker says so in the table, which every worker reads): live requests never
probe a service that is down, and only check-rise consecutive answered checks bring it back. check-fall consecutive failed checks take
an up service down (a failed live request takes it down at once: a live timeout is expensive).
A local failure (the master out of descriptors) says nothing of the service and is not counted.

The request sent is check-request (default: an RCPT-stage request from
hapolicy-check@localhost to postmaster@localhost at 127.0.0.1, which greylisting and rate-limit
servers answer without harm).
"""

from __future__ import annotations

import time

from .backend import Backends
from .config import Config
from .eventloop import EventLoop, Timer
from .health import UP, Health, HealthTable
from .log import Logger
from .outcome import ANSWERED, FAIL_ANSWER, LOCAL


class Checker:
    """Checks every service on its own timer; at most one check per service in flight."""

    def __init__(self, loop: EventLoop, config: Config, table: HealthTable, log: Logger) -> None:
        self.loop = loop
        self.config = config
        self.table = table
        self.health = Health(table, config.services, config, log)
        self.log = log
        self.payload = config.check_request.encode() + b"\n"
        self.fail_answer = None
        if config.fail_answer:
            import re

            self.fail_answer = re.compile(config.fail_answer.encode(), re.IGNORECASE).search
        self.backends = Backends(loop, config.connect_timeout)
        count = len(config.services)
        self.rise = [0] * count  # consecutive answered checks while down
        self.fall = [0] * count  # consecutive failed checks while up
        self.started = [0.0] * count
        self.timers: list[Timer | None] = [None] * count  # the next check (None: one in flight)
        self.watch_timer: Timer | None = None
        self.stopped = False

    def start(self) -> None:
        checking = self.config.check_interval > 0
        self.table.set_recovery(checking, time.monotonic())
        if checking:
            for i in range(len(self.config.services)):
                self.timers[i] = self.loop.call_later(0.0, lambda i=i: self.check(i))
            self.watch_timer = self.loop.call_later(self.config.check_down_interval, self.watch)

    def stop(self) -> None:
        """Stop checking; the table's services go back to being probed by live requests."""
        if self.stopped:
            return
        self.stopped = True
        for timer in [*self.timers, self.watch_timer]:
            if timer is not None:
                timer.cancel()
        self.backends.close()
        self.table.set_recovery(False, time.monotonic())

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
        fail_answer = self.fail_answer
        if outcome == ANSWERED and fail_answer is not None and fail_answer(action[7:]):
            outcome = FAIL_ANSWER
            detail = "answer matched fail-answer: " + action[7:].decode("utf-8", "replace")
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


class CheckerSet:
    """The checker of each pool's current health table, and those kept for tables still in use.

    On a reload with new services (or without a pool), the workers that retire keep serving on
    the old table until they exit; its checker keeps running for them (else their down services
    would go back to live probes), and stops once no worker of its generation or an older one is
    left."""

    def __init__(self) -> None:
        self.current: dict[str, Checker] = {}  # by pool name
        self.kept: list[tuple[int, Checker]] = []  # (last generation served, checker)

    def all(self) -> list[Checker]:
        return [*self.current.values(), *(checker for _, checker in self.kept)]

    def replace(self, pool: str, checker: Checker, keep_for: int | None) -> None:
        """Start `checker` as the pool's current one. The old one is kept while workers of
        generation `keep_for` or older live, or stopped now when `keep_for` is None."""
        self.retire(pool, keep_for)
        self.current[pool] = checker
        checker.start()

    def retire(self, pool: str, keep_for: int | None) -> None:
        """The pool's current checker is no longer current: kept for `keep_for`, or stopped."""
        old = self.current.pop(pool, None)
        if old is not None:
            if keep_for is None:
                old.stop()
            else:
                self.kept.append((keep_for, old))

    def stop_unused(self, generations: set[int]) -> None:
        """Stop the kept checkers that no live worker's generation needs any more."""
        for entry in list(self.kept):
            generation, checker = entry
            if not any(g <= generation for g in generations):
                checker.stop()
                self.kept.remove(entry)

    def stop_all(self) -> None:
        for checker in self.all():
            checker.stop()
