"""Run the real hapolicy in spawn mode the way Postfix's spawn(8) does.

* :class:`Spawned` -- ``python -m hapolicy ARGS`` with ONE socket as its fds 0, 1 and 2, so
  that anything it writes to stderr lands in the stream the test reads, as it would land in
  Postfix's: comparing that stream with the expected answers proves nothing stray was written.
* :func:`run_once` -- feed one stream, then EOF; everything it wrote.
"""

from __future__ import annotations

import contextlib
import pwd
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from testkit.protocol import PolicyClient
from testkit.repo import REPO, command, hapolicy_env

if TYPE_CHECKING:
    from typing_extensions import Self


class Spawned:
    """One hapolicy process in spawn mode; the test holds the other end of its socket.

    *program* replaces ``python -m hapolicy`` (e.g. ``["/usr/sbin/hapolicy"]``, the original);
    *user* runs it as that user (as spawn(8)'s ``user=``), with *env* as its whole environment
    and ``/`` as its directory when given (the repository may be closed to that user).
    """

    def __init__(self, args: Sequence[str], stderr_pipe: bool = False,
                 program: Sequence[str] | None = None, user: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        ours, theirs = socket.socketpair()
        argv = [*program, *args] if program is not None else command(args)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=theirs, stdout=theirs,
                stderr=subprocess.PIPE if stderr_pipe else theirs,
                cwd="/" if user else REPO, env=env or hapolicy_env(), user=user,
                group=pwd.getpwnam(user).pw_gid if user else None,
                extra_groups=[] if user else None)
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


def run_once(args: Sequence[str], data: bytes, timeout: float = 20,
             program: Sequence[str] | None = None) -> tuple[int, bytes]:
    """Send all of data, then EOF; (exit status, everything written to fds 1 and 2)."""
    with Spawned(args, program=program) as proc:
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
