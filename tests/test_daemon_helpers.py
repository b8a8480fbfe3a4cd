"""Helpers of the daemon tests (no tests here): run `hapolicy --listen`, watch its processes.

* :class:`Daemon` -- the real daemon as a subprocess (``python -m hapolicy``, cwd = the
  repository), its log lines collected from a private syslog socket, its workers read from
  /proc.
* :class:`SyslogCollector` -- an AF_UNIX datagram socket that keeps what hapolicy logs.
* :class:`Load` -- many persistent policy connections driven by one thread with a selector;
  every request carries a unique recipient that an ``echo`` FakeBackend sends back, so a
  wrong, swapped or missing answer is seen.
* /proc helpers: children, titles, uids, and which worker holds a client connection.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fakes import request

if TYPE_CHECKING:
    from typing_extensions import Self

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def short_tmpdir() -> Path:
    """A private directory with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))


# --------------------------------------------------------------------------- /proc


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Live (non-zombie) children of pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                found.append(int(entry))
    return sorted(found)


def wait_children(pid: int, count: int, timeout: float = 10.0) -> list[int]:
    """Until pid has exactly count live children; returns them."""
    found: list[int] = []

    def enough() -> bool:
        found[:] = children(pid)
        return len(found) == count

    wait_for(enough, timeout, what=f"{count} children of {pid}")
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid line for {pid}")


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _server_side_inodes(server_port: int) -> dict[int, int]:
    """client port -> inode of the server's socket of that TCP connection on 127.0.0.1."""
    local = f"0100007F:{server_port:04X}"
    out = {}
    with open("/proc/net/tcp") as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "01":  # ESTABLISHED
                out[int(fields[2].split(":")[1], 16)] = int(fields[9])
    return out


def connection_owners(server_port: int, client_socks: list[socket.socket],
                      pids: list[int]) -> list[int]:
    """For each client socket, the pid (among pids) holding the server side; 0 if none."""
    by_port = _server_side_inodes(server_port)
    holders = {pid: _socket_inodes(pid) for pid in pids}
    owners = []
    for sock in client_socks:
        inode = by_port.get(sock.getsockname()[1], -1)
        owners.append(next((pid for pid, inodes in holders.items() if inode in inodes), 0))
    return owners


# --------------------------------------------------------------------------- syslog


class SyslogCollector:
    """Receives hapolicy's syslog datagrams on a socket in a private directory."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "log.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="syslog")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.lines.append(data.decode("utf-8", "replace"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait(self, fragment: str, timeout: float = 10.0) -> str:
        wait_for(lambda: fragment in self.text(), timeout, what=f"log line {fragment!r}")
        return self.text()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


# --------------------------------------------------------------------------- daemon


class Daemon:
    """`hapolicy --listen ...` as a subprocess; use as a context manager."""

    def __init__(self, *args: str, workers: int = 2, listen: str | None = None,
                 env: dict | None = None) -> None:
        self.dir = short_tmpdir()
        self.port = 0
        if listen is None:
            self.port = free_port()
            listen = f"{HOST}:{self.port}"
        self.listen = listen
        self.workers = workers
        self.args = list(args)
        self.env = env
        self.log: SyslogCollector | None = None
        self.proc: subprocess.Popen | None = None
        self.stdout = self.stderr = ""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hapolicy", "--listen", self.listen,
                "--workers", str(self.workers), "--syslog-socket", self.log.path, *self.args]

    def start(self, wait: bool = True) -> Daemon:
        self.log = SyslogCollector(self.dir)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.update(self.env or {})
        self.proc = subprocess.Popen(self.argv(), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.close()
                raise
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers_now(self) -> list[int]:
        return children(self.pid)

    def wait_ready(self, timeout: float = 15.0) -> list[int]:
        """Until `workers` workers run their loop (their title is set) and accept."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"hapolicy exited with {self.proc.returncode}: "
                                     f"{self.proc.stderr.read().decode()}\n{self.log.text()}")
            pids = self.workers_now()
            if len(pids) == self.workers and all(
                    cmdline(p).startswith("hapolicy: worker") for p in pids):
                return pids
            return None

        pids = wait_for(ready, timeout, what="the workers")
        return pids

    def connect(self, timeout: float = 5.0) -> socket.socket:
        if self.port:
            return socket.create_connection((HOST, self.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.listen[5:])
        return sock

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the master, wait for it; returns its exit status; collects its output."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.send(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the master to exit; returns its exit status; collects its output."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"hapolicy did not stop within {timeout}s") from None
        self.stdout, self.stderr = out.decode(errors="replace"), err.decode(errors="replace")
        return self.proc.returncode

    def assert_clean_output(self) -> None:
        """Nothing on stdout; no traceback anywhere."""
        assert self.stdout == "", self.stdout
        assert "Traceback" not in self.stderr, self.stderr
        assert "Traceback" not in self.log.text()
        assert "internal error" not in self.log.text(), self.log.text()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pids = self.workers_now()
            self.proc.kill()
            self.proc.communicate()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- load


