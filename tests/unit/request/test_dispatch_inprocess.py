"""The way of one request (hapolicy.request.dispatch.Dispatcher), in-process: an event loop of ours,
FakeBackend threads on 127.0.0.1, a client object that records what it is delivered and a
logger that keeps its lines.

docs/health.md, "What it does with a request": every request gets exactly one answer; services are
tried by priority, each at most once; the first good answer is relayed; when every service
failed, or the total deadline is reached, the answer is the default action (logged as a
warning); a refused or empty request is answered with the default without asking a service;
requests of one SMTP transaction stay on one service; `-l` logs one line per request.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from testkit.backends import FakeBackend
from testkit.dispatching import Client
from testkit.ports import refused_port
from testkit.protocol import request
from testkit.stubs import RawBackend

from hapolicy.backend import exchange as backend_module
from hapolicy.base.protocol import Request, RequestFramer
from hapolicy.tables.layout import DOWN, UP


def test_a_failed_service_is_skipped_for_the_next_by_priority(runs):
    with FakeBackend(action="OK second") as good:
        run = runs(f"DEAD=127.0.0.1:{refused_port()}:10", good.spec("GOOD", prio=20),
                   log_requests=True)
        answer, _ = run.ask(request(sender="s@example.org"))
        assert answer == b"action=OK second\n\n"
        assert run.health.state(0, time.monotonic()) == DOWN
        assert run.health.state(1, time.monotonic()) == UP
        assert "service DEAD (127.0.0.1:" in run.log.text("warning")
        line = run.log.text("info")
        assert line.startswith("pool=default service=GOOD client=mail.example.org[192.0.2.10] "
                               "helo=<mail.example.org> sender=<s@example.org> "
                               "recipient=<b@example.net> delay="), line
        assert line.endswith('s action=OK second failed="DEAD: connection refused"'), line
        assert len(good.requests) == 1


def test_every_service_failed_gives_the_default_and_a_warning(runs):
    run = runs(f"A=127.0.0.1:{refused_port()}", f"B=127.0.0.1:{refused_port()}:20",
               default_action="DEFER_IF_PERMIT down")
    answer, _ = run.ask(request())
    assert answer == b"action=DEFER_IF_PERMIT down\n\n"
    assert "no service answered (all services failed): action=DEFER_IF_PERMIT down" in \
        run.log.text("warning")
    # both are down now: still tried (they may be back), still the default
    assert run.ask(request())[0] == b"action=DEFER_IF_PERMIT down\n\n"


def test_a_refused_or_empty_request_gets_the_default_without_a_service(runs):
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("B"), verbose=True)
        refused = Request(b"", "request larger than 65536 bytes")
        client = Client()
        run.dispatcher.submit(refused, client)
        assert client.answers == [b"action=dunno\n\n"]
        assert "request refused: request larger than 65536 bytes, answering action=dunno" in \
            run.log.text("warning")
        assert run.ask(b"\n")[0] == b"action=dunno\n\n"
        assert "empty request: answering action=dunno" in run.log.text("info")
        assert backend.requests == []


def test_the_total_deadline_answers_the_default(runs):
    with FakeBackend(mode="silent") as s1, FakeBackend(mode="silent") as s2:
        run = runs(s1.spec("S1", timeout=30), s2.spec("S2", prio=20, timeout=30),
                   total_timeout=0.5)
        answer, took = run.ask(request())
        assert answer == b"action=dunno\n\n"
        assert 0.5 <= took < 1.0
        assert "no service answered (total timeout 0.5s reached)" in run.log.text("warning")
        assert len(s1.requests) == 1 and s2.requests == []  # S1's attempt used it all


def test_a_service_timeout_fails_over_to_the_next(runs):
    with FakeBackend(mode="silent") as mute, FakeBackend(action="OK") as good:
        run = runs(mute.spec("MUTE", prio=1, timeout=0.5), good.spec("GOOD", prio=2))
        answer, took = run.ask(request())
        assert answer == b"action=OK\n\n"
        assert 0.5 <= took < 1.0


def test_requests_of_one_transaction_stay_on_one_service(runs):
    with FakeBackend(action="A") as a, FakeBackend(action="B") as b:
        run = runs(a.spec("A"), b.spec("B"))
        client = Client()
        first = run.ask(request(instance="t1"), client)[0]
        assert [run.ask(request(instance="t1"), client)[0] for _ in range(4)] == [first] * 4
        assert client.instance == b"t1"
        # a new transaction is balanced again: the other service's turn
        assert run.ask(request(instance="t2"), client)[0] != first


def test_without_sticky_instances_round_robin_goes_on(runs):
    with FakeBackend(action="A") as a, FakeBackend(action="B") as b:
        run = runs(a.spec("A"), b.spec("B"), sticky_instance=False)
        client = Client()
        answers = [run.ask(request(instance="t1"), client)[0] for _ in range(4)]
        assert sorted(answers) == [b"action=A\n\n"] * 2 + [b"action=B\n\n"] * 2


def test_a_pool_of_one_service_looks_no_instance_up(runs, monkeypatch):
    """With one service a transaction's pick is that service, sticky or not (down, drained or
    up): the requests' instance is not looked up, and the client keeps none."""
    looked_up: list[bytes] = []
    instance = Request.instance
    monkeypatch.setattr(Request, "instance",
                        lambda self: looked_up.append(self.raw) or instance(self))
    with FakeBackend(action="A") as a:
        run = runs(a.spec("A"))
        client = Client()
        answers = [run.ask(request(instance="t1"), client)[0] for _ in range(3)]
        run.health.set_admin(0, "drain")
        answers += [run.ask(request(instance="t1"), client)[0]]
        assert answers == [b"action=A\n\n"] * 4
        assert client.instance == b"" and looked_up == []
        assert not run.dispatcher.sticky


