"""Hypothesis strategies for the property tests (tests/unit/*/test_fuzz_*.py): what a client or a
service may send, valid or not.

* :func:`request_streams` -- a client's bytes: requests (LF or CRLF), garbage, NULs, empty
  lines, lines and requests at and over the protocol's limits.
* :func:`answer_streams` -- a service's bytes: answers, odd or broken ones, over the limit.
* :func:`split` -- the same bytes cut into reads at drawn places.

Big items (a line of 8 KiB, a request of 64 KiB) are made by repeating a byte to a drawn size
near a limit, not drawn byte by byte: an example stays cheap to make and to shrink.
"""

from __future__ import annotations

from hypothesis import strategies as st

from hapolicy.base.protocol import (
    MAX_ANSWER_BYTES,
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    SHORT_REQUEST_BYTES,
)

NAMES = (b"request", b"protocol_state", b"client_address", b"client_name", b"sender",
         b"recipient", b"instance", b"policy_context", b"helo_name", b"size")
VALUES = (b"smtpd_access_policy", b"RCPT", b"192.0.2.1", b"192.0.2.77", b"198.51.100.9",
          b"2001:db8::1", b"2001:db8::ff:1", b"::ffff:192.0.2.1", b"unknown", b"",
          b"a@example.org", b"123.ABC", b"1.2.3", b"1.2.3.4.5", b"0.0.0.0", b"::")
ACTIONS = (b"DUNNO", b"dunno", b"OK", b"REJECT", b"REJECT go away", b"DEFER_IF_PERMIT try later",
           b"450 4.7.1 greylisted", b"554 no", b"PREPEND X-Test: yes", b"", b" ", b"\t",
           b"WARN x=y")


def _no_newline(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size).map(lambda b: b.replace(b"\n", b""))


names = st.one_of(st.sampled_from(NAMES), _no_newline(12).map(lambda b: b.replace(b"=", b"")))
values = st.one_of(st.sampled_from(VALUES), _no_newline(24),
                   st.sampled_from(VALUES).map(lambda v: v + b"\0"),
                   st.sampled_from(VALUES).map(lambda v: v + b"\r"))
attribute_lines = st.builds(lambda n, v: n + b"=" + v, names, values)
# a line with no `=` (how one is answered is changing: no property here depends on it)
odd_lines = _no_newline(30)
line_ends = st.sampled_from((b"\n", b"\n", b"\n", b"\r\n", b"\r\r\n"))


@st.composite
def requests(draw) -> bytes:
    """One request, ended by its empty line; mostly `name=value` lines."""
    lines = draw(st.lists(st.one_of(attribute_lines, attribute_lines, odd_lines), max_size=8))
    end = draw(line_ends)
    return b"".join(line + draw(line_ends) for line in lines) + end


def filled_request(size: int, line: int = 4000) -> bytes:
    """A request of exactly `size` bytes (at least 8), `a=xxx` lines of at most `line` bytes
    each and its empty line: over the request limit without being over the line limit."""
    body = size - 1
    out = []
    while body > 0:
        take = min(line + 1, body)
        if body - take in (1, 2, 3):  # no line of less than 4 bytes (`a=x` + LF) at the end
            take -= 4
        out.append(b"a=" + b"x" * (take - 3) + b"\n")
        body -= take
    return b"".join(out) + b"\n"


near_request_limit = st.sampled_from((SHORT_REQUEST_BYTES, SHORT_REQUEST_BYTES + 1,
                                      MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES,
                                      MAX_REQUEST_BYTES + 1, MAX_REQUEST_BYTES + 2,
                                      MAX_REQUEST_BYTES + 3, 2 * MAX_REQUEST_BYTES + 5))
near_line_limit = st.sampled_from((MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1,
                                   MAX_LINE_BYTES + 2, 3 * MAX_LINE_BYTES))
near_attribute_limit = st.sampled_from((MAX_ATTRIBUTES, MAX_ATTRIBUTES + 1, MAX_ATTRIBUTES + 2))
big_requests = st.one_of(
    near_request_limit.map(filled_request),
    # one long line (its LF counted in the line's length, as check_limits counts it)
    near_line_limit.map(lambda n: b"a=" + b"y" * (n - 3) + b"\n\n"),
    near_attribute_limit.map(lambda n: b"a=1\n" * n + b"\n"),
    # a long run without any line end, then one (a request too large, skipped to its end)
    near_request_limit.map(lambda n: b"z" * n),
)
garbage = st.one_of(st.binary(max_size=40), st.sampled_from((b"\0", b"\r", b"\n", b"\r\n",
                                                             b"\n\r\n", b"=", b"\n\n\n")))


# runs of one request about the client's queue bound (32), e.g. from a client that pipelines
runs = st.builds(lambda request, times: request * times, requests(),
                 st.sampled_from((2, 31, 32, 33, 100)))


def request_streams(big: bool = True) -> st.SearchStrategy[bytes]:
    """What a client may send on one connection: requests, garbage and big items, mixed."""
    items = [requests(), requests(), garbage, runs] + ([big_requests] if big else [])
    return st.lists(st.one_of(*items), max_size=10).map(b"".join)


@st.composite
def split(draw, data: bytes, max_pieces: int = 12) -> list[bytes]:
    """data cut into reads at drawn places (some empty reads are harmless: not sent)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_pieces - 1)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


answer_lines = st.one_of(
    st.sampled_from(ACTIONS).map(lambda a: b"action=" + a),
    st.builds(lambda n, v: n + b"=" + v, names, values),
    _no_newline(20),
)


@st.composite
def answers(draw) -> bytes:
    """One answer (or what a broken service sends as one), ended by its empty line."""
    lines = draw(st.lists(answer_lines, max_size=4))
    end = draw(line_ends)
    return b"".join(line + draw(line_ends) for line in lines) + end


near_answer_limit = st.sampled_from((MAX_ANSWER_BYTES - 2, MAX_ANSWER_BYTES - 1, MAX_ANSWER_BYTES,
                                     MAX_ANSWER_BYTES + 1, MAX_ANSWER_BYTES + 2))
big_answers = st.one_of(
    near_answer_limit.map(lambda n: b"action=DUNNO " + b"x" * (n - 15) + b"\n\n"),
    near_answer_limit.map(lambda n: b"action=OK\n" + b"x" * (n - 12) + b"\n\n"),
    near_answer_limit.map(lambda n: b"w" * n),
)


def answer_streams(big: bool = True) -> st.SearchStrategy[bytes]:
    """What a service may send for one request: an answer, more, less, garbage."""
    items = [answers(), answers(), garbage] + ([big_answers] if big else [])
    return st.lists(st.one_of(*items), max_size=4).map(b"".join)
