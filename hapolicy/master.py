"""The daemon's master: bind, prefork, reap, respawn, recycle, reload on HUP, drain on TERM.

Modelled on gunicorn's arbiter and Postfix's master. The master binds the listening sockets of
every pool and makes the shared tables (a health table per pool) before it forks; it stays
root (workers drop privileges after fork), so that it can remove its pidfile and unix sockets
at exit. Signal handlers only queue the signal
and wake the loop through `signal.set_wakeup_fd`; the master forks with those signals blocked,
and the worker unblocks them once its own handlers are in place. Process operations and the
clock go through `ProcessOps`, a thin seam that the unit tests replace.

Each worker has a socketpair to the master (as Postfix's status pipe): it says READY once it
accepts and RETIRING at max-use; when the master dies, the end of file tells it. A worker that
dies before READY died at boot, and such deaths are throttled. A READY worker whose heartbeat
in the worker table is older than WATCHDOG_SECONDS (its loop stuck: a hung look-up, a bug) is
killed and replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Callable

from .adminstate import AdminFile
from .checks import Checker, CheckerSet
from .commands import answer
from .config import Config
from .control import ControlServer, start_control
from .daemon import drop_privileges, preload_lazy_modules, read_pid, unlink
from .eventloop import EVENT_READ, EventLoop
from .health import HealthTable
from .listener import Listeners
from .log import Logger
from .metrics import MetricsServer, Tables
from .notify import Notifier, ServiceNotes
from .reload import Reloading, describe_pools
from .summary import Summary
from .throttle import BootThrottle, exit_code, failed_by_itself
from .worker import MSG_READY, MSG_RETIRING, WORKER_SIGNALS, Worker, set_title
from .workertable import WorkerTable

TABLE_SLOTS = 128  # at least; room for the retiring workers of a reload beside the new ones
WATCHDOG_SECONDS = 60.0  # a worker whose loop has not turned this long is killed
KILL_GRACE = 5.0
MASTER_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)


class ProcessOps:
    """fork, waitpid, kill and the clock: the seam between the master's logic and the OS."""

    fork = staticmethod(os.fork)
    kill = staticmethod(os.kill)
    now = staticmethod(time.monotonic)

    @staticmethod
    def reap() -> tuple[int, int]:
        """(pid, status) of one exited child, or (0, 0)."""
        try:
            return os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0, 0


class WorkerProcess:
    """The master's record of one worker."""

    def __init__(self, pid: int, slot: int, generation: int, sock: socket.socket,
                 started: float) -> None:
        self.pid = pid
        self.slot = slot
        self.generation = generation
        self.sock = sock  # the master's end of the socketpair
        self.started = started
        self.ready = False  # it said READY: it accepts, its boot is over
        self.retiring = False


