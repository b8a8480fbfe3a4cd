"""docs/health.md: a HOST given as a name is looked up when first used and again every 5 minutes; a
failed look-up keeps the last good address.

Through the Resolver's seam: its `lookup` (getaddrinfo) and `clock` are replaced, so no DNS
is asked and no time passes.
"""

from __future__ import annotations

import socket

from hapolicy.backend.resolver import RESOLVE_RETRY, RESOLVE_TTL, Resolver
from hapolicy.config.records import Service

SERVICE = Service(name="GREY1", host="policy.example.org", port=10023)


class FakeDNS:
    """A getaddrinfo stand-in: answers `address`, or raises while `failing`; counts calls."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.failing = False
        self.calls = 0

    def __call__(self, host: str, port: int, family: int, kind: int) -> list:
        self.calls += 1
        assert (host, port, kind) == (SERVICE.host, SERVICE.port, socket.SOCK_STREAM)
        if self.failing:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (self.address, port))]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_resolver(dns: FakeDNS, clock: Clock) -> Resolver:
    resolver = Resolver()
    resolver.lookup = dns
    resolver.clock = clock
    return resolver


def address_at(resolver: Resolver, clock: Clock, now: float) -> tuple[int, object, str]:
    clock.now = now
    return resolver.address(SERVICE, now)


def test_a_name_is_looked_up_when_first_used_then_kept_for_five_minutes():
    assert RESOLVE_TTL == 300.0
    dns, clock = FakeDNS("192.0.2.1"), Clock(1000.0)
    resolver = make_resolver(dns, clock)
    assert dns.calls == 0  # not before it is used
    assert address_at(resolver, clock, 1000.0) == (socket.AF_INET, ("192.0.2.1", 10023), "")
    assert dns.calls == 1
    dns.address = "192.0.2.2"  # the name moves
    assert address_at(resolver, clock, 1000.0 + RESOLVE_TTL - 0.01)[1] == ("192.0.2.1", 10023)
    assert dns.calls == 1
    assert address_at(resolver, clock, 1000.0 + RESOLVE_TTL)[1] == ("192.0.2.2", 10023)
    assert dns.calls == 2
    assert address_at(resolver, clock, 1000.0 + 2 * RESOLVE_TTL - 0.01)[1] == ("192.0.2.2", 10023)
    assert dns.calls == 2


def test_a_failed_look_up_keeps_the_last_good_address_and_is_retried_soon():
    dns, clock = FakeDNS("192.0.2.1"), Clock(0.0)
    resolver = make_resolver(dns, clock)
    address_at(resolver, clock, 0.0)
    dns.failing = True
    expired = RESOLVE_TTL
    assert address_at(resolver, clock, expired) == (socket.AF_INET, ("192.0.2.1", 10023), "")
    assert dns.calls == 2
    # not asked again at every request, nor kept for a whole TTL: retried after RESOLVE_RETRY
    assert address_at(resolver, clock, expired + RESOLVE_RETRY - 0.01)[1] == ("192.0.2.1", 10023)
    assert dns.calls == 2
    dns.failing = False
    dns.address = "192.0.2.9"
    assert address_at(resolver, clock, expired + RESOLVE_RETRY)[1] == ("192.0.2.9", 10023)
    assert dns.calls == 3


def test_a_name_never_resolved_is_an_error_of_the_service_retried_after_a_pause():
    dns, clock = FakeDNS("192.0.2.1"), Clock(50.0)
    dns.failing = True
    resolver = make_resolver(dns, clock)
    family, address, error = address_at(resolver, clock, 50.0)
    assert (family, address) == (0, None)
    assert error.startswith("cannot resolve policy.example.org: ")
    assert address_at(resolver, clock, 50.0 + RESOLVE_RETRY - 0.01)[2] == error
    assert dns.calls == 1
    assert address_at(resolver, clock, 50.0 + RESOLVE_RETRY)[2] == error  # failed again
    assert dns.calls == 2
    dns.failing = False
    assert address_at(resolver, clock, 50.0 + 2 * RESOLVE_RETRY)[2] == ""
    assert dns.calls == 3


def test_an_entry_is_stamped_when_its_slow_look_up_returned():
    dns, clock = FakeDNS("192.0.2.1"), Clock(0.0)
    resolver = make_resolver(dns, clock)

    def slow_lookup(*args: object) -> list:
        clock.now += 4.0  # a look-up that blocked for 4 s
        return dns(*args)

    resolver.lookup = slow_lookup
    resolver.address(SERVICE, 0.0)
    clock.now = RESOLVE_TTL + 3.99
    resolver.address(SERVICE, clock.now)
    assert dns.calls == 1


def test_a_unix_socket_is_never_looked_up():
    dns, clock = FakeDNS("192.0.2.1"), Clock(0.0)
    resolver = make_resolver(dns, clock)
    service = Service(name="U", host="", port=0, path="/run/policy.sock")
    assert resolver.address(service, 0.0) == (socket.AF_UNIX, "/run/policy.sock", "")
    assert dns.calls == 0
