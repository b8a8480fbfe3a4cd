"""Properties of the hash key (hapolicy/request/hashkey.py) on arbitrary requests and balance texts.

`parse_balance` accepts a text or refuses it with a one-line ConfigError, and every text it
accepts makes a key function. A key is made for any framed request, masked or not, without
an exception. Masking keeps the network and only the network: two addresses get the same key
exactly when they share the prefix (IPv4 /N or /24, IPv6 /M or /64), and a value that is not
an address is hashed as it is.
"""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st
from testkit.fuzzing import NAMES, request_streams

from hapolicy.base.protocol import Request, RequestFramer
from hapolicy.config.records import ConfigError, parse_balance
from hapolicy.request.hashkey import IPV4_DEFAULT, IPV6_DEFAULT, key_function, mask_address

prefixes = st.one_of(st.none(), st.integers(0, 128))
hashed = st.tuples(st.sampled_from([n.decode() for n in NAMES]), prefixes).map(
    lambda np: np[0] if np[1] is None else f"{np[0]}/{np[1]}")
balances = st.lists(hashed, min_size=1, max_size=4).map(lambda a: "hash:" + ",".join(a))
masked_balances = st.builds(lambda bits, rest: f"hash:client_address/{bits}" + rest,
                            st.integers(0, 128), st.sampled_from(("", ",sender", ",instance")))


@given(st.one_of(balances, st.text(max_size=40), st.text(max_size=20).map(lambda t: "hash:" + t)))
def test_a_balance_text_is_accepted_and_makes_a_key_function_or_is_refused_in_one_line(text):
    try:
        accepted = parse_balance(text)
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    make = key_function(accepted)
    assert (make is None) == (accepted == "weighted")


def keys(stream: bytes, balance: str) -> list[bytes]:
    make = key_function(parse_balance(balance))
    return [make(r) for r in RequestFramer().feed(stream) if not r.error]


@given(request_streams(big=False), st.one_of(balances, masked_balances))
@example(b"client_address=192.0.2.1\0\n\n", "hash:client_address/24")
def test_a_key_is_made_for_any_request(stream, balance):
    for key in keys(stream, balance):
        assert isinstance(key, bytes)


def network(address: ipaddress._BaseAddress, v4: int, v6: int) -> ipaddress._BaseNetwork:
    bits = v4 if address.version == 4 else v6
    return ipaddress.ip_network(f"{address}/{bits}", strict=False)


def split_bits(bits: int) -> tuple[int, int]:
    """What `ATTR/bits` masks IPv4 and IPv6 addresses to (hashkey's module doc)."""
    return (bits, IPV6_DEFAULT) if bits <= 32 else (IPV4_DEFAULT, bits)


prefix_lengths = st.one_of(st.sampled_from((0, 1, 23, 24, 31, 32, 33, 63, 64, 65, 127, 128)),
                           st.integers(0, 128))


def client_key(balance: str, address: ipaddress._BaseAddress) -> bytes:
    make = key_function(parse_balance(balance))
    return make(Request(b"client_address=%s\n\n" % str(address).encode()))


@given(st.ip_addresses(), prefix_lengths, st.data())
def test_masking_keeps_the_network_and_only_the_network(address, bits, data):
    """An address and the same with one bit flipped: the same key exactly when the bit is past
    the prefix."""
    width = address.max_prefixlen
    v4, v6 = split_bits(bits)
    kept = v4 if address.version == 4 else v6
    # the bits on either side of the prefix's end as often as any other
    edges = [b for b in (kept - 1, kept) if 0 <= b < width]
    flip = data.draw(st.one_of(st.sampled_from(edges), st.integers(0, width - 1)),
                     label="flip (from the left)")
    other = type(address)(int(address) ^ (1 << (width - 1 - flip)))
    balance = f"hash:client_address/{bits}"
    assert (client_key(balance, address) == client_key(balance, other)) == (flip >= kept)


@given(st.ip_addresses(v=4), st.ip_addresses(v=6), prefix_lengths)
def test_an_ipv4_and_an_ipv6_address_never_share_a_key(a, b, bits):
    balance = f"hash:client_address/{bits}"
    assert client_key(balance, a) != client_key(balance, b)


@given(st.ip_addresses(), prefix_lengths)
def test_a_neighbour_in_the_network_gets_the_same_key(address, bits):
    v4, v6 = split_bits(bits)
    net = network(address, v4, v6)
    neighbour = net.broadcast_address if address != net.broadcast_address else net.network_address
    text = str(address).encode()
    assert mask_address(text, v4, v6) == mask_address(str(neighbour).encode(), v4, v6)
    assert mask_address(text, v4, v6) != text


# near misses: an address with something added, cut or changed (some are still addresses)
near_addresses = st.builds(
    lambda address, change: change(str(address)).encode("utf-8", "replace"),
    st.ip_addresses(),
    st.sampled_from((lambda t: t + " ", lambda t: " " + t, lambda t: t + "%eth0",
                     lambda t: "0" + t, lambda t: t.upper(), lambda t: t + ".", lambda t: t[:-1],
                     lambda t: t + "/24", lambda t: t.replace(".", ":"), lambda t: t + "\r",
                     lambda t: "[" + t + "]", lambda t: t.replace("1", "\u0661"))))


@given(st.one_of(st.binary(max_size=40), near_addresses).filter(lambda b: b"\0" not in b),
       st.integers(0, 128))
def test_a_value_that_is_not_an_address_is_hashed_as_it_is(value, bits):
    try:
        ipaddress.ip_address(value.decode("ascii"))
        return  # an address (the case above)
    except (UnicodeDecodeError, ValueError):
        pass
    v4, v6 = split_bits(bits)
    masked = mask_address(value, v4, v6)
    assert masked == value
