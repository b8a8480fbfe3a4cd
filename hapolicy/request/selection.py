"""The order in which to try services for one request.

Priority groups are sorted by NUMERIC priority, lowest first (the original sorted them as text,
so 10 came before 9). Inside a group the pick is weighted round robin on virtual time kept in
the shared health table: each pick adds 1/weight to the service's clock and the service whose
next clock is lowest wins, so a 2:1 pair goes A A B A A B across all workers together. With
`hash:ATTRS` the pick is weighted rendezvous hashing of those attributes instead: the same key
always lands on the same service, and when one dies only its share moves.

Services that are down are skipped; one whose cool-down is over is given to a single request as
a probe. When no service of any group is usable the pick is -1 and the request gets the default
answer at once, unless `try_down` (all-down = try) asks to try the ones marked down anyway, in
order: each costs its timeout when it is still dead. A request never tries a service twice. A
service the operator disabled reads as down and is never tried, not even as a last resort. One
the operator drains is up but gets no new transaction and no hash key: it is asked by requests
sticky to it, and by the others only when no other service is up (then it is better than the
default answer). The operator's weight (layout.WEIGHT) replaces the configured one at once.

With `slowstart` S, a service that came back into the rotation (layout.BACK_SINCE: after a
failure, enabled by the operator, new in a reload) counts in round robin with its weight times
the part of S that has passed since (at least MIN_SHARE), so its share grows from a twentieth
to the whole over S seconds; hash pools keep their keys where they are.

With `balance = least-latency` the pick inside a group is the power of two choices instead: two
services of the group drawn at random by weight, and of the two the one with the lower cost
more likely, in proportion: cost is the service's peak-EWMA answer time (load.py) times
(1 + its requests in flight, over all workers, per unit of weight), and each of the two is
chosen with a probability proportional to its weight over the square of its cost. So a service
ten times slower gets a hundredth of what its weight gives (the square: a fast service's
passing stall, which its peak-EWMA keeps for a while, hands a slow one little), two services
that answer alike share by weight (a strict "lower wins" would give the heavier of two every
request), and one that failed (its cost is its timeout) gets nothing until its cost decays.

With `max-inflight` N, `limit` says how many requests service i may have in flight: N, or
less in its slow start (at least 1); the request path (job.py) claims a slot before it sends.

Round robin is this module's alone: the lane (lane.py), which makes the first group's pick
itself when every member is up, makes it with `by_weight` and counts it with `commit`.
"""

from __future__ import annotations

import math
import time

from hapolicy.tables.layout import (
    ADMIN,
    BACK_SINCE,
    DOWN_UNTIL,
    DRAIN,
    PROBE_DUE,
    SERVED,
    SLOT,
    WEIGHT,
)
from hapolicy.tables.load import answer_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from hapolicy.config.records import DaemonConfig, Service
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.load import ServiceLoad

MIN_SHARE = 0.05  # of its weight, for a service whose slow start has just begun

