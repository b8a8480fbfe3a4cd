"""Per-service health and balancing state, shared by all workers through one anonymous mmap.

The master makes the table before it forks, so every worker sees the same memory; in spawn
mode the table is a file that every spawned process maps (statefile.py). Each service
has a fixed slot of float64 fields (see FIELDS). No locks on the way of a request: every field
is one aligned 8-byte word, written whole (atomic on the platforms Python runs on), and every
race is benign by construction: two workers that both see a failure at the same instant may
both log it, two that both see a cool-down end may both send a probe request, and a
concurrent increment of a counter may be lost (the counters below are statistics, not
accounting: a rare lost count under a race is accepted). None of these loses an answer or keeps a dead
service in use. The one lock: spawned processes claim a probe under a record lock of the
state file, once per cool-down, since they start in bursts and would otherwise often probe
a dead service two or three at a time.

A service is up, or down until `down_until`. When the cool-down is over, the first request to
claim it (`claim_probe`) tries it; others keep skipping it for the probe's lease. Success
brings it back; a timeout doubles the cool-down, up to the cap; any other failure (refused,
reset: cheap to try again) gives the base cool-down again. When active checks run, they own the
recovery: a service is down until a check brings it back (`down_until` is infinite), so no live
request ever probes it.

The operator's admin state (control.py) is one of enabled, drain and disabled. Disabled is word
ADMIN of the slot: inf, added to DOWN_UNTIL by `state`, so a disabled service reads as DOWN
(never as due for a probe) at the cost of one more read; the checks skip it, and its health is
kept as it was. Drain is word DRAIN: the service stays up (checked, probed, asked by the
transactions sticky to it) but selection gives it no new transaction and no hash key while
another service can answer. Word WEIGHT is the operator's weight, 0.0 for the configured one.
A reload keeps all three for a service that stays (same name and address), except the weight
when the reload changed the configured one: the new configuration wins.

Counters (float64, exact up to 2**53): per service ANSWERS and FAILURES in its slot, per pool
REQUESTS, the default answers by reason, the results of the copies sent to its shadow and
its hedges in the table's own slot. Workers add to them in
place (`f[word] += 1.0`, no call on the request path); the master reads them for its summary
line (summary.py), the control socket and /metrics. Once every request in flight is answered,
REQUESTS equals the sum of ANSWERS plus the default answers. The finer statistics (failures by
outcome, answers by action, latency, time of the last change, time down) are in a region of
their own after the pool's slot, one STATS-word slot per service (stats.py), and after them one
word per worker slot: its requests in flight for the pool (`workers` words; 0 in spawn mode).

`Health` is the one path through which a process changes a service's state: `ok` and `failed`
for live requests, `mark_up` and `mark_down` for the checks. It logs each change once.
"""

from __future__ import annotations

import math
import mmap
import os
import time

from hapolicy.base.outcome import counts_against_service, doubles_pause
from hapolicy.tables.stats import STATS, S

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from hapolicy.base.log import Logger
    from hapolicy.config.records import Config, Service


class F:
    """Field offsets inside one service's slot (plain ints: this is the hot path)."""

    DOWN_UNTIL = 0  # monotonic time; 0 when up
    PROBE_UNTIL = 1  # lease of the request that probes it after its cool-down
    SERVED = 2  # virtual time of weighted round robin (+1/weight per pick)
    STREAK = 3  # consecutive failures that doubled the cool-down
    DOWN_SINCE = 4  # monotonic time it was last marked down
    ANSWERS = 5  # counter: good answers of live requests
    FAILURES = 6  # counter: live requests' failures that count against the service
    ADMIN = 7  # 0.0 enabled; inf: disabled by the operator (control.py): reads as DOWN
    DRAIN = 8  # 1.0: drained by the operator: no new transaction, no hash key goes there
    WEIGHT = 9  # the operator's weight (control.py); 0.0: the configured one


SLOT = 16  # words per service: two 64-byte cache lines, the first one read on every pick
UP, DOWN, PROBE_DUE = 0, 1, 2
ENABLED, DRAINING, DISABLED = "enabled", "drain", "disabled"
ADMIN_STATES = (ENABLED, DRAINING, DISABLED)
# words of the table's own slot, after the services'
CHECKED = 0  # 1.0 while checks own it
REQUESTS = 1  # counter: requests the pool's dispatchers sent on their way (a Job each)
DEFAULT_FAILED = 2  # counters of default answers, by reason: all services failed,
DEFAULT_DOWN = 3  # all services down,
DEFAULT_TIMEOUT = 4  # total timeout reached,
DEFAULT_REFUSED = 5  # the request refused unread (too large, a line without `=`)
SHADOW_AGREE = 6  # counters of the copies sent to the pool's shadow (shadow.py): same verdict,
SHADOW_DISAGREE = 7  # another verdict,
SHADOW_FAILED = 8  # the shadow's default answer (it failed, timed out),
SHADOW_DROPPED = 9  # not sent: too many in flight, or the worker busy
HEDGED = 10  # counter: second services asked by a hedge (hedge.py)
HEDGE_WON = 11  # counter: requests answered by the hedge's service
DEFAULT_INTERNAL = 12  # counter of default answers: an exception while handling the request
SHADOW_COUNTERS = (SHADOW_AGREE, SHADOW_DISAGREE, SHADOW_FAILED, SHADOW_DROPPED)
POOL_COUNTERS = (REQUESTS, DEFAULT_FAILED, DEFAULT_DOWN, DEFAULT_TIMEOUT, DEFAULT_REFUSED,
                 *SHADOW_COUNTERS, HEDGED, HEDGE_WON, DEFAULT_INTERNAL)


