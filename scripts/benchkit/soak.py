"""--soak N: the daemon alone until N requests are answered, each worker's VmRSS every second.

Contract: run_soak(bench) starts the daemon with --max-use above N (so that no worker is
replaced), drives it with 4096 distinct requests until N are answered, and sets
bench.soak_result: RSS after warm-up (N/10 requests, or --soak-warmup) and at the end, the
growth and least-squares slope per worker, a timeline, and the same answer checks as a row.
It raises SystemExit when the daemon cannot be started or measured. report_soak() prints it
(and the JSON) and returns the exit status: 1 on errors, unanswered requests, or a worker
replaced.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from testkit.ports import HOST, free_port

from .loadgen import Generators
from .measure import answer_counts, latencies, percentile
from .procs import Child, children_of, memory_kib
from .report import align, config, write_json
from .rows import ROW_TITLES
from .runner import Bench
from .servers import daemon_argv
from .tree import hapolicy_missing

SOAK_VARIETY = 4096  # --soak cycles through this many distinct requests
SOAK_CONFIG = ("connections", "generators", "workers", "cpus", "backend", "python",
               "nofile_limit")


def run_soak(bench: Bench) -> None:
    """The daemon alone until --soak N requests are answered; each worker's VmRSS every
    second. The workers must live through it: --max-use is set well above N."""
    args = bench.args
    why = hapolicy_missing()
    if why:
        raise SystemExit(f"bench: --soak: {why}")
    port = free_port()
    max_use = 2 * args.soak + 1_000_000
    argv = daemon_argv(port, args.workers, bench.backend_addr, "--max-use", str(max_use))
    bench.log("starting: " + " ".join(argv[1:]))
    master = bench.start_proxy("daemon", ROW_TITLES["daemon"], argv, port, signal.SIGINT)
    if master is None:
        raise SystemExit(f"bench: --soak: the daemon did not start: {bench.rows[-1]['reason']}")
    try:
        bench.soak_result = soak(bench, master, port, max_use)
        bench.soak_result["command"] = " ".join(argv[1:])
    finally:
        bench.children.stop(master)


def current_workers(master: Child, expected: int) -> list[int]:
    """The master's workers, once there are `expected` of them (or after 10 s)."""
    workers = sorted(children_of(master.pid))
    deadline = time.monotonic() + 10.0
    while len(workers) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = sorted(children_of(master.pid))
    return workers


class Samples:
    """Answers so far and each worker's (and the master's) VmRSS, over time."""

    def __init__(self, gens: Generators, master: Child, workers: list[int]) -> None:
        self.gens = gens
        self.master = master
        self.workers = workers
        self.entries: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def take(self) -> dict[str, Any]:
        entry = {"t": time.monotonic() - self.t0, "answered": self.gens.answered(),
                 "rss": {pid: memory_kib(pid).get("VmRSS", 0) for pid in self.workers},
                 "master_rss": memory_kib(self.master.pid).get("VmRSS", 0)}
        self.entries.append(entry)
        return entry


def soak(bench: Bench, master: Child, port: int, max_use: int) -> dict[str, Any]:
    args = bench.args
    warm = args.soak_warmup if args.soak_warmup is not None else args.soak // 10
    workers = current_workers(master, args.workers)
    served_before = bench.backend.served()
    gens = Generators(bench.children, (HOST, port), args.connections, args.generators,
                      grace=5.0, limit=args.soak, variety=SOAK_VARIETY,
                      expected=bench.backend.answer)
    try:
        why = gens.wait_ready(60.0)
        if why:
            raise SystemExit(f"bench: --soak: {why}")
        bench.log(f"soak: {args.soak} requests on {args.connections} connections, "
                  f"{len(workers)} workers {workers}, RSS after {warm} requests is the "
                  f"reference")
        gens.go(0.0, args.soak_timeout)
        samples = Samples(gens, master, workers)
        baseline = sample_until_done(bench, gens, samples, warm)
        results = gens.results(30.0)
        time.sleep(1.2)  # the workers show their counts in their titles every second
        end = samples.take()
    finally:
        gens.close()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        raise SystemExit(f"bench: --soak: {failed[0]}")
    after = sorted(children_of(master.pid))
    counts = answer_counts(results, bench.backend.served_since(served_before))
    return soak_figures(args.soak, results, counts, samples, baseline or samples.entries[0],
                        end, max_use, after)


