"""The command line of scripts/bench.py, the run with its cleanup, and the exit status.

Contract: main(argv) parses the options (parse_args: argparse errors exit 2), raises
RLIMIT_NOFILE for --idle (exit 2 when it cannot), runs the rows (or --soak) with SIGINT,
SIGTERM and SIGHUP turned into KeyboardInterrupt (or, with --inprocess, only measures inside
this process: inprocess.py), always stops every process it started
(exit 130 when interrupted), prints the report and returns its exit status (report.py,
soak.py): 1 on any error row, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from typing import Any

from .inprocess import main_inprocess
from .procs import raise_nofile
from .report import report_rows
from .rows import ROW_NAMES, run_rows
from .runner import Bench
from .soak import report_soak, run_soak

FD_MARGIN = 256  # descriptors of the bench beside its idle connections


def build_parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description="Closed-loop load benchmark of policy-protocol proxies on 127.0.0.1.")
    p.add_argument("--connections", "-c", type=int, default=None, metavar="C",
                   help="persistent client connections (32; 4 with --smoke)")
    p.add_argument("--seconds", "-t", type=float, default=None, metavar="T",
                   help="measured seconds per row (10; 1 with --smoke)")
    p.add_argument("--warmup", type=float, default=None, metavar="S",
                   help="warm-up seconds before measuring (2; 0.5 with --smoke)")
    p.add_argument("--rows", default=",".join(ROW_NAMES),
                   help="comma-separated subset of " + ",".join(ROW_NAMES))
    p.add_argument("--workers", type=int, default=cpus, metavar="N",
                   help=f"hapolicy daemon workers ({cpus}, the number of CPUs)")
    p.add_argument("--backend", metavar="HOST:PORT", help="use this backend instead of our own")
    p.add_argument("--backend-procs", type=int, default=min(2, cpus), metavar="K",
                   help="processes of our backend (SO_REUSEPORT)")
    p.add_argument("--generators", type=int, default=2, metavar="P",
                   help="load generator processes (2)")
    p.add_argument("--idle", type=int, default=0, metavar="N",
                   help="open N idle connections to the daemon (and HAProxy) first, to report "
                        "memory per idle connection")
    p.add_argument("--soak", type=int, default=0, metavar="N",
                   help="instead of the rows: run the daemon (with --max-use above N, so no "
                        "worker is replaced) until N requests are answered, sampling each "
                        "worker's VmRSS every second; report RSS after warm-up, at the end "
                        "and the growth")
    p.add_argument("--soak-warmup", type=int, default=None, metavar="R",
                   help="--soak: the RSS reference is taken after R requests (N/10)")
    p.add_argument("--soak-timeout", type=float, default=3600.0, metavar="S",
                   help="--soak: give up after S seconds (3600)")
    p.add_argument("--inprocess", type=int, default=0, metavar="N",
                   help="instead of the rows: relay N requests through each path inside this "
                        "process (the python floor's relay, the daemon's lane for one service "
                        "and for two balanced, its general path), --rounds times, and report "
                        "each one's CPU per request: a change of a few percent on the request "
                        "path shows here")
    p.add_argument("--rounds", type=int, default=5, metavar="R",
                   help="--inprocess: rounds of every path, interleaved (5; the median is the "
                        "figure)")
    p.add_argument("--smoke", action="store_true",
                   help="quick CI run: ~1 s per row, 4 connections; exit 1 on errors")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    smoke = args.smoke
    if args.connections is None:
        args.connections = 4 if smoke else 32
    if args.seconds is None:
        args.seconds = 1.0 if smoke else 10.0
    if args.warmup is None:
        args.warmup = 0.5 if smoke else 2.0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROW_NAMES]
    if unknown:
        p.error(f"unknown rows {unknown}: choose from {','.join(ROW_NAMES)}")
    args.rows = rows
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("connections", "workers", "generators", "backend_procs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0 or args.idle < 0:
        p.error("--seconds must be > 0, --warmup and --idle >= 0")
    if args.soak < 0 or (args.soak and args.soak < args.connections):
        p.error("--soak N: N must be at least the number of connections")
    if args.soak and args.soak_warmup is not None and not 0 <= args.soak_warmup < args.soak:
        p.error("--soak-warmup R: 0 <= R < N")
    if args.inprocess < 0 or args.rounds < 1:
        p.error("--inprocess N: N >= 0; --rounds R: R >= 1")
    if args.inprocess and args.soak:
        p.error("--inprocess and --soak: one at a time")
    if args.backend and ":" not in args.backend:
        p.error("--backend: expected HOST:PORT")


def _on_terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(bench: Bench) -> bool:
    """The backend, then the rows or the soak; every process stopped in the end, also on
    Ctrl-C, SIGTERM or SIGHUP. False when interrupted."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    try:
        bench.start_backend()
        if bench.args.soak:
            run_soak(bench)
        else:
            run_rows(bench)
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted: stopping every process it started\n")
        return False
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inprocess:
        return main_inprocess(args.inprocess, args.rounds, args.json)
    # this process holds the idle connections; each generator its share of the active ones
    need = args.idle + FD_MARGIN
    nofile = raise_nofile(need)
    if nofile < need:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        sys.stderr.write(f"bench: --idle {args.idle} needs {need} open files in this process, "
                         f"RLIMIT_NOFILE allows {nofile} (hard limit {hard}): raise the hard "
                         f"limit (ulimit -Hn, LimitNOFILE=) or lower --idle\n")
        return 2
    bench = Bench(args)
    if not run(bench):
        return 130
    if args.soak:
        return report_soak(args, bench, nofile)
    return report_rows(args, bench, nofile)
