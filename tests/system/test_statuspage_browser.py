"""The status page (GET / and /status on --metrics-listen) of a live daemon in Debian's
Chromium, headless: the DOM it renders holds one table per pool whose cells are what
`hapolicyctl csv` says at the same moment (no traffic flows while both are read), each row with
HAProxy's class for its state; and a screenshot (into the test's temporary directory, never the
repository) is a PNG showing the rows in HAProxy's colours: green up, red down, blue drain,
brown disabled.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.browser import dump_dom, pixels, screenshot, tables
from testkit.ctl import csv_rows, ctl, fresh
from testkit.daemon import Daemon
from testkit.packages import require_packages
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient
from testkit.wait import wait_for

from hapolicy.monitor.commands import COLUMNS, status_row

COLOURS = {"active_up": "#c0ffc0", "active_down": "#ff9090", "active_draining": "#20a0ff",
           "maintain": "#c07820"}
WINDOW = (1000, 600)


def seconds(age: str) -> int:
    """`12s` or `4m05s` (status's last_change) in seconds."""
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", age)
    assert m, age
    return int(m.group(1) or 0) * 60 + int(m.group(2))


def config(backends: dict[str, FakeBackend], mport: int, control: str) -> tuple[str, int, int]:
    """Pool grey: D (answers garbage, asked first), A and B; pool rbl: C and E. No checks and a
    long cool-down: D stays down once it failed."""
    grey, rbl = free_port(), free_port()
    b = backends
    text = (f"check-interval = 0\ncooldown = 300\ncooldown-max = 300\ncontrol = {control}\n"
            f"metrics-listen = {HOST}:{mport}\n"
            f"[pool grey]\nlisten = {HOST}:{grey}\nservice = {b['D'].spec(prio=5)}\n"
            f"service = {b['A'].spec(prio=20)}\nservice = {b['B'].spec(prio=20, weight=3)}\n"
            f"[pool rbl]\nlisten = {HOST}:{rbl}\nservice = {b['C'].spec()}\n"
            f"service = {b['E'].spec()}\n")
    return text, grey, rbl


def test_chromium_renders_the_status_page_as_csv_says_in_haproxy_s_colours(tmp_path: Path):
    require_packages("chromium")
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b, FakeBackend(name="C") as c, \
            FakeBackend(name="D", mode="garbage") as d, FakeBackend(name="E") as e:
        mport, control = free_port(), str(tmp_path / "control")
        text, grey, rbl = config({x.name: x for x in (a, b, c, d, e)}, mport, control)
        (tmp_path / "hapolicy.conf").write_text(text)
        with Daemon("-c", str(tmp_path / "hapolicy.conf"), listen="", workers=1) as daemon:
            for port in (grey, rbl):
                with PolicyClient(HOST, port) as client:
                    for _ in range(20):
                        assert client.ask(fresh()) == "action=DUNNO\n\n"
            for command in ("drain grey/B", "disable rbl/C", "weight rbl/E 7"):
                assert ctl("--control", control, *command.split()).returncode == 0
            wait_for(lambda: csv_rows(control)["grey/D"]["state"] == "down", 10, what="D down")
            before = csv_rows(control)
            dom = dump_dom(f"http://{HOST}:{mport}/")
            after = csv_rows(control)
            png = screenshot(f"http://{HOST}:{mport}/status", str(tmp_path / "status.png"),
                             WINDOW)
            assert daemon.stop() == 0
    assert_dom_matches_csv(dom, before, after)
    assert_screenshot(png)


def assert_dom_matches_csv(dom: str, before: dict, after: dict) -> None:
    found, tags = tables(dom)
    assert "script" not in tags
    assert list(found) == ["grey", "rbl"]
    shown = {f"{pool}/{cells[0]}": (cls, cells)
             for pool, body in found.items() for cls, cells in body[1:]}
    assert set(shown) == set(before) == set(after) == {"grey/D", "grey/A", "grey/B", "rbl/C",
                                                       "rbl/E"}
    for name, (cls, cells) in shown.items():
        first = status_row([before[name][c] for c in COLUMNS])
        last = status_row([after[name][c] for c in COLUMNS])
        assert first[:10] == last[:10], (first, last)  # nothing moved but the clock
        assert cells[:9] == first[1:10], (name, cells, first)
        assert seconds(first[10]) <= seconds(cells[9]) <= seconds(last[10]), (cells, first)
    assert int(before["grey/A"]["answers"]) + int(before["grey/B"]["answers"]) == 20
    assert int(before["grey/D"]["failures"]) >= 1 and before["grey/D"]["answers"] == "0"
    assert {name: (cls, cells[2], cells[3], cells[4]) for name, (cls, cells) in shown.items()} \
        == {"grey/D": ("active_down", "down", "enabled", "1"),
            "grey/A": ("active_up", "up", "enabled", "1"),
            "grey/B": ("active_draining", "up", "drain", "3"),
            "rbl/C": ("maintain", "up", "disabled", "1"),
            "rbl/E": ("active_up", "up", "enabled", "7")}


def assert_screenshot(png: bytes) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == WINDOW
    assert 2000 < len(png) < 2_000_000, len(png)
    counts = pixels(png)
    # each row is hundreds of pixels wide and a dozen high, in its state's colour
    for cls, colour in COLOURS.items():
        assert counts[colour] > 2000, (cls, colour, counts.most_common(8))
