"""docs/health.md: a failed service is skipped for --cooldown, doubled at each CONSECUTIVE failure up
to --cooldown-max. A success ends the streak: the next outage starts at the base cool-down.

Through HealthTable's public methods only (record_failure, record_success).
"""

from __future__ import annotations

from hapolicy.tables.health import HealthTable

COOLDOWN, CAP = 2.0, 60.0


def fail(table: HealthTable, now: float) -> tuple[bool, float]:
    return table.record_failure(0, now, COOLDOWN, CAP)


def test_consecutive_failed_probes_double_the_cool_down_up_to_the_cap():
    table = HealthTable(1, shared=False)
    now, pauses = 0.0, []
    for _ in range(7):
        _was_up, pause = fail(table, now)
        pauses.append(pause)
        now += pause  # the next failure is the probe after the cool-down
    assert pauses == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_a_success_resets_the_streak_so_the_next_outage_starts_at_the_base_cool_down():
    table = HealthTable(1, shared=False)
    assert fail(table, 0.0) == (True, 2.0)
    assert fail(table, 2.0) == (False, 4.0)  # the probe failed: doubled
    assert table.record_success(0) is True  # the probe after that answered: up again
    assert fail(table, 100.0) == (True, 2.0)  # a new outage: back to the base
    assert fail(table, 102.0) == (False, 4.0)


def test_a_success_while_up_keeps_the_streak_at_zero():
    table = HealthTable(1, shared=False)
    assert table.record_success(0) is False  # already up: nothing to bring back
    assert fail(table, 0.0) == (True, 2.0)
