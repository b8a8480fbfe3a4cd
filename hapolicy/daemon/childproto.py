"""The protocol between the master and its children (the workers, the monitor), as Postfix's
master_proto.h: what a child says to the master, the signals it obeys, its process title.

Messages. Each child has a stream socketpair to the master and says one byte a message:
MSG_READY once it serves (a worker accepts; the monitor serves its checks and sockets): its boot
is over; a worker says MSG_RETIRING when it reached max-use, MSG_RETIRING_FAULT after an
exception its loop contained (a fresh worker is safer than a state that may be spoilt): the
master starts its replacement at once. The master says nothing: the end of file on its end
tells a child that the master is gone.

Signals. The master handles SIGNALS, and forks with them blocked, so that none of its handlers
runs in a child; the child puts its own handlers in, then unblocks them (`obey`). A worker
obeys RETIRE (take no new connection, serve its clients until they close: a reload), DRAIN
(finish the requests in flight, then exit: a stop) and STOP or SIGINT (exit at once); the
monitor ignores RETIRE and exits at once on the others. Both ignore UPGRADE (SIGUSR2, the
master's: `systemctl kill -s USR2` without --kill-whom=main sends it to every process). The master kills a child whose loop is
stuck with SIGKILL (the watchdog), and the monitor too when it replaces or ends it.

Titles: `hapolicy: master`, `hapolicy: monitor`, and `worker_title`'s
`hapolicy: worker[ (retiring)] requests=N clients=N`; in an upgrade in place (upgrade.py), the
old master's `hapolicy: master (upgrading)` while the new one starts, then
`hapolicy: old master (retiring)` while its workers finish, and the new master's
`hapolicy: new master (starting)` until it serves.
"""

from __future__ import annotations

import contextlib
import signal
import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Callable, Union

    Handler = Union[Callable[[int, object], None], int, signal.Handlers]

MSG_READY = b"Y"
MSG_RETIRING = b"R"
MSG_RETIRING_FAULT = b"E"  # retiring after an internal error its loop contained

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR2,
           signal.SIGCHLD)
RETIRE = signal.SIGHUP
DRAIN = signal.SIGTERM
STOP = signal.SIGQUIT  # SIGINT asks the same
UPGRADE = signal.SIGUSR2  # the master's alone: its children ignore it

MASTER_TITLE = "hapolicy: master"
MONITOR_TITLE = "hapolicy: monitor"
UPGRADING_TITLE = "hapolicy: master (upgrading)"
OLD_MASTER_TITLE = "hapolicy: old master (retiring)"
NEW_MASTER_TITLE = "hapolicy: new master (starting)"


def worker_title(retiring: bool, requests: int, clients: int) -> str:
    state = " (retiring)" if retiring else ""
    return f"hapolicy: worker{state} requests={requests} clients={clients}"


def set_title(title: str) -> None:
    """The process title ps shows, when setproctitle is there (spawn mode's python may lack it)."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def obey(handlers: Mapping[int, Handler]) -> None:
    """In a new child: its handlers of SIGNALS (for those not given the default, UPGRADE
    ignored), then unblock them."""
    for sig in SIGNALS:
        default = signal.SIG_IGN if sig == UPGRADE else signal.SIG_DFL
        signal.signal(sig, handlers.get(sig, default))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def tell(sock: socket.socket, message: bytes) -> None:
    """A child says a message to the master (lost with a master that is gone)."""
    with contextlib.suppress(OSError):
        sock.send(message)


def master_gone(sock: socket.socket) -> bool:
    """A child's end became readable: True at end of file (or an error), the master is gone."""
    try:
        if sock.recv(64):
            return False  # the master says nothing yet; end of file is what counts
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def receive(sock: socket.socket) -> bytes | None:
    """The master reads what a child said: None when nothing waits, b"" at end of file (the
    child is exiting) or after an error."""
    try:
        return sock.recv(64)
    except BlockingIOError:
        return None
    except OSError:
        return b""
