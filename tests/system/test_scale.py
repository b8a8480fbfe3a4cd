"""The daemon at scale: running out of file descriptors, and thousands of idle connections.

* A worker with RLIMIT_NOFILE 64 and 100 clients knocking: it logs `cannot accept`, keeps
  serving the clients it holds, does not spin (its CPU time stays low while the backlog is
  full), neither it nor the master dies, and once clients leave it accepts again.
* 2,000 idle persistent connections (Postfix keeps one per smtpd process) and a few busy
  ones: every request on every connection is answered, by the backend, in order.

Real processes on 127.0.0.1 (`python -m hapolicy --listen ...`) in front of an `echo`
FakeBackend that answers each request with its recipient, so every answer is checked.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import sys
import time

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.load import Load
from testkit.processes import alive, cmdline
from testkit.protocol import request
from testkit.wait import wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 64  # soft and hard limit of the starved daemon
KNOCKING = 100  # clients opened against it, well over what 64 descriptors hold
IDLE = 2000
ACTIVE = 4
BATCH = 50  # requests sent at once: the daemon opens a backend connection for each

# sets the limit, then becomes the daemon (same pid): the daemon raises soft to hard, so both
LIMIT_THEN_EXEC = ("import os, resource, sys; n = int(sys.argv[1]); "
                   "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
                   "os.execv(sys.argv[2], sys.argv[2:])")


class LimitedDaemon(Daemon):
    """The daemon started with RLIMIT_NOFILE (nofile, nofile)."""

    def __init__(self, *args: str, nofile: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.nofile = nofile

    def argv(self) -> list[str]:
        return [sys.executable, "-c", LIMIT_THEN_EXEC, str(self.nofile), *super().argv()]


@pytest.fixture
def echo():
    with FakeBackend(mode="echo", attr="recipient", name="E") as backend:
        yield backend


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def answer_for(tag: str) -> bytes:
    return f"action={tag}@example.net\n\n".encode()


def ask_all(socks: list[socket.socket], tags: list[str], timeout: float) -> dict[int, bytes]:
    """Send one request on each socket (recipient TAG@example.net), collect the answers that
    come within timeout: {index: answer bytes}; a connection closed gives b''."""
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytes] = {}
    for i, (sock, tag) in enumerate(zip(socks, tags)):
        sock.setblocking(True)
        sock.sendall(request(recipient=f"{tag}@example.net"))
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
        bufs[i] = b""
    done: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(socks):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in sel.select(left):
            i = key.data
            try:
                data = socks[i].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            bufs[i] += data
            if not data or bufs[i].endswith(b"\n\n"):
                done[i] = bufs[i]
                sel.unregister(socks[i])
    sel.close()
    for sock in socks:
        sock.setblocking(True)
    return done


def ask_in_batches(socks: list[socket.socket], prefix: str) -> list[str]:
    """Ask on every socket, BATCH at a time; the problems found (empty when all is well)."""
    problems = []
    for start in range(0, len(socks), BATCH):
        group = socks[start:start + BATCH]
        tags = [f"{prefix}{start + i}" for i in range(len(group))]
        answers = ask_all(group, tags, 10.0)
        for i, tag in enumerate(tags):
            if answers.get(i) != answer_for(tag):
                problems.append(f"{tag}: {answers.get(i, 'no answer')!r}")
    return problems


def clients_in_titles(pids: list[int]) -> int:
    """Sum of `clients=N` in the workers' titles (updated every second)."""
    total = 0
    for pid in pids:
        for word in cmdline(pid).split():
            if word.startswith("clients="):
                total += int(word[8:])
    return total


