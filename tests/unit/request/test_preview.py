"""preview.py's trial order (hapolicyctl ask --dry-run) against Selector.pick (Hypothesis):
for any mix of priorities, weights, round-robin clocks, health and admin states, hash key,
sticky service and all-down = try, the order read without a side effect is the order in which
pick, called as a request calls it failure after failure, hands out the services; reading it
changes no word of the shared table. And the hash key is shown with its masks.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hapolicy.base.protocol import Request
from hapolicy.config.parsers import parse_service
from hapolicy.request.preview import (
    DRAINED,
    LAST_RESORT,
    PROBE,
    STICKY,
    key_text,
    skipped,
    trial_order,
)
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DISABLED, DRAINING

NOW = 1000.0
# up; down in its cool-down; down with its cool-down over (a probe due); drained; disabled
STATES = ("up", "down", "due", "drain", "disabled")

services = st.lists(st.tuples(st.sampled_from((10, 20, 30)), st.integers(1, 5),
                              st.sampled_from(STATES), st.floats(0.0, 3.0)),
                    min_size=1, max_size=6)


def build(specs: list[tuple[int, int, str, float]], try_down: bool) -> tuple[Selector,
                                                                               HealthTable]:
    parsed = [parse_service(f"S{i}=127.0.0.1:{1000 + i}:{prio}:{weight}")
              for i, (prio, weight, _, _) in enumerate(specs)]
    table = HealthTable(len(parsed), shared=False)
    for i, (_, _, state, clock) in enumerate(specs):
        table.set_served(i, clock)
        if state == "down":
            table.record_failure(i, NOW - 1.0, 60.0, 60.0)
        elif state == "due":
            table.record_failure(i, NOW - 10.0, 2.0, 60.0)
        elif state == "drain":
            table.set_admin(i, DRAINING)
        elif state == "disabled":
            table.set_admin(i, DISABLED)
    return Selector(parsed, table, try_down), table


def live_order(selector: Selector, key: bytes | None, sticky: int) -> list[int]:
    tried, order = 0, []
    while True:
        index = selector.pick(tried, NOW, key, sticky)
        if index < 0:
            return order
        order.append(index)
        tried |= 1 << index


@given(services, st.booleans(), st.one_of(st.none(), st.binary(max_size=8)),
       st.integers(-1, 5))
def test_the_order_is_picks_and_reading_it_changes_nothing(specs, try_down, key, sticky):
    sticky = sticky if sticky < len(specs) else -1
    selector, table = build(specs, try_down)
    before = bytes(table.f.cast("B"))
    order = trial_order(selector, NOW, key, sticky)
    assert bytes(table.f.cast("B")) == before
    assert [i for i, _ in order] == live_order(selector, key, sticky)
    left = skipped(selector, order)
    assert sorted([i for i, _ in order] + [i for i, _ in left]) == list(range(len(specs)))


def test_each_entry_says_why_it_comes_there():
    specs = [(10, 1, "up", 0.0), (10, 1, "due", 0.0), (20, 1, "drain", 0.0),
             (30, 1, "down", 0.0), (30, 1, "disabled", 0.0)]
    selector, _ = build(specs, try_down=True)
    order = trial_order(selector, NOW, None, sticky=0)
    assert order == [(0, STICKY), (1, PROBE), (2, DRAINED), (3, LAST_RESORT)]
    assert skipped(selector, order) == [(4, "disabled")]
    selector, _ = build(specs, try_down=False)
    order = trial_order(selector, NOW, None)
    assert order == [(1, PROBE), (0, ""), (2, DRAINED)]  # a probe due comes first in its group
    assert skipped(selector, order) == [(3, "down"), (4, "disabled")]


def test_the_round_robin_order_follows_the_clocks():
    selector, _ = build([(10, 1, "up", 2.0), (10, 1, "up", 0.5), (10, 2, "up", 1.0)], False)
    # the next pick is the lowest clock after it: 0.5 + 1 = 1.5, 1.0 + 0.5 = 1.5, 2.0 + 1 = 3.0
    assert [i for i, _ in trial_order(selector, NOW)] == [1, 2, 0]


def test_the_hash_key_is_shown_with_its_masks():
    request = Request(b"client_address=192.0.2.77\nsender=a@example.org\n"
                      b"helo_name=2001:db8:1:2:3::4\n\n")
    assert key_text("hash:client_address/24,sender", request) == \
        "client_address/24=192.0.2.0 sender=a@example.org"
    assert key_text("hash:client_address/20", request) == "client_address/20=192.0.0.0"
    # an IPv6 value of an attribute masked /24 gets /64; /48 is IPv6's, IPv4 keeps /24
    assert key_text("hash:helo_name/24", request) == "helo_name/64=2001:db8:1:2::"
    assert key_text("hash:helo_name/48,client_address/48", request) == \
        "helo_name/48=2001:db8:1:: client_address/24=192.0.2.0"
    # a value that is no address is hashed as it is; a missing one is empty
    assert key_text("hash:sender/24,recipient", request) == "sender=a@example.org recipient="
    assert key_text("weighted", request) == ""
