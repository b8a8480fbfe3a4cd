"""The unix socket files the master makes as root, in a directory another user may write.

A socket's directory may belong to another user (a chrooted Postfix's
/var/spool/postfix/private belongs to postfix), who can replace any name in it at any moment,
with a symlink too. So root never chmods or chowns a path there: it changes the file through
a descriptor of it (O_PATH, a symlink opened as itself, never followed), once it has checked
that the file is its own socket's, and through /proc/self/fd/N, which names that inode
whatever happens at the path meanwhile.

`bind_unix(path, mode, gid, backlog)` binds the socket at path itself: bind(2) creates the file
(it fails if anything, a symlink too, is there), under umask 0177, so it is born 0600 and ours
and nobody else can connect to it yet. It listens, then checks that the file at path is still
that socket: a probe socket of ours, with an autobound name of its own, connects through the
file's descriptor and must come out of our socket's accept queue. Only then does it give the
file its group and mode through the descriptor. A file replaced in between (the inotify
watcher's race) fails the bind with one line: root touches nothing of it. It returns the socket
and the (device, inode) of its file, the identity that the two other functions check. The
socket keeps its real path as its name (ss(8), lsof(8)), and there is no temporary file: this
is why it binds in place rather than in a private directory and renames.

`chmod_if_ours(path, mode, identity)` changes the mode of the file at path only while it is
still that socket (O_PATH|O_NOFOLLOW, fstat, the identity), through its descriptor. A reload
does this rather than bind a new socket: the workers' copies of the listening socket, and the
connections waiting in its backlog, stay as they are. `is_ours(path, identity)` is the check
before removing it (by name: unlink(2) never follows a symlink).

Linux only: /proc must be mounted (the error says so).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

Identity = tuple[int, int]  # (st_dev, st_ino) of a socket file we made


def through(fd: int) -> str:
    """The /proc/self/fd path of a descriptor: what a path operation on it acts on."""
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(errno.ENOENT, "/proc is not mounted")
    return f"/proc/self/fd/{fd}"


def bind_unix(path: str, mode: int, gid: int = -1,
              backlog: int = 128) -> tuple[socket.socket, Identity]:
    """A listening unix stream socket at path, mode `mode`, group gid (-1: ours); raises
    OSError (one line), with nothing left at path that root made."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(backlog)
        fd = _open_if_bound_by(path, sock)
    except BaseException:
        sock.close()
        raise
    try:
        info = os.fstat(fd)
        try:
            if gid >= 0:
                os.chown(through(fd), -1, gid)
            os.chmod(through(fd), mode)
        except BaseException:
            sock.close()
            if is_ours(path, (info.st_dev, info.st_ino)):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
    finally:
        os.close(fd)
    return sock, (info.st_dev, info.st_ino)


def _open_if_bound_by(path: str, sock: socket.socket) -> int:
    """An O_PATH descriptor of the file at path if it is the one `sock` (listening) is bound
    to; OSError if it is not."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode) and _reaches(sock, through(fd)):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    raise OSError(errno.EEXIST, "its file was replaced by another at once (left as it is)")


def _reaches(sock: socket.socket, target: str) -> bool:
    """Whether a connection to target lands in sock's accept queue."""
    blocking = sock.getblocking()
    sock.setblocking(False)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.bind("")  # autobind: an abstract name of its own, to know it again
            probe.setblocking(False)
            try:
                probe.connect(target)
            except (ConnectionRefusedError, BlockingIOError):  # not listening; a full backlog
                return False
            while True:
                try:
                    accepted, _ = sock.accept()
                except BlockingIOError:
                    return False
                with accepted:
                    if accepted.getpeername() == probe.getsockname():
                        return True
    finally:
        sock.setblocking(blocking)


def chmod_if_ours(path: str, mode: int, identity: Identity | None) -> bool:
    """Set the mode of the socket file at path if it is still the one of identity; False
    (nothing changed) when it is not, or gone."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode) or (info.st_dev, info.st_ino) != identity:
            return False
        os.chmod(through(fd), mode)
        return True
    finally:
        os.close(fd)


def is_ours(path: str, identity: Identity | None) -> bool:
    """Whether the file at path (not followed) is the socket file of identity."""
    if identity is None:
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == identity
