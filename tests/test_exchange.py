"""One exchange with one policy service (hapolicy.backend.Exchange), in-process: an event
loop of ours against FakeBackend threads and a Blackhole on 127.0.0.1.

What README's "What it does with a request" promises of one attempt: the first `action=`
line relayed unchanged, each way a service fails named (refused, connect timeout, no answer
in its TIMEOUT, closed early, no action, too large), the total deadline cutting an attempt
short, a connection kept for the next request, and a reused connection found closed retried
once on a fresh one without counting as a failure. Timeouts are bounded on both sides.
"""

from __future__ import annotations

import time

import pytest
from fakes import Blackhole, FakeBackend, refused_port

from hapolicy.backend import Exchange, Pool, Resolver
from hapolicy.config import Service
from hapolicy.eventloop import EventLoop
from hapolicy.protocol import MAX_ANSWER_BYTES

REQUEST = b"request=smtpd_access_policy\nsender=a@example.org\n\n"
SLACK = 0.5


class Attempts:
    """One loop, pool and resolver, as a worker has; runs exchanges to their end."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.pool = Pool(self.loop)
        self.resolver = Resolver()

    def run(self, port: int, timeout: float = 5.0, total: float = 30.0,
            connect_timeout: float = 5.0) -> tuple[bytes, str, float]:
        """(action line, failure reason, seconds taken) of one exchange."""
        service = Service(name="S", host="127.0.0.1", port=port, timeout=timeout)
        done: list[tuple[bytes, str]] = []
        started = time.monotonic()
        exchange = Exchange(self.loop, service, REQUEST, started + total, connect_timeout,
                            lambda action, reason: done.append((action, reason)), self.pool,
                            self.resolver)
        exchange.start()
        while not done:
            assert time.monotonic() - started < 40, "the exchange never ended"
            self.loop.run_once(0.1)
        assert len(done) == 1
        return done[0][0], done[0][1], time.monotonic() - started

    def close(self) -> None:
        self.pool.close()
        self.loop.close()


@pytest.fixture
def attempts():
    made = Attempts()
    yield made
    made.close()


def test_the_first_action_line_is_relayed_unchanged(attempts):
    with FakeBackend(mode="multiline", action="REJECT no thanks ") as backend:
        action, reason, _ = attempts.run(backend.port)
    assert (action, reason) == (b"action=REJECT no thanks ", "")


def test_a_connection_is_kept_for_the_next_request(attempts):
    with FakeBackend(action="OK") as backend:
        for _ in range(3):
            assert attempts.run(backend.port)[:2] == (b"action=OK", "")
        assert backend.connections == 1
        assert [r["sender"] for r in backend.requests] == ["a@example.org"] * 3


def test_a_reused_connection_found_closed_is_retried_on_a_fresh_one(attempts):
    with FakeBackend(action="OK") as backend:
        assert attempts.run(backend.port)[:2] == (b"action=OK", "")
        backend.drop_connections()  # closed while idle in our pool, our loop not running
        deadline = time.monotonic() + 5
        while backend.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert attempts.run(backend.port)[:2] == (b"action=OK", "")  # not a failure
        assert backend.connections == 2


def test_a_fresh_connection_closed_before_the_answer_is_a_failure(attempts):
    with FakeBackend(mode="close_after_request") as backend:
        action, reason, _ = attempts.run(backend.port)
        assert (action, reason) == (b"", "closed the connection before a full answer")
        assert backend.connections == 1


@pytest.mark.parametrize("mode, reason", [
    ("noaction", "answer without action: foo=bar"),
    ("garbage", "answer without action: this is not a policy answer"),
    ("partial", "closed the connection before a full answer"),
    ("huge", f"answer larger than {MAX_ANSWER_BYTES} bytes"),
])
def test_a_broken_answer_fails_at_once_and_says_why(attempts, mode, reason):
    with FakeBackend(mode=mode) as backend:
        action, why, took = attempts.run(backend.port, timeout=20)
    assert action == b"" and why.startswith(reason), why
    assert took < 1.0  # found out, not timed out


def test_a_refused_connect_fails_at_once(attempts):
    action, reason, took = attempts.run(refused_port())
    assert (action, reason) == (b"", "connection refused") and took < 1.0


def test_a_silent_service_fails_after_its_timeout(attempts):
    with FakeBackend(mode="silent") as backend:
        action, reason, took = attempts.run(backend.port, timeout=0.5)
    assert (action, reason) == (b"", "no answer after 0.5s")
    assert 0.5 <= took < 0.5 + SLACK


def test_a_connect_that_never_completes_fails_after_the_connect_timeout(attempts):
    with Blackhole() as hole:
        action, reason, took = attempts.run(hole.port, timeout=30, connect_timeout=0.5)
    assert (action, reason) == (b"", "connect timeout after 0.5s")
    assert 0.5 <= took < 0.5 + SLACK


def test_the_service_timeout_bounds_the_connect_too(attempts):
    with Blackhole() as hole:
        action, reason, took = attempts.run(hole.port, timeout=0.5, connect_timeout=5)
    assert (action, reason) == (b"", "connect timeout after 0.5s")
    assert 0.5 <= took < 0.5 + SLACK


def test_the_total_deadline_cuts_an_attempt_short(attempts):
    with FakeBackend(mode="silent") as backend:
        action, reason, took = attempts.run(backend.port, timeout=30, total=0.5)
    assert (action, reason) == (b"", "no answer after 0.5s")
    assert 0.5 <= took < 0.5 + SLACK