def test_out_of_file_descriptors_is_logged_and_survived(echo):
    daemon = LimitedDaemon("-s", echo.spec(), "-d", "FALLBACK", nofile=NOFILE, workers=1)
    with daemon:
        master = daemon.pid
        [worker] = daemon.wait_ready()
        assert daemon.log.wait_text("master started")
        assert f"{NOFILE} file descriptors per process" in daemon.log.text()

        # more clients than 64 descriptors hold: the rest wait in the listen backlog
        socks = [daemon.connect() for _ in range(KNOCKING)]
        try:
            tags = [f"k{i}" for i in range(KNOCKING)]
            daemon.log.wait("cannot accept", timeout=10)
            answers = ask_all(socks, tags, 3.0)
            # the connections it holds are served (by the backend, or with the default action
            # when no descriptor is left for a backend socket), the others wait
            held = [i for i, a in answers.items() if a]
            assert 10 < len(held) < KNOCKING, (len(held), answers)
            for i in held:
                assert answers[i] in (answer_for(tags[i]), b"action=FALLBACK\n\n"), answers[i]
            assert open_fds(worker) <= NOFILE

            # no busy loop while the descriptors stay exhausted
            cpu0, t0 = cpu_seconds(worker), time.monotonic()
            time.sleep(2.0)
            used = cpu_seconds(worker) - cpu0
            assert used < 0.25 * (time.monotonic() - t0), f"worker used {used:.2f}s of CPU"
            assert alive(master) and alive(worker)
            assert daemon.workers_now() == [worker], "the worker was replaced"

            # clients leave: the worker accepts again (the ones left in the backlog, then new).
            # The first request of a new client may still get the default action: the dead
            # connections accepted from the backlog with it hold descriptors until their EOF
            # is read, and a backend socket cannot be made meanwhile; the next is the backend's
            keep = held[:5]
            for i, sock in enumerate(socks):
                if i not in keep:
                    sock.close()
            socks = [socks[i] for i in keep]
            fresh = [daemon.connect() for _ in range(5)]
            socks += fresh
            answers = ask_all(fresh, [f"n{i}" for i in range(5)], 10.0)
            assert sorted(answers) == list(range(5)), answers
            for i, answer in answers.items():
                assert answer in (answer_for(f"n{i}"), b"action=FALLBACK\n\n"), answer
            wait_for(lambda: open_fds(worker) < NOFILE - 10, 5.0, what="descriptors released")
            answers = ask_all(socks, [f"a{i}" for i in range(len(socks))], 10.0)
            assert answers == {i: answer_for(f"a{i}") for i in range(len(socks))}, answers
            assert daemon.workers_now() == [worker]
        finally:
            for sock in socks:
                sock.close()
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.stderr + daemon.log.text()
        assert "internal error" not in daemon.log.text()


def test_two_thousand_idle_connections_and_a_few_busy_ones(echo):
    need = IDLE + 2 * BATCH + 256  # ours, and the backend's (the FakeBackend runs here)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    with Daemon("-s", echo.spec(), workers=2) as daemon:
        pids = daemon.wait_ready()
        idle: list[socket.socket] = []
        try:
            for start in range(0, IDLE, BATCH):
                idle += [daemon.connect() for _ in range(BATCH)]
                assert ask_in_batches(idle[start:], f"i{start}-") == []
            wait_for(lambda: clients_in_titles(pids) >= IDLE, 5.0,
                     what=f"{IDLE} clients in the workers' titles")

            # a few busy connections beside them: every answer right, none slow to come
            load = Load([daemon.connect() for _ in range(ACTIVE)], 100, name="A")
            started = time.monotonic()
            load.start()
            load.join(30)
            elapsed = time.monotonic() - started
            load.close()
            assert load.errors == []
            assert load.answered == ACTIVE * 100
            assert elapsed < 10, f"{ACTIVE * 100} requests took {elapsed:.1f}s"

            # every idle connection is still held and served
            assert ask_in_batches(idle, "again") == []
            assert daemon.workers_now() == pids
            assert "cannot accept" not in daemon.log.text()
        finally:
            for sock in idle:
                sock.close()
        assert daemon.stop() == 0
        daemon.assert_clean_output()
