"""Properties of the protocol's parsers (hapolicy/base/protocol.py) on arbitrary bytes (Hypothesis).

The request framer: nothing it is fed raises; its buffer stays within MAX_REQUEST_BYTES after
every read; the requests it frames do not depend on how the bytes were cut into reads; what it
frames is what it was given (CRLF line ends made LF), nothing lost or invented but for the
requests it refuses as too large; `whole` frames a read exactly as `feed` does. The attribute
readers agree with each other. The answer reader: `answer_complete`'s fast path agrees with the
general search, an answer once complete stays the same answer whatever follows, and
`answer_action` finds the first `action=` line. The profile (tests/conftest.py) sets the
number of examples.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from testkit.fuzzing import (
    answer_streams,
    big_requests,
    filled_request,
    names,
    request_streams,
    requests,
    split,
)

from hapolicy.base.protocol import (
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    NOT_ATTRIBUTES,
    Request,
    RequestFramer,
    _request_end,
    answer_action,
    answer_complete,
    parse_attributes,
)

TOO_LARGE = f"request larger than {MAX_REQUEST_BYTES} bytes"
REFUSALS = {"", TOO_LARGE, f"more than {MAX_ATTRIBUTES} attributes",
            f"a line longer than {MAX_LINE_BYTES} bytes", NOT_ATTRIBUTES}


def frame_at_once(data: bytes) -> tuple[list[Request], RequestFramer]:
    framer = RequestFramer()
    return framer.feed(data), framer


def summary(requests: list[Request]) -> list[tuple[bytes, str]]:
    return [(r.raw, r.error) for r in requests]


@given(st.data())
def test_framing_does_not_depend_on_the_reads_and_the_buffer_stays_bounded(data):
    stream = data.draw(request_streams(), label="stream")
    reads = data.draw(split(stream), label="reads")
    framer = RequestFramer()
    framed: list[Request] = []
    for chunk in reads:
        framed += framer.feed(chunk)
        assert len(framer.buffer) <= MAX_REQUEST_BYTES
        assert len(framer.tail) <= 2
    framed += framer.feed(b"")
    at_once, whole_framer = frame_at_once(stream)
    assert summary(framed) == summary(at_once)
    assert bytes(framer.buffer) == bytes(whole_framer.buffer)
    assert bool(framer.skipping) == bool(whole_framer.skipping)
    for request in framed:
        assert request.error in REFUSALS
        if request.error == TOO_LARGE:
            assert request.raw == b""
        else:
            assert request.raw == b"\n" or request.raw.endswith(b"\n\n")
            assert len(request.raw) <= MAX_REQUEST_BYTES


@given(request_streams())
def test_what_is_framed_is_what_was_sent_but_for_crlf(stream):
    framed, framer = frame_at_once(stream)
    if framer.skipping or any(r.error == TOO_LARGE for r in framed):
        return  # a request too large is dropped: its bytes are not kept
    consumed = len(stream) - len(framer.buffer)
    assert b"".join(r.raw for r in framed) == stream[:consumed].replace(b"\r\n", b"\n")
    assert bytes(framer.buffer) == stream[consumed:]
    assert not framer.complete  # what is left is not a whole request


@given(st.one_of(requests(), big_requests, request_streams(), st.binary(max_size=64)))
# at the request limit: whole() took requests one and two bytes over it, which feed() refuses
@example(filled_request(MAX_REQUEST_BYTES))
@example(filled_request(MAX_REQUEST_BYTES + 1))
@example(filled_request(MAX_REQUEST_BYTES + 2))
def test_whole_frames_a_read_as_feed_does(read):
    request = RequestFramer().whole(read)
    if request is None:
        return
    framed, framer = frame_at_once(read)
    assert summary([request]) == summary(framed)
    assert not framer.buffer and not framer.skipping


@given(request_streams(big=False), st.lists(names, min_size=1, max_size=4))
def test_the_attribute_readers_agree(stream, wanted):
    for request in frame_at_once(stream)[0]:
        if request.error:
            continue
        attrs = parse_attributes(request.raw)
        assert request.attrs == attrs
        lines = request.raw.split(b"\n")
        if given_once(request.raw, b"instance"):
            assert request.instance() == request.attr_bytes(b"instance")
        for name in wanted:
            value = request.attr_bytes(name)
            assert b"\n" not in value and not value.endswith(b"\r")
            given_in = [line for line in lines if line.startswith(name + b"=")]
            if not given_in:
                assert value == b""
            elif len(given_in) == 1:  # given twice: attr_bytes takes the first, attrs the last
                # attr_bytes strips every CR at the line's end, parse_attributes the CR of a
                # CRLF only (framed requests have LF line ends: a CR left is the value's)
                text = attrs[name.decode("utf-8", "replace")]
                assert value.decode("utf-8", "replace") == text.rstrip("\r")


def given_once(raw: bytes, name: bytes) -> bool:
    """At most one line of raw starts with `name=`: given twice (never by Postfix), instance()
    takes the first that is not the first line, attr_bytes the first, attrs the last."""
    return sum(line.startswith(name + b"=") for line in raw.split(b"\n")) <= 1


@given(st.binary(max_size=200), names)
def test_attributes_of_any_bytes_never_raise(raw, name):
    request = Request(raw)
    assert isinstance(request.attrs, dict)
    if given_once(raw, b"instance"):
        assert request.instance() == request.attr_bytes(b"instance")
    assert isinstance(request.attr_bytes(name), bytes)


@given(answer_streams())
def test_answer_complete_agrees_with_the_general_search_and_is_stable(data):
    end = answer_complete(data)
    assert end == _request_end(data, 0)
    assert end == -1 or 1 <= end <= len(data)
    for cut in range(len(data) + 1) if len(data) <= 300 else (1, 2, 3, len(data) // 2):
        before = answer_complete(data[:cut])
        assert before == -1 or before == end  # complete once: the same answer, whatever follows


def first_action(answer: bytes) -> bytes:
    """The model: the first line that starts with `action=`, CRs at its end stripped; b'' if
    there is none or its action is empty."""
    for line in answer.split(b"\n"):
        if line.startswith(b"action="):
            line = line.rstrip(b"\r")
            return line if len(line) > 7 else b""
    return b""


@given(answer_streams())
def test_answer_action_is_the_first_action_line(data):
    end = answer_complete(data)
    if end < 0:
        return
    answer = data[:end]
    action = answer_action(answer)
    assert action == first_action(answer)
    assert action == b"" or (action.startswith(b"action=") and len(action) > 7
                             and b"\n" not in action and not action.endswith(b"\r"))
