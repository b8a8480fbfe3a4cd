"""The `spawn start` row: how long a process spawned for one SMTP connection takes to answer.

Contract: measure_start(bench, row) starts each program RUNS times (SMOKE_RUNS with --smoke)
after a first start not counted, the programs interleaved, each the way spawn(8) starts one
(one socket as its stdin, stdout and stderr, a request already waiting on it), and times from
just before the start to its whole answer: hapolicy in spawn mode in front of the bench's
backend (it must answer the backend's own answer), the Perl original when installed (through
its syslog shim where there is no /dev/log) and `python -c pass` with the bench's interpreter,
timed to its exit: what any Python program pays before its first line. It returns the row, kind
'start': per program the median, p10, p90 and minimum in ms and the command; status 'errors'
when an answer was wrong or missing (its reason says which), 'ok' otherwise; a program that
cannot run here is 'skipped' with why. Its processes are its own and short-lived: each is ended
and reaped before the next starts (and would end by itself at EOF if the bench died).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from testkit.perl import original_missing
from testkit.protocol import read_frame

from .servers import perl_argv, spawn_argv
from .tree import REPO, hapolicy_missing
from .wire import make_request

if TYPE_CHECKING:
    from .rows import Row
    from .runner import Bench

RUNS = 30
SMOKE_RUNS = 3
RUN_TIMEOUT = 10.0


class Program:
    """One program of the row: how to run it, and what it answers (None: nothing, it exits)."""

    def __init__(self, title: str, argv: list[str], answer: bytes | None,
                 missing: str = "", sink: socket.socket | None = None, note: str = "") -> None:
        self.title = title
        self.argv = argv
        self.answer = answer
        self.missing = missing
        self.sink = sink  # the Perl original's syslog, drained after each run
        self.note = note
        self.times: list[float] = []
        self.problem = ""


def programs(bench: Bench) -> list[Program]:
    backend = bench.backend_addr
    answer = bench.backend.answer
    found = [Program("hapolicy spawn", spawn_argv(backend), answer, hapolicy_missing())]
    missing = original_missing()
    if missing:
        found.append(Program("perl original", [], answer, missing))
    else:
        tmp = os.path.join(bench.tmp, "start")  # the perl row has its syslog sink in tmp
        os.makedirs(tmp, exist_ok=True)
        argv, sink, note = perl_argv(backend, tmp)
        if sink is not None:
            sink.setblocking(False)
        found.append(Program("perl original", argv, answer, sink=sink, note=note))
    found.append(Program("python -c pass", [sys.executable, "-c", "pass"], None))
    return found


def run_once(program: Program, env: dict[str, str], request: bytes) -> tuple[float, str]:
    """(seconds from the start to the answer, or to the exit; what went wrong or '')."""
    ours, theirs = socket.socketpair()
    proc = None
    try:
        if program.answer is not None:
            ours.sendall(request)  # smtpd writes its request as soon as it is connected
        begin = time.perf_counter()
        proc = subprocess.Popen(program.argv, stdin=theirs, stdout=theirs, stderr=theirs,
                                env=env, cwd=REPO)
        theirs.close()
        ours.settimeout(RUN_TIMEOUT)
        if program.answer is None:  # its exit closes the socket: EOF (Popen.wait would poll)
            try:
                while ours.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            elapsed = time.perf_counter() - begin
            proc.wait(RUN_TIMEOUT)
            return elapsed, ""
        data = read_frame(ours)
        elapsed = time.perf_counter() - begin
        if data != program.answer:
            return elapsed, f"answered {data[:80]!r}, not {program.answer!r}"
        ours.shutdown(socket.SHUT_WR)  # EOF: the process ends, as when smtpd lets go
        proc.wait(RUN_TIMEOUT)
        return elapsed, ""
    except (OSError, subprocess.SubprocessError) as exc:
        return 0.0, f"{type(exc).__name__}: {exc}"
    finally:
        ours.close()
        theirs.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if program.sink is not None:
            _drain(program.sink)


def _drain(sink: socket.socket) -> None:
    try:
        while sink.recv(65536):
            pass
    except OSError:
        pass


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def measure_start(bench: Bench, row: Row) -> dict[str, Any]:
    runs = SMOKE_RUNS if bench.args.smoke else RUNS
    found = programs(bench)
    bench.log(f"{row.title}: {runs} starts of each of {', '.join(p.title for p in found)}")
    request = make_request(0)
    try:
        for run in range(runs + 1):  # the first, not counted, writes hapolicy's bytecode
            for program in found:
                if program.missing or program.problem:
                    continue
                elapsed, problem = run_once(program, bench.env, request)
                if problem:
                    program.problem = problem
                elif run:
                    program.times.append(elapsed)
    finally:
        for program in found:
            if program.sink is not None:
                program.sink.close()
    return start_row(row, runs, found)


def start_row(row: Row, runs: int, found: list[Program]) -> dict[str, Any]:
    results = []
    for p in found:
        entry: dict[str, Any] = {"title": p.title, "command": " ".join(p.argv) + p.note}
        if p.missing:
            entry.update(status="skipped", reason=p.missing)
        elif p.problem:
            entry.update(status="errors", reason=p.problem)
        else:
            entry.update(status="ok", runs=len(p.times),
                         median_ms=percentile_ms(p.times, 0.5),
                         p10_ms=percentile_ms(p.times, 0.1),
                         p90_ms=percentile_ms(p.times, 0.9),
                         min_ms=min(p.times) * 1000.0)
        results.append(entry)
    bad = [f"{r['title']}: {r['reason']}" for r in results if r["status"] == "errors"]
    out: dict[str, Any] = {"row": row.name, "title": row.title, "kind": "start",
                           "status": "errors" if bad else "ok", "runs": runs,
                           "requests": sum(r.get("runs", 0) for r in results),
                           "programs": results}
    if bad:
        out["reason"] = "; ".join(bad)
    return out


def median_of(rows: list[dict[str, Any]], title: str) -> float | None:
    """The median start of one program of the start row, if it was measured."""
    for row in rows:
        if row.get("kind") == "start":
            for entry in row["programs"]:
                if entry["title"] == title and entry["status"] == "ok":
                    return entry["median_ms"]
    return None


def render_start(row: dict[str, Any], align: Any) -> list[str]:
    """The start row's own table (its figures are not those of the load rows)."""
    table = [[row["title"], "median ms", "p10 ms", "p90 ms", "min ms", "runs"]]
    notes = []
    for entry in row["programs"]:
        if entry["status"] == "ok":
            table.append([entry["title"], f"{entry['median_ms']:.1f}", f"{entry['p10_ms']:.1f}",
                          f"{entry['p90_ms']:.1f}", f"{entry['min_ms']:.1f}",
                          str(entry["runs"])])
            notes.append(f"  {entry['title']}: {_short(entry['command'])}")
        else:
            notes.append(f"  {entry['title']}: {entry['status']}: {entry.get('reason', '')}")
    lines = [f"{row['title']}: from the process's start to its first answer (python -c pass: to "
             f"its exit), {row['runs']} runs of each, interleaved"]
    return lines + align(table) + notes


def _short(command: str) -> str:
    """The command with the interpreter's path shortened to its name."""
    head, sep, rest = command.partition(" ")
    return os.path.basename(head) + sep + rest
