"""Per-worker load (open clients, accepting or not), heartbeat and pid, in one mmap made by the
master.

Every worker listens on the same socket and every idle one wakes when a connection arrives;
each looks here first and leaves the connection to a sibling that accepts and holds clearly
fewer clients, so that Postfix's long-lived connections spread evenly instead of piling onto
whichever worker the scheduler happens to wake first. Its words (layout.py) are written whole;
a stale read only makes the spread a little less even for a moment. The heartbeat is the
monotonic time of the worker's last housekeeping pass: the master's watchdog reads it; the
requests the worker served, as of that pass, are for the control socket's `workers`
(control.py). The master writes each worker's pid and generation when it forks it and clears
the slot when it reaps it: the monitor (monitor.py) answers `workers` from them and stops
checking a table kept for retiring workers once no worker of its generation is left. One more
slot, after the workers', is the monitor's: its heartbeat, for the same watchdog. The last word
counts the workers that died unasked (the master's reap), for /metrics.
"""

from __future__ import annotations

import mmap

from hapolicy.tables.layout import (
    WORKER_ACCEPTING,
    WORKER_CLIENTS,
    WORKER_GENERATION,
    WORKER_HEARTBEAT,
    WORKER_PID,
    WORKER_REQUESTS,
    WORKER_SLOT,
)

WATCHDOG_SECONDS = 60.0  # a process whose heartbeat is older than this is stuck: killed
YIELD_MARGIN = 2  # accept anyway unless a sibling holds at least this many fewer clients


class WorkerTable:
    """Slot k is the worker the master started in slot k; slot `monitor_slot` the monitor."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.monitor_slot = slots  # after the workers': should_yield never looks at it
        self._map = mmap.mmap(-1, ((slots + 1) * WORKER_SLOT + 1) * 8)
        self.f = memoryview(self._map).cast("d")
        self.restarts_word = (slots + 1) * WORKER_SLOT

    def set_worker(self, slot: int, pid: int, generation: int) -> None:
        """Whose slot it is (the master, after the fork)."""
        base = slot * WORKER_SLOT
        self.f[base + WORKER_GENERATION] = generation
        self.f[base + WORKER_PID] = pid

    def workers(self) -> dict[int, int]:
        """pid: slot of every live worker."""
        f = self.f
        pids = ((f[s * WORKER_SLOT + WORKER_PID], s) for s in range(self.slots))
        return {int(pid): s for pid, s in pids if pid}

    def generations(self) -> set[int]:
        """The generations of the live workers."""
        f = self.f
        return {int(f[s * WORKER_SLOT + WORKER_GENERATION]) for s in range(self.slots)
                if f[s * WORKER_SLOT + WORKER_PID]}

    def set_clients(self, slot: int, count: int) -> None:
        self.f[slot * WORKER_SLOT + WORKER_CLIENTS] = count

    def set_accepting(self, slot: int, on: bool) -> None:
        self.f[slot * WORKER_SLOT + WORKER_ACCEPTING] = 1.0 if on else 0.0

    def beat(self, slot: int, now: float, requests: int = -1) -> None:
        self.f[slot * WORKER_SLOT + WORKER_HEARTBEAT] = now
        if requests >= 0:
            self.f[slot * WORKER_SLOT + WORKER_REQUESTS] = requests

    def clients(self, slot: int) -> int:
        return int(self.f[slot * WORKER_SLOT + WORKER_CLIENTS])

    def requests(self, slot: int) -> int:
        """The requests the worker in slot served, as of its last housekeeping pass."""
        return int(self.f[slot * WORKER_SLOT + WORKER_REQUESTS])

    def last_beat(self, slot: int) -> float:
        """When the worker in slot last turned its loop (0.0: not yet)."""
        return self.f[slot * WORKER_SLOT + WORKER_HEARTBEAT]

    def clear(self, slot: int) -> None:
        for word in range(WORKER_SLOT):
            self.f[slot * WORKER_SLOT + word] = 0.0

    def count_restart(self) -> None:
        """A worker died unasked and is replaced (the master only writes this word)."""
        self.f[self.restarts_word] += 1

    def restarts(self) -> int:
        return int(self.f[self.restarts_word])

    def should_yield(self, slot: int, clients: int) -> bool:
        """True when another accepting worker holds YIELD_MARGIN or more fewer clients."""
        f = self.f
        for other in range(self.slots):
            base = other * WORKER_SLOT
            if (other != slot and f[base + WORKER_ACCEPTING]
                    and f[base + WORKER_CLIENTS] + YIELD_MARGIN <= clients):
                return True
        return False
