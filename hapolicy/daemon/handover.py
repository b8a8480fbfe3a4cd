"""The protocol between the old master and the new one in an upgrade in place (SIGUSR2), as
childproto.py is the master's with its children: what the old one passes, what the new one
says back. upgrade.py is the old master's side; the new master takes what `Handover` holds.

The old master starts the program on disk with one more variable in its environment,
HAPOLICY_UPGRADE=FD: FD is a memfd that holds one JSON document, the handover:

    {"from": PID, "status": FD, "stderr": FD,
     "sockets": [{"fd": FD, "role": "listen", "address": "127.0.0.1:10040",
                  "systemd": false, "identity": [DEV, INO]}, ...],
     "tables": {...}}

Every FD in it is open in the new program. `sockets` are every listening socket the old master
holds: the policy listeners (role `listen`; `systemd`: passed to the old master by socket
activation, never removed; `identity`: of a unix socket's file the old master made, which the
new one removes at exit while it is still that file), the control socket (`control`, its
`address` the path) and the metrics socket (`metrics`). `tables` is the health tables' state
(tables/snapshot.py). `status` is a pipe to the old master: the new one writes READY once its
first worker accepts, or FAILED and one line why when it cannot start, and closes it.
`stderr` is the old master's standard error: the new program's own is a pipe to the old master
until it has taken its sockets (so that what a program that cannot even start says, say the
traceback of a broken install, reaches the old master's log), then `restore_stderr` puts the
real one back, before the new master forks anything.

The document comes from our parent, root, through a descriptor no path names; it is checked
all the same (each descriptor a listening stream socket of the family its role wants, sizes
bounded): a bad one is one line, exit status 2, as a bad LISTEN_FDS is.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

from hapolicy.config.values import ConfigError
from hapolicy.daemon.activation import STREAM_FAMILIES, listening_socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import MutableMapping

ENVIRONMENT = "HAPOLICY_UPGRADE"
READY = b"ready\n"
FAILED = b"failed "
MAX_DOCUMENT = 16 << 20  # bytes: the tables of thousands of services fit many times
MAX_WHY = 4096  # bytes of what the new program says of its failure
LISTEN, CONTROL, METRICS = "listen", "control", "metrics"
MAX_FD = (1 << 31) - 1


class HandoverError(ConfigError):
    """The handover cannot be used: one line, exit status 2."""


class Handed:
    """One listening socket the old master passed."""

    def __init__(self, sock: socket.socket, role: str, address: str, systemd: bool,
                 identity: tuple[int, int] | None) -> None:
        self.sock = sock
        self.role = role
        self.address = address
        self.systemd = systemd
        self.identity = identity
        self.taken = False

    def take(self) -> socket.socket:
        self.taken = True
        return self.sock


def write_document(document: dict) -> int:
    """A descriptor of a new memfd holding the document (inheritable: the new program's)."""
    fd = os.memfd_create("hapolicy-upgrade", 0)
    try:
        data = json.dumps(document).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tell(fd: int, message: bytes) -> None:
    """Write a status message (lost with an old master that is gone)."""
    with contextlib.suppress(OSError):
        os.write(fd, message[:MAX_WHY])


class Handover:
    """What the new master received: sockets by role, the tables' state, the status pipe."""

    def __init__(self, from_pid: int, status: int, stderr: int, handed: list[Handed],
                 tables: object) -> None:
        self.from_pid = from_pid
        self.status = status  # -1 once closed
        self.stderr = stderr  # -1 once restored
        self.handed = handed
        self.tables = tables

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Handover | None:
        """The handover this program was started with (the variable removed), or None."""
        env = os.environ if environ is None else environ
        text = env.pop(ENVIRONMENT, "")
        if not text:
            return None
        if not (text.isascii() and text.isdigit() and int(text) <= MAX_FD):
            raise HandoverError(f"{ENVIRONMENT} {text[:20]!r}: expected a descriptor")
        document = _read_document(int(text))
        try:
            numbers = (document["from"], document["status"], document["stderr"])
            if not all(_number(n) for n in numbers):
                raise TypeError
            handed = [_handed(entry) for entry in document["sockets"]]
        except (KeyError, TypeError):
            raise HandoverError(f"{ENVIRONMENT}: not a handover document") from None
        from_pid, status, stderr = numbers
        for fd in (status, stderr):
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise HandoverError(f"{ENVIRONMENT}: descriptor {fd}: {exc.strerror}") from None
        return cls(from_pid, status, stderr, handed, document.get("tables"))

    def listeners(self) -> list[Handed]:
        return [h for h in self.handed if h.role == LISTEN]

    def take(self, role: str, address: str) -> Handed | None:
        """The socket of a role (control, metrics) if the old master had it at address."""
        for handed in self.handed:
            if handed.role == role and handed.address == address and not handed.taken:
                handed.take()
                return handed
        return None

    def untaken(self) -> list[str]:
        """Close the passed sockets nothing took; their descriptions."""
        gone = []
        for handed in self.handed:
            if not handed.taken:
                handed.sock.close()
                gone.append(f"{handed.role} {handed.address}")
        return gone

    def restore_stderr(self) -> None:
        if self.stderr >= 0:
            os.dup2(self.stderr, 2)
            os.close(self.stderr)
            self.stderr = -1

    def ready(self) -> None:
        self._say(READY)

    def failed(self, why: str) -> None:
        self._say(FAILED + why.replace("\n", " ").encode(errors="replace") + b"\n")

    def _say(self, message: bytes) -> None:
        if self.status >= 0:
            tell(self.status, message)
            os.close(self.status)
            self.status = -1

    def close_in_child(self) -> None:
        """In a forked child: none of this is a worker's or the monitor's."""
        for fd in (self.status, self.stderr):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.status = self.stderr = -1


def _read_document(fd: int) -> dict:
    try:
        os.set_inheritable(fd, False)
        chunks, size = [], 0
        while size <= MAX_DOCUMENT:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        os.close(fd)
    except OSError as exc:
        raise HandoverError(f"{ENVIRONMENT}: cannot read descriptor {fd}: "
                            f"{exc.strerror}") from None
    if size > MAX_DOCUMENT:
        raise HandoverError(f"{ENVIRONMENT}: larger than {MAX_DOCUMENT} bytes")
    try:
        document = json.loads(b"".join(chunks))
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise HandoverError(f"{ENVIRONMENT}: not a handover document")
    return document


def _number(value: object) -> bool:
    """A pid or a descriptor: an int the kernel's calls take."""
    return type(value) is int and 0 <= value <= MAX_FD


def _handed(entry: dict) -> Handed:
    fd, role, address = entry["fd"], entry["role"], entry["address"]
    identity = entry.get("identity")
    if (not _number(fd) or role not in (LISTEN, CONTROL, METRICS)
            or not isinstance(address, str)):
        raise TypeError
    if identity is not None:
        if not (isinstance(identity, list) and len(identity) == 2
                and all(type(n) is int for n in identity)):
            raise TypeError
        identity = (identity[0], identity[1])
    return Handed(_listening(fd, role), role, address, entry.get("systemd") is True, identity)


def _listening(fd: int, role: str) -> socket.socket:
    """The listening stream socket at fd, of the family its role wants; HandoverError when
    it is not one."""
    families = ((socket.AF_UNIX,) if role == CONTROL else
                (socket.AF_INET, socket.AF_INET6) if role == METRICS else STREAM_FAMILIES)
    try:
        return listening_socket(fd, families)
    except ValueError as exc:
        kind = f" of the {role} kind" if str(exc).endswith("listening stream socket") else ""
        raise HandoverError(f"{ENVIRONMENT}: {exc}{kind}") from None
