"""Spawn mode: one client on stdin/stdout, as Postfix's spawn(8) runs the original.

spawn(8) connects stdin, stdout AND stderr to Postfix's socket, so nothing but answers may ever
reach fds 1 and 2: stderr is pointed at /dev/null before anything can write to it (unless -L asks
for log lines on stderr, for debugging at a terminal). The request path is the workers' own:
the same event loop, client connection and dispatcher. The health table is the state file that
every process spawned with the same services maps (statefile.py), or, with `--state-file none`
or when that file cannot be used (logged once), one of this process's own. A mapped file is
looked at before each read of a request (watch.Watch: one fstat); one that was truncated
or spoilt under the process is left for memory of its own, and the request still answered.
"""

from __future__ import annotations

import os
import sys

from hapolicy.base.eventloop import EventLoop
from hapolicy.base.log import Logger
from hapolicy.config.records import DaemonConfig
from hapolicy.request.assembly import make_dispatcher
from hapolicy.request.client import ClientConnection
from hapolicy.spawn.statefile import default_path, open_table
from hapolicy.spawn.watch import Watch
from hapolicy.tables.health import HealthTable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from hapolicy.config.records import Service

EXIT_LOST = 75  # EX_TEMPFAIL: the state file's map was lost under the process


def silence_stderr() -> None:
    """Point fd 2 and sys.stderr at /dev/null: a stray warning must not reach Postfix."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no /dev/null (a chroot): a pipe nobody reads takes what is written
        devnull = os.pipe()[1]
        os.set_blocking(devnull, False)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(os.dup(2), "w")


def run_spawn(config: DaemonConfig, log: Logger) -> int:
    """Serve the client on fds 0 and 1 until it closes; returns the exit status."""
    for fd in (0, 1):
        try:
            os.set_blocking(fd, False)
        except OSError:
            pass
    # poll, unlike epoll, accepts regular files and /dev/null on stdin (tests, debugging)
    loop = EventLoop(use_poll=True)
    pool = config.pools[0]  # the command line's, or a file's one pool
    health, watch = health_table(config.state_file, pool.services, log)
    dispatcher = make_dispatcher(loop, pool, health, log, log_requests=config.log_requests,
                                 verbose=config.verbose)
    if watch is None:
        client = ClientConnection(loop, dispatcher, 0, 1, lambda _client: None)
    else:
        client = WatchedClient(loop, dispatcher, 0, 1, lambda _client: None)
        client.watch, client.log = watch, log
    client.start()
    while not client.closed:
        loop.run_once()
    dispatcher.close()
    return 0


def health_table(state_file: str, services: Sequence[Service],
                 log: Logger) -> tuple[HealthTable, Watch | None]:
    """The table of the services shared through the state file (--state-file: "" the default
    place, "none" none) and its watch, else a private one and None (and the reason logged)."""
    if state_file != "none":
        try:
            table, note = open_table(state_file, services)
        except Exception as exc:  # noqa: BLE001 - a bug there must not cost the answers
            table, note = None, f"state file: internal error: {type(exc).__name__}: {exc}"
        if table is not None:
            if note:
                log.notice(note)
            path = state_file or default_path(services)
            return table, Watch(table, path, services)
        log.warning(note)
    table = HealthTable(len(services), shared=False)
    table.randomize_phase([s.weight for s in services])
    return table, None


class WatchedClient(ClientConnection):
    """The client of a process whose table is mapped from the state file: the file is looked
    at before each read of a request (watch.Watch), so that a file truncated under the
    process costs it its sharing, not its life."""

    __slots__ = ("log", "watch")

    def _on_readable(self, mask: int) -> None:
        try:
            note = self.watch.check()
        except Exception as exc:  # noqa: BLE001 - a bug there must not cost the answers
            note = f"state file: internal error: {type(exc).__name__}: {exc}"
        if note:
            self.log.warning(note)
            if self.watch.lost:
                os._exit(EXIT_LOST)  # its connection closes: smtpd asks a new process
        super()._on_readable(mask)
