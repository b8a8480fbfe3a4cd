"""The rows of the bench, declared as data, and the one function that measures a row.

Contract: ROWS lists every row in report order, each a Row: its name (as --rows takes it),
its title (as the report shows it), why it cannot run here (missing(): '' when it can) and
how to start it (start(bench, row): a Started, or None when it failed to start, its row
then already recorded as failed). measure_row() skips, starts, opens the --idle connections
the row asks for, measures (measure.measure) and always stops what it started.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from testkit.perl import original_missing
from testkit.ports import HOST, free_port

from .idle import open_idle_for, still_held
from .measure import Pids, Target, measure
from .procs import Child, children_of
from .runner import Bench
from .servers import HAPROXY, daemon_argv, haproxy_config, perl_argv, spawn_argv, start_emulator
from .startup import measure_start
from .tree import hapolicy_missing
from .wire import wait_answering


@dataclass
class Started:
    """A row's proxy, up and answering."""

    target: Target
    child: Child | None  # stopped after the row (None: nothing of the row's own)
    command: str | None  # the "command" of the row in the JSON (None: none)
    idle: int = 0  # idle connections to open to it first
    idle_pids: Pids | None = None  # whose memory they are measured by
    idle_note: str = ""


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    missing: Callable[[], str]
    start: Optional[Callable[[Bench, "Row"], Optional[Started]]]
    # a row of its own kind, measured by this instead of start and the closed loop
    measure: Optional[Callable[[Bench, "Row"], dict]] = None


def start_backend_row(bench: Bench, row: Row) -> Started:
    bench.log("measuring the backend alone")
    pids = bench.backend_pids
    return Started(Target(row.name, row.title, bench.backend_addr, pids, pids), None, None)


# no worker reaches max-use within a row: at the default 100000 each would retire a few
# seconds in, and as the bench's clients never reconnect, the retiring workers would serve the
# whole row beside idle replacements that the memory columns would count (Postfix's clients
# do reconnect, so a retiring worker soon hands over)
ROW_MAX_USE = "1000000000"


def start_daemon(bench: Bench, row: Row, *extra: str) -> Started | None:
    port = free_port()
    argv = daemon_argv(port, bench.args.workers, bench.backend_addr, "--max-use", ROW_MAX_USE,
                       *extra)
    bench.log("starting: " + " ".join(argv[1:]))
    # SIGINT: the master stops its workers at once (SIGTERM would drain them)
    master = bench.start_proxy(row.name, row.title, argv, port, signal.SIGINT)
    if master is None:
        return None
    return preforked(row, port, master, " ".join(argv[1:]), bench.args.idle)


def start_balanced(bench: Bench, row: Row) -> Started | None:
    """The daemon with a pool of two services (the one backend twice) balanced by weighted
    round robin, its transactions sticky: the lane, with the round robin's pick and the
    instance's look-up that the one service of the daemon row does without."""
    host, port = bench.backend_addr
    return start_daemon(bench, row, "-s", f"C={host}:{port}")


def start_hashed(bench: Bench, row: Row) -> Started | None:
    """The daemon with a pool that hashes: two services (the one backend twice), the pick by
    rendezvous hashing of client_address, so that every request takes the general path (a
    Job, the pick, Connection) instead of the lane."""
    host, port = bench.backend_addr
    return start_daemon(bench, row, "-s", f"C={host}:{port}", "--balance", "hash:client_address")


CACHED_FRESH_EVERY = 10  # the cached row: a new key every 10th request, 90 % hits


def start_cached(bench: Bench, row: Row) -> Started | None:
    """The daemon with a pool that caches its service's answers (request/cache.py): one
    request in ten is new (a miss, through a Job to the backend), its connection repeats it
    (hits, answered from the shared cache without the backend)."""
    started = start_daemon(bench, row, "--sticky-instance", "no", "--cache", "300",
                           "--cache-key", "client_address,helo_name,sender")
    if started is not None:
        started.target.fresh_every = CACHED_FRESH_EVERY
    return started


def preforked(row: Row, port: int, parent: Child, command: str, idle: int) -> Started:
    """A row's proxy that is a parent and the children serving (their memory is the row's)."""

    def children() -> list[int]:
        return children_of(parent.pid)

    def tree() -> list[int]:
        return [parent.pid, *children()]

    return Started(Target(row.name, row.title, (HOST, port), tree, children), parent,
                   command, idle, children)


def start_floor(bench: Bench, row: Row) -> Started | None:
    """The python floor (floor.py) with as many processes as the daemon has workers."""
    port = free_port()
    host, bport = bench.backend_addr
    argv = [sys.executable, FLOOR, str(port), host, str(bport), str(bench.args.workers)]
    bench.log("starting: " + " ".join(argv[1:]))
    parent = bench.start_proxy(row.name, row.title, argv, port)
    if parent is None:
        return None
    return preforked(row, port, parent, "python " + os.path.relpath(FLOOR) + " "
                     + " ".join(argv[2:]), bench.args.idle)


