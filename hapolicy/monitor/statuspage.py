"""The status page at --metrics-listen's `GET /` and `GET /status` (routed by metrics.py).

One HTML page, made at each request from the rows the control socket's csv gives
(commands.py `rows`, shown as `status` shows them: `status_row`): per pool a table with each
service's address, state, admin state, weight, answers, failures, p50/p99 and last change, and
the pool's hedge, shadow and internal-error counters where it has them. No script, no external
asset: inline CSS, and a `<meta http-equiv="refresh">` every REFRESH_SECONDS is the refresh.
Read-only: it has no form and no link that changes anything (the control socket does).

A row's class (its colour) is HAProxy's stats page's, with the same colours: `active_up`
(green) up, `active_down` (red) down, `active_draining` (blue) drained and up, `maintain`
(brown) disabled; as HAProxy does, maintenance wins over the health, and a drained service that
is down shows as down. Every text from the configuration (pool and service names, addresses: a
unix socket's path may hold any character) is HTML-escaped. A row is at most ROW_BYTES.
"""

from __future__ import annotations

import html
import time

from hapolicy import __version__
from hapolicy.monitor.commands import STATUS_COLUMNS, rows, status_row
from hapolicy.tables.layout import DISABLED, DRAINING

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.tables.health import HealthTable

PATHS = (b"/", b"/status")
REFRESH_SECONDS = 5
SERVICE_CELLS = slice(1, 11)  # of a status row: service .. last_change
HEDGE_CELLS = slice(11, 13)  # the pool's hedged, hedge_won
SHADOW_CELLS = slice(13, 17)  # the pool's shadow_agree .. shadow_dropped
INTERNAL_CELL = 17
# the pool's cache_hits .. cache_evictions
CACHE_CELLS = slice(STATUS_COLUMNS.index("cache_hits"), STATUS_COLUMNS.index("cache_evictions") + 1)
CELL_CLASSES = ("left", "left", "ac", "ac")  # service, address, state, admin; then numbers
ROW_BYTES = 1024  # a service's row: markup, its escaped name and address, ten cells
CLASSES = {  # HAProxy's stats page's classes and colours
    "active_up": "#c0ffc0",
    "active_down": "#ff9090",
    "active_draining": "#20a0ff",
    "maintain": "#c07820",
}
LEGEND = (("active_up", "up"), ("active_down", "down"), ("active_draining", "drain"),
          ("maintain", "disabled"))
STYLE = """body { font-family: arial, helvetica, sans-serif; font-size: 12px; color: black;
 background: white; }
h1 { font-size: x-large; margin-bottom: 0.5em; }
h3 { font-size: 16px; color: #b00040; background: #e8e8d0; margin: 1em 0 0 0; }
table { border-collapse: collapse; }
th, td { font-size: 11px; border: 1px solid gray; padding: 2px 3px; white-space: nowrap; }
th { background: #20d0d0; }
td { text-align: right; }
td.left { text-align: left; }
td.ac { text-align: center; }
p.pool { margin: 0.2em 0; }
""" + "".join(f".{name} {{ background: {colour}; }}\n" for name, colour in CLASSES.items())


def row_class(state: str, admin: str) -> str:
    """The class (colour) of a service's row: see the module doc."""
    if admin == DISABLED:
        return "maintain"
    if state != "up":
        return "active_down"
    return "active_draining" if admin == DRAINING else "active_up"


def page(config: DaemonConfig, health: Mapping[str, HealthTable], now: float,
         wall: float) -> bytes:
    """The whole page (UTF-8); now is the monotonic time, wall the time of day."""
    by_pool: dict[str, list[list[str]]] = {}
    for row in rows(config, health, now, wall):
        by_pool.setdefault(row[0], []).append(status_row(row))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(wall))
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n",
        "<title>hapolicy status</title>\n<style>\n", STYLE, "</style></head><body>\n",
        f"<h1>hapolicy {escape(__version__)} status</h1>\n",
        f"<p>At {escape(stamp)}; this page refreshes every {REFRESH_SECONDS} s. Legend: ",
        ", ".join(f"<span class=\"{name}\">&nbsp;{word}&nbsp;</span>" for name, word in LEGEND),
        ".</p>\n",
    ]
    for pool in config.pools:
        if pool.name in by_pool:
            parts.append(pool_table(pool, by_pool[pool.name]))
    parts.append("</body></html>\n")
    return "".join(parts).encode()


def pool_table(pool: PoolConfig, body: list[list[str]]) -> str:
    """One pool's heading, its counters and the table of its services (rows as status's)."""
    name = escape(pool.name)
    head = "".join(f"<th>{escape(c)}</th>" for c in STATUS_COLUMNS[SERVICE_CELLS])
    lines = [f"<h3 id=\"pool-{name}\">pool {name}</h3>\n"]
    counters = pool_counters(pool, body[0]) if body else ""
    if counters:
        lines.append(f"<p class=\"pool\">{counters}</p>\n")
    lines.append(f"<table data-pool=\"{name}\">\n<tr>{head}</tr>\n")
    for row in body:
        cells = row[SERVICE_CELLS]
        tds = "".join(f"<td class=\"{k}\">{escape(c)}</td>" if k else f"<td>{escape(c)}</td>"
                      for k, c in zip(CELL_CLASSES + ("",) * len(cells), cells))
        lines.append(f"<tr class=\"{row_class(row[3], row[4])}\">{tds}</tr>\n")
    lines.append("</table>\n")
    return "".join(lines)


def pool_counters(pool: PoolConfig, row: list[str]) -> str:
    """The pool's own counters of a status row, those it has: hedge, shadow, internal errors
    (when not 0), cache."""
    shown = []
    if pool.hedge:
        shown += list(zip(STATUS_COLUMNS[HEDGE_CELLS], row[HEDGE_CELLS]))
    if pool.shadow:
        shown += list(zip(STATUS_COLUMNS[SHADOW_CELLS], row[SHADOW_CELLS]))
    if row[INTERNAL_CELL] != "0":
        shown.append((STATUS_COLUMNS[INTERNAL_CELL], row[INTERNAL_CELL]))
    if pool.cache:
        shown += list(zip(STATUS_COLUMNS[CACHE_CELLS], row[CACHE_CELLS]))
    return ", ".join(f"{escape(k)} {escape(v)}" for k, v in shown)


def escape(text: str) -> str:
    """Text for HTML content and double- or single-quoted attributes."""
    return html.escape(text, quote=True)