class Selector:
    """Picks services for requests; holds only derived, read-only data about the services."""

    def __init__(self, services: Sequence[Service], table: HealthTable,
                 try_down: bool = False, slowstart: float = 0.0,
                 load: ServiceLoad | None = None, least_latency: bool = False,
                 max_inflight: int = 0) -> None:
        self.services = list(services)
        self.table = table
        self.slowstart = slowstart
        self.load = load  # the services' load: least-latency and max-inflight read it
        self.least_latency = least_latency and load is not None
        self.max_inflight = max_inflight
        self.random = None
        if self.least_latency:
            import random  # here: spawn mode loads it only for a least-latency pool

            self.random = random.random
        prios = sorted({s.prio for s in services})
        self.groups = [[i for i, s in enumerate(services) if s.prio == p] for p in prios]
        # 1/weight per pick on the service's round-robin clock; 0.0 when it is alone in its
        # priority group: then there is no clock to keep (and no shared write per request)
        self.step = [1.0 / s.weight if sum(t.prio == s.prio for t in services) > 1 else 0.0
                     for s in services]
        self.names = [s.name.encode() for s in services]
        self.last_resort = [i for group in self.groups for i in group] if try_down else []
        self.blake2b = None

    def pick(self, tried: int, now: float, key: bytes | None = None, sticky: int = -1,
             last_resort: bool = True) -> int:
        """The next service to try (index), or -1 when none is left to try.

        `tried` is a bit mask of services this request already tried; `key` the hash key in
        hash mode; `sticky` a service to prefer while it is up (same SMTP transaction).
        """
        table = self.table
        f = table.f
        # a service is UP when DOWN_UNTIL + ADMIN is 0.0: HealthTable.state inline, as the
        # common pick (the sticky service, or the first group's) needs nothing else
        if sticky >= 0 and not tried >> sticky & 1 and (f[sticky * SLOT + DOWN_UNTIL]
                                                        + f[sticky * SLOT + ADMIN] == 0.0):
            return self.commit(sticky) if self.step[sticky] else sticky
        drained = -1  # the first up service the operator drains: asked when no other can be
        for group in self.groups:
            candidates = []
            for i in group:
                if tried >> i & 1:
                    continue
                base = i * SLOT
                if f[base + DOWN_UNTIL] + f[base + ADMIN] == 0.0:  # UP
                    if f[base + DRAIN]:
                        if drained < 0:
                            drained = i
                        continue
                    candidates.append(i)
                elif (table.state(i, now) == PROBE_DUE
                      and table.claim_probe(i, now, self._lease(i))):
                    return i
            if candidates:
                if len(candidates) == 1:
                    i = candidates[0]
                    return self.commit(i) if self.step[i] else i
                if key is not None:
                    return self._by_hash(candidates, key)
                if self.least_latency:
                    return self._by_latency(candidates, now)
                return self.commit(self.by_weight(candidates))
        if drained >= 0:
            return self.commit(drained)
        if last_resort:
            for i in self.last_resort:
                if not tried >> i & 1 and not table.disabled(i):
                    return i
        return -1

    def _lease(self, i: int) -> float:
        return self.services[i].timeout + 5.0

    def _step(self, i: int) -> float:
        """What one pick adds to service i's clock: 1/weight, the operator's weight first, and
        larger while its slow start runs."""
        weight = self.table.f[i * SLOT + WEIGHT]
        step = 1.0 / weight if weight else self.step[i]
        return step / self.ramp(i) if self.slowstart else step

    def ramp(self, i: int) -> float:
        """The part of its weight service i counts with now: 1.0, or less in its slow start."""
        back = self.table.f[i * SLOT + BACK_SINCE]
        if not self.slowstart or not back:
            return 1.0
        done = (time.monotonic() - back) / self.slowstart
        if done >= 1.0:
            return 1.0
        return done if done > MIN_SHARE else MIN_SHARE  # MIN_SHARE for a NaN too (a bad word)

    def limit(self, i: int) -> int:
        """How many requests service i may have in flight (0: no limit): max-inflight, or
        its part of it in its slow start, at least 1."""
        if not self.max_inflight or not self.slowstart:
            return self.max_inflight
        return max(1, math.ceil(self.max_inflight * self.ramp(i)))

    def _by_latency(self, candidates: list[int], now: float) -> int:
        """least-latency's pick of candidates (up, of one group; see the module doc)."""
        weights = [self.table.weight(i, self.services[i].weight) * self.ramp(i)
                   for i in candidates]
        first = self._draw(weights)
        if len(candidates) == 2:
            second = 1 - first
        else:
            rest = weights[:first] + [0.0] + weights[first + 1:]
            second = self._draw(rest)
        a, b = self.score(candidates[first], now, weights[first]), \
            self.score(candidates[second], now, weights[second])
        return candidates[first] if self.random() * (a + b) < a else candidates[second]

    def _draw(self, weights: list[float]) -> int:
        """An index of weights drawn at random in proportion to them."""
        point = self.random() * sum(weights)
        for k, weight in enumerate(weights):
            point -= weight
            if point < 0.0 and weight:
                return k
        return max(range(len(weights)), key=weights.__getitem__)

    def score(self, i: int, now: float, weight: float = 0.0) -> float:
        """least-latency's score of service i, its weight over the square of its cost: answer
        time x (1 + in flight per weight); weight: its effective weight, if known."""
        if not weight:
            weight = self.table.weight(i, self.services[i].weight) * self.ramp(i)
        cost = answer_time(self.table, i, now) * (1.0 + self.load.in_flight(i) / weight)
        return weight / (cost * cost)

    def commit(self, i: int) -> int:
        """Count a pick of service i on its round-robin clock (none when it is alone in its
        group); returns i. `pick` commits its own picks; a pick made with `by_weight` is
        committed once it is used."""
        if self.step[i]:
            self.table.add_served(i, self._step(i))
        return i

    def by_weight(self, candidates: list[int]) -> int:
        """The round robin's pick of candidates (services that are up, of one group): the one
        whose clock after this pick is lowest (the first of equals). Not committed."""
        if self.slowstart:
            return min(candidates, key=lambda i: self.table.served(i) + self._step(i))
        f = self.table.f
        steps = self.step
        best, lowest = -1, 0.0
        for i in candidates:  # in index order: the first of equal clocks wins, as min's key
            weight = f[i * SLOT + WEIGHT]  # _step inline
            clock = f[i * SLOT + SERVED] + (1.0 / weight if weight else steps[i])
            if best < 0 or clock < lowest:
                best, lowest = i, clock
        return best

    def _by_hash(self, candidates: list[int], key: bytes) -> int:
        return max(candidates, key=lambda i: self.hash_score(i, key))

    def hash_score(self, i: int, key: bytes) -> float:
        """Weighted rendezvous score of service i for key (highest wins)."""
        if self.blake2b is None:
            import hashlib  # here: loading OpenSSL costs a spawned process 2 ms of its start

            self.blake2b = hashlib.blake2b
        digest = self.blake2b(key + b"\0" + self.names[i], digest_size=8).digest()
        unit = (int.from_bytes(digest, "big") + 1) / 2.0**64  # in (0, 1]
        weight = self.table.weight(i, self.services[i].weight)
        return -weight / math.log(unit) if unit < 1.0 else math.inf


def warnings(config: DaemonConfig) -> list[str]:
    """One line per pool whose least-latency or max-inflight its other settings undo."""
    lines = []
    for pool in config.pools:
        if pool.balance == "least-latency" and pool.sticky_instance:
            lines.append(f"pool {pool.name}: balance = least-latency with sticky-instance = "
                         "yes: the later requests of a transaction go where its first went, "
                         "however slow that service has become since; least-latency is for "
                         "pools without state (sticky-instance = no)")
        if pool.max_inflight and not pool.listen:
            lines.append(f"pool {pool.name}: max-inflight in spawn mode counts the requests "
                         "of one process, which has one at a time: it limits nothing (run "
                         "the daemon to limit a service's requests)")
    return lines
