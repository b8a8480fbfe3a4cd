"""Containment of exceptions on the way of one request (job.Job, hedge.Hedge, the event
loop's `on_error`), in-process: an exception in any step of a request costs that request the
default answer, exactly once, with one log line and the pool's `internal` counter; its
exchanges are stopped; an exception after the answer costs nothing but a log line; the
dispatcher goes on answering.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

from testkit.backends import FakeBackend
from testkit.dispatching import Client, Run
from testkit.protocol import request

from hapolicy.base.protocol import RequestFramer
from hapolicy.tables.layout import ANSWERS, DEFAULT_INTERNAL, FAILURES, REQUESTS


@contextlib.contextmanager
def running(*specs: str, **settings) -> Iterator[Run]:
    """A dispatcher for these services (test_dispatch_inprocess.Run), closed at the end."""
    run = Run(*specs, **settings)
    try:
        yield run
    finally:
        run.close()


def boom(*args: object) -> object:
    raise RuntimeError("boom")


def internal(run: Run) -> int:
    return run.health.counter(DEFAULT_INTERNAL)


def logged(run: Run) -> list[str]:
    return [line for level, line in run.log.lines if "internal error" in line]


def test_an_exception_making_the_hash_key_costs_that_request_the_default():
    with FakeBackend(action="OK") as backend, \
            running(backend.spec("A"), balance="hash:client_address/24") as run:
        key = run.dispatcher.hash_key
        run.dispatcher.hash_key = boom
        assert run.ask(request())[0] == b"action=dunno\n\n"
        assert internal(run) == 1 and backend.requests == []
        [line] = logged(run)
        assert re.fullmatch(r"internal error while answering a request \(RuntimeError: boom at "
                            r"test_containment_inprocess\.py:\d+\): action=dunno", line), line
        run.dispatcher.hash_key = key
        assert run.ask(request())[0] == b"action=OK\n\n"
        # the counters add up: a request, an answer or a default answer
        assert run.health.counter(REQUESTS) == 2
        assert run.health.service_counter(0, ANSWERS) == 1


def test_an_exception_at_an_exchanges_end_costs_that_request_the_default():
    with FakeBackend(action="OK") as backend, \
            running(backend.spec("A"), fail_answer="^REJECT") as run:

        class FailAnswer:
            judge = staticmethod(boom)

        run.dispatcher.fail_answer = FailAnswer()
        assert run.ask(request())[0] == b"action=dunno\n\n"
        assert internal(run) == 1 and len(backend.requests) == 1


def test_an_exception_in_a_hedge_stops_both_exchanges_and_answers_once():
    with FakeBackend(action="OK slow", delay=0.3) as slow, FakeBackend(action="OK") as fast, \
            running(slow.spec("S", prio=1), fast.spec("F", prio=2), hedge="0.05",
                    hedge_max=100) as run:
        picks = run.dispatcher.selector.pick

        def pick_then_fail(tried, *args, **kwargs):
            if tried:  # the hedge's pick: the first attempt runs
                raise RuntimeError("boom")
            return picks(tried, *args, **kwargs)

        run.dispatcher.selector.pick = pick_then_fail
        client = Client()
        [framed] = RequestFramer().feed(request())
        run.dispatcher.submit(framed, client)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # past the slow service's answer
            run.loop.run_once(0.05)
        assert client.answers == [b"action=dunno\n\n"]
        assert internal(run) == 1 and run.dispatcher.in_flight == 0
        assert not run.dispatcher.backends.in_flight  # the first exchange was stopped
        assert run.health.service_counter(0, FAILURES) == 0  # counted against nobody


def test_an_exception_after_the_answer_costs_no_answer():
    class Shadow:
        copy = staticmethod(boom)

    with FakeBackend(action="OK") as backend, \
            running(backend.spec("A")) as run:
        run.dispatcher.shadow = Shadow()
        assert run.ask(request())[0] == b"action=OK\n\n"  # ask: exactly one answer
        assert internal(run) == 0
        [line] = logged(run)
        assert re.fullmatch(r"internal error while answering a request \(RuntimeError: boom at "
                            r"test_containment_inprocess\.py:\d+\)", line), line


def test_a_flood_of_exceptions_is_logged_a_line_a_second():
    with FakeBackend(action="OK") as backend, \
            running(backend.spec("A"), balance="hash:client_address") as run:
        run.dispatcher.hash_key = boom
        started = time.monotonic()
        for _ in range(50):
            assert run.ask(request())[0] == b"action=dunno\n\n"
        seconds = time.monotonic() - started
        assert internal(run) == 50
        run.dispatcher.close()  # logs what it held
        lines = logged(run)
        assert len(lines) <= 2 + seconds, lines  # the first at once, then one a second
        held = [int(m.group(1)) for m in (re.search(r"action=dunno \((\d+) requests? in 1s\)$",
                                                      line) for line in lines[1:]) if m]
        assert len(held) == len(lines) - 1 and 1 + sum(held) == 50, lines


def test_an_exception_delivering_one_of_a_turns_lane_answers_costs_no_other():
    """Lane.flush (the end of a busy turn): the other answers go out, nothing stays held (a
    list left behind would keep every later turn from being flushed), in_flight adds up."""
    from types import SimpleNamespace

    from hapolicy.request.lane import Lane

    class Deliveries:
        def __init__(self, fails: bool) -> None:
            self.fails = fails
            self.answers: list[bytes] = []

        def deliver(self, answer: bytes) -> None:
            if self.fails:
                raise RuntimeError("boom")
            self.answers.append(answer)

    errors: list[bool] = []
    d = SimpleNamespace(in_flight=3, internal_error=lambda exc, answered: errors.append(answered))
    clients = [Deliveries(False), Deliveries(True), Deliveries(False)]
    lane = SimpleNamespace(answered=[(c, b"action=OK\n\n") for c in clients], sends=[], d=d)
    Lane.flush(lane)  # type: ignore[arg-type]
    assert [c.answers for c in clients] == [[b"action=OK\n\n"], [], [b"action=OK\n\n"]]
    assert lane.answered == [] and d.in_flight == 0 and errors == [True]
