"""Spawn mode end to end: the real `python -m hapolicy` against fake backends on 127.0.0.1.

Each test runs hapolicy as Postfix's spawn(8) does: one socket is its stdin, stdout AND stderr
(see scripts/testkit/spawn.py), so an exact comparison of what comes back proves that nothing but answers
was ever written. Services that must be asked first get a lower priority than the fallback, so
that the order does not depend on the random phase of weighted round robin. A timeout or deadline
is bounded on both sides (it is kept, plus half a second for a loaded machine), measured once
the process answers; other timing assertions only tell a timeout from an immediate failure.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Callable

import pytest
from testkit.backends import FakeBackend
from testkit.ports import refused_port
from testkit.processes import vm_kib, wait_exit
from testkit.protocol import request
from testkit.repo import command, hapolicy_env
from testkit.spawn import Spawned
from testkit.stubs import Blackhole
from testkit.syslog import SyslogReceiver

from hapolicy.base.protocol import MAX_ATTRIBUTES

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

DUNNO = "action=dunno\n\n"
OK = "action=OK\n\n"
LOG_LINE = re.compile(r"^<(\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d hapolicy\[(\d+)\]: (.*)$")
REQUEST_LOG = re.compile(
    r"pool=\S+ service=(\S+) client=([^\[\s]*)\[([^\]]*)\] helo=<([^>]*)> sender=<([^>]*)> "
    r"recipient=<([^>]*)> delay=(\d+\.\d{3})s action=(.*?)(?: failed=\"([^\"]*)\")?(?: default=\"(.*)\")?$")


def dead(name: str, prio: int | None = None) -> str:
    """A service spec whose connect is refused."""
    spec = f"{name}=127.0.0.1:{refused_port()}"
    return spec if prio is None else f"{spec}:{prio}"


@pytest.fixture
def syslog() -> Iterator[SyslogReceiver]:
    collector = SyslogReceiver()
    yield collector
    collector.close()


SpawnFactory = Callable[..., Spawned]


@pytest.fixture
def spawn(syslog: SyslogReceiver) -> Iterator[SpawnFactory]:
    """Start hapolicy with the given arguments; its syslog goes to the `syslog` fixture."""
    started: list[Spawned] = []

    def start(*args: str, stderr_pipe: bool = False, log_to: str | None = None) -> Spawned:
        proc = Spawned(["--syslog-socket", log_to or syslog.path, *args], stderr_pipe)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def backends() -> Iterator[Callable[..., FakeBackend]]:
    made: list[FakeBackend] = []

    def make(mode: str = "answer", **kw: object) -> FakeBackend:
        backend = FakeBackend(mode, **kw).start()  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.stop()
    for backend in made:
        assert backend.errors == []


def finish_clean(proc: Spawned) -> None:
    """EOF on stdin: exit 0 and not one more byte written."""
    code, rest = proc.finish()
    assert rest == b""
    assert code == 0


def wait_started(proc: Spawned) -> None:
    """Until the process answers (an empty request gets the default at once), so that a timed
    request measures hapolicy's deadlines, not Python's start-up."""
    assert proc.ask(b"\n", 20).startswith("action=")


def timed_ask(proc: Spawned, data: bytes, timeout: float = 20) -> tuple[str, float]:
    started = time.monotonic()
    answer = proc.ask(data, timeout)
    return answer, time.monotonic() - started


# -- failover ------------------------------------------------------------------------------


def test_refused_service_fails_over_to_the_next(spawn, backends) -> None:
    good = backends(action="OK", name="good")
    proc = spawn("-s", dead("dead", 1), "-s", good.spec(prio=2))
    answer, elapsed = timed_ask(proc, request())
    assert answer == OK
    assert elapsed < 5
    assert len(good.requests) == 1
    finish_clean(proc)


BROKEN = {
    # mode: words one of which the -v log line of the failed attempt holds
    "garbage": ("answer without action",),
    "noaction": ("answer without action",),
    "close": ("closed the connection", "connection reset", "broken pipe"),
    "close_after_request": ("closed the connection before a full answer",),
    "partial": ("closed the connection before a full answer",),
    "huge": ("answer larger than",),
}


@pytest.mark.parametrize("mode", sorted(BROKEN))
def test_broken_answer_fails_over_at_once(mode, spawn, syslog, backends) -> None:
    bad = backends(mode, name="bad")
    good = backends(action="OK", name="good")
    # the bad one's timeout is long: only detecting the failure can answer within 5 s
    proc = spawn("-v", "-s", bad.spec(prio=1, weight=1, timeout=20), "-s", good.spec(prio=2))
    answer, elapsed = timed_ask(proc, request())
    assert answer == OK
    assert elapsed < 5
    assert bad.connections == 1
    if mode != "close":
        assert len(bad.requests) == 1
    assert len(good.requests) == 1
    finish_clean(proc)
    lines = syslog.wait_for(lambda ls: any("service=bad address=" in line for line in ls))
    attempt = [line for line in lines if "service=bad address=" in line]
    assert len(attempt) == 1
    assert any(word in attempt[0] for word in BROKEN[mode]), attempt[0]


def test_silent_service_fails_over_after_its_timeout(spawn, syslog, backends) -> None:
    mute = backends("silent", name="mute")
    good = backends(action="OK", name="good")
    proc = spawn("-v", "-s", mute.spec(prio=1, weight=1, timeout=1), "-s", good.spec(prio=2))
    wait_started(proc)
    answer, elapsed = timed_ask(proc, request())
    assert answer == OK
    assert 1.0 <= elapsed < 1.5
    assert len(mute.requests) == 1
    finish_clean(proc)
    assert syslog.wait_for(lambda ls: any("no answer after" in line for line in ls))


def test_connect_that_never_completes_fails_over_after_connect_timeout(
        spawn, syslog, backends) -> None:
    good = backends(action="OK", name="good")
    with Blackhole() as hole:
        proc = spawn("-v", "--connect-timeout", "1", "-s", hole.spec("hole", 1),
                     "-s", good.spec(prio=2))
        wait_started(proc)
        answer, elapsed = timed_ask(proc, request())
        assert answer == OK
        assert 1.0 <= elapsed < 1.5
        finish_clean(proc)
    assert syslog.wait_for(lambda ls: any("connect timeout" in line for line in ls))


def test_slow_answer_within_timeout_is_relayed(spawn, backends) -> None:
    slow = backends(action="REJECT slowly", delay=0.5, name="slow")
    spare = backends(action="SPARE", name="spare")
    proc = spawn("-s", slow.spec(prio=1, weight=1, timeout=5), "-s", spare.spec(prio=2))
    answer, elapsed = timed_ask(proc, request())
    assert answer == "action=REJECT slowly\n\n"
    assert elapsed >= 0.4
    assert spare.requests == []
    finish_clean(proc)


def test_multiline_answer_relays_the_first_action_line_unchanged(spawn, backends) -> None:
    multi = backends("multiline", action="PREPEND X-Test: a=b  c", name="multi")
    proc = spawn("-s", multi.spec())
    assert proc.ask(request()) == "action=PREPEND X-Test: a=b  c\n\n"
    finish_clean(proc)


def test_fifty_requests_on_one_connection_answered_in_order(spawn, backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    proc = spawn("-s", echo.spec())
    sent = [request(sender=f"user{i}@example.org", instance=f"i{i}") for i in range(50)]
    proc.send(b"".join(sent))  # all at once: hapolicy must still answer one by one, in order
    answers = [proc.read_answer() for _ in range(50)]
    assert answers == [f"action=user{i}@example.org\n\n" for i in range(50)]
    assert echo.raw_requests == sent
    assert echo.connections == 1  # the backend connection is kept and reused
    finish_clean(proc)


def test_idle_connection_closed_by_the_service_is_no_failure(spawn, syslog, backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    spare = backends(action="SPARE", name="spare")
    proc = spawn("-v", "-s", echo.spec(prio=1), "-s", spare.spec(prio=2))
    assert proc.ask(request(sender="one@example.org")) == "action=one@example.org\n\n"
    echo.drop_connections()  # the service closes the idle connection hapolicy keeps
    time.sleep(0.2)
    assert proc.ask(request(sender="two@example.org")) == "action=two@example.org\n\n"
    echo.stop()  # a restart of the service between two requests
    echo.start()
    assert proc.ask(request(sender="three@example.org")) == "action=three@example.org\n\n"
    finish_clean(proc)
    assert spare.requests == []
    assert not any(" failed: " in line for line in syslog.lines)


# -- selection -----------------------------------------------------------------------------


def test_priorities_compare_as_numbers(spawn, backends) -> None:
    ten = backends(action="TEN", name="ten")
    nine = backends(action="NINE", name="nine")
    proc = spawn("-s", ten.spec(prio=10), "-s", nine.spec(prio=9))
    for i in range(5):
        assert proc.ask(request(instance=f"p{i}")) == "action=NINE\n\n"
    assert ten.requests == []
    finish_clean(proc)


def test_weights_two_to_one(spawn, backends) -> None:
    heavy = backends(action="HEAVY", name="heavy")
    light = backends(action="LIGHT", name="light")
    proc = spawn("-s", heavy.spec(prio=5, weight=2), "-s", light.spec(prio=5, weight=1))
    answers = [proc.ask(request(instance=f"w{i}")) for i in range(300)]
    finish_clean(proc)
    assert answers.count("action=HEAVY\n\n") + answers.count("action=LIGHT\n\n") == 300
    assert abs(len(heavy.requests) - 200) <= 2
    assert abs(len(light.requests) - 100) <= 2


def test_same_instance_sticks_to_one_service(spawn, backends) -> None:
    one = backends(action="ONE", name="one")
    two = backends(action="TWO", name="two")
    proc = spawn("-s", one.spec(prio=5), "-s", two.spec(prio=5))
    answers = {proc.ask(request(instance="same.transaction")) for _ in range(10)}
    assert len(answers) == 1
    finish_clean(proc)


def test_hash_balance_keeps_a_key_on_one_service(spawn, backends) -> None:
    one = backends(action="ONE", name="one")
    two = backends(action="TWO", name="two")
    proc = spawn("--balance", "hash:sender", "-s", one.spec(prio=5), "-s", two.spec(prio=5))
    seen: dict[str, set[str]] = {}
    for i in range(40):
        sender = f"s{i % 8}@example.org"
        seen.setdefault(sender, set()).add(proc.ask(request(sender=sender, instance=f"h{i}")))
    finish_clean(proc)
    assert all(len(answers) == 1 for answers in seen.values())
    assert one.requests and two.requests  # 8 keys do not all land on one of two services


# -- default action ------------------------------------------------------------------------


def test_default_action_with_spaces_when_every_service_is_down(spawn) -> None:
    proc = spawn("-d", "DEFER_IF_PERMIT policy service unavailable",
                 "-s", dead("a"), "-s", dead("b"))
    for _ in range(3):
        assert proc.ask(request()) == "action=DEFER_IF_PERMIT policy service unavailable\n\n"
    finish_clean(proc)


def test_default_is_dunno(spawn) -> None:
    proc = spawn("-s", dead("a"))
    assert proc.ask(request()) == DUNNO
    finish_clean(proc)


def test_total_timeout_bounds_the_whole_attempt_chain(spawn, backends) -> None:
    mutes = [backends("silent", name=f"m{i}") for i in range(3)]
    proc = spawn("--total-timeout", "2", *[arg for i, m in enumerate(mutes)
                                            for arg in ("-s", m.spec(prio=i, weight=1, timeout=30))])
    wait_started(proc)
    answer, elapsed = timed_ask(proc, request())
    assert answer == DUNNO
    assert 2.0 <= elapsed < 2.5
    finish_clean(proc)


# -- what clients send ---------------------------------------------------------------------


def test_requests_without_request_attribute_or_of_unknown_type(spawn, backends) -> None:
    echo = backends("echo", attr="sender", name="echo", action="NO_SENDER")
    proc = spawn("-s", echo.spec())
    sent = [request(request=None, sender="x1@example.org"),
            request(request="junk_policy", sender="x2@example.org"),
            b"sender=x3@example.org\n\n",
            b"request=smtpd_access_policy\n\n"]
    for data in sent:
        proc.send(data)
    answers = [proc.read_answer() for _ in sent]
    assert answers == ["action=x1@example.org\n\n", "action=x2@example.org\n\n",
                       "action=x3@example.org\n\n", "action=NO_SENDER\n\n"]
    assert echo.raw_requests == sent
    finish_clean(proc)


OVERSIZED = {
    "200KB_request": request(**{f"x{i}": "y" * 2000 for i in range(100)}),
    "10KB_line": request(x="y" * 10240),
    "too_many_attributes": request(**{f"x{i}": str(i) for i in range(MAX_ATTRIBUTES)}),
}


@pytest.mark.parametrize("kind", sorted(OVERSIZED))
def test_oversized_request_gets_the_default_then_the_stream_goes_on(kind, spawn, syslog,
                                                                    backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    proc = spawn("-d", "DEFER too big", "-s", echo.spec())
    normal = request(sender="after@example.org")
    proc.send(OVERSIZED[kind] + normal)
    assert proc.read_answer() == "action=DEFER too big\n\n"
    assert proc.read_answer() == "action=after@example.org\n\n"
    assert echo.raw_requests == [normal]  # the oversized one was never relayed
    finish_clean(proc)
    assert syslog.wait_for(lambda ls: any("request refused" in line for line in ls))


def test_requests_just_within_the_limits_are_relayed(spawn, backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    proc = spawn("-s", echo.spec())
    big = request(x="y" * 8000, **{f"x{i}": "z" * 200 for i in range(200)})
    assert 40_000 < len(big) < 65536
    assert proc.ask(big) == "action=a@example.org\n\n"
    assert echo.raw_requests == [big]
    finish_clean(proc)


def test_fifty_megabytes_without_an_empty_line_keep_memory_bounded(spawn, backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    proc = spawn("-s", echo.spec())
    assert proc.ask(request(sender="before@example.org")) == "action=before@example.org\n\n"
    chunk = (b"junk=" + b"x" * 1018 + b"\n") * 1024  # 1 MiB of lines, never an empty one
    for _ in range(50):
        proc.send(chunk)
    proc.send(b"\n")  # ends the monster request
    assert proc.read_answer(30) == DUNNO
    assert proc.ask(request(sender="after@example.org")) == "action=after@example.org\n\n"
    peak = vm_kib(proc.pid, "VmHWM")
    assert peak < 60 * 1024, f"peak RSS {peak} KiB"
    assert len(echo.requests) == 2
    finish_clean(proc)


def test_a_client_that_never_reads_cannot_grow_memory(spawn) -> None:
    # empty requests are answered at once with the default: 40000 of them in one write, with a
    # 2 KB default action, are 80 MB of answers that must not all wait in hapolicy's memory
    action = "DEFER " + "x" * 2000
    proc = spawn("-d", action, "-s", dead("a"))
    count = 40_000
    proc.sock.settimeout(30)
    sender = threading.Thread(target=proc.sock.sendall, args=(b"\n" * count,), daemon=True)
    sender.start()
    time.sleep(1.0)  # it fills its output buffer and stops answering; nobody reads yet
    answer = f"action={action}\n\n".encode()
    expected = len(answer) * count
    received = bytearray()
    while len(received) < expected:
        data = proc.sock.recv(1 << 20)
        assert data, "closed early"
        received += data
    sender.join(10)
    assert received == answer * count
    peak = vm_kib(proc.pid, "VmHWM")
    assert peak < 60 * 1024, f"peak RSS {peak} KiB"
    finish_clean(proc)


def test_eof_after_complete_requests_answers_them_all_then_exits(spawn, backends) -> None:
    slow = backends(action="OK", delay=0.2, name="slow")
    proc = spawn("-s", slow.spec())
    proc.send(b"".join(request(instance=f"e{i}") for i in range(5)))
    code, rest = proc.finish(20)
    assert rest == OK.encode() * 5
    assert code == 0


def test_client_closing_mid_request_ends_the_process_quietly(spawn, backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    proc = spawn("-s", echo.spec())
    assert proc.ask(request()) == "action=a@example.org\n\n"
    proc.send(request()[:100])  # half a request, then the client goes away
    started = time.monotonic()
    code, rest = proc.finish()
    assert rest == b""
    assert code == 0
    assert time.monotonic() - started < 5
    assert len(echo.requests) == 1


def test_client_vanishing_while_a_request_is_in_flight(spawn, backends) -> None:
    mute = backends("silent", name="mute")
    proc = spawn("-s", mute.spec(timeout=1))
    proc.send(request())
    assert mute.wait_requests(1)
    proc.sock.close()  # both directions: the answer has nowhere to go
    assert wait_exit(proc.proc, 10) == 0


def test_eof_at_once_exits_zero_without_output(spawn, backends) -> None:
    echo = backends("echo", attr="sender", name="echo")
    proc = spawn("-s", echo.spec())
    finish_clean(proc)
    assert echo.connections == 0


def test_pipes_and_a_file_work_as_stdin_and_stdout(backends, tmp_path) -> None:
    # not spawn(8)'s way, but a postmaster's at a terminal: stdin a file or a pipe
    echo = backends("echo", attr="sender", name="echo")
    data = request(sender="f1@example.org") + b"\n" + request(sender="f2@example.org")
    expected = b"action=f1@example.org\n\n" + DUNNO.encode() + b"action=f2@example.org\n\n"
    args = command(["--syslog-socket", str(tmp_path / "nolog"), "-s", echo.spec(),
                    "-s", dead("dead", 1)])
    piped = subprocess.run(args, input=data, capture_output=True, env=hapolicy_env(),
                           timeout=20, check=False)
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, expected, b"")
    (tmp_path / "in").write_bytes(data)
    with open(tmp_path / "in", "rb") as stdin:
        filed = subprocess.run(args, stdin=stdin, capture_output=True, env=hapolicy_env(),
                               timeout=20, check=False)
    assert (filed.returncode, filed.stdout, filed.stderr) == (0, expected, b"")
    nothing = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                             env=hapolicy_env(), timeout=20, check=False)
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, b"", b"")


# -- logging -------------------------------------------------------------------------------


def request_lines(lines: list[str]) -> list[re.Match]:
    found = []
    for line in lines:
        head = LOG_LINE.match(line)
        assert head, f"not a syslog line: {line!r}"
        body = REQUEST_LOG.fullmatch(head.group(3))
        if body:
            found.append(body)
    return found


def test_logging_one_line_per_request(spawn, syslog, backends) -> None:
    good = backends(action="OK", name="good")
    proc = spawn("-l", "--cooldown", "30", "-s", dead("dead", 1), "-s", good.spec(prio=2))
    for i in range(3):
        assert proc.ask(request(sender=f"s{i}@example.org", instance=f"l{i}")) == OK
    finish_clean(proc)
    lines = syslog.wait_for(lambda ls: len(request_lines(ls)) >= 3)
    for line in lines:
        head = LOG_LINE.match(line)
        assert head and int(head.group(2)) == proc.pid
    logged = request_lines(lines)
    assert len(logged) == 3
    for i, match in enumerate(logged):
        service, name, addr, helo, sender, rcpt, delay, action, failed, why = match.groups()
        assert (service, name, addr, helo) == ("good", "mail.example.org", "192.0.2.10",
                                               "mail.example.org")
        assert (sender, rcpt, action) == (f"s{i}@example.org", "b@example.net", "OK")
        assert 0 <= float(delay) < 5
        assert why is None
        # the dead one is tried once, then skipped while it cools down
        assert failed == ("dead: connection refused" if i == 0 else None)
    assert all(LOG_LINE.match(line).group(1) in ("20", "21", "22") for line in lines)
    info = [line for line in lines if REQUEST_LOG.search(line)]
    assert all(line.startswith("<22>") for line in info)  # mail.info
    assert not any(" failed: " in line for line in lines)  # attempts only with -v
    assert any(re.search(r"service dead \(127\.0\.0\.1:\d+\) down: connection refused", line)
               for line in lines)


def test_verbose_logs_every_failed_attempt(spawn, syslog, backends) -> None:
    bad = backends("garbage", name="bad")
    proc = spawn("-l", "-v", "-d", "DEFER try later", "-s", dead("dead", 1),
                 "-s", bad.spec(prio=2))
    assert proc.ask(request(sender="v@example.org")) == "action=DEFER try later\n\n"
    finish_clean(proc)
    lines = syslog.wait_for(lambda ls: len(request_lines(ls)) >= 1)
    assert any(re.search(r"service=dead address=127\.0\.0\.1:\d+ failed: connection refused", line)
               for line in lines)
    assert any(re.search(r"service=bad address=127\.0\.0\.1:\d+ failed: answer without action",
                         line) for line in lines)
    (logged,) = request_lines(lines)
    assert logged.group(1) == "-"
    assert logged.group(8) == "DEFER try later"
    assert logged.group(9).startswith("dead: connection refused; bad: answer without action")
    assert logged.group(10) == "all services failed"


def test_default_answer_is_logged_as_a_warning_without_l(spawn, syslog) -> None:
    proc = spawn("-s", dead("a"))
    assert proc.ask(request()) == DUNNO
    finish_clean(proc)
    lines = syslog.wait_for(lambda ls: any("no service answered" in line for line in ls))
    assert any(line.startswith("<20>") and "no service answered" in line for line in lines)
    assert request_lines(lines) == []


def test_L_logs_to_stderr_and_answers_stay_clean(spawn, syslog, backends) -> None:
    good = backends(action="OK", name="good")
    proc = spawn("-L", "-l", "-v", "-s", dead("dead", 1), "-s", good.spec(prio=2),
                 stderr_pipe=True)
    assert proc.ask(request()) == OK
    finish_clean(proc)
    err = proc.stderr_text()
    assert re.search(rf"^hapolicy\[{proc.pid}\]: info: pool=default service=good client=", err,
                     re.MULTILINE), err
    assert "failed: connection refused" in err
    assert "Traceback" not in err
    assert syslog.lines == []  # -L: stderr instead of syslog


def test_nothing_reaches_stderr_in_any_failure(spawn, backends) -> None:
    # every failure mode at once, with -l -v; the one socket is also stderr
    bad = [backends(mode, name=mode) for mode in sorted(BROKEN)]
    mute = backends("silent", name="mute")
    specs = [arg for i, b in enumerate(bad) for arg in ("-s", b.spec(prio=i, weight=1, timeout=5))]
    proc = spawn("-l", "-v", *specs, "-s", dead("dead", 20),
                 "-s", mute.spec(prio=30, weight=1, timeout=1))
    proc.send(OVERSIZED["10KB_line"] + b"\n" + request() + b"no equals sign\n\n")
    code, rest = proc.finish(30)
    assert rest == DUNNO.encode() * 4
    assert code == 0


def test_missing_syslog_socket_is_harmless(spawn, backends, tmp_path) -> None:
    good = backends(action="OK", name="good")
    proc = spawn("-l", "-v", "-s", dead("dead", 1), "-s", good.spec(prio=2),
                 log_to=str(tmp_path / "no" / "such" / "log"))
    for _ in range(3):
        assert proc.ask(request()) == OK
    finish_clean(proc)


# -- bad command lines ---------------------------------------------------------------------

GOOD = "A=127.0.0.1:10031"
BAD_COMMAND_LINES = [
    (["-s", "A127.0.0.1:10031"], "A127.0.0.1:10031"),
    (["-s", "A=127.0.0.1"], "A=127.0.0.1"),
    (["-s", "A=127.0.0.1:port"], "'port'"),
    (["-s", "A=127.0.0.1:70000"], "70000"),
    (["-s", "A=127.0.0.1:10031:x"], "'x'"),
    (["-s", "A=127.0.0.1:10031:10:1:2:9"], "A=127.0.0.1:10031:10:1:2:9"),
    (["-s", "A b=127.0.0.1:10031"], "'A b'"),
    ([], "no service"),
    (["-d", "OK", "-l"], "no service"),
    (["-s", "A=127.0.0.1:10031:10:0"], "weight '0'"),
    (["-s", "A=127.0.0.1:10031:10:1:-1"], "timeout '-1'"),
    (["-s", "A=127.0.0.1:10031:10:1:0"], "timeout '0'"),
    (["-s", "A=127.0.0.1:10031:10:1:nan"], "timeout 'nan'"),
    (["-s", GOOD, "-s", GOOD], "'A'"),
    (["--total-timeout", "-1", "-s", GOOD], "'-1'"),
    (["--connect-timeout", "soon", "-s", GOOD], "'soon'"),
    (["-d", "", "-s", GOOD], "default action"),
    (["--bogus", "-s", GOOD], "--bogus"),
    (["-x", "-s", GOOD], "-x"),
    (["-s"], "-s"),
    (["-s", GOOD, "stray"], "stray"),
]


@pytest.mark.parametrize(("args", "named"), BAD_COMMAND_LINES,
                         ids=[" ".join(a) or "nothing" for a, _ in BAD_COMMAND_LINES])
def test_bad_command_line(args, named) -> None:
    result = subprocess.run(command(args), stdin=subprocess.DEVNULL, capture_output=True, check=False,
                            env=hapolicy_env(), timeout=20)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert named in err, err


def test_bad_command_line_under_spawn_writes_one_line(tmp_path) -> None:
    # as spawn(8) runs it: the error line is the only thing on Postfix's socket
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(command(["-s", "A=nowhere"]), stdin=theirs, stdout=theirs,
                                stderr=theirs, env=hapolicy_env())
        theirs.close()
        ours.shutdown(socket.SHUT_WR)
        ours.settimeout(10)
        data = b""
        while chunk := ours.recv(65536):
            data += chunk
        assert proc.wait(10) == 2
    assert data.count(b"\n") == 1 and b"A=nowhere" in data


def test_a_spawned_process_imports_only_what_its_start_needs(tmp_path):
    """docs/architecture.md, A spawned process's start: spawn(8) pays every import at each SMTP
    connection, so a spawned process answering a request imports no argparse, dataclasses,
    typing, re or hashlib (no hash balancing here), not `socket`'s Python layer (its enums and
    selectors: the C module `_socket` serves), and none of the daemon's modules (what the
    interpreter imported before hapolicy, its site's .pth files, is not counted)."""
    found = tmp_path / "modules"
    code = ("import sys\nalready = set(sys.modules)\nfrom hapolicy.cli import main\n"
            f"main(['--state-file', {str(tmp_path / 'state')!r}, '-s', "
            f"'A=127.0.0.1:{refused_port()}'])\n"
            f"open({str(found)!r}, 'w').write(' '.join(set(sys.modules) - already))\n")
    done = subprocess.run([sys.executable, "-c", code], input=request(), capture_output=True,
                          env=hapolicy_env(), timeout=30, check=False)
    assert done.stdout.startswith(b"action=")
    modules = set(found.read_text().split())
    assert {"hapolicy.spawn.mode", "hapolicy.spawn.statefile", "_socket"} <= modules
    assert modules & {"argparse", "dataclasses", "typing", "re", "hashlib", "socket", "enum",
                      "selectors"} == set()
    assert [m for m in modules if m.startswith(("hapolicy.daemon", "hapolicy.monitor"))] == []
