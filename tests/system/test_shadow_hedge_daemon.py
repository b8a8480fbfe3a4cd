"""Shadow pools and hedged requests through the real daemon: the config file's sections (a
shadow-only pool without listen), the counters in `hapolicyctl csv` and the --summary line,
the log lines; --check-config's warning; the config errors, one line with FILE:LINE.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_metrics import samples
from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, request
from testkit.repo import run_hapolicy
from testkit.wait import wait_for

from hapolicy.config.file import assemble, read_config_file
from hapolicy.config.records import ConfigError


def test_a_shadow_pool_is_asked_counted_and_shown(tmp_path: Path):
    port, metrics = free_port(), free_port()
    conf = tmp_path / "shadow.conf"
    with FakeBackend(action="DUNNO") as real, \
            FakeBackend(mode="echo", attr="x_verdict") as shadow:
        conf.write_text(
            f"check-interval = 0\nsummary = 0.5\n"
            f"[pool grey]\nlisten = {HOST}:{port}\nservice = GREY={HOST}:{real.port}\n"
            "shadow = next\nshadow-share = 50\n"
            f"[pool next]\nservice = NEXT={HOST}:{shadow.port}\n")
        daemon = Daemon("-c", str(conf), "-l", "--metrics-listen", f"{HOST}:{metrics}",
                        listen="", workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            with PolicyClient(HOST, port) as client:
                for n in range(40):
                    verdict = "DEFER_IF_PERMIT greylisted" if n % 4 == 3 else "dunno"
                    assert client.ask(request(x_verdict=verdict)) == "action=DUNNO\n\n"

            def shadow_counts() -> dict[str, int] | None:
                row = csv_rows(path)["grey/GREY"]
                counts = {k: int(row[f"shadow_{k}"])
                          for k in ("agree", "disagree", "failed", "dropped")}
                return counts if sum(counts.values()) == 20 else None

            assert wait_for(shadow_counts, 10) == {"agree": 10, "disagree": 10, "failed": 0,
                                                   "dropped": 0}
            assert len(shadow.requests) == 20
            assert int(csv_rows(path)["next/NEXT"]["answers"]) == 20
            line = daemon.log.wait_text("shadow pool=grey shadow=next result=disagree")
            assert "action=DUNNO shadow_action=DEFER_IF_PERMIT greylisted" in line
            summary = daemon.log.wait_text("summary pool=grey requests=40")
            assert "shadow next: agree=10 disagree=10 failed=0 dropped=0" in summary
            found = samples(metrics)
            assert {result: found[("hapolicy_shadow_total", (("pool", "grey"),
                                                             ("result", result)))]
                    for result in ("agree", "disagree", "failed", "dropped")} == {
                "agree": 10, "disagree": 10, "failed": 0, "dropped": 0}
            assert not any(name == "hapolicy_shadow_total" and ("pool", "next") in labels
                           for name, labels in found)
            assert daemon.stop() == 0
        daemon.assert_clean_output()


def test_a_hedged_pool_through_the_daemon(tmp_path: Path):
    port, metrics = free_port(), free_port()
    conf = tmp_path / "hedge.conf"
    with FakeBackend(action="OK primary", slow_every=5, slow_delay=1.0) as primary, \
            FakeBackend(action="OK second") as second:
        conf.write_text(
            f"check-interval = 0\n[pool spf]\nlisten = {HOST}:{port}\n"
            f"service = P={HOST}:{primary.port}:1\nservice = S={HOST}:{second.port}:2\n"
            "hedge = 0.1\nhedge-max = 50\nsticky-instance = no\n")
        daemon = Daemon("-c", str(conf), "-l", "--metrics-listen", f"{HOST}:{metrics}",
                        listen="", workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            answers = []
            with PolicyClient(HOST, port) as client:
                for _ in range(20):
                    answers.append(client.ask(request()))
            assert answers.count("action=OK second\n\n") == 4  # the 5th, 10th, ...
            row = csv_rows(path)["spf/P"]
            assert (row["hedged"], row["hedge_won"], row["failures"]) == ("4", "4", "0")
            status = ctl("--control", path, "status").stdout.splitlines()
            assert status[0].split()[11:13] == ["hedged", "hedge_won"]  # a pool hedges
            assert status[1].split()[:2] == ["spf", "P"] and status[1].split()[11:13] == ["4", "4"]
            found = samples(metrics)
            assert found[("hapolicy_hedges_total", (("pool", "spf"),))] == 4
            assert found[("hapolicy_hedges_won_total", (("pool", "spf"),))] == 4
            assert " hedged=S" in daemon.log.wait_text("service=S")
            assert daemon.stop() == 0
        daemon.assert_clean_output()


def test_check_config_warns_of_hedging_a_pool_that_hashes(tmp_path: Path):
    conf = tmp_path / "warn.conf"
    conf.write_text("[pool grey]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\n"
                    "balance = hash:sender\nhedge = p95\n"
                    "[pool spf]\nlisten = 127.0.0.1:6\nservice = B=127.0.0.1:1\n"
                    "hedge = 0.2\nsticky-instance = no\n")
    done = run_hapolicy(["-c", str(conf), "--check-config"])
    assert done.returncode == 0
    assert done.stderr.startswith("hapolicy: warning: pool grey: hedge with balance = "
                                  "hash:sender and sticky-instance = yes: ")
    assert done.stderr.count("\n") == 1
    assert "hedge = p95" in done.stdout and "hedge-max = 5" in done.stdout
    assert "shadow = " in done.stdout


POOL = "listen = 127.0.0.1:{port}\nservice = A=127.0.0.1:1\n"


@pytest.mark.parametrize(("text", "fragment"), [
    ("[pool a]\n" + POOL.format(port=5) + "shadow = b\n", ":4: pool a: shadow b: no such pool"),
    ("[pool a]\n" + POOL.format(port=5) + "shadow = a\n",
     ":4: pool a: shadow a: a pool cannot be its own shadow"),
    ("[pool a]\n" + POOL.format(port=5) + "shadow = b\n[pool b]\n" + POOL.format(port=6)
     + "shadow = a\n", ":4: pool a: shadow b: shadows go round in a loop (a -> b -> a)"),
    ("[pool a]\n" + POOL.format(port=5) + "shadow = b c\n", ":4: pool name 'b c'"),
    ("[pool a]\n" + POOL.format(port=5) + "shadow-share = 0\n",
     ":4: shadow share '0' must be more than 0 and at most 100"),
    ("[pool a]\n" + POOL.format(port=5) + "hedge = p101\n", ":4: hedge 'p101': a percentile"),
    ("[pool a]\n" + POOL.format(port=5) + "hedge = soon\n", ":4: hedge 'soon' is not a number"),
    ("[pool a]\n" + POOL.format(port=5) + "hedge-max = 200\n", ":4: hedge max '200' must be"),
    ("shadow = b\n[pool a]\n" + POOL.format(port=5), ":1: shadow outside any [pool] section"),
    ("service = A=127.0.0.1:1\nshadow = b\n", ":2: shadow b: no such pool"),
])
def test_shadow_and_hedge_errors_name_file_and_line(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        assemble(read_config_file(str(path)), {}, [])
    assert str(err.value).startswith(f"{path}:") and fragment in str(err.value), str(err.value)


def test_a_pool_used_only_as_a_shadow_needs_no_listen(tmp_path: Path):
    path = tmp_path / "ok.conf"
    path.write_text("[pool a]\n" + POOL.format(port=5) + "shadow = b\nshadow-share = 12.5%\n"
                    "[pool b]\nservice = B=127.0.0.1:2\n[pool c]\nservice = C=127.0.0.1:3\n")
    with pytest.raises(ConfigError, match=r":8: pool c: no listen address"):
        assemble(read_config_file(str(path)), {}, [])
    path.write_text(path.read_text().replace("[pool c]\nservice = C=127.0.0.1:3\n", ""))
    config = assemble(read_config_file(str(path)), {}, [])
    assert [(p.name, p.listen, p.shadow, p.shadow_share) for p in config.pools] == [
        ("a", "127.0.0.1:5", "b", 12.5), ("b", "", "", 100.0)]
    assert config.addresses == ["127.0.0.1:5"]
