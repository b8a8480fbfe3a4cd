"""One preforked worker: the selectors loop over the listener, its clients and their backends.

The constructor runs in the master before fork and touches nothing; `run` runs in the child and
never returns (the child leaves through os._exit). The master forks with the signals blocked;
the worker installs its handlers, then unblocks them, so no signal is lost or handled by the
master's handlers in the child. Handlers only set flags: HUP retires the worker (no new
connections; serve the ones it has until their clients close them, at most retire_timeout),
TERM drains it (finish in-flight requests within drain_timeout, then exit), INT and QUIT end
it at once. After max_use requests it retires by itself and writes one byte to the master,
which has a replacement started at once. A worker whose master died (parent-death signal, or
a new parent seen by the housekeeping timer) drains within ORPHAN_GRACE seconds and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import socket
import time

from .client import ClientConnection
from .config import Config
from .dispatch import Dispatcher
from .eventloop import EVENT_READ, EventLoop
from .health import HealthTable
from .log import Logger
from .workertable import WorkerTable

ACCEPT_BATCH = 64
HOUSEKEEPING_SECONDS = 1.0
FD_PAUSE_SECONDS = 1.0
FD_RESERVE_MIN = 32  # descriptors kept for backend sockets, syslog and the worker's own
YIELD_LIMIT = 0.05  # take a connection anyway after leaving it to siblings this long
YIELD_PAUSE = 0.002
ORPHAN_GRACE = 1.0  # an orphaned worker finishes its in-flight requests within this
MSG_RETIRING = b"R"
WORKER_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)
PR_SET_PDEATHSIG = 1


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def set_parent_death_signal(signum: int) -> None:
    """Linux: have the kernel send signum when the parent (the master) dies; else nothing.

    Must be called after the privilege drop, which clears it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def max_clients() -> int:
    """Client connections a worker takes: RLIMIT_NOFILE less a reserve (a quarter, at least
    FD_RESERVE_MIN) for backend sockets and the worker's own descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - max(FD_RESERVE_MIN, soft // 4))


def _has_input(client: ClientConnection) -> bool:
    """True when bytes wait unread on a client's socket (a request we must not drop)."""
    sock = client.sock
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing to read (EAGAIN), or a connection gone bad
        return False


