"""The daemon's listening socket: bind it, apply a reload's settings to it, clean up after it.

The master binds once, before it forks, and keeps the socket for the workers it starts later;
a reload can change the backlog and a unix socket's mode, not the address (that needs a
restart). At exit a unix socket is removed only while it is still ours: a successor that
already bound the same path keeps its own.
"""

from __future__ import annotations

import contextlib
import os
import socket

from .config import Config, split_listen
from .daemon import remove_stale_socket, unlink
from .log import Logger


class Listener:
    """The socket the workers accept on (None once closed)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.path = split_listen(address)[2]
        self.sock: socket.socket | None = None
        self.inode = 0  # of a unix socket we made

    def bind(self, config: Config) -> None:
        """Bind and listen; raises OSError as the kernel says."""
        host, port, path = split_listen(self.address)
        if path:
            remove_stale_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                os.chmod(path, config.socket_mode)
                self.inode = os.stat(path).st_ino
            except BaseException:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
        sock.listen(config.backlog)
        sock.set_inheritable(False)
        self.sock = sock

    def apply(self, old: Config, new: Config, log: Logger) -> None:
        """A reload's backlog and socket mode."""
        if self.sock is None:
            return
        try:
            if self.path and new.socket_mode != old.socket_mode:
                os.chmod(self.path, new.socket_mode)
            if new.backlog != old.backlog:
                self.sock.listen(new.backlog)
        except OSError as exc:
            log.warning(f"reload: cannot apply the listener settings: {exc.strerror}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def cleanup(self, log: Logger) -> None:
        """Close, and remove a unix socket that is still ours."""
        self.close()
        if self.path and self.inode:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self.inode:  # ours, not a successor's
                    unlink(self.path, log)
