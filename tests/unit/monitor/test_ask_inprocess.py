"""`ask` (monitor/ask.py, control.py's framing, ctl.py's arguments) in-process: an Asker on an
event loop of ours, FakeBackend threads on 127.0.0.1, tables of our own.

An ask names the service that answered (and each that failed before it, with why), its answer
and time, and the pool's answer; a pool with every service down answers the default and says
why; a failure counts against the service as a live request's would, and the pool's counters
count the ask, but the dispatcher's max-use count does not move; stickiness only with an
`instance` asked before; a dry run reads the order without a side effect and names the service
a live ask of the same key gets. Bad input is one `error:` line. The control socket frames the
request after the command line as a live one; hapolicyctl turns its arguments (or standard
input) into those lines.
"""

from __future__ import annotations

import io
import time

import pytest
from testkit.backends import FakeBackend
from testkit.logs import KeptLog
from testkit.ports import refused_port

from hapolicy import ctl
from hapolicy.base.eventloop import EventLoop
from hapolicy.base.protocol import MAX_REQUEST_BYTES
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.monitor import ask as ask_module
from hapolicy.monitor.ask import MAX_ASKS, Asker
from hapolicy.monitor.control import MAX_LINE, ControlServer, ask_request
from hapolicy.monitor.oneshot import Later
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import ANSWERS, DISABLED, DOWN, FAILURES, REQUESTS, SLOT

DEFAULT = "DEFER_IF_PERMIT hapolicy default"


class Harness:
    """An Asker for pools of service specs: {name: (specs, settings)}."""

    def __init__(self, pools: dict[str, tuple[list[str], dict]]) -> None:
        self.config = DaemonConfig(pools=tuple(
            PoolConfig(name=name, services=tuple(parse_service(s) for s in specs),
                       default_action=DEFAULT, **settings)
            for name, (specs, settings) in pools.items()))
        self.loop = EventLoop()
        self.health = {p.name: HealthTable(len(p.services), shared=False)
                       for p in self.config.pools}
        self.log = KeptLog()
        self.asker = Asker(self.loop, self.config, self.health, self.log)

    def ask(self, line: str, *attrs: str) -> str:
        """The text of one ask, the loop turning until it is there."""
        request = ask_request("".join(a + "\n" for a in attrs).encode() + b"\n")
        assert request is not None
        answer = self.asker.answer(line, request)
        if isinstance(answer, str):
            return answer
        return self.wait(answer).decode()

    def wait(self, later: Later) -> bytes:
        got: list[bytes] = []
        later.send = got.append
        if later.ready is not None:
            return later.ready
        give_up = time.monotonic() + 20
        while not got:
            assert time.monotonic() < give_up, "never answered"
            self.loop.run_once(0.05)
        return got[0]

    def close(self) -> None:
        for dispatcher in self.asker.dispatchers.values():
            dispatcher.close()
        self.loop.close()


@pytest.fixture
def harnesses():
    made: list[Harness] = []

    def make(pools) -> Harness:
        made.append(Harness(pools))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def test_an_ask_names_the_service_its_answer_and_the_pools(harnesses):
    with FakeBackend(action="OK first") as a:
        h = harnesses({"grey": ([a.spec("A")], {})})
        text = h.ask("ask grey", "client_address=192.0.2.1", "sender=a b@example.org")
        first, answer = text.splitlines()
        assert first.startswith(f"pool=grey service=A address=127.0.0.1:{a.port} delay=")
        assert first.endswith("s action=OK first")
        assert answer.startswith("answer: service=A delay=") and \
            answer.endswith("s action=OK first")
        assert a.requests[-1]["sender"] == "a b@example.org"  # a value with a space, whole
        table = h.health["grey"]
        assert table.counter(REQUESTS) == 1 and table.service_counter(0, ANSWERS) == 1
        assert h.asker.dispatchers["grey"].requests == 0  # nothing toward max-use
        assert h.asker.in_flight == 0


