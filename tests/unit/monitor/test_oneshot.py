"""oneshot.py's bound on connections: idle connections never keep a whole request out.

In-process: a OneShotServer that answers a line (`big` gets 1 MB, more than the small socket
buffers hold), on 127.0.0.1, driven by its event loop in the test's thread; the clients are
plain non-blocking sockets. With MAX_CONNECTIONS connections that sent nothing, a new one takes
the place of the oldest of them (closed without an answer) and gets its answer; then the
oldest lingering one (answered: it still reads its whole answer); a connection being sent its
answer never, and while all are, a new connection is closed at once: the table never holds
more than MAX_CONNECTIONS. Evictions are counted and logged at most once every
EVICTION_LOG_SECONDS. The deadlines are raised for the test (nothing times out under it).

An answer that comes later (`Later`, the control socket's `ask`) reaches its client when it
comes, also one that shut down its side meanwhile, or at once when it came before the server
waited; the client gets the Later's `expired` line when it never comes, and a client gone
meanwhile costs nothing; a connection waiting for it is never evicted.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from testkit.logs import ListLogger

from hapolicy.base.eventloop import EventLoop
from hapolicy.monitor import oneshot
from hapolicy.monitor.oneshot import (
    LINGERING,
    MAX_CONNECTIONS,
    READING,
    WAITING,
    WRITING,
    Later,
    OneShotServer,
)


class LineServer(OneShotServer):
    what = "test"
    laters: list[Later]

    def answer(self, data: bytes) -> bytes | Later | None:
        if data == b"big\n":
            return b"x" * BIG
        if data in (b"later\n", b"ready\n", b"never\n"):  # its answer given by the test
            self.laters.append(Later(600.0 if data == b"later\n" else 0.2, b"expired\n"))
            if data == b"ready\n":
                self.laters[-1](b"ready at once\n")
            return self.laters[-1]
        return b"ok " + data if data.endswith(b"\n") else None


BIG = 1 << 20
SMALL_BUFFER = 4096


class Harness:
    def __init__(self) -> None:
        self.loop = EventLoop()
        self.listening = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        self.log = ListLogger()
        self.server = LineServer(self.listening, self.loop, self.log)
        self.server.laters = []
        self.clients: list[socket.socket] = []

    def connect(self, request: bytes = b"") -> socket.socket:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        client.settimeout(5)
        client.connect(self.listening.getsockname())
        if request:
            client.sendall(request)
        client.setblocking(False)
        self.clients.append(client)
        return client

    def spin(self, done: Callable[[], bool], what: str) -> None:
        self.reply_of(lambda: True if done() else None, what)

    def reply_of(self, get: Callable[[], object], what: str) -> object:
        """The first value of get() that is not None, the loop turning meanwhile."""
        for _ in range(400):  # 20 s at most
            value = get()
            if value is not None:
                return value
            self.loop.run_once(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def holds(self, client: socket.socket) -> bool:
        """Whether the server still holds client's connection."""
        return any(c.sock.getpeername() == client.getsockname()
                   for c in self.server.conns.values())

    def states(self) -> list[int]:
        return [c.state for c in self.server.conns.values()]

    def close(self) -> None:
        self.server.close()
        for client in self.clients:
            client.close()
        self.listening.close()
        self.loop.close()


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setattr(oneshot, "HEAD_SECONDS", 600.0, raising=False)
    monkeypatch.setattr(oneshot, "IDLE_SECONDS", 600.0)
    monkeypatch.setattr(oneshot, "LINGER_SECONDS", 600.0)
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def received(client: socket.socket) -> bytes | None:
    """What the server sent (b"": closed without an answer), None: nothing yet."""
    try:
        return client.recv(100)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""


def closed_without_answer(client: socket.socket) -> bool:
    return received(client) == b""


def test_a_whole_request_takes_the_place_of_the_oldest_idle_connection(h):
    idle = [h.connect() for _ in range(MAX_CONNECTIONS)]
    h.spin(lambda: len(h.server.conns) == MAX_CONNECTIONS, "the idle connections")
    scrape = h.connect(b"status\n")
    assert h.reply_of(lambda: received(scrape), "the answer") == b"ok status\n"
    assert h.reply_of(lambda: received(idle[0]), "the oldest closed") == b""
    assert not any(closed_without_answer(c) for c in idle[1:])
    assert len(h.server.conns) == MAX_CONNECTIONS
    assert h.log.lines == [f"warning: test: {MAX_CONNECTIONS} connections at once: closed the "
                           "oldest one waiting on its client to make room"]