def whole(word: float) -> int:
    """A counter word as an int; 0 for what no counter holds (NaN, inf: the master, which reads
    what unprivileged processes write, must not raise on a bad word)."""
    return int(word) if -9e15 < word < 9e15 else 0


def table_bytes(count: int, workers: int = 0) -> int:
    """The size of the table of count services: their slots, the table's own, their statistics
    slots and a word per worker slot."""
    return ((count + 1) * SLOT + count * STATS + workers) * 8


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
        self.header = count * SLOT  # the table's own words, after the services' slots
        self.stats = (count + 1) * SLOT  # the statistics slots (stats.py)
        self.in_flight = self.stats + count * STATS  # a word per worker slot
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
                self.f[self.stats + i * STATS + S.LAST_CHANGE] = wall

    def state(self, i: int, now: float) -> int:
        f = self.f
        base = i * SLOT
        # ADMIN is 0.0 or inf: a disabled service is down for ever, never due for a probe
        down_until = f[base] + f[base + 7]
        if down_until == 0.0:
            return UP
        if now < down_until or now < f[base + F.PROBE_UNTIL]:
            return DOWN
        return PROBE_DUE

    def claim_probe(self, i: int, now: float, lease: float) -> bool:
        """Take the probe of a service whose cool-down is over; False if another took it."""
        base = i * SLOT
        if self.f[base] == 0.0 or now < self.f[base] or now < self.f[base + F.PROBE_UNTIL]:
            return False
        if self.probe_lock < 0:
            self.f[base + F.PROBE_UNTIL] = now + lease
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
            f = self.f
            if f[base] == 0.0 or now < f[base] or now < f[base + F.PROBE_UNTIL]:
                return False
            f[base + F.PROBE_UNTIL] = now + lease
            return True
        finally:
            fcntl.lockf(self.probe_lock, fcntl.LOCK_UN, 1, i)

    def record_success(self, i: int, now: float = 0.0) -> bool:
        """Count a good answer; True when this brought the service back up (at monotonic time
        now, the clock's if 0: the time it was down is added to its total)."""
        f = self.f
        base = i * SLOT
        if f[base] == 0.0:
            return False
        f[base + F.STREAK] = 0.0
        f[base] = 0.0
        f[base + F.PROBE_UNTIL] = 0.0
        stats = self.stats + i * STATS
        f[stats + S.DOWN_TOTAL] += max(0.0, (now or time.monotonic()) - f[base + F.DOWN_SINCE])
        f[stats + S.LAST_CHANGE] = time.time()
        return True

    def record_failure(self, i: int, now: float, cooldown: float, cap: float,
                       doubling: bool = True) -> tuple[bool, float]:
        """Count a failure and mark the service down; (was it up before, cool-down given).

        With `doubling` the pause is cooldown doubled at each consecutive such failure, up to
        cap; without, it is cooldown and the streak is left as it was."""
        f = self.f
        base = i * SLOT
        down_until = f[base]
        if now < down_until and now >= f[base + F.PROBE_UNTIL]:
            # already down and not a probe: a request sent before it went down failed too
            # (a burst of in-flight requests); only failed probes lengthen the pause
            return False, down_until - now
        was_up = down_until == 0.0
        if doubling:
            streak = f[base + F.STREAK] + 1
            f[base + F.STREAK] = streak
            pause = min(cooldown * 2.0 ** min(streak - 1, 30), cap)
        else:
            pause = cooldown
        if was_up:  # first: a worker that sees it down must not read an old DOWN_SINCE
            f[base + F.DOWN_SINCE] = now
            f[self.stats + i * STATS + S.LAST_CHANGE] = time.time()
        f[base] = now + pause
        f[base + F.PROBE_UNTIL] = 0.0
        return was_up, pause

    def down_since(self, i: int) -> float:
        """When service i was last marked down (0.0: never); meaningful while it is down."""
        return self.f[i * SLOT + F.DOWN_SINCE]

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
            base = i * SLOT
            if f[base] == 0.0:
                continue
            if checked:
                f[base] = math.inf
            elif f[base] == math.inf:
                f[base] = now
                f[base + F.PROBE_UNTIL] = 0.0

    def disabled(self, i: int) -> bool:
        """Whether the operator took service i out (its admin state)."""
        return self.f[i * SLOT + F.ADMIN] != 0.0

    def draining(self, i: int) -> bool:
        """Whether the operator drains service i."""
        return self.f[i * SLOT + F.DRAIN] != 0.0

    def admin(self, i: int) -> str:
        """Service i's admin state: one of ADMIN_STATES."""
        if self.disabled(i):
            return DISABLED
        return DRAINING if self.draining(i) else ENABLED

    def set_admin(self, i: int, state: str) -> None:
        """Set service i's admin state for every worker at once (one of ADMIN_STATES)."""
        base = i * SLOT
        self.f[base + F.DRAIN] = 1.0 if state == DRAINING else 0.0
        self.f[base + F.ADMIN] = math.inf if state == DISABLED else 0.0

    def weight(self, i: int, configured: int) -> int:
        """Service i's effective weight: the operator's, else the configured one."""
        weight = self.f[i * SLOT + F.WEIGHT]
        # only the master's control path writes it; the bound keeps a bad word from raising
        return int(weight) if 1.0 <= weight <= 1e9 else configured

    def set_weight(self, i: int, weight: int) -> None:
        """The operator's weight of service i (0: back to the configured one)."""
        self.f[i * SLOT + F.WEIGHT] = float(weight)

    def served(self, i: int) -> float:
        return self.f[i * SLOT + F.SERVED]

    def add_served(self, i: int, amount: float) -> None:
        self.f[i * SLOT + F.SERVED] += amount

    def set_served(self, i: int, value: float) -> None:
        self.f[i * SLOT + F.SERVED] = value

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
        """One of service i's counters (F.ANSWERS, F.FAILURES)."""
        return whole(self.f[i * SLOT + field])

    def set_in_flight(self, slot: int, count: int) -> None:
        """The requests the worker in slot has in flight for this pool (its housekeeping)."""
        if slot < self.workers:
            self.f[self.in_flight + slot] = count

    def requests_in_flight(self, slots: Iterable[int]) -> int:
        """The requests in flight of the workers in these slots, as of their last pass."""
        return sum(whole(self.f[self.in_flight + s]) for s in slots if s < self.workers)

    def rejoin(self, i: int, peers: list[int]) -> None:
        """A service came back: start its clock level with its peers', not far behind them."""
        others = [self.served(j) for j in peers if j != i]
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


