"""The listening sockets the master binds for the monitor to serve: the control socket and the
metrics address.

Both are bound at start with the other early checks (before the master forks or detaches), so a
bad path, group or address, or a port in use, is a one-line error then; the master keeps them
open through reloads, and the monitor (daemon/monitor.py) serves them as --user: the control
socket with monitor/control.py's `ControlServer`, the metrics with monitor/metrics.py's
`MetricsServer`. The control socket is a unix socket made by base/unixsocket.py (mode 0600 and
owned by the master's user, or mode 0660 and group --control-group; no chmod or chown through a
path another user could replace); at exit its file is removed while it is still ours
(`ControlSocket.close`). In an upgrade in place the new master adopts the old one's control
socket (`adopt_control`) and metrics socket instead of binding them.
"""

from __future__ import annotations

import grp
import os
import socket

from hapolicy.base.log import Logger
from hapolicy.base.unixsocket import Identity, bind_unix, is_ours
from hapolicy.config.parsers import split_listen
from hapolicy.config.values import ConfigError
from hapolicy.daemon.chores import remove_stale_socket, unlink
from hapolicy.daemon.listener import ListenError
from hapolicy.monitor.oneshot import MAX_CONNECTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.config.records import DaemonConfig
    from hapolicy.daemon.handover import Handed

METRICS_BACKLOG = 64


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


def bind_control(config: DaemonConfig) -> ControlSocket:
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


def adopt_control(config: DaemonConfig, handed: Handed) -> ControlSocket:
    """The control socket the old master of an upgrade passed, for config.control."""
    try:
        gid = group_id(config.control_group)
    except KeyError:
        raise ConfigError(f"control group {config.control_group!r} does not exist") from None
    return ControlSocket(handed.sock, config.control, os.geteuid(), gid, handed.identity)


def bind_metrics(address: str) -> socket.socket:
    """The listening socket of --metrics-listen; ListenError (one line) when it cannot be."""
    host, port, _ = split_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(METRICS_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on metrics address {address}: "
                          f"{exc.strerror or exc}") from None
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock
