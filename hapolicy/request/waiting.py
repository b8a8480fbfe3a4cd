"""The requests of one pool in one process that wait for a free slot of a service (max-inflight).

A request whose service is at its limit waits here when it may not go elsewhere (a hashed pool,
or the service its transaction sticks to), or when every service it could ask is at its limit
(job.py says which). At most MAX_WAITING wait per pool and process: one more is told at once
that it may not (`add` is False) and goes on as one whose wait ran out. The first in line whose
service has room goes first: a slot another worker frees is seen within POLL_SECONDS, one this
process frees at the end of the loop's turn (`kick`). A request whose wait ran out (its
`until`: queue-timeout, or its total deadline) leaves the line in its turn too. What a request
does when it leaves is its own (`Waiter`): an exception there costs that request, as anywhere on
its way (the job's own methods contain it); one in its `has_room` makes it leave as if its wait
ran out. A new request of the pool
lets the line be served before it claims a slot (dispatch.py): a freed slot goes to the first in
line, not to a newcomer.
"""

from __future__ import annotations

import time
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from hapolicy.base.eventloop import EventLoop, Timer

    class Waiter(Protocol):
        """A request waiting in line (job.Job)."""

        answered: bool

        def has_room(self) -> bool: ...  # its service (or one of its services) has a slot
        def resume(self, now: float) -> None: ...  # it leaves the line to be sent
        def queued_out(self, now: float) -> None: ...  # it leaves the line unsent


MAX_WAITING = 256  # per pool and process
POLL_SECONDS = 0.001  # how often the line looks for slots other processes freed


class WaitingLine:
    """The requests of one pool in one process that wait for a free slot, in arrival order."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.line: deque[tuple[Waiter, float]] = deque()
        self.timer: Timer | None = None
        self.kicked = False

    def __len__(self) -> int:
        return len(self.line)

    def add(self, waiter: Waiter, until: float) -> bool:
        """Put waiter in line until monotonic time `until`; False when the line is full."""
        if len(self.line) >= MAX_WAITING:
            return False
        self.line.append((waiter, until))
        if self.timer is None:
            self.timer = self.loop.call_later(POLL_SECONDS, self._poll)
        return True

    def kick(self) -> None:
        """A slot of this process was freed: look at the line at the end of this turn."""
        if self.line and not self.kicked:
            self.kicked = True
            self.loop.at_turn_end(self._kicked)

    def _kicked(self) -> None:
        self.kicked = False
        self.serve(time.monotonic())

    def _poll(self) -> None:
        self.timer = None
        try:
            self.serve(time.monotonic())
        finally:
            if self.line and self.timer is None:
                self.timer = self.loop.call_later(POLL_SECONDS, self._poll)

    def serve(self, now: float) -> None:
        """Let go, in order, every waiter whose service has room or whose wait ran out."""
        line = self.line
        for _ in range(len(line)):
            waiter, until = line.popleft()
            if waiter.answered:
                continue
            try:
                room = waiter.has_room()
            except Exception:  # noqa: BLE001 - it leaves as if its wait ran out, alone
                waiter.queued_out(now)
                continue
            if room:
                waiter.resume(now)
            elif now >= until:
                waiter.queued_out(now)
            else:
                line.append((waiter, until))

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.line.clear()
