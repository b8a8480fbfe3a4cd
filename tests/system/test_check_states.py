"""`hapolicyctl check` (check.py) against a real daemon: each state of the Monitoring Plugins
guidelines with its exit status (OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3) and its one line, text
then perfdata in the guidelines' grammar; the rates and the p99 are those of the load between
the two readings.
"""

from __future__ import annotations

import re

from testkit.backends import FakeBackend
from testkit.ctl import Load, csv_rows, ctl
from testkit.daemon import Daemon, short_tmpdir
from testkit.fakecontrol import FakeControl
from testkit.repo import REPO
from testkit.wait import wait_for

from hapolicy import check as check_module

SUMMARY = (r"(?:pool \S+|\d+ pools?): (?P<up>\d+)/(?P<services>\d+) services up"
           r"(?: \(\d+ disabled\))?, (?P<defaults>\d+\.\d\d) default answers/s, "
           r"(?P<requests>\d+\.\d\d) requests/s, p99 (?:[\d.]+ ms|- \(no answer\)|>10000 ms)")
PERFDATA = (r"services_up=(?P=up);;;0;(?P=services) default_answers_per_s=(?P=defaults);"
            r"(?P<warn>[^;\s]*);(?P<crit>[^;\s]*);0 requests_per_s=(?P=requests);;;0 "
            r"p99_latency=(?:[\d.]+ms;;;0|U)")
LINE = re.compile(rf"HAPOLICY (?P<state>OK|WARNING|CRITICAL) - (?P<problems>(?:[^|;]+; )*)"
                  rf"{SUMMARY} \| {PERFDATA}\n")
#: one perfdata item of the guidelines: 'label'=value[UOM];[warn];[crit];[min];[max]
ITEM = re.compile(r"(?:[^'= ]+|'[^']+')=(?:-?\d+(?:\.\d+)?|U)(?:us|ms|s|%|B|KB|MB|TB|c)?"
                  r"(?:;[^; ]*){0,4}")
EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def check(path: str, *args: str) -> re.Match:
    """Run the check; its line, matched, after asserting the exit status its state says."""
    done = ctl("--control", path, "check", "--interval", "0.3", *args)
    match = LINE.fullmatch(done.stdout)
    assert match, done.stdout
    assert done.returncode == EXIT[match["state"]] and done.stderr == "", done
    assert all(ITEM.fullmatch(item) for item in done.stdout.split(" | ")[1].split()), done.stdout
    return match


def test_ok_warning_critical_with_a_real_daemon_under_load():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        daemon = Daemon("-s", a.spec(prio=10), "-s", b.spec(prio=10), workers=2)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start(), Load(daemon) as load:
            wait_for(lambda: load.answers > 50, 10, what="load")
            ok = check(path)
            assert (ok["state"], ok["problems"], ok["up"], ok["services"]) == ("OK", "", "2", "2")
            assert float(ok["requests"]) > 0 and ok["defaults"] == "0.00"
            assert "p99_latency=U" not in ok.string  # answers between the readings
            pooled = check(path, "--pool", "default", "-w", "5", "-c", "10:")
            assert pooled.string.startswith("HAPOLICY CRITICAL - 0.00 default answers/s "
                                            "(critical: 10:); pool default: 2/2")
            assert (pooled["warn"], pooled["crit"]) == ("5", "10:")
            assert check(path, "-w", "@0:0.5")["state"] == "WARNING"  # the threshold alone

            assert ctl("--control", path, "disable", "default/A").returncode == 0
            disabled = check(path)
            assert disabled["state"] == "OK" and "1/2 services up (1 disabled)" in disabled.string
            assert ctl("--control", path, "enable", "default/A").returncode == 0

            a.stop()
            wait_for(lambda: csv_rows(path)["default/A"]["state"] == "down", 10, what="A down")
            warning = check(path, "-w", "5", "-c", "10")
            assert warning["state"] == "WARNING"
            assert warning["problems"] == "pool default: 1 of 2 services down; "
            assert warning["up"] == "1" and float(warning["requests"]) > 0

            b.stop()
            wait_for(lambda: csv_rows(path)["default/B"]["state"] == "down", 10, what="B down")
            critical = check(path, "--pool", "default", "-c", "5")
            assert critical["state"] == "CRITICAL" and critical["up"] == "0"
            assert critical["problems"].startswith("pool default: no service up; ")
            assert float(critical["defaults"]) > 5  # the load, answered by default
            assert "default answers/s (critical: 5)" in critical["problems"]
            assert critical.string.endswith(" p99_latency=U\n")  # no good answer between
            unknown = ctl("--control", path, "check", "--pool", "grey")
            assert (unknown.returncode, unknown.stdout) == (3, "HAPOLICY UNKNOWN - no pool "
                                                               "'grey' (pools: default)\n")


def unknown(*args: str) -> str:
    done = ctl(*args)
    assert done.returncode == 3 and done.stderr == "", done
    assert done.stdout.startswith("HAPOLICY UNKNOWN - ") and done.stdout.count("\n") == 1, done
    return done.stdout


def test_unknown_when_the_socket_is_missing_or_answers_garbage(tmp_path):
    missing = str(tmp_path / "nothing-here")
    assert unknown("--control", missing, "check") == (f"HAPOLICY UNKNOWN - {missing}: No such "
                                                      "file or directory\n")
    cases = ((b"this is not a policy daemon\n", "the answer is not the pools table: 'this is "
                                                "not a policy daemon'"),
             (b"", "the daemon sent no answer"),
             (b"error: not allowed\n", "the daemon answered 'error: not allowed'"),
             (b"# pool,services,up\ngrey,2,2\n", "the answer is not the pools table"),
             (b"error: unknown command 'pools'; try help\n", "unknown command"))  # an old daemon
    for text, says in cases:
        with FakeControl(str(short_tmpdir() / "control"), text) as garbage:
            assert says in unknown("--control", garbage.path, "check", "--interval", "0.1")
    assert "cannot read" in unknown("-c", str(tmp_path / "no.conf"), "check")
    assert "--interval '0'" in unknown("--control", missing, "check", "--interval", "0")
    assert "range '10:5'" in unknown("--control", missing, "check", "-w", "10:5")
    assert "unknown option '--bogus'" in unknown("--control", missing, "check", "--bogus")


def test_the_example_of_the_man_page_and_the_manual_is_a_line_of_this_format():
    """hapolicyctl(8) shows check.EXAMPLE; docs/operating.md shows the same lines."""
    command, line = check_module.EXAMPLE.split("\n")
    assert LINE.fullmatch(line + "\n") and command.startswith("$ hapolicyctl check ")
    assert f"    {command}\n    {line}\n" in (REPO / "docs" / "operating.md").read_text()
