"""One exchange with one policy service: non-blocking connect, send, read the answer, deadline.

`Backends` is what the exchanges of one process (a worker, spawn mode, the master's checks)
share: the event loop, the pool of idle connections, the resolver and the connect timeout; an
exchange is started with the service, the payload, the deadline and a callback.

`Exchange` is a small state machine driven by the event loop; it ends by calling
`on_done(action_line, outcome, detail)`: the first `action=` line of a good answer with outcome
ANSWERED and detail "", or b"", the outcome category (see outcome.py) and why it failed.
Connections that ended cleanly go back to the process's `Pool` of idle connections for the
next request. A reused connection that turns out closed before any byte
of answer is retried once on a fresh connection, and that is not a failure of the service.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Callable

from .config import Service
from .eventloop import EVENT_READ, EVENT_WRITE, EventLoop, Timer
from .outcome import (
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
from .protocol import MAX_ANSWER_BYTES, answer_action, answer_complete

RESOLVE_TTL = 300.0
RESOLVE_RETRY = 5.0
POOL_MAX_IDLE = 64  # idle connections kept per service and worker
POOL_IDLE_SECONDS = 60.0


class Resolver:
    """Addresses of services, looked up once and kept for RESOLVE_TTL seconds.

    `lookup` (socket.getaddrinfo's signature) and `clock` (the time an entry is stamped with
    once its look-up returned) are attributes so that tests can replace them.
    """

    def __init__(self) -> None:
        self.cache: dict[str, tuple[float, tuple | None, str]] = {}
        self.lookup: Callable[..., list] = socket.getaddrinfo
        self.clock: Callable[[], float] = time.monotonic

    def address(self, service: Service, now: float) -> tuple[int, object, str]:
        """(family, sockaddr, error)."""
        if service.path:
            return socket.AF_UNIX, service.path, ""
        cached = self.cache.get(service.name)
        if cached is None or cached[0] <= now:
            try:
                info = self.lookup(service.host, service.port, 0, socket.SOCK_STREAM)
                entry = (self.clock() + RESOLVE_TTL, (info[0][0], info[0][4]), "")
            except (OSError, UnicodeError, ValueError) as exc:
                if cached is not None and cached[1] is not None:
                    # a DNS blip: keep the address that worked, look again later
                    entry = (self.clock() + RESOLVE_RETRY, cached[1], "")
                else:
                    entry = (self.clock() + RESOLVE_RETRY, None,
                             f"cannot resolve {service.host}: {exc}")
            self.cache[service.name] = cached = entry
        if cached[1] is None:
            return 0, None, cached[2]
        return cached[1][0], cached[1][1], ""


class Pool:
    """Idle backend connections of one worker, per service, newest last.

    An idle connection stays registered in the event loop for reading: if the service closes
    it (or sends anything unasked) it is dropped at once, so a request rarely meets a dead
    one, and taking one from the pool costs no system call (an Exchange just changes what it
    waits for).
    """

    def __init__(self, loop: EventLoop | None = None) -> None:
        self.loop = loop
        self.idle: dict[str, list[tuple[socket.socket, float]]] = {}
        self.closed = False

    def get(self, name: str, now: float) -> socket.socket | None:
        """An idle connection, still registered in the loop (or None)."""
        stack = self.idle.get(name)
        while stack:
            sock, since = stack.pop()
            if now - since < POOL_IDLE_SECONDS:
                return sock
            self._discard(sock)
        return None

    def put(self, name: str, sock: socket.socket, now: float) -> bool:
        """Keep a registered connection; False (and nothing done) if the pool is full."""
        stack = self.idle.setdefault(name, [])
        if len(stack) >= POOL_MAX_IDLE or self.loop is None or self.closed:
            return False
        stack.append((sock, now))
        self.loop.modify(sock, EVENT_READ, lambda mask: self._on_idle_event(name, sock))
        return True

    def _on_idle_event(self, name: str, sock: socket.socket) -> None:
        stack = self.idle.get(name, [])
        for n, (pooled, _) in enumerate(stack):
            if pooled is sock:
                del stack[n]
                break
        self._discard(sock)

    def _discard(self, sock: socket.socket) -> None:
        if self.loop is not None:
            self.loop.remove(sock)
        sock.close()

    def sweep(self, now: float) -> None:
        """Close connections idle longer than POOL_IDLE_SECONDS."""
        for stack in self.idle.values():
            while stack and now - stack[0][1] >= POOL_IDLE_SECONDS:
                self._discard(stack.pop(0)[0])

    def close(self) -> None:
        self.closed = True
        for stack in self.idle.values():
            for sock, _ in stack:
                self._discard(sock)
        self.idle.clear()

    def abandon(self) -> None:
        """Close every idle socket without touching the loop (a forked child's copy)."""
        self.loop = None
        self.close()


class Backends:
    """The exchanges of one process: its loop, idle connections, addresses, connect timeout."""

    def __init__(self, loop: EventLoop, connect_timeout: float) -> None:
        self.loop = loop
        self.pool = Pool(loop)
        self.resolver = Resolver()
        self.connect_timeout = connect_timeout

    def exchange(self, service: Service, payload: bytes, deadline: float,
                 on_done: Callable[[bytes, int, str], None]) -> Exchange:
        """Start one exchange; on_done(action, outcome, detail) is called exactly once."""
        exchange = Exchange(self, service, payload, deadline, on_done)
        exchange.start()
        return exchange

    def close(self) -> None:
        self.pool.close()


CONNECTING, SENDING, READING, DONE = range(4)


class Exchange:
    """Send one request to one service and read its answer before a deadline."""

    __slots__ = (
        "answer",
        "connect_timeout",
        "deadline",
        "loop",
        "on_done",
        "payload",
        "pool",
        "registered",
        "resolver",
        "reused",
        "sent",
        "service",
        "sock",
        "started",
        "state",
        "timer",
    )

    def __init__(self, backends: Backends, service: Service, payload: bytes, deadline: float,
                 on_done: Callable[[bytes, int, str], None]) -> None:
        self.loop = backends.loop
        self.service = service
        self.payload = payload
        self.deadline = deadline
        self.connect_timeout = backends.connect_timeout
        self.on_done = on_done
        self.pool = backends.pool
        self.resolver = backends.resolver
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.sent = 0
        self.answer = bytearray()
        self.timer: Timer | None = None
        self.reused = False
        self.registered = False
        self.started = 0.0

    def start(self) -> None:
        now = time.monotonic()
        self.started = now
        sock = self.pool.get(self.service.name, now)
        if sock is not None:
            self.reused = True
            self.registered = True  # the pool keeps idle connections registered
            self.sock = sock
            self._begin_send(now)
            return
        self._connect(now)

    def _connect(self, now: float) -> None:
        family, address, error = self.resolver.address(self.service, now)
        if error:
            self._fail(CONNECT_FAILED, error)
            return
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
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
            self._begin_send(now)
            return
        if self.service.path and code == errno.EAGAIN:
            self._fail(CONNECT_FAILED, "unix socket backlog full")
            return
        if code not in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self._fail(*_connect_error(code))
            return
        # the service's timeout bounds the whole attempt, connect included (as the original's
        # alarm did): a blackholed service with TIMEOUT 1 costs 1 s, not connect_timeout
        limit = min(now + self.connect_timeout, self._attempt_deadline())
        self.timer = self.loop.call_at(limit, self._timeout)
        self._register(EVENT_WRITE)

    def _begin_send(self, now: float) -> None:
        self.state = SENDING
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(self._attempt_deadline(), self._timeout)
        sock = self.sock
        try:
            self.sent = sock.send(self.payload)  # type: ignore[union-attr]
        except BlockingIOError:
            self.sent = 0
        except OSError as exc:
            self._io_error(exc)
            return
        if self.sent == len(self.payload):
            self.state = READING
            self._register(EVENT_READ)
        else:
            self._register(EVENT_WRITE)

    def _attempt_deadline(self) -> float:
        return min(self.started + self.service.timeout, self.deadline)

    def _register(self, events: int) -> None:
        if self.registered:
            self.loop.modify(self.sock, events, self._on_event)
        else:
            self.loop.add(self.sock, events, self._on_event)
            self.registered = True

    def _on_event(self, mask: int) -> None:
        sock = self.sock
        if self.state == CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
            if code:
                self._fail(*_connect_error(code))
            else:
                self._begin_send(time.monotonic())
            return
        try:
            if self.state == SENDING:
                self.sent += sock.send(self.payload[self.sent:])  # type: ignore[union-attr]
                if self.sent == len(self.payload):
                    self.state = READING
                    self._register(EVENT_READ)
                return
            data = sock.recv(65536)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self._io_error(exc)
            return
        if not data:
            if self.reused and not self.answer:
                self._retry_fresh()
            else:
                self._fail(CLOSED, "closed the connection before a full answer")
            return
        answer = self.answer
        answer += data
        end = answer_complete(answer)
        if end < 0:
            if len(answer) > MAX_ANSWER_BYTES:
                self._fail(INVALID, f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return
        if end > MAX_ANSWER_BYTES:
            self._fail(INVALID, f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return
        action = answer_action(bytes(answer[:end]))
        if not action:
            self._fail(INVALID, "answer without action: " + repr(bytes(answer[:80]))[2:-1])
            return
        self._finish(action, ANSWERED, "", keep=end == len(answer))

    def _io_error(self, exc: OSError) -> None:
        if self.reused and not self.answer and exc.errno in (errno.EPIPE, errno.ECONNRESET):
            self._retry_fresh()
        else:
            self._fail(*_connect_error(exc.errno or 0))

    def _retry_fresh(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._close()
        self.reused = False
        self.started = time.monotonic()  # a stale idle connection is not the service's time
        self.answer.clear()
        self.sent = 0
        self._connect(time.monotonic())

    def _timeout(self) -> None:
        self.timer = None
        waited = time.monotonic() - self.started
        if self.state == CONNECTING:
            self._fail(CONNECT_TIMEOUT, f"connect timeout after {waited:.1f}s")
        else:
            self._fail(ANSWER_TIMEOUT, f"no answer after {waited:.1f}s")

    def abandon(self, why: str) -> None:
        """Stop waiting (the service was found dead meanwhile); ends with ABANDONED."""
        self._fail(ABANDONED, why)

    def _fail(self, outcome: int, detail: str) -> None:
        self._finish(b"", outcome, detail, keep=False)

    def _finish(self, action: bytes, outcome: int, detail: str, keep: bool) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if keep and self.sock is not None and self.pool.put(self.service.name, self.sock,
                                                             time.monotonic()):
            self.sock = None
            self.registered = False
        else:
            self._close()
        self.on_done(action, outcome, detail)

    def _close(self) -> None:
        if self.sock is not None:
            if self.registered:
                self.loop.remove(self.sock)
                self.registered = False
            self.sock.close()
            self.sock = None


def _connect_error(code: int) -> tuple[int, str]:
    """The outcome and detail of a failed connect, send or receive with errno code."""
    if code == errno.ECONNREFUSED:
        return CONNECT_FAILED, "connection refused"
    if code == errno.ECONNRESET:
        return RESET, "connection reset"
    if code == errno.EPIPE:
        return RESET, "broken pipe"
    return CONNECT_FAILED, os.strerror(code).lower() if code else "i/o error"
