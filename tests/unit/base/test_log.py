"""Log lines (hapolicy/base/log.py): one printable line whatever a client or a service sent."""

from __future__ import annotations

from hapolicy.base.log import clean


def test_a_line_cannot_be_split_or_forged_by_what_it_quotes():
    forged = "sender=<a\nhapolicy[1]: forged\r\x00\x7f\x85b\u2028c\u2029d>"
    line = clean(forged)
    assert line.splitlines() == [line]
    assert line == "sender=<a?hapolicy[1]: forged????b?c?d>"
