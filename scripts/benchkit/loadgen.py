"""The load generator: P processes, each keeping its share of C connections busy.

Contract: Generators(children, addr, C, P, grace, ...) forks P processes that connect and get
one answer on every connection (a spawned proxy has started); wait_ready() says '' once all
are connected, go(warmup, seconds) starts them together, results() returns one dict per
process (latencies in ns as bytes of array('q'), answers by kind, connection errors,
unanswered requests, CPU and wall seconds of the measured window; or {"failed": why}), and
close() always ends them. Every answer is compared with `expected` byte for byte: a default
answer counts in "defaults", any other in "wrong"; "correct" counts the right ones, first
answers included (the backend served those too).
"""

from __future__ import annotations

import array
import mmap
import os
import pickle
import resource
import select
import socket
import struct
import time
from typing import Any

from .procs import Child, Children, close_fds_except
from .wire import ANSWER, DEFAULT_ANSWER, classify, make_request, wait_readable, write_all


class Loop:
    """The closed loop of one generator process over its connections (after prime)."""

    def __init__(self, addr: tuple[str, int], expected: bytes, max_requests: int,
                 progress: Any, slot: int, pool: list[bytes], fresh_every: int = 0,
                 first: int = 0) -> None:
        self.addr = addr
        # every fresh_every-th request is a request never sent before, which its connection
        # then repeats (a cache's miss, then its hits); 0: none
        self.fresh_every = fresh_every
        self.fresh = (first + 1) * 10_000_000  # the first fresh request's number
        self.expected = expected
        self.max_requests = max_requests
        self.progress = progress
        self.slot = slot
        self.pool = pool
        self.ep = select.epoll()
        self.by_fd: dict[int, socket.socket] = {}
        self.request: dict[int, bytes] = {}
        self.sent: dict[int, int] = {}
        self.partial: dict[int, bytes] = {}
        self.lat = array.array("q")
        self.wrong = self.defaults = self.errors = self.reconnects = 0
        self.in_flight = self.issued = self.answered = 0
        self.stopping = False
        self.ru0: Any = None
        self.ru1: Any = None
        self.ru_t0 = self.ru_t1 = 0
        self.w_end = self.end = self.stop_at = 0

    def add(self, sock: socket.socket, req: bytes) -> None:
        fd = sock.fileno()
        self.by_fd[fd] = sock
        self.request[fd] = req
        self.ep.register(fd, select.EPOLLIN)
        self.sent[fd] = time.perf_counter_ns()
        sock.send(req)

    def drop(self, fd: int) -> bytes:
        self.ep.unregister(fd)
        self.by_fd.pop(fd).close()
        self.sent.pop(fd, None)
        self.partial.pop(fd, None)
        return self.request.pop(fd)

    def stop(self, now: int) -> None:
        self.stopping = True
        self.ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self.ru_t1 = now

    def run(self, socks: list[socket.socket], first: int, warmup: float, seconds: float,
            grace: float) -> None:
        """Until `seconds` after `warmup` are over and the requests in flight answered (at
        most `grace` seconds more), or max_requests are answered."""
        pc = time.perf_counter_ns
        self.w_end = pc() + int(warmup * 1e9)
        self.end = self.w_end + int(seconds * 1e9)
        self.stop_at = self.end + int(grace * 1e9)
        for i, sock in enumerate(socks):
            self.add(sock, self.pool[i % len(self.pool)] if self.pool
                     else make_request(first + i))
        self.in_flight = self.issued = len(self.by_fd)
        while self.step(pc()):
            pass
        if self.ru0 is None:
            self.ru0, self.ru_t0 = self.ru1, self.ru_t1

    def step(self, now: int) -> bool:
        """One poll of the loop; False when it is over."""
        if self.ru0 is None and now >= self.w_end:
            self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
            self.ru_t0 = now
        if not self.stopping and now >= self.end:
            self.stop(now)
        if self.stopping and (not self.in_flight or now >= self.stop_at):
            return False
        if not self.by_fd:
            if self.stopping:
                return False
            time.sleep(min(0.05, (self.end - now) / 1e9))
            return True
        limit = self.stop_at if self.stopping else (
            self.end if self.ru0 is not None else self.w_end)
        for fd, _ev in self.ep.poll(max(0.0, (limit - now) / 1e9)):
            self.readable(fd)
        return True

    def readable(self, fd: int) -> None:
        sock = self.by_fd[fd]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self.closed(fd)
        if fd in self.partial:
            data = self.partial.pop(fd) + data
        if not data.endswith(b"\n\n"):
            if len(data) > 65536:
                self.wrong += 1
                self.in_flight -= 1
                self.drop(fd)
            else:
                self.partial[fd] = data
            return None
        return self.answer(fd, sock, data)

    def closed(self, fd: int) -> None:
        """The proxy closed a connection: an error; open another one for its request."""
        self.errors += 1
        self.in_flight -= 1
        req = self.drop(fd)
        if not self.stopping and self.errors < 1000:
            try:
                self.add(socket_to(self.addr), req)
                self.reconnects += 1
                self.in_flight += 1
            except OSError:
                pass

    def answer(self, fd: int, sock: socket.socket, data: bytes) -> None:
        """A whole answer: check it, time it, send the next request (unless stopping)."""
        now = time.perf_counter_ns()
        if data != self.expected:
            if data.lower() == DEFAULT_ANSWER:
                self.defaults += 1
            else:
                self.wrong += 1
        elif self.w_end <= now < self.end:
            self.lat.append(now - self.sent[fd])
        self.answered += 1
        if self.progress is not None:
            self.progress[self.slot] = self.answered
        if self.stopping or (self.max_requests and self.issued >= self.max_requests):
            self.in_flight -= 1
            self.sent.pop(fd, None)
            if not self.stopping and not self.in_flight:  # every request of the limit answered
                self.stop(now)
            return
        if self.pool:
            self.request[fd] = self.pool[self.issued % len(self.pool)]
        elif self.fresh_every and self.issued % self.fresh_every == 0:
            self.fresh += 1
            self.request[fd] = make_request(self.fresh)
        self.issued += 1
        self.sent[fd] = time.perf_counter_ns()
        try:
            if sock.send(self.request[fd]) != len(self.request[fd]):
                raise OSError("short send")
        except OSError:
            self.errors += 1
            self.in_flight -= 1
            self.drop(fd)

    def result(self, primed: dict[str, int]) -> dict[str, Any]:
        """What the bench gets; the first answer on each connection (prime) counts too."""
        ru0, ru1 = self.ru0, self.ru1
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        return {"lat": self.lat.tobytes(), "wrong": self.wrong + primed["wrong"],
                "defaults": self.defaults + primed["default"], "errors": self.errors,
                "unanswered": len(self.sent), "reconnects": self.reconnects, "cpu": cpu,
                "wall": (self.ru_t1 - self.ru_t0) / 1e9, "answered": self.answered,
                "correct": self.answered - self.wrong - self.defaults + primed["ok"]}


