"""Per-worker load (open clients, accepting or not) shared through one mmap made by the master.

Every worker listens on the same socket and every idle one wakes when a connection arrives;
each looks here first and leaves the connection to a sibling that accepts and holds clearly
fewer clients, so that Postfix's long-lived connections spread evenly instead of piling onto
whichever worker the scheduler happens to wake first. Fields are whole 8-byte words; a stale
read only makes the spread a little less even for a moment.
"""

from __future__ import annotations

import mmap

FIELDS = 2  # clients, accepting (1.0 or 0.0)
YIELD_MARGIN = 2  # accept anyway unless a sibling holds at least this many fewer clients


class WorkerTable:
    """Slot k is the worker the master started in slot k."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(1, slots) * FIELDS * 8)
        self.f = memoryview(self._map).cast("d")

    def set_clients(self, slot: int, count: int) -> None:
        self.f[slot * FIELDS] = count

    def set_accepting(self, slot: int, on: bool) -> None:
        self.f[slot * FIELDS + 1] = 1.0 if on else 0.0

    def clear(self, slot: int) -> None:
        self.f[slot * FIELDS] = 0.0
        self.f[slot * FIELDS + 1] = 0.0

    def should_yield(self, slot: int, clients: int) -> bool:
        """True when another accepting worker holds YIELD_MARGIN or more fewer clients."""
        f = self.f
        for other in range(self.slots):
            if other != slot and f[other * FIELDS + 1] and f[other * FIELDS] + YIELD_MARGIN <= clients:
                return True
        return False
