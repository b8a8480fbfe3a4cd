"""The state of one run: its options and sizes, the report being filled, problems, progress.

Contract: Run(args) makes a private directory in /tmp (removed by close()) and sets the sizes
of the figures from --quick. report holds one entry per figure, in the JSON's order; a figure
stores its results there. problem() records a failed check (thread-safe) and logs it;
guarded(what, fn, *args) calls fn(run, *args) and turns an exception into a problem, so that
one figure failing does not stop the others (none once `stopping`: an interrupted run's
failures are the cleanup's doing). log() writes a progress line on stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import traceback
from typing import Any, Callable

from testkit.perl import Perl

from failoverkit.settings import CASES


class Run:
    """One run of the figures: what they share."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.following = 20 if self.quick else 50
        self.perl_following = {"silent": 2 if self.quick else 5, "refused": self.following,
                               "blackhole": 0 if self.quick else 1}
        self.trials = 2 if self.quick else 5
        self.keys = 300 if self.quick else 1000
        self.tmp = tempfile.mkdtemp(prefix="hapfo-", dir="/tmp")
        self.perl = Perl(self.tmp, not args.no_perl)
        self.problems: list[str] = []
        self.report: dict[str, Any] = {"failover": {c: {} for c in CASES},
                                       "recovery": {"probe": {}, "check": {}},
                                       "hash": {}, "weighted": {}, "all_down": {},
                                       "released": {}, "tail": {}, "slow": {}}
        self._lock = threading.Lock()
        self.stopping = False  # interrupted: failures from here on are the cleanup's doing

    def log(self, message: str) -> None:
        if not self.args.quiet:
            sys.stderr.write(f"failover: {message}\n")
            sys.stderr.flush()

    def problem(self, message: str) -> None:
        with self._lock:
            self.problems.append(message)
        self.log(f"PROBLEM: {message}")

    def guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """fn(self, *args); an exception is a problem of `what`, not the end of the run."""
        try:
            fn(self, *args)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one figure failing does not stop the others
            if self.stopping:
                return
            self.problem(f"{what}: {exc!r}")
            if self.args.verbose:
                traceback.print_exc()

    def close(self) -> None:
        self.perl.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
