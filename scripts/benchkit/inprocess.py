"""--inprocess: the CPU that one request costs each relay, measured inside this process.

Contract: run_inprocess(requests, rounds) drives `requests` requests, one at a time, through
each path in turn, `rounds` times over, and returns each path's user+sys CPU microseconds per
request (getrusage around each round; the median of the rounds is the figure);
report_inprocess() prints them with the ratios to the floor and returns the exit status: 1
when any answer was not the backend's own, else 0.

Every path has a client connection and a backend connection on 127.0.0.1, both ends in this
process (two for the balanced pool, which round robin asks in turn). The driver sends a
request as the client, runs the relay's loop once, reads it as the backend, answers, runs the
loop once more and reads the answer as the client; the requests are of two transactions in
turn, so that none sticks to one service. Nothing else
runs: no scheduler between processes, no load generator, no other process's wake-ups, so a
change of a few percent on the request path shows here (rounds agree within about 2%) when
the rows' noise (about 10%) hides it. The rows stay the measure of what a user gets: they
also count what more CPU in one process costs the others on a loaded machine.

Paths: `driver` (the driver's own four system calls with nothing between: its figure is taken
from the others'), `python floor` (benchkit/floor.py's relay in a raw epoll loop), `hapolicy
lane` (ClientConnection, Dispatcher and EventLoop of one service: the lane takes every
request), `hapolicy balanced` (the same with two services of one priority: the lane makes the
round robin's pick) and `hapolicy general` (one service with the lane off: Job, pick,
Connection).
"""

from __future__ import annotations

import os
import resource
import select
import socket
import statistics
import sys
from typing import Any, Callable

from testkit.ports import HOST

from .floor import relay
from .tree import use_tree_hapolicy
from .wire import ANSWER, make_request

PATHS = ("driver", "python floor", "hapolicy lane", "hapolicy balanced", "hapolicy general")


def _pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1: (the connecting end, the accepted end)."""
    near = socket.create_connection(listener.getsockname())
    far, _ = listener.accept()
    return near, far


class Path:
    """One relay driven one request at a time: the request is sent on `client` and read on
    a backend, the answer sent on it and read on `client_in` (for a relay, `client` again;
    for the driver alone, a second pair with nothing between). The backends, (socket it
    reads, socket it answers on) each, take the requests in turn, as round robin picks them
    (one backend but for the balanced pool)."""

    def __init__(self, client: socket.socket, backends: list[tuple[socket.socket, socket.socket]],
                 run_once: Callable[[], None], client_in: socket.socket | None = None) -> None:
        self.client = client
        self.client_in = client_in or client
        self.backends = [(reader.recv, writer.send) for reader, writer in backends]
        self.run_once = run_once
        self.turn = 0  # the next request's backend, across rounds
        self.wrong = 0

    def drive(self, requests: tuple[bytes, bytes], count: int) -> None:
        """count requests, of two transactions in turn (not sticky to one service)."""
        csend, crecv = self.client.send, self.client_in.recv
        backends = self.backends
        many = len(backends)
        run_once = self.run_once
        turn = self.turn
        wrong = 0
        for _ in range(count):
            csend(requests[turn & 1])
            run_once()
            brecv, bsend = backends[turn % many]
            turn += 1
            brecv(65536)
            bsend(ANSWER)
            run_once()
            if crecv(65536) != ANSWER:
                wrong += 1
        self.turn = turn
        self.wrong += wrong


def _nothing() -> None:
    pass


def _driver_path(listener: socket.socket) -> Path:
    """No relay: the request goes from the client straight to the backend, the answer back
    on a second pair."""
    client, backend = _pair(listener)
    backend_out, client_in = _pair(listener)
    return Path(client, [(backend, backend_out)], _nothing, client_in)


def _floor_path(listener: socket.socket) -> Path:
    """benchkit/floor.py's relay between an accepted client and its own backend connection."""
    client, ours = _pair(listener)
    upstream, backend = _pair(listener)
    own = {ours.fileno(): ours, upstream.fileno(): upstream}
    peer = {ours.fileno(): upstream, upstream.fileno(): ours}
    bufs = {fd: b"" for fd in own}
    poller = select.epoll()
    for fd, sock in own.items():
        sock.setblocking(False)
        poller.register(fd, select.EPOLLIN)

    def run_once() -> None:  # floor.serve's loop body, for the descriptors it relays
        for fd, _events in poller.poll():
            try:
                data = own[fd].recv(65536)
            except BlockingIOError:
                continue
            bufs[fd] = relay(data, bufs[fd], peer[fd])

    return Path(client, [(backend, backend)], run_once)


def _hapolicy_path(listener: socket.socket, lane: bool, services: int = 1) -> Path:
    """hapolicy's client connection, dispatcher and loop; its services (one, or two of one
    priority and weight: round robin) are all this listener."""
    loop, dispatcher = _dispatcher(listener.getsockname(), lane, services)
    from hapolicy.request.client import ClientConnection  # the tree's: see use_tree_hapolicy

    client, ours = _pair(listener)
    ours.setblocking(False)
    conn = ClientConnection(loop, dispatcher, ours.fileno(), ours.fileno(), lambda _c: None,
                            sock=ours)
    conn.start()
    # each service's first request connects to it: accept, answer, and the path is warm;
    # round robin asks them in order, and from then on in turn
    backends = [_first_request(loop, listener, client, n) for n in range(services)]
    return Path(client, backends, loop.run_once)


