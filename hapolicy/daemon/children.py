"""The master's children: the seam to the OS (`ProcessOps`), the record of a child (`Child`: a
worker or the monitor), and the one way either is forked (`fork_child`). Supervision.py keeps
the records and acts on them.

A child is forked with the signals it handles blocked (its own handlers go in before it
unblocks them, so the master's never run in it), with a socketpair to the master; in the child,
`shed` closes what is the master's and drops privileges, then `run` takes the child's end and
never returns. A child that cannot shed logs one line and exits 3 (a boot failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

from hapolicy.daemon.childproto import SIGNALS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.log import Logger


class ProcessOps:
    """fork, waitpid, kill and the clock: the seam between the master's logic and the OS."""

    fork = staticmethod(os.fork)
    kill = staticmethod(os.kill)
    now = staticmethod(time.monotonic)

    @staticmethod
    def wait(pid: int) -> None:
        """Wait for the end of a child that was killed (SIGKILL: it is quick)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    @staticmethod
    def reap() -> tuple[int, int]:
        """(pid, status) of one exited child, or (0, 0)."""
        try:
            return os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0, 0


WORKER = "worker"
MONITOR = "monitor"


class Child:
    """The master's record of one child: a worker or the monitor (its `kind`)."""

    def __init__(self, kind: str, pid: int, slot: int, generation: int, sock: socket.socket,
                 started: float, max_use: int = 0) -> None:
        self.kind = kind
        self.pid = pid
        self.slot = slot  # in the worker table: its heartbeat (and a worker's load)
        self.generation = generation  # of the configuration it was started with
        self.sock = sock  # the master's end of the socketpair
        self.started = started
        self.max_use = max_use  # a worker's, said when it retires at max-use
        self.ready = False  # it said READY: it serves, its boot is over
        self.retiring = False  # a worker: told to retire, or said it retires


def fork_child(ops: ProcessOps, what: str, run: Callable[[socket.socket], None],
               shed: Callable[[socket.socket], None], log: Logger
               ) -> tuple[int, socket.socket] | None:
    """Fork a child with a socketpair to it: (pid, the master's end), or None (logged)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        pid = ops.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        ours.close()
        theirs.close()
        log.error(f"cannot fork a {what}: {exc.strerror}")
        return None
    if pid == 0:  # the child
        try:
            shed(ours)
        except BaseException as exc:  # noqa: BLE001
            try:
                log.error(f"{what} cannot start: {exc}")
            finally:
                os._exit(3)
        run(theirs)
        os._exit(1)  # not reached: run leaves through os._exit
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    theirs.close()
    ours.setblocking(False)
    return pid, ours