def socket_to(addr: tuple[str, int]) -> socket.socket:
    """A non-blocking TCP_NODELAY connection to addr."""
    sock = socket.create_connection(addr, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def generator_main(addr: tuple[str, int], first: int, count: int, ctl_r: int, res_w: int,
                   grace: float, max_requests: int = 0, progress: Any = None, slot: int = 0,
                   variety: int = 0, expected: bytes = ANSWER, fresh_every: int = 0) -> None:
    """Drive `count` connections (closed loop) and report latencies and CPU on res_w.

    max_requests: send at most this many requests in the loop, then stop when they are answered
    (0: run for the time given). progress: a shared array of int64 where slot gets the
    number of answers so far. variety: cycle through this many distinct requests (0: each
    connection repeats its own one). expected: the backend's answer; any other one is counted
    as a default answer or a wrong one (see classify). fresh_every: see Loop.
    """
    primed = {"ok": 0, "default": 0, "wrong": 0}
    try:
        socks = [socket_to(addr) for _ in range(count)]
        why = prime(socks, [make_request(first + i) for i in range(count)], 30.0, expected,
                    primed)
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc}"
    if why:
        write_all(res_w, b"E" + why.encode()[:300])
        return
    write_all(res_w, b"R")
    go = read_exactly(ctl_r, 16)
    if go is None:
        return  # the bench gave up
    warmup, seconds = struct.unpack("dd", go)
    pool = [make_request(first * 7919 + k) for k in range(variety)]
    loop = Loop(addr, expected, max_requests, progress, slot, pool, fresh_every, first)
    loop.run(socks, first, warmup, seconds, grace)
    del socks
    payload = pickle.dumps(loop.result(primed))
    write_all(res_w, b"D" + struct.pack("Q", len(payload)) + payload)
    # keep the connections until the bench has sampled the proxy's processes (spawned ones, and
    # retired daemon workers, exit when their clients leave): it closes the control pipe then
    while os.read(ctl_r, 64):
        pass
    for sock in list(loop.by_fd.values()):
        sock.close()


def read_exactly(fd: int, size: int) -> bytes | None:
    """size bytes from fd, or None at end of file first."""
    data = b""
    while len(data) < size:
        piece = os.read(fd, size - len(data))
        if not piece:
            return None
        data += piece
    return data


