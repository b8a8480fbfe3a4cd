"""Per-service health and balancing state, shared by all workers through one anonymous mmap.

The master makes the table before it forks, so every worker sees the same memory. Each service
has a fixed slot of float64 fields (see FIELDS). No locks: every field is one aligned 8-byte
word, written whole (atomic on the platforms Python runs on), and every race is benign by
construction: two workers that both see a failure at the same instant may both log it, two
that both see a cool-down end may both send a probe request, and a concurrent increment of a
counter may be lost. None of these loses an answer or keeps a dead service in use.

A service is up, or down until `down_until`. When the cool-down is over, the first request to
claim it (`claim_probe`) tries it; others keep skipping it for the probe's lease. Success
brings it back; failure doubles the cool-down, up to the cap.
"""

from __future__ import annotations

import mmap
import random
from collections.abc import Sequence

from .config import Service
from .log import Logger


class F:
    """Field offsets inside one service's slot (plain ints: this is the hot path)."""

    DOWN_UNTIL = 0  # monotonic time; 0 when up
    PROBE_UNTIL = 1  # lease of the request that probes it after its cool-down
    SERVED = 2  # virtual time of weighted round robin (+1/weight per pick)
    STREAK = 3  # consecutive failures
    # 4..7 reserved (the slot keeps 8 words, one 64-byte cache line per service)


SLOT = 8
UP, DOWN, PROBE_DUE = 0, 1, 2


class HealthTable:
    """The shared table; `shared=False` makes a private one (spawn mode, tests)."""

    def __init__(self, count: int, shared: bool = True) -> None:
        self.count = count
        size = max(1, count) * SLOT * 8
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        self._map = mmap.mmap(-1, size, flags=flags | mmap.MAP_ANONYMOUS)
        self.f = memoryview(self._map).cast("d")

    def state(self, i: int, now: float) -> int:
        f = self.f
        base = i * SLOT
        down_until = f[base]
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
        self.f[base + F.PROBE_UNTIL] = now + lease
        return True

    def record_success(self, i: int) -> bool:
        """Count a good answer; True when this brought the service back up."""
        f = self.f
        base = i * SLOT
        if f[base] == 0.0:
            return False
        f[base + F.STREAK] = 0.0
        f[base] = 0.0
        f[base + F.PROBE_UNTIL] = 0.0
        return True

    def record_failure(self, i: int, now: float, cooldown: float, cap: float) -> tuple[bool, float]:
        """Count a failure and mark the service down; (was it up before, cool-down given)."""
        f = self.f
        base = i * SLOT
        down_until = f[base]
        if now < down_until and now >= f[base + F.PROBE_UNTIL]:
            # already down and not a probe: a request sent before it went down failed too
            # (a burst of in-flight requests); only failed probes lengthen the pause
            return False, down_until - now
        was_up = down_until == 0.0
        streak = f[base + F.STREAK] + 1
        f[base + F.STREAK] = streak
        pause = min(cooldown * 2.0 ** min(streak - 1, 30), cap)
        f[base] = now + pause
        f[base + F.PROBE_UNTIL] = 0.0
        return was_up, pause

    def served(self, i: int) -> float:
        return self.f[i * SLOT + F.SERVED]

    def add_served(self, i: int, amount: float) -> None:
        self.f[i * SLOT + F.SERVED] += amount

    def set_served(self, i: int, value: float) -> None:
        self.f[i * SLOT + F.SERVED] = value

    def copy_slot(self, i: int, other: HealthTable, j: int) -> None:
        """Take over service j's state from another table as service i's (on reload)."""
        self.f[i * SLOT:(i + 1) * SLOT] = other.f[j * SLOT:(j + 1) * SLOT]

    def rejoin(self, i: int, peers: list[int]) -> None:
        """A service came back: start its clock level with its peers', not far behind them."""
        others = [self.served(j) for j in peers if j != i]
        if others:
            self.set_served(i, max(self.served(i), min(others)))

    def randomize_phase(self, weights: list[int]) -> None:
        """Start round robin at a random phase (spawn mode: each process is new)."""
        for i, weight in enumerate(weights):
            self.set_served(i, -random.random() / weight)

    def close(self) -> None:
        self.f.release()
        self._map.close()


def note_success(table: HealthTable, services: Sequence[Service], i: int, log: Logger) -> None:
    """Record a good answer of service i; log it once if that brought it back up."""
    if table.record_success(i):
        prio = services[i].prio
        table.rejoin(i, [j for j, s in enumerate(services) if s.prio == prio])
        log.notice(f"service {services[i].name} ({services[i].address}) up")


def note_failure(table: HealthTable, services: Sequence[Service], i: int, reason: str,
                 now: float, cooldown: float, cap: float, log: Logger) -> None:
    """Record a failure of service i; log it once when that took it down."""
    was_up, pause = table.record_failure(i, now, cooldown, cap)
    if was_up:
        service = services[i]
        log.warning(f"service {service.name} ({service.address}) down: {reason}, "
                    f"retry in {pause:g}s")
