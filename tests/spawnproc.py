"""Run the real hapolicy in spawn mode the way Postfix's spawn(8) does, and read its syslog.

* :class:`Spawned` -- ``python -m hapolicy ARGS`` with ONE socket as its fds 0, 1 and 2, so
  that anything it writes to stderr lands in the stream the test reads, as it would land in
  Postfix's: comparing that stream with the expected answers proves nothing stray was written.
* :class:`Syslog` -- a unix datagram socket for ``--syslog-socket``, read by a thread (the
  kernel queues only ~10 datagrams: an unread socket would silently lose lines).
* :func:`vm_kib` -- a process's VmRSS / VmHWM in KiB.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fakes import PolicyClient

if TYPE_CHECKING:
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parent.parent


def hapolicy_env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    return env


def command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "hapolicy", *args]


class Spawned:
    """One hapolicy process in spawn mode; the test holds the other end of its socket."""

    def __init__(self, args: Sequence[str], stderr_pipe: bool = False) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                command(args), stdin=theirs, stdout=theirs,
                stderr=subprocess.PIPE if stderr_pipe else theirs,
                cwd=ROOT, env=hapolicy_env())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.client = PolicyClient.from_socket(ours)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, data: bytes) -> None:
        self.client.send_raw(data)

    def ask(self, data: bytes, timeout: float = 10) -> str:
        with self._exit_told():
            return self.client.ask(data, timeout)

    def read_answer(self, timeout: float = 10) -> str:
        with self._exit_told():
            return self.client.read_answer(timeout)

    @contextlib.contextmanager
    def _exit_told(self) -> Iterator[None]:
        """An EOF before an answer says how the process ended (a crash, a signal, or alive)."""
        try:
            yield
        except ConnectionError as exc:
            try:
                status = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                status = None
            raise ConnectionError(f"{exc}; hapolicy exit status {status}") from None

    def finish(self, timeout: float = 10) -> tuple[int, bytes]:
        """Close our sending side (EOF on its stdin); (exit status, every byte it wrote after)."""
        self.sock.shutdown(socket.SHUT_WR)
        rest = self.client.read_until_eof(timeout)
        return self.proc.wait(timeout), rest

    def stderr_text(self, timeout: float = 10) -> str:
        """With stderr_pipe: everything written to stderr (waits for the process to end)."""
        assert self.proc.stderr is not None
        _, err = self.proc.communicate(timeout=timeout)
        return err.decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_once(args: Sequence[str], data: bytes, timeout: float = 20) -> tuple[int, bytes]:
    """Send all of data, then EOF; (exit status, everything written to fds 1 and 2)."""
    with Spawned(args) as proc:
        sender = threading.Thread(target=_send_then_eof, args=(proc.sock, data), daemon=True)
        sender.start()  # a thread: a large input must not deadlock against unread answers
        out = proc.client.read_until_eof(timeout)
        sender.join(timeout)
        return proc.proc.wait(timeout), out


def _send_then_eof(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # it closed early; the test sees that in what was written


class Syslog:
    """A syslog socket for --syslog-socket; `lines` holds every datagram received, decoded."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="haplog")  # short: sun_path holds 108 bytes
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="Syslog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:  # TimeoutError from 3.10 on
                continue
            except OSError:
                return
            with self._cond:
                self.lines.append(data.decode("utf-8", "replace"))
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 5) -> list[str]:
        """Wait until predicate(lines) holds (or the timeout passes); return a copy of lines."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self.lines), timeout)
            return list(self.lines)

    def matching(self, pattern: str) -> list[str]:
        with self._cond:
            return [line for line in self.lines if re.search(pattern, line)]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM, ...) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit status, or None if it is still running after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        time.sleep(0.02)
    return proc.poll()
