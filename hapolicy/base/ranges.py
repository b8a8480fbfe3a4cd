"""The threshold ranges of the Monitoring Plugins development guidelines (`-w`/`-c` of a check).

    [@]START:END    START and END are numbers; START `~` is minus infinity; an empty END
                    is plus infinity; START:  may be left out (`10` is `0:10`)

A range alerts when the value is outside START..END, ends included, or with `@` inside it:

    10       alert below 0 or above 10
    10:      alert below 10
    ~:10     alert above 10
    10:20    alert below 10 or above 20
    @10:20   alert from 10 to 20, both included

START must not be above END. As the plugins' C library (utils_base.c), an empty START before
the colon is 0; unlike it, a number is a decimal number and nothing else (`1e3`, `inf`, `nan`
and trailing junk are refused, one line each).
"""

from __future__ import annotations

import math

from hapolicy.base import frozen

MAX_TEXT = 64
_NUMBER = frozenset("0123456789.+-")


class RangeError(ValueError):
    pass


@frozen.frozen
class Range:
    start: float
    end: float
    inside: bool  # `@`: alert inside START..END
    text: str  # as given, for the perfdata's warn and crit fields

    def alerts(self, value: float) -> bool:
        """Whether value raises this range's alert."""
        within = self.start <= value <= self.end
        return within if self.inside else not within


def number(text: str, what: str) -> float:
    if not text or not set(text) <= _NUMBER:
        raise RangeError(f"{what} {text!r} is not a number")
    try:
        value = float(text)
    except ValueError:
        raise RangeError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RangeError(f"{what} {text!r} is not a number")
    return value


def parse_range(text: str) -> Range:
    """A Range from its text; RangeError (one line) when it is not one."""
    if not text or len(text) > MAX_TEXT or not text.isprintable():
        raise RangeError(f"range {text[:MAX_TEXT]!r}: expected [@]START:END, e.g. 10, 10:, ~:10 "
                         "or @10:20")
    body = text[1:] if text.startswith("@") else text
    start_text, colon, end_text = body.rpartition(":")
    try:
        if not colon:
            start = 0.0
        elif start_text == "~":
            start = -math.inf
        else:
            start = number(start_text, "start") if start_text else 0.0
        end = number(end_text, "end") if end_text or not colon else math.inf
    except RangeError as exc:
        raise RangeError(f"range {text!r}: {exc}") from None
    if start > end:
        raise RangeError(f"range {text!r}: its start is above its end")
    return Range(start, end, text.startswith("@"), text)
