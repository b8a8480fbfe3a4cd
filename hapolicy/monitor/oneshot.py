"""One request in, one answer out, closed: the connections of the control socket and /metrics.

`OneShotServer` serves a listening socket in an event loop without ever blocking it. It keeps
at most MAX_CONNECTIONS at once. A connection has HEAD_SECONDS to send a whole request of at
most `max_request` bytes (what it sent with its connect is read at once); then it gets
`answer`'s bytes, or `too_long`'s or `too_slow`'s, and nothing else is read as a request. Once
the answer is sent the server shuts down its side and reads and drops what the client still
sends, until the client's end of file, LINGER_BYTES or LINGER_SECONDS: a close with unread
input would be a reset, which can destroy the answer before the client reads it. A client that
does not read its answer within IDLE_SECONDS is closed. Each connection has one timer, the end
of its current state.

Connections that send nothing must not keep a whole request out: /metrics is open to every
local user, and MAX_CONNECTIONS idle connections would otherwise reset every scrape and
hapolicyctl call. So when the table is full, a new connection takes the place of the oldest
one that waits on its client: the oldest without a whole request (closed without an answer),
else the oldest lingering one (its answer all sent: what it sent since is dropped first, so
the close is no reset). This is counted in `evicted` and logged at most once every
EVICTION_LOG_SECONDS (with how many since the last line). Only while every connection is
being sent its answer is a new one closed at once, and an answer is never cut: the table never
holds more than MAX_CONNECTIONS, and a connection without its request is gone after
HEAD_SECONDS, or sooner when others come.

A subclass says what a whole request is and what the answer is (`answer`), may answer at once
on accepting (`admit`: a peer refused), and names itself in log lines (`what`). Nothing a
client sends raises out of here: a failing `answer` is the subclass's to catch.

An answer may come later (the control socket's `ask`, answered when a pool has answered): then
`answer` returns a `Later`, which whoever makes the answer calls with its bytes, at most once
and within its `seconds` (else the client gets its `expired` line). Meanwhile the connection
waits (WAITING): what the client sends is dropped, its end of file (a client that shut down
its side, as socat does) leaves it waiting, and it is never evicted, as one being answered.
"""

from __future__ import annotations

import socket
import time

from hapolicy.base.eventloop import EVENT_READ, EVENT_WRITE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.eventloop import EventLoop, Timer
    from hapolicy.base.log import Logger

MAX_CONNECTIONS = 16
HEAD_SECONDS = 2.0  # to send a whole request: a slow client makes room for others soon
IDLE_SECONDS = 5.0  # to read the answer
EVICTION_LOG_SECONDS = 60.0
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
READING, WRITING, LINGERING, WAITING = range(4)


class Later:
    """An answer to come (see the module doc): call it with the answer's bytes."""

    __slots__ = ("expired", "ready", "seconds", "send")

    def __init__(self, seconds: float, expired: bytes) -> None:
        self.seconds = seconds  # the longest wait for it
        self.expired = expired  # the answer when it did not come in time
        self.ready: bytes | None = None  # an answer given before the server waited for it
        self.send: Callable[[bytes], None] | None = None  # the server's, while it waits

    def __call__(self, answer: bytes) -> None:
        send, self.send = self.send, None
        if send is not None:
            send(answer)
        elif self.ready is None:
            self.ready = answer


