"""The control socket (--control PATH): one command line in, one answer out, closed.

The master binds a unix stream socket at PATH (daemon/monitorsockets.py: `bind_control`), mode 0600
and owned by its own user (root when it starts as root), or mode 0660 and group --control-group,
keeps it open through reloads and removes the file at exit while it is still ours. The monitor
(daemon/monitor.py), which runs as --user, serves it (`ControlServer`) in its event loop, never
blocking it: a connection sends one line (at most MAX_LINE bytes), gets the answer of that command
(commands.py) and is closed. A longer line, or a client that has not sent its line within
HEAD_SECONDS, gets a one-line `error: ...` and is closed; at most MAX_CONNECTIONS at once, a new one
taking the place of the oldest without a whole line (the connection handling is oneshot.py's, shared
with /metrics). While no monitor runs (a reload replaces it), connections wait in the backlog.

One command takes more than its line: `ask [--dry-run] POOL` (ask.py) is followed by a request,
`name=value` lines ended by an empty line (or the client's end of input), bounded as a live
request is (MAX_REQUEST_BYTES and the limits of base/protocol.py), so the command line keeps
its MAX_LINE and a connection sends at most MAX_ASK bytes. Its answer may come later (a `Later`,
oneshot.py): when the pool has answered, within the pool's total timeout.

The peer is checked with SO_PEERCRED (the uid and gid of the process that connected): root,
the socket's owner (the master's user, not the monitor's) and members of --control-group are
let in; anyone else gets `error: not allowed`. Bad input is answered, never raised: the monitor
is not affected by it.
"""

from __future__ import annotations

import grp
import pwd
import socket
import struct

from hapolicy.base.protocol import MAX_REQUEST_BYTES, Request, RequestFramer
from hapolicy.monitor.oneshot import HEAD_SECONDS, Later, OneShotServer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger

MAX_LINE = 4096
MAX_ASK = MAX_LINE + 1 + MAX_REQUEST_BYTES + 1  # ask's line and request; one more is too long
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlServer(OneShotServer):
    """Serves the control socket `sock` (daemon/monitorsockets.py) in `loop`; `command(line)`
    gives the answer of one command."""

    what = "control socket"
    max_request = MAX_ASK

    def __init__(self, loop: EventLoop, sock: socket.socket, owner: int, gid: int,
                 command: Callable[[str], str], log: Logger,
                 ask: Callable[[str, Request], str | Later] | None = None) -> None:
        self.command = command
        self.ask = ask  # the answer of `ask` (its line, its request); None: no such command
        self.owner = owner  # the uid let in besides root: the master's, who owns the file
        self.gid = gid  # --control-group's, or -1
        super().__init__(sock, loop, log)

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

    def answer(self, data: bytes) -> bytes | Later | None:
        line, newline, rest = data.partition(b"\n")
        if len(line) > MAX_LINE:
            return self.too_long()
        if not newline:
            return None
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return b"error: not an ASCII line\n"
        try:
            if self.ask is not None and text[:4].lower() in ("ask", "ask ", "ask\t"):
                request = ask_request(rest)
                if request is None:
                    return None  # read on
                answer = self.ask(text, request)
                return answer if isinstance(answer, Later) else answer.encode()
            return self.command(text).encode()
        except Exception as exc:  # noqa: BLE001 - a bug in a command must not stop the monitor
            self.log.error(f"control socket: command {text[:60]!r} failed: {exc!r}")
            return b"error: internal error\n"

    def at_end(self, data: bytes) -> bytes | Later | None:
        # `printf status | socat - UNIX:PATH`: a last line; and an ask's request ended there
        return self.answer(data + b"\n") or self.answer(data + b"\n\n")

    def too_long(self) -> bytes:
        return f"error: line longer than {MAX_LINE} bytes\n".encode()

    def too_slow(self) -> bytes:
        return (f"error: no command line (for ask: no request ended by an empty line) within "
                f"{HEAD_SECONDS:g}s\n").encode()


def ask_request(rest: bytes) -> Request | None:
    """The request that follows an ask's line, framed as a live one (refused with its error
    when over a limit); None while it is not whole."""
    found = RequestFramer().feed(rest, 1)
    if found:
        return found[0]
    if len(rest) > MAX_REQUEST_BYTES:
        return Request(b"", f"request larger than {MAX_REQUEST_BYTES} bytes")
    return None
