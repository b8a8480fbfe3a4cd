"""The report of the rows: the table, the ratios, the warnings, the JSON and the exit status.

Contract: build_report() puts the configuration, the rows, the ratios between rows, the idle
figures and the warnings (check_rows adds those about saturation, disturbance and errors)
into one dict, which render() turns into the text printed and write_json() into the --json
file; rows_status() is the exit status of a run of rows: 1 when a row has errors, failed, or
answered no request, or when an idle connection got a default or wrong answer; else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .rows import ROW_TITLES
from .runner import Bench
from .startup import median_of, render_start

SATURATED = 0.90  # a process busier than this share of one core is saturated
RATIO_NAMES = {
    "daemon_over_haproxy_rps": "hapolicy daemon / haproxy, req/s",
    "daemon_over_backend_rps": "hapolicy daemon / backend, req/s",
    "daemon_over_floor_rps": "hapolicy daemon / python floor, req/s",
    "daemon_over_floor_cpu_per_request": "hapolicy daemon / python floor, CPU per request",
    "balanced_over_floor_cpu_per_request": "hapolicy balanced / python floor, CPU per request",
    "hashed_over_floor_cpu_per_request": "hapolicy hashed / python floor, CPU per request",
    "cached_over_daemon_cpu_per_request": "hapolicy cached / hapolicy daemon, CPU per request",
    "floor_over_haproxy_rps": "python floor / haproxy, req/s",
    "daemon_over_haproxy_p99": "hapolicy daemon / haproxy, p99 latency",
    "daemon_over_haproxy_cpu_per_request": "hapolicy daemon / haproxy, CPU per request",
    "spawn_over_perl_rps": "hapolicy spawn / perl original, req/s",
    "spawn_start_over_perl": "hapolicy spawn / perl original, start to first answer",
    "daemon_over_spawn_rps": "hapolicy daemon / hapolicy spawn, req/s",
}


def start_ratio(rows: list[dict[str, Any]], a: str, b: str) -> float | None:
    top, bottom = median_of(rows, a), median_of(rows, b)
    return top / bottom if top is not None and bottom else None


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    by = {r["row"]: r for r in rows if r["status"] in ("ok", "errors") and r.get("requests")
          and r.get("kind") != "start"}

    def div(a: str, b: str, key: str) -> float | None:
        if a in by and b in by and by[b][key]:
            return by[a][key] / by[b][key]
        return None

    return {
        "daemon_over_haproxy_rps": div("daemon", "haproxy", "rps"),
        "daemon_over_backend_rps": div("daemon", "backend", "rps"),
        "daemon_over_floor_rps": div("daemon", "floor", "rps"),
        "daemon_over_floor_cpu_per_request": div("daemon", "floor", "cpu_us_per_request"),
        "balanced_over_floor_cpu_per_request": div("balanced", "floor", "cpu_us_per_request"),
        "cached_over_daemon_cpu_per_request": div("cached", "daemon", "cpu_us_per_request"),
        "hashed_over_floor_cpu_per_request": div("hashed", "floor", "cpu_us_per_request"),
        "floor_over_haproxy_rps": div("floor", "haproxy", "rps"),
        "daemon_over_haproxy_p99": div("daemon", "haproxy", "p99_ms"),
        "daemon_over_haproxy_cpu_per_request": div("daemon", "haproxy", "cpu_us_per_request"),
        "spawn_over_perl_rps": div("spawn", "perl", "rps"),
        "spawn_start_over_perl": start_ratio(rows, "hapolicy spawn", "perl original"),
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
    starts = []
    for row in rows:
        if row.get("kind") == "start":
            starts.extend(render_start(row, align))
        elif row["status"] in ("ok", "errors"):
            table.append(["-" if row.get(key) is None else fmt.format(row[key])
                          for _h, key, fmt in COLUMNS])
            if "hit_ratio" in row:
                notes.append(f"{row['title']}: {row['hit_ratio']:.1%} of its right answers from "
                             f"its cache ({row['cache_hits']}; the backend served "
                             f"{row['backend_served']})")
        else:
            notes.append(f"{row['title']}: {row['status']}: {row.get('reason', '')}")
    out = []
    cfg = report["config"]
    out.append(f"hapolicy bench: {cfg['connections']} connections, {cfg['generators']} generator "
               f"processes, {cfg['seconds']:g} s after {cfg['warmup']:g} s warm-up, "
               f"{cfg['cpus']} CPUs, daemon workers {cfg['workers']}, backend "
               f"{cfg['backend']}, python {cfg['python']} ({cfg['interpreter']})")
    if len(table) > 1:
        out.extend(align(table))
    out.extend(notes)
    out.extend(starts)
    shown = [(RATIO_NAMES[k], v) for k, v in report["ratios"].items() if v is not None]
    if shown:
        out.append("ratios:")
        width = max(len(n) for n, _ in shown)
        out.extend(f"  {n.ljust(width)}  {v:.2f}" for n, v in shown)
    out.extend(idle_line(name, idle) for name, idle in report["idle"].items())
    out.extend("warning: " + w for w in report["warnings"])
    return "\n".join(out)


def align(table: list[list[str]]) -> list[str]:
    """The lines of a table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return ["  ".join([line[0].ljust(widths[0])]
                      + [c.rjust(w) for c, w in zip(line[1:], widths[1:])])
            for line in table]


def idle_line(name: str, idle: dict[str, Any]) -> str:
    return (
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


def check_rows(rows: list[dict[str, Any]], warnings: list[str]) -> None:
    rows = [r for r in rows if r.get("kind") != "start"]  # no load: nothing to say of its CPU
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



def config(args: argparse.Namespace, nofile: int) -> dict[str, Any]:
    return {"connections": args.connections, "seconds": args.seconds,
            "warmup": args.warmup, "generators": min(args.generators, args.connections),
            "workers": args.workers, "cpus": os.cpu_count(),
            "backend": args.backend or f"own, {args.backend_procs} process(es)",
            "idle": args.idle, "smoke": args.smoke, "rows": args.rows,
            "python": sys.version.split()[0], "interpreter": interpreter(),
            "nofile_limit": nofile}


def interpreter() -> str:
    """The interpreter every row runs under (the bench's own): its build counts as much as our
    code does (Debian's python3 costs the daemon about a tenth less CPU per request than a
    default source build, docs/performance.md)."""
    return os.path.realpath(sys.executable)


def build_report(args: argparse.Namespace, bench: Bench, nofile: int) -> dict[str, Any]:
    check_rows(bench.rows, bench.warnings)
    return {"config": config(args, nofile), "rows": bench.rows, "ratios": ratios(bench.rows),
            "idle": bench.idle, "warnings": bench.warnings}


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")


def rows_status(bench: Bench) -> int:
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


def report_rows(args: argparse.Namespace, bench: Bench, nofile: int) -> int:
    """Print the report of the rows, write --json, and return the exit status."""
    report = build_report(args, bench, nofile)
    print(render(report))
    write_json(args.json, report)
    return rows_status(bench)
