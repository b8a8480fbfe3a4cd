"""Measuring one row: the closed loop against an address, and the figures of the row.

Contract: measure(bench, target) runs the generators against target.addr for --warmup then
--seconds, samples target's processes (CPU, peak RSS, PSS) and the host over the measured
window, and returns the row as a dict: status 'ok', 'errors' (any wrong or default answer,
any right answer more than the backend served, any connection error or unanswered request)
or 'failed' (with a reason). answer_counts() and percentile() are its arithmetic.
"""

from __future__ import annotations

import array
import os
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

from .loadgen import Generators
from .procs import ProcSampler, host_cpu
from .runner import Bench

Pids = Callable[[], "list[int]"]


@dataclass
class Target:
    """What a row measures: where to send the load, and whose processes to account."""

    name: str
    title: str
    addr: tuple[str, int]
    proxy_pids: Pids  # the proxy's CPU
    mem_pids: Pids  # the proxy's memory (e.g. the daemon's workers, not its master)
    # a proxy that caches: every fresh_every-th request is new (a miss), its connection repeats
    # it (hits); its right answers beyond what the backend served are its hits, not errors
    fresh_every: int = 0


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not values:
        return 0.0
    rank = max(1, min(len(values), int(-(-q * len(values) // 1))))
    return values[rank - 1] / 1e6


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


def cached_answers(row: dict[str, Any]) -> None:
    """A caching row's right answers beyond what the backend served are its cache's hits:
    counted as such (hit_ratio), not as errors."""
    correct = row["correct_answers"]
    row["cache_hits"] = row["not_served"]
    row["hit_ratio"] = row["not_served"] / correct if correct else 0.0
    row["not_served"] = 0


def latencies(results: list[dict[str, Any]]) -> list[int]:
    """Every generator's latencies (ns), sorted."""
    lat = array.array("q")
    for r in results:
        lat.frombytes(r["lat"])
    return sorted(lat)


@dataclass
class Window:
    """The accounting of the measured window."""

    proxy: ProcSampler
    memory: ProcSampler
    backend: ProcSampler
    host0: tuple[int, int, int] = (0, 0, 0)
    host1: tuple[int, int, int] = (0, 0, 0)
    bench_cpu: float = 0.0
    wall: float = 0.0


def measure(bench: Bench, target: Target) -> dict[str, Any]:
    """Run the closed loop against target.addr and collect everything for one row."""
    args = bench.args
    row: dict[str, Any] = {"row": target.name, "title": target.title, "status": "ok",
                           "address": f"{target.addr[0]}:{target.addr[1]}"}
    grace = 1.0 if args.smoke else 3.0
    served_before = bench.backend.served()
    gens = Generators(bench.children, target.addr, args.connections, args.generators, grace,
                      expected=bench.backend.answer, fresh_every=target.fresh_every)
    try:
        why = gens.wait_ready(60.0)
        if why:
            row.update(status="failed", reason=why)
            return row
        window = Window(ProcSampler(target.proxy_pids), ProcSampler(target.mem_pids),
                        ProcSampler(bench.backend_pids))
        run_window(gens, window, args.warmup, args.seconds)
        results = gens.results(args.seconds + grace + 30.0)
    finally:
        gens.close()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        row.update(status="failed", reason=failed[0])
        return row
    row.update(answer_counts(results, bench.backend.served_since(served_before)))
    if target.fresh_every:
        cached_answers(row)
    row.update(figures(target.name, results, window, args.seconds, row))
    if row["errors"]:
        row["status"] = "errors"
    elif not row["requests"]:
        row.update(status="failed", reason="no request answered")
    return row


def run_window(gens: Generators, window: Window, warmup: float, seconds: float) -> None:
    """Start the load; sample the processes every 0.25 s over the measured window."""
    gens.go(warmup, seconds)
    w_end = time.monotonic() + warmup
    end = w_end + seconds
    time.sleep(max(0.0, w_end - time.monotonic()))
    samplers = (window.memory, window.proxy, window.backend)
    window.proxy.start()
    window.memory.start()
    window.backend.start()
    window.host0 = host_cpu()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    while time.monotonic() < end:
        time.sleep(min(0.25, max(0.0, end - time.monotonic())))
        for sampler in samplers:
            sampler.sample()
    window.proxy.finish()
    window.backend.finish()
    window.memory.finish()
    window.host1 = host_cpu()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    window.wall = time.monotonic() - t0
    window.bench_cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime


def figures(name: str, results: list[dict[str, Any]], window: Window, seconds: float,
            counts: dict[str, Any]) -> dict[str, Any]:
    """Requests, latency, errors, memory and CPU of a row."""
    values = latencies(results)
    requests = len(values)
    gen_wall = max(r["wall"] for r in results) or seconds
    out = {
        "requests": requests, "rps": requests / gen_wall,
        "p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99),
        "p999_ms": percentile(values, 0.999),
        "max_ms": values[-1] / 1e6 if values else 0.0,
        "errors": (counts["wrong_answers"] + counts["default_answers"] + counts["not_served"]
                   + sum(r["errors"] + r["unanswered"] for r in results)),
        "connection_errors": sum(r["errors"] for r in results),
        "unanswered": sum(r["unanswered"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
    }
    memory = window.memory
    out.update(processes=len(memory.hwm),
               rss_peak_sum_mib=sum(memory.hwm.values()) / 1024,
               rss_peak_max_mib=max(memory.hwm.values(), default=0) / 1024,
               pss_sum_mib=sum(memory.pss.values()) / 1024)
    out.update(cpu_figures(name, results, window, requests))
    out["seconds"] = gen_wall
    return out


def cpu_figures(name: str, results: list[dict[str, Any]], window: Window,
                requests: int) -> dict[str, Any]:
    """CPU shares (of one core) of the proxy, the backend, the generators and the rest."""
    wall = window.wall
    proxy_cpu = window.proxy.cpu_by_pid()
    proxy_sum = sum(proxy_cpu.values())
    backend_cpu = window.backend.cpu_by_pid()
    host0, host1 = window.host0, window.host1
    idle_ticks = host1[0] - host0[0]
    total_ticks = host1[1] - host0[1]
    cores = os.cpu_count() or 1
    busy_cores = (total_ticks - idle_ticks) / total_ticks * cores if total_ticks else 0.0
    irq_cores = (host1[2] - host0[2]) / total_ticks * cores if total_ticks else 0.0
    ours = proxy_sum + window.bench_cpu + sum(r["cpu"] for r in results)
    if name != "backend":
        ours += sum(backend_cpu.values())
    gen_shares = [r["cpu"] / r["wall"] if r["wall"] else 0.0 for r in results]
    return {
        "proxy_cpu_share": proxy_sum / wall,
        "proxy_cpu_per_process": sorted((v / wall for v in proxy_cpu.values()), reverse=True),
        "proxy_sys_fraction": (sum(window.proxy.cpu_by_pid(slice(1, 2)).values()) / proxy_sum
                               if proxy_sum else 0.0),
        "cpu_us_per_request": proxy_sum / requests * 1e6 if requests else 0.0,
        "backend_cpu_share": sum(backend_cpu.values()) / wall,
        "backend_cpu_max_process": max(backend_cpu.values(), default=0.0) / wall,
        "generator_cpu_share_max": max(gen_shares),
        "generator_cpu_share_sum": sum(gen_shares),
        "host_idle": idle_ticks / total_ticks if total_ticks else 0.0,
        "irq_cpu_share": irq_cores,
        "other_cpu_share": max(0.0, busy_cores - irq_cores - ours / wall),
    }
