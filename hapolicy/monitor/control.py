"""The control socket (--control PATH): one command line in, one answer out, closed.

The master binds a unix stream socket at PATH (`bind_control`), mode 0600 and owned by its own
user (root when it starts as root), or mode 0660 and group --control-group (made by
unixsocket.py: no chmod or chown through a path another user could replace); it keeps it open
through reloads and removes the file at exit while it is still ours (`ControlSocket`). The
monitor (monitor.py), which runs as --user, serves it (`ControlServer`) in its event loop,
never blocking it: a connection sends one line (at most MAX_LINE bytes), gets the answer of
that command (commands.py) and is closed. A longer line, or a client that has not sent its
line within HEAD_SECONDS, gets a one-line `error: ...` and is closed; at most MAX_CONNECTIONS
at once, a new one taking the place of the oldest without a whole line (the connection
handling is oneshot.py's, shared with /metrics). While no monitor runs (a reload replaces
it), connections wait in the backlog.

The peer is checked with SO_PEERCRED (the uid and gid of the process that connected): root,
the socket's owner (the master's user, not the monitor's) and members of --control-group are
let in; anyone else gets `error: not allowed`. Bad input is answered, never raised: the monitor
is not affected by it.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct

from hapolicy.base.unixsocket import Identity, bind_unix, is_ours
from hapolicy.config.records import ConfigError
from hapolicy.daemon.chores import remove_stale_socket, unlink
from hapolicy.monitor.oneshot import HEAD_SECONDS, MAX_CONNECTIONS, OneShotServer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.config.records import Config

MAX_LINE = 4096
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def group_id(group: str) -> int:
    """The gid of --control-group (a name or a number); -1 for none. KeyError if unknown."""
    if not group:
        return -1
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


class ControlSocket:
    """The master's listening socket at `path`, its owner and group: what the monitor serves."""

    def __init__(self, sock: socket.socket, path: str, owner: int, gid: int,
                 identity: Identity | None = None) -> None:
        self.sock = sock
        self.path = path
        self.owner = owner  # the uid let in besides root: the master's, who owns the file
        self.gid = gid
        self.identity = identity  # of its file (unixsocket.py)

    def close(self, log: Logger | None = None, remove: bool = True) -> None:
        """Close it; in the master, also remove its file while it is still ours."""
        if self.sock.fileno() >= 0:
            self.sock.close()
            if remove and is_ours(self.path, self.identity):
                unlink(self.path, log)


def _bind(path: str, gid: int) -> tuple[socket.socket, Identity]:
    remove_stale_socket(path, f"control socket {path}")
    sock, identity = bind_unix(path, 0o600 if gid < 0 else 0o660, gid, MAX_CONNECTIONS)
    sock.setblocking(False)
    return sock, identity


def bind_control(config: Config) -> ControlSocket:
    """The master's control socket at config.control, bound at start with the other early
    checks; ConfigError (exit 2) when it cannot be made."""
    try:
        gid = group_id(config.control_group)
    except KeyError:
        raise ConfigError(f"control group {config.control_group!r} does not exist") from None
    directory = os.path.dirname(config.control) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"control socket {config.control}: no directory {directory}")
    try:
        sock, identity = _bind(config.control, gid)
    except OSError as exc:
        raise ConfigError(f"control socket {config.control}: {exc.strerror or exc}") from None
    return ControlSocket(sock, config.control, os.geteuid(), gid, identity)


class ControlServer(OneShotServer):
    """Serves a ControlSocket in `loop`; `command(line)` gives the answer of one command."""

    what = "control socket"
    max_request = MAX_LINE

    def __init__(self, loop: EventLoop, listening: ControlSocket, command: Callable[[str], str],
                 log: Logger) -> None:
        self.command = command
        self.owner = listening.owner
        self.gid = listening.gid
        super().__init__(listening.sock, loop, log)

    def allowed(self, uid: int, gid: int) -> bool:
        """root, the socket's owner, or a member of --control-group."""
        if uid == 0 or uid == self.owner:
            return True
        if self.gid < 0:
            return False
        if gid == self.gid:
            return True
        try:
            name = pwd.getpwuid(uid).pw_name
            return name in grp.getgrgid(self.gid).gr_mem
        except KeyError:
            return False

    def admit(self, sock: socket.socket) -> bytes | None:
        _, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                    _UCRED.size))
        if self.allowed(uid, gid):
            return None
        self.log.warning(f"control socket: uid {uid} gid {gid} not allowed")
        return b"error: not allowed\n"

    def answer(self, data: bytes) -> bytes | None:
        line, newline, _ = data.partition(b"\n")
        if not newline:
            return None
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return b"error: not an ASCII line\n"
        try:
            return self.command(text).encode()
        except Exception as exc:  # noqa: BLE001 - a bug in a command must not stop the monitor
            self.log.error(f"control socket: command {text[:60]!r} failed: {exc!r}")
            return b"error: internal error\n"

    def at_end(self, data: bytes) -> bytes | None:
        return self.answer(data + b"\n")  # `printf status | socat - UNIX:PATH`: a last line

    def too_long(self) -> bytes:
        return f"error: line longer than {MAX_LINE} bytes\n".encode()

    def too_slow(self) -> bytes:
        return f"error: no command line within {HEAD_SECONDS:g}s\n".encode()
