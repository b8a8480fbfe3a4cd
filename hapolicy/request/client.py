"""One client connection (Postfix's smtpd): read requests, answer each exactly once, in order.

Requests of one connection are answered one at a time and in order (Postfix never pipelines,
but a client that does gets its answers in order). Reading stops while too many requests or
answer bytes are queued, so a client that writes without reading cannot grow our memory. The
connection is closed only when the client closed its side and every answer is written, or when
the worker tells it to (idle guard, shutdown): never on our own between requests.
"""

from __future__ import annotations

import os
import time
from collections import deque

from hapolicy.base.eventloop import EVENT_READ, EVENT_WRITE, EventLoop
from hapolicy.base.protocol import MAX_REQUEST_BYTES, Request, RequestFramer

# typing is imported for the type checker only: it costs a spawned process 3 ms of its start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

MAX_QUEUED_REQUESTS = 32
MAX_QUEUED_OUTPUT = 256 * 1024
READ_SIZE = 65536


class ClientConnection:
    """A client on a socket (daemon) or on a pair of file descriptors (spawn mode)."""

    __slots__ = (
        "busy",
        "closed",
        "dispatcher",
        "eof",
        "framer",
        "instance",
        "instance_service",
        "last_active",
        "loop",
        "on_close",
        "out",
        "queue",
        "reading",
        "rfd",
        "route",
        "sock",
        "submitting",
        "wfd",
        "writing",
    )

    def __init__(self, loop: EventLoop, dispatcher, rfd: int, wfd: int,
                 on_close: Callable[[ClientConnection], None], sock=None) -> None:
        self.loop = loop
        self.dispatcher = dispatcher
        self.rfd = rfd
        self.wfd = wfd
        self.sock = sock  # keeps a socket object alive in daemon mode
        self.on_close = on_close
        self.framer = RequestFramer()
        self.queue: deque[Request] = deque()
        self.busy = False
        self.out = bytearray()
        self.eof = False
        self.closed = False
        self.reading = False
        self.writing = False
        self.last_active = time.monotonic()
        self.instance = b""
        self.instance_service = -1
        self.route = None  # the pool last asked, where pools share an address (routing.py)
        self.submitting = False

    def start(self) -> None:
        self._update_interest()

    @property
    def idle(self) -> bool:
        """No request being answered or waiting, no answer left to write, no partial request."""
        return not self.busy and not self.queue and not self.out and not self.framer.pending

    def _on_readable(self, mask: int) -> None:
        try:
            data = os.read(self.rfd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.last_active = now = time.monotonic()
        if not data:
            self.eof = True
        else:
            if not self.busy and not self.queue and not self.framer.buffer:
                # nothing waits: the lane takes data (lane.py), or it is one whole request
                lane = self.dispatcher.lane
                if lane is not None and lane.take(self, data, now):
                    return  # reading goes on
                request = self.framer.whole(data)
                if request is not None:
                    self.busy = True
                    self.dispatcher.submit(request, self)
                    return
            room = max(0, MAX_QUEUED_REQUESTS - len(self.queue))
            self.queue.extend(self.framer.feed(data, room))
            self._next()
        self._update_interest()

    def _next(self) -> None:
        # answers may come back synchronously (submit -> deliver -> _next): loop, don't recurse
        if self.submitting:
            return
        self.submitting = True
        try:
            # answers given at once (default answers) must not pile up without bound for a
            # client that writes without reading: pause while the output is full
            while not self.busy and not self.closed and len(self.out) < MAX_QUEUED_OUTPUT:
                if not self.queue:
                    # frame lazily: a read of many small requests is taken a batch at a time
                    self.queue.extend(self.framer.feed(b"", MAX_QUEUED_REQUESTS))
                    if not self.queue:
                        break
                self.busy = True
                self.dispatcher.submit(self.queue.popleft(), self)
        finally:
            self.submitting = False

    def deliver(self, answer: bytes) -> None:
        """The answer to the request in progress (called exactly once per request)."""
        self.busy = False
        if self.closed:
            return
        self.last_active = self.loop.now  # the turn's time: idleness is counted in seconds
        if not self.out:
            try:
                written = os.write(self.wfd, answer)
            except BlockingIOError:
                written = 0
            except OSError:
                self.close()
                return
            if written < len(answer):
                self.out += answer[written:]
            elif self.reading and not self.queue and not self.framer.buffer and not self.eof:
                return  # nothing else to do, and the interest stays: reading
        else:
            self.out += answer
        self._next()
        self._update_interest()

    def _on_writable(self, mask: int) -> None:
        try:
            written = os.write(self.wfd, self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.out[:written]
        if written:
            self.last_active = self.loop.now
        self._next()
        self._update_interest()

    def _update_interest(self) -> None:
        if self.closed:
            return
        if (self.eof and not self.busy and not self.queue and not self.out
                and not self.framer.complete):
            self.close()
            return
        want_read = (not self.eof and len(self.queue) < MAX_QUEUED_REQUESTS
                     and len(self.framer.buffer) <= MAX_REQUEST_BYTES
                     and len(self.out) < MAX_QUEUED_OUTPUT)
        want_write = bool(self.out)
        if self.rfd == self.wfd:
            if (want_read, want_write) != (self.reading, self.writing):
                events = (EVENT_READ if want_read else 0) | (EVENT_WRITE if want_write else 0)
                # reading only (nearly always): the read handler itself, one call less
                handler = self._on_readable if events == EVENT_READ else self._on_event
                if not (self.reading or self.writing):
                    self.loop.add(self.rfd, events, handler)
                elif events:
                    self.loop.modify(self.rfd, events, handler)
                else:
                    self.loop.remove(self.rfd)
        else:
            if want_read != self.reading:
                if want_read:
                    self.loop.add(self.rfd, EVENT_READ, self._on_readable)
                else:
                    self.loop.remove(self.rfd)
            if want_write != self.writing:
                if want_write:
                    self.loop.add(self.wfd, EVENT_WRITE, self._on_writable)
                else:
                    self.loop.remove(self.wfd)
        self.reading, self.writing = want_read, want_write

    def _on_event(self, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._on_writable(mask)
        if mask & EVENT_READ and not self.closed:
            self._on_readable(mask)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reading or self.writing:
            self.loop.remove(self.rfd)
            if self.wfd != self.rfd:
                self.loop.remove(self.wfd)
        self.reading = self.writing = False
        if self.sock is not None:
            self.sock.close()
        else:
            for fd in {self.rfd, self.wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.on_close(self)
