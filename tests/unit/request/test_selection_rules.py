"""Selector.pick's rules at their edges (fast, in-process): a request never tries a service
twice (stickiness and the last resort included), the sticky service may be the first one,
-1 means "none left", a probe holds its service for its TIMEOUT + 5 s, and hash routing keeps
the weights' shares.
"""

from __future__ import annotations

from collections import Counter

from hapolicy.config.records import parse_service
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DOWN, PROBE_DUE


def make(*specs: str) -> tuple[Selector, HealthTable]:
    services = [parse_service(s) for s in specs]
    health = HealthTable(len(services), shared=False)
    return Selector(services, health), health


def test_the_sticky_service_may_be_the_first_one():
    sel, _ = make("A=h:1", "B=h:2")
    assert [sel.pick(0, 1.0, sticky=0) for _ in range(4)] == [0, 0, 0, 0]


def test_a_sticky_service_already_tried_is_not_tried_again():
    sel, _ = make("A=h:1", "B=h:2", "C=h:3")
    for sticky in range(3):
        tried = 1 << sticky
        picks = {sel.pick(tried, 1.0, sticky=sticky) for _ in range(6)}
        assert sticky not in picks and picks <= {0, 1, 2}, (sticky, picks)


def test_a_service_already_tried_is_skipped_in_its_group():
    sel, _ = make("A=h:1", "B=h:2", "C=h:3")
    for tried, left in ((0b001, {1, 2}), (0b010, {0, 2}), (0b100, {0, 1}), (0b011, {2}),
                        (0b110, {0}), (0b101, {1})):
        assert {sel.pick(tried, 1.0) for _ in range(6)} == left, bin(tried)
    assert sel.pick(0b111, 1.0) == -1


def test_the_last_resort_skips_services_already_tried_and_ends_with_minus_one():
    sel, health = make("A=h:1:10", "B=h:2:10", "C=h:3:20")
    sel = Selector(sel.services, health, try_down=True)  # --all-down try
    for i in range(3):
        health.record_failure(i, 100.0, 60.0, 60.0)  # all down, none due for a probe
    assert sel.pick(0, 101.0) == 0  # in order of priority, they may be back
    assert sel.pick(0b001, 101.0) == 1
    assert sel.pick(0b011, 101.0) == 2
    assert sel.pick(0b101, 101.0) == 1
    assert sel.pick(0b111, 101.0) == -1
    assert sel.pick(0, 101.0, last_resort=False) == -1  # a hedge never asks a dead one


def test_a_probe_holds_its_service_for_its_timeout_and_five_seconds():
    sel, health = make("A=h:1:10:1:3", "B=h:2:20")
    health.record_failure(0, 100.0, 2.0, 60.0)
    assert sel.pick(0, 102.0) == 0  # the cool-down is over: this request probes A
    lease_end = 102.0 + 3 + 5.0
    assert health.state(0, lease_end - 0.001) == DOWN
    assert sel.pick(0, lease_end - 0.001) == 1  # the others keep skipping it
    assert health.state(0, lease_end) == PROBE_DUE  # the probe never came back: again
    assert sel.pick(0, lease_end) == 0


def test_hash_routing_keeps_the_weights_shares():
    sel, _ = make("A=h:1:10:1", "B=h:2:10:1", "C=h:3:10:2")
    keys = [b"key-%d" % n for n in range(12000)]
    share = Counter(sel.pick(0, 1.0, key) for key in keys)
    # rendezvous hashing with weights 1:1:2: 25 %, 25 %, 50 % (+- 2 %, over 6 sigma)
    assert abs(share[0] - 3000) < 240 and abs(share[1] - 3000) < 240, share
    assert abs(share[2] - 6000) < 240, share
