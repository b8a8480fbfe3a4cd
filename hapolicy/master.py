"""The daemon's master: bind, prefork, reap, respawn, recycle, reload on HUP, drain on TERM.

Modelled on gunicorn's arbiter and Postfix's master. The master binds the listening socket and
makes the shared tables before it forks; it stays root (workers drop privileges after fork), so
that it can remove its pidfile and unix socket at exit. Signal handlers only queue the signal
and wake the loop through `signal.set_wakeup_fd`. Process operations go through `ProcessOps`,
a thin seam that the unit tests replace.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import signal
import socket
import stat
import time
from typing import Callable

from .checks import Checker
from .config import Config, ConfigError, split_listen
from .eventloop import EVENT_READ, EventLoop
from .health import HealthTable
from .log import Logger
from .worker import MSG_RETIRING, Worker, set_title
from .workertable import WorkerTable

TABLE_SLOTS = 128
BOOT_SECONDS = 1.0  # a worker that dies sooner than this died at boot
THROTTLE_MAX = 30.0
KILL_GRACE = 5.0


class ProcessOps:
    """fork, waitpid and kill: the seam between the master's logic and the OS."""

    fork = staticmethod(os.fork)
    kill = staticmethod(os.kill)

    @staticmethod
    def reap() -> tuple[int, int]:
        """(pid, status) of one exited child, or (0, 0)."""
        try:
            return os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0, 0


class WorkerProcess:
    """The master's record of one worker."""

    def __init__(self, pid: int, slot: int, generation: int, pipe_r: int) -> None:
        self.pid = pid
        self.slot = slot
        self.generation = generation
        self.pipe_r = pipe_r
        self.started = time.monotonic()
        self.retiring = False


