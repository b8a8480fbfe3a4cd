"""scripts/failover.py --quick: a real daemon's failover figures are sane (about 20 s); with
--slow, figure 9 alone: hapolicy's balances and HAProxy's leastconn before slow services.

Runs the script as a user would and reads the JSON it writes. Bounds are generous (shared,
noisy machines): they tell "paid a timeout" from "answered at once", nothing finer.
"""

from __future__ import annotations

from testkit.packages import package_present
from testkit.scripts import run_script


def test_failover_script_quick(tmp_path):
    proc, report, detail = run_script("failover.py", "--quick", "--quiet",
                                      json_out=tmp_path / "failover.json")
    assert report["problems"] == [], detail
    assert proc.returncode == 0, detail
    assert "1-2. First failover" in proc.stdout and "5. Weights" in proc.stdout, detail

    failover = report["failover"]
    for case, timeout in (("silent", 2.0), ("blackhole", 1.0)):
        daemon = failover[case]["daemon"]
        assert 0.8 * timeout <= daemon["first"] < timeout + 3, (case, daemon)
        following = daemon["following"]
        assert following["n"] == report["config"]["following"], (case, daemon)
        # a dead service costs the first request only: the others skip it, on both workers
        assert following["p99"] < daemon["first"] / 10, (case, daemon)
        assert daemon["wrong"] == 0, (case, daemon)
        per_worker = daemon["following_per_worker"]
        assert len(per_worker) == 2 and min(per_worker) > 0, (case, daemon)
    assert failover["silent"]["daemon"]["primary_requests"] == 1
    assert "down: no answer after 2" in failover["silent"]["daemon"]["log"]
    assert "down: connect timeout after 1" in failover["blackhole"]["daemon"]["log"]
    assert failover["refused"]["daemon"]["first"] < 1.0

    perl = failover["silent"].get("perl", {})
    if "skipped" not in perl:  # the original pays the timeout on every request
        assert perl["following"]["p50"] >= 1.5, perl

    probe = report["recovery"]["probe"]["daemon"]
    assert probe["n"] == report["config"]["trials"]
    assert probe["max"] < 2.5, probe  # at most one cool-down (1 s) and a tick (50 ms)
    check = report["recovery"]["check"]["daemon"]
    assert check["n"] == report["config"]["trials"]
    assert check["max"] < 1.5, check  # at most one check interval (0.5 s)

    hashed = report["hash"]["daemon"]
    keys, before = hashed["keys"], hashed["share_before"]
    assert all(0.2 * keys <= before[n] <= 0.47 * keys for n in ("G0", "G1", "G2")), hashed
    assert hashed["survivors_moved"] == 0, hashed
    assert hashed["moved"] == before["G1"] and hashed["share_after"]["G1"] == 0, hashed

    weighted = report["weighted"]["daemon"]
    assert abs(weighted["A"] - 200) <= 6 and weighted["A"] + weighted["B"] == 300, weighted
    assert sum(weighted["connections_per_worker"]) == 30, weighted

    tail = report["tail"]["rows"]  # figure 8: hedging and shadows
    assert all(row["wrong"] == 0 for row in tail.values()), tail
    assert tail["hedged"]["hedged"] == tail["hedged"]["second_requests"] > 0, tail
    assert tail["hedged"]["p99"] < tail["slow"]["p99"] / 2, tail  # a ratio, not a time
    assert tail["plain"]["hedged"] == tail["slow"]["hedged"] == 0, tail
    assert tail["shadow"]["shadow_agree"] > 0 and tail["shadow slow"]["shadow_dropped"] > 0, tail


def test_failover_script_slow_figure(tmp_path):
    """Figure 9 alone (--slow --quick): least-latency gives the slow service less than round
    robin, and max-inflight 2 keeps the serial backend's own queue at 2 at most."""
    proc, report, detail = run_script("failover.py", "--slow", "--quick", "--quiet",
                                      json_out=tmp_path / "slow.json")
    assert report["problems"] == [], detail
    assert proc.returncode == 0, detail
    assert "9a. Two services" in proc.stdout and "9c. SERIAL" in proc.stdout, detail
    slow = report["slow"]

    def share(scenario: str, row: str, name: str) -> float:
        answers = slow[scenario]["rows"][row]["answers"]
        assert sum(answers.values()) == slow[scenario]["rows"][row]["n"], (scenario, row)
        return answers[name] / sum(answers.values())

    weighted = share("latency", "hapolicy weighted", "SLOW")
    least = share("latency", "hapolicy least-latency", "SLOW")
    assert least < weighted, (least, weighted)
    assert 0.4 <= weighted <= 0.6, weighted
    assert abs(share("weights", "hapolicy weighted", "A") - 2 / 3) < 0.05, slow["weights"]
    serial = slow["serial"]["rows"]
    assert serial["hapolicy max-inflight 2"]["max_pending"]["SERIAL"] <= 2, serial
    assert serial["hapolicy weighted"]["max_pending"]["SERIAL"] > 2, serial  # the limit's doing
    for scenario in slow.values():
        for name, row in scenario["rows"].items():
            if name.startswith("haproxy") and not package_present("haproxy"):
                assert "skipped" in row, row
            else:
                assert row["wrong"] == 0 and row["n"] == scenario["clients"] * scenario[
                    "per_client"], (name, row)