def prime(socks: list[socket.socket], requests: list[bytes], timeout: float, expected: bytes,
          counts: dict[str, int]) -> str:
    """One request answered on every connection (a spawned proxy has started): '' or why not.

    Each first answer is counted in counts by its kind (see classify)."""
    for sock, req in zip(socks, requests):
        sock.sendall(req)
    waiting = {sock: b"" for sock in socks}
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"{len(waiting)} connections unanswered after {timeout:g}s"
        ready = wait_readable(list(waiting), left)
        for sock in ready:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                return "connection closed before the first answer"
            data = waiting.pop(sock) + data
            if not data.endswith(b"\n\n"):
                waiting[sock] = data
            else:
                counts[classify(data, expected)] += 1
    return ""



class Generators:
    """P generator processes: connect, start together, report latencies and their CPU time."""

    def __init__(self, children: Children, addr: tuple[str, int], connections: int,
                 processes: int, grace: float, limit: int = 0, variety: int = 0,
                 expected: bytes = ANSWER, fresh_every: int = 0) -> None:
        """limit: requests in all (0: for the time given to go()), split over the processes;
        `answered()` counts their answers as they come. expected: the backend's answer."""
        self.children = children
        self.procs: list[tuple[Child, int, int]] = []  # child, ctl_w, res_r
        self.collected = False
        processes = max(1, min(processes, connections))
        self._progress_map = mmap.mmap(-1, 8 * processes)  # shared with the children
        self.progress = memoryview(self._progress_map).cast("q")
        share, extra = divmod(connections, processes)
        first = 0
        for i in range(processes):
            count = share + (1 if i < extra else 0)
            mine = 0
            if limit:
                mine = max(count, limit // processes + (1 if i < limit % processes else 0))
            ctl_r, ctl_w = os.pipe()
            res_r, res_w = os.pipe()
            options = {"max_requests": mine, "progress": self.progress, "slot": i,
                       "variety": variety, "expected": expected, "fresh_every": fresh_every}
            child = children.fork(f"generator-{i}", _generator_child, addr, first, count, ctl_r,
                                  res_w, grace, options)
            os.close(ctl_r)
            os.close(res_w)
            self.procs.append((child, ctl_w, res_r))
            first += count

    def wait_ready(self, timeout: float) -> str:
        """'' when every generator has its connections up, else why not."""
        deadline = time.monotonic() + timeout
        for _child, _ctl, res_r in self.procs:
            left = deadline - time.monotonic()
            ready = wait_readable([res_r], left)
            if not ready:
                return f"generators not connected after {timeout:g}s"
            data = os.read(res_r, 256)
            if data[:1] != b"R":
                return "cannot connect: " + (data[1:].decode(errors="replace") or "generator died")
        return ""

    def answered(self) -> int:
        """Answers received so far by every generator (in the loop, after go())."""
        return sum(self.progress)

    def running(self) -> bool:
        return any(self.children.alive(child) for child, _w, _r in self.procs)

    def go(self, warmup: float, seconds: float) -> None:
        for _child, ctl_w, _res in self.procs:
            os.write(ctl_w, struct.pack("dd", warmup, seconds))

    def results(self, timeout: float) -> list[dict[str, Any]]:
        buffers = {res_r: b"" for _c, _w, res_r in self.procs}
        done: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(buffers) and time.monotonic() < deadline:
            waiting = [fd for fd in buffers if fd not in done]
            ready = wait_readable(waiting, deadline - time.monotonic())
            for fd in ready:
                data = os.read(fd, 1 << 20)
                buffers[fd] += data
                buf = buffers[fd]
                if len(buf) >= 9 and buf[:1] == b"D":
                    size = struct.unpack("Q", buf[1:9])[0]
                    if len(buf) >= 9 + size:
                        done[fd] = pickle.loads(buf[9:9 + size])
                        continue
                if not data:
                    done[fd] = {"failed": "generator died without results"}
        for fd in buffers:
            done.setdefault(fd, {"failed": "generator gave no results in time"})
        self.collected = True
        return [done[fd] for fd in buffers]

    def close(self) -> None:
        for child, ctl_w, res_r in self.procs:
            for fd in (ctl_w, res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            # after their results they exit when the control pipe closes; otherwise (an error,
            # Ctrl-C) they are still running the load: stop them at once
            if not self.children.wait(child, 2.0 if self.collected else 0.0):
                self.children.stop(child, 0.5)
            elif child in self.children.items:
                self.children.items.remove(child)
        self.procs = []


def _generator_child(addr: tuple[str, int], first: int, count: int, ctl_r: int, res_w: int,
                     grace: float, options: dict[str, Any]) -> None:
    # none of the bench's descriptors (the other generators' pipes, thousands of idle
    # connections with --idle): they would stay open as long as this process, and count
    # against its RLIMIT_NOFILE
    close_fds_except((ctl_r, res_w))
    generator_main(addr, first, count, ctl_r, res_w, grace, **options)