def test_hash_balancing_keeps_a_key_on_one_service(runs):
    with FakeBackend(action="A") as a, FakeBackend(action="B") as b:
        run = runs(a.spec("A"), b.spec("B"), balance="hash:sender,recipient",
                   sticky_instance=False)
        by_key = {}
        for n in range(15):  # 5 keys: round robin (period 2) would split each of them
            key = (f"s{n % 5}@example.org", "r@example.net")
            answer = run.ask(request(sender=key[0], recipient=key[1]))[0]
            assert by_key.setdefault(key, answer) == answer
        assert len(set(by_key.values())) == 2  # 5 keys over 2 services: both used here


def test_a_default_answer_is_logged_with_every_failure_and_why(runs):
    refused = [refused_port(), refused_port()]
    run = runs(f"A=127.0.0.1:{refused[0]}", f"B=127.0.0.1:{refused[1]}:20",
               log_requests=True)
    assert run.ask(b"request=smtpd_access_policy\n\n")[0] == b"action=dunno\n\n"
    line = run.log.text("info")
    assert line.startswith("pool=default service=- client=[] helo=<> sender=<> recipient=<> delay=0.0"), line
    delay = float(line.split(" delay=")[1].split("s ")[0])
    assert 0 <= delay < 1, line
    assert line.endswith(' action=dunno failed="A: connection refused; '
                         'B: connection refused" default="all services failed"'), line


def test_a_service_going_down_and_up_is_logged_once_each(runs):
    with FakeBackend(mode="close_after_request") as backend:
        run = runs(backend.spec("B"), f"S=127.0.0.1:{refused_port()}:20", verbose=True,
                   cooldown=0.2, cooldown_max=0.2)
        assert run.ask(request())[0] == b"action=dunno\n\n"
        address = f"127.0.0.1:{backend.port}"
        assert (f"service B ({address}) down: closed the connection before a full answer, "
                f"retry in 0.2s") in run.log.text("warning")
        assert (f"service=B address={address} failed: closed the connection before a full "
                f"answer") in run.log.text("info")
        backend.set_mode("answer", action="OK")
        time.sleep(0.25)
        assert run.ask(request())[0] == b"action=OK\n\n"  # the probe
        assert run.log.text("notice") == f"service B ({address}) up"


def test_requests_in_flight_are_counted_and_each_counted_request_once(runs):
    with FakeBackend(action="OK", delay=0.2) as backend:
        run = runs(backend.spec("B"))
        reached: list[int] = []
        run.dispatcher.call_at_request(2, lambda: reached.append(run.dispatcher.requests))
        clients = [Client(), Client()]
        for client in clients:
            [framed] = RequestFramer().feed(request())
            run.dispatcher.submit(framed, client)
        assert run.dispatcher.in_flight == 2
        deadline = time.monotonic() + 5
        while any(not c.answers for c in clients) and time.monotonic() < deadline:
            run.loop.run_once(0.1)
        assert [c.answers for c in clients] == [[b"action=OK\n\n"]] * 2
        assert run.dispatcher.in_flight == 0 and run.dispatcher.requests == 2
        assert reached == [2]  # max-use is told once, at the request that reached it


def test_backend_connections_are_kept_for_the_next_requests(runs):
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("B"))
        for _ in range(3):
            assert run.ask(request())[0] == b"action=OK\n\n"
        assert backend.connections == 1


def test_an_action_that_is_not_utf8_is_relayed_and_logged(runs):
    backend = RawBackend(b"action=REJECT caf\xe9\n\n")
    try:
        run = runs(f"B=127.0.0.1:{backend.port}", log_requests=True)
        assert run.ask(request())[0] == b"action=REJECT caf\xe9\n\n"
        assert run.log.text("info").endswith("action=REJECT caf\ufffd")
    finally:
        backend.stop()


def test_no_descriptor_for_a_backend_socket_is_not_the_services_failure(runs, monkeypatch):
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("B"))

        def no_descriptors(*args: object) -> socket.socket:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        monkeypatch.setattr(backend_module._socket, "socket", no_descriptors)
        assert run.ask(request())[0] == b"action=dunno\n\n"
        assert run.health.state(0, time.monotonic()) == UP  # not marked down
        assert "service=B not asked: cannot make a socket: Too many open files" in \
            run.log.text("error")
        assert "down" not in run.log.text("warning")
