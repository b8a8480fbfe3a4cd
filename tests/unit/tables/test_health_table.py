"""HealthTable's rules at their edges (fast, in-process, through its public methods): a
cool-down ends at its exact end, one probe at a time for the probe's lease, a failed probe's
new cool-down is not stretched by the lease it had, in-flight failures leave the pause and the
streak alone, and the table is shared with forked workers. Also: a service coming back starts
level with its own priority group, a reload copies a service's whole state, spawn mode starts
round robin at a random phase.
"""

from __future__ import annotations

import os

from testkit.logs import ListLogger

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DOWN, PROBE_DUE, UP
from hapolicy.tables.transitions import Health

COOLDOWN, CAP, LEASE = 2.0, 60.0, 35.0


def down_at(now: float, services: int = 2, i: int = 1) -> HealthTable:
    """A table whose service i failed at `now` (its first failure: 2 s cool-down)."""
    table = HealthTable(services, shared=False)
    assert table.record_failure(i, now, COOLDOWN, CAP) == (True, COOLDOWN)
    return table


def test_a_cool_down_ends_at_its_exact_end():
    for i in (0, 1):
        table = down_at(100.0, i=i)
        assert table.state(i, 100.0) == DOWN
        assert table.state(i, 101.999) == DOWN
        assert table.state(i, 102.0) == PROBE_DUE
        assert table.state(1 - i, 100.0) == UP  # the other service is not touched


def test_one_probe_at_a_time_for_the_lease():
    for i in (0, 1):
        table = down_at(100.0, i=i)
        assert table.claim_probe(i, 101.999, LEASE) is False  # not over yet
        assert table.claim_probe(i, 102.0, LEASE) is True
        assert table.state(i, 102.0) == DOWN  # taken: the others skip it
        assert table.claim_probe(i, 102.0, LEASE) is False
        assert table.claim_probe(i, 102.0 + LEASE - 0.001, LEASE) is False
        assert table.state(i, 102.0 + LEASE - 0.001) == DOWN
        # the probe never returned: the next request may probe again
        assert table.state(i, 102.0 + LEASE) == PROBE_DUE
        assert table.claim_probe(i, 102.0 + LEASE, LEASE) is True


def test_a_service_that_is_up_has_no_probe_to_claim():
    table = HealthTable(2, shared=False)
    assert table.claim_probe(0, 5.0, LEASE) is False
    assert table.state(0, 5.0) == UP


def test_a_failed_probe_starts_the_doubled_cool_down_from_its_failure():
    table = down_at(100.0)
    assert table.claim_probe(1, 102.0, LEASE)
    assert table.record_failure(1, 102.5, COOLDOWN, CAP) == (False, 4.0)
    assert table.state(1, 106.499) == DOWN
    assert table.state(1, 106.5) == PROBE_DUE  # not held until the old lease ended


def test_a_good_probe_brings_the_service_up_and_clears_its_lease():
    table = down_at(100.0)
    assert table.claim_probe(1, 102.0, LEASE)
    assert table.record_success(1) is True
    assert table.state(1, 102.1) == UP
    assert table.record_failure(1, 103.0, COOLDOWN, CAP) == (True, COOLDOWN)
    assert table.state(1, 105.0) == PROBE_DUE


def test_an_in_flight_failure_leaves_the_pause_and_the_streak_alone():
    table = down_at(100.0)
    assert table.record_failure(1, 101.5, COOLDOWN, CAP) == (False, 0.5)  # what is left
    assert table.state(1, 102.0) == PROBE_DUE
    assert table.record_failure(1, 102.0, COOLDOWN, CAP) == (False, 4.0)  # the probe: doubled


def test_the_table_is_shared_with_forked_workers_by_default():
    table = HealthTable(2)
    pid = os.fork()
    if pid == 0:  # a worker marks service 1 down
        try:
            table.record_failure(1, 100.0, COOLDOWN, CAP)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert table.state(1, 101.0) == DOWN
    assert table.state(0, 101.0) == UP
    table.close()


def test_a_private_table_is_not_shared():
    table = HealthTable(1, shared=False)
    pid = os.fork()
    if pid == 0:
        try:
            table.record_failure(0, 100.0, COOLDOWN, CAP)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert table.state(0, 101.0) == UP


def test_a_service_coming_back_starts_level_with_its_own_priority_group():
    services = [parse_service(s) for s in ("A=h:1:10", "B=h:2:10", "C=h:3:20")]
    table = HealthTable(3, shared=False)
    table.set_served(1, 50.0)  # B served alone while A was down
    table.set_served(2, 500.0)  # C, another priority, is no peer of A
    table.record_failure(0, 100.0, COOLDOWN, CAP)
    log = ListLogger()
    health = Health(table, services, PoolConfig(services=tuple(services)), log)
    health.ok(0)
    assert table.state(0, 100.0) == UP
    assert table.served(0) == 50.0  # not behind B (a burst), not level with C
    assert log.lines == ["notice: service A (h:1) up"]
    health.ok(0)  # already up: nothing logged again
    assert len(log.lines) == 1


def test_a_reload_copies_a_services_whole_state():
    old = down_at(100.0, services=2, i=0)
    old.set_served(0, 7.5)
    new = HealthTable(3, shared=False)
    new.copy_slot(1, old, 0)  # slots in the middle: a slice one slot too long shows
    assert new.state(1, 101.0) == DOWN and new.state(1, 102.0) == PROBE_DUE
    assert new.served(1) == 7.5
    assert new.state(0, 101.0) == UP and new.state(2, 101.0) == UP
    assert new.record_failure(1, 102.0, COOLDOWN, CAP) == (False, 4.0)  # the streak came too


def test_spawn_mode_starts_round_robin_at_a_random_phase_within_one_step():
    table = HealthTable(2, shared=False)
    table.randomize_phase([1, 4])
    assert -1.0 <= table.served(0) <= 0.0 and -0.25 <= table.served(1) <= 0.0
    phases = set()
    for _ in range(20):
        table.randomize_phase([1, 4])
        phases.add(table.served(0))
    assert len(phases) > 10  # random, not fixed
