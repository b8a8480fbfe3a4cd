"""The Monitoring Plugins' threshold ranges (ranges.py): the guidelines' examples, what alerts for
any range and value (Hypothesis), and a one-line RangeError for anything else."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapolicy.base.ranges import Range, RangeError, parse_range

# the guidelines' table: the range, then values that alert and values that do not
EXAMPLES = (
    ("10", (-0.5, 10.5, 11, 1e9), (0, 5, 10)),
    ("10:", (-1, 0, 9.99), (10, 11, 1e9)),
    ("~:10", (10.01, 11, 1e9), (-1e9, -1, 0, 10)),
    ("10:20", (-1, 9.99, 20.01), (10, 15, 20)),
    ("@10:20", (10, 15, 20), (9.99, 20.01, -1)),
    ("@10", (0, 10), (-0.1, 10.1)),
    ("-5:-1", (-6, 0), (-5, -3, -1)),
    ("@~:0", (-1e9, 0), (0.01,)),
    ("0.5:1.5", (0.49, 1.51), (0.5, 1, 1.5)),
    (":5", (-1, 6), (0, 5)),  # an empty start is 0, as the C library reads it
)


@pytest.mark.parametrize(("text", "alert", "quiet"), EXAMPLES)
def test_the_guidelines_examples(text, alert, quiet):
    limit = parse_range(text)
    assert limit.text == text
    assert [v for v in alert if not limit.alerts(v)] == []
    assert [v for v in quiet if limit.alerts(v)] == []


def test_the_bounds_each_example_reads():
    assert parse_range("10") == Range(0.0, 10.0, False, "10")
    assert parse_range("10:") == Range(10.0, math.inf, False, "10:")
    assert parse_range("~:10") == Range(-math.inf, 10.0, False, "~:10")
    assert parse_range("@10:20") == Range(10.0, 20.0, True, "@10:20")


@pytest.mark.parametrize("text", ["", "@", "~", ":~", "10:~", "10:5", "@3:2", "x", "1e3", "inf",
                                  "nan", "-inf:0", "1:2:3", "~10", "10 ", " 10", "1_0", "0x10",
                                  "10:20x", "1.2.3", "--1", "\n5", "9" * 65, "@@1"])
def test_anything_else_is_a_one_line_error(text):
    with pytest.raises(RangeError) as caught:
        parse_range(text)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("range ")


numbers = st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False,
                      allow_infinity=False)


@given(start=st.one_of(st.none(), numbers), end=st.one_of(st.none(), numbers),
       inside=st.booleans(), value=numbers)
def test_a_range_alerts_outside_its_bounds_or_inside_with_at(start, end, inside, value):
    """Written out from its bounds (None: `~` for the start, empty for the end), any range
    alerts exactly when the guidelines say."""
    low = -math.inf if start is None else float(start)
    high = math.inf if end is None else float(end)
    text = ("@" if inside else "") + ("~" if start is None else str(start)) + ":" + \
        ("" if end is None else str(end))
    if low > high:
        with pytest.raises(RangeError):
            parse_range(text)
        return
    within = low <= float(value) <= high
    assert parse_range(text).alerts(float(value)) == (within if inside else not within)


@given(end=numbers.filter(lambda n: n >= 0), value=numbers)
def test_a_lone_number_is_zero_to_it(end, value):
    assert parse_range(str(end)).alerts(float(value)) == (not 0 <= float(value) <= float(end))


@given(st.text(max_size=30))
def test_any_text_is_a_range_or_a_range_error(text):
    try:
        limit = parse_range(text)
    except RangeError as exc:
        assert "\n" not in str(exc)
    else:
        assert limit.start <= limit.end and limit.text == text
