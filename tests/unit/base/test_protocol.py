"""Framing, attribute parsing and answer parsing."""

from hapolicy.base.protocol import (
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    RequestFramer,
    _request_end,
    answer_action,
    answer_complete,
    parse_attributes,
)


def frame(*chunks: bytes):
    framer = RequestFramer()
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out, framer


def test_two_requests_in_one_read():
    reqs, framer = frame(b"a=1\nb=2\n\nc=3\n\n")
    assert [r.raw for r in reqs] == [b"a=1\nb=2\n\n", b"c=3\n\n"]
    assert not framer.pending


def test_request_split_across_reads_at_every_byte():
    data = b"request=smtpd_access_policy\nsender=a@b\n\nx=1\n\n"
    for cut in range(1, len(data)):
        reqs, _ = frame(data[:cut], data[cut:])
        assert [r.raw for r in reqs] == [b"request=smtpd_access_policy\nsender=a@b\n\n", b"x=1\n\n"]


def test_crlf_is_tolerated_and_normalised():
    reqs, _ = frame(b"a=1\r\nb=x=y\r\n\r\n")
    assert reqs[0].raw == b"a=1\nb=x=y\n\n"
    assert reqs[0].attrs == {"a": "1", "b": "x=y"}


def test_values_keep_every_equals_sign():
    assert parse_attributes(b"sender=a=b==c\n\n") == {"sender": "a=b==c"}


def test_attr_bytes_finds_first_and_later_attributes():
    req = frame(b"instance=12.34\nsender=s@x\nclient_address=192.0.2.1\n\n")[0][0]
    assert req.attr_bytes(b"instance") == b"12.34"
    assert req.attr_bytes(b"client_address") == b"192.0.2.1"
    assert req.attr_bytes(b"recipient") == b""
    assert req.attr_bytes(b"nstance") == b""


def test_empty_line_alone_is_an_empty_request():
    reqs, _ = frame(b"\n")
    assert reqs[0].raw == b"\n" and not reqs[0].error


def test_partial_request_is_pending():
    reqs, framer = frame(b"a=1\nb=")
    assert reqs == [] and framer.pending


def test_oversized_request_is_skipped_to_its_end_with_bounded_memory():
    framer = RequestFramer()
    out = []
    line = b"x=" + b"y" * 1000 + b"\n"
    for _ in range(2 * MAX_REQUEST_BYTES // len(line)):
        out.extend(framer.feed(line))
        assert len(framer.buffer) <= MAX_REQUEST_BYTES + len(line)
    out.extend(framer.feed(b"\n" + b"after=1\n"))
    out.extend(framer.feed(b"\n"))
    assert len(out) == 2
    assert "larger than" in out[0].error
    assert out[1].raw == b"after=1\n\n" and not out[1].error


def test_oversized_end_split_between_reads():
    framer = RequestFramer()
    out = framer.feed(b"x=" + b"y" * (MAX_REQUEST_BYTES + 10) + b"\n")
    out += framer.feed(b"\n")
    out += framer.feed(b"ok=1\n\n")
    assert [bool(r.error) for r in out] == [True, False]


def test_oversized_then_normal_request_in_any_cut_of_reads():
    # test_spawn's 200 KB case, cut where skipping starts and around the oversized request's end
    big = b"".join(b"x%d=%s\n" % (i, b"y" * 2000) for i in range(100)) + b"\n"
    after = b"sender=after@example.org\n\n"
    data = big + after
    for first in range(MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES + 3):
        for second in range(len(big) - 3, len(big) + 3):
            framer = RequestFramer()
            reqs = []
            for chunk in (data[:first], data[first:second], data[second:]):
                reqs += framer.feed(chunk, 1)
                while batch := framer.feed(b"", 1):  # lazily, as the client connection frames
                    reqs += batch
            assert [bool(r.error) for r in reqs] == [True, False], (first, second)
            assert reqs[1].raw == after and not framer.pending


def test_long_line_and_too_many_attributes_are_refused():
    long_line = b"a=" + b"b" * (MAX_LINE_BYTES + 1) + b"\n\n"
    many = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES + 1)) + b"\n"
    reqs, _ = frame(long_line + many + b"fine=1\n\n")
    assert "line longer" in reqs[0].error
    assert "attributes" in reqs[1].error
    assert not reqs[2].error


