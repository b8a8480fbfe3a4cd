"""A small event loop: epoll (or poll) with one handler per descriptor, plus monotonic timers.

Handlers are plain callables kept in a dict by file descriptor and called with the event mask
(EVENT_READ, EVENT_WRITE; an error or a hang-up is reported as both, so that the handler's own
read or write meets it). `select.epoll` is used directly: `selectors` builds a key object per
registration and a tuple per event, which the request path pays for on every request.
`modify` with the interest unchanged only swaps the handler (no system call). Of the events
of one poll, those of a descriptor removed by an earlier handler of the same round are dropped
(the descriptor may already be another file's); the others go to the handler registered when
their turn comes. spawn mode asks
for poll(2), which, unlike epoll, takes regular files and /dev/null on stdin.

Cancelled timers stay in the heap until they come up, unless they outnumber the live ones, then the
heap is rebuilt. The request path makes no timer per request (backend/exchange.py's deadline tick).

`at_turn_end` callbacks run once the handlers of the poll's events have run (and again after
the due timers, for what those asked; one asked for between turns runs before the next
wait), each once, in order. `gathering` is True while the handlers of a poll of several events
run: a handler that writes may then leave its write to a callback at the turn's end, so that
what the turn has to write goes out together (lane.py) and a peer woken by the first write
does not preempt the handlers still to run.

A loop made with `yields` (a daemon worker's) gives the CPU up (sched_yield(2)) after a turn of
several events, once its handlers, turn-end callbacks and due timers have run: the peers its
writes woke (smtpd, the services) run then, when the loop holds nothing half done, rather than
preempting it at a write of its next turn, and the next poll finds what they wrote. A turn of
one event (a light load) does not yield; the kernel returns at once when nothing else waits
for the CPU. docs/performance.md has the figures.

An exception of a handler, a timer or a turn-end callback goes to `on_error` when the loop's
owner set one (a daemon worker: logged, and the loop goes on with the other events; the
request path contains its own exceptions per request first, job.py), else out of
`run_once`. A `try` costs nothing until something raises (Python 3.11's zero-cost exceptions).

`now` is when the last poll returned (as libuv's loop time): what a handler may take as the
time of its event when a turn's few microseconds do not matter, one clock read a turn for
them all. The due timers are those due at that time (one that comes due while the handlers
run waits for the next turn, whose poll then does not wait).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import time

# typing is imported for the type checker only: it costs a spawned process 3 ms of its start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

EVENT_READ = select.EPOLLIN  # the same bits as poll's POLLIN and POLLOUT
EVENT_WRITE = select.EPOLLOUT
_BOTH = EVENT_READ | EVENT_WRITE
_TROUBLE = select.EPOLLERR | select.EPOLLHUP | select.POLLNVAL
MAX_WAIT = 3600.0  # poll() and epoll() overflow on waits of ~25 days (huge timeouts in config)
monotonic = time.monotonic
sched_yield = os.sched_yield


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


def _fd(fileobj) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class EventLoop:
    """Runs handlers for ready file descriptors and due timers."""

    def __init__(self, use_poll: bool = False, yields: bool = False) -> None:
        if use_poll:
            self._poller = select.poll()
            self._ms = True  # poll() takes milliseconds
        else:
            self._poller = select.epoll()
            self._ms = False
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.interest: dict[int, int] = {}
        self.files: dict[int, object] = {}  # what was registered (closed by close_inherited)
        self.timers: list[Timer] = []
        self._cancelled = 0
        self.removed: set[int] = set()  # descriptors removed since the last poll
        self.turn_end: list[Callable[[], None]] = []
        self.gathering = False  # True while the handlers of a poll of several events run
        self.now = monotonic()  # when the last poll returned (see the module doc)
        self.yields = yields  # give the CPU up after a turn of several events (module doc)
        # what an exception of a handler, timer or turn-end callback is given to (the loop
        # goes on); None: it is raised out of run_once
        self.on_error: Callable[[Exception], None] | None = None

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback, self)
        heapq.heappush(self.timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(monotonic() + delay, callback)

    def at_turn_end(self, callback: Callable[[], None]) -> None:
        """Run callback once, when the handlers of this turn have run (called between turns:
        before the next one waits)."""
        self.turn_end.append(callback)

    def _end_turn(self) -> None:
        while self.turn_end:  # a callback may ask for another
            callbacks = self.turn_end
            self.turn_end = []
            for callback in callbacks:
                try:
                    callback()
                except Exception as exc:  # noqa: BLE001 - see `on_error`
                    self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """A handler, timer or turn-end callback raised: `on_error`'s, or raised again."""
        if self.on_error is None:
            raise exc
        self.on_error(exc)

    def add(self, fileobj, events: int, handler: Callable[[int], None]) -> None:
        fd = _fd(fileobj)
        if fd in self.handlers:
            raise KeyError(f"descriptor {fd} is already registered")
        self._poller.register(fd, events)
        self.handlers[fd] = handler
        self.interest[fd] = events
        self.files[fd] = fileobj

    def modify(self, fileobj, events: int, handler: Callable[[int], None]) -> None:
        fd = _fd(fileobj)
        if self.interest[fd] != events:
            self._poller.modify(fd, events)
            self.interest[fd] = events
        self.handlers[fd] = handler

    def remove(self, fileobj) -> None:
        fd = _fd(fileobj)
        if fd < 0:  # a socket closed already: find it by what was registered
            fd = next((k for k, v in self.files.items() if v is fileobj), -1)
        if self.handlers.pop(fd, None) is None:
            return
        self.removed.add(fd)
        del self.interest[fd], self.files[fd]
        with contextlib.suppress(OSError, KeyError, ValueError):
            self._poller.unregister(fd)

    def run_once(self, max_wait: float | None = None) -> None:
        """Wait for events or the next timer (at most max_wait seconds), then run handlers."""
        if self.turn_end:  # asked for between turns
            self._end_turn()
        timers = self.timers
        while timers and timers[0].callback is None:
            heapq.heappop(timers)
            self._cancelled -= 1
        # compared, not min() and max(): this runs once per turn, often once per request
        timeout = max_wait
        if timers:
            until = timers[0].when - monotonic()
            if timeout is None or until < timeout:
                timeout = until
        if timeout is None:
            timeout = None if self._ms else -1
        else:
            if timeout > MAX_WAIT:
                timeout = MAX_WAIT
            elif timeout < 0.0:  # a timer overdue (epoll would take a negative wait as none)
                timeout = 0.0
            if self._ms:
                timeout = int(timeout * 1000 + 0.999)
        removed = self.removed
        if removed:
            removed.clear()
        events = self._poller.poll(timeout)
        self.now = now = monotonic()
        if len(events) == 1:
            fd, mask = events[0]
            handler = self.handlers.get(fd)
            if handler is not None:
                try:
                    handler(mask | _BOTH if mask & _TROUBLE else mask)
                except Exception as exc:  # noqa: BLE001 - see `on_error`
                    self._failed(exc)
        elif events:
            self._run_gathered(events)
        if self.turn_end:
            self._end_turn()
        if timers:
            if timers[0].when <= now:
                self._run_due(now)
            if self._cancelled > 64 and self._cancelled * 2 > len(timers):
                self.timers = [t for t in timers if t.callback is not None]
                heapq.heapify(self.timers)
                self._cancelled = 0
        if len(events) > 1 and self.yields:  # after a turn of several events (module doc)
            sched_yield()

    def _run_gathered(self, events: list[tuple[int, int]]) -> None:
        """The handlers of a poll of several events (`gathering` while they run)."""
        handlers = self.handlers
        removed = self.removed
        self.gathering = True
        try:
            for fd, mask in events:
                # an earlier handler of this round may have closed this fd (and maybe
                # reused it for another file): its event is not for what is registered now
                if removed and fd in removed:
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    try:
                        handler(mask | _BOTH if mask & _TROUBLE else mask)
                    except Exception as exc:  # noqa: BLE001 - see `on_error`
                        self._failed(exc)
        finally:
            self.gathering = False

    def _run_due(self, now: float) -> None:
        """The timers due at now (the poll's return), then the turn-end callbacks they asked
        for."""
        timers = self.timers
        while timers and timers[0].when <= now:
            timer = heapq.heappop(timers)
            callback = timer.callback
            if callback is None:
                self._cancelled -= 1
                continue
            timer.callback = None
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - see `on_error`
                self._failed(exc)
        if self.turn_end:
            self._end_turn()

    def close(self) -> None:
        if not self._ms:
            self._poller.close()

    def close_inherited(self) -> None:
        """In a forked child: close the loop and every descriptor registered in it.

        The epoll instance is shared with the parent, so it is closed first and nothing is
        unregistered from it (that would change the parent's interests)."""
        inherited = list(self.files.items())
        self.close()
        self.handlers.clear()
        self.interest.clear()
        self.files.clear()
        for fd, fileobj in inherited:
            with contextlib.suppress(OSError):
                if hasattr(fileobj, "close"):
                    fileobj.close()
                else:
                    os.close(fd)