class Conn:
    """One persistent policy connection of a Load."""

    def __init__(self, sock: socket.socket, ident: str) -> None:
        self.sock = sock
        self.ident = ident
        self.inbuf = bytearray()
        self.expect = ""  # the answer awaited, "" when none
        self.sent = 0
        self.answered = 0
        self.error = ""


class Load:
    """Drive persistent connections from one thread: each connection sends `requests`
    requests one after the other (or until stop() when requests is 0), each with a
    unique recipient, and checks that each answer echoes it. Errors are collected."""

    def __init__(self, socks: list[socket.socket], requests: int, name: str = "L",
                 expected_prefix: str = "") -> None:
        self.conns = [Conn(sock, f"{name}{i}") for i, sock in enumerate(socks)]
        self.requests = requests
        self.prefix = expected_prefix
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"load-{name}")

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Send no new requests; wait for the answers awaited."""
        self._stop.set()

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "load did not finish"

    @property
    def answered(self) -> int:
        return sum(c.answered for c in self.conns)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.conns)

    @property
    def errors(self) -> list[str]:
        return [f"{c.ident}: {c.error}" for c in self.conns if c.error] + self.wrong

    def _send(self, conn: Conn) -> None:
        rcpt = f"{conn.ident}-{conn.sent}@example.net"
        conn.expect = f"action={self.prefix}{rcpt}\n\n"
        conn.sock.sendall(request(recipient=rcpt))
        conn.sent += 1

    def _more(self, conn: Conn) -> bool:
        if self._stop.is_set():
            return False
        return not self.requests or conn.sent < self.requests

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        active = 0
        for conn in self.conns:
            conn.sock.settimeout(10)
            if self._more(conn):
                self._send(conn)
                sel.register(conn.sock, selectors.EVENT_READ, conn)
                active += 1
        deadline_idle = 30.0
        while active:
            events = sel.select(deadline_idle)
            if not events:
                for key in list(sel.get_map().values()):
                    key.data.error = f"no answer within {deadline_idle}s to #{key.data.sent}"
                break
            for key, _ in events:
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    continue
                except OSError as exc:
                    data, conn.error = b"", f"recv: {exc}"
                if not data:
                    conn.error = conn.error or (f"closed by the server after {conn.answered} "
                                                f"answers, awaiting #{conn.sent}")
                    sel.unregister(conn.sock)
                    active -= 1
                    continue
                conn.inbuf += data
                while b"\n\n" in conn.inbuf:
                    end = conn.inbuf.index(b"\n\n") + 2
                    answer = bytes(conn.inbuf[:end]).decode()
                    del conn.inbuf[:end]
                    if answer != conn.expect:
                        self.wrong.append(f"{conn.ident}: got {answer!r}, want {conn.expect!r}")
                    conn.answered += 1
                    conn.expect = ""
                if not conn.expect:
                    if self._more(conn):
                        self._send(conn)
                    else:
                        sel.unregister(conn.sock)
                        active -= 1
        sel.close()

    def close(self) -> None:
        for conn in self.conns:
            conn.sock.close()
