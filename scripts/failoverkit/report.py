"""The report as text: a title, then one section per figure, then the problems.

Contract: render(report) takes the report as the JSON has it (config, one entry per figure,
problems) and returns the text that the script prints. A row that was skipped, or whose
figure failed, shows why in a footnote ([1], [2], ...; the same text gets the same mark);
a section's footnotes follow its table. With config["tail_only"] only figure 8 is shown, with
config["slow_only"] only figure 9.
"""

from __future__ import annotations

from typing import Any

from failoverkit.settings import (
    BLACKHOLE_TIMEOUT,
    CASES,
    CHECK_INTERVAL,
    CONNECT_TIMEOUT,
    HASH_KEY,
    PROBE_COOLDOWN,
    SILENT_TIMEOUT,
    SLOW_SCENARIOS,
    SLOW_SHARE_OF,
    TAIL_HEDGE,
    TAIL_HEDGE_MAX,
    TAIL_SLOW_DELAY,
    TAIL_SLOW_EVERY,
    TICK,
)
from failoverkit.stats import fmt_pct, fmt_s, percentile, table

FAILED = "failed: see problems"


class Notes:
    """The footnotes of the section being written."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        """A footnote mark for text (the same text gets the same mark)."""
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def why(self, result: dict[str, Any] | None) -> str:
        """The mark of why a row has no figures: skipped (and why), or failed."""
        return self.mark(result["skipped"]) if result else self.mark(FAILED)

    def flush(self, out: list[str]) -> None:
        """Append the footnotes to out and start afresh."""
        out.extend(f"  [{i}] {text}" for i, text in enumerate(self.texts, 1))
        self.texts.clear()


def render(report: dict[str, Any]) -> str:
    """The whole report."""
    if report["config"].get("tail_only"):
        out = tail_section(report["tail"]) if report["tail"] else []
        return "\n".join(out + problems_section(report["problems"]))
    if report["config"].get("slow_only"):
        out = slow_section(report["slow"]) if report["slow"] else []
        return "\n".join(out + problems_section(report["problems"]))
    notes = Notes()
    out = title(report["config"])
    out += failover_section(report["failover"], notes) + [""]
    out += recovery_section(report["recovery"], notes) + [""]
    out += hash_section(report["hash"]) + [""]
    out += weighted_section(report["weighted"], notes) + [""]
    out += all_down_section(report["all_down"], notes) + [""]
    out += released_section(report["released"])
    if report["tail"]:
        out += ["", *tail_section(report["tail"])]
    if report["slow"]:
        out += ["", *slow_section(report["slow"])]
    notes.flush(out)
    return "\n".join(out + problems_section(report["problems"]))


def title(cfg: dict[str, Any]) -> list[str]:
    run = "quick" if cfg["quick"] else "full"
    return [(f"hapolicy failover ({run} run, {cfg['cpus']} CPUs, Python {cfg['python']}, "
             f"127.0.0.1, {cfg['seconds']:g} s)"),
            ("  daemon: python -m hapolicy --listen 127.0.0.1:PORT --workers 2 "
             "(each request on a new connection)"),
            f"  perl:   {cfg['perl']}", ""]


def problems_section(problems: list[str]) -> list[str]:
    return ["", "problems:"] + [f"  - {p}" for p in problems] if problems else []


def failover_section(failover: dict[str, Any], notes: Notes) -> list[str]:
    """Figures 1-2."""
    titles = {"silent": f"silent, TIMEOUT {SILENT_TIMEOUT} s",
              "blackhole": f"blackhole, TIMEOUT {BLACKHOLE_TIMEOUT} s, "
                           f"--connect-timeout {CONNECT_TIMEOUT} s",
              "refused": "refused"}
    rows = []
    for case in CASES:
        for impl in ("daemon", "perl"):
            r = failover[case].get(impl)
            if r is None or "skipped" in r:
                rows.append([titles[case], impl, "skipped " + notes.why(r), "", "", "", "", "",
                             ""])
                continue
            f = r["following"]
            workers = ("+".join(map(str, r["following_per_worker"]))
                       if "following_per_worker" in r else "1 process")
            rows.append([titles[case], impl, fmt_s(r["first"]), str(f["n"]), fmt_s(f["p50"]),
                         fmt_s(f["p99"]), fmt_s(f["max"]), workers,
                         str(r.get("primary_requests", "-"))])
    out = ["1-2. First failover, then the following requests, while P (prio 10) is dead "
           "and S (prio 20) answers at once"]
    out += table(["P is", "impl", "1st failover", "then n", "p50", "p99", "max",
                  "served by", "P saw"], rows)
    out += ["  daemon: --cooldown 60 --check-interval 0 (no probe of P during the run); "
            "the client connections stay open, as Postfix's do",
            "  served by: following requests served by the first request's worker + by the "
            "other one; P saw: requests",
            "  that reached the silent P, from any worker (1 + n: every request paid its "
            "timeout)"]
    notes.flush(out)
    return out


def recovery_section(recovery: dict[str, Any], notes: Notes) -> list[str]:
    """Figure 3."""
    methods = {"probe": f"probe: --cooldown {PROBE_COOLDOWN:g} --cooldown-max "
                        f"{PROBE_COOLDOWN:g}, a request / {TICK * 1000:.0f} ms",
               "check": f"active check: --check-(down-)interval {CHECK_INTERVAL:g}, no traffic"}
    rows = []
    for method, method_title in methods.items():
        for impl in ("daemon", "perl"):
            r = recovery[method].get(impl)
            if r is None or "skipped" in r:
                rows.append([method_title, impl, "n/a " + notes.why(r), "", "", ""])
                continue
            rows.append([method_title, impl, str(r["n"]), fmt_s(percentile(r["times"], 50)),
                         fmt_s(r["min"]), fmt_s(r["max"])])
    out = ["3. Recovery once P is back (a backend started on its refused port); restarts "
           "spread over the period"]
    out += table(["by", "impl", "trials", "median", "min", "max"], rows)
    out.append("  probe: from the restart to P's first answer; active check: from the restart "
               "to the log line \"service P (...) up\"")
    notes.flush(out)
    return out


def hash_section(hashed: dict[str, Any]) -> list[str]:
    """Figure 4."""
    out = [f"4. --balance hash:{HASH_KEY} over G0 G1 G2, then G1 stopped (daemon; the "
           "original has no hashing)"]
    h = hashed.get("daemon")
    if not h:
        return out + ["  " + FAILED]
    keys = h["keys"]
    rows = [[n, str(h["share_before"][n]), fmt_pct(h["share_before"][n], keys),
             str(h["share_after"][n]), fmt_pct(h["share_after"][n], keys)]
            for n in ("G0", "G1", "G2")]
    out += table(["server", "keys", "share", "keys, G1 stopped", "share"], rows)
    moved_to = ", ".join(f"{k} {v}" for k, v in sorted(h["moved_to"].items()))
    out.append(f"  {keys} distinct triplets; keys moved: {h['moved']} = "
               f"{fmt_pct(h['moved'], keys)} (G1 had {fmt_pct(h['share_before']['G1'], keys)}"
               f"; to {moved_to}); keys of G0 and G2 moved: {h['survivors_moved']}")
    return out


def weighted_section(weighted: dict[str, Any], notes: Notes) -> list[str]:
    """Figure 5 (its footnotes wait for the end of the report)."""
    rows = []
    for impl in ("daemon", "perl"):
        r = weighted.get(impl)
        if r is None or "skipped" in r:
            rows.append([impl, "skipped " + notes.why(r), "", "", ""])
            continue
        spread = ("+".join(map(str, r["connections_per_worker"])) + " connections"
                  if "connections_per_worker" in r else "1 process per connection")
        rows.append([impl, str(r["A"]), str(r["B"]), fmt_pct(r["A"], r["requests"]), spread])
    out = ["5. Weights A:B = 2:1 (same prio), 300 requests on 30 connections of 10"]
    out += table(["impl", "A", "B", "A share (2:1 = 66.7 %)", "workers"], rows)
    out.append("  daemon: the 30 connections open at once, one request on each in turn")
    return out


def all_down_section(all_down: dict[str, Any], notes: Notes) -> list[str]:
    """Figure 6 (its footnotes wait for the end of the report)."""
    rows = []
    for row, r in all_down.items():
        if "skipped" in r:
            rows.append([row, "skipped " + notes.mark(r["skipped"]), "", "", "", "", ""])
            continue
        f = r["following"]
        rows.append([row, fmt_s(r["first"]), str(f["n"]), fmt_s(f["p50"]), fmt_s(f["p99"]),
                     fmt_s(f["max"]), str(r["live_requests"])])
    out = [f"6. Every service down: S1 (prio 10) and S2 (prio 20) silent, TIMEOUT "
           f"{SILENT_TIMEOUT} s each, -d DEFAULTED"]
    out += table(["impl", "1st answer", "then n", "p50", "p99", "max", "S1+S2 saw"], rows)
    out.append("  daemon: --cooldown 60, each request on a new connection; S1+S2 saw: live "
               "requests (not checks)")
    return out


def released_section(released: dict[str, Any]) -> list[str]:
    """Figure 7."""
    rows = [[workers, fmt_s(r["first"]), fmt_s(r["last_after_first"]),
             fmt_s(r["without_release"])] for workers, r in released.items()]
    out = ["7. 20 requests sent 20 ms apart to a silent P (TIMEOUT 1 s), S behind it (daemon)"]
    return out + table(["workers", "1st answered after", "last after 1st",
                        "without the release"], rows)


def tail_section(tail: dict[str, Any]) -> list[str]:
    """Figure 8."""
    out = [f"8. Tail latency, hedging and shadows: {tail['requests']} requests per row on "
           f"{tail['connections']} connections, one daemon (1 worker); slow: every "
           f"{TAIL_SLOW_EVERY}th request waits {TAIL_SLOW_DELAY * 1000:.0f} ms; hedged: "
           f"hedge = {TAIL_HEDGE}, hedge-max = {TAIL_HEDGE_MAX}"]
    rows = []
    for name, r in tail["rows"].items():
        shadow = (f"{r['shadow_agree']}/{r['shadow_disagree']}/{r['shadow_failed']}/"
                  f"{r['shadow_dropped']}")
        rows.append([name, fmt_s(r["p50"]), fmt_s(r["p99"]), fmt_s(r["p999"]), fmt_s(r["max"]),
                     str(r["wrong"]), f"{r['hedged']}/{r['hedge_won']}",
                     str(r["second_requests"]), shadow])
    out += table(["row", "p50", "p99", "p99.9", "max", "wrong", "hedged/won", "S saw",
                  "shadow agree/disagree/failed/dropped"], rows)
    return out


SLOW_TITLES = {
    "latency": "9a. Two services answering in 1 ms (FAST) and 40 ms (SLOW)",
    "weights": "9b. Two services answering in 2 ms, weights A:B = 2:1 (2:1 = 66.7 %)",
    "serial": "9c. SERIAL serves one request at a time (5 ms each, as postgrey), OTHER in 1 ms",
}
SLOW_NOTES = {
    "latency": [
        "leastconn counts connections, not requests: HAProxy gives each client connection to "
        "a server once, at connect,",
        "and every request on it goes there; with persistent connections, as Postfix's smtpd "
        "keeps its, SLOW gets its share",
        "of the connections (their requests) whatever it answers in. hapolicy chooses per "
        "request, among the same connections."],
    "weights": ["haproxy: server weights 2 and 1; its share is that of the connections it "
                "gave A."],
    "serial": [
        "max pending: the most requests a backend held at once (SERIAL's: its own queue). "
        "hapolicy max-inflight 2:",
        "--max-inflight 2, a pool's setting: 2 for each service, OTHER too (4 in flight at "
        "most, the other requests",
        "wait in hapolicy, queue-timeout 5 s by default). haproxy maxconn 2: `maxconn 2` on "
        "SERIAL's server line only",
        "(2 client connections on SERIAL at most: leastconn gives the others to OTHER)."],
}


def slow_section(slow: dict[str, Any]) -> list[str]:
    """Figure 9: a table per scenario, a row per balancer."""
    out = ["9. Slow, not dead, three balancers side by side: hapolicy daemon (2 workers, "
           "--sticky-instance no, --check-interval 0)",
           "   weighted round robin and --balance least-latency; HAProxy TCP mode, one thread, "
           "balance leastconn. Each client",
           "   is a persistent connection opened first, then sends its requests one after the "
           "other, a new instance each.",
           "   answers: each backend's (checked: its own action); conns: the connections it "
           "accepted (HAProxy: the client",
           "   connections it was given; hapolicy: the daemon's own to it)."]
    for name, scenario in slow.items():
        out += ["", *_slow_table(name, scenario), *("  " + line for line in SLOW_NOTES[name])]
    return out


def _slow_table(name: str, scenario: dict[str, Any]) -> list[str]:
    """One scenario: its title and table."""
    names = list(SLOW_SCENARIOS[name]["backends"])
    notes = Notes()
    rows = []
    for balancer in SLOW_SCENARIOS[name]["rows"]:
        r = scenario["rows"].get(balancer)
        if r is None or "skipped" in r:
            rows.append([balancer, "skipped " + notes.why(r)] + [""] * 7)
            continue
        served = sum(r["answers"].values())
        rows.append([balancer, str(r["n"]), fmt_s(r["p50"]), fmt_s(r["p99"]), fmt_s(r["max"]),
                     fmt_pct(r["answers"][SLOW_SHARE_OF[name]], served),
                     "/".join(str(r["answers"][n]) for n in names),
                     "/".join(str(r["connections"][n]) for n in names),
                     "/".join(str(r["max_pending"][n]) for n in names)])
    pair = "/".join(names)
    out = [f"{SLOW_TITLES[name]}: {scenario['clients']} clients x {scenario['per_client']} "
           "requests"]
    out += table(["balancer", "n", "p50", "p99", "max", f"{SLOW_SHARE_OF[name]} share",
                  f"answers {pair}", f"conns {pair}", f"max pending {pair}"], rows)
    notes.flush(out)
    return out
