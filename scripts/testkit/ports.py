"""TCP ports on 127.0.0.1: one free to listen on, one where a connect is refused."""

from __future__ import annotations

import random
import socket

HOST = "127.0.0.1"
LOWEST = 10000
_random = random.Random()  # seeded from the OS in each process: xdist workers differ


def _ephemeral_start() -> int:
    """The first port the kernel gives to outgoing connections (and to bind to port 0)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now (bound, then closed).

    It is below the kernel's ephemeral range: a port that bind(0) gave back could be taken as
    the source port of some process's outgoing connection before the test binds it, which
    made Postfix's master fail to start now and then in a full parallel run."""
    high = _ephemeral_start() - 1
    for _ in range(100):
        port = _random.randint(LOWEST, high) if high > LOWEST else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue  # in use, or connections of a closed listener in TIME_WAIT
            return sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def refused_port() -> int:
    """A 127.0.0.1 TCP port where nothing listens, so that a connect is refused."""
    return free_port()