def _dispatcher(addr: tuple[str, int], lane: bool, services: int) -> tuple[Any, Any]:
    """(an EventLoop, a Dispatcher of `services` services at addr, with the lane or not)."""
    use_tree_hapolicy()
    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.config.parsers import parse_service
    from hapolicy.config.records import PoolConfig
    from hapolicy.request.assembly import make_dispatcher
    from hapolicy.tables.health import HealthTable

    class Silent(Logger):
        def log(self, level: str, message: str) -> None:
            pass

    host, port = addr
    loop = EventLoop()
    config = PoolConfig(services=tuple(parse_service(f"BENCH{n}={host}:{port}:10")
                                       for n in range(services)))
    dispatcher = make_dispatcher(loop, config, HealthTable(services, shared=False),
                                 Silent(syslog_socket=""), lane=lane)
    if lane and dispatcher.lane is None:
        raise RuntimeError("this pool no longer takes the lane")
    return loop, dispatcher


def _first_request(loop: Any, listener: socket.socket, client: socket.socket,
                   n: int) -> tuple[socket.socket, socket.socket]:
    """Send request n, accept the connection the relay makes to its service, answer it."""
    client.sendall(make_request(n))
    listener.settimeout(0.01)
    backend = None
    while backend is None:
        loop.run_once(0.01)
        try:
            backend, _ = listener.accept()
        except TimeoutError:
            pass
    listener.settimeout(None)
    _pump(loop.run_once, backend)
    backend.sendall(ANSWER)
    _pump(loop.run_once, client)
    return backend, backend


def _pump(run_once: Callable[[float], None], sock: socket.socket) -> bytes:
    """Run the loop until sock has something to read; what it read."""
    sock.settimeout(0.01)
    try:
        while True:
            run_once(0.01)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            return data
    finally:
        sock.settimeout(None)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_inprocess(count: int, rounds: int) -> dict[str, Any]:
    """Each path's CPU microseconds per request, every round and the median; wrong answers."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)
    paths = {
        "driver": _driver_path(listener),
        "python floor": _floor_path(listener),
        "hapolicy lane": _hapolicy_path(listener, lane=True),
        "hapolicy balanced": _hapolicy_path(listener, lane=True, services=2),
        "hapolicy general": _hapolicy_path(listener, lane=False),
    }
    requests = (make_request(1000), make_request(1001))  # not the warm-up's transactions
    for path in paths.values():  # warm: the code and the allocator, not the figures
        for recv, _send in path.backends:  # and a turn out of step fails, not hangs
            recv.__self__.settimeout(10.0)
        path.drive(requests, min(count, 2000))
        for recv, _send in path.backends:
            recv.__self__.settimeout(None)
        path.wrong = 0
    figures: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            before = _cpu()
            path.drive(requests, count)
            figures[name].append((_cpu() - before) / count * 1e6)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    return {"requests": count, "rounds": rounds, "rounds_us": figures, "median_us": medians,
            "wrong_answers": {name: path.wrong for name, path in paths.items()}}


def report_inprocess(result: dict[str, Any]) -> tuple[str, int]:
    """The text to print and the exit status."""
    medians = result["median_us"]
    driver = medians["driver"]
    title = (f"hapolicy bench --inprocess: {result['requests']} requests per path and round, "
             f"{result['rounds']} rounds, one process (user+sys CPU; the driver's own "
             f"{driver:.2f} us/req taken from each relay's), python "
             f"{sys.version.split()[0]} ({os.path.realpath(sys.executable)})")
    lines = [title, f"{'path':<18}{'us/req':>8}   rounds (with the driver's)"]
    own = {name: medians[name] - driver for name in PATHS[1:]}
    for name in PATHS[1:]:
        rounds = " ".join(f"{v:.2f}" for v in result["rounds_us"][name])
        lines.append(f"{name:<18}{own[name]:>8.2f}   {rounds}")
    floor = own["python floor"]
    lines.append("ratios:")
    for name in PATHS[2:]:
        ratio = own[name] / floor if floor > 0 else float("nan")
        lines.append(f"  {name} / python floor, CPU per request  {ratio:.2f}")
    result["relay_us"] = own
    wrong = sum(result["wrong_answers"].values())
    if wrong:
        lines.append(f"error: {wrong} answers were not the backend's own: "
                     f"{result['wrong_answers']}")
    return "\n".join(lines), 1 if wrong else 0


def main_inprocess(requests: int, rounds: int, json_path: str | None) -> int:
    result = run_inprocess(requests, rounds)
    text, status = report_inprocess(result)
    print(text)
    if json_path:
        import json

        with open(json_path, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return status