def test_the_oldest_waiting_on_its_client_makes_room_never_one_being_answered(h):
    big = [h.connect(b"big\n") for _ in range(2)]  # its answer waits for the client to read
    answered = [h.connect(b"a\n") for _ in range(2)]  # answered, lingering
    h.spin(lambda: h.states() == [WRITING] * 2 + [LINGERING] * 2, "the first answers")
    idle = [h.connect() for _ in range(MAX_CONNECTIONS - 4)]
    h.spin(lambda: len(h.server.conns) == MAX_CONNECTIONS, "the idle connections")
    for i in range(len(idle)):  # the oldest without a whole request first
        new = h.connect(b"b\n")
        assert h.reply_of(lambda c=new: received(c), "an answer") == b"ok b\n"
        assert closed_without_answer(idle[i])
        assert len(h.server.conns) == MAX_CONNECTIONS
    assert all(h.holds(c) for c in [*big, *answered])
    new = h.connect(b"c\n")  # then the oldest lingering one
    assert h.reply_of(lambda: received(new), "an answer") == b"ok c\n"
    assert not h.holds(answered[0]) and h.holds(answered[1])
    assert received(answered[0]) == b"ok a\n"  # its answer whole, then the end
    assert received(answered[0]) == b""
    assert h.server.evicted == len(idle) + 1
    assert all(h.holds(c) for c in big) and h.states()[:2] == [WRITING] * 2
    assert len(h.server.conns) == MAX_CONNECTIONS


def test_a_new_connection_is_closed_at_once_while_all_are_being_answered(h, monkeypatch):
    monkeypatch.setattr(oneshot, "MAX_CONNECTIONS", 4)
    big = [h.connect(b"big\n") for _ in range(3)]
    idle = h.connect()
    h.spin(lambda: h.states() == [WRITING] * 3 + [READING], "three big answers under way")
    last = h.connect(b"big\n")  # takes the idle one's place
    h.spin(lambda: h.states() == [WRITING] * 4, "four big answers under way")
    assert closed_without_answer(idle)
    late = h.connect(b"late\n")
    assert h.reply_of(lambda: received(late), "the late one closed") == b""
    assert h.states() == [WRITING] * 4
    for client in [*big, last]:  # every answer whole
        got = 0
        while True:
            data = h.reply_of(lambda c=client: received(c), "the big answer")
            if not data:
                break
            got += len(data)
        assert got == BIG


def test_evictions_are_logged_at_most_once_in_a_while(h):
    idle = [h.connect() for _ in range(MAX_CONNECTIONS + 3)]
    h.spin(lambda: all(closed_without_answer(c) for c in idle[:3]), "three evictions")
    assert len(h.log.lines) == 1 and h.server.evicted == 3
    h.server.quiet_until = 0.0  # as if EVICTION_LOG_SECONDS had passed
    h.connect()
    h.spin(lambda: h.server.evicted == 4, "a fourth eviction")
    assert len(h.log.lines) == 2
    assert h.log.lines[1].endswith("to make room (2 more since the last line)")
    assert len(h.server.conns) == MAX_CONNECTIONS


def test_a_later_answer_reaches_its_client_when_it_comes(h):
    waiting = h.connect(b"later\n")
    shut = h.connect(b"later\n")
    gone = h.connect(b"later\n")
    h.spin(lambda: h.states() == [WAITING] * 3, "three waiting")
    shut.shutdown(socket.SHUT_WR)  # as socat does once its input ended
    gone.close()  # held until its answer comes (an end of input does not tell the two apart)
    for _ in range(5):
        h.loop.run_once(0.01)
    assert received(waiting) is None and received(shut) is None and h.states() == [WAITING] * 3
    first, second, third = h.server.laters
    first(b"one\n")
    second(b"two\n")
    third(b"three\n")  # its client is gone: its connection ends
    first(b"again\n")  # once only
    assert h.reply_of(lambda: received(waiting), "the first answer") == b"one\n"
    assert h.reply_of(lambda: received(shut), "the second answer") == b"two\n"
    assert received(waiting) == b"" and received(shut) == b""
    waiting.close()
    shut.close()
    h.spin(lambda: not h.server.conns, "every connection ended")
    assert not h.log.lines


def test_a_later_answer_that_came_first_or_never_comes(h):
    ready = h.connect(b"ready\n")
    assert h.reply_of(lambda: received(ready), "the answer at once") == b"ready at once\n"
    never = h.connect(b"never\n")
    assert h.reply_of(lambda: received(never), "the expired line") == b"expired\n"
    h.server.laters[-1](b"too late\n")  # nothing
    assert h.reply_of(lambda: received(never), "the end") == b""


def test_a_connection_waiting_for_its_answer_is_never_evicted(h):
    waiting = [h.connect(b"later\n") for _ in range(2)]
    h.spin(lambda: h.states() == [WAITING] * 2, "two waiting")
    answered = [h.connect(b"a\n") for _ in range(MAX_CONNECTIONS - 2)]  # lingering
    h.spin(lambda: h.states() == [WAITING] * 2 + [LINGERING] * (MAX_CONNECTIONS - 2),
           "the table full")
    new = h.connect(b"b\n")
    assert h.reply_of(lambda: received(new), "an answer") == b"ok b\n"
    assert not h.holds(answered[0]) and all(h.holds(c) for c in waiting)
    for later in h.server.laters:
        later(b"done\n")
    assert all(h.reply_of(lambda c=c: received(c), "the answer") == b"done\n" for c in waiting)
