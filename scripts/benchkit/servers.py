"""The servers of the bench: its own backend, the spawn(8) emulator, and how the proxies run.

Contract: start_backend() forks K processes on one SO_REUSEPORT port that answer ANSWER to
every request at once and count the requests they serve in shared memory (BackendView reads
the count; a backend not ours has no count). start_emulator() forks a spawn(8) stand-in that
runs argv per connection, the socket as stdin, stdout and stderr, and reaps every child it
ran. daemon_argv(), haproxy_config() and perl_argv() say how each proxy is started in front
of the backend.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import sys
import time

from testkit.perl import PERL_HAPOLICY, syslog_shim
from testkit.ports import HOST

from .procs import Child, Children, die_with_parent, send_signal
from .tree import REPO
from .wire import ANSWER, wait_readable

HAPROXY = "/usr/sbin/haproxy"


# ---------------------------------------------------------------------------------------------
# the backend: answers every request at once

def backend_main(lsock: socket.socket, served: memoryview, slot: int) -> None:
    """Answer ANSWER to every request; served[slot] counts the requests answered."""
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    tails: dict[int, bytes] = {}
    while True:
        for fd, _ev in ep.poll():
            if fd == lfd:
                _accept_all(lsock, ep, socks)
            elif not _serve(socks[fd], fd, tails, served, slot):
                ep.unregister(fd)
                tails.pop(fd, None)
                socks.pop(fd).close()


def _accept_all(lsock: socket.socket, ep: select.epoll, socks: dict[int, socket.socket]) -> None:
    while True:
        try:
            sock, _ = lsock.accept()
        except OSError:  # BlockingIOError included: nothing more to accept
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[sock.fileno()] = sock
        ep.register(sock.fileno(), select.EPOLLIN)


def _serve(sock: socket.socket, fd: int, tails: dict[int, bytes], served: memoryview,
           slot: int) -> bool:
    """Answer every whole request read from sock; False when the connection is over."""
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    data = tails.pop(fd, b"") + data
    count = data.count(b"\n\n")
    rest = data
    if count:
        rest = data[data.rfind(b"\n\n") + 2:]
        try:
            sock.send(ANSWER * count)
        except OSError:
            return False
        served[slot] += count
    if rest:
        tails[fd] = rest[-65536:]
    return True


def start_backend(children: Children,
                  procs: int) -> tuple[tuple[str, int], list[Child], memoryview]:
    """procs backend processes on one port; (address, processes, requests served by each)."""
    served = memoryview(mmap.mmap(-1, 8 * procs)).cast("q")  # shared with the children
    socks = []
    port = 0
    for _ in range(procs):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((HOST, port))
        port = sock.getsockname()[1]
        sock.listen(4096)
        socks.append(sock)
    kids = []
    for i, sock in enumerate(socks):
        others = [s for j, s in enumerate(socks) if j != i]
        kids.append(children.fork(f"backend-{i}", _backend_child, sock, others, served, i,
                                  session=True))
    for sock in socks:
        sock.close()
    return (HOST, port), kids, served


def _backend_child(sock: socket.socket, others: list[socket.socket], served: memoryview,
                   slot: int) -> None:
    for other in others:
        other.close()
    backend_main(sock, served, slot)


class BackendView:
    """What the bench knows of the backend: its answer and (ours only) the requests served."""

    def __init__(self, answer: bytes, counters: memoryview | None) -> None:
        self.answer = answer
        self.counters = counters

    def served(self) -> int | None:
        """Requests served so far by all its processes (None for a backend not ours)."""
        return sum(self.counters) if self.counters is not None else None

    def served_since(self, before: int | None) -> int | None:
        now = self.served()
        return None if now is None or before is None else now - before


# ---------------------------------------------------------------------------------------------
# the spawn(8) emulator

def emulator_main(lsock: socket.socket, argv: list[str], env: dict[str, str],
                  sink: socket.socket | None) -> None:
    """For each connection, run argv with the socket as stdin, stdout and stderr (as spawn(8)).

    On SIGTERM it ends its children itself and reaps them, so that none is left a zombie.
    `sink` is a datagram socket standing in for /dev/log (drained, never read).
    """
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    spawned: set[int] = set()
    lsock.setblocking(False)
    watch = [lsock] + ([sink] if sink is not None else [])
    while not stop:
        ready = wait_readable(watch, 0.2)
        if sink is not None and sink in ready:
            try:
                while sink.recv(65536):
                    pass
            except OSError:
                pass
        if lsock in ready:
            _spawn_one(lsock, argv, env, spawned)
        _reap(spawned, block=False)
    _end_spawned(spawned)


def _spawn_one(lsock: socket.socket, argv: list[str], env: dict[str, str],
               spawned: set[int]) -> None:
    try:
        conn, _ = lsock.accept()
    except OSError:
        return
    conn.setblocking(True)
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with_parent()
            for fd in (0, 1, 2):
                os.dup2(conn.fileno(), fd)
            os.chdir(REPO)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    spawned.add(pid)
    conn.close()


def _end_spawned(spawned: set[int]) -> None:
    """SIGTERM, 2 s, SIGKILL; every one reaped."""
    for pid in spawned:
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while spawned and time.monotonic() < deadline:
        _reap(spawned, block=False)
        time.sleep(0.02)
    for pid in spawned:
        send_signal(pid, signal.SIGKILL)
    _reap(spawned, block=True)


def _reap(pids: set[int], block: bool) -> None:
    for pid in list(pids):
        try:
            done, _status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            pids.discard(pid)


def start_emulator(children: Children, argv: list[str], env: dict[str, str],
                   sink: socket.socket | None = None) -> tuple[tuple[str, int], Child]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    addr = sock.getsockname()
    child = children.fork("spawn-emulator", emulator_main, sock, argv, env, sink, session=True)
    sock.close()
    if sink is not None:
        sink.close()
    return addr, child


# ---------------------------------------------------------------------------------------------
# how the proxies run

def daemon_argv(port: int, workers: int, backend: tuple[str, int], *extra: str) -> list[str]:
    return [sys.executable, "-m", "hapolicy", "--listen", f"{HOST}:{port}",
            "--workers", str(workers), "-L", "-s", f"B={backend[0]}:{backend[1]}", *extra]


def spawn_argv(backend: tuple[str, int]) -> list[str]:
    return [sys.executable, "-m", "hapolicy", "-s", f"B={backend[0]}:{backend[1]}"]


def haproxy_config(port: int, maxconn: int, backend: tuple[str, int]) -> str:
    return f"""global
    nbthread 1
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend policy
    bind {HOST}:{port}
    default_backend backends
backend backends
    server b1 {backend[0]}:{backend[1]}
"""


def perl_argv(backend: tuple[str, int], tmp: str) -> tuple[list[str], socket.socket | None, str]:
    """(argv, the syslog sink to give the emulator or None, a note for the command)."""
    argv = [PERL_HAPOLICY, "-s", f"B={backend[0]}:{backend[1]}:10"]
    if os.path.exists("/dev/log"):
        return argv, None, ""
    # It dies at start without a syslog socket (setlogsock 'unix'); give it one of ours
    # through a module loaded before the script, instead of creating /dev/log.
    sink_path = os.path.join(tmp, "log")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(sink_path)
    argv = [*syslog_shim(tmp, sink_path, "BenchSyslog"), *argv]
    return argv, sink, " (no /dev/log here: syslog to the bench)"


def log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as handle:
            text = handle.read().strip().splitlines()[-lines:]
    except OSError:
        return "no log"
    return " | ".join(text) or "empty log"
