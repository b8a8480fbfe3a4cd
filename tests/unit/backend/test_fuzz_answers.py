"""Reading a service's answer (hapolicy/backend/exchange.py, lane.py) from arbitrary bytes (Hypothesis).

A real backend Connection in a real EventLoop, on a socketpair whose other end plays the
service: it reads the request, sends drawn bytes cut into drawn pieces, then closes. The
exchange ends exactly once, never with an exception, and its end is what the bytes say
whatever the pieces: the first complete answer's `action=` line (ANSWERED), or INVALID (no
action, or more than MAX_ANSWER_BYTES), or CLOSED (closed before a complete answer); the
detail is one line. The lane's reader (`Lane.whole_answer`, the same read taken whole) gives
the client the action line the general path gives and counts it under its word.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from hypothesis import example, given
from hypothesis import strategies as st
from testkit.fuzzing import answer_streams

from hapolicy.backend.exchange import IDLE, Backends, Connection
from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.base.outcome import ANSWERED, CLOSED, INVALID
from hapolicy.base.protocol import MAX_ANSWER_BYTES, answer_action, answer_complete
from hapolicy.config.records import parse_service
from hapolicy.request.lane import Lane
from hapolicy.tables.layout import ANSWERS_BY_ACTION
from hapolicy.tables.stats import action_index

REQUEST = b"request=smtpd_access_policy\ninstance=1\n\n"


def expected_end(data: bytes) -> tuple[bytes, int]:
    """What the exchange must end with (action, outcome) when the service sends data, then
    closes."""
    end = answer_complete(data)
    if end < 0:
        return b"", INVALID if len(data) > MAX_ANSWER_BYTES else CLOSED
    if end > MAX_ANSWER_BYTES:
        return b"", INVALID
    action = answer_action(data[:end])
    return (action, ANSWERED) if action else (b"", INVALID)


def exchange(pieces: list[bytes]) -> list[tuple[bytes, int, str]]:
    """Run one exchange on a pooled connection whose service sends pieces, then closes; every
    call of its on_done."""
    loop = EventLoop()
    backends = Backends(loop, 5.0)
    conn = Connection(backends, parse_service("A=127.0.0.1:1:10:1:30"))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5.0)
    conn.sock, conn.state = ours, IDLE  # as the pool keeps it: registered for reading
    loop.add(ours, EVENT_READ, conn._on_event)
    ended: list[tuple[bytes, int, str]] = []
    try:
        now = time.monotonic()
        conn.run(REQUEST, now + 60.0, lambda *end: ended.append(end), now)
        conn.reused = False  # a close before any answer is the service's: no fresh retry
        assert theirs.recv(65536) == REQUEST
        for piece in pieces:
            try:
                theirs.sendall(piece)
            except OSError:  # the connection ended already and was closed
                break
            loop.run_once(0.0)
        try:
            theirs.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        give_up = time.monotonic() + 30.0
        while not ended:
            assert time.monotonic() < give_up, "the exchange never ended"
            loop.run_once(0.05)
        for _ in range(3):  # nothing more comes of it
            loop.run_once(0.0)
        return ended
    finally:
        backends.close()
        ours.close()
        theirs.close()
        loop.close()


def cut(data: bytes, places: list[int]) -> list[bytes]:
    bounds = [0, *sorted(min(p, len(data)) for p in places), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# the edges, in one read: an empty action, and whole answers about the size limit (the
# connection's fast path takes one up to MAX_ANSWER_BYTES, its empty line included)
EDGES = [b"action=\n\n", b"action=\r\n\r\n", b"\n", b"action=OK"] + [
    b"action=DUNNO " + b"x" * (n - 15) + b"\n\n"
    for n in (MAX_ANSWER_BYTES - 1, MAX_ANSWER_BYTES, MAX_ANSWER_BYTES + 1, MAX_ANSWER_BYTES + 2)]


@given(answer_streams(), st.lists(st.integers(0, MAX_ANSWER_BYTES + 4), max_size=5))
@example(EDGES[0], [])
@example(EDGES[1], [])
@example(EDGES[2], [])
@example(EDGES[3], [])
@example(EDGES[4], [])
@example(EDGES[5], [])
@example(EDGES[6], [])
@example(EDGES[7], [])
def test_an_answer_read_in_any_pieces_ends_the_exchange_once_as_its_bytes_say(stream, places):
    ended = exchange(cut(stream, places))
    assert len(ended) == 1
    action, outcome, detail = ended[0]
    assert (action, outcome) == expected_end(stream)
    assert "\n" not in detail and "\r" not in detail


def lane_reader() -> SimpleNamespace:
    """What Lane.whole_answer reads of its lane: the pool's action cache and its known answers."""
    return SimpleNamespace(actions={}, known_answers={})


@given(st.lists(answer_streams(), max_size=8))
@example(EDGES)
def test_the_lane_takes_a_whole_answer_as_the_general_path_does(reads):
    lane = lane_reader()  # one for all the reads: its caches fill as they go
    for read in reads:
        found = Lane.whole_answer(lane, read)
        if found is None:
            continue  # the general path's
        offset, to_client = found
        action, outcome = expected_end(read)
        assert outcome == ANSWERED and answer_complete(read) == len(read)
        assert to_client == action + b"\n\n"
        assert offset == ANSWERS_BY_ACTION + action_index(action)
        assert lane.known_answers.get(read, found) == found