def start_spawn(bench: Bench, row: Row) -> Started | None:
    return start_emulated(bench, row, spawn_argv(bench.backend_addr), None, "")


def start_perl(bench: Bench, row: Row) -> Started | None:
    argv, sink, note = perl_argv(bench.backend_addr, bench.tmp)
    return start_emulated(bench, row, argv, sink, note)


def start_emulated(bench: Bench, row: Row, argv: list[str], sink: socket.socket | None,
                   note: str) -> Started | None:
    """argv under the spawn(8) emulator, one process per connection."""
    addr, emulator = start_emulator(bench.children, argv, bench.env, sink)
    why = wait_answering(addr, 15.0, lambda: bench.children.alive(emulator))
    if why:
        bench.fail(row.name, row.title, why)
        bench.children.stop(emulator)
        return None

    def spawned() -> list[int]:
        return children_of(emulator.pid)

    return Started(Target(row.name, row.title, addr, spawned, spawned), emulator,
                   "spawn: " + " ".join(argv) + note)


def start_haproxy(bench: Bench, row: Row) -> Started | None:
    port = free_port()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    maxconn = max(256, min(50000, (nofile - 200) // 2))
    cfg = os.path.join(bench.tmp, "haproxy.cfg")
    with open(cfg, "w") as handle:
        handle.write(haproxy_config(port, maxconn, bench.backend_addr))
    argv = [HAPROXY, "-db", "-f", cfg]
    bench.log("starting: " + " ".join(argv))
    proc = bench.start_proxy(row.name, row.title, argv, port)
    if proc is None:
        return None

    def tree() -> list[int]:
        return [proc.pid, *children_of(proc.pid)]

    # HAProxy holds two descriptors per proxied connection (client and server side)
    wanted = bench.args.idle
    count = min(wanted, maxconn - bench.args.connections - 16)
    note = ""
    if count < wanted:
        note = (f"HAProxy can hold only maxconn {maxconn} connections within "
                f"RLIMIT_NOFILE {nofile} (2 descriptors each): {count} idle connections "
                f"opened instead of {wanted}")
        bench.warnings.append(note)
    return Started(Target(row.name, row.title, (HOST, port), tree, tree), proc,
                   " ".join(argv) + f" (nbthread 1, maxconn {maxconn})", count, tree, note)


def haproxy_missing() -> str:
    if not os.access(HAPROXY, os.X_OK):
        return f"{HAPROXY} not installed (apt-get install haproxy)"
    return ""


FLOOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.py")
ROWS = (
    Row("backend", "backend", lambda: "", start_backend_row),
    Row("floor", "python floor", lambda: "", start_floor),
    Row("daemon", "hapolicy daemon", hapolicy_missing, start_daemon),
    Row("balanced", "hapolicy balanced", hapolicy_missing, start_balanced),
    Row("hashed", "hapolicy hashed", hapolicy_missing, start_hashed),
    Row("cached", "hapolicy cached", hapolicy_missing, start_cached),
    Row("spawn", "hapolicy spawn", hapolicy_missing, start_spawn),
    Row("haproxy", "haproxy", haproxy_missing, start_haproxy),
    Row("perl", "perl original", original_missing, start_perl),
    Row("start", "spawn start", lambda: "", None, measure_start),
)
ROW_NAMES = tuple(row.name for row in ROWS)
ROW_TITLES = {row.name: row.title for row in ROWS}


def measure_row(bench: Bench, row: Row) -> None:
    """One row, from start to stop, appended to bench.rows."""
    why = row.missing()
    if why:
        return bench.skip(row.name, row.title, why)
    if row.measure is not None:
        return bench.add(row.measure(bench, row))
    assert row.start is not None
    started = row.start(bench, row)
    if started is None:
        return None
    try:
        target = started.target
        socks = open_idle_for(bench, row.name, row.title, target.addr,
                              started.idle_pids or target.mem_pids, started.idle,
                              started.idle_note)
        try:
            result = measure(bench, target)
            still_held(bench, row.name, row.title, socks)
        finally:
            for sock in socks:
                sock.close()
        if started.command is not None:
            result["command"] = started.command
        bench.add(result)
    finally:
        if started.child is not None:
            bench.children.stop(started.child)
    return None


def run_rows(bench: Bench) -> None:
    """The rows chosen by --rows, in report order."""
    for row in ROWS:
        if row.name in bench.args.rows:
            measure_row(bench, row)
