"""`hapolicyctl check` (check.py) in process: its options, the reading of `pools` (pooltotals.py,
from a real health table), and the rules that make each state from two readings, with the exact
line they print. tests/system/test_check_states.py runs it against a real daemon."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hapolicy import check
from hapolicy.monitor.pooltotals import LATENCY_COLUMNS, POOL_COLUMNS, pools_answer
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    ANSWERS,
    BOUNDS,
    DEFAULT_DOWN,
    DEFAULT_TIMEOUT,
    DOWN_UNTIL,
    LATENCY_BUCKETS,
    REQUESTS,
    SLOT,
    STATS,
)


def row(up=2, down=0, disabled=0, requests=0, defaults=0, fast=0):
    """A pool's reading: `fast` good answers in the first latency bucket."""
    values = dict.fromkeys(POOL_COLUMNS[1:], 0)
    values.update(services=up + down + disabled, up=up, down=down, disabled=disabled,
                  requests=requests, answers=fast, defaults=defaults, lat_1ms=fast)
    return values


def verdict(first, second, *args, elapsed=2.0):
    state, text = check.verdict(check.parse(list(args)), first, second, elapsed)
    return f"HAPOLICY {check.STATES[state]} - {text}", state


def test_ok_line_and_perfdata():
    line, state = verdict({"grey": row()}, {"grey": row(requests=200, fast=200)}, "-w", "1",
                          "-c", "@5:")
    assert state == check.OK
    assert line == ("HAPOLICY OK - 1 pool: 2/2 services up, 0.00 default answers/s, 100.00 "
                    "requests/s, p99 0.99 ms | services_up=2;;;0;2 default_answers_per_s=0.00;1;"
                    "@5:;0 requests_per_s=100.00;;;0 p99_latency=0.99ms;;;0")


def test_the_rules_worst_first():
    first = {"grey": row(), "spf": row(up=1)}
    steady = {"grey": row(), "spf": row(up=1)}
    assert verdict(first, steady)[1] == check.OK
    one_down = {"grey": row(up=1, down=1), "spf": row(up=1)}
    line, state = verdict(first, one_down)
    assert state == check.WARNING
    assert line.startswith("HAPOLICY WARNING - pool grey: 1 of 2 services down; 2 pools: 2/3 "
                           "services up, ")
    none_up = {"grey": row(up=1, down=1), "spf": row(up=0, down=1)}
    line, state = verdict(first, none_up)
    assert state == check.CRITICAL
    assert line.startswith("HAPOLICY CRITICAL - pool spf: no service up; pool grey: 1 of 2 "
                           "services down; 2 pools: 1/3 services up")
    assert "p99 - (no answer)" in line and line.endswith(" p99_latency=U")
    # --pool: the others do not count
    assert verdict(first, none_up, "--pool", "grey")[0].startswith(
        "HAPOLICY WARNING - pool grey: 1 of 2 services down; pool grey: 1/2 services up")


def test_a_disabled_service_is_no_warning_but_none_up_is_critical():
    assert verdict({"p": row()}, {"p": row(up=1, disabled=1)})[0].startswith(
        "HAPOLICY OK - 1 pool: 1/2 services up (1 disabled), ")
    assert verdict({"p": row()}, {"p": row(up=0, disabled=2)})[1] == check.CRITICAL


@pytest.mark.parametrize(("args", "state", "says"), [
    (("-w", "5", "-c", "10"), check.OK, ""),
    (("-w", "2", "-c", "10"), check.WARNING, "3.00 default answers/s (warning: 2); "),
    (("-w", "2", "-c", "2.5"), check.CRITICAL, "3.00 default answers/s (critical: 2.5); "),
    (("-c", "~:2.99"), check.CRITICAL, "3.00 default answers/s (critical: ~:2.99); "),
    (("-w", "@3:4"), check.WARNING, "3.00 default answers/s (warning: @3:4); "),
    (("-w", "10:"), check.WARNING, "3.00 default answers/s (warning: 10:); "),
])
def test_the_thresholds_apply_to_the_default_answers_per_second(args, state, says):
    line, got = verdict({"p": row()}, {"p": row(requests=6, defaults=6)}, *args)
    assert got == state and line.split(" - ", 1)[1].startswith(says + "1 pool:"), line


