"""The event loop (hapolicy/base/eventloop.py): handlers by descriptor, timers, the wait of a turn.

Each test runs with epoll (the daemon) and with poll(2) (spawn mode), on socketpairs. Waits are
bounded generously: what is checked is that a turn waits for the next timer and no longer than
asked, not how fast it is.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from hapolicy.base.eventloop import EVENT_READ, EVENT_WRITE, EventLoop


@pytest.fixture(params=[False, True], ids=["epoll", "poll"])
def loop(request):
    loop = EventLoop(use_poll=request.param)
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def bounded():
    """A turn that waits when it should not fails the test in 20 s instead of hanging it."""
    def expired(signum, frame):
        raise TimeoutError("the loop waited when it should not have")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20.0)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0.0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def turn_until(loop: EventLoop, done, limit: float = 10.0) -> None:
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < limit, "the loop never got there"
        loop.run_once(0.5)


def test_timers_fire_in_time_order_and_a_cancelled_one_never(loop):
    fired: list[str] = []
    now = time.monotonic()
    loop.call_at(now + 0.03, lambda: fired.append("c"))
    loop.call_at(now + 0.01, lambda: fired.append("a"))
    cancelled = loop.call_at(now + 0.02, lambda: fired.append("cancelled"))
    loop.call_at(now + 0.02, lambda: fired.append("b"))
    cancelled.cancel()
    cancelled.cancel()  # twice is once
    turn_until(loop, lambda: len(fired) == 3)
    assert fired == ["a", "b", "c"]
    assert loop.timers == [] and loop._cancelled == 0


def test_a_turn_waits_for_the_next_timer_not_for_max_wait(loop):
    fired = []
    loop.call_later(0.02, lambda: fired.append(1))
    started = time.monotonic()
    loop.run_once(30.0)
    while not fired:  # a turn may end just before the timer is due: then the next one fires it
        assert time.monotonic() - started < 10
        loop.run_once(30.0)
    assert time.monotonic() - started < 10


def test_an_overdue_timer_fires_at_once(loop):
    fired = []
    loop.call_at(time.monotonic() - 5.0, lambda: fired.append(1))
    started = time.monotonic()
    loop.run_once(30.0)
    assert fired == [1] and time.monotonic() - started < 10


def test_max_wait_bounds_a_turn_with_nothing_to_do(loop):
    loop.call_later(3600.0, lambda: None)
    started = time.monotonic()
    loop.run_once(0.01)
    assert time.monotonic() - started < 10


def test_huge_waits_do_not_overflow_the_poller(loop, pair):
    a, b = pair
    got = []
    loop.add(a, EVENT_READ, got.append)
    loop.call_later(1e12, lambda: None)
    b.send(b"x")
    loop.run_once(1e15)
    assert got == [EVENT_READ]


def test_a_timer_added_by_a_timer_fires_on_a_later_turn(loop):
    fired: list[str] = []

    def first() -> None:
        fired.append("first")
        loop.call_later(0.0, lambda: fired.append("second"))

    loop.call_later(0.0, first)
    turn_until(loop, lambda: fired)
    turn_until(loop, lambda: len(fired) == 2)
    assert fired == ["first", "second"]


def test_readable_and_hang_up_reach_the_handler(loop, pair):
    a, b = pair
    masks: list[int] = []
    loop.add(a, EVENT_READ, masks.append)
    b.send(b"x")
    turn_until(loop, lambda: masks)
    assert masks == [EVENT_READ]
    a.recv(10)
    b.close()
    turn_until(loop, lambda: len(masks) == 2)
    assert masks[1] & EVENT_READ  # the handler's read meets the end of file


def test_the_event_of_a_descriptor_removed_earlier_in_the_same_turn_is_dropped(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        calls: list[int] = []
        ours = [p[0] for p in pairs]

        def handler(index: int):
            def on_event(mask: int) -> None:
                calls.append(index)
                loop.remove(ours[1 - index])  # whichever runs first takes the other away
            return on_event

        for index, sock in enumerate(ours):
            loop.add(sock, EVENT_READ, handler(index))
        for _, theirs in pairs:
            theirs.send(b"x")
        time.sleep(0.05)
        loop.run_once(1.0)
        assert len(calls) == 1
    finally:
        for p in pairs:
            for sock in p:
                sock.close()


def test_modify_with_the_same_interest_swaps_the_handler_only(loop, pair):
    a, b = pair
    got: list[str] = []
    loop.add(a, EVENT_READ, lambda mask: got.append("old"))
    loop.modify(a, EVENT_READ, lambda mask: got.append("new"))
    b.send(b"x")
    turn_until(loop, lambda: got)
    assert got == ["new"]
    loop.modify(a, EVENT_WRITE, lambda mask: got.append(f"write {mask & EVENT_WRITE != 0}"))
    turn_until(loop, lambda: len(got) == 2)
    assert got[1] == "write True"


def test_cancelled_timers_are_dropped_when_they_outnumber_the_live_ones(loop):
    timers = [loop.call_later(3600.0 + i, lambda: None) for i in range(200)]
    for timer in timers[:150]:
        timer.cancel()
    loop.run_once(0.0)
    assert len(loop.timers) == 50 and loop._cancelled == 0


def test_a_descriptor_is_registered_once(loop, pair):
    a, _ = pair
    loop.add(a, EVENT_READ, lambda mask: None)
    with pytest.raises(KeyError):
        loop.add(a, EVENT_READ, lambda mask: None)
    loop.remove(a)
    loop.remove(a)  # removing what is not registered does nothing
    loop.add(a, EVENT_READ, lambda mask: None)


def test_the_turn_end_runs_after_every_handler_of_the_turn_and_before_its_timers(loop):
    """What a turn's handlers ask for at its end (at_turn_end) runs once they have all run,
    in order, before the due timers; what a timer asks for runs after the timers; and
    `gathering` says whether the turn has more than one event."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        calls: list[str] = []

        def handler(index: int):
            def on_event(mask: int) -> None:
                pairs[index][0].recv(16)
                calls.append(f"handler {index} gathering={loop.gathering}")
                loop.at_turn_end(lambda: calls.append(f"end of {index}"))
            return on_event

        for index, (ours, theirs) in enumerate(pairs):
            loop.add(ours, EVENT_READ, handler(index))
            theirs.send(b"x")
        loop.call_at(0.0, lambda: (calls.append("timer"),
                                   loop.at_turn_end(lambda: calls.append("end of timer"))))
        time.sleep(0.05)
        loop.run_once(1.0)
        handlers = [c for c in calls if c.startswith("handler")]
        assert len(handlers) == 3 and all(c.endswith("gathering=True") for c in handlers)
        assert calls[3:] == [f"end of {c.split()[1]}" for c in handlers] + [
            "timer", "end of timer"]
        assert not loop.gathering

        del calls[:]
        pairs[0][1].send(b"x")
        loop.run_once(1.0)
        assert calls == ["handler 0 gathering=False", "end of 0"]  # a turn of one event
    finally:
        for p in pairs:
            for sock in p:
                sock.close()


