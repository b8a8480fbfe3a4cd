"""One exchange with one policy service (hapolicy.backend.exchange.Connection), in-process: an event
loop of ours against FakeBackend threads and a Blackhole on 127.0.0.1.

What "What it does with a request" (docs/health.md) promises of one attempt: the first `action=`
line relayed unchanged, each way a service fails named (refused, connect timeout, no answer
in its TIMEOUT, closed early, no action, too large), the total deadline cutting an attempt
short, a connection kept for the next request, and a reused connection found closed retried
once on a fresh one without counting as a failure. Timeouts are bounded on both sides.
"""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest
from testkit.backends import FakeBackend
from testkit.ports import refused_port
from testkit.stubs import Blackhole, ScriptedBackend

from hapolicy.backend import exchange as backend_module
from hapolicy.backend.exchange import Backends
from hapolicy.backend.idle import IDLE_SECONDS, MAX_IDLE
from hapolicy.base.eventloop import EventLoop
from hapolicy.base.outcome import (
    ANSWER_TIMEOUT,
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    INVALID,
    LOCAL,
    RESET,
)
from hapolicy.base.protocol import MAX_ANSWER_BYTES
from hapolicy.config.records import Service

REQUEST = b"request=smtpd_access_policy\nsender=a@example.org\n\n"
# how late a deadline of 0.5 s may end on a loaded 2-core machine (the suite runs four-way
# parallel): generous, yet far from the 30 s the service itself would take
SLACK = 2.0


