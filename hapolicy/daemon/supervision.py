"""The master's supervision of every child, the workers and the monitor alike, as Postfix's
master_spawn.c: one record (children.Child), one spawn, one reading of what a child says, one
reap, one watchdog, one boot throttle path.

`Supervisor.spawn` forks a child (children.fork_child) in a worker-table slot, with the
configuration's generation, and listens on its socketpair (childproto.py). A child that says
READY has booted; a worker that says RETIRING (or RETIRING_FAULT) no longer accepts, and the
`replace` hook the master gave starts its replacement at once. `reap` forgets each child that
exited and judges its death: while the master stops, or for a worker that retires, one line;
otherwise the boot throttle of its kind (throttle.py: one per kind, so that a monitor that
fails at boot never holds the workers back, nor the other way round). A child that said READY
and whose heartbeat in the worker table is older than WATCHDOG_SECONDS has its loop stuck: the
`watchdog` kills it (once), and the reap replaces it. A reload starts a new generation
(`new_generation`): the workers of the old one are told to retire. The reap also gives the exit
status of a process the master started that is no child of a kind (the new master of an
upgrade in place) to whoever `watch`es it.

What a child must close of the master's state in it besides its siblings' sockets, and the
privilege drop, is the master's (`shed`); what to start and when is the master's and the
monitor keeper's.
"""

from __future__ import annotations

import signal

from hapolicy.base.eventloop import EVENT_READ
from hapolicy.daemon.childproto import MSG_READY, MSG_RETIRING, MSG_RETIRING_FAULT, RETIRE, receive
from hapolicy.daemon.children import MONITOR, WORKER, Child, fork_child
from hapolicy.daemon.throttle import BootThrottle, exit_code
from hapolicy.tables.workertable import WATCHDOG_SECONDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Callable

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.daemon.children import ProcessOps
    from hapolicy.tables.workertable import WorkerTable

STARTING_AGAIN = {WORKER: "workers start again", MONITOR: "monitor starts again"}
RETRY_SECONDS = 1.0  # after a fork that failed, or with no free slot


