"""The benchmark's smoke run: every available row for about a second, no errors, nothing left.

Runs `scripts/bench.py --smoke --json FILE` as CI does and reads the JSON it writes: the
hapolicy daemon row must have answered requests without a single error, every answer the
backend's own (no default answer), each of them served by the backend; the spawn start row
must have timed hapolicy's starts to its first answer (the backend's own) and `python -c
pass`, the interpreter's own start. `--inprocess` must relay its requests through every path
(the floor, the lane, a balanced pool's lane, the general path) with the backend's own answer
each time; the cached row answers most requests from its cache and the others through the
backend. Run from another directory, it measures its own tree's hapolicy all the same. The
report names the interpreter, and the daemon row runs without a worker retiring.
"""

from __future__ import annotations

import os
import sys

from testkit.scripts import run_script


def test_bench_smoke(tmp_path):
    proc, report, detail = run_script("bench.py", "--smoke", "--quiet",
                                      json_out=tmp_path / "bench.json")
    rows = {row["row"]: row for row in report["rows"]}
    assert "daemon" in rows, detail
    daemon = rows["daemon"]
    assert daemon["status"] == "ok", detail
    assert daemon["requests"] > 0, detail
    assert daemon["errors"] == 0, detail
    assert daemon["default_answers"] == 0 and daemon["wrong_answers"] == 0, detail
    assert 0 < daemon["correct_answers"] <= daemon["backend_served"], detail
    # no worker retires within the row (the clients never reconnect): no idle replacements
    assert "--max-use 1000000000" in daemon["command"], detail
    # a balanced pool's row (the lane, with round robin and stickiness), answered by the
    # backend, with its ratio
    balanced = rows["balanced"]
    assert balanced["status"] == "ok" and balanced["errors"] == 0, detail
    assert 0 < balanced["correct_answers"] <= balanced["backend_served"], detail
    assert "-s C=" in balanced["command"] and "--balance" not in balanced["command"], detail
    assert report["ratios"]["balanced_over_floor_cpu_per_request"] > 0, detail
    # the general path's row: a pool that hashes, answered by the backend, with its ratio
    hashed = rows["hashed"]
    assert hashed["status"] == "ok" and hashed["errors"] == 0, detail
    assert 0 < hashed["correct_answers"] <= hashed["backend_served"], detail
    assert "--balance hash:client_address" in hashed["command"], detail
    assert report["ratios"]["hashed_over_floor_cpu_per_request"] > 0, detail
    # the cached row: one request in ten new (a miss, to the backend), the others its cache's
    cached = rows["cached"]
    assert cached["status"] == "ok" and cached["errors"] == 0, detail
    assert cached["default_answers"] == 0 and cached["wrong_answers"] == 0, detail
    assert 0 < cached["backend_served"] < cached["correct_answers"], detail
    assert cached["cache_hits"] == cached["correct_answers"] - cached["backend_served"], detail
    assert 0.5 < cached["hit_ratio"] < 1, detail
    assert "--cache 300 --cache-key" in cached["command"], detail
    assert report["ratios"]["cached_over_daemon_cpu_per_request"] > 0, detail
    # every row runs under the bench's own interpreter, which the report names
    assert report["config"]["interpreter"] == os.path.realpath(sys.executable), detail
    assert f"({os.path.realpath(sys.executable)})" in proc.stdout.splitlines()[0], detail
    assert proc.returncode == 0, detail
    starts = {p["title"]: p for p in rows["start"]["programs"]}
    assert rows["start"]["status"] == "ok", detail
    for title in ("hapolicy spawn", "python -c pass"):
        assert starts[title]["status"] == "ok" and starts[title]["runs"] == 3, detail
        assert 0 < starts[title]["min_ms"] <= starts[title]["median_ms"], detail
    assert report["ratios"]["spawn_start_over_perl"] is not None or \
        starts["perl original"]["status"] == "skipped", detail
    for row in report["rows"]:
        assert row["status"] in ("ok", "skipped"), detail


def test_the_bench_measures_its_own_trees_hapolicy_from_any_directory(tmp_path):
    # `python -m hapolicy` looks in its working directory first: run from another checkout,
    # the bench would measure that one; here, a decoy that cannot answer
    decoy = tmp_path / "hapolicy"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "__main__.py").write_text("raise SystemExit(3)\n")
    proc, report, detail = run_script("bench.py", "--smoke", "--quiet", "--rows",
                                      "daemon,spawn,start", json_out=tmp_path / "bench.json",
                                      cwd=tmp_path)
    rows = {row["row"]: row for row in report["rows"]}
    for name in ("daemon", "spawn"):
        assert rows[name]["status"] == "ok" and rows[name]["correct_answers"] > 0, detail
    starts = {p["title"]: p for p in rows["start"]["programs"]}
    assert starts["hapolicy spawn"]["status"] == "ok", detail
    assert proc.returncode == 0, detail


def test_bench_inprocess_relays_every_path_with_the_backends_answers(tmp_path):
    proc, report, detail = run_script("bench.py", "--inprocess", "300", "--rounds", "2",
                                      json_out=tmp_path / "inprocess.json")
    assert proc.returncode == 0, detail
    paths = ("driver", "python floor", "hapolicy lane", "hapolicy balanced", "hapolicy general")
    assert set(report["median_us"]) == set(paths), detail
    for name in paths:
        assert report["wrong_answers"][name] == 0, detail
        assert len(report["rounds_us"][name]) == 2, detail
        assert report["median_us"][name] > 0, detail
    assert "hapolicy lane / python floor, CPU per request" in proc.stdout, detail
