"""One preforked worker: the selectors loop over the listener, its clients and their backends.

The constructor runs in the master before fork and touches nothing; `run` runs in the child and
never returns (the child leaves through os._exit). Signals from the master only set flags:
HUP retires the worker (no new connections; serve the ones it has until their clients close
them, at most retire_timeout), TERM drains it (finish in-flight requests within drain_timeout,
then exit), INT and QUIT end it at once. After max_use requests it retires by itself and
writes one byte to the master, which has a replacement started at once.
"""

from __future__ import annotations

import errno
import os
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
YIELD_LIMIT = 0.05
MSG_RETIRING = b"R"


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


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
            self.log.error(f"worker internal error: {type(exc).__name__}: {exc}")
            status = 1
        os._exit(status)

    def _run(self) -> None:
        self.loop = loop = EventLoop()
        self.retiring = self.draining = self.stop_now = False
        self.retire_at = self.drain_at = 0.0
        self.clients: set[ClientConnection] = set()
        self.requests = 0
        self.accepting = False
        self.yield_since = 0.0
        self.title = ""
        self.dispatcher = Dispatcher(loop, self.config, self.health, self.log)
        self.dispatcher.on_request = self._count_request
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig, handler in ((signal.SIGHUP, self._sig_retire), (signal.SIGTERM, self._sig_drain),
                             (signal.SIGINT, self._sig_stop), (signal.SIGQUIT, self._sig_stop)):
            signal.signal(sig, handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        loop.add(self.wake_r, EVENT_READ, self._on_wake)
        self.listener.setblocking(False)
        self.table.set_accepting(self.slot, True)
        self._set_accepting(True)
        loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)
        self._update_title()
        while not self._finished():
            loop.run_once(HOUSEKEEPING_SECONDS)

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
        if (self.retiring or self.draining) and self.accepting:
            self._stop_accepting()
        if self.retiring and not self.retire_at:
            self.retire_at = now + self.config.retire_timeout
            self._update_title()
        if self.draining and not self.drain_at:
            self.drain_at = now + self.config.drain_timeout
            for client in list(self.clients):
                if client.idle:
                    client.close()

    def _finished(self) -> bool:
        if self.stop_now:
            return True
        if not (self.retiring or self.draining):
            return False
        if self.draining and not self.dispatcher.in_flight:
            return True
        if not self.clients and not self.dispatcher.in_flight:
            return True
        now = time.monotonic()
        if self.draining and now >= self.drain_at:
            self.log.warning(f"drain timeout: {self.dispatcher.in_flight} requests unanswered")
            return True
        if self.retiring and now >= self.retire_at:
            for client in list(self.clients):
                if client.idle:
                    client.close()
            # requests still in flight end within their total deadline
            return not self.clients or now >= self.retire_at + self.config.total_timeout
        return False

    # accepting
    def _set_accepting(self, on: bool) -> None:
        if on and not self.accepting:
            self.loop.add(self.listener, EVENT_READ, self._on_accept)
        elif not on and self.accepting:
            self.loop.remove(self.listener)
        self.accepting = on

    def _stop_accepting(self) -> None:
        self._set_accepting(False)
        self.table.set_accepting(self.slot, False)

    def _on_accept(self, mask: int) -> None:
        now = time.monotonic()
        if self.table.should_yield(self.slot, len(self.clients)):
            # a less busy sibling is awake too and takes this one; look again shortly,
            # and take it anyway if that sibling has not for YIELD_LIMIT seconds
            if not self.yield_since:
                self.yield_since = now
            if now - self.yield_since < YIELD_LIMIT:
                self._set_accepting(False)
                self.loop.call_later(0.002, self._resume_accepting)
                return
        self.yield_since = 0.0
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return  # a sibling was faster: normal
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error(f"cannot accept: {exc.strerror}; pausing accept for "
                                   f"{FD_PAUSE_SECONDS:g}s ({len(self.clients)} clients)")
                    self._set_accepting(False)
                    self.loop.call_later(FD_PAUSE_SECONDS, self._resume_accepting)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            sock.setblocking(False)
            client = ClientConnection(self.loop, self.dispatcher, sock.fileno(), sock.fileno(),
                                      self._on_client_closed, sock)
            self.clients.add(client)
            client.start()
            self.table.set_clients(self.slot, len(self.clients))

    def _resume_accepting(self) -> None:
        if not (self.retiring or self.draining or self.stop_now):
            self._set_accepting(True)

    def _on_client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        self.table.set_clients(self.slot, len(self.clients))

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
        if os.getppid() != self.master_pid:
            self.log.error("master is gone: worker exits")
            self.stop_now = True
            return
        limit = now - self.config.max_idle
        for client in list(self.clients):
            if client.last_active < limit and client.idle:
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
