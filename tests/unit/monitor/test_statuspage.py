"""The status page (monitor/statuspage.py) made in process from tables: what the configuration
names is escaped, each state has HAProxy's class and colour, the cells are status's, the page
stays plain (no script, no external asset, a refresh) and its size grows by at most ROW_BYTES a
service.
"""

from __future__ import annotations

import html
import re

from testkit.browser import tables

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig, Service
from hapolicy.config.values import MAX_SERVICES, MAX_UNIX_PATH
from hapolicy.monitor import statuspage
from hapolicy.monitor.commands import STATUS_COLUMNS, rows, status_row
from hapolicy.tables.health import HealthTable

NOW, WALL = 1000.0, 1_700_000_000.0
ODD = ("<script>alert(1)</script>", "\"quoted\" & 'single'", "</td></tr></table><b>x")


def make(*pools: PoolConfig) -> tuple[DaemonConfig, dict[str, HealthTable]]:
    return DaemonConfig(pools=pools), {p.name: HealthTable(len(p.services), shared=False)
                                       for p in pools}


def service(name: str, address: str = "127.0.0.1:1") -> Service:
    """A service named as no config file may (the names are checked; a unix path is not)."""
    parsed = parse_service(f"X={address}")
    return Service(name, parsed.host, parsed.port, path=parsed.path)


def test_names_and_addresses_from_the_configuration_are_escaped():
    path = "unix:/run/<script>alert('x')</script>\"&amp;.sock"
    name = "<script>x</script>\" onmouseover=\"alert(1)"  # the pool's: in attributes too
    pool = PoolConfig(name=name, services=(service(ODD[0], path), service(ODD[1]),
                                           service(ODD[2])))
    config, health = make(pool)
    page = statuspage.page(config, health, NOW, WALL).decode()
    assert "<script" not in page and "<b>" not in page and "</td></tr></table><" not in page
    assert "\" onmouseover" not in page
    found, tags = tables(page)
    assert "script" not in tags and "b" not in tags
    assert list(found) == [name]  # the table's data-pool attribute, unescaped
    body = found[name][1:]
    assert [cells[0] for _, cells in body] == list(ODD)
    assert body[0][1][1] == path
    assert f"pool {name}" in html.unescape(re.sub("<[^>]*>", "", page))


def test_each_state_has_haproxy_s_class_and_colour():
    names = ("up", "down", "drain", "disabled", "drain_down", "disabled_down")
    pool = PoolConfig(name="grey", services=tuple(service(n) for n in names))
    config, health = make(pool)
    table = health["grey"]
    for i in (1, 4, 5):
        table.record_failure(i, NOW, 300.0, 300.0)
    for i, admin in ((2, "drain"), (3, "disabled"), (4, "drain"), (5, "disabled")):
        table.set_admin(i, admin)
    page = statuspage.page(config, health, NOW, WALL).decode()
    body = tables(page)[0]["grey"][1:]
    assert {cells[0]: (cls, cells[2], cells[3]) for cls, cells in body} == {
        "up": ("active_up", "up", "enabled"),
        "down": ("active_down", "down", "enabled"),
        "drain": ("active_draining", "up", "drain"),
        "disabled": ("maintain", "up", "disabled"),
        "drain_down": ("active_down", "down", "drain"),  # as HAProxy: down wins over drain
        "disabled_down": ("maintain", "down", "disabled"),  # maintenance wins over health
    }
    # HAProxy's stats page's colours for these classes
    for name, colour in (("active_up", "#c0ffc0"), ("active_down", "#ff9090"),
                         ("active_draining", "#20a0ff"), ("maintain", "#c07820")):
        assert f".{name} {{ background: {colour}; }}" in page


def test_the_cells_are_status_s_and_the_pool_counters_show_where_they_belong():
    grey = PoolConfig(name="grey", services=(service("A"), service("B", "127.0.0.1:2")),
                      hedge="0.05")
    rbl = PoolConfig(name="rbl", services=(service("R"),), shadow="grey")
    config, health = make(grey, rbl)
    health["grey"].set_weight(1, 7)
    health["grey"].record_failure(0, NOW, 300.0, 300.0)
    page = statuspage.page(config, health, NOW, WALL).decode()
    found, _ = tables(page)
    expected = [status_row(r) for r in rows(config, health, NOW, WALL)]
    shown = [cells for name in ("grey", "rbl") for _, cells in found[name][1:]]
    assert shown == [r[1:11] for r in expected]
    assert found["grey"][0][1] == list(STATUS_COLUMNS[1:11])
    assert "hedged 0, hedge_won 0" in page and "shadow_agree 0" in page
    assert "internal_errors" not in page


def test_the_page_is_plain_html_that_refreshes_itself():
    config, health = make(PoolConfig(services=(service("A"),)))
    page = statuspage.page(config, health, NOW, WALL).decode()
    assert page.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="refresh" content="{statuspage.REFRESH_SECONDS}">' in page
    _, tags = tables(page)
    assert not {"script", "link", "img", "iframe", "form", "input", "a", "object"} & set(tags)
    assert not re.search(r"(src|href|action)\s*=|url\(|@import|//", page, re.IGNORECASE)


def test_the_size_grows_by_at_most_row_bytes_a_service():
    """The longest names and unix paths there can be, every character escaped to 5 or 6."""
    def sized(count: int) -> int:
        path = "unix:/" + "&" * (MAX_UNIX_PATH - 1)
        services = tuple(service(f"{i:0>64}"[:60] + "<\"'>", path) for i in range(count))
        config, health = make(PoolConfig(name="p" * 64, services=services))
        for i in range(count):
            health[config.pools[0].name].record_failure(i, NOW, 300.0, 300.0)
        return len(statuspage.page(config, health, NOW, WALL))

    one, two, many = sized(1), sized(2), sized(MAX_SERVICES)
    assert two - one <= statuspage.ROW_BYTES
    assert many - one <= (MAX_SERVICES - 1) * statuspage.ROW_BYTES
    assert many < (1 << 20)
