"""The state of one bench run: its processes, its backend, its rows, warnings and idle figures.

Contract: Bench(args) owns a Children set and a temporary directory; close() stops every
process it started and removes the directory (call it in a finally). start_backend() starts
our backend (or takes --backend) and learns the answer every row must get: it raises
SystemExit when the backend does not answer, or answers something that cannot be told from
a proxy's default answer. start_proxy() starts a proxy and waits until it answers, or fails
its row (with the tail of its log). Rows are appended to .rows by skip(), fail() and add().
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from testkit.ports import HOST

from .procs import Child, Children
from .servers import BackendView, log_tail, start_backend
from .tree import REPO, child_env
from .wire import ANSWER, classify, exchange_once, wait_answering


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children = Children()
        self.tmp = tempfile.mkdtemp(prefix="hapolicy-bench-")
        self.rows: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.idle: dict[str, Any] = {}
        self.soak_result: dict[str, Any] | None = None
        self.backend_addr: tuple[str, int] = (HOST, 0)
        self.backend_kids: list[Child] = []
        self.backend = BackendView(ANSWER, None)
        self.env = child_env(self.tmp)

    def log(self, message: str) -> None:
        if not self.args.quiet:
            sys.stderr.write(f"bench: {message}\n")
            sys.stderr.flush()

    def backend_pids(self) -> list[int]:
        return [k.pid for k in self.backend_kids]

    def skip(self, name: str, title: str, why: str) -> None:
        self.log(f"{title}: skipped: {why}")
        self.rows.append({"row": name, "title": title, "status": "skipped", "reason": why})

    def fail(self, name: str, title: str, why: str) -> None:
        self.log(f"{title}: FAILED: {why}")
        self.rows.append({"row": name, "title": title, "status": "failed", "reason": why})

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if row.get("kind") == "start":
            self.log(f"{row['title']}: " + ", ".join(
                f"{p['title']} {p['median_ms']:.1f} ms" if p["status"] == "ok" else
                f"{p['title']} {p['status']}" for p in row["programs"]))
        elif row["status"] in ("ok", "errors"):
            self.log(f"{row['title']}: {row['rps']:.0f} req/s, p99 {row['p99_ms']:.2f} ms, "
                     f"{row['errors']} errors")
        else:
            self.log(f"{row['title']}: FAILED: {row.get('reason')}")

    def start_backend(self) -> None:
        args = self.args
        if args.backend:
            host, _, port = args.backend.rpartition(":")
            self.backend_addr = (host.strip("[]") or HOST, int(port))
            self.log(f"using the backend at {args.backend}")
        else:
            self.backend_addr, self.backend_kids, counters = start_backend(self.children,
                                                                           args.backend_procs)
            self.backend = BackendView(ANSWER, counters)
            self.log(f"backend: {args.backend_procs} process(es) on port "
                     f"{self.backend_addr[1]}")
        why = wait_answering(self.backend_addr, 10.0, lambda: all(
            self.children.alive(k) for k in self.backend_kids))
        if why:
            raise SystemExit(f"bench: the backend does not answer: {why}")
        self.backend = BackendView(self._backend_answer(), self.backend.counters)

    def _backend_answer(self) -> bytes:
        """The answer every row must get: the backend's own, as it gives it to the bench."""
        why, answer = exchange_once(self.backend_addr, 5.0)
        if why:
            raise SystemExit(f"bench: the backend does not answer: {why}")
        if self.backend.counters is not None and answer != ANSWER:
            raise SystemExit(f"bench: our backend answers {answer!r}, not {ANSWER!r}")
        if classify(answer, b"") == "default":
            raise SystemExit(f"bench: the backend answers {answer!r}, which cannot be told "
                             f"from a proxy's default answer: make it answer a distinctive "
                             f"action")
        self.log(f"expected answer: {answer!r}")
        return answer

    def start_proxy(self, name: str, title: str, argv: list[str], port: int,
                    stop_signal: int = signal.SIGTERM) -> Child | None:
        """The proxy started and answering on port, or None (its row failed)."""
        log_path = os.path.join(self.tmp, f"{name}.log")
        child = self.children.popen(name, argv, log_path, self.env, stop_signal, cwd=REPO)
        why = wait_answering((HOST, port), 15.0, lambda: self.children.alive(child))
        if why:
            self.children.stop(child)
            self.fail(name, title, f"{why}; {log_tail(log_path)}")
            return None
        return child

    def close(self) -> None:
        self.children.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)
