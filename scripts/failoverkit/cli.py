"""The command line of scripts/failover.py: options, signals, cleanup, output, exit status.

Contract: main(argv, description) runs the figures (failoverkit.schedule), prints the report
(failoverkit.report), writes it as JSON with --json, and returns the exit status: 0, 1 when a
figure failed or a check did not hold (the report's "problems"), 130 when interrupted (Ctrl-C,
SIGTERM or SIGHUP). Whatever happens, every process and backend the run started is stopped
before it returns (failoverkit.registry), with the signals ignored meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from testkit.perl import PERL_HAPOLICY

from failoverkit.registry import REGISTRY
from failoverkit.report import render
from failoverkit.run import Run
from failoverkit.schedule import run_all

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse_args(argv: list[str] | None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer requests and trials, skip the original's 30 s blackhole case "
                   "and figure 9 (unless --slow)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    p.add_argument("--no-perl", action="store_true", help="do not run the Perl original")
    p.add_argument("--tail", action="store_true",
                   help="only figure 8: the latency tail with and without hedging and shadows")
    p.add_argument("--slow", action="store_true",
                   help="only figure 9: slow services, hapolicy's balances and HAProxy's "
                   "leastconn side by side")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--verbose", action="store_true", help="tracebacks of failed figures")
    return p.parse_args(argv)


def _on_terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, description: str = "") -> int:
    args = parse_args(argv, description)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    started_at = time.monotonic()
    run = Run(args)
    interrupted = False
    try:
        run_all(run)
    except KeyboardInterrupt:
        interrupted = run.stopping = True
        sys.stderr.write("failover: interrupted: stopping everything it started\n")
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        REGISTRY.close_all()
        run.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        return 130
    report = full_report(run, time.monotonic() - started_at)
    print(render(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return 1 if run.problems else 0


def full_report(run: Run, seconds: float) -> dict[str, Any]:
    """The run's configuration, its figures and its problems, as the JSON has them."""
    perl = run.perl
    perl_text = (f"{PERL_HAPOLICY} in spawn style, one process on a socketpair, requests one at "
                 "a time" + (f" ({perl.note})" if perl.note else "")
                 if not perl.missing else f"skipped: {perl.missing}")
    config = {"units": "seconds", "quick": run.args.quick, "tail_only": run.args.tail,
              "slow_only": run.args.slow,
              "following": run.following, "perl_following": run.perl_following,
              "trials": run.trials, "hash_keys": run.keys, "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "perl": perl_text,
              "seconds": round(seconds, 1)}
    return {"config": config, **run.report, "problems": run.problems}
