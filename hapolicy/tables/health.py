"""Per-service health and balancing state, shared by all workers through one anonymous mmap.

The master makes the table before it forks, so every worker sees the same memory; in spawn
mode the table is a file that every spawned process maps (statefile.py). Its words, and the
states they make, are named in layout.py. No locks on the way of a request: every word is
written whole, and every race is benign by construction: two workers that both see a failure
at the same instant may both log it, two that both see a cool-down end may both send a probe
request, and a concurrent increment of a counter may be lost (the counters are statistics, not
accounting: a rare lost count under a race is accepted). None of these loses an answer or
keeps a dead service in use. The one lock: spawned processes claim a probe under a record lock
of the state file, once per cool-down, since they start in bursts and would otherwise often
probe a dead service two or three at a time.

A service is up, or down until DOWN_UNTIL. When the cool-down is over, the first request to
claim it (`claim_probe`) tries it; others keep skipping it for the probe's lease. Success
brings it back; a timeout doubles the cool-down, up to the cap; any other failure (refused,
reset: cheap to try again) gives the base cool-down again. When active checks run, they own the
recovery: a service is down until a check brings it back (DOWN_UNTIL is infinite), so no live
request ever probes it.

The operator's admin state (control.py) is one of enabled, drain and disabled. Disabled is the
word ADMIN: inf, added to DOWN_UNTIL by `state`, so a disabled service reads as DOWN (never as
due for a probe) at the cost of one more read; the checks skip it, and its health is kept as
it was. Drain is the word DRAIN: the service stays up (checked, probed, asked by the
transactions sticky to it) but selection gives it no new transaction and no hash key while
another service can answer. The word WEIGHT is the operator's weight, 0.0 for the configured
one. A reload keeps all three for a service that stays (same name and address), except the
weight when the reload changed the configured one: the new configuration wins.

Counters: per service ANSWERS and FAILURES in its slot, per pool REQUESTS, the default answers
by reason, the results of the copies sent to its shadow and its hedges in the pool's slot.
Workers add to them in place (`f[word] += 1.0`, no call on the request path); the master reads
them for its summary line (summary.py), the monitor for the control socket and /metrics. Once
every request in flight is answered, REQUESTS equals the sum of ANSWERS plus the default
answers (plus, in a pool that caches, the hits and stale answers its verdict table counts).
The finer statistics (stats.py) and each worker's requests in flight are regions of their own
after the pool's slot.

The table's methods are the words' atomic steps; `Health` (transitions.py) is the one path
through which a process takes them for a live request or a check, and logs each change.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from array import array

from hapolicy.tables.layout import (
    ADMIN,
    BACK_SINCE,
    CHECKED,
    DISABLED,
    DOWN,
    DOWN_SINCE,
    DOWN_TOTAL,
    DOWN_UNTIL,
    DRAIN,
    DRAINING,
    ENABLED,
    LAST_CHANGE,
    LOAD,
    LOAD_SLOTS,
    POOL_COUNTERS,
    PROBE_DUE,
    PROBE_UNTIL,
    SERVED,
    SLOT,
    STATS,
    STREAK,
    UP,
    WEIGHT,
    in_flight_start,
    load_start,
    pool_start,
    stats_start,
    table_words,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from hapolicy.config.records import Service
    from hapolicy.tables.verdicts import VerdictTable


def whole(word: float) -> int:
    """A counter word as an int; 0 for what no counter holds (NaN, inf: the master, which reads
    what unprivileged processes write, must not raise on a bad word)."""
    return int(word) if -9e15 < word < 9e15 else 0


def table_bytes(count: int, workers: int = 0) -> int:
    """The size of the table of count services with in-flight words for `workers` slots."""
    return table_words(count, workers) * 8


class HealthTable:
    """The shared table; `shared=False` makes a private one (spawn mode without its file,
    tests). `mapping` gives the memory instead, from `offset` on: a file mapped shared by the
    processes of spawn mode (statefile.py); the table owns it and closes it. `workers`: the
    worker slots that say their requests in flight (the daemon's worker table's slots)."""

    def __init__(self, count: int, shared: bool = True, mapping: mmap.mmap | None = None,
                 offset: int = 0, probe_lock: int = -1, workers: int = 0) -> None:
        self.count = count
        self.workers = workers
        # a descriptor of the state file: its record locks make claiming a probe exclusive
        # among spawned processes, which start in bursts (many ask at once); -1: no lock
        self.probe_lock = probe_lock
        self.header = pool_start(count)  # the pool's slot, after the services'
        self.stats = stats_start(count)  # the statistics slots (stats.py)
        self.in_flight = in_flight_start(count)  # a word per worker slot
        size = table_bytes(count, workers)
        fresh = mapping is None
        if mapping is None:
            flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
            mapping = mmap.mmap(-1, size, flags=flags | mmap.MAP_ANONYMOUS)
        self._map = mapping
        self._bytes = memoryview(mapping)
        self.f = self._bytes[offset:offset + size].cast("d")
        if fresh:  # the last change of a service never changed: when its table was made
            wall = time.time()
            for i in range(count):
                self.f[self.stats + i * STATS + LAST_CHANGE] = wall
        # the pool's verdict cache (verdicts.py), another mmap, carried with the table so that
        # whoever has a pool's table (a worker, the monitor, the summary) has its cache; None:
        # the pool does not cache
        self.verdicts: VerdictTable | None = None

    def state(self, i: int, now: float) -> int:
        """Service i's health state at monotonic time now: UP, DOWN or PROBE_DUE (layout.py)."""
        f = self.f
        base = i * SLOT
        # ADMIN is 0.0 or inf: a disabled service is down for ever, never due for a probe
        down_until = f[base + DOWN_UNTIL] + f[base + ADMIN]
        if down_until == 0.0:
            return UP
        if now < down_until or now < f[base + PROBE_UNTIL]:
            return DOWN
        return PROBE_DUE

    def claim_probe(self, i: int, now: float, lease: float) -> bool:
        """Take the probe of a service whose cool-down is over; False if another took it."""
        f = self.f
        base = i * SLOT
        if not self._probe_due(base, now):
            return False
        if self.probe_lock < 0:
            f[base + PROBE_UNTIL] = now + lease
            return True
        import fcntl  # here: only a spawned process at the end of a cool-down needs it

        try:
            fcntl.lockf(self.probe_lock, fcntl.LOCK_EX, 1, i)
        except OSError:
            return False  # cannot tell whether another took it: leave it to them
        try:
            # again under the lock, at the time now: another may have probed meanwhile,
            # failed and started a new cool-down, or brought the service back
            now = time.monotonic()
            if not self._probe_due(base, now):
                return False
            f[base + PROBE_UNTIL] = now + lease
            return True
        finally:
            fcntl.lockf(self.probe_lock, fcntl.LOCK_UN, 1, i)

    def _probe_due(self, base: int, now: float) -> bool:
        """Whether the service whose slot starts at base is down, its cool-down over and no
        probe's lease out (its admin state aside: a disabled one is never picked)."""
        f = self.f
        down_until = f[base + DOWN_UNTIL]
        return not (down_until == 0.0 or now < down_until or now < f[base + PROBE_UNTIL])

    def record_success(self, i: int, now: float = 0.0) -> bool:
        """Count a good answer; True when this brought the service back up (at monotonic time
        now, the clock's if 0: the time it was down is added to its total)."""
        f = self.f
        base = i * SLOT
        if f[base + DOWN_UNTIL] == 0.0:
            return False
        f[base + STREAK] = 0.0
        f[base + DOWN_UNTIL] = 0.0
        f[base + PROBE_UNTIL] = 0.0
        stats = self.stats + i * STATS
        f[stats + DOWN_TOTAL] += max(0.0, (now or time.monotonic()) - f[base + DOWN_SINCE])
        f[stats + LAST_CHANGE] = time.time()
        return True

    def record_failure(self, i: int, now: float, cooldown: float, cap: float,
                       doubling: bool = True) -> tuple[bool, float]:
        """Count a failure and mark the service down; (was it up before, cool-down given).

        With `doubling` the pause is cooldown doubled at each consecutive such failure, up to
        cap; without, it is cooldown and the streak is left as it was."""
        f = self.f
        base = i * SLOT
        down_until = f[base + DOWN_UNTIL]
        if now < down_until and now >= f[base + PROBE_UNTIL]:
            # already down and not a probe: a request sent before it went down failed too
            # (a burst of in-flight requests); only failed probes lengthen the pause
            return False, down_until - now
        was_up = down_until == 0.0
        if doubling:
            streak = f[base + STREAK] + 1
            f[base + STREAK] = streak
            pause = min(cooldown * 2.0 ** min(streak - 1, 30), cap)
        else:
            pause = cooldown
        if was_up:  # first: a worker that sees it down must not read an old DOWN_SINCE
            f[base + DOWN_SINCE] = now
            f[self.stats + i * STATS + LAST_CHANGE] = time.time()
        f[base + DOWN_UNTIL] = now + pause
        f[base + PROBE_UNTIL] = 0.0
        return was_up, pause

    def down_since(self, i: int) -> float:
        """When service i was last marked down (0.0: never); meaningful while it is down."""
        return self.f[i * SLOT + DOWN_SINCE]

    @property
    def checked(self) -> bool:
        """Whether active checks run on this table and own the recovery (the master says)."""
        return self.f[self.header + CHECKED] != 0.0

    def set_recovery(self, checked: bool, now: float) -> None:
        """Say whether checks own this table, and make every down service wait for what
        recovers it now: a check (checked) or a probe.

        The flag lives in the table, so every worker that uses it, old or new, follows it: a
        reload that turns checks off, or gives the new workers a new table while old ones
        still serve on this one, must not leave a service down for ever, nor may live
        requests probe a service that checks own."""
        f = self.f
        f[self.header + CHECKED] = 1.0 if checked else 0.0
        for i in range(self.count):
            word = i * SLOT + DOWN_UNTIL
            if f[word] == 0.0:
                continue
            if checked:
                f[word] = math.inf
            elif f[word] == math.inf:
                f[word] = now
                f[i * SLOT + PROBE_UNTIL] = 0.0

    def disabled(self, i: int) -> bool:
        """Whether the operator took service i out (its admin state)."""
        return self.f[i * SLOT + ADMIN] != 0.0

    def draining(self, i: int) -> bool:
        """Whether the operator drains service i."""
        return self.f[i * SLOT + DRAIN] != 0.0

    def admin(self, i: int) -> str:
        """Service i's admin state: one of ADMIN_STATES."""
        if self.disabled(i):
            return DISABLED
        return DRAINING if self.draining(i) else ENABLED

    def set_admin(self, i: int, state: str) -> None:
        """Set service i's admin state for every worker at once (one of ADMIN_STATES)."""
        base = i * SLOT
        self.f[base + DRAIN] = 1.0 if state == DRAINING else 0.0
        self.f[base + ADMIN] = math.inf if state == DISABLED else 0.0

    def weight(self, i: int, configured: int) -> int:
        """Service i's effective weight: the operator's, else the configured one."""
        weight = self.f[i * SLOT + WEIGHT]
        # only the master's control path writes it; the bound keeps a bad word from raising
        return int(weight) if 1.0 <= weight <= 1e9 else configured

    def set_weight(self, i: int, weight: int) -> None:
        """The operator's weight of service i (0: back to the configured one)."""
        self.f[i * SLOT + WEIGHT] = float(weight)

    def served(self, i: int) -> float:
        return self.f[i * SLOT + SERVED]

    def add_served(self, i: int, amount: float) -> None:
        self.f[i * SLOT + SERVED] += amount

    def set_served(self, i: int, value: float) -> None:
        self.f[i * SLOT + SERVED] = value

    def copy_slot(self, i: int, other: HealthTable, j: int) -> None:
        """Take over service j's state and statistics from another table as service i's (on
        reload)."""
        self.f[i * SLOT:(i + 1) * SLOT] = other.f[j * SLOT:(j + 1) * SLOT]
        mine, theirs = self.stats + i * STATS, other.stats + j * STATS
        self.f[mine:mine + STATS] = other.f[theirs:theirs + STATS]

    def copy_counters(self, other: HealthTable) -> None:
        """Take over the pool's counters from another table of the same pool (on reload)."""
        for word in POOL_COUNTERS:
            self.f[self.header + word] = other.f[other.header + word]

    def counter(self, word: int) -> int:
        """One of the pool's counters (REQUESTS, DEFAULT_*)."""
        return whole(self.f[self.header + word])

    def service_counter(self, i: int, field: int) -> int:
        """One of service i's counters (ANSWERS, FAILURES)."""
        return whole(self.f[i * SLOT + field])

    def clear_slot(self, slot: int, used: bool = False) -> None:
        """Forget what the worker slot said (its worker is gone, or a new one starts there:
        `used`): its requests in flight and its load words; a slot used from now on is among
        those the load's readers sum (layout.LOAD_SLOTS)."""
        if slot < self.workers:
            self.f[self.in_flight + slot] = 0.0
            start = load_start(self.count, self.workers) + slot * self.count * LOAD
            self.f[start:start + self.count * LOAD] = array("d", bytes(self.count * LOAD * 8))
            bound = self.header + LOAD_SLOTS
            if used and self.f[bound] < slot + 1:
                self.f[bound] = float(slot + 1)

    def set_in_flight(self, slot: int, count: int) -> None:
        """The requests the worker in slot has in flight for this pool (its housekeeping)."""
        if slot < self.workers:
            self.f[self.in_flight + slot] = count

    def requests_in_flight(self, slots: Iterable[int]) -> int:
        """The requests in flight of the workers in these slots, as of their last pass."""
        return sum(whole(self.f[self.in_flight + s]) for s in slots if s < self.workers)

    def rejoin(self, i: int, peers: list[int]) -> None:
        """A service came back (from a failure, enabled by the operator, new in a reload):
        start its clock level with those of its peers (`peers`) that are in the rotation, not
        far behind them (one that is out, down, disabled or drained, has an old clock too),
        and its slow start now."""
        f = self.f
        f[i * SLOT + BACK_SINCE] = time.monotonic()
        others = [f[j * SLOT + SERVED] for j in peers if j != i
                  and f[j * SLOT + DOWN_UNTIL] + f[j * SLOT + ADMIN] == 0.0
                  and not f[j * SLOT + DRAIN]]
        if others:
            self.set_served(i, max(self.served(i), min(others)))

    def randomize_phase(self, weights: list[int]) -> None:
        """Start round robin at a random phase (a spawned process with a table of its own)."""
        import random

        for i, weight in enumerate(weights):
            self.set_served(i, -random.random() / weight)

    def close(self) -> None:
        self.f.release()
        self._bytes.release()
        self._map.close()
        if self.probe_lock >= 0:
            os.close(self.probe_lock)
            self.probe_lock = -1


def peers(services: Sequence[Service], i: int) -> list[int]:
    """The services whose round-robin clocks service i's is leveled with when it comes back
    (`HealthTable.rejoin`): those of its priority group."""
    return [j for j, t in enumerate(services) if t.prio == services[i].prio]


def carry_over(old: HealthTable, before: Sequence[Service],
               after: Sequence[Service]) -> HealthTable:
    """A new table for a reload's services: one that stays (same name and address) keeps what
    is known of it and its counters; a new one starts up, its clock level with its priority
    group's (not all new transactions its own until it caught up). The pool keeps its
    counters."""
    table = HealthTable(len(after), workers=old.workers)
    table.copy_counters(old)
    index = {(s.name, s.address): i for i, s in enumerate(before)}
    for i, service in enumerate(after):
        j = index.get((service.name, service.address))
        if j is not None:
            table.copy_slot(i, old, j)
            if before[j].weight != service.weight:
                table.set_weight(i, 0)
    for i, service in enumerate(after):
        if (service.name, service.address) not in index:
            table.rejoin(i, peers(after, i))
    return table
