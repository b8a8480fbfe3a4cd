"""The control socket (--control PATH): one command line in, one answer out, closed.

The master binds a unix stream socket at PATH (`bind_control`), mode 0600 and owned by its own
user (root when it starts as root), or mode 0660 and group --control-group; it keeps it open
through reloads and removes the file at exit (`ControlSocket`). The monitor (monitor.py), which
runs as --user, serves it (`ControlServer`) in its event loop, never blocking it: a connection
sends one line (at most MAX_LINE bytes), gets the answer of that command (commands.py) and is
closed. A longer line, or a client that has not sent its line within IDLE_SECONDS, gets a
one-line `error: ...` and is closed; beyond MAX_CONNECTIONS at once, a new connection is closed
at once. While no monitor runs (a reload replaces it), connections wait in the backlog.

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

from .config import ConfigError
from .daemon import remove_stale_socket, unlink
from .eventloop import EVENT_READ, EVENT_WRITE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from .config import Config
    from .eventloop import EventLoop, Timer
    from .log import Logger

MAX_LINE = 4096
IDLE_SECONDS = 5.0
MAX_CONNECTIONS = 16
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _Conn:
    __slots__ = ("data", "out", "sock", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""
        self.out = b""
        self.timer: Timer | None = None


def group_id(group: str) -> int:
    """The gid of --control-group (a name or a number); -1 for none. KeyError if unknown."""
    if not group:
        return -1
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


class ControlSocket:
    """The master's listening socket at `path`, its owner and group: what the monitor serves."""

    def __init__(self, sock: socket.socket, path: str, owner: int, gid: int) -> None:
        self.sock = sock
        self.path = path
        self.owner = owner  # the uid let in besides root: the master's, who owns the file
        self.gid = gid

    def close(self, log: Logger | None = None, remove: bool = True) -> None:
        """Close it; in the master, also remove its file."""
        if self.sock.fileno() >= 0:
            self.sock.close()
            if remove:
                unlink(self.path, log)


def _bind(path: str, gid: int) -> socket.socket:
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177 if gid < 0 else 0o117)  # no moment with a wider mode
    try:
        sock.bind(path)
        if gid >= 0:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)
        sock.listen(MAX_CONNECTIONS)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def bind_control(config: Config) -> ControlSocket:
    """The master's control socket at config.control; ConfigError when it cannot be made."""
    try:
        gid = group_id(config.control_group)
    except KeyError:
        raise ConfigError(f"control group {config.control_group!r} does not exist") from None
    try:
        sock = _bind(config.control, gid)
    except OSError as exc:
        raise ConfigError(f"control socket {config.control}: {exc.strerror}") from None
    return ControlSocket(sock, config.control, os.geteuid(), gid)


class ControlServer:
    """Serves a ControlSocket in `loop`; `answer(line)` gives the answer of one command."""

    def __init__(self, loop: EventLoop, listening: ControlSocket, answer: Callable[[str], str],
                 log: Logger) -> None:
        self.loop = loop
        self.answer = answer
        self.log = log
        self.owner = listening.owner
        self.gid = listening.gid
        self.conns: dict[int, _Conn] = {}
        self.sock = listening.sock
        loop.add(self.sock, EVENT_READ, self._accept)

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

    def _accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning(f"control socket: cannot accept: {exc.strerror}")
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[sock.fileno()] = conn
            _, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _UCRED.size))
            if not self.allowed(uid, gid):
                self.log.warning(f"control socket: uid {uid} gid {gid} not allowed")
                self._reply(conn, "error: not allowed\n")
                continue
            conn.timer = self.loop.call_later(IDLE_SECONDS, lambda c=conn: self._idle(c))
            self.loop.add(sock, EVENT_READ, lambda m, c=conn: self._read(c))

    def _idle(self, conn: _Conn) -> None:
        conn.timer = None
        self._reply(conn, f"error: no command line within {IDLE_SECONDS:g}s\n")

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_LINE + 1 - len(conn.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.data += data
        line, newline, _ = conn.data.partition(b"\n")
        if newline:
            self._reply(conn, self._run(line))
        elif len(conn.data) > MAX_LINE:
            self._reply(conn, f"error: line longer than {MAX_LINE} bytes\n")

    def _run(self, line: bytes) -> str:
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return "error: not an ASCII line\n"
        try:
            return self.answer(text)
        except Exception as exc:  # noqa: BLE001 - a bug in a command must not stop the master
            self.log.error(f"control socket: command {text[:60]!r} failed: {exc!r}")
            return "error: internal error\n"

    def _reply(self, conn: _Conn, answer: str) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.out = answer.encode()
        if conn.sock.fileno() in self.loop.files:
            self.loop.remove(conn.sock)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)
            return
        if conn.timer is None:  # a reader that never reads is closed too
            conn.timer = self.loop.call_later(IDLE_SECONDS, lambda: self._close(conn))
        if conn.sock.fileno() not in self.loop.files:
            self.loop.add(conn.sock, EVENT_WRITE, lambda m: self._write(conn))

    def _close(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        fd = conn.sock.fileno()
        if fd < 0:
            return
        if fd in self.loop.files:
            self.loop.remove(conn.sock)
        self.conns.pop(fd, None)
        conn.sock.close()


def check_control(config: Config) -> None:
    """ConfigError at start for a control setting that cannot work (before anything is bound)."""
    if not config.control:
        return
    try:
        group_id(config.control_group)
    except KeyError:
        raise ConfigError(f"control group {config.control_group!r} does not exist") from None
    directory = os.path.dirname(config.control) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"control socket {config.control}: no directory {directory}")
