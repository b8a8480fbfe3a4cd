"""systemd's socket activation, with the standard library: the listening sockets passed in.

`passed_sockets()` reads LISTEN_FDS and LISTEN_PID (LISTEN_FDNAMES is only for the log): when
LISTEN_PID is our pid, descriptors 3 .. 3+LISTEN_FDS-1 are ours, and the variables are removed
from the environment (nothing we start sees them). Each must be a listening stream socket;
anything else (LISTEN_FDS not a number, a descriptor that is not open, not a socket, not
listening) raises `ActivationError`, one line, exit status 2.

`find_passed()` picks the passed socket of one listen address by its getsockname(): the inet
address and port (a host name is resolved), or the unix path. `Listeners` (listener.py)
adopts it instead of binding: it never removes a passed unix socket (it is systemd's) and
keeps the passed sockets for the life of the master, through reloads.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from hapolicy.config.parsers import split_listen
from hapolicy.config.values import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import MutableMapping

FIRST_FD = 3  # SD_LISTEN_FDS_START
MAX_FDS = 1024


class ActivationError(ConfigError):
    """The sockets passed in cannot be used: one line; exit status 2."""


def passed_sockets(environ: MutableMapping[str, str] | None = None,
                   pid: int | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (none without LISTEN_FDS)."""
    env = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    fds_text = env.get("LISTEN_FDS", "")
    pid_text = env.get("LISTEN_PID", "")
    if not fds_text or (pid_text and pid_text != str(pid)):
        return []
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not fds_text.isdigit() or not 0 < int(fds_text) <= MAX_FDS:
        raise ActivationError(f"LISTEN_FDS {fds_text!r}: expected a number of sockets "
                              f"from 1 to {MAX_FDS}")
    return [_adopt(fd) for fd in range(FIRST_FD, FIRST_FD + int(fds_text))]


STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def listening_socket(fd: int, families: tuple[int, ...] = STREAM_FAMILIES) -> socket.socket:
    """The listening stream socket of one of `families` at a descriptor passed in (made not
    inheritable); ValueError `descriptor N is not ...` when it is not one (left open)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"descriptor {fd} is not a socket: {exc.strerror or exc}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or sock.family not in families or not listening:
        sock.detach()
        raise ValueError(f"descriptor {fd} is not a listening stream socket")
    sock.set_inheritable(False)
    return sock


def _adopt(fd: int) -> socket.socket:
    try:
        return listening_socket(fd)
    except ValueError as exc:
        hint = " (ListenStream= in the socket unit)" if "listening" in str(exc) else ""
        raise ActivationError(f"LISTEN_FDS: {exc}{hint}") from None


def describe(sock: socket.socket) -> str:
    """A passed socket's address as a listen address is written: HOST:PORT, [V6]:PORT, unix:."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return "unix:" + (name if isinstance(name, str) else repr(name))
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def _inet_addresses(host: str, port: int) -> set[tuple[ipaddress._BaseAddress, int]]:
    try:
        return {(ipaddress.ip_address(host.partition("%")[0]), port)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(ipaddress.ip_address(info[4][0].partition("%")[0]), port) for info in infos}


def find_passed(address: str, sockets: list[socket.socket]) -> socket.socket | None:
    """The socket among *sockets* that listens on *address*, or None."""
    host, port, path = split_listen(address)
    wanted = set() if path else _inet_addresses(host, port)
    for sock in sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            if path and name == path:
                return sock
        elif not path and (ipaddress.ip_address(name[0].partition("%")[0]), name[1]) in wanted:
            return sock
    return None