class Master:
    """Keeps `workers` accepting workers of the current configuration alive."""

    def __init__(self, config: Config, log: Logger, reload_config: Callable[[], Config] | None = None,
                 ops: ProcessOps | None = None) -> None:
        self.config = config
        self.log = log
        self.reload_config = reload_config
        self.ops = ops or ProcessOps()
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 0
        self.signals: list[int] = []
        self.stopping = ""  # "", "graceful" or "now"
        self.stop_deadline = 0.0
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.listener: socket.socket | None = None
        self.pid = os.getpid()

    # setup
    def bind(self) -> None:
        host, port, path = split_listen(self.config.listen)
        if path:
            _remove_stale_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, self.config.socket_mode)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(self.config.backlog)
        sock.set_inheritable(False)
        self.listener = sock

    def start(self) -> None:
        """After bind (and daemonize): tables, signals, the first workers."""
        set_title("hapolicy: master")
        self.pid = os.getpid()
        self.table = WorkerTable(TABLE_SLOTS)
        self.health = HealthTable(len(self.config.services))
        self.loop = EventLoop()
        self.wake_r, wake_w = os.pipe()
        for fd in (self.wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        self.wake_w = wake_w
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        self.loop.add(self.wake_r, EVENT_READ, self._drain_wake)
        self.checker = Checker(self.loop, self.config, self.health, self.log)
        self.checker.start()
        self.log.notice(f"master started: listening on {self.config.listen}, "
                        f"{self.config.workers} workers, {len(self.config.services)} services")

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _drain_wake(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # the loop
    def run(self) -> int:
        while True:
            self.handle_signals()
            self.reap()
            if self.stopping:
                if not self.workers:
                    break
                if time.monotonic() >= self.stop_deadline:
                    self.kill_all(signal.SIGKILL)
                    self.stop_deadline = time.monotonic() + KILL_GRACE
            else:
                self.maintain()
            self.loop.run_once(1.0)
        self.log.notice("master stopped")
        return 0

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGTERM:
                self.stop("graceful")
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.stop("now")

    def stop(self, how: str) -> None:
        if self.stopping == "now" or self.stopping == how:
            return
        self.log.notice("stopping: " + ("draining in-flight requests" if how == "graceful"
                                        else "at once"))
        self.stopping = how
        self.checker.stop()
        self.close_listener()
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        self.kill_all(sig)
        grace = self.config.drain_timeout + KILL_GRACE if how == "graceful" else KILL_GRACE
        self.stop_deadline = time.monotonic() + grace

    def close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def kill_all(self, sig: int) -> None:
        for pid in list(self.workers):
            self._kill(pid, sig)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            self.ops.kill(pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        while True:
            pid, status = self.ops.reap()
            if not pid:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._forget(worker)
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - worker.started
            if self.stopping or worker.retiring:
                continue
            self.log.warning(f"worker {pid} exited with status {code} after {lived:.1f}s: replacing it")
            if lived < BOOT_SECONDS:
                self.boot_failures += 1
                pause = min(2.0 ** (self.boot_failures - 1), THROTTLE_MAX)
                self.next_spawn = time.monotonic() + pause
                self.log.error(f"workers die at boot ({self.boot_failures} in a row): "
                               f"next start in {pause:g}s")
            else:
                self.boot_failures = 0

    def _forget(self, worker: WorkerProcess) -> None:
        self.loop.remove(worker.pipe_r)
        os.close(worker.pipe_r)
        self.table.clear(worker.slot)

    def maintain(self) -> None:
        active = [w for w in self.workers.values() if not w.retiring]
        missing = self.config.workers - len(active)
        while missing > 0 and time.monotonic() >= self.next_spawn:
            if not self.spawn():
                break
            missing -= 1
            if self.boot_failures:
                self.next_spawn = time.monotonic() + min(2.0 ** self.boot_failures, THROTTLE_MAX)

    def spawn(self) -> bool:
        used = {w.slot for w in self.workers.values()}
        slot = next((s for s in range(TABLE_SLOTS) if s not in used), -1)
        if slot < 0:
            self.log.error(f"more than {TABLE_SLOTS} workers alive: not starting another yet")
            return False
        pipe_r, pipe_w = os.pipe()
        worker = Worker(self.config, self.listener, self.health, self.table, slot, self.log,
                        self.pid)
        worker.pipe_w = pipe_w
        self.table.set_clients(slot, 0)
        try:
            pid = self.ops.fork()
        except OSError as exc:
            os.close(pipe_r)
            os.close(pipe_w)
            self.log.error(f"cannot fork a worker: {exc.strerror}")
            self.next_spawn = time.monotonic() + 1.0
            return False
        if pid == 0:
            self._in_child(worker, pipe_r)
        os.close(pipe_w)
        os.set_blocking(pipe_r, False)
        record = WorkerProcess(pid, slot, self.generation, pipe_r)
        self.workers[pid] = record
        self.loop.add(pipe_r, EVENT_READ, lambda mask, w=record: self._on_worker_message(w))
        return True

    def _in_child(self, worker: Worker, pipe_r: int) -> None:
        """In the new child: shed the master's state, drop privileges, run; never returns."""
        try:
            os.close(pipe_r)
            signal.set_wakeup_fd(-1)
            os.close(self.wake_w)
            self.checker.pool.close()
            for key in list(self.loop.selector.get_map().values()):
                try:
                    os.close(key.fd)  # other workers' pipes, wake-up pipe, check sockets
                except OSError:
                    pass
            self.loop.close()
            drop_privileges(self.config.user, self.config.group)
        except BaseException as exc:  # noqa: BLE001
            self.log.error(f"worker cannot start: {exc}")
            os._exit(3)
        worker.run()

    def _on_worker_message(self, worker: WorkerProcess) -> None:
        try:
            data = os.read(worker.pipe_r, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove(worker.pipe_r)  # the worker is exiting; reap() finishes it
            return
        if MSG_RETIRING in data and not worker.retiring:
            worker.retiring = True
            self.table.set_accepting(worker.slot, False)
            self.log.info(f"worker {worker.pid} reached max-use {self.config.max_use}: retiring")
            if not self.stopping:
                self.maintain()

    def reload(self) -> None:
        if self.reload_config is None:
            return
        try:
            config = self.reload_config()
        except ConfigError as exc:
            self.log.error(f"reload failed, keeping the running configuration: {exc}")
            return
        if config.listen != self.config.listen:
            self.log.warning("reload: a new listen address needs a restart; keeping "
                             + self.config.listen)
            config = dataclasses.replace(config, listen=self.config.listen)
        self.generation += 1
        old = [w for w in self.workers.values() if not w.retiring]
        if config.services != self.config.services:
            self.health = HealthTable(len(config.services))
        for worker in old:
            worker.retiring = True
            self.table.set_accepting(worker.slot, False)
            self._kill(worker.pid, signal.SIGHUP)
        self.config = config
        self.checker.stop()
        self.checker = Checker(self.loop, config, self.health, self.log)
        self.checker.start()
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.log.notice(f"reloaded: {len(config.services)} services, {config.workers} workers; "
                        f"{len(old)} old workers retire")
        self.maintain()

    def cleanup(self) -> None:
        self.close_listener()
        path = split_listen(self.config.listen)[2]
        if path:
            _unlink(path)
        if self.config.pidfile:
            _unlink(self.config.pidfile)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        Logger().warning(f"cannot remove {path}: {exc.strerror}")


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse if a live one still answers there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"listen address unix:{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise ConfigError(f"listen address unix:{path}: another process is listening there")
    finally:
        probe.close()


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


def check_pidfile(path: str) -> None:
    """Refuse to start when the pidfile names a live process."""
    try:
        with open(path) as handle:
            pid = int(handle.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return
    if pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        raise ConfigError(f"pidfile {path}: hapolicy is already running as pid {pid}")


def write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def daemonize() -> None:
    """Detach from the terminal: fork twice, new session, stdio to /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def run_daemon(config: Config, log: Logger,
               reload_config: Callable[[], Config] | None = None) -> int:
    """Run the daemon in the foreground (or detached with --daemonize); the exit status."""
    master = Master(config, log, reload_config)
    try:
        resolve_ids(config.user, config.group)
        if config.pidfile:
            check_pidfile(config.pidfile)
        master.bind()
    except (ConfigError, OSError) as exc:
        message = str(exc) if isinstance(exc, ConfigError) else (
            f"cannot listen on {config.listen}: {exc.strerror or exc}")
        log.error(message)
        if not log.to_stderr:
            _print_error(message)
        return 1 if isinstance(exc, OSError) else 2
    if config.daemonize:
        daemonize()
    try:
        if config.pidfile:
            write_pidfile(config.pidfile)
    except OSError as exc:
        log.error(f"cannot write pidfile {config.pidfile}: {exc.strerror}")
        master.cleanup()
        return 1
    try:
        master.start()
        return master.run()
    finally:
        if os.getpid() == master.pid:
            master.cleanup()


def _print_error(message: str) -> None:
    try:
        os.write(2, f"hapolicy: error: {message}\n".encode())
    except OSError:
        pass
