"""scripts/failover.py --quick: a real daemon's failover figures are sane (about 20 s).

Runs the script as a user would and reads the JSON it writes. Bounds are generous (shared,
noisy machines): they tell "paid a timeout" from "answered at once", nothing finer.
"""

from __future__ import annotations

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
