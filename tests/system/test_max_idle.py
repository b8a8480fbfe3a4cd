"""--max-idle S closes a client connection that did nothing for S seconds, whatever state it
is in: idle between requests, stopped in the middle of a request, or never reading its
answers (docs/configuration.md, Command line); and not before S seconds.

A real daemon (one worker, --max-idle 2: longer than a housekeeping tick, so that a guard
four times too eager is seen) on 127.0.0.1. The server side's close is seen without reading
from the client socket (which would be activity): its TCP state leaves ESTABLISHED once the
daemon closes (FIN, or a reset when answers were left unread).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.protocol import PolicyClient, request

from hapolicy.daemon.worker import HOUSEKEEPING_SECONDS

MAX_IDLE = 2.0
SLACK = 0.5
TCP_ESTABLISHED = 1
BIG_ACTION = "DUNNO " + "x" * 8000  # answers that fill the buffers of a non-reader quickly


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of sock (struct tcp_info's first byte)."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


def make_idle(port: int) -> tuple[socket.socket, float, float]:
    """A client asked once, read its answer and then kept quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = PolicyClient.from_socket(sock)
    first = time.monotonic()
    assert client.ask(request()).startswith("action=DUNNO x")
    return sock, first, time.monotonic()


def make_half_sent(port: int) -> tuple[socket.socket, float, float]:
    """A client stopped in the middle of its request."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"request=smtpd_access_policy\nsender=")
    sent = time.monotonic()
    return sock, sent, sent


def make_non_reader(port: int) -> tuple[socket.socket, float, float]:
    """A client that sends requests as fast as it can and never reads an answer: the
    daemon answers until its output is full, then stops reading from it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    data = request() * 20
    first = last = time.monotonic()
    while time.monotonic() - last < 0.3:  # until the daemon took nothing for 0.3 s
        try:
            sock.send(data)
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.005)
    return sock, first, last


@pytest.mark.parametrize("make", [make_idle, make_half_sent, make_non_reader],
                         ids=["idle", "half-sent", "never-reads"])
def test_max_idle_closes_a_quiet_connection_after_max_idle_not_before(make):
    with FakeBackend(action=BIG_ACTION) as backend, \
            Daemon("-s", backend.spec("B"), "--max-idle", f"{MAX_IDLE:g}", workers=1) as daemon:
        quiet, first, last = make(daemon.port)
        with quiet, PolicyClient("127.0.0.1", daemon.port) as live:
            closed = None
            while closed is None:  # a live client on the same worker, asking every 0.1 s
                assert live.ask(request(), timeout=5).startswith("action=DUNNO x")
                if tcp_state(quiet) != TCP_ESTABLISHED:
                    closed = time.monotonic()
                elif time.monotonic() - last > MAX_IDLE + HOUSEKEEPING_SECONDS + SLACK:
                    raise AssertionError("the quiet connection was not closed")
                time.sleep(0.1)
            # closed after S seconds of quiet, at the next housekeeping tick (once a second)
            assert closed - first >= MAX_IDLE, closed - first
            assert closed - last < MAX_IDLE + HOUSEKEEPING_SECONDS + SLACK, closed - last
            # the live client was never idle that long: still served
            assert live.ask(request(), timeout=5).startswith("action=DUNNO x")