def test_a_failure_counts_against_the_service_and_the_next_answers(harnesses):
    with FakeBackend(action="OK second") as b:
        h = harnesses({"rbl": ([f"DEAD=127.0.0.1:{refused_port()}:10", b.spec("B", prio=20)],
                               {})})
        lines = h.ask("ask rbl", "x=1").splitlines()
        assert lines[0].startswith("pool=rbl service=DEAD address=127.0.0.1:")
        assert lines[0].endswith('failed="connection refused"')
        assert lines[1].startswith("pool=rbl service=B") and lines[1].endswith("action=OK second")
        assert lines[2].startswith("answer: service=B ")
        table = h.health["rbl"]
        assert table.state(0, time.monotonic()) == DOWN  # as a live request's failure
        assert table.f[0 * SLOT + FAILURES] == 1.0


def test_every_service_down_answers_the_default_and_says_why(harnesses):
    with FakeBackend() as a:
        h = harnesses({"p": ([a.spec("A")], {})})
        h.health["p"].set_admin(0, DISABLED)
        first, answer = h.ask("ask p", "x=1").splitlines()
        assert first == 'pool=p service=none why="all services down"'
        assert answer.startswith('answer: default="all services down" delay=')
        assert answer.endswith(f"s action={DEFAULT}")
        assert h.ask("ask --dry-run p", "x=1").splitlines() == [
            "pool=p balance=weighted", "order: none", "skipped: A[disabled]",
            f'answer: default="all services down" action={DEFAULT}']
        assert not a.requests


def test_only_an_instance_asked_before_is_sticky(harnesses):
    with FakeBackend(action="OK a") as a, FakeBackend(action="OK b") as b:
        h = harnesses({"p": ([a.spec("A"), b.spec("B")], {})})
        served = [h.ask("ask p", "x=1").splitlines()[-1].split()[1] for _ in range(4)]
        assert served == ["service=A", "service=B", "service=A", "service=B"]  # round robin
        first = h.ask("ask p", "instance=T1").splitlines()[-1].split()[1]
        dry = h.ask("ask --dry-run p", "instance=T1").splitlines()[1]
        assert dry.startswith(f"order: {first[8:]}[sticky] ")
        again = [h.ask("ask p", "instance=T1").splitlines()[-1].split()[1] for _ in range(3)]
        assert again == [first] * 3


def test_a_dry_run_asks_none_and_shows_the_live_asks_service(harnesses):
    with FakeBackend(action="OK 1") as g1, FakeBackend(action="OK 2") as g2:
        h = harnesses({"grey": ([g1.spec("G1"), g2.spec("G2")],
                                {"balance": "hash:client_address/24,sender"})})
        for n in range(8):  # different keys: both services come first for some
            dry = h.ask("ask --dry-run grey", f"client_address=198.51.{n}.7", "sender=s@x")
            head, order = dry.splitlines()[:2]
            assert head == ('pool=grey balance=hash:client_address/24,sender '
                            f'key="client_address/24=198.51.{n}.0 sender=s@x"')
            live = h.ask("ask grey", f"client_address=198.51.{n}.200", "sender=s@x")
            assert live.splitlines()[-1].split()[1] == "service=" + order.split()[1]
        assert len(g1.requests) + len(g2.requests) == 8 and g1.requests and g2.requests


def test_bad_input_is_one_error_line(harnesses, monkeypatch):
    with FakeBackend(action="OK", delay=0.3) as a:
        h = harnesses({"p": ([a.spec("A")], {})})
        for line, attrs, error in (
                ("ask nope", ["x=1"], "error: no pool 'nope'\n"),
                ("ask", ["x=1"], ask_module.USAGE),
                ("ask p q", ["x=1"], ask_module.USAGE),
                ("ask p", ["x=1", "foo"], "error: request refused (a line without `=`); "
                 f"Postfix would get the default action={DEFAULT}\n")):
            assert h.ask(line, *attrs) == error, line
        big = ask_request(b"a=" + b"x" * MAX_REQUEST_BYTES + b"\n\n")
        assert h.asker.answer("ask p", big).startswith(
            f"error: request refused (request larger than {MAX_REQUEST_BYTES} bytes)")
        laters = [h.asker.answer("ask p", ask_request(b"x=1\n\n")) for _ in range(MAX_ASKS)]
        assert all(isinstance(later, Later) for later in laters)
        assert h.asker.answer("ask p", ask_request(b"x=1\n\n")).startswith(
            f"error: {MAX_ASKS} asks in flight already")
        assert all(h.wait(later).startswith(b"pool=p service=A") for later in laters)
        assert not a.errors


