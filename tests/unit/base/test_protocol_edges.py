"""The protocol's edges (fast, in-process): empty requests before others, CRLF and LF
requests mixed in one read, the limits exactly at their values, skipping an oversized
request without swallowing the next ones, attribute values and answers kept byte for byte.
"""

from __future__ import annotations

from hapolicy.base.protocol import (
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    SHORT_REQUEST_BYTES,
    Request,
    RequestFramer,
    answer_action,
    format_action,
    parse_attributes,
)


def frame(*chunks: bytes, limit: int = 1 << 30) -> list[Request]:
    framer = RequestFramer()
    out: list[Request] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk, limit))
        while batch := framer.feed(b"", limit):
            out.extend(batch)
    return out


def raws(requests: list[Request]) -> list[bytes]:
    return [r.raw for r in requests]


def test_an_empty_request_before_another_in_one_read():
    assert raws(frame(b"\nx=1\n\n")) == [b"\n", b"x=1\n\n"]
    assert raws(frame(b"\r\nx=1\n\n")) == [b"\n", b"x=1\n\n"]
    assert raws(frame(b"\r\n\r\n\n")) == [b"\n", b"\n", b"\n"]


def test_crlf_and_lf_requests_mixed_in_one_read():
    assert raws(frame(b"a=1\r\n\r\nb=2\r\n\r\nc=3\n\n")) == [b"a=1\n\n", b"b=2\n\n", b"c=3\n\n"]
    assert raws(frame(b"a=1\n\nb=2\r\n\r\n")) == [b"a=1\n\n", b"b=2\n\n"]
    assert raws(frame(b"a=1\r\n\r\nb=2\n\nc=3\r\n\r\n")) == [b"a=1\n\n", b"b=2\n\n", b"c=3\n\n"]


def request_of(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines) + b"\n"


def test_a_typical_request_is_not_refused():
    raw = request_of([b"request=smtpd_access_policy"] + [b"attr%d=%s" % (n, b"v" * 20)
                                                          for n in range(30)])
    assert len(raw) > 512
    assert [r.error for r in frame(raw)] == [""]
    assert Request(raw).error == ""


def test_a_request_too_short_to_be_counted_cannot_be_over_the_attribute_limit():
    # the densest request over the limit: lines of a `=` alone; it is longer than what is
    # not counted
    densest = b"=\n" * (MAX_ATTRIBUTES + 1) + b"\n"
    assert len(densest) > SHORT_REQUEST_BYTES
    why = f"more than {MAX_ATTRIBUTES} attributes"
    assert [r.error for r in frame(densest)] == [why]
    assert RequestFramer().whole(densest).error == why  # type: ignore[union-attr]
    at_limit = b"=\n" * MAX_ATTRIBUTES + b"\n"
    assert [r.error for r in frame(at_limit)] == [""]
    assert RequestFramer().whole(at_limit).error == ""  # type: ignore[union-attr]


def test_the_attribute_limit_is_exact():
    at_limit = request_of([b"a%d=1" % n for n in range(MAX_ATTRIBUTES)])
    over = request_of([b"a%d=1" % n for n in range(MAX_ATTRIBUTES + 1)])
    assert [r.error for r in frame(at_limit)] == [""]
    assert [r.error for r in frame(over)] == [f"more than {MAX_ATTRIBUTES} attributes"]


def test_the_line_limit_is_exact_and_counts_a_line_not_the_request():
    at_limit = request_of([b"a=" + b"b" * (MAX_LINE_BYTES - 2)])
    over = request_of([b"a=" + b"b" * (MAX_LINE_BYTES - 1)])
    spaced = request_of([b"a=" + b"b " * (MAX_LINE_BYTES // 2)])
    many_short = request_of([b"a%d=%s" % (n, b"v" * 100) for n in range(200)])
    assert len(many_short) > 2 * MAX_LINE_BYTES
    assert [r.error for r in frame(at_limit, many_short)] == ["", ""]
    refused = f"a line longer than {MAX_LINE_BYTES} bytes"
    assert [r.error for r in frame(over, spaced)] == [refused, refused]


def test_a_request_of_exactly_the_size_limit_is_taken():
    lines = [b"a%d=%s" % (n, b"v" * 1000) for n in range(64)]
    raw = request_of(lines)
    raw = request_of(lines[:-1] + [lines[-1] + b"v" * (MAX_REQUEST_BYTES - len(raw))])
    assert len(raw) == MAX_REQUEST_BYTES
    assert [r.error for r in frame(raw[:40000], raw[40000:])] == [""]


def test_lazy_framing_of_a_big_pipelined_read_loses_no_request():
    many = b"a=1\n\n" * 30000  # 150 KB of small requests in one read, taken 32 at a time
    assert len(frame(many, limit=32)) == 30000


def oversized(end: bytes) -> bytes:
    return b"x=" + b"y" * (MAX_REQUEST_BYTES + 10000) + end  # longer than the first read


def test_skipping_an_oversized_request_keeps_the_requests_after_it():
    for end in (b"\n\n", b"\r\n\r\n"):
        big = oversized(end)
        out = frame(big[:70000], big[70000:] + b"a=1\n\nb=2\r\n\r\nc=3\n\n")
        assert [r.error != "" for r in out] == [True, False, False, False], end
        assert raws(out[1:]) == [b"a=1\n\n", b"b=2\n\n", b"c=3\n\n"], end


def test_skipping_finds_an_end_split_at_any_byte_and_keeps_little():
    for end in (b"\n\n", b"\r\n\r\n"):
        big = oversized(end)
        for cut in range(len(big) - len(end) - 1, len(big)):
            framer = RequestFramer()
            out = framer.feed(big[:70000]) + framer.feed(big[70000:cut])
            assert len(framer.tail) <= 2 and not framer.buffer  # memory stays bounded
            out += framer.feed(big[cut:] + b"ok=1\n\n")
            assert [r.error != "" for r in out] == [True, False], (end, cut)
            assert out[1].raw == b"ok=1\n\n", (end, cut)


def test_skipping_memory_stays_bounded_over_many_reads():
    framer = RequestFramer()
    framer.feed(b"x=" + b"y" * (MAX_REQUEST_BYTES + 10))
    for _ in range(50):
        assert framer.feed(b"y" * 10000) == []
        assert len(framer.tail) <= 2 and not framer.buffer


def test_attribute_values_are_kept_as_sent():
    raw = b"sender=a b \nccert_subject=CN=Foo Bar\nrecipient=userX\nbad=\xff\xfe\n\n"
    request = frame(raw)[0]
    assert request.attr_bytes(b"sender") == b"a b "
    assert request.attr_bytes(b"recipient") == b"userX"
    assert request.attrs == {"sender": "a b ", "ccert_subject": "CN=Foo Bar",
                             "recipient": "userX", "bad": "\ufffd\ufffd"}
    assert parse_attributes(b"a=1\r\nb=2\r\n") == {"a": "1", "b": "2"}


def test_an_action_is_relayed_byte_for_byte():
    assert answer_action(b"action=X\n\n") == b"action=X"
    assert answer_action(b"action=REJECT no X\n\n") == b"action=REJECT no X"
    assert answer_action(b"action=OK \n\n") == b"action=OK "
    assert answer_action(b"action=OK\r\n\r\n") == b"action=OK"


def test_a_default_action_that_is_not_utf8_is_still_an_answer():
    # a non-UTF-8 command line reaches Python as surrogate escapes
    assert format_action("DEFER caf\udce9") == b"action=DEFER caf?\n\n"
    assert format_action("dunno") == b"action=dunno\n\n"
