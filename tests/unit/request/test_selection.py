"""Order of services: numeric priority, weights, health, hashing, stickiness."""

from collections import Counter

from hapolicy.config.records import parse_service
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DOWN, PROBE_DUE, UP


def make(*specs, shared=False, try_down=False):
    services = [parse_service(s) for s in specs]
    health = HealthTable(len(services), shared=shared)
    return Selector(services, health, try_down), health


def order(selector, now=100.0, key=None):
    tried, out = 0, []
    while (i := selector.pick(tried, now, key)) >= 0:
        out.append(selector.services[i].name)
        tried |= 1 << i
    return out


def test_priority_is_numeric_not_text():
    sel, _ = make("TEN=h:1:10", "NINE=h:2:9", "HUNDRED=h:3:100")
    assert order(sel) == ["NINE", "TEN", "HUNDRED"]


def test_each_service_once_per_request():
    sel, _ = make("A=h:1", "B=h:2", "C=h:3:20")
    names = order(sel)
    assert sorted(names) == ["A", "B", "C"] and names[-1] == "C"


def test_weights_two_to_one_and_smooth():
    sel, _ = make("A=h:1:10:2", "B=h:2:10:1")
    firsts = [sel.services[sel.pick(0, 1.0)].name for _ in range(300)]
    assert Counter(firsts) == {"A": 200, "B": 100}
    assert "AAA" not in "".join(firsts)  # smooth: never three A in a row


def test_down_service_is_skipped_then_probed_by_one_request():
    sel, health = make("A=h:1:10", "B=h:2:20")
    health.record_failure(0, now=100.0, cooldown=2.0, cap=60.0)
    assert health.state(0, 101.0) == DOWN
    assert order(sel, now=101.0) == ["B"]  # a down one is not tried at all
    assert sel.pick(0, 101.0) == 1
    assert health.state(0, 102.5) == PROBE_DUE
    assert sel.pick(0, 102.5) == 0  # this request probes A
    assert sel.pick(0, 102.6) == 1  # the others keep skipping it meanwhile
    assert health.record_success(0) is True
    assert health.state(0, 102.7) == UP


def test_cooldown_doubles_at_each_failed_probe_up_to_the_cap():
    _, health = make("A=h:1")
    now, pauses = 0.0, []
    for _ in range(5):
        pauses.append(health.record_failure(0, now, 2.0, 10.0)[1])
        now += pauses[-1]  # the next failure is the probe after the cool-down
    assert pauses == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_burst_of_in_flight_failures_counts_once():
    _, health = make("A=h:1")
    results = [health.record_failure(0, 5.0 + n / 1000, 2.0, 60.0) for n in range(8)]
    assert results[0] == (True, 2.0)
    assert all(not was_up for was_up, _ in results[1:])
    assert health.state(0, 7.01) == PROBE_DUE  # not pushed to the 60 s cap


def test_weights_hold_across_workers_sharing_the_table():
    services = [parse_service("A=h:1:10:2"), parse_service("B=h:2:10:1")]
    health = HealthTable(2, shared=True)
    workers = [Selector(services, health) for _ in range(3)]
    picks = Counter(services[workers[n % 3].pick(0, 1.0)].name for n in range(300))
    assert picks == {"A": 200, "B": 100}


def test_rejoining_service_does_not_get_a_burst():
    sel, health = make("A=h:1", "B=h:2")
    health.record_failure(0, 0.0, 2.0, 60.0)
    for _ in range(100):
        assert sel.pick(0, 1.0) == 1
    health.record_success(0)
    health.rejoin(0, [0, 1])
    firsts = Counter(sel.pick(0, 1.0) for _ in range(20))
    assert firsts == {0: 10, 1: 10}


def test_hash_is_stable_and_removing_one_server_moves_only_its_share():
    specs = ["G1=h:1", "G2=h:2", "G3=h:3"]
    sel, health = make(*specs)
    keys = [b"192.0.2.%d" % i for i in range(3000)]
    before = [sel.pick(0, 1.0, key) for key in keys]
    assert before == [sel.pick(0, 1.0, key) for key in keys]
    share = Counter(before)
    assert all(800 < share[i] < 1200 for i in range(3))
    health.record_failure(1, 1.0, 60.0, 60.0)
    after = [sel.pick(0, 2.0, key) for key in keys]
    moved = [k for k, b, a in zip(keys, before, after) if b != a]
    assert len(moved) == share[1]  # exactly G2's keys moved, nobody else's
    assert all(b == 1 for b, a in zip(before, after) if b != a)


def test_sticky_service_is_preferred_while_up():
    sel, health = make("A=h:1", "B=h:2")
    assert all(sel.pick(0, 1.0, sticky=1) == 1 for _ in range(5))
    health.record_failure(1, 1.0, 5.0, 60.0)
    assert sel.pick(0, 2.0, sticky=1) == 0


def test_nothing_to_try_when_every_service_is_down_and_none_due_a_probe():
    sel, health = make("A=h:1:10", "B=h:2:20")
    for i in (0, 1):
        health.record_failure(i, now=100.0, cooldown=2.0, cap=60.0)
    assert sel.pick(0, 101.0) == -1  # the request gets the default at once
    assert sel.pick(0, 102.5) == 0  # A's cool-down is over: this request probes it
    assert sel.pick(0, 102.5) == 1  # and the next one probes B
    assert sel.pick(0, 102.6) == -1


def test_all_down_try_tries_the_down_ones_in_order():
    sel, health = make("A=h:1:10", "B=h:2:20", try_down=True)
    for i in (0, 1):
        health.record_failure(i, now=100.0, cooldown=2.0, cap=60.0)
    assert order(sel, now=101.0) == ["A", "B"]
