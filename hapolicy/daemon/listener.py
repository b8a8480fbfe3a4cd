"""The daemon's listening sockets: bind them, apply a reload's settings, clean up after them.

`Listeners` holds one `Listener` per address of every pool. The master binds them before it
forks and keeps them for the workers it starts later. A reload binds the addresses that are
new before any new worker starts (a failure keeps the running configuration), applies the
backlog and a unix socket's mode, and closes the addresses that went away: the retiring workers
close their own copies at once, so the address is closed when the last of them did. At exit a
unix socket is removed only while it is still ours: a successor that already bound the same
path keeps its own.

A unix socket's directory may be another user's (Postfix's): its file is made, given its mode,
changed by a reload and checked before removal by unixsocket.py, never through a path that
user could have replaced with a symlink.

Sockets passed by systemd (socket activation, activation.py) are adopted instead of bound:
the master keeps them all its life (a reload that drops an address and a later one that takes
it again use the same socket), and never removes a passed unix socket; a passed socket that
matches no listen address at start is an error.

In an upgrade in place the new master adopts the sockets the old one passed (handover.py) the
same way: one that systemd had passed stays systemd's; one the old master bound becomes the new
master's, which removes its unix socket file at exit while it is still the one the old master
made; one that matches no address is closed. The old master, once the new one serves, closes
its copies and removes nothing (`hand_over`).
"""

from __future__ import annotations

import contextlib
import os
import socket

from hapolicy.base.log import Logger
from hapolicy.base.unixsocket import Identity, bind_unix, chmod_if_ours, is_ours
from hapolicy.config.parsers import split_listen
from hapolicy.config.records import DaemonConfig
from hapolicy.daemon.activation import ActivationError, describe, find_passed, passed_sockets
from hapolicy.daemon.chores import remove_stale_socket, unlink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hapolicy.daemon.handover import Handed


class Listener:
    """The socket the workers accept on (None once closed)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.path = split_listen(address)[2]
        self.sock: socket.socket | None = None
        self.identity: Identity | None = None  # of a unix socket's file we made
        self.passed = False  # systemd's socket: Listeners keeps it open, never removes it
        self.inherited = False  # from the old master of an upgrade: a failed start keeps its file

    def adopt(self, sock: socket.socket, config: DaemonConfig,
              handed: Handed | None = None) -> None:
        """Listen on a socket passed by systemd, or by the old master of an upgrade (handed),
        instead of binding one."""
        sock.listen(config.backlog)
        self.sock = sock
        self.passed = handed is None or handed.systemd
        if handed is not None:
            handed.take()
            self.identity = handed.identity
            self.inherited = True

    def bind(self, config: DaemonConfig) -> None:
        """Bind and listen; raises OSError as the kernel says."""
        host, port, path = split_listen(self.address)
        if path:
            remove_stale_socket(path)
            sock, self.identity = bind_unix(path, config.socket_mode, backlog=config.backlog)
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

    def apply(self, old: DaemonConfig, new: DaemonConfig, log: Logger) -> None:
        """A reload's backlog and socket mode."""
        if self.sock is None:
            return
        try:
            if self.path and not self.passed and new.socket_mode != old.socket_mode:
                if not chmod_if_ours(self.path, new.socket_mode, self.identity):
                    log.warning(f"reload: {self.address} is no longer our socket: "
                                "its mode is left as it is")
            if new.backlog != old.backlog:
                self.sock.listen(new.backlog)
        except OSError as exc:
            log.warning(f"reload: cannot apply the listener settings: {exc.strerror}")

    def close(self) -> None:
        if self.sock is not None and not self.passed:
            self.sock.close()
        self.sock = None

    def let_go(self) -> None:
        """Close our copy, systemd's too, and remove nothing: the new master of an upgrade
        has the socket."""
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def cleanup_quietly(self) -> None:
        """A start that failed: close, and remove a unix socket that is still ours (not one
        the old master of an upgrade still serves on), without logging."""
        self.close()
        if self.path and not self.inherited and is_ours(self.path, self.identity):
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def cleanup(self, log: Logger) -> None:
        """Close, and remove a unix socket that is still ours."""
        self.close()
        if self.path and is_ours(self.path, self.identity):  # ours, not a successor's
            unlink(self.path, log)


