"""The load of a pool's services: requests in flight and waiting, and each one's answer time.

In flight and waiting are exact, not statistics: max-inflight must never let more requests
reach a service than its limit, and a count that drifted up would shut it out for good. So no
two processes write one word: each worker writes only its own slot's words in the table's load
region (layout.py), at each change, and the service's load is their sum. A worker's claim of a
slot is optimistic: it adds its request, reads the sum again, and takes it back when the sum
is over the limit; two workers racing for the last slot may both give it back (that request
waits or goes elsewhere), never both keep it. The master zeroes a slot's words when its worker
is gone and when it starts one there (a worker killed with requests in flight leaves none
counted). A process without a slot (spawn mode, the monitor's `ask`) counts in private words,
which only it sees.

A service's answer time is a peak-EWMA (as Finagle's and Linkerd's balancers keep it) in the
service's slot, shared by every process: an answer slower than the average becomes the average
at once, a faster one pulls it down by a SAMPLES-th of the difference, and between answers it
decays toward 0 with the time nothing came in (DECAY_SECONDS), so a service that was slow once
is tried again. The pull is by answer, not by time (Finagle's is by time): then a service asked
twice as often is not measured by the peak of twice as many answers, which would hand its
share, under the same jitter, to the one asked less (weights 2:1 would not hold). A failure
counts as an answer that took the service's whole timeout. Two processes writing it at once lose one of the two answers: an estimate, not a
count.
"""

from __future__ import annotations

import math

from hapolicy.tables.health import whole
from hapolicy.tables.layout import (
    EWMA,
    EWMA_AT,
    LOAD,
    LOAD_IN_FLIGHT,
    LOAD_QUEUED,
    LOAD_SLOTS,
    SLOT,
    STATS,
    TURNED_AWAY,
    load_start,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.tables.health import HealthTable

DECAY_SECONDS = 2.0  # the time constant of the decay between answers
SAMPLES = 10  # the answers the EWMA remembers: a faster one pulls it down by 1/SAMPLES
FLOOR_SECONDS = 0.0001  # the least answer time a service counts with (one not yet measured)


class ServiceLoad:
    """The load of one pool's services as one process sees and changes it; `slot` is the
    process's worker slot (-1, or one the table has no words for: private counts)."""

    def __init__(self, table: HealthTable, slot: int = -1) -> None:
        self.table = table
        self.f = table.f
        count = table.count
        self.count = count
        start = load_start(count, table.workers)
        self.slots = [start + k * count * LOAD for k in range(table.workers)]
        # the slots in use: those below the bound the master raises as it starts workers
        # (layout.LOAD_SLOTS; 0: all of them): a table has room for 128 and more
        self.bound = table.header + LOAD_SLOTS
        self.slot = slot if 0 <= slot < table.workers else table.workers
        if self.slot < table.workers:
            self.own = self.f
            self.mine = self.slots[slot]
        else:
            self.own = [0.0] * (count * LOAD)
            self.mine = 0

    def _total(self, word: int) -> int:
        """The sum of one load word over the slots in use, and this process's."""
        f = self.f
        bound = f[self.bound]
        used = int(bound) if 0.0 < bound < len(self.slots) else len(self.slots)
        total = sum(f[s + word] for s in self.slots[:used])
        if self.slot >= used:  # its own words are not among those summed
            total += self.own[self.mine + word]
        count = whole(total)
        return count if count > 0 else 0  # never less than none, whatever a word says

    def in_flight(self, i: int) -> int:
        """Service i's requests in flight, over every process."""
        return self._total(i * LOAD + LOAD_IN_FLIGHT)

    def claim(self, i: int, limit: int) -> bool:
        """Count a request sent to service i if it has fewer than `limit` in flight (0: no
        limit); False, counted nothing, when it has not."""
        word = self.mine + i * LOAD + LOAD_IN_FLIGHT
        self.own[word] += 1.0
        if limit and self.in_flight(i) > limit:
            self.own[word] -= 1.0
            return False
        return True

    def end(self, i: int) -> None:
        """A request sent to service i got its answer, or will not."""
        word = self.mine + i * LOAD + LOAD_IN_FLIGHT
        if self.own[word] >= 1.0:
            self.own[word] -= 1.0

    def queued(self, i: int) -> int:
        """The requests waiting for a free slot of service i, over every process."""
        return self._total(i * LOAD + LOAD_QUEUED)

    def queue(self, i: int, change: int) -> None:
        """A request of this process starts (+1) or stops (-1) waiting for service i."""
        self.own[self.mine + i * LOAD + LOAD_QUEUED] += change

    def turned_away(self, i: int) -> None:
        """Count a request service i's limit did not let through."""
        self.f[self.table.stats + i * STATS + TURNED_AWAY] += 1.0


def observe(table: HealthTable, i: int, seconds: float, now: float) -> None:
    """Take an answer of service i that took `seconds` (at monotonic time now) into its
    peak-EWMA."""
    f = table.f
    base = i * SLOT
    cost = f[base + EWMA]
    if not cost >= 0.0 or cost > 1e9:  # a bad word (NaN, inf) is not kept for ever
        cost = 0.0
    elif cost:
        cost *= math.exp(-max(now - f[base + EWMA_AT], 0.0) / DECAY_SECONDS)
    f[base + EWMA] = seconds if seconds > cost else cost + (seconds - cost) / SAMPLES
    f[base + EWMA_AT] = now


def answer_time(table: HealthTable, i: int, now: float) -> float:
    """Service i's peak-EWMA answer time at monotonic time now (decayed since its last
    answer), at least FLOOR_SECONDS."""
    f = table.f
    base = i * SLOT
    cost = f[base + EWMA]
    if not 0.0 < cost < 1e9:  # none yet; or a bad word (read by the monitor: never raise)
        return FLOOR_SECONDS
    cost *= math.exp(-max(now - f[base + EWMA_AT], 0.0) / DECAY_SECONDS)
    return cost if cost > FLOOR_SECONDS else FLOOR_SECONDS


def ewma(table: HealthTable, i: int, now: float) -> float | None:
    """Service i's peak-EWMA answer time as shown (status, /metrics): decayed to now; None
    before its first answer."""
    return answer_time(table, i, now) if table.f[i * SLOT + EWMA] > 0.0 else None
