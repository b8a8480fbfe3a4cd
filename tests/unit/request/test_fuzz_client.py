"""Every framed request is answered exactly once, in order, with bounded memory (Hypothesis).

A real ClientConnection (hapolicy/request/client.py) in a real EventLoop reads arbitrary bytes from a
socketpair (daemon mode) or from a pair of pipes (spawn mode: poll, two descriptors), cut
into reads at drawn places: requests with LF or CRLF, garbage, NULs, lines and requests at and
over the limits. A fake dispatcher answers each request it is given with a distinct answer,
at once or from a timer, some of them large enough to fill the output bound; the peer reads
the answers at once or only now and then. Once the peer has sent everything and closed its
side, the loop runs until the client closes. Then: the dispatcher was given exactly the
requests that a fresh RequestFramer frames from the same bytes, in order; the peer read
exactly one answer per request, in order; and at every turn the framer's buffer, the queue
of requests and the output were within their bounds.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from hypothesis import given
from hypothesis import strategies as st
from testkit.fuzzing import request_streams, split

from hapolicy.base.eventloop import EventLoop
from hapolicy.base.protocol import MAX_REQUEST_BYTES, Request, RequestFramer
from hapolicy.request.client import (
    MAX_QUEUED_OUTPUT,
    MAX_QUEUED_REQUESTS,
    READ_SIZE,
    ClientConnection,
)

BIG_ANSWER = 9000  # 32 of them are more than MAX_QUEUED_OUTPUT: the client must pause
# the answers' way back is small, so that the client's output fills when the peer reads slowly
SMALL_BUFFER = 4096
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux's; in fcntl since Python 3.10


class Dispatcher:
    """Answers request n with `action=DUNNO n` (padded to a drawn size), at once or later."""

    lane = None

    def __init__(self, loop: EventLoop, later: list[bool], sizes: list[int]) -> None:
        self.loop = loop
        self.later = later
        self.sizes = sizes
        self.requests: list[Request] = []
        self.answered: set[int] = set()

    def submit(self, request: Request, client: ClientConnection) -> None:
        assert not self.requests or len(self.answered) == len(self.requests), \
            "a request submitted before the one in progress was answered"
        n = len(self.requests)
        self.requests.append(request)
        answer = answer_of(n, self.sizes[n % len(self.sizes)])

        def deliver() -> None:
            assert n not in self.answered, f"request {n} answered twice"
            self.answered.add(n)
            client.deliver(answer)

        if self.later[n % len(self.later)]:
            self.loop.call_later(0.0, deliver)
        else:
            deliver()


def answer_of(n: int, size: int) -> bytes:
    return b"action=DUNNO %d %s\n\n" % (n, b"x" * size)


class Peer:
    """The client's other end: what Postfix's smtpd would hold."""

    def __init__(self, pipes: bool) -> None:
        self.pipes = pipes
        if pipes:
            self.rfd, self.to_client = os.pipe()  # the client reads rfd
            self.from_client, self.wfd = os.pipe()  # and writes wfd
            for fd in (self.rfd, self.to_client, self.from_client, self.wfd):
                os.set_blocking(fd, False)
            fcntl.fcntl(self.wfd, F_SETPIPE_SZ, SMALL_BUFFER)
            self.sock = None
        else:
            self.sock, self.theirs = socket.socketpair()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
            self.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            self.sock.setblocking(False)
            self.theirs.setblocking(False)
            self.rfd = self.wfd = self.sock.fileno()

    def send(self, data: bytes) -> int:
        try:
            if self.pipes:
                return os.write(self.to_client, data)
            return self.theirs.send(data)
        except BlockingIOError:
            return 0

    def shut(self) -> None:
        if self.pipes:
            os.close(self.to_client)
            self.to_client = -1
        else:
            self.theirs.shutdown(socket.SHUT_WR)

    def receive(self) -> bytes | None:
        """What the client wrote (b"" at its end of file), None when nothing is there yet."""
        try:
            if self.pipes:
                return os.read(self.from_client, 65536)
            return self.theirs.recv(65536)
        except BlockingIOError:
            return None

    def close(self) -> None:
        """Our ends (the client closes its own)."""
        if self.pipes:
            for fd in (self.from_client, self.to_client):
                if fd >= 0:
                    os.close(fd)
        else:
            self.theirs.close()


def converse(reads: list[bytes], pipes: bool, later: list[bool], sizes: list[int],
             slow_reader: bool) -> tuple[Dispatcher, bytes]:
    """Run the client until it closes; the dispatcher and everything the peer read."""
    loop = EventLoop(use_poll=pipes)
    peer = Peer(pipes)
    dispatcher = Dispatcher(loop, later, sizes)
    closed: list[ClientConnection] = []
    client = ClientConnection(loop, dispatcher, peer.rfd, peer.wfd, closed.append, sock=peer.sock)
    client.start()
    pending = list(reads)
    shut = False
    got = bytearray()
    at_end = False
    turn = 0
    give_up = time.monotonic() + 60.0
    try:
        while not (closed and at_end):
            assert time.monotonic() < give_up, (
                f"stalled: {len(dispatcher.requests)} requests, {len(got)} bytes answered, "
                f"{len(pending)} reads not sent, closed {bool(closed)}")
            turn += 1
            if pending:
                sent = peer.send(pending[0])
                pending[0] = pending[0][sent:]
                if not pending[0]:
                    pending.pop(0)
            elif not shut:
                peer.shut()
                shut = True
            loop.run_once(0.001)
            assert len(client.framer.buffer) <= MAX_REQUEST_BYTES + READ_SIZE
            assert len(client.queue) <= MAX_QUEUED_REQUESTS
            assert len(client.out) <= MAX_QUEUED_OUTPUT + len(answer_of(999999, max(sizes)))
            if slow_reader and turn % 8:
                continue
            while (data := peer.receive()) is not None:
                if not data:
                    at_end = True
                    break
                got += data
        return dispatcher, bytes(got)
    finally:
        if not closed:
            client.close()
        peer.close()
        loop.close()


@given(st.data())
def test_every_framed_request_is_answered_exactly_once_in_order(data):
    stream = data.draw(request_streams(), label="stream")
    reads = data.draw(split(stream), label="reads")
    pipes = data.draw(st.booleans(), label="pipes")
    later = data.draw(st.lists(st.booleans(), min_size=1, max_size=5), label="later")
    sizes = data.draw(st.lists(st.sampled_from((0, 0, 3, BIG_ANSWER)), min_size=1, max_size=5),
                      label="sizes")
    slow_reader = data.draw(st.booleans(), label="slow_reader")
    dispatcher, got = converse(reads, pipes, later, sizes, slow_reader)
    expected = RequestFramer().feed(stream)
    assert [(r.raw, r.error) for r in dispatcher.requests] == [(r.raw, r.error) for r in expected]
    assert dispatcher.answered == set(range(len(expected)))
    assert got == b"".join(answer_of(n, sizes[n % len(sizes)]) for n in range(len(expected)))
