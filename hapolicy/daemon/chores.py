"""The chores of a Unix daemon: pidfile, detaching, privileges, descriptors, a stale unix socket.

Plain functions, used by the master before and after it forks its workers.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import select
import socket
import stat
from collections.abc import Iterator

from hapolicy.base.log import Logger
from hapolicy.base.safefile import replace_file
from hapolicy.config.values import ConfigError

READY_TIMEOUT = 30.0  # --daemonize: how long the parent waits for the daemon's word
PID_MAX = 1 << 22  # the kernel's largest pid_max (/proc/sys/kernel/pid_max)
FD_RESERVE_MIN = 32  # descriptors a worker keeps for backend sockets, syslog and its own


def preload_lazy_modules() -> None:
    """Import in the master, before any fork, what the workers and the monitor would import
    lazily: after the privilege drop the interpreter's and the package's files may be
    unreadable (a Python or a venv under /root), and a failed import kills the process.
    The modules that spawn mode loads import these only where needed, for its start time;
    the daemon's own modules import theirs at the top (prometheus_client: metrics.preload).
    tests/system/test_privsep_imports.py fails when a function a worker or the monitor may run
    imports a module that nothing imported before the fork."""
    import hashlib  # noqa: F401 - selection.py: hash balancing
    import random  # noqa: F401 - selection.py: least-latency
    import re  # noqa: F401 - outcome.py: fail-answer

    from hapolicy.request import (
        cache,  # noqa: F401 - assembly.py: a pool that caches (a HUP may add one)
        hedge,  # noqa: F401 - assembly.py: a pool that hedges (a HUP may add one)
    )

    "localhost".encode("idna")  # getaddrinfo of a str needs the idna codec


def unlink(path: str, log: Logger | None = None) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        (log or Logger()).warning(f"cannot remove {path}: {exc.strerror}")


def remove_stale_socket(path: str, what: str = "") -> None:
    """Remove a socket file left by a dead daemon; refuse if a live one still answers there,
    or if anything but a socket is there (a symlink too: it is never followed). what names
    the socket in the error (default: the listen address)."""
    what = what or f"listen address unix:{path}"
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)  # a symlink as itself
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConfigError(f"{what}: exists and is not a socket")
        probe.connect(f"/proc/self/fd/{fd}")  # the file checked, whatever is at path now
    except ConnectionRefusedError:
        # nobody listens: left by a daemon that was killed; removed while the name is still
        # the file checked (another one put there meanwhile is not ours to remove)
        with contextlib.suppress(FileNotFoundError):
            found, checked = os.lstat(path), os.fstat(fd)
            if (found.st_dev, found.st_ino) == (checked.st_dev, checked.st_ino):
                os.unlink(path)
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass  # a full backlog: someone listens
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from None
    finally:
        probe.close()
        os.close(fd)
    raise ConfigError(f"{what}: another process is listening there")


def resolve_ids(user: str, group: str) -> tuple[int, int] | None:
    """(uid, gid) for --user/--group, or None when neither is set; ConfigError if unknown."""
    if not user and not group:
        return None
    try:
        entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        raise ConfigError(f"user {user!r} does not exist") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"group {group!r} does not exist") from None
    return entry.pw_uid, gid


def check_may_switch_user(user: str, group: str) -> None:
    """Refuse at start, not in every worker, a --user/--group that needs root we lack."""
    ids = resolve_ids(user, group)
    if ids is None or os.geteuid() == 0:
        return
    if ids != (os.getuid(), os.getgid()):
        what = f"user {user!r}" if user else f"group {group!r}"
        raise ConfigError(f"cannot run the workers as {what}: the master is not root")


def drop_privileges(user: str, group: str) -> None:
    ids = resolve_ids(user, group)
    if ids is None:
        return
    uid, gid = ids
    if os.getuid() == uid and os.getgid() == gid:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def read_pid(path: str) -> int:
    """The pid in the pidfile at path; 0 when there is none (a symbolic link, a fifo or
    anything but a regular file is none: its directory may be writable by others), or when
    it is no pid (0, negative, over PID_MAX: os.kill would refuse it with OverflowError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        pid = int(os.read(fd, 64).strip() or 0)
    except (OSError, ValueError):
        return 0
    finally:
        os.close(fd)
    return pid if 0 < pid <= PID_MAX else 0


def check_pidfile(path: str, predecessor: int = 0) -> None:
    """Refuse to start when the pidfile names a live hapolicy (a stale one is ignored), but
    the old master of an upgrade (predecessor)."""
    pid = read_pid(path)
    if pid <= 0 or pid in (os.getpid(), predecessor):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"hapolicy" not in handle.read():
                return  # the pid was reused by another program
    except OSError:
        pass
    raise ConfigError(f"pidfile {path}: hapolicy is already running as pid {pid}")


def write_pidfile(path: str) -> None:
    """Write our pid at path, mode 0644, through a fresh temporary file (safefile.py)."""
    replace_file(path, f"{os.getpid()}\n".encode(), 0o644)


def daemonize() -> int:
    """Detach from the terminal: fork twice, new session, stdin to /dev/null.

    The first process waits until the daemon tells it is ready (`notify_ready`) and exits 0,
    or 1 if the daemon failed first, so that an init script knows the pidfile is written.
    Returns the fd to pass to notify_ready."""
    ready_r, ready_w = os.pipe()
    first = os.fork()
    if first:
        os.close(ready_w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(first, 0)
        word = b""
        with contextlib.suppress(OSError):
            if select.select([ready_r], [], [], READY_TIMEOUT)[0]:
                word = os.read(ready_r, 1)
        os._exit(0 if word == b"1" else 1)
    os.close(ready_r)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    return ready_w


def notify_ready(ready_w: int) -> None:
    """Tell the waiting parent that the daemon runs; stdout and stderr go to /dev/null."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    with contextlib.suppress(OSError):
        os.write(ready_w, b"1")
    os.close(ready_w)


def print_error(message: str) -> None:
    try:
        os.write(2, f"hapolicy: error: {message}\n".encode())
    except OSError:
        pass


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one (each client connection and each
    backend exchange holds one); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY and hard <= 1 << 20 else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def max_clients() -> int:
    """Client connections a worker takes: RLIMIT_NOFILE less a reserve (a quarter, at least
    FD_RESERVE_MIN) for backend sockets and the worker's own descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - max(FD_RESERVE_MIN, soft // 4))


@contextlib.contextmanager
def working_dir(path: str) -> Iterator[None]:
    """Run a block in path (where the daemon started: a relative -c FILE is read there)."""
    try:
        here = os.getcwd()
    except OSError:
        here = "/"
    try:
        os.chdir(path)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.chdir(here)
