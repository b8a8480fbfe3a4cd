"""Exchanges with policy services: non-blocking connect, send, read the answer, deadline.

`Backends` is what the exchanges of one process (a worker, spawn mode, the master's checks)
share: the event loop, the idle connections (idle.py), the resolver, the connect timeout and the
deadlines of the exchanges in flight. An exchange is started with the service, the payload,
the deadline and a callback.

A `Connection` is one connection to one service, a small state machine driven by the event loop that
runs one exchange at a time. Each exchange ends by calling `on_done(action_line, outcome, detail)`:
the first `action=` line of a good answer with outcome ANSWERED and detail "", or b"", the outcome
category (see outcome.py) and why it failed. A connection whose exchange ended cleanly waits in the
process's `IdleConnections` for the next one, still registered in the loop for reading: the common
request costs one send and one receive, no registration and no object. A reused connection that
turns out closed before any byte of answer is retried once on a fresh connection, and that is not a
failure of the service.

An exchange's end (`ended`: its answer's latency, the idle connection's age) is the loop's
time of the turn it ended in (`EventLoop.now`, when the poll returned).

Deadlines are not one timer each: while exchanges are in flight, a tick every DEADLINE_TICK
seconds ends those past their limit, so a timeout fires at most DEADLINE_TICK late. The same
tick runs the dispatcher's sweep (`on_sweep`) at most every so often.

A dispatcher with a lane (lane.py) makes its connections with `connection_type`,
`Lane.connection`: of the lane's subclass, which knows its lane and member from the start and
whose event handler answers the lane's exchanges itself.
"""

from __future__ import annotations

# the C module, not `socket`: the Python layer's enums and its import of selectors cost a
# spawned process about 2 ms of its start, and nothing here needs them
import _socket
import errno
import os
import time

from hapolicy.backend.idle import IDLE_SECONDS, IdleConnections
from hapolicy.backend.resolver import Resolver
from hapolicy.base.eventloop import EVENT_READ, EVENT_WRITE, EventLoop, Timer
from hapolicy.base.outcome import (
    ABANDONED,
    ANSWER_TIMEOUT,
    ANSWERED,
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    INVALID,
    LOCAL,
    RESET,
)
from hapolicy.base.protocol import MAX_ANSWER_BYTES, answer_action, answer_complete
from hapolicy.config.records import Service

# typing is imported for the type checker only: it costs a spawned process 3 ms of its start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

DEADLINE_TICK = 0.01


class Backends:
    """The exchanges of one process: its loop, idle connections, addresses, connect timeout,
    and the deadlines of the exchanges in flight."""

    def __init__(self, loop: EventLoop, connect_timeout: float) -> None:
        self.loop = loop
        self.idle = IdleConnections(loop)
        self.resolver = Resolver()
        self.connect_timeout = connect_timeout
        self.in_flight: set[Connection] = set()
        self.tick: Timer | None = None
        # what makes a new connection: Lane.connection with a lane (a LaneConnection)
        self.connection_type: Callable[[Backends, Service], Connection] = Connection
        self.sweep: Callable[[float], None] | None = None
        # called with its service at the end of every exchange, whichever way it ended (a
        # pool that counts each service's requests in flight; None: none counts)
        self.on_end: Callable[[Service], None] | None = None
        self.sweep_every = 0.0
        self.next_sweep = 0.0

    def connection(self, service: Service, now: float) -> Connection:
        """An idle connection to service, or a new one (not connected yet)."""
        stack = self.idle.stacks.get(service.name)
        # the common case, IdleConnections.get inline: the newest idle connection is fresh enough
        if stack and now - stack[-1].ended < IDLE_SECONDS:
            return stack.pop()
        conn = self.idle.get(service.name, now)
        return conn if conn is not None else self.connection_type(self, service)

    def exchange(self, service: Service, payload: bytes, deadline: float,
                 on_done: Callable[[bytes, int, str], None]) -> Connection:
        """Start one exchange; on_done(action, outcome, detail) is called exactly once."""
        now = time.monotonic()
        conn = self.connection(service, now)
        conn.run(payload, deadline, on_done, now)
        return conn

    def on_sweep(self, sweep: Callable[[float], None], every: float) -> None:
        """Call sweep(now) from the tick, at most every `every` seconds, while exchanges are
        in flight."""
        self.sweep = sweep
        self.sweep_every = every

    def on_tick(self) -> None:
        """End the exchanges past their limit; again in DEADLINE_TICK while any is in flight."""
        self.tick = None
        now = time.monotonic()
        for conn in [c for c in self.in_flight if c.limit <= now]:
            conn.timeout(now)
        if self.sweep is not None and now >= self.next_sweep and self.in_flight:
            self.next_sweep = now + self.sweep_every
            self.sweep(now)
        if self.in_flight and self.tick is None:
            self.tick = self.loop.call_later(DEADLINE_TICK, self.on_tick)

    def close(self) -> None:
        """Close every connection, idle or in flight; exchanges in flight end without their
        callback (a stopped checker, a worker on its way out: nobody waits for them)."""
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None
        for conn in list(self.in_flight):
            conn.on_done = None
            conn.close(unregister=self.idle.loop is not None)
        self.in_flight.clear()
        self.idle.close()