def sample_until_done(bench: Bench, gens: Generators, samples: Samples,
                      warm: int) -> dict[str, Any] | None:
    """A sample every second until N are answered; the first one after warm-up."""
    args = bench.args
    samples.take()
    baseline = None
    next_log = samples.t0 + 10.0
    while True:
        time.sleep(1.0)
        entry = samples.take()
        if baseline is None and entry["answered"] >= warm:
            baseline = entry
        if time.monotonic() >= next_log:
            next_log += 10.0
            bench.log(f"soak: {entry['answered']} answered, worker RSS "
                      + ", ".join(f"{v} KiB" for v in entry["rss"].values()))
        if entry["answered"] >= args.soak or not gens.running():
            return baseline
        if entry["t"] > args.soak_timeout + 10.0:
            return baseline


def per_worker(samples: Samples, baseline: dict[str, Any], end: dict[str, Any],
               counted: dict[int, int | None]) -> list[dict[str, Any]]:
    post = [e for e in samples.entries if e["answered"] >= baseline["answered"]]
    out = []
    for pid in samples.workers:
        series = [e["rss"][pid] for e in post if e["rss"].get(pid)]
        out.append({
            "pid": pid, "requests": counted.get(pid),
            "rss_warm_kib": baseline["rss"].get(pid, 0),
            "rss_end_kib": end["rss"].get(pid, 0),
            "growth_kib": end["rss"].get(pid, 0) - baseline["rss"].get(pid, 0),
            "rss_min_kib": min(series, default=0), "rss_max_kib": max(series, default=0),
            "slope_kib_per_100k": slope([e["answered"] for e in post if e["rss"].get(pid)],
                                        series) * 100_000,
        })
    return out


def soak_figures(total: int, results: list[dict[str, Any]], counts: dict[str, Any],
                 samples: Samples, baseline: dict[str, Any], end: dict[str, Any],
                 max_use: int, after: list[int]) -> dict[str, Any]:
    """The soak's result (the JSON of --soak, less its command and config)."""
    values = latencies(results)
    answered = sum(r["answered"] for r in results)
    wall = max(r["wall"] for r in results) or end["t"]
    errors = (counts["wrong_answers"] + counts["default_answers"] + counts["not_served"]
              + sum(r["errors"] + r["unanswered"] for r in results))
    workers = samples.workers
    counted = {pid: worker_requests(pid) for pid in after}
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
        "workers": per_worker(samples, baseline, end, counted),
        "timeline": [{"t": round(e["t"], 1), "answered": e["answered"],
                      "rss": [e["rss"].get(pid, 0) for pid in workers]}
                     for e in samples.entries],
    }


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



def report_soak(args: argparse.Namespace, bench: Bench, nofile: int) -> int:
    soak = bench.soak_result
    if soak is None:
        return 1
    full = config(args, nofile)
    soak["config"] = {key: full[key] for key in SOAK_CONFIG}
    print(render_soak(soak))
    write_json(args.json, soak)
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
    out.extend(align(table))
    out.extend(timeline_lines(soak))
    return "\n".join(out)


def timeline_lines(soak: dict[str, Any]) -> list[str]:
    """About ten samples of the timeline, the reference and the last one among them."""
    timeline = soak["timeline"]
    marks = []
    step = max(1, soak["requests"] // 10)
    next_mark = 0
    for e in timeline:
        if (e["answered"] >= next_mark or e is timeline[-1]
                or e["answered"] == soak["warmup_requests"]):
            marks.append(e)
            next_mark = (e["answered"] // step + 1) * step
    out = ["timeline (requests answered: worker RSS KiB):"]
    out.extend(f"  {e['t']:6.1f} s {e['answered']:>9}: " + " ".join(map(str, e["rss"]))
               + ("  (reference)" if e["answered"] == soak["warmup_requests"] else "")
               for e in marks)
    return out

