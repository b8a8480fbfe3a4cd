"""The benchmark counts only its backend's own answer as a right one.

A proxy that answers its default action (it never asked the backend), or anything else, makes
the row invalid and the run exit non-zero; so does a row with more right answers than the
backend served requests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from testkit.repo import REPO
from testkit.stubs import OnceThenDead

ROOT = str(REPO)
BENCH = os.path.join(ROOT, "scripts", "bench.py")


def load_bench():
    """scripts/bench.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_classify_tells_the_backends_answer_from_a_default_and_others():
    expected = bench.ANSWER
    assert expected != bench.DEFAULT_ANSWER
    assert bench.classify(expected, expected) == "ok"
    assert bench.classify(b"action=dunno\n\n", expected) == "default"
    assert bench.classify(b"action=DUNNO\n\n", expected) == "default"
    assert bench.classify(b"action=DUNNO\n\n", b"action=OK x\n\n") == "default"
    assert bench.classify(b"action=OK\n\n", expected) == "wrong"
    assert bench.classify(expected + expected, expected) == "wrong"


def result(correct: int, defaults: int = 0, wrong: int = 0) -> dict:
    return {"correct": correct, "defaults": defaults, "wrong": wrong}


def test_more_right_answers_than_the_backend_served_are_counted():
    counts = bench.answer_counts([result(70, defaults=3), result(50, wrong=2)], served=100)
    assert counts == {"correct_answers": 120, "default_answers": 3, "wrong_answers": 2,
                      "backend_served": 100, "not_served": 20}
    assert bench.answer_counts([result(70)], served=75)["not_served"] == 0
    assert bench.answer_counts([result(70)], served=None)["not_served"] == 0


def test_a_caching_rows_answers_beyond_the_backends_are_its_hits_not_errors():
    from benchkit.measure import cached_answers

    row = bench.answer_counts([result(900), result(100)], served=100)
    assert row["not_served"] == 900  # an error in any other row
    cached_answers(row)
    assert (row["not_served"], row["cache_hits"], row["hit_ratio"]) == (0, 900, 0.9)


def test_smoke_run_fails_when_the_daemon_answers_its_default(tmp_path):
    # two answers: the bench's readiness check and the one that learns the expected answer
    backend = OnceThenDead(answers=2)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, BENCH, "--smoke", "--quiet", "--rows", "daemon",
         "--backend", f"127.0.0.1:{backend.port}", "--json", str(out)],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        check=False,
    )
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    backend.thread.join(5)
    assert proc.returncode == 1, detail
    daemon = json.loads(out.read_text())["rows"][0]
    assert daemon["row"] == "daemon" and daemon["status"] == "errors", detail
    assert daemon["default_answers"] > 0 and daemon["correct_answers"] == 0, detail
    assert daemon["errors"] >= daemon["default_answers"], detail
    assert daemon["backend_served"] is None, detail  # not our backend: not counted
    assert "default answers" in proc.stdout, detail