# QUEUED: the lane's (lane.py): its payload goes out at the end of the loop's turn; an event
# of the connection meanwhile waits for the next turn (epoll is level-triggered)
IDLE, CONNECTING, SENDING, READING, CLOSED_STATE, QUEUED = range(6)


class Connection:
    """One connection to one service; runs one exchange at a time (see the module doc)."""

    __slots__ = ("answer", "backends", "deadline", "ended", "limit", "loop", "on_done", "payload",
                 "reused", "sent", "service", "sock", "started", "state")

    def __init__(self, backends: Backends, service: Service) -> None:
        self.backends = backends
        self.loop = backends.loop
        self.service = service
        self.sock: _socket.socket | None = None
        self.state = CLOSED_STATE
        self.payload = b""
        self.sent = 0
        self.answer = b""
        self.on_done: Callable[[bytes, int, str], None] | None = None
        self.started = 0.0
        self.ended = 0.0  # when the last exchange ended (its answer read)
        self.deadline = 0.0  # the request's total deadline
        self.limit = 0.0  # when the current step times out
        self.reused = False

    def run(self, payload: bytes, deadline: float, on_done: Callable[[bytes, int, str], None],
            now: float) -> None:
        """Start an exchange: send payload, read the answer before the deadline."""
        self.payload = payload
        self.deadline = deadline
        self.on_done = on_done
        self.started = now
        self.answer = b""
        self.sent = 0
        backends = self.backends
        backends.in_flight.add(self)
        if backends.tick is None:
            backends.tick = self.loop.call_later(DEADLINE_TICK, backends.on_tick)
        sock = self.sock
        if sock is None:
            self.reused = False
            self._connect(now)
            return
        self.reused = True
        limit = now + self.service.timeout
        self.limit = limit if limit < deadline else deadline  # noqa: FURB136 (no call)
        self.send_payload()

    def _connect(self, now: float) -> None:
        family, address, error = self.backends.resolver.address(self.service, now)
        if error:
            self._fail(CONNECT_FAILED, error)
            return
        try:
            sock = _socket.socket(family, _socket.SOCK_STREAM)
        except OSError as exc:
            # out of file descriptors: not the service's fault
            self._fail(LOCAL, f"cannot make a socket: {exc.strerror}")
            return
        sock.setblocking(False)
        self.sock = sock
        self.state = CONNECTING
        try:
            code = sock.connect_ex(address)
        except (OSError, ValueError) as exc:  # e.g. a unix path the kernel refuses
            self._fail(CONNECT_FAILED, f"cannot connect: {exc}")
            return
        if code == 0:
            self.loop.add(sock, EVENT_READ, self._on_event)
            self._send_first(now)
            return
        if self.service.path and code == errno.EAGAIN:
            self._fail(CONNECT_FAILED, "unix socket backlog full")
            return
        if code not in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self._fail(*_connect_error(code))
            return
        # the service's timeout bounds the whole attempt, connect included (as the original's
        # alarm did): a blackholed service with TIMEOUT 1 costs 1 s, not connect_timeout
        self.limit = min(now + self.backends.connect_timeout,
                         self.started + self.service.timeout, self.deadline)
        self.loop.add(sock, EVENT_WRITE, self._on_event)

    def _send_first(self, now: float) -> None:
        """Connected: send the request, then wait for the answer."""
        limit = self.started + self.service.timeout
        self.limit = limit if limit < self.deadline else self.deadline  # noqa: FURB136 (no call)
        self.send_payload()

    def send_payload(self) -> None:
        """Send what the socket takes of the payload (an idle or just connected one: nearly
        always all of it), then wait for the answer, or for room to send the rest; an error
        is the exchange's outcome."""
        payload = self.payload
        try:
            self.sent = sent = self.sock.send(payload)  # type: ignore[union-attr]
        except BlockingIOError:
            self.sent = sent = 0
        except OSError as exc:
            self.sent = 0
            self.state = SENDING
            self._io_error(exc)
            return
        if sent == len(payload):
            self.state = READING
        else:
            self.state = SENDING
            self.loop.modify(self.sock, EVENT_WRITE, self._on_event)

    def _on_event(self, mask: int) -> None:
        state = self.state
        if state == READING:
            try:
                data = self.sock.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except OSError as exc:
                self._io_error(exc)
                return
            # the common case, _received and _finish inline: the first read is one whole
            # answer, LF line ends, its first line a non-empty action; _received does the rest
            end = data.find(b"\n\n")
            if (end == len(data) - 2 and not self.answer and data.startswith(b"action=")
                    and end <= MAX_ANSWER_BYTES - 2 and 13 not in data):
                action = data[:data.find(b"\n")]
                on_done = self.on_done
                if len(action) > 7 and on_done is not None:
                    self.on_done = None
                    self.payload = b""
                    backends = self.backends
                    backends.in_flight.discard(self)
                    self.ended = self.loop.now  # the turn's time, as the lane's answers
                    if backends.idle.put(self):
                        self.state = IDLE
                    else:
                        self.close()
                    if backends.on_end is not None:
                        backends.on_end(self.service)
                    on_done(action, ANSWERED, "")
                    return
            self._received(data)
        elif state == IDLE:
            self.backends.idle.drop(self)  # closed by the service, or it spoke unasked
        elif state == CONNECTING:
            code = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)  # type: ignore
            if code:
                self._fail(*_connect_error(code))
            elif mask & EVENT_WRITE:
                self.loop.modify(self.sock, EVENT_READ, self._on_event)
                self._send_first(time.monotonic())
        elif state == SENDING:
            self._send_more()

    def _send_more(self) -> None:
        try:
            self.sent += self.sock.send(self.payload[self.sent:])  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self._io_error(exc)
            return
        if self.sent == len(self.payload):
            self.state = READING
            self.loop.modify(self.sock, EVENT_READ, self._on_event)

    def _received(self, data: bytes) -> None:
        """Bytes read while waiting for the answer (b"": the service closed)."""
        if not data:
            if self.reused and not self.answer:
                self._retry_fresh()
            else:
                self._fail(CLOSED, "closed the connection before a full answer")
            return
        answer = self.answer + data if self.answer else data
        end = answer_complete(answer)
        if end < 0:
            if len(answer) > MAX_ANSWER_BYTES:
                self._fail(INVALID, f"answer larger than {MAX_ANSWER_BYTES} bytes")
            else:
                self.answer = answer
            return
        if end > MAX_ANSWER_BYTES:
            self._fail(INVALID, f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return
        action = answer_action(answer[:end] if end < len(answer) else answer)
        if not action:
            self._fail(INVALID, "answer without action: " + repr(answer[:80])[2:-1])
            return
        self._finish(action, ANSWERED, "", keep=end == len(answer))

    def _io_error(self, exc: OSError) -> None:
        if self.reused and not self.answer and exc.errno in (errno.EPIPE, errno.ECONNRESET):
            self._retry_fresh()
        else:
            self._fail(*_connect_error(exc.errno or 0))

    def _retry_fresh(self) -> None:
        self.close()
        self.reused = False
        now = time.monotonic()
        self.started = now  # a stale idle connection is not the service's time
        self.answer = b""
        self.sent = 0
        self._connect(now)

    def timeout(self, now: float) -> None:
        """The current step is past its limit (called by Backends' tick)."""
        waited = now - self.started
        if self.state == CONNECTING:
            self._fail(CONNECT_TIMEOUT, f"connect timeout after {waited:.1f}s")
        else:
            self._fail(ANSWER_TIMEOUT, f"no answer after {waited:.1f}s")

    def abandon(self, why: str) -> None:
        """Stop waiting (the service was found dead meanwhile); ends with ABANDONED."""
        self._fail(ABANDONED, why)

    def cancel(self, why: str) -> None:
        """Stop the exchange in progress, closed, without its callback (nobody waits for it
        any more); it counts against no service."""
        self.on_done = _ignore
        self.abandon(why)

    def _fail(self, outcome: int, detail: str) -> None:
        self._finish(b"", outcome, detail, keep=False)

    def _finish(self, action: bytes, outcome: int, detail: str, keep: bool) -> None:
        on_done = self.on_done
        if on_done is None:
            return  # ended already
        self.on_done = None
        self.payload = b""
        self.answer = b""
        backends = self.backends
        backends.in_flight.discard(self)
        self.ended = self.loop.now
        if keep and backends.idle.put(self):
            self.state = IDLE
        else:
            self.close()
        if backends.on_end is not None:
            backends.on_end(self.service)
        on_done(action, outcome, detail)

    def close(self, unregister: bool = True) -> None:
        """Close the socket (and leave the loop); the connection can connect again."""
        self.state = CLOSED_STATE
        sock = self.sock
        if sock is not None:
            if unregister:
                self.loop.remove(sock)
            sock.close()
            self.sock = None


def _ignore(action: bytes, outcome: int, detail: str) -> None:
    pass


def _connect_error(code: int) -> tuple[int, str]:
    """The outcome and detail of a failed connect, send or receive with errno code."""
    if code == errno.ECONNREFUSED:
        return CONNECT_FAILED, "connection refused"
    if code == errno.ECONNRESET:
        return RESET, "connection reset"
    if code == errno.EPIPE:
        return RESET, "broken pipe"
    return CONNECT_FAILED, os.strerror(code).lower() if code else "i/o error"