def test_a_turn_end_asked_for_between_turns_runs_before_the_next_wait(loop, pair):
    """Asked for outside a turn, it runs before the next turn waits: a request it sends is
    not held up by a poll waiting for the answer to it."""
    a, b = pair
    got: list[bytes] = []
    loop.add(a, EVENT_READ, lambda mask: got.append(a.recv(16)))
    loop.at_turn_end(lambda: b.send(b"sent"))
    started = time.monotonic()
    loop.run_once(10.0)
    assert got == [b"sent"] and time.monotonic() - started < 5.0


def test_a_turn_end_that_asks_for_another_has_it_run_in_the_same_turn(loop):
    calls: list[str] = []
    loop.at_turn_end(lambda: (calls.append("first"),
                              loop.at_turn_end(lambda: calls.append("second"))))
    loop.run_once(0.0)
    assert calls == ["first", "second"] and not loop.turn_end


def test_a_handler_that_raises_in_a_turn_of_several_events_leaves_gathering_off(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        def fail(mask: int) -> None:
            raise RuntimeError("handler failed")

        for ours, theirs in pairs:
            loop.add(ours, EVENT_READ, fail)
            theirs.send(b"x")
        time.sleep(0.05)
        with pytest.raises(RuntimeError):
            loop.run_once(1.0)
        assert not loop.gathering
    finally:
        for p in pairs:
            for sock in p:
                sock.close()


@pytest.mark.parametrize("yields", [True, False], ids=["yields", "does-not"])
def test_a_loop_that_yields_gives_the_cpu_up_after_a_turn_of_several_events_only(
        monkeypatch, yields):
    """A daemon worker's loop (`yields`) calls sched_yield once a turn of several events has
    run all it had to run (handlers, turn end, timers), and never after a turn of one event;
    a loop made without it never does."""
    from hapolicy.base import eventloop

    calls: list[str] = []
    monkeypatch.setattr(eventloop, "sched_yield", lambda: calls.append("yield"))
    loop = EventLoop(yields=yields)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        def handler(ours: socket.socket):
            def on_event(mask: int) -> None:
                ours.recv(16)
                calls.append("handler")
                loop.at_turn_end(lambda: calls.append("end"))
            return on_event

        for ours, theirs in pairs:
            loop.add(ours, EVENT_READ, handler(ours))
            theirs.send(b"x")
        loop.call_at(0.0, lambda: calls.append("timer"))
        time.sleep(0.05)
        loop.run_once(1.0)
        after = ["yield"] if yields else []
        assert calls == ["handler", "handler", "end", "end", "timer", *after]

        del calls[:]
        pairs[0][1].send(b"x")
        loop.run_once(1.0)
        assert calls == ["handler", "end"]  # one event: no yield
    finally:
        loop.close()
        for p in pairs:
            for sock in p:
                sock.close()


def test_an_exception_of_a_handler_timer_or_turn_end_goes_to_on_error(loop):
    """A worker's loop (on_error set) goes on after a handler raised: the other events of the
    turn, the due timers and the turn-end callbacks run; without on_error it raises."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        caught: list[str] = []
        ran: list[str] = []
        loop.on_error = lambda exc: caught.append(str(exc))

        def handler(name: str, raises: bool):
            def on_event(mask: int) -> None:
                pairs[int(name[-1])][0].recv(1)
                ran.append(name)
                if raises:
                    raise RuntimeError(name)
            return on_event

        for k, (ours, theirs) in enumerate(pairs):
            loop.add(ours, EVENT_READ, handler(f"fd{k}", k == 1))
            theirs.send(b"x")

        def timer() -> None:
            ran.append("timer")
            loop.at_turn_end(turn_end)
            raise RuntimeError("timer")

        def turn_end() -> None:
            ran.append("turn end")
            raise RuntimeError("turn end")

        loop.call_later(0.0, timer)
        time.sleep(0.01)
        loop.run_once(1.0)
        assert sorted(ran) == ["fd0", "fd1", "fd2", "timer", "turn end"]
        assert sorted(caught) == ["fd1", "timer", "turn end"]
        loop.on_error = None
        pairs[1][1].send(b"x")
        with pytest.raises(RuntimeError, match="fd1"):
            loop.run_once(1.0)
    finally:
        for k, (ours, theirs) in enumerate(pairs):
            loop.remove(ours)
            ours.close()
            theirs.close()