def carry_over(old: HealthTable, before: Sequence[Service],
               after: Sequence[Service]) -> HealthTable:
    """A new table for a reload's services: one that stays (same name and address) keeps what
    is known of it and its counters; a new one starts up. The pool keeps its counters."""
    table = HealthTable(len(after), workers=old.workers)
    table.copy_counters(old)
    index = {(s.name, s.address): i for i, s in enumerate(before)}
    for i, service in enumerate(after):
        j = index.get((service.name, service.address))
        if j is not None:
            table.copy_slot(i, old, j)
            if before[j].weight != service.weight:
                table.set_weight(i, 0)
    return table


class Health:
    """The one path for state changes of one process's services, each logged once.

    While the table says `checked` (the master's checks run on it and own the recovery), a
    live answer never brings a service back, and a service marked down stays down until
    `mark_up`. Otherwise a live request probes it after its cool-down (see the module doc).
    """

    def __init__(self, table: HealthTable, services: Sequence[Service], config: Config,
                 log: Logger) -> None:
        self.table = table
        self.services = list(services)
        self.cooldown = config.cooldown
        self.cooldown_max = config.cooldown_max
        self.recheck = config.check_down_interval
        self.prefix = config.log_prefix
        self.log = log
        self.peers = [[j for j, t in enumerate(services) if t.prio == s.prio] for s in services]

    def ok(self, i: int) -> None:
        """A live request got a good answer from service i."""
        table = self.table
        if table.f[i * SLOT] != 0.0 and not table.checked:  # down, and no checks own it
            self.mark_up(i)

    def failed(self, i: int, outcome: int, detail: str, now: float) -> bool:
        """A live request failed on service i; True when that took it down just now."""
        if not counts_against_service(outcome):
            return False
        f = self.table.f
        f[i * SLOT + F.FAILURES] += 1.0
        f[self.table.stats + i * STATS + S.FAILURES + outcome] += 1.0
        return self.mark_down(i, outcome, detail, now)

    def mark_up(self, i: int, why: str = "") -> None:
        """Bring service i back (no-op when it is up)."""
        if self.table.record_success(i):
            self.table.rejoin(i, self.peers[i])
            service = self.services[i]
            self.log.notice(f"{self.prefix}service {service.name} ({service.address}) up{why}")

    def mark_down(self, i: int, outcome: int, detail: str, now: float) -> bool:
        """Mark service i down after a failure; True when it was up before."""
        table = self.table
        if table.checked:
            was_up, _ = table.record_failure(i, now, math.inf, math.inf)
            after = f"checked every {self.recheck:g}s until it answers"
        else:
            was_up, pause = table.record_failure(i, now, self.cooldown, self.cooldown_max,
                                                 doubling=doubles_pause(outcome))
            after = f"retry in {pause:g}s"
        if was_up:
            service = self.services[i]
            self.log.warning(f"{self.prefix}service {service.name} ({service.address}) down: "
                             f"{detail}, {after}")
        return was_up