class Attempts:
    """One loop and its Backends (pool, resolver), as a worker has; runs exchanges to their end."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.backends = Backends(self.loop, 5.0)
        self.idle = self.backends.idle
        self.resolver = self.backends.resolver
        self.outcome = -1  # of the last run

    def run(self, port: int, timeout: float = 5.0, total: float = 30.0,
            connect_timeout: float = 5.0, payload: bytes = REQUEST, host: str = "127.0.0.1",
            path: str = "", name: str = "S") -> tuple[bytes, str, float]:
        """(action line, failure reason, seconds taken) of one exchange."""
        service = Service(name=name, host=host, port=port, timeout=timeout, path=path)
        done: list[tuple[bytes, str]] = []
        started = time.monotonic()
        self.backends.connect_timeout = connect_timeout
        self.backends.exchange(service, payload, started + total,
                               lambda *result: done.append(result))
        while not done:
            assert time.monotonic() - started < 40, "the exchange never ended"
            self.loop.run_once(0.1)
        assert len(done) == 1
        self.outcome = done[0][1]
        return done[0][0], done[0][2], time.monotonic() - started

    def close(self) -> None:
        self.idle.close()
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
        assert attempts.outcome == CLOSED
        assert backend.connections == 1


@pytest.mark.parametrize("mode, reason, outcome", [
    ("noaction", "answer without action: foo=bar", INVALID),
    ("garbage", "answer without action: this is not a policy answer", INVALID),
    ("partial", "closed the connection before a full answer", CLOSED),
    ("huge", f"answer larger than {MAX_ANSWER_BYTES} bytes", INVALID),
])
def test_a_broken_answer_fails_at_once_and_says_why(attempts, mode, reason, outcome):
    with FakeBackend(mode=mode) as backend:
        action, why, took = attempts.run(backend.port, timeout=20)
    assert action == b"" and why.startswith(reason), why
    assert attempts.outcome == outcome
    assert took < 1.0  # found out, not timed out


def test_a_refused_connect_fails_at_once(attempts):
    action, reason, took = attempts.run(refused_port())
    assert (action, reason) == (b"", "connection refused") and took < 1.0
    assert attempts.outcome == CONNECT_FAILED


def test_a_silent_service_fails_after_its_timeout(attempts):
    with FakeBackend(mode="silent") as backend:
        action, reason, took = attempts.run(backend.port, timeout=0.5)
    assert (action, reason) == (b"", "no answer after 0.5s")
    assert attempts.outcome == ANSWER_TIMEOUT
    assert 0.5 <= took < 0.5 + SLACK


def test_a_connect_that_never_completes_fails_after_the_connect_timeout(attempts):
    with Blackhole() as hole:
        action, reason, took = attempts.run(hole.port, timeout=30, connect_timeout=0.5)
    assert (action, reason) == (b"", "connect timeout after 0.5s")
    assert attempts.outcome == CONNECT_TIMEOUT
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


def test_a_reused_connection_found_closed_for_every_request_fails_once_not_forever(attempts):
    with FakeBackend(action="OK") as backend:
        assert attempts.run(backend.port)[:2] == (b"action=OK", "")
        backend.set_mode("close_after_request")
        action, reason, took = attempts.run(backend.port, timeout=5)
        # the pooled one was retried on a fresh one, which failed: that is the failure
        assert (action, reason) == (b"", "closed the connection before a full answer")
        assert backend.connections == 2 and took < 1.0


def test_a_timed_out_connection_is_not_kept(attempts):
    with FakeBackend(action="LATE", delay=0.8) as backend:
        assert attempts.run(backend.port, timeout=0.3)[:2] == (b"", "no answer after 0.3s")
        backend.set_mode("echo", attr="sender", delay=0.0)
        # a kept connection would give this request the late answer of the one before
        assert attempts.run(backend.port)[:2] == (b"action=a@example.org", "")
        assert backend.connections == 2


def test_a_request_larger_than_the_socket_buffers_is_sent_whole(attempts):
    # more than the kernel takes in one send (net.ipv4.tcp_wmem's maximum is 4 MiB)
    big = b"request=smtpd_access_policy\nsender=" + b"s" * 16_000_000 + b"\n\n"
    with FakeBackend(mode="echo", attr="request") as backend:
        # a generous TIMEOUT: the fake backend parses 16 MB in Python, slowly under load
        assert attempts.run(backend.port, timeout=60, total=60, payload=big)[:2] == (
            b"action=smtpd_access_policy", "")
        assert backend.raw_requests == [big]


def test_an_answer_split_across_reads_is_put_together(attempts):
    backend = ScriptedBackend([b"action=OK sp", b"lit\n", b"\n"])
    try:
        assert attempts.run(backend.port)[:2] == (b"action=OK split", "")
    finally:
        backend.close()


def test_an_answer_of_exactly_the_size_limit_is_taken(attempts):
    action = b"action=OK " + b"x" * (MAX_ANSWER_BYTES - 12)
    assert len(action + b"\n\n") == MAX_ANSWER_BYTES
    backend = ScriptedBackend([action + b"\n\n"])
    try:
        assert attempts.run(backend.port)[:2] == (action, "")
    finally:
        backend.close()


def test_a_reused_connection_reset_is_retried_on_a_fresh_one(attempts):
    backend = ScriptedBackend([b"action=OK\n\n"])
    try:
        assert attempts.run(backend.port)[:2] == (b"action=OK", "")
        backend.thread.join(5)
        backend.reset()  # RST on the pooled connection; our loop is not running meanwhile
        time.sleep(0.05)
        fresh = FakeBackend(action="FRESH", port=backend.port)
        backend.close()
        with fresh:
            assert attempts.run(backend.port)[:2] == (b"action=FRESH", "")
    finally:
        backend.close()


def test_a_fresh_connection_reset_fails_at_once(attempts):
    backend = ScriptedBackend(reset_after_request=True)
    try:
        action, reason, took = attempts.run(backend.port, timeout=20)
    finally:
        backend.close()
    assert (action, reason) == (b"", "connection reset")  # not retried: it is the service
    assert attempts.outcome == RESET
    assert took < 1.0


def test_a_connection_closed_at_once_fails_at_once(attempts):
    with FakeBackend(mode="close") as backend:
        action, reason, took = attempts.run(backend.port, timeout=20)
    assert action == b"" and reason in ("connection reset", "broken pipe",
                                        "closed the connection before a full answer"), reason
    assert took < 1.0


def test_no_descriptor_for_a_socket_is_a_local_failure(attempts, monkeypatch):
    def no_descriptors(*args: object) -> socket.socket:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    service = Service(name="S", host="127.0.0.1", port=refused_port())
    monkeypatch.setattr(backend_module._socket, "socket", no_descriptors)
    done: list[tuple[bytes, int, str]] = []
    attempts.backends.exchange(service, REQUEST, time.monotonic() + 5,
                               lambda *result: done.append(result))
    # LOCAL: not the service's fault
    assert done == [(b"", LOCAL, "cannot make a socket: Too many open files")]


def test_a_unix_path_the_kernel_refuses_is_a_failure(attempts):
    action, reason, _ = attempts.run(0, host="", path="/tmp/" + "x" * 200)
    assert (action, reason) == (b"", "cannot connect: AF_UNIX path too long")


def test_a_full_unix_socket_backlog_fails_at_once(attempts, tmp_path):
    path = str(tmp_path / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    try:
        while True:  # nobody accepts: fill the backlog until a connect would block
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(path) == errno.EAGAIN:
                break
            assert len(fillers) < 100
        action, reason, took = attempts.run(0, host="", path=path, timeout=20)
        assert (action, reason) == (b"", "unix socket backlog full") and took < 1.0
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_unix_socket_service(attempts, tmp_path):
    path = str(tmp_path / "policy.sock")
    backend = ScriptedBackend([b"action=OK unix\n\n"], family=socket.AF_UNIX, path=path)
    try:
        assert attempts.run(0, host="", path=path)[:2] == (b"action=OK unix", "")
    finally:
        backend.close()
    missing = str(tmp_path / "nothing.sock")
    assert attempts.run(0, host="", path=missing, name="U2")[:2] == (
        b"", "no such file or directory")
    os.unlink(path)
    refusing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    refusing.bind(path)  # bound, never listening: connect is refused
    try:
        assert attempts.run(0, host="", path=path, name="U3")[:2] == (b"", "connection refused")
    finally:
        refusing.close()


def test_a_name_that_does_not_resolve_is_a_failure_of_the_service(attempts):
    def no_such_name(*args: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    attempts.resolver.lookup = no_such_name
    action, reason, took = attempts.run(10023, host="policy.invalid")
    assert action == b"" and took < 1.0
    assert reason == "cannot resolve policy.invalid: [Errno -2] Name or service not known"
    assert attempts.outcome == CONNECT_FAILED


def registered(loop: EventLoop) -> int:
    return len(loop.handlers)


def test_an_idle_connection_closed_by_the_service_leaves_the_pool_at_once(attempts):
    with FakeBackend(action="OK") as backend:
        attempts.run(backend.port)
        assert len(attempts.idle.stacks["S"]) == 1 and registered(attempts.loop) == 1
        backend.drop_connections()
        deadline = time.monotonic() + 5
        while attempts.idle.stacks["S"] and time.monotonic() < deadline:
            attempts.loop.run_once(0.05)
        assert attempts.idle.stacks["S"] == [] and registered(attempts.loop) == 0


def pooled_socket(attempts: Attempts, backend: FakeBackend) -> socket.socket:
    attempts.run(backend.port)
    [conn] = attempts.idle.stacks["S"]
    return conn.sock


def test_idle_connections_expire_after_a_minute(attempts):
    with FakeBackend(action="OK") as backend:
        sock = pooled_socket(attempts, backend)
        now = time.monotonic()
        attempts.idle.sweep(now + IDLE_SECONDS - 1)
        [conn] = attempts.idle.stacks["S"]
        assert conn.sock is sock
        attempts.idle.sweep(now + IDLE_SECONDS + 1)
        assert attempts.idle.stacks["S"] == [] and sock.fileno() == -1
        assert registered(attempts.loop) == 0
        attempts.idle.sweep(now + 2 * IDLE_SECONDS)  # an empty stack is fine too


def test_an_expired_connection_is_not_handed_out(attempts):
    with FakeBackend(action="OK") as backend:
        sock = pooled_socket(attempts, backend)
        assert attempts.idle.get("S", time.monotonic() + IDLE_SECONDS + 1) is None
        assert sock.fileno() == -1 and registered(attempts.loop) == 0


def test_a_closed_pool_keeps_nothing(attempts):
    with FakeBackend(action="OK") as backend:
        sock = pooled_socket(attempts, backend)
        attempts.idle.close()
        assert sock.fileno() == -1 and registered(attempts.loop) == 0
        assert attempts.run(backend.port)[:2] == (b"action=OK", "")
        assert attempts.idle.stacks.get("S", []) == [] and registered(attempts.loop) == 0


def test_an_abandoned_pool_closes_its_sockets_without_the_loop(attempts):
    with FakeBackend(action="OK") as backend:
        sock = pooled_socket(attempts, backend)
        attempts.idle.abandon()  # what a forked child does with its copy
        assert sock.fileno() == -1 and attempts.idle.stacks == {}


def test_the_pool_keeps_at_most_its_limit_per_service(attempts):
    with FakeBackend(action="OK", delay=0.2) as backend:
        service = Service(name="S", host="127.0.0.1", port=backend.port)
        done: list[bytes] = []
        count = MAX_IDLE + 3
        for _ in range(count):  # all at once: each needs its own connection
            attempts.backends.exchange(service, REQUEST, time.monotonic() + 10,
                                       lambda action, outcome, reason: done.append(action))
        deadline = time.monotonic() + 10
        while len(done) < count and time.monotonic() < deadline:
            attempts.loop.run_once(0.1)
        assert done == [b"action=OK"] * count
        assert backend.connections == count
        assert len(attempts.idle.stacks["S"]) == MAX_IDLE
        assert registered(attempts.loop) == MAX_IDLE  # the others are closed


def test_closing_the_backends_ends_the_exchanges_in_flight_too(attempts):
    """A stopped checker (a reload) must not keep a socket waiting on a hung service for ever:
    closing the Backends closes it, without calling back."""
    with FakeBackend(mode="silent") as backend:
        service = Service(name="S", host="127.0.0.1", port=backend.port, timeout=1.0)
        done: list[object] = []
        conn = attempts.backends.exchange(service, REQUEST, time.monotonic() + 1,
                                          lambda *result: done.append(result))
        deadline = time.monotonic() + 5
        while backend.connections == 0 and time.monotonic() < deadline:
            attempts.loop.run_once(0.05)
        attempts.backends.close()
        assert conn.sock is None and registered(attempts.loop) == 0
        for _ in range(30):  # past its deadline: no tick, no callback
            attempts.loop.run_once(0.05)
        assert done == [] and not attempts.backends.in_flight
