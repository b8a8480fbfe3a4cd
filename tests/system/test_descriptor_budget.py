"""docs/operating.md: a worker takes at most three quarters of its descriptors as client connections
(the rest stay for backend sockets); when full it logs `cannot accept: N clients, the most
that RLIMIT_NOFILE ... allows`, pauses accepting and keeps serving the connections it has.

A real daemon (one worker) with RLIMIT_NOFILE 256, so that the reserve is the quarter (64),
not the 32-descriptor minimum: it must hold exactly 192 clients, no more, and still have
descriptors for backend sockets.
"""

from __future__ import annotations

import socket

import pytest
from test_scale import LimitedDaemon, answer_for, ask_all
from testkit.backends import FakeBackend
from testkit.protocol import read_frame

NOFILE = 256
BUDGET = NOFILE * 3 // 4  # client connections a worker takes
KNOCKING = BUDGET + 40  # well over the budget, well under what 256 descriptors could hold
FULL_LINE = (f"cannot accept: {BUDGET} clients, the most that RLIMIT_NOFILE {NOFILE} allows "
             f"with room for backend connections")


@pytest.fixture
def echo():
    with FakeBackend(mode="echo", attr="recipient", name="E") as backend:
        yield backend


def test_a_worker_takes_three_quarters_of_its_descriptors_as_clients(echo):
    daemon = LimitedDaemon("-s", echo.spec(), "-d", "FALLBACK", nofile=NOFILE, workers=1)
    socks: list[socket.socket] = []
    with daemon:
        daemon.wait_ready()
        try:
            socks = [daemon.connect() for _ in range(KNOCKING)]
            daemon.log.wait(FULL_LINE, timeout=10)
            assert "Too many open files" not in daemon.log.text()

            # one request on every connection: exactly the budget is held (and answered), the
            # rest wait in the listen backlog
            answers = ask_all(socks, [f"k{i}" for i in range(KNOCKING)], 3.0)
            held = sorted(i for i, answer in answers.items() if answer)
            assert len(held) == BUDGET, (len(held), answers)

            # the reserve leaves room for backend sockets: every held client is served by the
            # backend, not with the default action
            for start in range(0, len(held), 8):
                group = held[start:start + 8]
                tags = [f"b{i}" for i in group]
                got = ask_all([socks[i] for i in group], tags, 10.0)
                assert got == {n: answer_for(tag) for n, tag in enumerate(tags)}, got

            # once enough clients leave, the ones in the backlog are taken and answered
            for i in held[:BUDGET // 8]:
                socks[i].close()
            waiting = [i for i in range(KNOCKING) if i not in held][:4]
            for i in waiting:
                assert read_frame(socks[i], 10.0) == answer_for(f"k{i}")
        finally:
            for sock in socks:
                sock.close()
        assert daemon.stop() == 0
