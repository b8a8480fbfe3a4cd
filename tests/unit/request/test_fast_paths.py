"""The request path's fast paths give what the general path gives (architecture.md)."""

import random
import socket

from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.base.protocol import MAX_ATTRIBUTES, Request, RequestFramer, check_limits
from hapolicy.config.parsers import parse_service
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import SERVED, SLOT, WEIGHT


def test_by_weight_is_min_of_the_clock_after_the_pick_first_of_equals():
    services = [parse_service(f"S{i}=h:{i + 1}:{w}") for i, w in enumerate((1, 2, 3, 2, 1))]
    health = HealthTable(len(services), shared=False)
    sel = Selector(services, health)
    rnd = random.Random(7)
    for _ in range(500):
        for i in range(len(services)):
            health.f[i * SLOT + SERVED] = rnd.choice((0.0, 0.5, 1.0, rnd.random()))
            health.f[i * SLOT + WEIGHT] = rnd.choice((0.0, 0.0, 1.0, 4.0))
        candidates = sorted(rnd.sample(range(len(services)), rnd.randint(1, len(services))))
        expected = min(candidates, key=lambda i: (health.served(i) + sel._step(i), i))
        assert sel.by_weight(candidates) == expected


def test_whole_refuses_as_check_limits_does():
    framer = RequestFramer()
    for raw in (b"a=1\n" * (MAX_ATTRIBUTES + 1) + b"\n", b"a=" + b"x" * 9000 + b"\n\n",
                b"a=1\n" * MAX_ATTRIBUTES + b"\n", b"a=" + b"x" * 600 + b"\n\n"):
        request = framer.whole(raw)
        assert request is not None and request.error == check_limits(raw)
        assert framer.feed(raw)[0].error == request.error
    assert isinstance(framer.whole(b"a=1\n\n"), Request)


def test_an_fd_removed_in_a_round_gets_no_event_of_that_round():
    loop = EventLoop()
    pairs = [socket.socketpair() for _ in range(2)]
    fds = [ours.fileno() for ours, _ in pairs]
    calls = []

    def handler(fd, other):
        def on_event(mask):
            calls.append(fd)
            if len(calls) == 1:  # the first of the round removes the other, and reuses it
                loop.remove(other)
                loop.add(other, EVENT_READ, lambda m: calls.append("new"))
        return on_event

    try:
        for _, theirs in pairs:
            theirs.send(b"x")
        loop.add(fds[0], EVENT_READ, handler(fds[0], fds[1]))
        loop.add(fds[1], EVENT_READ, handler(fds[1], fds[0]))
        loop.run_once(1.0)
        assert len(calls) == 1  # the other's event was polled for what was removed
        loop.run_once(1.0)
        assert "new" in calls[1:]  # the next round: an event of the new registration
    finally:
        loop.close()
        for pair in pairs:
            for sock in pair:
                sock.close()