class Conn:
    """One client connection of a OneShotServer."""

    __slots__ = ("data", "dropped", "later", "out", "sock", "state", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = READING
        self.data = b""  # the request read so far
        self.out = b""  # the answer not sent yet
        self.dropped = 0  # bytes read and dropped after the answer
        self.timer: Timer | None = None
        self.later: Later | None = None  # the answer it waits for (WAITING)


class OneShotServer:
    """Serves `sock` in `loop`: see the module doc."""

    what = "server"
    max_request = 4096

    def __init__(self, sock: socket.socket, loop: EventLoop, log: Logger) -> None:
        self.sock = sock
        self.loop = loop
        self.log = log
        self.conns: dict[int, Conn] = {}  # in the order they were accepted
        self.evicted = 0  # connections closed to make room for a new one
        self.evicted_unlogged = 0
        self.quiet_until = 0.0  # no eviction line before
        sock.setblocking(False)
        loop.add(sock, EVENT_READ, self._accept)

    # what a subclass says
    def admit(self, sock: socket.socket) -> bytes | None:
        """An answer to give at once instead of reading a request (a refused peer), or None."""
        return None

    def answer(self, data: bytes) -> bytes | Later | None:
        """The answer once data holds a whole request (or the Later that gives it), else None
        (read on)."""
        raise NotImplementedError

    def at_end(self, data: bytes) -> bytes | Later | None:
        """The answer when the client ended its input after data, not a whole request; None:
        close without one."""
        return None

    def too_long(self) -> bytes:
        return f"error: a request longer than {self.max_request} bytes\n".encode()

    def too_slow(self) -> bytes:
        return f"error: no request within {HEAD_SECONDS:g}s\n".encode()

    # the connections
    def _accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning(f"{self.what}: cannot accept: {exc.strerror}")
                return
            if len(self.conns) >= MAX_CONNECTIONS and not self._make_room():
                sock.close()
                continue
            sock.setblocking(False)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            self.loop.add(sock, EVENT_READ, lambda m, c=conn: self._read(c))
            early = self.admit(sock)
            if early is not None:
                self._reply(conn, early)
            else:
                self._deadline(conn, HEAD_SECONDS)
                self._read(conn)  # a request sent with the connect is whole at once

    def _make_room(self) -> bool:
        """Close the oldest connection that waits on its client (see the module doc); False
        when every one is being answered."""
        waiting = [c for c in self.conns.values()  # oldest first
                   if c.state != WRITING and c.state != WAITING]
        oldest = next((c for c in waiting if c.state == READING), None) or \
            next(iter(waiting), None)
        if oldest is None:
            return False
        if oldest.state == LINGERING:
            self._drain(oldest)  # its answer is sent: closed with no input unread, no reset
        self._close(oldest)
        self.evicted += 1
        self.evicted_unlogged += 1
        now = time.monotonic()
        if now >= self.quiet_until:
            more = (f" ({self.evicted_unlogged - 1} more since the last line)"
                    if self.evicted_unlogged > 1 else "")
            self.log.warning(f"{self.what}: {MAX_CONNECTIONS} connections at once: closed the "
                             f"oldest one waiting on its client to make room{more}")
            self.quiet_until = now + EVICTION_LOG_SECONDS
            self.evicted_unlogged = 0
        return True

    @staticmethod
    def _drain(conn: Conn) -> None:
        """Read and drop what the client sent (LINGER_BYTES at most)."""
        dropped = 0
        try:
            while dropped <= LINGER_BYTES:
                data = conn.sock.recv(65536)
                if not data:
                    return
                dropped += len(data)
        except OSError:
            pass

    def _deadline(self, conn: Conn, seconds: float) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = self.loop.call_later(seconds, lambda: self._expired(conn))

    def _expired(self, conn: Conn) -> None:
        conn.timer = None
        if conn.state == READING:
            self._reply(conn, self.too_slow())
        elif conn.state == WAITING and conn.later is not None:
            conn.later.send = None
            self._reply(conn, conn.later.expired)
        else:  # an answer never read, or a client that never ends its input
            self._close(conn)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536 if conn.state == LINGERING else
                                  self.max_request + 1 - len(conn.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if conn.state == WAITING:  # it may still read: wait on, no longer reading
                self.loop.remove(conn.sock)
                return
            answer = self.at_end(conn.data) if conn.state == READING and conn.data else None
            if answer is None:
                self._close(conn)
            else:  # the client shut down its side only: it may still read
                self._give(conn, answer)
            return
        if conn.state == LINGERING:
            conn.dropped += len(data)
            if conn.dropped > LINGER_BYTES:
                self._close(conn)
            return
        if conn.state != READING:
            return
        conn.data += data
        answer = self.answer(conn.data)
        if answer is not None:
            self._give(conn, answer)
        elif len(conn.data) > self.max_request:
            self._reply(conn, self.too_long())

    def _give(self, conn: Conn, answer: bytes | Later) -> None:
        """Reply now, or wait for a Later's answer (at once if it is ready)."""
        if not isinstance(answer, Later):
            self._reply(conn, answer)
        elif answer.ready is not None:
            self._reply(conn, answer.ready)
        else:
            conn.state = WAITING
            conn.data = b""
            conn.later = answer
            answer.send = lambda text: self._answered(conn, text)
            self._deadline(conn, answer.seconds)

    def _answered(self, conn: Conn, answer: bytes) -> None:
        """A Later's answer came; nothing when its client is gone meanwhile."""
        if conn.state == WAITING and conn.sock.fileno() >= 0:
            self._reply(conn, answer)

    def _reply(self, conn: Conn, answer: bytes) -> None:
        conn.state = WRITING
        conn.data = b""
        conn.later = None
        conn.out = answer
        self._deadline(conn, IDLE_SECONDS)  # for the client to read it
        if conn.sock.fileno() in self.loop.files:
            self.loop.modify(conn.sock, EVENT_WRITE, lambda m: self._write(conn))
        else:  # a waiting client that shut down its side
            self.loop.add(conn.sock, EVENT_WRITE, lambda m: self._write(conn))
        self._write(conn)

    def _write(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = LINGERING
        self._deadline(conn, LINGER_SECONDS)
        self.loop.modify(conn.sock, EVENT_READ, lambda m: self._read(conn))

    def _close(self, conn: Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        fd = conn.sock.fileno()
        if fd < 0:
            return
        if fd in self.loop.files:
            self.loop.remove(conn.sock)
        self.conns.pop(fd, None)
        conn.sock.close()

    def close(self) -> None:
        """Close every connection; stop listening (the socket itself is its owner's)."""
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.sock.fileno() >= 0 and self.sock.fileno() in self.loop.files:
            self.loop.remove(self.sock)
