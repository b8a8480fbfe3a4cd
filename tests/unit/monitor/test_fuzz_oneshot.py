"""The control socket's and /metrics' parsers on arbitrary bytes (Hypothesis).

The control command parser (control.py's ControlServer.answer over commands.answer, on real
tables): any bytes get None (no whole line yet) or a bytes answer ending in a newline, and no
command raises (no `error: internal error`, nothing logged as an error). The metrics head
parser (metrics.py's MetricsServer.answer): any bytes get None (no whole head yet) or a whole
HTTP/1.1 answer whose status is what the request line asks for. The connection handling both
share (oneshot.py), driven in a real EventLoop over a real socket with drawn bytes in drawn
pieces: a client gets exactly the one answer the first whole request (or its end of input, or
the size limit) gives, then the end of the connection, and the server keeps nothing of it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time

from hypothesis import given
from hypothesis import strategies as st

from hapolicy.base.eventloop import EventLoop
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.monitor.commands import COMMANDS
from hapolicy.monitor.commands import answer as command_answer
from hapolicy.monitor.control import MAX_LINE, ControlServer
from hapolicy.monitor.metrics import MAX_HEAD, MetricsServer, Tables
from hapolicy.tables.health import HealthTable
from hapolicy.tables.workertable import WorkerTable


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda text: self.lines.append(f"{level}: {text}")


CONFIG = DaemonConfig(pools=(PoolConfig(services=(parse_service("A=127.0.0.1:10023"),
                                                 parse_service("B=[::1]:10024:5:2")),
                                       hedge="p99", shadow=""),))
HEALTH = {"default": HealthTable(2, shared=False)}
WORKERS = WorkerTable(2)


def commands_of(log: Log):
    return lambda line: command_answer(line, CONFIG, HEALTH, WORKERS.workers(), WORKERS, log)


class Served:
    """A server of `kind` on a real listening socket in its own loop, and a client of it."""

    def __init__(self, kind: str, command=None) -> None:
        self.loop = EventLoop()
        self.log = Log()
        self.dir = ""
        if kind == "control":
            self.dir = tempfile.mkdtemp(prefix="hap-", dir="/tmp")
            path = os.path.join(self.dir, "control")
            listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listening.bind(path)
            listening.listen(4)
            self.server = ControlServer(self.loop, listening, os.geteuid(), -1,
                                        command or commands_of(self.log), self.log)
            self.address, family = path, socket.AF_UNIX
        else:
            listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listening.bind(("127.0.0.1", 0))
            listening.listen(4)
            self.server = MetricsServer(listening, self.loop, tables, self.log)
            self.address, family = listening.getsockname(), socket.AF_INET
        self.listening = listening
        self.client = socket.socket(family, socket.SOCK_STREAM)

    def close(self) -> None:
        self.server.close()
        self.client.close()
        self.listening.close()
        self.loop.close()
        if self.dir:
            shutil.rmtree(self.dir)


def tables() -> Tables:
    return Tables(CONFIG, HEALTH, WORKERS, [])


words = st.sampled_from([usage.split()[0] for usage, _ in COMMANDS] + ["STATUS", "nonsense", ""])
arguments = st.sampled_from(("default/A", "default/B", "default/C", "other/A", "default",
                             "/A", "default/", "1", "10000", "10001", "0", "reset", "x" * 100,
                             "\u00e9", "-1"))
command_lines = st.builds(lambda w, a, sep: sep.join([w, *a]), words,
                          st.lists(arguments, max_size=3), st.sampled_from((" ", "  ", "\t")))
control_inputs = st.one_of(
    st.builds(lambda line, end, rest: line.encode("utf-8") + end + rest, command_lines,
              st.sampled_from((b"\n", b"\r\n", b"", b"\0\n")),
              st.one_of(st.binary(max_size=20), st.sampled_from((b"help\n", b"\nstatus\n")))),
    st.binary(max_size=60),
    st.sampled_from((b"\n", b"x" * (MAX_LINE + 1) + b"\n", b"status" + b" " * MAX_LINE + b"\n")),
)


@given(control_inputs)
def test_a_control_line_gets_one_line_of_answer_or_more_and_never_an_internal_error(data):
    served = Served("control")
    try:
        answer = served.server.answer(data)
        if b"\n" not in data:
            assert answer is None
        else:
            assert isinstance(answer, bytes) and answer.endswith(b"\n") and answer
        at_end = served.server.at_end(data.split(b"\n")[0])
        assert isinstance(at_end, bytes) and at_end.endswith(b"\n")
        assert not any(line.startswith("error") for line in served.log.lines), served.log.lines
        assert b"internal error" not in answer if answer else True
    finally:
        served.close()


@given(control_inputs)
def test_the_command_is_the_first_line_stripped_and_ascii_only(data):
    served = Served("control", command=echo)
    try:
        answer = served.server.answer(data)
        if b"\n" not in data:
            return
        line = data.split(b"\n", 1)[0]
        if len(line) > MAX_LINE:  # the bound of a command line (an ask's request may follow)
            assert answer == served.server.too_long()
            return
        assert answer == (echo(line.decode().strip()).encode() if line.isascii()
                          else b"error: not an ASCII line\n")
    finally:
        served.close()


# the good word about as often as all the others together
paths = st.one_of(st.sampled_from((b"/metrics", b"/metrics?x=1", b"/metrics?", b"/", b"/?x",
                                   b"/status", b"/status?")),
                  st.sampled_from((b"/metricsx", b"/metrics/", b"", b"http://h/metrics",
                                   b"/Metrics", b"?/metrics", b"/status/", b"//", b"/Status")))
methods = st.one_of(st.just(b"GET"), st.sampled_from((b"HEAD", b"POST", b"get", b"", b"GET GET")))
versions = st.one_of(st.sampled_from((b"HTTP/1.1", b"HTTP/1.0")),
                     st.sampled_from((b"HTTP/2", b"http/1.1", b"HTTP/1.", b"", b"HTTP/1.1 x")))
heads = st.builds(
    lambda m, p, v, sep, headers, end, rest: sep.join(x for x in (m, p, v) if x) + end
    + headers + end + rest,
    methods, paths, versions, st.sampled_from((b" ", b"  ", b"\t")),
    st.sampled_from((b"", b"Host: x\r\n", b"Host: x\n", b"\x00: \xff\r\n")),
    st.sampled_from((b"\r\n", b"\n")), st.binary(max_size=10))
metrics_inputs = st.one_of(heads, st.binary(max_size=80),
                           st.sampled_from((b"\n\n", b"\r\n\r\n", b"x" * (MAX_HEAD + 1),
                                            b"GET /metrics HTTP/1.1" + b" " * MAX_HEAD + b"\n\n")))


def status_of(data: bytes) -> int | None:
    """The model: the status a head asks for, None when no head is whole yet."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    if end < 0 or end > MAX_HEAD:
        return None
    line = data[:end].split(b"\n", 1)[0].split()
    if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
        return 400
    if line[1].split(b"?")[0] not in (b"/metrics", b"/", b"/status"):
        return 404
    return 200 if line[0] == b"GET" else 405


