"""Tests of the test fakes themselves (scripts/testkit/backends.py, stubs.py, protocol.py,
ports.py): fast, 127.0.0.1 only."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from testkit.backends import FakeBackend
from testkit.ports import refused_port
from testkit.protocol import PolicyClient, request, service_spec
from testkit.stubs import Blackhole

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(name="fake") as fake:
        yield fake
    assert fake.errors == []


def client(fake: FakeBackend | Blackhole) -> PolicyClient:
    return PolicyClient(fake.host, fake.port)


# -- request() and specs ---------------------------------------------------------


def test_request_defaults_overrides_and_omissions() -> None:
    raw = request(sender="x@example.com", recipient=None, foo="bar")
    assert raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1
    lines = raw.decode().splitlines()
    assert lines[0] == "request=smtpd_access_policy"
    assert "sender=x@example.com" in lines
    assert "foo=bar" in lines
    assert not any(line.startswith("recipient=") for line in lines)
    for expected in ("protocol_state=RCPT", "protocol_name=SMTP", "client_address=192.0.2.10",
                     "client_name=mail.example.org", "helo_name=mail.example.org"):
        assert expected in lines
    assert any(line.startswith("instance=") for line in lines)
    with pytest.raises(ValueError):
        request(sender="a\nb")


def test_spec_fields_and_defaults() -> None:
    assert service_spec("a", 25) == "a=127.0.0.1:25"
    assert service_spec("a", 25, 5) == "a=127.0.0.1:25:5"
    assert service_spec("a", 25, 5, 3) == "a=127.0.0.1:25:5:3"
    assert service_spec("a", 25, 5, 3, 2.5) == "a=127.0.0.1:25:5:3:2.5"
    assert service_spec("a", 25, weight=3) == "a=127.0.0.1:25:10:3"
    assert service_spec("a", 25, timeout=7) == "a=127.0.0.1:25:10:1:7"
    assert service_spec("a", 25, 20, timeout=7.0) == "a=127.0.0.1:25:20:1:7"


def test_backend_spec(backend: FakeBackend) -> None:
    assert backend.spec("s1") == f"s1=127.0.0.1:{backend.port}"
    assert backend.spec() == f"fake=127.0.0.1:{backend.port}"
    assert backend.spec("s1", 1, 2, 3) == f"s1=127.0.0.1:{backend.port}:1:2:3"


# -- modes -------------------------------------------------------------------------


def test_answer_persistent_connection_records_requests(backend: FakeBackend) -> None:
    with client(backend) as c:
        for i in range(3):
            assert c.ask(request(sender=f"s{i}@example.org")) == "action=DUNNO\n\n"
        assert c.ask({"a": "1", "b": "x=y"}) == "action=DUNNO\n\n"
    assert backend.connections == 1
    assert [r.get("sender") for r in backend.requests[:3]] == [
        "s0@example.org", "s1@example.org", "s2@example.org"]
    assert backend.requests[3] == {"a": "1", "b": "x=y"}
    assert backend.raw_requests[0] == request(sender="s0@example.org")
    assert backend.raw_requests[3] == b"a=1\nb=x=y\n\n"


def test_answer_action_and_delay() -> None:
    with FakeBackend(action="REJECT no", delay=0.3) as fake, client(fake) as c:
        start = time.monotonic()
        assert c.ask(request()) == "action=REJECT no\n\n"
        assert time.monotonic() - start >= 0.3
        with pytest.raises(TimeoutError):
            c.ask(request(), timeout=0.1)  # still in its delay
        assert c.read_answer(1) == "action=REJECT no\n\n"


def test_echo_pipelined_and_byte_by_byte() -> None:
    with FakeBackend(mode="echo", attr="sender") as fake, client(fake) as c:
        c.send_raw(b"".join(request(sender=f"s{i}") for i in range(5)))
        assert [c.read_answer(2) for _ in range(5)] == [f"action=s{i}\n\n" for i in range(5)]
        for byte in request(sender="slow"):
            c.send_raw(bytes([byte]))
        assert c.read_answer(2) == "action=slow\n\n"
        assert c.ask(request(sender=None)) == "action=DUNNO\n\n"  # absent: falls back
    assert len(fake.requests) == 7


def test_echo_needs_attr() -> None:
    with pytest.raises(ValueError):
        FakeBackend(mode="echo")
    with pytest.raises(ValueError):
        FakeBackend(mode="nonsense")
    with pytest.raises(TypeError):
        FakeBackend().set_mode("answer", actoin="OK")


def test_silent_never_answers(backend: FakeBackend) -> None:
    backend.set_mode("silent")
    with client(backend) as c:
        with pytest.raises(TimeoutError):
            c.ask(request(), timeout=0.3)
        assert backend.wait_requests(1)
        assert backend.open_connections == 1


@pytest.mark.parametrize(
    ("mode", "answer"),
    [
        ("garbage", "this is not a policy answer\n\n"),
        ("noaction", "foo=bar\n\n"),
        ("multiline", "foo=1\naction=OK\naction=SECOND\n\n"),
        ("huge", "action=" + "x" * 100000 + "\n\n"),
    ],
)
def test_bad_answers(mode: str, answer: str) -> None:
    with FakeBackend(mode=mode, action="OK") as fake, client(fake) as c:
        assert c.ask(request()) == answer
        assert c.ask(request()) == answer  # the connection stays usable


def test_close_on_accept() -> None:
    with FakeBackend(mode="close") as fake:
        for _ in range(2):
            with client(fake) as c:
                assert c.read_until_eof(2) == b""
        assert fake.connections == 2
        assert fake.requests == []


def test_close_after_request() -> None:
    with FakeBackend(mode="close_after_request") as fake, client(fake) as c:
        c.send_raw(request(sender="x"))
        assert c.read_until_eof(2) == b""
        assert fake.requests[0]["sender"] == "x"
        with pytest.raises(ConnectionError):
            c.read_answer(1)


def test_partial() -> None:
    with FakeBackend(mode="partial") as fake, client(fake) as c:
        c.send_raw(request())
        with pytest.raises(ConnectionError, match="action=DUN"):
            c.read_answer(2)
    with FakeBackend(mode="partial") as fake, client(fake) as c:
        c.send_raw(request())
        assert c.read_until_eof(2) == b"action=DUN"


def test_heal_at_run_time(backend: FakeBackend) -> None:
    backend.set_mode("silent")
    with client(backend) as c:
        with pytest.raises(TimeoutError):
            c.ask(request(), timeout=0.2)
        backend.set_mode("answer", action="OK")
        assert c.ask(request()) == "action=OK\n\n"  # the next request on the same connection
    with client(backend) as c:
        assert c.ask(request()) == "action=OK\n\n"


def test_client_half_close_still_gets_delayed_answer() -> None:
    with FakeBackend(delay=0.2) as fake, client(fake) as c:
        c.send_raw(request())
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_answer(2) == "action=DUNNO\n\n"
        assert c.read_until_eof(2) == b""


def test_drop_connections(backend: FakeBackend) -> None:
    with client(backend) as c:
        assert c.ask(request()) == "action=DUNNO\n\n"
        backend.drop_connections()
        assert c.read_until_eof(2) == b""
    with client(backend) as c:
        assert c.ask(request()) == "action=DUNNO\n\n"


def test_many_concurrent_clients() -> None:
    results: dict[int, list[str]] = {}

    def run(n: int) -> None:
        with client(fake) as c:
            results[n] = [c.ask(request(sender=f"{n}.{i}"), timeout=5) for i in range(10)]

    with FakeBackend(mode="echo", attr="sender") as fake:
        threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert fake.connections == 20
        assert len(fake.requests) == 200
    assert results == {n: [f"action={n}.{i}\n\n" for i in range(10)] for n in range(20)}


def test_from_socket() -> None:
    a, b = socket.socketpair()
    with PolicyClient.from_socket(a) as c:
        b.sendall(b"action=OK\n\naction=AGAIN\n\n")
        assert c.read_answer(1) == "action=OK\n\n"
        assert c.read_answer(1) == "action=AGAIN\n\n"
        c.send_raw(b"x=1\n\n")
        assert b.recv(100) == b"x=1\n\n"
    b.close()


# -- lifecycle ---------------------------------------------------------------------


def test_stop_is_prompt_and_closes_everything() -> None:
    fake = FakeBackend(mode="silent").start()
    clients = [client(fake) for _ in range(3)]
    for c in clients:
        c.send_raw(request())
    assert fake.wait_requests(3)
    fake.set_mode("answer", delay=30)  # a pending, long-delayed answer must not block stop
    clients[0].send_raw(request())
    assert fake.wait_requests(4)
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 2
    assert not any(t.name.startswith("FakeBackend-") for t in threading.enumerate())
    for c in clients:
        assert c.read_until_eof(2) == b""
        c.close()
    with pytest.raises(ConnectionRefusedError):
        client(fake)
    fake.stop()  # idempotent
    assert fake.errors == []


def test_restart_on_same_port() -> None:
    fake = FakeBackend(action="ONE").start()
    port = fake.port
    with client(fake) as c:
        assert c.ask(request()) == "action=ONE\n\n"
    fake.stop()
    fake.set_mode("answer", action="TWO")
    with fake, client(fake) as c:
        assert fake.port == port
        assert c.ask(request()) == "action=TWO\n\n"


# -- refused and unreachable addresses ---------------------------------------------


def test_refused_port() -> None:
    with pytest.raises(ConnectionRefusedError):
        PolicyClient("127.0.0.1", refused_port())


def test_blackhole_connect_never_completes() -> None:
    with Blackhole() as hole:
        assert hole.host == "127.0.0.1"
        assert hole.spec("bh", timeout=1) == f"bh=127.0.0.1:{hole.port}:10:1:1"
        probes = [socket.socket() for _ in range(2)]
        try:
            for probe in probes:
                probe.setblocking(False)
                assert probe.connect_ex((hole.host, hole.port)) in (115, 11)  # EINPROGRESS
            start = time.monotonic()
            _, writable, _ = select.select([], probes, [], 3.0)
            assert writable == []
            assert time.monotonic() - start >= 2.9
            with pytest.raises(TimeoutError):
                PolicyClient(hole.host, hole.port, connect_timeout=0.2)
        finally:
            for probe in probes:
                probe.close()
