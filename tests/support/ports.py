"""TCP ports on 127.0.0.1: one free to listen on, one where a connect is refused."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def refused_port() -> int:
    """A 127.0.0.1 TCP port where nothing listens, so that a connect is refused."""
    return free_port()