def test_an_empty_request_is_answered_the_default_without_asking(harnesses):
    with FakeBackend() as a:
        h = harnesses({"p": ([a.spec("A")], {})})
        assert h.ask("ask p") == ('pool=p service=none why="empty request"\n'
                                  f'answer: default="empty request" action={DEFAULT}\n')
        assert not a.requests and h.health["p"].counter(REQUESTS) == 0


class Control(ControlServer):
    """ControlServer.answer without a socket: its `ask` records what it was given."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes, str]] = []
        self.command = lambda line: f"command {line}\n"
        self.ask = lambda line, request: self.asked.append(
            (line, request.raw, request.error)) or "asked\n"
        self.log = KeptLog()


def test_the_control_socket_reads_the_request_after_the_ask_line():
    c = Control()
    assert c.answer(b"ask p\nx=1\n") is None  # not whole yet
    assert c.answer(b"ask p\nx=1\n\n") == b"asked\n"
    assert c.at_end(b"ask p\nx=1") == b"asked\n"  # ended by the client's end of input
    assert c.at_end(b"ask --dry-run p") == b"asked\n"  # no attribute: the empty request
    assert c.answer(b"ask p\r\nx=1\r\n\r\n") == b"asked\n"  # CR LF: framed as a live one
    assert c.asked[:4] == [("ask p", b"x=1\n\n", ""), ("ask p", b"x=1\n\n", ""),
                           ("ask --dry-run p", b"\n", ""), ("ask p", b"x=1\n\n", "")]
    assert c.answer(b"asking\n") == b"command asking\n"  # another word
    assert c.answer(b"status\nx=1\n") == b"command status\n"
    assert c.answer(b"x" * (MAX_LINE + 1)) == c.too_long()  # the line keeps its bound
    assert c.answer(b"ask p\n" + b"a=" + b"b" * MAX_REQUEST_BYTES) == b"asked\n"
    assert c.asked[-1][2] == f"request larger than {MAX_REQUEST_BYTES} bytes"
    assert c.max_request > MAX_LINE + MAX_REQUEST_BYTES


def test_hapolicyctl_sends_the_arguments_or_stdin_as_the_requests_lines():
    assert ctl.parse(["--control", "/s", "ask", "grey", "a=b", "c=d e"]) == \
        ("/s", "ask grey\na=b\nc=d e\n")
    assert ctl.parse(["--control", "/s", "ask", "grey", "--dry-run", "a=b"])[1] == \
        "ask --dry-run grey\na=b\n"
    assert ctl.parse(["--control", "/s", "status"])[1] == "status"
    stdin = io.BytesIO(b"request=smtpd_access_policy\r\nsender=a@b\n\nnext=1\n\n")
    assert ctl.ask_text(["grey"], stdin) == "ask grey\nrequest=smtpd_access_policy\nsender=a@b\n"
    assert ctl.ask_text(["grey"], io.BytesIO(b"")) == "ask grey\n"
    assert ctl.ask_text(["grey", "a=\udcff"], None) == "ask grey\na=\udcff\n"
    huge = ctl.read_request(io.BytesIO(b"a=" + b"x" * (3 * MAX_REQUEST_BYTES) + b"\n\n"))
    assert MAX_REQUEST_BYTES < len(huge) < 2 * MAX_REQUEST_BYTES
    for args, why in ((["ask"], "usage: ask"), (["ask", "a=b"], "usage: ask"),
                      (["ask", "--dry-run"], "usage: ask"),
                      (["ask", "grey", "a=b\nc=d"], "a line break"),
                      (["ask", "grey", "", "sender=x"], "an empty attribute")):
        with pytest.raises(ctl.UsageError, match=why):
            ctl.parse(args)