class Supervisor:
    """Every child of the master: records by pid, their messages, reaps, the watchdog, and a
    boot throttle per kind. `attach` gives it the master's loop and worker table (made after
    bind and daemonize); until then it has no child."""

    loop: EventLoop
    worker_table: WorkerTable

    def __init__(self, ops: ProcessOps, log: Logger, shed: Callable[[str], None],
                 replace: Callable[[], None]) -> None:
        self.ops = ops
        self.log = log
        self.shed = shed  # in a new child of a kind, its siblings' sockets closed: the rest
        self.replace = replace  # a worker said it retires (not in a reap): replace it now
        self.children: dict[int, Child] = {}
        self.generation = 0  # of the running configuration; a reload starts the next
        self.throttles = {WORKER: BootThrottle(), MONITOR: BootThrottle()}
        self.watched: dict[int, Callable[[int], None]] = {}  # pid: called with its exit code

    def attach(self, loop: EventLoop, worker_table: WorkerTable) -> None:
        self.loop = loop
        self.worker_table = worker_table

    # the records
    def of(self, kind: str) -> list[Child]:
        return [child for child in self.children.values() if child.kind == kind]

    def first(self, kind: str) -> Child | None:
        return next((child for child in self.children.values() if child.kind == kind), None)

    def active(self, kind: str) -> list[Child]:
        """The children of kind not retiring."""
        return [child for child in self.of(kind) if not child.retiring]

    def serving(self, kind: str) -> list[Child]:
        """The children of kind of the running configuration that said READY."""
        return [child for child in self.active(kind)
                if child.ready and child.generation == self.generation]

    def generations(self) -> set[int]:
        """The generations of the live workers."""
        return {child.generation for child in self.of(WORKER)}

    def watch(self, pid: int, exited: Callable[[int], None]) -> None:
        """Have the reap give exited() the exit status of pid, a process of no kind."""
        self.watched[pid] = exited

    # starting
    def claim_slot(self) -> int:
        """A free worker slot, or -1 (logged; no worker starts for RETRY_SECONDS)."""
        used = {child.slot for child in self.of(WORKER)}
        slot = next((s for s in range(self.worker_table.slots) if s not in used), -1)
        if slot < 0:
            self.log.error(f"{self.worker_table.slots} workers alive: not starting another yet")
            self.throttles[WORKER].defer(self.ops.now() + RETRY_SECONDS)
        return slot

    def spawn(self, kind: str, slot: int, run: Callable[[socket.socket], None],
              max_use: int = 0) -> Child | None:
        """Fork a child of kind that runs `run` in slot; None when the fork failed (logged;
        none of its kind starts for RETRY_SECONDS)."""
        self.worker_table.clear(slot)
        forked = fork_child(self.ops, kind, run, lambda ours: self._shed(kind, ours), self.log)
        if forked is None:
            self.throttles[kind].defer(self.ops.now() + RETRY_SECONDS)
            return None
        pid, sock = forked
        if kind == WORKER:
            self.worker_table.set_worker(slot, pid, self.generation)
        child = Child(kind, pid, slot, self.generation, sock, self.ops.now(), max_use)
        self.children[pid] = child
        self.loop.add(sock, EVENT_READ, lambda mask: self._on_message(child))
        return child

    def _shed(self, kind: str, ours: socket.socket) -> None:
        """In a new child: every copy of a master's end of a socketpair must go, or a child
        would not see the end of file when the master dies; then the master's own shedding."""
        ours.close()
        for other in self.children.values():
            other.sock.close()
        self.shed(kind)

    def may_start(self, kind: str, now: float) -> bool:
        return self.throttles[kind].may_start(now)

    def started(self, kind: str, now: float) -> bool:
        """After a start: True when no other of kind may follow in this pass (still failing)."""
        return self.throttles[kind].started(now)

    def proven(self, kind: str, now: float) -> None:
        """After a streak of early deaths: the serving children of kind let the others start,
        and end the streak (logged) once one of them has run STABLE_SECONDS."""
        throttle = self.throttles[kind]
        if not throttle.failures:
            return
        serving = [child.started for child in self.serving(kind)]
        if serving and throttle.ready(serving, now):
            self.log.notice(STARTING_AGAIN[kind])

    def next_start(self) -> float:
        """The earliest time a throttled child may start."""
        return min(throttle.next_start for throttle in self.throttles.values())

    # what the children say
    def _on_message(self, child: Child) -> None:
        if self.read(child):
            self.replace()

    def read(self, child: Child) -> bool:
        """Read what a child said; True when a worker said it retires."""
        data = receive(child.sock)
        if data is None:
            return False
        if not data:
            self.loop.remove(child.sock)  # the child is exiting; reap() finishes it
            return False
        return self.heard(child, data)

    def heard(self, child: Child, data: bytes) -> bool:
        """Act on READY and RETIRING (or RETIRING_FAULT); True when the child retires (a
        replacement is due)."""
        if MSG_READY in data:
            child.ready = True
        fault = MSG_RETIRING_FAULT in data
        if (fault or MSG_RETIRING in data) and not child.retiring:
            child.retiring = True
            self.worker_table.set_accepting(child.slot, False)
            if fault:
                self.log.warning(f"{child.kind} {child.pid} retiring after an internal error: "
                                 "a new one takes its place")
            else:
                self.log.info(f"{child.kind} {child.pid} reached max-use {child.max_use}: "
                              "retiring")
            return True
        return False

    # ending
    def reap(self, stopping: bool) -> bool:
        """Forget every child that exited and judge its death; True when a worker was one."""
        workers = False
        while True:
            pid, status = self.ops.reap()
            if not pid:
                return workers
            child = self.children.pop(pid, None)
            if child is None:
                exited = self.watched.pop(pid, None)
                if exited is not None:
                    exited(exit_code(status))
                continue
            self.read(child)  # a max-use retirement said just before the exit
            self.forget(child)
            workers = workers or child.kind == WORKER
            self._judge(child, exit_code(status), stopping)

    def _judge(self, child: Child, code: int, stopping: bool) -> None:
        if stopping or child.retiring:
            if code:
                self.log.warning(f"{child.kind} {child.pid} exited with status {code}")
            elif child.retiring:
                self.log.info(f"{child.kind} {child.pid} retired")
            return
        if child.kind == WORKER:
            self.worker_table.count_restart()
        self.throttles[child.kind].judge_death(child.kind, child.pid, code, child.ready,
                                               child.started, self.ops.now(), self.log)

    def forget(self, child: Child) -> None:
        """Its socketpair and its slot (its record is gone already)."""
        self.loop.remove(child.sock)
        child.sock.close()
        self.worker_table.clear(child.slot)

    def watchdog(self, now: float) -> None:
        """Kill a child whose loop is stuck (once); reap() and the next start replace it."""
        for child in self.children.values():
            beat = self.worker_table.last_beat(child.slot)
            if child.ready and beat and now - beat > WATCHDOG_SECONDS:
                self.log.error(f"{child.kind} {child.pid} has not turned its loop for "
                               f"{now - beat:.0f}s: killing it")
                self.kill(child.pid, signal.SIGKILL)
                self.worker_table.beat(child.slot, 0.0)

    def kill(self, pid: int, sig: int) -> None:
        try:
            self.ops.kill(pid, sig)
        except ProcessLookupError:
            pass

    def kill_all(self, kind: str, sig: int) -> None:
        for child in self.of(kind):
            self.kill(child.pid, sig)

    def end(self, child: Child) -> None:
        """Kill a child and wait for its end (the monitor: it has nothing to save)."""
        # killed before its socketpair closes: it must not see the end of file first and
        # log that the master is gone
        self.kill(child.pid, signal.SIGKILL)
        self.ops.wait(child.pid)
        del self.children[child.pid]
        self.forget(child)

    def new_generation(self) -> int:
        """A reload: the next children are of a new generation; the workers of the old one
        retire (RETIRE: they serve their clients until these close). How many retire."""
        self.generation += 1
        old = self.active(WORKER)
        for child in old:
            child.retiring = True
            self.worker_table.set_accepting(child.slot, False)
            self.kill(child.pid, RETIRE)
        return len(old)
