"""The key that `balance = hash:ATTR[/N][,ATTR...]` hashes a request on.

The key is the attributes' raw values joined by NUL. `ATTR/N` keeps only the first N bits of
an address, so that requests reach the server that keeps their state under the same key:
postgrey keys its triplets on the client's /24 (IPv4) and /64 (IPv6), so a sender retrying
from another address of its /24 meets the server that greylisted it. N of 0-32 is the IPv4
prefix, and IPv6 addresses get /64; N of 33-128 is the IPv6 prefix, and IPv4 addresses get /24
(postgrey's defaults). A value that is not an address (`unknown`, empty) is hashed as it is.
"""

from __future__ import annotations

# the C module, not `socket`: the Python layer costs a spawned process about 2 ms of its start
import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.protocol import Request

IPV4_DEFAULT, IPV6_DEFAULT = 24, 64


def parse_hash_attrs(balance: str) -> list[tuple[bytes, int, int]]:
    """(attribute, IPv4 prefix, IPv6 prefix) of each hashed attribute; -1, -1: unmasked."""
    attrs = []
    for attr in balance[5:].split(","):
        name, slash, bits_text = attr.partition("/")
        v4 = v6 = -1
        if slash:
            bits = int(bits_text)
            v4, v6 = (bits, IPV6_DEFAULT) if bits <= 32 else (IPV4_DEFAULT, bits)
        attrs.append((name.encode(), v4, v6))
    return attrs


def key_function(balance: str) -> Callable[[Request], bytes] | None:
    """What makes a request's hash key (None: weighted balancing, no key)."""
    if not balance.startswith("hash:"):
        return None
    attrs = parse_hash_attrs(balance)
    if all(v4 < 0 for _, v4, _ in attrs):
        names = [name for name, _, _ in attrs]
        return lambda request: b"\0".join([request.attr_bytes(n) for n in names])

    def masked(request: Request) -> bytes:
        return b"\0".join([mask_address(request.attr_bytes(n), v4, v6) if v4 >= 0
                           else request.attr_bytes(n) for n, v4, v6 in attrs])

    return masked


def mask_address(value: bytes, v4: int, v6: int) -> bytes:
    """The network part of an IPv4 or IPv6 address, as packed bytes; other values as given."""
    text = value.decode("ascii", "replace")
    family, bits = (_socket.AF_INET6, v6) if ":" in text else (_socket.AF_INET, v4)
    try:
        packed = _socket.inet_pton(family, text)
    except (OSError, ValueError):  # not an address; ValueError: a NUL in it
        return value
    number = int.from_bytes(packed, "big")
    width = len(packed) * 8
    number &= ((1 << width) - 1) ^ ((1 << (width - bits)) - 1)
    return b"/" + number.to_bytes(len(packed), "big")  # "/": never equal to a raw value
