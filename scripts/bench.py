#!/usr/bin/env python3
"""Closed-loop load benchmark of Postfix policy-protocol proxies, all on 127.0.0.1.

Rows, each measured only when available (otherwise reported as skipped, with why):

  backend         a backend that answers `action=DUNNO hapolicy-bench` at once (epoll loop,
                  SO_REUSEPORT processes, counting the requests it serves), measured alone: the
                  ceiling of this machine and load generator
  hapolicy daemon python -m hapolicy --listen ... --workers N -s B=127.0.0.1:BACKEND
  hapolicy spawn  python -m hapolicy -s B=... under a spawn(8) emulator (one process per
                  connection, the socket as its stdin, stdout and stderr)
  haproxy         HAProxy in TCP mode, one thread (/usr/sbin/haproxy, Debian package haproxy)
  perl original   /usr/sbin/hapolicy -s B=...:10 (Debian package hapolicy) under the emulator

The load generator keeps C persistent connections busy (closed loop: send a ~600-byte
smtpd_access_policy request, wait for the whole answer, check it, repeat) for T seconds after a
warm-up, split over P generator processes whose own CPU time is reported. Each row reports
requests/s, latency percentiles, errors, peak RSS of the proxy's processes, and CPU shares.

Every answer is compared with the backend's own, byte for byte: a proxy's default answer
(`action=dunno`, e.g. when it never asked the backend) and any other answer count as errors,
and so does a row that got more right answers than the backend served requests during it.
With --backend HOST:PORT the expected answer is the one that backend gives the bench directly
(it must not be `dunno`, which cannot be told from a default answer), and its requests are
not counted.

    python scripts/bench.py                      # every available row, 32 connections, 10 s
    python scripts/bench.py --rows daemon,haproxy --connections 64 --seconds 20
    python scripts/bench.py --idle 2000          # + memory per idle connection of the daemon
    python scripts/bench.py --soak 1000000       # the daemon's worker RSS over 1M requests
    python scripts/bench.py --smoke --json out.json   # CI: ~1 s per row, non-zero on errors

With --idle N the bench holds N idle connections itself: it raises its RLIMIT_NOFILE to the
hard limit and stops at once if that is still too low. HAProxy needs two descriptors per
proxied connection; when its limit cannot hold N, it gets fewer, and the report says so.

--soak N runs only the daemon (--max-use above N, so that no worker is replaced) until N
requests are answered, cycling through 4096 distinct requests, and samples each worker's
VmRSS every second: RSS after warm-up (N/10 requests), at the end, growth, the least-squares
slope, and a timeline. It exits non-zero on errors or when a worker was replaced.

Stdlib only, Linux only (/proc, epoll). Every process it starts is killed at the end, also on
Ctrl-C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit.procs import (HOST, Child, Children, ProcSampler, children_of,  # noqa: E402
                            free_port, host_cpu, memory_kib, open_fds, pss_kib, raise_nofile)
from benchkit.wire import (ANSWER, DEFAULT_ANSWER, classify, exchange_once,  # noqa: E402,F401
                           make_request, wait_answering, wait_readable)
from benchkit.loadgen import Generators  # noqa: E402
from benchkit.servers import (HAPROXY, PERL_HAPOLICY, PERL_SYSLOG_SHIM, REPO,  # noqa: E402
                              BackendView, hapolicy_missing, start_backend, start_emulator)
from benchkit.servers import log_tail as _tail  # noqa: E402

ROWS = ("backend", "daemon", "spawn", "haproxy", "perl")
ROW_TITLES = {"backend": "backend", "daemon": "hapolicy daemon", "spawn": "hapolicy spawn",
              "haproxy": "haproxy", "perl": "perl original"}
SATURATED = 0.90  # a process busier than this share of one core is saturated
SOAK_VARIETY = 4096  # --soak cycles through this many distinct requests
FD_MARGIN = 256  # descriptors of the bench beside its idle connections




# ---------------------------------------------------------------------------------------------
# idle connections

def open_idle(addr: tuple[str, int], count: int, expected: bytes, batch: int = 200,
              timeout: float = 30.0) -> tuple[list[socket.socket], str, dict[str, int]]:
    """count connections that each had one request answered, then stay idle.

    (socks, error, answers counted by kind: see classify)."""
    kinds = {"ok": 0, "default": 0, "wrong": 0}
    socks: list[socket.socket] = []
    request = make_request(999999)
    deadline = time.monotonic() + timeout
    try:
        while len(socks) < count:
            group = []
            for _ in range(min(batch, count - len(socks))):
                sock = socket.create_connection(addr, timeout=10)
                group.append(sock)
                socks.append(sock)
                sock.sendall(request)
            for sock in group:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return socks, "an idle connection was closed by the proxy", kinds
                    data += chunk
                kinds[classify(data, expected)] += 1
    except OSError as exc:
        return socks, f"opening idle connection {len(socks) + 1}: {exc}", kinds
    return socks, "", kinds



# ---------------------------------------------------------------------------------------------
# one row

def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not values:
        return 0.0
    rank = max(1, min(len(values), int(-(-q * len(values) // 1))))
    return values[rank - 1] / 1e6


def measure(children: Children, args: argparse.Namespace, name: str, addr: tuple[str, int],
            proxy_pids: Callable[[], list[int]], mem_pids: Callable[[], list[int]],
            backend_pids: Callable[[], list[int]], backend: BackendView) -> dict[str, Any]:
    """Run the closed loop against addr and collect everything for one row."""
    row: dict[str, Any] = {"row": name, "title": ROW_TITLES[name], "status": "ok",
                           "address": f"{addr[0]}:{addr[1]}"}
    grace = 1.0 if args.smoke else 3.0
    served_before = backend.served()
    gens = Generators(children, addr, args.connections, args.generators, grace,
                      expected=backend.answer)
    try:
        why = gens.wait_ready(60.0)
        if why:
            row.update(status="failed", reason=why)
            return row
        proxy = ProcSampler(proxy_pids)
        memory = ProcSampler(mem_pids)
        backend_procs = ProcSampler(backend_pids)
        gens.go(args.warmup, args.seconds)
        started = time.monotonic()
        w_end = started + args.warmup
        end = w_end + args.seconds
        time.sleep(max(0.0, w_end - time.monotonic()))
        proxy.start()
        memory.start()
        backend_procs.start()
        host0 = host_cpu()
        self_ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        while time.monotonic() < end:
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))
            for sampler in (memory, proxy, backend_procs):
                sampler.sample()
        proxy.finish()
        backend_procs.finish()
        memory.finish()
        host1 = host_cpu()
        self_ru1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - t0
        results = gens.results(args.seconds + grace + 30.0)
    finally:
        gens.close()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        row.update(status="failed", reason=failed[0])
        return row
    row.update(answer_counts(results, backend.served_since(served_before)))
    lat = array.array("q")
    for r in results:
        lat.frombytes(r["lat"])
    values = sorted(lat)
    requests = len(values)
    gen_wall = max(r["wall"] for r in results) or args.seconds
    gen_shares = [r["cpu"] / r["wall"] if r["wall"] else 0.0 for r in results]
    proxy_cpu = proxy.cpu_by_pid()
    backend_cpu = backend_procs.cpu_by_pid()
    idle_ticks = host1[0] - host0[0]
    total_ticks = host1[1] - host0[1]
    cores = os.cpu_count() or 1
    busy_cores = (total_ticks - idle_ticks) / total_ticks * cores if total_ticks else 0.0
    irq_cores = (host1[2] - host0[2]) / total_ticks * cores if total_ticks else 0.0
    bench_cpu = (self_ru1.ru_utime - self_ru0.ru_utime + self_ru1.ru_stime - self_ru0.ru_stime)
    ours = sum(proxy_cpu.values()) + bench_cpu + sum(r["cpu"] for r in results)
    if name != "backend":
        ours += sum(backend_cpu.values())
    row.update(
        requests=requests,
        rps=requests / gen_wall,
        p50_ms=percentile(values, 0.50),
        p99_ms=percentile(values, 0.99),
        p999_ms=percentile(values, 0.999),
        max_ms=values[-1] / 1e6 if values else 0.0,
        errors=(row["wrong_answers"] + row["default_answers"] + row["not_served"]
                + sum(r["errors"] + r["unanswered"] for r in results)),
        connection_errors=sum(r["errors"] for r in results),
        unanswered=sum(r["unanswered"] for r in results),
        reconnects=sum(r["reconnects"] for r in results),
        processes=len(memory.hwm),
        rss_peak_sum_mib=sum(memory.hwm.values()) / 1024,
        rss_peak_max_mib=max(memory.hwm.values(), default=0) / 1024,
        pss_sum_mib=sum(memory.pss.values()) / 1024,
        proxy_cpu_share=sum(proxy_cpu.values()) / wall,
        proxy_cpu_per_process=sorted((v / wall for v in proxy_cpu.values()), reverse=True),
        proxy_sys_fraction=(sum(proxy.cpu_by_pid(slice(1, 2)).values()) / sum(proxy_cpu.values())
                            if sum(proxy_cpu.values()) else 0.0),
        cpu_us_per_request=sum(proxy_cpu.values()) / requests * 1e6 if requests else 0.0,
        backend_cpu_share=sum(backend_cpu.values()) / wall,
        backend_cpu_max_process=max(backend_cpu.values(), default=0.0) / wall,
        generator_cpu_share_max=max(gen_shares),
        generator_cpu_share_sum=sum(gen_shares),
        host_idle=idle_ticks / total_ticks if total_ticks else 0.0,
        irq_cpu_share=irq_cores,
        other_cpu_share=max(0.0, busy_cores - irq_cores - ours / wall),
        seconds=gen_wall,
    )
    if row["errors"]:
        row["status"] = "errors"
    elif not requests:
        row.update(status="failed", reason="no request answered")
    return row


def answer_counts(results: list[dict[str, Any]], served: int | None) -> dict[str, Any]:
    """The answers of a row by kind, and the right ones the backend cannot have served.

    served: requests the backend served during the row (None: not known). A proxy that
    answers the backend's answer without asking it (a cache, a bug) shows as not_served."""
    correct = sum(r["correct"] for r in results)
    return {"correct_answers": correct,
            "default_answers": sum(r["defaults"] for r in results),
            "wrong_answers": sum(r["wrong"] for r in results),
            "backend_served": served,
            "not_served": max(0, correct - served) if served is not None else 0}


