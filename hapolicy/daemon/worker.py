"""One preforked worker: the event loop over the listener, its clients and their backends.

The constructor runs in the master before fork and touches nothing; `run` runs in the child and
never returns (the child leaves through os._exit). The master forks with the signals blocked;
the worker installs its handlers, then unblocks them, so no signal is lost or handled by the
master's handlers in the child.

A worker's life is one phase, moved on in one place (`_advance`, once per loop pass) and only
forward: SERVING; RETIRING (HUP, or max-use reached: no new connections, serve the ones it has
until their clients close them, at most retire-timeout); DRAINING (TERM, or the master gone:
finish in-flight requests within drain-timeout, ORPHAN_GRACE for an orphan, then exit);
STOPPING (INT, QUIT: at once). Signal handlers only ask for a phase. Whether it accepts is
recomputed by one function (`_update_accepting`) from its phase, its clients against its
descriptor budget, and a pause (a sibling's turn, or no descriptor left).

It talks with the master over a socketpair (childproto.py): READY once it accepts, RETIRING
when it reached max-use, RETIRING_FAULT after an exception its loop contained outside a
request's own containment; end of file on it means the master is gone. Each housekeeping pass
writes a heartbeat in the worker table for the master's watchdog, and each pool's requests in
flight in its health table (layout.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import time

from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.base.log import Logger, RateLimited, describe_exception
from hapolicy.config.records import DaemonConfig
from hapolicy.daemon import childproto
from hapolicy.daemon.childproto import MSG_READY, MSG_RETIRING, MSG_RETIRING_FAULT
from hapolicy.daemon.chores import max_clients
from hapolicy.daemon.maxuse import MaxUse
from hapolicy.request.assembly import make_dispatcher
from hapolicy.request.client import ClientConnection
from hapolicy.request.dispatch import Dispatcher
from hapolicy.request.routing import target
from hapolicy.request.shadow import make_mirrors
from hapolicy.tables.health import HealthTable
from hapolicy.tables.workertable import WorkerTable

ACCEPT_BATCH = 64
HOUSEKEEPING_SECONDS = 1.0
FD_PAUSE_SECONDS = 1.0
YIELD_LIMIT = 0.05  # take a connection anyway after leaving it to siblings this long
YIELD_PAUSE = 0.002
ORPHAN_GRACE = 1.0  # an orphaned worker finishes its in-flight requests within this
ERROR_LOG_SECONDS = 1.0  # at most one line of contained errors this often (with their count)
SERVING, RETIRING, DRAINING, STOPPING = range(4)
ASKED_BY = {childproto.RETIRE: RETIRING, childproto.DRAIN: DRAINING, signal.SIGINT: STOPPING,
            childproto.STOP: STOPPING}  # the phase each signal asks for


def _nothing() -> None:
    pass


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

    def __init__(self, config: DaemonConfig, listeners: dict[str, socket.socket],
                 health_tables: dict[str, HealthTable], worker_table: WorkerTable, slot: int,
                 log: Logger) -> None:
        self.config = config
        self.listeners = listeners  # by address; every pool's
        self.health_tables = health_tables  # by pool name
        self.worker_table = worker_table
        self.slot = slot
        self.log = log
        self.master_sock: socket.socket | None = None  # its end of the socketpair, from the master
        # the child's own state, made in _run after fork
        self.loop: EventLoop | None = None
        self.dispatchers: list[Dispatcher] = []  # one per pool
        self.mirrors: list[Dispatcher] = []  # one per shadow pool (shadow.py)
        self.routes: dict[socket.socket, object] = {}  # listener: what takes its requests
        self.clients: set[ClientConnection] = set()
        self.phase = SERVING
        self.asked = SERVING  # the phase a signal, max-use or the master's end asked for
        self.deadline = 0.0  # when the current phase gives up waiting
        self.orphaned = False
        self.listening = True  # False once the listener is closed for good
        self.accepting = False  # the listener is registered in the loop
        self.full = False  # max_clients held: accept paused until some leave
        self.max_clients = 0
        self.paused_until = 0.0  # no accepting before (a sibling's turn, no descriptor left)
        self.yield_since = self.yield_last = 0.0
        self.title = ""
        self.wake_r = -1
        self.errors: RateLimited | None = None  # the contained errors' log lines

    def run(self, master_sock: socket.socket | None = None) -> None:
        """The child's life (master_sock: its end of the socketpair); never returns."""
        if master_sock is not None:
            self.master_sock = master_sock
        status = 0
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - the worker must never die with a traceback
            with contextlib.suppress(BaseException):
                self.log.error(f"worker internal error: {type(exc).__name__}: {exc}")
            status = 1
        os._exit(status)

    def _run(self) -> None:
        self.loop = loop = EventLoop(yields=True)  # (eventloop.py: a busy turn yields)
        self.errors = RateLimited(self.log, loop.call_at, ERROR_LOG_SECONDS, unit="error")
        loop.on_error = self._contained
        self.max_clients = max_clients()
        self._make_dispatchers(loop)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        childproto.obey({sig: lambda signum, frame, phase=phase: self._ask(phase)
                         for sig, phase in ASKED_BY.items()})
        loop.add(self.wake_r, EVENT_READ, self._on_wake)
        if self.master_sock is not None:
            self.master_sock.setblocking(False)
            loop.add(self.master_sock, EVENT_READ, self._on_master)
        for listener in self.routes:
            listener.setblocking(False)
        loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)
        self._update_accepting()
        self._tell_master(MSG_READY)
        self.worker_table.beat(self.slot, time.monotonic())
        self._update_title()
        while not self._advance():
            loop.run_once(HOUSEKEEPING_SECONDS)
        for dispatcher in (*self.dispatchers, *self.mirrors):
            dispatcher.close()  # logs what it held back
        if self.errors.timer is not None:
            self.errors.flush()

    def _contained(self, exc: Exception) -> None:
        """An exception of the loop's handlers that the request path did not contain itself
        (job.py does, per request): logged, rate-limited; the worker and its other
        clients go on, but it retires (its state may be spoilt: a fresh worker takes the new
        connections at once, as at max-use)."""
        self.errors.warning(f"worker internal error, contained: {describe_exception(exc)}")
        self._retire(MSG_RETIRING_FAULT)

    def _make_dispatchers(self, loop: EventLoop) -> None:
        """A dispatcher per pool, and what takes the requests of each listener."""
        by_name = {}
        for pool in self.config.pools:
            dispatcher = make_dispatcher(loop, pool, self.health_tables[pool.name], self.log,
                                         log_requests=self.config.log_requests,
                                         verbose=self.config.verbose, load_slot=self.slot)
            self.dispatchers.append(dispatcher)
            by_name[pool.name] = dispatcher
        MaxUse(self.config.max_use, self.dispatchers, self._max_use_reached).share()
        if any(pool.shadow for pool in self.config.pools):
            self.mirrors = make_mirrors(loop, self.config.pools, by_name, self.health_tables,
                                        self.log, lambda: self.in_flight)
        for address, listener in self.listeners.items():
            self.routes[listener] = target(self.config.pools_on(address), by_name, self.log)

    @property
    def in_flight(self) -> int:
        return sum(d.in_flight for d in self.dispatchers)

    @property
    def requests(self) -> int:
        return sum(d.requests for d in self.dispatchers)

    def _ask(self, phase: int) -> None:
        """A signal handler: only asks; the loop acts."""
        self.asked = max(self.asked, phase)

    def _on_wake(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _on_master(self, mask: int) -> None:
        if not childproto.master_gone(self.master_sock):  # type: ignore[arg-type]
            return
        self.loop.remove(self.master_sock)  # type: ignore[union-attr]
        self.log.error("master is gone: worker finishes its requests and exits")
        self.orphaned = True
        self.asked = max(self.asked, DRAINING)
        if self.phase == DRAINING:  # already draining: the shorter grace now
            self.deadline = min(self.deadline, time.monotonic() + ORPHAN_GRACE)
            self._wake_at(self.deadline)

    def _tell_master(self, message: bytes) -> None:
        if self.master_sock is not None:
            childproto.tell(self.master_sock, message)

    # the phase
    def _advance(self) -> bool:
        """Move the phase on as asked and end it when its work is done; True: exit now."""
        if self.asked > self.phase:
            self._enter(self.asked, time.monotonic())
        phase = self.phase
        if phase == SERVING:  # nearly every turn: no clock read
            return False
        now = time.monotonic()
        if phase == STOPPING:
            return True
        in_flight = self.in_flight
        if phase == DRAINING:
            # every request received gets its answer written; then its connection is closed
            self._close_idle_clients()
            if not self.clients and not in_flight:
                return True
            if now >= self.deadline:
                self.log.warning(f"drain timeout: {len(self.clients)} connections closed with "
                                 f"{in_flight} requests unanswered")
                return True
            return False
        if not self.clients and not in_flight:
            return True
        if now >= self.deadline:  # retiring, and its clients still not gone
            self._close_idle_clients()
            # requests still in flight end within their total deadline
            longest = max(pool.total_timeout for pool in self.config.pools)
            return not self.clients or now >= self.deadline + longest
        return False

    def _enter(self, phase: int, now: float) -> None:
        self.phase = phase
        if phase == RETIRING:
            self.deadline = now + self.config.retire_timeout
        elif phase == DRAINING:
            self.deadline = now + (ORPHAN_GRACE if self.orphaned else self.config.drain_timeout)
        self._wake_at(self.deadline)
        self._stop_listening()
        self._update_title()

    def _wake_at(self, when: float) -> None:
        """Have the loop pass (and _advance run) at a deadline, not a housekeeping tick later."""
        if when:
            self.loop.call_at(when, _nothing)  # type: ignore[union-attr]

    def _close_idle_clients(self) -> None:
        """Close the clients with nothing in progress (and no request waiting unread)."""
        for client in list(self.clients):
            if client.idle and not _has_input(client):
                client.close()

    # accepting
    def _update_accepting(self) -> None:
        """Accept or not, from the phase, the clients held and a pause; the one place it is
        decided. The worker table says whether this worker takes connections at all."""
        held = len(self.clients)
        if not self.full and held >= self.max_clients:
            self.full = True
            # leave descriptors for backend sockets: a client we cannot serve but with the
            # default action is worse off than one waiting in the listen backlog
            self.log.error(f"cannot accept: {held} clients, the most that RLIMIT_NOFILE "
                           f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]} allows with room "
                           f"for backend connections; pausing accept")
        elif self.full and held < self.max_clients * 15 // 16:
            self.full = False
        available = self.phase == SERVING and self.listening and not self.full
        if self.listening:
            self.worker_table.set_accepting(self.slot, available)
        want = available and time.monotonic() >= self.paused_until
        if want and not self.accepting:
            for listener in self.routes:
                self.loop.add(listener, EVENT_READ,  # type: ignore[union-attr]
                              lambda mask, listener=listener: self._on_accept(listener))
        elif not want and self.accepting:
            for listener in self.routes:
                self.loop.remove(listener)  # type: ignore[union-attr]
        self.accepting = want

    def _pause_accepting(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self._update_accepting()
        self.loop.call_at(self.paused_until, self._update_accepting)  # type: ignore[union-attr]

    def _stop_listening(self) -> None:
        """For good (retiring, draining): siblings and the master keep their own copies."""
        if not self.listening:
            return
        self._update_accepting()  # not SERVING any more: unregistered
        self.listening = False
        self.worker_table.set_accepting(self.slot, False)
        for listener in self.routes:
            listener.close()

    def _on_accept(self, listener: socket.socket) -> None:
        if not self.accepting:
            return  # an event of this loop round, come after the listener was removed
        now = time.monotonic()
        if self._yield(now):
            return
        self.yield_since = 0.0
        for _ in range(ACCEPT_BATCH):
            if len(self.clients) >= self.max_clients:
                self._update_accepting()
                return
            try:
                sock, _addr = listener.accept()
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
            client = ClientConnection(self.loop, self.routes[listener], sock.fileno(),
                                      sock.fileno(), self._on_client_closed, sock)
            self.clients.add(client)
            self.worker_table.set_clients(self.slot, len(self.clients))
            client.start()
            if self.worker_table.should_yield(self.slot, len(self.clients)):
                return  # let a less busy sibling take the rest of a burst

    def _yield(self, now: float) -> bool:
        """Leave this connection to a less busy sibling that is awake too (True), unless
        that sibling has not taken it for YIELD_LIMIT seconds."""
        if not self.worker_table.should_yield(self.slot, len(self.clients)):
            return False
        if not self.yield_since or now - self.yield_last > 10 * YIELD_PAUSE:
            self.yield_since = now  # a new connection: the previous one was taken
        self.yield_last = now
        if now - self.yield_since >= YIELD_LIMIT:
            return False
        self._pause_accepting(YIELD_PAUSE)
        return True

    def _on_client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if self.listening:
            self.worker_table.set_clients(self.slot, len(self.clients))
            if self.full:
                self._update_accepting()

    def _max_use_reached(self) -> None:
        self._retire(MSG_RETIRING)

    def _retire(self, message: bytes) -> None:
        """Retire of its own accord, telling the master why (it starts a replacement)."""
        if self.asked < RETIRING:
            self.asked = RETIRING
            self._tell_master(message)

    # periodic work
    def _housekeeping(self) -> None:
        now = time.monotonic()
        limit = now - self.config.max_idle
        for client in list(self.clients):
            # a half-sent request or an unread answer that old is abandoned too
            if client.last_active < limit and not client.busy:
                client.close()
        for dispatcher in self.dispatchers:
            dispatcher.table.set_in_flight(self.slot, dispatcher.in_flight)
        for dispatcher in (*self.dispatchers, *self.mirrors):  # copies are not in flight
            dispatcher.backends.idle.sweep(now)
        self.worker_table.beat(self.slot, now, self.requests)
        self._update_title()
        self.loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)

    def _update_title(self) -> None:
        title = childproto.worker_title(self.phase != SERVING, self.requests, len(self.clients))
        if title != self.title:
            self.title = title
            childproto.set_title(title)
