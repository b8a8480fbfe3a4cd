"""Statistics and their text: percentiles, summaries, durations, shares, tables.

Contract: pure functions. percentile() interpolates between closest ranks, nearest_rank()
takes the value at rank floor(n*q/100) (figure 8's p99.9); both give None for no values.
summary() is the JSON of a list of durations (n, p50, p99, max, min). fmt_s() writes seconds
as "1.234 s", "512 ms", "51.3 ms" or "0.59 ms" ("-" for None); fmt_pct() a share in percent
("-" of nothing); table() left-aligned columns, two spaces apart, trailing blanks cut.
"""

from __future__ import annotations

import math
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def nearest_rank(values: list[float], q: float) -> float | None:
    """The value at rank floor(n * q / 100) of the sorted values (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100.0))]


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p99, max and min of durations (None for each but n when there are none)."""
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None, "min": min(values) if values else None}


def fmt_s(value: float | None) -> str:
    """Seconds as text, with three significant digits below 100 ms."""
    if value is None:
        return "-"
    if value >= 1.0:
        return f"{value:.3f} s"
    ms = value * 1000.0
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_pct(part: int, whole: int) -> str:
    """part of whole in percent, one decimal."""
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """The lines of a table: each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return lines