def test_counters_that_went_back_or_a_new_pool_are_unknown():
    with pytest.raises(check.CheckError, match="went back"):
        verdict({"p": row(requests=10)}, {"p": row(requests=5)})
    with pytest.raises(check.CheckError, match="came between"):
        verdict({"p": row()}, {"p": row(), "q": row()})
    with pytest.raises(check.CheckError, match="no pool 'q'"):
        verdict({"p": row()}, {"p": row()}, "--pool", "q")


@pytest.mark.parametrize(("args", "says"), [
    (["-w"], "-w needs a value"), (["--interval", "0.01"], "--interval '0.01'"),
    (["--interval", "nan"], "--interval 'nan'"), (["-t", "100"], "-t '100'"),
    (["-c", "5:1"], "-c: range '5:1'"), (["extra"], "unknown option 'extra'"),
    (["-w=5"], "unknown option '-w'"), (["--nope=1"], "unknown option '--nope'"),
])
def test_wrong_options(args, says):
    with pytest.raises(check.CheckError, match="^" + says.replace("(", r"\(")):
        check.parse(args)


def test_options_with_equals_and_their_defaults():
    settings = check.parse(["--warning=1", "--critical=@2", "--pool=grey", "--interval=0.5",
                            "--timeout=3"])
    assert (settings.warning.text, settings.critical.text, settings.pool, settings.interval,
            settings.timeout) == ("1", "@2", "grey", 0.5, 3.0)
    default = check.parse([])
    assert (default.warning, default.critical, default.pool, default.interval,
            default.timeout) == (None, None, "", check.INTERVAL, check.TIMEOUT)


@pytest.mark.parametrize("text", ["", "hello\n", "error: not allowed\n", "# pool\n",
                                  "# " + ",".join(POOL_COLUMNS) + "\n",
                                  "# " + ",".join(POOL_COLUMNS) + "\np,1\n",
                                  "# " + ",".join(POOL_COLUMNS) + "\np" + ",-1" * 26 + "\n",
                                  "# " + ",".join(POOL_COLUMNS) + "\np" + ",x" * 26 + "\n"])
def test_an_answer_that_is_not_the_table_is_an_error(text):
    with pytest.raises(check.CheckError):
        check.read(text)


def test_pools_answer_from_a_real_table_is_what_check_reads():
    table = HealthTable(3, shared=False)
    table.f[table.header + REQUESTS] = 12.0
    table.f[table.header + DEFAULT_DOWN] = 2.0
    table.f[table.header + DEFAULT_TIMEOUT] = 1.0
    table.f[0 * SLOT + ANSWERS] = 9.0
    table.f[1 * SLOT + DOWN_UNTIL] = 5.0  # down
    table.set_admin(2, "disabled")
    for service, bucket, count in ((0, 0, 4), (0, 2, 3), (1, 2, 1), (1, len(BOUNDS), 2)):
        table.f[table.stats + service * STATS + LATENCY_BUCKETS + bucket] = float(count)
    config = SimpleNamespace(pools=[SimpleNamespace(name="grey", services=[1, 2, 3])])
    reading = check.read(pools_answer(config, {"grey": table}))
    grey = reading["grey"]
    assert (grey["services"], grey["up"], grey["down"], grey["disabled"]) == (3, 1, 1, 1)
    assert (grey["requests"], grey["answers"], grey["defaults"]) == (12, 9, 3)
    assert (grey["default_down"], grey["default_timeout"]) == (2, 1)
    assert [grey[c] for c in LATENCY_COLUMNS] == [4, 0, 4] + [0] * 10 + [2]  # summed
    assert len(LATENCY_COLUMNS) == len(BOUNDS) + 1
