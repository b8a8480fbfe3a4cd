"""Spawn mode: one client on stdin/stdout, as Postfix's spawn(8) runs the original.

spawn(8) connects stdin, stdout AND stderr to Postfix's socket, so nothing but answers may ever
reach fds 1 and 2: stderr is pointed at /dev/null before anything can write to it (unless -L asks
for log lines on stderr, for debugging at a terminal). The request path is the workers' own:
the same event loop, client connection and dispatcher, with a private health table.
"""

from __future__ import annotations

import os
import sys

from .client import ClientConnection
from .config import Config
from .dispatch import Dispatcher
from .eventloop import EventLoop
from .health import HealthTable
from .log import Logger


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


def run_spawn(config: Config, log: Logger) -> int:
    """Serve the client on fds 0 and 1 until it closes; returns the exit status."""
    for fd in (0, 1):
        try:
            os.set_blocking(fd, False)
        except OSError:
            pass
    # poll, unlike epoll, accepts regular files and /dev/null on stdin (tests, debugging)
    loop = EventLoop(use_poll=True)
    health = HealthTable(len(config.services), shared=False)
    health.randomize_phase([s.weight for s in config.services])
    dispatcher = Dispatcher(loop, config, health, log)
    client = ClientConnection(loop, dispatcher, 0, 1, lambda _client: None)
    client.start()
    while not client.closed:
        loop.run_once()
    dispatcher.close()
    return 0
