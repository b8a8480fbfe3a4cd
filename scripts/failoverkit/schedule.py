"""Which figure runs when: the daemon's one after the other, the original's slow ones beside.

Contract: run_all(run) measures every figure (only figure 8 with --tail, only figure 9 with
--slow; --quick alone skips figure 9), each one guarded (a failure is a problem of that figure,
the others go on), then waits for the background threads and runs the sanity checks. The
original's silent, blackhole and all-down rows mostly wait for timeouts (2 s or 30 s per
request), so they run in daemon threads beside the others.
"""

from __future__ import annotations

import threading

from failoverkit.checks import sanity
from failoverkit.figures import failover, recovery
from failoverkit.figures.all_down import all_down
from failoverkit.figures.hashing import hashing
from failoverkit.figures.released import released
from failoverkit.figures.slow import slow
from failoverkit.figures.tail import tail
from failoverkit.figures.weighted import weighted
from failoverkit.run import Run
from failoverkit.settings import CASES


def run_all(run: Run) -> None:
    """Every figure of the run, in the report's order."""
    if run.args.tail:
        run.guarded("tail", tail)
        return
    if run.args.slow:
        run.guarded("slow", slow)
        return
    background = _start_background(run)
    for case in CASES:
        run.guarded(f"failover/{case}/daemon", failover.daemon, case)
    run.guarded("failover/refused/perl", failover.perl, "refused")
    for impl in ("daemon", "perl"):
        run.guarded(f"recovery by probe/{impl}", recovery.probe, impl)
    run.guarded("recovery by check/daemon", recovery.check)
    run.guarded("hash/daemon", hashing)
    for impl in ("daemon", "perl"):
        run.guarded(f"weighted/{impl}", weighted, impl)
    run.guarded("all down/daemon", all_down, "daemon", "0")
    run.guarded("all down/daemon, checks", all_down, "daemon", "5")
    for workers in (1, 2):
        run.guarded(f"released/{workers}", released, workers)
    run.guarded("tail", tail)
    if not run.quick:
        run.guarded("slow", slow)
    for thread in background:
        while thread.is_alive():
            run.log(f"waiting for {thread.name} (the original pays every timeout)")
            thread.join(15)
    sanity(run)


def _start_background(run: Run) -> list[threading.Thread]:
    """The original's rows that mostly wait for timeouts, each in a thread of its own."""
    jobs = [(f"perl-{case}", f"failover/{case}/perl", failover.perl, case)
            for case in ("silent", "blackhole")]
    jobs.append(("perl-all-down", "all down/perl", all_down, "perl"))
    threads = []
    for name, what, fn, arg in jobs:
        thread = threading.Thread(target=run.guarded, daemon=True, name=name,
                                  args=(what, fn, arg))
        thread.start()
        threads.append(thread)
    return threads