# ---------------------------------------------------------------------------------------------
# the run

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children = Children()
        self.tmp = tempfile.mkdtemp(prefix="hapolicy-bench-")
        self.rows: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.idle: dict[str, Any] = {}
        self.soak_result: dict[str, Any] | None = None
        self.backend_addr: tuple[str, int] | None = None
        self.backend_kids: list[Child] = []
        self.backend = BackendView(ANSWER, None)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        env.pop("PYTHONDEVMODE", None)
        self.env = env

    def log(self, message: str) -> None:
        if not self.args.quiet:
            sys.stderr.write(f"bench: {message}\n")
            sys.stderr.flush()

    def backend_pids(self) -> list[int]:
        return [k.pid for k in self.backend_kids]

    def skip(self, name: str, why: str) -> None:
        self.log(f"{ROW_TITLES[name]}: skipped: {why}")
        self.rows.append({"row": name, "title": ROW_TITLES[name], "status": "skipped",
                          "reason": why})

    def fail(self, name: str, why: str) -> None:
        self.log(f"{ROW_TITLES[name]}: FAILED: {why}")
        self.rows.append({"row": name, "title": ROW_TITLES[name], "status": "failed",
                          "reason": why})

    def run(self) -> None:
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
        if args.soak:
            self.soak()
            return
        for name in ROWS:
            if name in args.rows:
                getattr(self, "row_" + name)()

    def _backend_answer(self) -> bytes:
        """The answer every row must get: the backend's own, as it gives it to the bench."""
        assert self.backend_addr is not None
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

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if row["status"] in ("ok", "errors"):
            self.log(f"{row['title']}: {row['rps']:.0f} req/s, p99 {row['p99_ms']:.2f} ms, "
                     f"{row['errors']} errors")
        else:
            self.log(f"{row['title']}: FAILED: {row.get('reason')}")

    def row_backend(self) -> None:
        assert self.backend_addr is not None
        self.log("measuring the backend alone")
        pids = self.backend_pids
        self._add(measure(self.children, self.args, "backend", self.backend_addr, pids, pids,
                          pids, self.backend))

    def _start_proxy(self, name: str, argv: list[str], port: int,
                     stop_signal: int = signal.SIGTERM) -> Child | None:
        log_path = os.path.join(self.tmp, f"{name}.log")
        child = self.children.popen(name, argv, log_path, self.env, stop_signal)
        why = wait_answering((HOST, port), 15.0, lambda: self.children.alive(child))
        if why:
            self.children.stop(child)
            self.fail(name, f"{why}; {_tail(log_path)}")
            return None
        return child

    def daemon_argv(self, port: int, *extra: str) -> list[str]:
        assert self.backend_addr is not None
        return [sys.executable, "-m", "hapolicy", "--listen", f"{HOST}:{port}",
                "--workers", str(self.args.workers), "-L",
                "-s", f"B={self.backend_addr[0]}:{self.backend_addr[1]}", *extra]

    def row_daemon(self) -> None:
        why = hapolicy_missing()
        if why:
            return self.skip("daemon", why)
        port = free_port()
        argv = self.daemon_argv(port)
        self.log("starting: " + " ".join(argv[1:]))
        # SIGINT: the master stops its workers at once (SIGTERM would drain them)
        master = self._start_proxy("daemon", argv, port, signal.SIGINT)
        if master is None:
            return None
        try:
            def workers() -> list[int]:
                return children_of(master.pid)

            def tree() -> list[int]:
                return [master.pid, *workers()]

            idle_socks = self._idle("daemon", (HOST, port), workers)
            try:
                row = measure(self.children, self.args, "daemon", (HOST, port), tree, workers,
                              self.backend_pids, self.backend)
                self._idle_held("daemon", idle_socks)
            finally:
                for sock in idle_socks:
                    sock.close()
            row["command"] = " ".join(argv[1:])
            self._add(row)
        finally:
            self.children.stop(master)
        return None

    def soak(self) -> None:
        """The daemon alone until --soak N requests are answered; each worker's VmRSS every
        second. The workers must live through it: --max-use is set well above N."""
        args = self.args
        why = hapolicy_missing()
        if why:
            raise SystemExit(f"bench: --soak: {why}")
        port = free_port()
        max_use = 2 * args.soak + 1_000_000
        argv = self.daemon_argv(port, "--max-use", str(max_use))
        self.log("starting: " + " ".join(argv[1:]))
        master = self._start_proxy("daemon", argv, port, signal.SIGINT)
        if master is None:
            raise SystemExit(f"bench: --soak: the daemon did not start: {self.rows[-1]['reason']}")
        try:
            self.soak_result = self._soak(master, port, max_use)
            self.soak_result["command"] = " ".join(argv[1:])
        finally:
            self.children.stop(master)

    def _soak(self, master: Child, port: int, max_use: int) -> dict[str, Any]:
        args = self.args
        total = args.soak
        warm = args.soak_warmup if args.soak_warmup is not None else total // 10
        workers = sorted(children_of(master.pid))
        deadline = time.monotonic() + 10.0
        while len(workers) != args.workers and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = sorted(children_of(master.pid))
        served_before = self.backend.served()
        gens = Generators(self.children, (HOST, port), args.connections, args.generators,
                          grace=5.0, limit=total, variety=SOAK_VARIETY,
                          expected=self.backend.answer)
        samples: list[dict[str, Any]] = []
        baseline: dict[str, Any] | None = None

        def sample(t0: float) -> dict[str, Any]:
            entry = {"t": time.monotonic() - t0, "answered": gens.answered(),
                     "rss": {pid: memory_kib(pid).get("VmRSS", 0) for pid in workers},
                     "master_rss": memory_kib(master.pid).get("VmRSS", 0)}
            samples.append(entry)
            return entry

        try:
            why = gens.wait_ready(60.0)
            if why:
                raise SystemExit(f"bench: --soak: {why}")
            self.log(f"soak: {total} requests on {args.connections} connections, "
                     f"{len(workers)} workers {workers}, RSS after {warm} requests is the "
                     f"reference")
            gens.go(0.0, args.soak_timeout)
            t0 = time.monotonic()
            sample(t0)
            next_log = t0 + 10.0
            while True:
                time.sleep(1.0)
                entry = sample(t0)
                if baseline is None and entry["answered"] >= warm:
                    baseline = entry
                if time.monotonic() >= next_log:
                    next_log += 10.0
                    self.log(f"soak: {entry['answered']} answered, worker RSS "
                             + ", ".join(f"{v} KiB" for v in entry["rss"].values()))
                if entry["answered"] >= total or not gens.running():
                    break
                if entry["t"] > args.soak_timeout + 10.0:
                    break
            results = gens.results(30.0)
            time.sleep(1.2)  # the workers show their counts in their titles every second
            end = sample(t0)
        finally:
            gens.close()
        failed = [r["failed"] for r in results if "failed" in r]
        if failed:
            raise SystemExit(f"bench: --soak: {failed[0]}")
        if baseline is None:
            baseline = samples[0]
        after = sorted(children_of(master.pid))
        counted = {pid: worker_requests(pid) for pid in after}
        lat = array.array("q")
        for r in results:
            lat.frombytes(r["lat"])
        values = sorted(lat)
        answered = sum(r["answered"] for r in results)
        wall = max(r["wall"] for r in results) or end["t"]
        post = [e for e in samples if e["answered"] >= baseline["answered"]]
        per_worker = []
        for pid in workers:
            series = [e["rss"][pid] for e in post if e["rss"].get(pid)]
            per_worker.append({
                "pid": pid, "requests": counted.get(pid),
                "rss_warm_kib": baseline["rss"].get(pid, 0),
                "rss_end_kib": end["rss"].get(pid, 0),
                "growth_kib": end["rss"].get(pid, 0) - baseline["rss"].get(pid, 0),
                "rss_min_kib": min(series, default=0), "rss_max_kib": max(series, default=0),
                "slope_kib_per_100k": slope([e["answered"] for e in post if e["rss"].get(pid)],
                                            series) * 100_000,
            })
        counts = answer_counts(results, self.backend.served_since(served_before))
        errors = (counts["wrong_answers"] + counts["default_answers"] + counts["not_served"]
                  + sum(r["errors"] + r["unanswered"] for r in results))
        return {
            "requests": total, "answered": answered, "errors": errors, **counts,
            "connection_errors": sum(r["errors"] for r in results),
            "unanswered": sum(r["unanswered"] for r in results),
            "seconds": wall, "rps": answered / wall if wall else 0.0,
            "p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99),
            "p999_ms": percentile(values, 0.999), "max_ms": values[-1] / 1e6 if values else 0.0,
            "warmup_requests": baseline["answered"], "warmup_seconds": baseline["t"],
            "max_use": max_use, "variety": SOAK_VARIETY,
            "workers_before": workers, "workers_after": after,
            "workers_replaced": workers != after,
            "master_rss_warm_kib": baseline["master_rss"], "master_rss_end_kib": end["master_rss"],
            "workers": per_worker,
            "timeline": [{"t": round(e["t"], 1), "answered": e["answered"],
                          "rss": [e["rss"].get(pid, 0) for pid in workers]} for e in samples],
        }

    def _idle(self, name: str, addr: tuple[str, int], pids: Callable[[], list[int]],
              count: int | None = None, note: str = "") -> list[socket.socket]:
        if count is None:
            count = self.args.idle
        if count <= 0:
            return []
        time.sleep(0.5)
        before = {pid: memory_kib(pid).get("VmRSS", 0) for pid in pids()}
        pss_before = sum(pss_kib(pid) for pid in pids())
        self.log(f"{ROW_TITLES[name]}: opening {count} idle connections")
        socks, why, kinds = open_idle(addr, count, self.backend.answer)
        time.sleep(0.5)
        after = {pid: memory_kib(pid).get("VmRSS", 0) for pid in pids()}
        pss_after = sum(pss_kib(pid) for pid in pids())
        rss0, rss1 = sum(before.values()), sum(after.values())
        entry = {"connections": len(socks), "requested": count,
                 "rss_before_kib": rss0, "rss_after_kib": rss1,
                 "pss_before_kib": pss_before, "pss_after_kib": pss_after,
                 "kib_per_connection": (rss1 - rss0) / len(socks) if socks else 0.0,
                 "pss_kib_per_connection": (pss_after - pss_before) / len(socks) if socks else 0.0,
                 "processes_before": len(before), "processes_after": len(after),
                 "fds_per_process": [open_fds(pid) for pid in after],
                 "default_answers": kinds["default"], "wrong_answers": kinds["wrong"],
                 "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
        if note:
            entry["note"] = note
        if why:
            entry["error"] = why
            self.warnings.append(f"{ROW_TITLES[name]} idle connections: {why}")
        self.idle[name] = entry
        self.log(f"{ROW_TITLES[name]}: {len(socks)} idle connections: "
                 f"{entry['kib_per_connection']:.1f} KiB RSS each")
        return socks

    def _idle_held(self, name: str, socks: list[socket.socket]) -> None:
        """Count the idle connections the proxy still holds (a closed one reads EOF)."""
        if not socks:
            return
        ended = 0
        for start in range(0, len(socks), 1000):
            ended += len(wait_readable(socks[start:start + 1000], 0.0))
        self.idle[name]["still_open"] = len(socks) - ended
        if ended:
            self.warnings.append(f"{ROW_TITLES[name]}: {ended} idle connections were closed "
                                 f"during the row")

    def _spawn_row(self, name: str, argv: list[str], sink: socket.socket | None = None,
                   note: str = "") -> None:
        assert self.backend_addr is not None
        addr, emulator = start_emulator(self.children, argv, self.env, sink)
        try:
            why = wait_answering(addr, 15.0, lambda: self.children.alive(emulator))
            if why:
                return self.fail(name, why)

            def spawned() -> list[int]:
                return children_of(emulator.pid)

            row = measure(self.children, self.args, name, addr, spawned, spawned,
                          self.backend_pids, self.backend)
            row["command"] = "spawn: " + " ".join(argv) + note
            self._add(row)
        finally:
            self.children.stop(emulator)
        return None

    def row_spawn(self) -> None:
        why = hapolicy_missing()
        if why:
            return self.skip("spawn", why)
        assert self.backend_addr is not None
        b = self.backend_addr
        self._spawn_row("spawn", [sys.executable, "-m", "hapolicy", "-s", f"B={b[0]}:{b[1]}"])
        return None

    def row_perl(self) -> None:
        if not os.access(PERL_HAPOLICY, os.X_OK) or not shutil.which("perl"):
            return self.skip("perl", f"{PERL_HAPOLICY} not installed (apt-get install hapolicy)")
        assert self.backend_addr is not None
        b = self.backend_addr
        argv = [PERL_HAPOLICY, "-s", f"B={b[0]}:{b[1]}:10"]
        if os.path.exists("/dev/log"):
            return self._spawn_row("perl", argv)
        # It dies at start without a syslog socket (setlogsock 'unix'); give it one of ours
        # through a module loaded before the script, instead of creating /dev/log.
        sink_path = os.path.join(self.tmp, "log")
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(sink_path)
        with open(os.path.join(self.tmp, "BenchSyslog.pm"), "w") as handle:
            handle.write(PERL_SYSLOG_SHIM.replace("PATH", sink_path))
        perl = shutil.which("perl") or "/usr/bin/perl"
        argv = [perl, "-T", "-w", "-I" + self.tmp, "-MBenchSyslog", *argv]
        return self._spawn_row("perl", argv, sink, " (no /dev/log here: syslog to the bench)")

    def row_haproxy(self) -> None:
        if not os.access(HAPROXY, os.X_OK):
            return self.skip("haproxy", f"{HAPROXY} not installed (apt-get install haproxy)")
        assert self.backend_addr is not None
        port = free_port()
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        maxconn = max(256, min(50000, (nofile - 200) // 2))
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        with open(cfg, "w") as handle:
            handle.write(f"""global
    nbthread 1
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend policy
    bind {HOST}:{port}
    default_backend backends
backend backends
    server b1 {self.backend_addr[0]}:{self.backend_addr[1]}
""")
        argv = [HAPROXY, "-db", "-f", cfg]
        self.log("starting: " + " ".join(argv))
        proc = self._start_proxy("haproxy", argv, port)
        if proc is None:
            return None
        try:
            def tree() -> list[int]:
                return [proc.pid, *children_of(proc.pid)]

            # HAProxy holds two descriptors per proxied connection (client and server side)
            room = maxconn - self.args.connections - 16
            count = min(self.args.idle, room)
            note = ""
            if count < self.args.idle:
                note = (f"HAProxy can hold only maxconn {maxconn} connections within "
                        f"RLIMIT_NOFILE {nofile} (2 descriptors each): {count} idle connections "
                        f"opened instead of {self.args.idle}")
                self.warnings.append(note)
            idle_socks = self._idle("haproxy", (HOST, port), tree, count, note)
            try:
                row = measure(self.children, self.args, "haproxy", (HOST, port), tree, tree,
                              self.backend_pids, self.backend)
                self._idle_held("haproxy", idle_socks)
            finally:
                for sock in idle_socks:
                    sock.close()
            row["command"] = " ".join(argv) + f" (nbthread 1, maxconn {maxconn})"
            self._add(row)
        finally:
            self.children.stop(proc)
        return None

    def close(self) -> None:
        self.children.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)



def worker_requests(pid: int) -> int | None:
    """The requests a daemon worker counted, read from its title (None when not shown)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            title = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for word in title.split():
        if word.startswith("requests="):
            return int(word[9:])
    return None


def slope(xs: list[int], ys: list[int]) -> float:
    """Least-squares slope of ys over xs (0.0 with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if not var:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var



# ---------------------------------------------------------------------------------------------
# the report

def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    by = {r["row"]: r for r in rows if r["status"] in ("ok", "errors") and r.get("requests")}

    def div(a: str, b: str, key: str) -> float | None:
        if a in by and b in by and by[b][key]:
            return by[a][key] / by[b][key]
        return None

    return {
        "daemon_over_haproxy_rps": div("daemon", "haproxy", "rps"),
        "daemon_over_backend_rps": div("daemon", "backend", "rps"),
        "daemon_over_haproxy_p99": div("daemon", "haproxy", "p99_ms"),
        "daemon_over_haproxy_cpu_per_request": div("daemon", "haproxy", "cpu_us_per_request"),
        "spawn_over_perl_rps": div("spawn", "perl", "rps"),
        "daemon_over_spawn_rps": div("daemon", "spawn", "rps"),
    }


COLUMNS = [
    ("row", "title", "{}"),
    ("req/s", "rps", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.3f}"),
    ("p99 ms", "p99_ms", "{:.3f}"),
    ("p99.9 ms", "p999_ms", "{:.3f}"),
    ("errors", "errors", "{}"),
    ("defaults", "default_answers", "{}"),
    ("right", "correct_answers", "{}"),
    ("served", "backend_served", "{}"),
    ("procs", "processes", "{}"),
    ("rss sum MiB", "rss_peak_sum_mib", "{:.1f}"),
    ("rss max MiB", "rss_peak_max_mib", "{:.1f}"),
    ("pss MiB", "pss_sum_mib", "{:.1f}"),
    ("proxy cpu", "proxy_cpu_share", "{:.0%}"),
    ("sys", "proxy_sys_fraction", "{:.0%}"),
    ("cpu us/req", "cpu_us_per_request", "{:.1f}"),
    ("backend cpu", "backend_cpu_share", "{:.0%}"),
    ("gen cpu", "generator_cpu_share_max", "{:.0%}"),
    ("host idle", "host_idle", "{:.0%}"),
    ("other cpu", "other_cpu_share", "{:.0%}"),
]


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    table = [[c[0] for c in COLUMNS]]
    notes = []
    for row in rows:
        if row["status"] in ("ok", "errors"):
            table.append(["-" if row.get(key) is None else fmt.format(row[key])
                          for _h, key, fmt in COLUMNS])
        else:
            notes.append(f"{row['title']}: {row['status']}: {row.get('reason', '')}")
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    out = []
    cfg = report["config"]
    out.append(f"hapolicy bench: {cfg['connections']} connections, {cfg['generators']} generator "
               f"processes, {cfg['seconds']:g} s after {cfg['warmup']:g} s warm-up, "
               f"{cfg['cpus']} CPUs, daemon workers {cfg['workers']}, backend "
               f"{cfg['backend']}")
    for line in table:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        out.append("  ".join(cells))
    out.extend(notes)
    named = {
        "daemon_over_haproxy_rps": "hapolicy daemon / haproxy, req/s",
        "daemon_over_backend_rps": "hapolicy daemon / backend, req/s",
        "daemon_over_haproxy_p99": "hapolicy daemon / haproxy, p99 latency",
        "daemon_over_haproxy_cpu_per_request": "hapolicy daemon / haproxy, CPU per request",
        "spawn_over_perl_rps": "hapolicy spawn / perl original, req/s",
        "daemon_over_spawn_rps": "hapolicy daemon / hapolicy spawn, req/s",
    }
    shown = [(named[k], v) for k, v in report["ratios"].items() if v is not None]
    if shown:
        out.append("ratios:")
        width = max(len(n) for n, _ in shown)
        out.extend(f"  {n.ljust(width)}  {v:.2f}" for n, v in shown)
    for name, idle in report["idle"].items():
        out.append(
            f"idle connections ({ROW_TITLES[name]}): {idle['connections']} opened; RSS of "
            f"{idle['processes_after']} processes {idle['rss_before_kib'] / 1024:.1f} -> "
            f"{idle['rss_after_kib'] / 1024:.1f} MiB = {idle['kib_per_connection']:.1f} KiB per "
            f"idle connection (PSS {idle['pss_kib_per_connection']:.1f} KiB); open "
            f"descriptors per process {'/'.join(map(str, idle.get('fds_per_process', [])))}"
            + (f"; {idle['still_open']} still open after the row" if "still_open" in idle
               else "")
            + (f"; {idle['default_answers']} default and {idle['wrong_answers']} wrong answers"
               if idle["default_answers"] or idle["wrong_answers"] else "")
            + (f"; {idle['note']}" if idle.get("note") else "")
            + (f"; {idle['error']}" if idle.get("error") else ""))
    out.extend("warning: " + w for w in report["warnings"])
    return "\n".join(out)


def check_rows(rows: list[dict[str, Any]], warnings: list[str]) -> None:
    busy = [r["title"] for r in rows if r["status"] in ("ok", "errors") and r["host_idle"] < 0.05]
    if busy:
        warnings.append(f"no CPU left idle on the host in rows: {', '.join(busy)}. Proxy, backend "
                        f"and load generators share {os.cpu_count()} CPUs, so req/s measures CPU "
                        f"cost as much as speed: compare 'cpu us/req' too")
    for row in rows:
        if row["status"] not in ("ok", "errors"):
            continue
        title = row["title"]
        if row["generator_cpu_share_max"] >= SATURATED:
            warnings.append(f"{title}: a load generator process used "
                            f"{row['generator_cpu_share_max']:.0%} of a core: it may be the "
                            f"bottleneck (try --generators)")
        if row["row"] != "backend" and row["backend_cpu_max_process"] >= SATURATED:
            warnings.append(f"{title}: a backend process used "
                            f"{row['backend_cpu_max_process']:.0%} of a core: it may be the "
                            f"bottleneck (try --backend-procs)")
        if row["other_cpu_share"] >= 0.25:
            warnings.append(f"{title}: other processes on the host used "
                            f"{row['other_cpu_share']:.0%} of a core during the row: its figures "
                            f"are disturbed")
        if row["errors"]:
            warnings.append(f"{title}: {row['default_answers']} default answers, "
                            f"{row['wrong_answers']} wrong answers, "
                            f"{row['not_served']} right answers more than the backend served, "
                            f"{row['connection_errors']} connection errors, "
                            f"{row['unanswered']} unanswered: the row is not valid")


# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description="Closed-loop load benchmark of policy-protocol proxies on 127.0.0.1.")
    p.add_argument("--connections", "-c", type=int, default=None, metavar="C",
                   help="persistent client connections (32; 4 with --smoke)")
    p.add_argument("--seconds", "-t", type=float, default=None, metavar="T",
                   help="measured seconds per row (10; 1 with --smoke)")
    p.add_argument("--warmup", type=float, default=None, metavar="S",
                   help="warm-up seconds before measuring (2; 0.5 with --smoke)")
    p.add_argument("--rows", default=",".join(ROWS),
                   help="comma-separated subset of " + ",".join(ROWS))
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
    p.add_argument("--smoke", action="store_true",
                   help="quick CI run: ~1 s per row, 4 connections; exit 1 on errors")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    smoke = args.smoke
    if args.connections is None:
        args.connections = 4 if smoke else 32
    if args.seconds is None:
        args.seconds = 1.0 if smoke else 10.0
    if args.warmup is None:
        args.warmup = 0.5 if smoke else 2.0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}: choose from {','.join(ROWS)}")
    args.rows = rows
    for name in ("connections", "workers", "generators", "backend_procs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0 or args.idle < 0:
        p.error("--seconds must be > 0, --warmup and --idle >= 0")
    if args.soak < 0 or (args.soak and args.soak < args.connections):
        p.error("--soak N: N must be at least the number of connections")
    if args.soak and args.soak_warmup is not None and not 0 <= args.soak_warmup < args.soak:
        p.error("--soak-warmup R: 0 <= R < N")
    if args.backend and ":" not in args.backend:
        p.error("--backend: expected HOST:PORT")
    return args


def report_soak(args: argparse.Namespace, bench: Bench, nofile: int) -> int:
    soak = bench.soak_result
    if soak is None:
        return 1
    soak["config"] = {"connections": args.connections,
                      "generators": min(args.generators, args.connections),
                      "workers": args.workers, "cpus": os.cpu_count(),
                      "backend": args.backend or f"own, {args.backend_procs} process(es)",
                      "python": sys.version.split()[0], "nofile_limit": nofile}
    print(render_soak(soak))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(soak, handle, indent=2)
            handle.write("\n")
    bad = []
    if soak["errors"]:
        bad.append(f"{soak['errors']} errors")
    if soak["answered"] < soak["requests"]:
        bad.append(f"only {soak['answered']} of {soak['requests']} requests answered")
    if soak["workers_replaced"]:
        bad.append("workers were replaced during the soak")
    if bad:
        sys.stderr.write("bench: soak not valid: " + "; ".join(bad) + "\n")
        return 1
    return 0


def render_soak(soak: dict[str, Any]) -> str:
    cfg = soak["config"]
    out = []
    out.append(f"hapolicy soak: {soak['requests']} requests over {cfg['connections']} "
               f"connections ({soak['variety']} distinct requests), {cfg['generators']} "
               f"generator processes, {cfg['cpus']} CPUs, daemon workers {cfg['workers']} "
               f"(--max-use {soak['max_use']}), backend {cfg['backend']}")
    out.append(f"answered {soak['answered']} in {soak['seconds']:.1f} s = {soak['rps']:.0f} "
               f"req/s, p50 {soak['p50_ms']:.3f} ms, p99 {soak['p99_ms']:.3f} ms, "
               f"p99.9 {soak['p999_ms']:.3f} ms, max {soak['max_ms']:.1f} ms, "
               f"errors {soak['errors']} (default answers {soak['default_answers']}, wrong "
               f"{soak['wrong_answers']}, backend served "
               f"{'-' if soak['backend_served'] is None else soak['backend_served']})")
    workers = " ".join(map(str, soak["workers_before"]))
    if soak["workers_replaced"]:
        workers = "REPLACED during the run: " + workers + " -> " + " ".join(
            map(str, soak["workers_after"]))
    else:
        workers = "the same throughout: " + workers
    out.append(f"RSS reference after warm-up: {soak['warmup_requests']} requests answered "
               f"({soak['warmup_seconds']:.1f} s); workers {workers}")
    table = [["worker pid", "requests", "rss warm KiB", "rss end KiB", "growth KiB",
              "min..max after warm-up KiB", "slope KiB/100k req"]]
    for w in soak["workers"]:
        table.append([str(w["pid"]), str(w["requests"]), str(w["rss_warm_kib"]),
                      str(w["rss_end_kib"]), f"{w['growth_kib']:+d}",
                      f"{w['rss_min_kib']}..{w['rss_max_kib']}",
                      f"{w['slope_kib_per_100k']:+.2f}"])
    table.append(["master", "-", str(soak["master_rss_warm_kib"]),
                  str(soak["master_rss_end_kib"]),
                  f"{soak['master_rss_end_kib'] - soak['master_rss_warm_kib']:+d}", "", ""])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        out.append("  ".join([line[0].ljust(widths[0])]
                             + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]))
    timeline = soak["timeline"]
    marks = []
    step = max(1, soak["requests"] // 10)
    next_mark = 0
    for e in timeline:
        if (e["answered"] >= next_mark or e is timeline[-1]
                or e["answered"] == soak["warmup_requests"]):
            marks.append(e)
            next_mark = (e["answered"] // step + 1) * step
    out.append("timeline (requests answered: worker RSS KiB):")
    out.extend(f"  {e['t']:6.1f} s {e['answered']:>9}: " + " ".join(map(str, e["rss"]))
               + ("  (reference)" if e["answered"] == soak["warmup_requests"] else "")
               for e in marks)
    return "\n".join(out)


def _on_terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # this process holds the idle connections; each generator its share of the active ones
    need = args.idle + FD_MARGIN
    nofile = raise_nofile(need)
    if nofile < need:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        sys.stderr.write(f"bench: --idle {args.idle} needs {need} open files in this process, "
                         f"RLIMIT_NOFILE allows {nofile} (hard limit {hard}): raise the hard "
                         f"limit (ulimit -Hn, LimitNOFILE=) or lower --idle\n")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    bench = Bench(args)
    interrupted = False
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        sys.stderr.write("bench: interrupted: stopping every process it started\n")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        return 130
    if args.soak:
        return report_soak(args, bench, nofile)
    check_rows(bench.rows, bench.warnings)
    report = {
        "config": {"connections": args.connections, "seconds": args.seconds,
                   "warmup": args.warmup, "generators": min(args.generators, args.connections),
                   "workers": args.workers, "cpus": os.cpu_count(),
                   "backend": args.backend or f"own, {args.backend_procs} process(es)",
                   "idle": args.idle, "smoke": args.smoke, "rows": args.rows,
                   "python": sys.version.split()[0], "nofile_limit": nofile},
        "rows": bench.rows,
        "ratios": ratios(bench.rows),
        "idle": bench.idle,
        "warnings": bench.warnings,
    }
    print(render(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    bad = [r["title"] for r in bench.rows
           if r["status"] in ("errors", "failed") or (r["status"] == "ok" and not r["requests"])]
    if bad:
        sys.stderr.write(f"bench: rows with errors or no requests: {', '.join(bad)}\n")
        return 1
    idle_bad = [ROW_TITLES[name] for name, idle in bench.idle.items()
                if idle["default_answers"] or idle["wrong_answers"]]
    if idle_bad:
        sys.stderr.write(f"bench: default or wrong answers on the idle connections of: "
                         f"{', '.join(idle_bad)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