def test_answer_parsing():
    assert answer_complete(b"action=DUNNO\n") == -1
    assert answer_complete(b"action=DUNNO\n\nmore") == 14
    assert answer_complete(b"action=DUNNO\r\n\r\n") == 16
    assert answer_action(b"foo=1\naction=REJECT no\naction=OK\n\n") == b"action=REJECT no"
    assert answer_action(b"action=\n\n") == b""
    assert answer_action(b"garbage\n\n") == b""
    assert answer_action(b"action=OK\r\n\r\n") == b"action=OK"


def test_complete_request_over_the_size_limit_in_two_reads_is_refused():
    big = b"x=" + b"y" * 40000 + b"\n" + b"z=" + b"y" * 40000 + b"\n\n"
    reqs, _ = frame(big[:60000], big[60000:] + b"ok=1\n\n")
    assert "larger than" in reqs[0].error
    assert reqs[1].raw == b"ok=1\n\n"


def test_framing_is_lazy_with_a_limit():
    framer = RequestFramer()
    first = framer.feed(b"a=1\n\n" * 100, 32)
    assert len(first) == 32 and framer.complete
    rest = []
    while batch := framer.feed(b"", 32):
        rest += batch
    assert len(rest) == 68 and not framer.complete and not framer.pending


WHOLE_CASES = [
    b"a=1\nb=2\n\n",
    b"request=smtpd_access_policy\n" + b"x=" + b"y" * 600 + b"\n\n",
    b"\n",  # an empty request
    b"\n\n",  # two of them
    b"\na=1\n\n",  # an empty request, then one
    b"a=1\n\nb=2\n\n",  # two requests
    b"a=1\n\n\n",  # a request, then an empty one: ends in two LFs, one request before them
    b"a=1\nb=2\n",  # not complete
    b"a",  # one byte: no empty line (find's -1 is its size - 2)
    b"a=1\r\nb=2\r\n\r\n",  # CRLF: made LF by feed
    b"a=1\n\r\n",
    b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES + 5)) + b"\n",  # too many attributes
    b"a=" + b"x" * (MAX_LINE_BYTES + 1) + b"\n\n",  # a line too long
]


def test_the_whole_request_shortcut_frames_as_feed_does():
    """The client's shortcut for a read that is exactly one request: the same Request as
    feed() gives, or None where feed would give anything else."""
    for data in WHOLE_CASES:
        fed = RequestFramer().feed(data)
        whole = RequestFramer().whole(data)
        one = len(fed) == 1 and fed[0].raw == data
        if whole is None:
            assert not (one and data[:1] != b"\n" and b"\r" not in data), data[:40]
        else:
            assert one, data[:40]
            assert (whole.raw, whole.error) == (fed[0].raw, fed[0].error), data[:40]


def test_the_whole_answer_shortcut_ends_answers_as_the_framing_does():
    cases = [b"action=OK\n\n", b"action=OK\n", b"x", b"\n", b"\n\n", b"\naction=OK\n\n",
             b"action=OK\r\n\r\n", b"action=OK\n\r\n", b"action=OK\n\nmore", b"a\n\n",
             b"action=OK\nfoo=bar\n\n", b"action=OK\r\nx\n\n", b""]
    for answer in cases:
        assert answer_complete(answer) == _request_end(answer, 0), answer


def test_the_instance_shortcut_reads_what_attr_bytes_reads():
    from hapolicy.base.protocol import Request
    for raw in [b"instance=a\nb=1\n\n", b"x=1\ninstance=abc\n\n", b"x=1\n\n",
                b"x=1\ninstance=\n\n", b"x=1\ninstance=ab\r\r\n\r\n", b"x=1\ninstance=a\rb\n\n",
                b"x=1\ninstance=last"]:
        request = Request(raw)
        assert request.instance() == request.attr_bytes(b"instance"), raw