def line_path(data: bytes) -> bytes:
    return data.split(b"\n", 1)[0].split()[1].split(b"?")[0]


@given(metrics_inputs)
def test_a_metrics_head_gets_a_whole_http_answer_with_the_status_it_asks_for(data):
    served = Served("metrics")
    try:
        answer = served.server.answer(data)
        status = status_of(data)
        if status is None:
            assert answer is None
            return
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert length and int(length.group(1)) == len(body)
        if status == 200:
            html = line_path(data) != b"/metrics"  # the status page (statuspage.py)
            assert (b"Content-Type: text/html; charset=utf-8" in head) == html
            assert body.startswith(b"<!DOCTYPE html>") == html
        assert not served.log.lines
    finally:
        served.close()


def expected_answer(server, data: bytes) -> bytes:
    """What one connection that sends data, then ends its input, must get back: the answer of
    the first whole request within the size limit (the server reads no more than the limit
    and a byte), else the answer to a request too long, else at_end's (nothing: b"")."""
    limit = server.max_request
    for k in range(1, min(len(data), limit + 1) + 1):
        if data[k - 1] == 10:  # a request can only become whole with a LF
            answer = server.answer(data[:k])
            if answer is not None:
                return answer
    if len(data) > limit:
        return server.too_long()
    return (server.at_end(data) or b"") if data else b""


def converse(served: Served, pieces: list[bytes]) -> bytes:
    """Connect, send the pieces, end the input, read to the end."""
    client, loop = served.client, served.loop
    client.setblocking(False)
    client.connect_ex(served.address)
    got = bytearray()
    pending = list(pieces)
    shut = False
    give_up = time.monotonic() + 30.0
    while True:
        assert time.monotonic() < give_up, f"no end of the connection; got {bytes(got)[:80]!r}"
        if pending:
            try:
                sent = client.send(pending[0])
                pending[0] = pending[0][sent:]
                if not pending[0]:
                    pending.pop(0)
            except BlockingIOError:
                pass
            except OSError:  # the server closed after its answer: the rest is not read
                pending.clear()
        elif not shut:
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            shut = True
        loop.run_once(0.001)
        try:
            data = client.recv(65536)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            break
        if not data and shut:
            break
        got += data
    client.close()
    for _ in range(5):  # the server sees the end, and closes its side
        loop.run_once(0.001)
    return bytes(got)


def echo(line: str) -> str:
    return f"echo {line!r}\n"


@given(st.sampled_from(("control", "metrics")), st.data())
def test_a_connection_gets_exactly_the_answer_of_its_first_request_then_its_end(kind, data):
    stream = data.draw(control_inputs if kind == "control" else metrics_inputs, label="stream")
    places = data.draw(st.lists(st.integers(0, len(stream)), max_size=4), label="cuts")
    bounds = [0, *sorted(places), len(stream)]
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    served = Served(kind, command=echo)
    try:
        expected = expected_answer(served.server, stream)
        got = converse(served, pieces)
        if kind == "metrics":  # the exposition's values move: its status line only
            got, expected = got.split(b"\r\n", 1)[0], expected.split(b"\r\n", 1)[0]
        assert got == expected
        assert not served.server.conns  # nothing kept of a connection that ended
    finally:
        served.close()
