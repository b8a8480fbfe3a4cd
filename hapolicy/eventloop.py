"""A small event loop: a `selectors` selector plus a heap of monotonic-clock timers.

Handlers are plain callables stored as the selector key's data and called with the event mask.
Cancelled timers stay in the heap until they come up, unless they outnumber the live ones, then
the heap is rebuilt (a request's deadline is cancelled on nearly every request).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import selectors
import time
from typing import Callable

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
MAX_WAIT = 3600.0  # poll() and epoll() overflow on waits of ~25 days (huge timeouts in config)


class Timer:
    __slots__ = ("callback", "loop", "when")

    def __init__(self, when: float, callback: Callable[[], None] | None, loop: EventLoop) -> None:
        self.when = when
        self.callback = callback
        self.loop = loop

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.loop._cancelled += 1


class EventLoop:
    """Runs handlers for ready file descriptors and due timers."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        self.selector = selector or selectors.DefaultSelector()
        self.timers: list[Timer] = []
        self._cancelled = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback, self)
        heapq.heappush(self.timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def add(self, fileobj, events: int, handler: Callable[[int], None]) -> None:
        self.selector.register(fileobj, events, handler)

    def modify(self, fileobj, events: int, handler: Callable[[int], None]) -> None:
        self.selector.modify(fileobj, events, handler)

    def remove(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def run_once(self, max_wait: float | None = None) -> None:
        """Wait for events or the next timer (at most max_wait seconds), then run handlers."""
        timers = self.timers
        while timers and timers[0].callback is None:
            heapq.heappop(timers)
            self._cancelled -= 1
        timeout = max_wait
        if timers:
            until = max(0.0, timers[0].when - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        if timeout is not None:
            timeout = min(timeout, MAX_WAIT)
        events = self.selector.select(timeout)
        if len(events) == 1:
            events[0][0].data(events[0][1])
        else:
            registered = self.selector.get_map()
            for key, mask in events:
                # an earlier handler of this round may have closed this fd (and maybe reused it)
                if registered.get(key.fd) is key:
                    key.data(mask)
        if timers:
            now = time.monotonic()
            while timers and timers[0].when <= now:
                timer = heapq.heappop(timers)
                callback = timer.callback
                if callback is None:
                    self._cancelled -= 1
                    continue
                timer.callback = None
                callback()
            if self._cancelled > 64 and self._cancelled * 2 > len(timers):
                self.timers = [t for t in timers if t.callback is not None]
                heapq.heapify(self.timers)
                self._cancelled = 0

    def close(self) -> None:
        self.selector.close()

    def close_inherited(self) -> None:
        """In a forked child: close the loop and every descriptor registered in it.

        The epoll instance is shared with the parent, so it is closed first and nothing is
        unregistered from it (that would change the parent's interests)."""
        inherited = list(self.selector.get_map().values())
        self.selector.close()
        for key in inherited:
            with contextlib.suppress(OSError):
                if hasattr(key.fileobj, "close"):
                    key.fileobj.close()
                else:
                    os.close(key.fd)
