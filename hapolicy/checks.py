"""Active health checks: every --check-interval seconds, ask each service a harmless request.

Run by the master in its own event loop, with the workers' own `Exchange`. A service that does
not answer with an `action=` line is marked down in the shared table before traffic finds it;
one that answers again is marked up without a real request having to probe it. The request
sent is --check-request (default: an RCPT-stage request from hapolicy-check@localhost to
postmaster@localhost at 127.0.0.1, which greylisting and rate-limit servers answer without
harm).
"""

from __future__ import annotations

import time

from .backend import Exchange, Pool, Resolver
from .config import Config
from .eventloop import EventLoop
from .health import HealthTable, note_failure, note_success
from .log import Logger


class Checker:
    """Probes every service on a timer; at most one probe per service in flight."""

    def __init__(self, loop: EventLoop, config: Config, health: HealthTable, log: Logger) -> None:
        self.loop = loop
        self.config = config
        self.health = health
        self.log = log
        self.payload = config.check_request.encode() + b"\n"
        self.pool = Pool(loop)
        self.resolver = Resolver()
        self.busy: set[int] = set()
        self.timer = None
        self.stopped = False

    def start(self) -> None:
        if self.config.check_interval > 0:
            self.timer = self.loop.call_later(0.0, self.round)

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
        self.pool.close()

    def round(self) -> None:
        if self.stopped:
            return
        now = time.monotonic()
        for i, service in enumerate(self.config.services):
            if i in self.busy:
                continue
            self.busy.add(i)
            deadline = now + min(service.timeout, self.config.check_interval * 2)
            Exchange(self.loop, service, self.payload, deadline, self.config.connect_timeout,
                     lambda action, reason, i=i: self.done(i, action, reason), self.pool,
                     self.resolver).start()
        self.timer = self.loop.call_later(self.config.check_interval, self.round)

    def done(self, i: int, action: bytes, reason: str) -> None:
        self.busy.discard(i)
        if self.stopped:
            return
        services = self.config.services
        if action:
            note_success(self.health, services, i, self.log)
        else:
            note_failure(self.health, services, i, "check: " + reason, time.monotonic(),
                         self.config.cooldown, self.config.cooldown_max, self.log)