class Master(Reloading):
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
        self.throttle = BootThrottle()
        self.listeners = Listeners()
        self.fd_limit = 0  # RLIMIT_NOFILE in force, logged at start
        self.pid = os.getpid()
        try:
            self.start_dir = os.getcwd()  # a relative -c FILE is read from here on HUP
        except OSError:
            self.start_dir = "/"
        self.checks = CheckerSet()
        self.admin_file: AdminFile | None = None  # the daemon's --state-file
        self.notes = ServiceNotes(Notifier("", 0, None))  # systemd's, from start()
        self.summary = Summary(config.summary_interval, self.ops.now())
        # what operators talk to: the control socket and /metrics (serve_operators)
        self.metrics_sock: socket.socket | None = None  # bound by the runner at start
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None

    # setup
    def start(self) -> None:
        """After bind (and daemonize): title, tables, signals; the workers come from run()."""
        self.pid = os.getpid()
        set_title("hapolicy: master")
        preload_lazy_modules()
        self.setup()
        self.notes = ServiceNotes(Notifier.from_environ(self.log))
        self.notes.start(self)
        signal.set_wakeup_fd(self.wake_w)
        for sig in MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)
        self.log.notice(f"master started: listening on {', '.join(self.config.addresses)}, "
                        f"{self.config.workers} workers, {describe_pools(self.config)}, "
                        f"{self.fd_limit} file descriptors per process")

    def setup(self) -> None:
        """The shared tables, the event loop and its wake-up pipe, the health checks."""
        self.table = WorkerTable(max(TABLE_SLOTS, 3 * self.config.workers))
        self.health = {p.name: HealthTable(len(p.services), workers=self.table.slots)
                       for p in self.config.pools}
        if self.config.state_file not in ("", "none"):
            self.admin_file = AdminFile(self.config.state_file, self.log)
            self.admin_file.restore(self.config, self.health)
        self.loop = EventLoop()
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.loop.add(self.wake_r, EVENT_READ, self._drain_wake)
        for pool in self.config.pools:
            self.checks.replace(pool.name, Checker(self.loop, pool, self.health[pool.name],
                                                   self.log), None)
        self.serve_operators()

    def serve_operators(self) -> None:
        """The control socket and /metrics, served in the master's loop from the shared
        tables; each reads the running tables through a function, at each request."""
        if self.config.control:
            self.control = start_control(self.loop, self.config, self._command, self.log)
        if self.metrics_sock is not None:
            self.metrics = MetricsServer(self.metrics_sock, self.loop, self._tables, self.log)

    def _command(self, line: str) -> str:
        kept = [(checker.config, checker.table) for _, checker in self.checks.kept]
        return answer(line, self.config, self.health, self.workers, self.table, self.log, kept)

    def _tables(self) -> Tables:
        return Tables(self.config, self.health, self.table,
                      [w.slot for w in self.workers.values()])

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
        while self.step():
            self.loop.run_once(self.wait_time())
        self.log.notice("master stopped")
        return 0

    def step(self) -> bool:
        """Act on signals, dead workers and missing ones; False when it is time to exit."""
        self.handle_signals()
        self.reap()
        if self.stopping:
            if not self.workers:
                return False
            if self.ops.now() >= self.stop_deadline:
                self.log.warning(f"{len(self.workers)} workers still alive: killing them")
                self.kill_all(signal.SIGKILL)
                self.stop_deadline = self.ops.now() + KILL_GRACE
        else:
            self.watchdog()
            self.maintain()
            self.notes.update(self)
            if self.admin_file is not None:
                self.admin_file.save_if_changed(self.config, self.health)
            self.summary.tick(self.config, self.health, self.log, self.ops.now(),
                              time.monotonic())
        return True

    def wait_time(self) -> float:
        wait = 1.0
        if not self.stopping:
            until = self.throttle.next_start - self.ops.now()
            if until > 0:
                wait = min(wait, until + 0.01)
            wait = min(wait, self.summary.wait(self.ops.now()) + 0.001)
        return wait

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP:
                if self.reload_config is not None and not self.stopping:
                    self.notes.reloading()
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
        self.notes.stopping()
        if how == "now":  # a draining worker still needs the checks to bring services back
            self.checks.stop_all()
        self.listeners.close()
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        self.kill_all(sig)
        grace = self.config.drain_timeout + KILL_GRACE if how == "graceful" else KILL_GRACE
        self.stop_deadline = self.ops.now() + grace

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
            self._read_messages(worker)  # a max-use retirement said just before the exit
            self._forget(worker)
            self.checks.stop_unused(self._generations())
            code = exit_code(status)
            now = self.ops.now()
            lived = now - worker.started
            if self.stopping or worker.retiring:
                if code:
                    self.log.warning(f"worker {pid} exited with status {code}")
                elif worker.retiring:
                    self.log.info(f"worker {pid} retired")
                continue
            if not worker.ready and failed_by_itself(code):
                pause = self.throttle.died_at_boot(now)
                self.log.error(f"worker {pid} died at boot (status {code}); "
                               f"{self.throttle.failures} in a row: next start in {pause:g}s")
            else:
                self.log.warning(f"worker {pid} exited with status {code} after {lived:.1f}s: "
                                 "replacing it")

    def _generations(self) -> set[int]:
        return {w.generation for w in self.workers.values()}

    def _forget(self, worker: WorkerProcess) -> None:
        self.loop.remove(worker.sock)
        worker.sock.close()
        self.table.clear(worker.slot)

    def watchdog(self) -> None:
        """Kill a worker whose loop is stuck; reap() replaces it."""
        now = self.ops.now()
        for worker in self.workers.values():
            beat = self.table.last_beat(worker.slot)
            if worker.ready and beat and now - beat > WATCHDOG_SECONDS:
                self.log.error(f"worker {worker.pid} has not turned its loop for "
                               f"{now - beat:.0f}s: killing it")
                self._kill(worker.pid, signal.SIGKILL)
                self.table.beat(worker.slot, 0.0)  # once

    def maintain(self) -> None:
        now = self.ops.now()
        active = [w for w in self.workers.values() if not w.retiring]
        if self.throttle.failures and any(w.ready and w.generation == self.generation
                                          for w in active):
            self.log.notice("workers start again")
            self.throttle.reset()
        missing = self.config.workers - len(active)
        while missing > 0 and self.throttle.may_start(now):
            if not self.spawn():
                break
            missing -= 1
            if self.throttle.started(now):
                break

    def spawn(self) -> bool:
        listeners = self.listeners.sockets()
        if not listeners:
            return False
        used = {w.slot for w in self.workers.values()}
        slot = next((s for s in range(self.table.slots) if s not in used), -1)
        if slot < 0:
            self.log.error(f"{self.table.slots} workers alive: not starting another yet")
            self.throttle.defer(self.ops.now() + 1.0)
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        worker = Worker(self.config, listeners, self.health, self.table, slot, self.log)
        worker.master_sock = theirs
        self.table.clear(slot)
        self.table.set_accepting(slot, False)
        for health in self.health.values():  # not a dead worker's requests in flight
            health.set_in_flight(slot, 0)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            pid = self.ops.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            ours.close()
            theirs.close()
            self.log.error(f"cannot fork a worker: {exc.strerror}")
            self.throttle.defer(self.ops.now() + 1.0)
            return False
        if pid == 0:
            self._in_child(worker, ours)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        theirs.close()
        ours.setblocking(False)
        record = WorkerProcess(pid, slot, self.generation, ours, self.ops.now())
        self.workers[pid] = record
        self.loop.add(ours, EVENT_READ, lambda mask, w=record: self._on_worker_message(w))
        return True

    def _in_child(self, worker: Worker, ours: socket.socket) -> None:
        """In the new child: shed the master's state, drop privileges, run; never returns.

        Every copy of a master's end of a socketpair must go, or a worker would not see the
        end of file when the master dies."""
        try:
            signal.set_wakeup_fd(-1)
            ours.close()
            for other in self.workers.values():
                other.sock.close()
            self.loop.close_inherited()  # the wake-up pipe, the checks' sockets
            for checker in self.checks.all():
                checker.backends.pool.abandon()
            with contextlib.suppress(OSError):
                os.close(self.wake_w)
            drop_privileges(self.config.user, self.config.group)
        except BaseException as exc:  # noqa: BLE001
            try:
                self.log.error(f"worker cannot start: {exc}")
            finally:
                os._exit(3)
        worker.run()
        os._exit(1)  # not reached: Worker.run leaves through os._exit

    def _on_worker_message(self, worker: WorkerProcess) -> None:
        if self._read_messages(worker) and not self.stopping:
            self.maintain()  # its replacement, at once

    def _read_messages(self, worker: WorkerProcess) -> bool:
        """Read what a worker said; True when it said it retires."""
        try:
            data = worker.sock.recv(64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.loop.remove(worker.sock)  # the worker is exiting; reap() finishes it
            return False
        return self.on_message(worker, data)

    def on_message(self, worker: WorkerProcess, data: bytes) -> bool:
        """Act on READY and RETIRING; True when the worker retires (a replacement is due)."""
        if MSG_READY in data:
            worker.ready = True
        if MSG_RETIRING in data and not worker.retiring:
            worker.retiring = True
            self.table.set_accepting(worker.slot, False)
            self.log.info(f"worker {worker.pid} reached max-use {self.config.max_use}: retiring")
            return True
        return False

    def cleanup(self) -> None:
        if self.admin_file is not None and hasattr(self, "health"):
            self.admin_file.save_if_changed(self.config, self.health)
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        elif self.metrics_sock is not None:
            self.metrics_sock.close()
        self.listeners.cleanup(self.log)
        if self.config.pidfile and read_pid(self.config.pidfile) == self.pid:
            unlink(self.config.pidfile, self.log)
