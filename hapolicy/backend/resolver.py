"""Addresses of services: looked up once, kept RESOLVE_TTL seconds, kept longer through a blip.

A look-up that fails when an address is known keeps that address and tries again in
RESOLVE_RETRY seconds (a DNS blip must not take a service down); one that fails with no address
known is the service's failure, with the resolver's words, and is tried again as soon.
"""

from __future__ import annotations

# the C module, not `socket`: the Python layer's enums and its import of selectors cost a
# spawned process about 2 ms of its start, and nothing here needs them
import _socket
import time

from hapolicy.config.records import Service

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

RESOLVE_TTL = 300.0
RESOLVE_RETRY = 5.0


def lookup(host: str, port: int, family: int, kind: int) -> list:
    """getaddrinfo, with a host name in ASCII given as bytes: a str is encoded with the idna
    codec, whose import costs a spawned process 2 ms of its start."""
    return _socket.getaddrinfo(host.encode() if host.isascii() else host, port, family, kind)


class Resolver:
    """Addresses of services, looked up once and kept for RESOLVE_TTL seconds.

    `lookup` (socket.getaddrinfo's signature) and `clock` (the time an entry is stamped with
    once its look-up returned) are attributes so that tests can replace them.
    """

    def __init__(self) -> None:
        self.cache: dict[str, tuple[float, tuple | None, str]] = {}
        self.lookup: Callable[..., list] = lookup
        self.clock: Callable[[], float] = time.monotonic

    def address(self, service: Service, now: float) -> tuple[int, object, str]:
        """(family, sockaddr, error)."""
        if service.path:
            return _socket.AF_UNIX, service.path, ""
        cached = self.cache.get(service.name)
        if cached is None or cached[0] <= now:
            try:
                info = self.lookup(service.host, service.port, 0, _socket.SOCK_STREAM)
                entry = (self.clock() + RESOLVE_TTL, (info[0][0], info[0][4]), "")
            except (OSError, UnicodeError, ValueError) as exc:
                if cached is not None and cached[1] is not None:
                    # a DNS blip: keep the address that worked, look again later
                    entry = (self.clock() + RESOLVE_RETRY, cached[1], "")
                else:
                    entry = (self.clock() + RESOLVE_RETRY, None,
                             f"cannot resolve {service.host}: {exc}")
            self.cache[service.name] = cached = entry
        if cached[1] is None:
            return 0, None, cached[2]
        return cached[1][0], cached[1][1], ""
