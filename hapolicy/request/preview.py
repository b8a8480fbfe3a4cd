"""The order in which one request would try a pool's services, read without a side effect.

`trial_order` walks `Selector.pick` (selection.py) as a request would, failure after failure,
but only reads the shared table: it commits no round-robin pick and claims no probe, so that
`hapolicyctl ask --dry-run` changes nothing. Its rules are pick's, in pick's order: the sticky
service while it is up, then each priority group (a service whose cool-down is over first, as
its probe; else the group's services that are up and not drained, by rendezvous hash of the key
or by the round robin's next pick; least-latency draws at random: the likeliest of the group
first), then a drained one, then with all-down = try the services
marked down that are not disabled. Each entry says why it comes there; `skipped` says why the
others do not. Another worker's pick meanwhile moves the round robin on: the order is the one
of a request sent now. tests/unit/request/test_preview.py holds it to pick's choices.

`key_text` shows a request's hash key as `hash:ATTR/N` makes it: each attribute's value, an
address masked to its network (hashkey.py).
"""

from __future__ import annotations

import _socket

from hapolicy.request.hashkey import mask_address, parse_hash_attrs
from hapolicy.tables.layout import ADMIN, DOWN_UNTIL, DRAIN, PROBE_DUE, SLOT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.base.protocol import Request
    from hapolicy.request.selection import Selector

PLAIN, STICKY, PROBE, DRAINED, LAST_RESORT = "", "sticky", "probe", "drained", "down, all-down=try"
LIKELIEST = "least-latency: the likeliest of a random draw"


def trial_order(selector: Selector, now: float, key: bytes | None = None,
                sticky: int = -1) -> list[tuple[int, str]]:
    """(service index, why there) of each service the request would try, in order."""
    order: list[tuple[int, str]] = []
    tried = 0
    while True:
        index, why = next_pick(selector, tried, now, key, sticky)
        if index < 0:
            return order
        order.append((index, why))
        tried |= 1 << index


def next_pick(selector: Selector, tried: int, now: float, key: bytes | None,
              sticky: int) -> tuple[int, str]:
    """Selector.pick's choice, read only: (index, why), or (-1, "") when none is left."""
    table = selector.table
    f = table.f
    if sticky >= 0 and not tried >> sticky & 1 and _up(f, sticky):
        return sticky, STICKY
    drained = -1
    for group in selector.groups:
        candidates = []
        for i in group:
            if tried >> i & 1:
                continue
            if _up(f, i):
                if f[i * SLOT + DRAIN]:
                    drained = i if drained < 0 else drained
                    continue
                candidates.append(i)
            elif table.state(i, now) == PROBE_DUE:
                return i, PROBE
        if len(candidates) == 1:
            return candidates[0], PLAIN
        if candidates and key is not None:
            return max(candidates, key=lambda i: selector.hash_score(i, key)), PLAIN
        if candidates and selector.least_latency:  # a draw: the likeliest first
            return max(candidates, key=lambda i: selector.score(i, now)), LIKELIEST
        if candidates:
            return selector.by_weight(candidates), PLAIN
    if drained >= 0:
        return drained, DRAINED
    for i in selector.last_resort:
        if not tried >> i & 1 and not table.disabled(i):
            return i, LAST_RESORT
    return -1, ""


def _up(f: memoryview, i: int) -> bool:
    return f[i * SLOT + DOWN_UNTIL] + f[i * SLOT + ADMIN] == 0.0


def skipped(selector: Selector, order: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(index, why) of the services the order leaves out: disabled, or down."""
    table = selector.table
    tried = {i for i, _ in order}
    return [(i, "disabled" if table.disabled(i) else "down")
            for i in range(len(selector.services)) if i not in tried]


def key_text(balance: str, request: Request) -> str:
    """The hash key of request under `hash:ATTRS` balance, shown: `ATTR=value` (an address
    masked by `/N` shown as `ATTR/N=network`), space-separated; '' without hash balance."""
    if not balance.startswith("hash:"):
        return ""
    parts = []
    for name, v4, v6 in parse_hash_attrs(balance):
        value = request.attr_bytes(name)
        label = name.decode("ascii", "replace")
        if v4 >= 0:
            masked = mask_address(value, v4, v6)
            if masked != value:  # an address (else mask_address gives the value back)
                family, bits = (_socket.AF_INET, v4) if len(masked) == 5 else (_socket.AF_INET6,
                                                                               v6)
                parts.append(f"{label}/{bits}={_socket.inet_ntop(family, masked[1:])}")
                continue
        parts.append(f"{label}={value.decode('utf-8', 'replace')}")
    return " ".join(parts)