class Listeners:
    """The listeners of every address the pools listen on, by address."""

    def __init__(self) -> None:
        self.by_address: dict[str, Listener] = {}
        self.passed: list[socket.socket] = []  # by systemd, kept open for the master's life

    def sockets(self) -> dict[str, socket.socket]:
        """The open sockets by address, for a new worker."""
        return {a: l.sock for a, l in self.by_address.items() if l.sock is not None}

    def bind(self, config: DaemonConfig, handed: Sequence[Handed] = ()) -> None:
        """Bind every address, or adopt the socket systemd or the old master of an upgrade
        (handed) passed for it; raises ListenError `cannot listen on ADDR: why` (none kept),
        ActivationError for a socket systemd passed that cannot be used or matches no
        address. A socket the old master had bound that no address takes is left untaken
        (the handover closes it)."""
        by_sock = {id(h.sock): h for h in handed}
        self.passed = passed_sockets() + [h.sock for h in handed]
        self.by_address = self._bind_new(config.addresses, config, by_sock)
        unused = self._unused_passed([])
        for sock in unused:  # systemd's, for an address a reload dropped: kept, as it was
            if id(sock) in by_sock and by_sock[id(sock)].systemd:
                by_sock[id(sock)].take()
        self.passed = [s for s in self.passed if id(s) not in by_sock or by_sock[id(s)].systemd]
        unused = [s for s in unused if id(s) not in by_sock]
        if unused:
            for listener in self.by_address.values():
                listener.cleanup_quietly()
            self.by_address = {}
            raise ActivationError(f"socket passed by systemd on {describe(unused[0])} matches "
                                  f"no listen address ({', '.join(config.addresses)})")

    def adopted(self) -> list[str]:
        """The addresses that listen on a socket passed by systemd."""
        return [a for a, listener in self.by_address.items() if listener.passed]

    def _unused_passed(self, more: list[Listener]) -> list[socket.socket]:
        used = {id(listener.sock) for listener in [*self.by_address.values(), *more]}
        return [sock for sock in self.passed if id(sock) not in used]

    def _bind_new(self, addresses: list[str], config: DaemonConfig,
                  handed: Mapping[int, Handed] | None = None) -> dict[str, Listener]:
        """A listener per address, bound or adopting a passed socket (handed: what the old
        master of an upgrade said of it, by id of the socket)."""
        bound: dict[str, Listener] = {}
        for address in addresses:
            listener = Listener(address)
            try:
                sock = find_passed(address, self._unused_passed(list(bound.values())))
                if sock is not None:
                    listener.adopt(sock, config, (handed or {}).get(id(sock)))
                else:
                    listener.bind(config)
            except OSError as exc:
                for other in bound.values():
                    other.cleanup_quietly()
                raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
            bound[address] = listener
        return bound

    def add_new(self, old: DaemonConfig, new: DaemonConfig, log: Logger) -> None:
        """Before a reload's workers start: bind the new addresses, apply the settings of the
        kept ones. Raises ListenError (nothing changed) when a new address cannot be bound."""
        added = self._bind_new([a for a in new.addresses if a not in self.by_address], new)
        for listener in self.by_address.values():
            listener.apply(old, new, log)
        self.by_address.update(added)
        for address in added:
            log.notice(f"reload: listening on {address}")

    def remove_gone(self, new: DaemonConfig, log: Logger) -> None:
        """After the old workers were told to retire: close the addresses no pool wants."""
        for address in [a for a in self.by_address if a not in new.addresses]:
            self.by_address.pop(address).cleanup(log)
            log.notice(f"reload: no longer listening on {address}")

    def close(self) -> None:
        for listener in self.by_address.values():
            listener.close()

    def hand_over(self) -> None:
        """The new master of an upgrade serves: close every socket, remove nothing."""
        for listener in self.by_address.values():
            listener.let_go()
        for sock in self.passed:
            sock.close()
        self.by_address, self.passed = {}, []

    def cleanup(self, log: Logger) -> None:
        for listener in self.by_address.values():
            listener.cleanup(log)

    def undo(self) -> None:
        """A start that failed: close every socket, remove the files this start made."""
        for listener in self.by_address.values():
            listener.cleanup_quietly()


class ListenError(Exception):
    """An address could not be bound: one line, `cannot listen on ADDR: why`."""