class Worker:
    """Everything a worker needs; forked by the master."""

    def __init__(self, config: Config, listener: socket.socket, health: HealthTable,
                 table: WorkerTable, slot: int, log: Logger, master_pid: int) -> None:
        self.config = config
        self.listener = listener
        self.health = health
        self.table = table
        self.slot = slot
        self.log = log
        self.master_pid = master_pid
        self.pipe_w = -1  # the write end of the pipe to the master, set by the master

    def run(self) -> None:
        """The child's life; never returns."""
        status = 0
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - the worker must never die with a traceback
            with contextlib.suppress(BaseException):
                self.log.error(f"worker internal error: {type(exc).__name__}: {exc}")
            status = 1
        os._exit(status)

    def _run(self) -> None:
        self.loop = loop = EventLoop()
        self.retiring = self.draining = self.stop_now = self.orphaned = False
        self.retire_at = self.drain_at = 0.0
        self.clients: set[ClientConnection] = set()
        self.requests = 0
        self.accepting = False
        self.max_clients = max_clients()
        self.full = False  # accept paused: max_clients held
        self.listening = True  # False once the listener is closed for good
        self.yield_since = self.yield_last = 0.0
        self.title = ""
        self.dispatcher = Dispatcher(loop, self.config, self.health, self.log,
                                     checked=self.config.check_interval > 0)
        self.dispatcher.on_request = self._count_request
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig, handler in ((signal.SIGHUP, self._sig_retire), (signal.SIGTERM, self._sig_drain),
                             (signal.SIGINT, self._sig_stop), (signal.SIGQUIT, self._sig_stop)):
            signal.signal(sig, handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        set_parent_death_signal(signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
        loop.add(self.wake_r, EVENT_READ, self._on_wake)
        self.listener.setblocking(False)
        self.table.set_accepting(self.slot, True)
        self._set_accepting(True)
        loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)
        self._apply_flags()  # a signal may have come before the handlers: act on it now
        self._update_title()
        while not self._finished():
            loop.run_once(HOUSEKEEPING_SECONDS)
        self.dispatcher.close()  # logs what it held back

    # signals: only flags, the loop acts
    def _sig_retire(self, signum, frame) -> None:
        self.retiring = True

    def _sig_drain(self, signum, frame) -> None:
        self.draining = True

    def _sig_stop(self, signum, frame) -> None:
        self.stop_now = True

    def _on_wake(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self._apply_flags()

    def _apply_flags(self) -> None:
        now = time.monotonic()
        if not self.orphaned and os.getppid() != self.master_pid:
            self.log.error("master is gone: worker finishes its requests and exits")
            self.orphaned = self.draining = True
            self.drain_at = min(self.drain_at or now + ORPHAN_GRACE, now + ORPHAN_GRACE)
        if self.retiring or self.draining:
            self._stop_listening()
        if self.retiring and not self.retire_at:
            self.retire_at = now + self.config.retire_timeout
            self._update_title()
        if self.draining and not self.drain_at:
            self.drain_at = now + self.config.drain_timeout
            self._update_title()

    def _close_idle_clients(self) -> None:
        """Close the clients with nothing in progress (and no request waiting unread)."""
        for client in list(self.clients):
            if client.idle and not _has_input(client):
                client.close()

    def _finished(self) -> bool:
        if self.stop_now:
            return True
        if not (self.retiring or self.draining):
            return False
        if (self.retiring and not self.retire_at) or (self.draining and not self.drain_at):
            self._apply_flags()  # the handler ran, the wake-up byte is not read yet
        now = time.monotonic()
        if self.draining:
            # every request received gets its answer written; then its connection is closed
            self._close_idle_clients()
            if not self.clients and not self.dispatcher.in_flight:
                return True
            if now >= self.drain_at:
                self.log.warning(f"drain timeout: {len(self.clients)} connections closed with "
                                 f"{self.dispatcher.in_flight} requests unanswered")
                return True
            return False
        if not self.clients and not self.dispatcher.in_flight:
            return True
        if now >= self.retire_at:
            self._close_idle_clients()
            # requests still in flight end within their total deadline
            return not self.clients or now >= self.retire_at + self.config.total_timeout
        return False

    # accepting
    def _set_accepting(self, on: bool) -> None:
        on = on and self.listening
        if on and not self.accepting:
            self.loop.add(self.listener, EVENT_READ, self._on_accept)
        elif not on and self.accepting:
            self.loop.remove(self.listener)
        self.accepting = on

    def _stop_listening(self) -> None:
        """For good (retiring, draining): siblings and the master keep their own copies."""
        if not self.listening:
            return
        self._set_accepting(False)
        self.listening = False
        self.table.set_accepting(self.slot, False)
        self.listener.close()

    def _on_accept(self, mask: int) -> None:
        if not self.accepting:
            return  # an event of this loop round, come after the listener was removed
        now = time.monotonic()
        if self._yield(now):
            return
        self.yield_since = 0.0
        for _ in range(ACCEPT_BATCH):
            if len(self.clients) >= self.max_clients:
                # leave descriptors for backend sockets: a client we cannot serve but with
                # the default action is worse off than one waiting in the listen backlog
                self.full = True
                self._set_accepting(False)
                self.table.set_accepting(self.slot, False)
                self.log.error(f"cannot accept: {len(self.clients)} clients, the most that "
                               f"RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} "
                               f"allows with room for backend connections; pausing accept")
                return
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # a sibling was faster: normal
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error(f"cannot accept: {exc.strerror}; pausing accept for "
                                   f"{FD_PAUSE_SECONDS:g}s ({len(self.clients)} clients)")
                    self._pause_accepting(FD_PAUSE_SECONDS)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                # errors of the network passed on by accept(2), or a listener gone bad:
                # never worth the worker and its clients
                self.log.error(f"cannot accept: {exc.strerror or exc}")
                self._pause_accepting(FD_PAUSE_SECONDS)
                return
            sock.setblocking(False)
            client = ClientConnection(self.loop, self.dispatcher, sock.fileno(), sock.fileno(),
                                      self._on_client_closed, sock)
            self.clients.add(client)
            self.table.set_clients(self.slot, len(self.clients))
            client.start()
            if self.table.should_yield(self.slot, len(self.clients)):
                return  # let a less busy sibling take the rest of a burst

    def _yield(self, now: float) -> bool:
        """Leave this connection to a less busy sibling that is awake too (True), unless
        that sibling has not taken it for YIELD_LIMIT seconds."""
        if not self.table.should_yield(self.slot, len(self.clients)):
            return False
        if not self.yield_since or now - self.yield_last > 10 * YIELD_PAUSE:
            self.yield_since = now  # a new connection: the previous one was taken
        self.yield_last = now
        if now - self.yield_since >= YIELD_LIMIT:
            return False
        self._pause_accepting(YIELD_PAUSE)
        return True

    def _pause_accepting(self, seconds: float) -> None:
        self._set_accepting(False)
        self.loop.call_later(seconds, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not (self.retiring or self.draining or self.stop_now or self.full):
            self._set_accepting(True)

    def _on_client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if self.listening:
            self.table.set_clients(self.slot, len(self.clients))
            if self.full and len(self.clients) < self.max_clients * 15 // 16:
                self.full = False
                self.table.set_accepting(self.slot, True)
                self._resume_accepting()

    def _count_request(self) -> None:
        self.requests += 1
        if self.requests == self.config.max_use and not self.retiring:
            self.retiring = True
            try:
                os.write(self.pipe_w, MSG_RETIRING)
            except OSError:
                pass
            self._apply_flags()

    # periodic work
    def _housekeeping(self) -> None:
        now = time.monotonic()
        limit = now - self.config.max_idle
        for client in list(self.clients):
            # a half-sent request or an unread answer that old is abandoned too
            if client.last_active < limit and not client.busy:
                client.close()
        self.dispatcher.pool.sweep(now)
        self._apply_flags()
        self._update_title()
        self.loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)

    def _update_title(self) -> None:
        state = " (retiring)" if self.retiring or self.draining else ""
        title = (f"hapolicy: worker{state} requests={self.requests} "
                 f"clients={len(self.clients)}")
        if title != self.title:
            self.title = title
            set_title(title)
