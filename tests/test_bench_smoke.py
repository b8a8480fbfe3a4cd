"""The benchmark's smoke run: every available row for about a second, no errors, nothing left.

Runs `scripts/bench.py --smoke --json FILE` as CI does and reads the JSON it writes: the
hapolicy daemon row must have answered requests without a single error, every answer the
backend's own (no default answer), each of them served by the backend.
"""

from __future__ import annotations

from support.scripts import run_script


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
    assert proc.returncode == 0, detail
    for row in report["rows"]:
        assert row["status"] in ("ok", "skipped"), detail
