"""The operator's admin state: drain, weight, disable, and the daemon's --state-file.

In process: a drained service gets no new transaction and no hash key but keeps its sticky
ones and stands in when nothing else is up; the operator's weight changes the split at once and
a reload that changes the configured weight resets it; the state file's text is read strictly
and bounded, saved only on a change, a failed save logged once. Against a live daemon:
`weight` gives a 3:1 split over a few hundred requests, `drain` keeps a sticky transaction and
moves new ones, all of it survives a HUP and a restart with --state-file, and `disable` reaches
a worker that retires on the table of before a reload; after a maintenance window (disable or
drain, 200 requests, enable) and after a weight change the next requests split by weight. Settings that
cannot work (a state file or control socket in a missing directory, an unknown control group)
fail at start with one line and exit status 2.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon, short_tmpdir
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, run_hapolicy
from testkit.wait import wait_for

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.daemon import adminstate
from hapolicy.daemon.adminstate import AdminFile
from hapolicy.monitor.commands import COMMANDS, answer
from hapolicy.request.selection import Selector
from hapolicy.tables.health import HealthTable, carry_over
from hapolicy.tables.layout import ANSWERS, DISABLED, DRAINING, ENABLED, WEIGHT


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda text: self.lines.append(f"{level}: {text}")


def make(*specs: str) -> tuple[Selector, HealthTable]:
    services = [parse_service(s) for s in specs]
    health = HealthTable(len(services), shared=False)
    return Selector(services, health), health


def test_a_drained_service_gets_no_new_transaction_but_keeps_its_sticky_ones():
    sel, health = make("A=h:1", "B=h:2", "C=h:3")
    health.set_admin(1, DRAINING)
    assert health.state(1, 1.0) == 0  # still up: checked, probed, sticky
    assert 1 not in {sel.pick(0, 1.0) for _ in range(60)}
    assert [sel.pick(0, 1.0, sticky=1) for _ in range(3)] == [1, 1, 1]
    health.set_admin(1, ENABLED)
    assert 1 in {sel.pick(0, 1.0) for _ in range(60)}


def test_a_drained_service_stands_in_when_no_other_is_up_and_a_disabled_one_never():
    sel, health = make("A=h:1:10", "B=h:2:10", "C=h:3:20")
    health.set_admin(1, DRAINING)
    health.record_failure(0, 1.0, 60.0, 60.0)
    health.record_failure(2, 1.0, 60.0, 60.0)
    assert sel.pick(0, 2.0) == 1  # better than the default answer
    assert sel.pick(0b010, 2.0) == -1
    health.set_admin(1, DISABLED)
    assert sel.pick(0, 2.0) == -1


def test_hash_keys_leave_a_drained_service_and_only_its_keys_move():
    sel, health = make("A=h:1", "B=h:2", "C=h:3")
    keys = [f"sender{k}@example.org".encode() for k in range(300)]
    before = {k: sel.pick(0, 1.0, key=k) for k in keys}
    health.set_admin(1, DRAINING)
    after = {k: sel.pick(0, 1.0, key=k) for k in keys}
    assert 1 not in after.values()
    assert all(after[k] == before[k] for k in keys if before[k] != 1)
    assert sum(before[k] == 1 for k in keys) > 50


def test_a_bad_word_in_the_table_reads_as_the_default_in_the_master():
    table = HealthTable(1, shared=False)
    for bad in (math.nan, math.inf, -1.0, 0.5, 1e300):
        table.set_weight(0, 0)
        table.f[WEIGHT] = bad  # what only a broken or hostile worker could write
        assert table.weight(0, 2) == 2
        table.f[ANSWERS] = bad if bad != -1.0 else math.nan
        assert table.service_counter(0, ANSWERS) in (0, 1)  # never raises


def test_the_operators_weight_changes_the_split_at_once():
    sel, health = make("A=h:1", "B=h:2")
    assert Counter(sel.pick(0, 1.0) for _ in range(400)) == {0: 200, 1: 200}
    health.set_weight(0, 3)
    assert health.weight(0, 1) == 3 and health.weight(1, 1) == 1
    picks = Counter(sel.pick(0, 1.0) for _ in range(400))
    assert abs(picks[0] - 300) <= 2, picks
    health.set_weight(0, 0)
    assert health.weight(0, 1) == 1


def test_a_reload_keeps_the_admin_state_and_resets_a_weight_the_config_changed():
    before = [parse_service(s) for s in ("A=h:1::2", "B=h:2::2", "C=h:3")]
    old = HealthTable(3, shared=False)
    for i in range(3):
        old.set_weight(i, 5)
    old.set_admin(0, DISABLED)
    old.set_admin(1, DRAINING)
    after = [parse_service(s) for s in ("B=h:2::2", "A=h:1::4", "D=h:4")]
    new = carry_over(old, before, after)
    assert [new.admin(i) for i in range(3)] == [DRAINING, DISABLED, ENABLED]
    assert [new.weight(i, s.weight) for i, s in enumerate(after)] == [5, 4, 1]


def one_pool_config(*specs: str) -> DaemonConfig:
    return DaemonConfig(pools=(PoolConfig(services=tuple(parse_service(s) for s in specs)),))


def test_commands_drain_weight_and_their_errors():
    config = one_pool_config("A=h:1", "B=h:2")
    health = {"default": HealthTable(2, shared=False)}
    log = Log()

    def run(line: str) -> str:
        return answer(line, config, health, {}, None, log)

    assert run("drain default/A") == "ok: default/A draining\n"
    assert run("weight default/B 7") == "ok: default/B weight 7\n"
    table = run("status").splitlines()
    assert table[1].split()[4:6] == ["drain", "1"] and table[2].split()[4:6] == ["enabled", "7"]
    assert run("weight default/B reset") == "ok: default/B weight 1\n"
    assert run("enable default/A") == "ok: default/A enabled\n"
    for line, error in (("weight default/A 0", "error: weight '0'"),
                        ("weight default/A 10001", "error: weight '10001'"),
                        ("weight default/A x", "error: weight 'x'"),
                        ("weight default/A", "error: usage: weight"),
                        ("drain", "error: usage: drain"),
                        ("drain default/Z", "error: no service 'Z'"),
                        ("drain x/A", "error: no pool 'x'"),
                        ("drain " + "x" * 5000, "error: 'xxx")):
        assert run(line).startswith(error), line
        assert len(run(line)) < 200
    assert health["default"].admin(0) == ENABLED and health["default"].weight(1, 1) == 1
    assert "drain POOL/SERVICE" in run("help")
    assert [line for line in log.lines if line.startswith("notice: control:")][:2] == [
        "notice: control: service default/A draining",
        "notice: control: service default/B weight 7"]


def test_the_state_file_round_trips_and_reads_bad_lines_as_warnings(tmp_path):
    config = one_pool_config("A=h:1", "B=h:2", "C=h:3")
    health = {"default": HealthTable(3, shared=False)}
    health["default"].set_admin(0, DISABLED)
    health["default"].set_admin(1, DRAINING)
    health["default"].set_weight(1, 4)
    state = adminstate.snapshot(config, health)
    text = adminstate.format_state(state)
    assert text.splitlines()[1:] == ["default A h:1 disabled -", "default B h:2 drain 4"]
    assert adminstate.parse(text, "f") == (state, [])
    entries, problems = adminstate.parse(
        text + "default C h:3 sideways -\ndefault C h:3 enabled 0\ntoo few\n\x00\xff garbage\n"
        "default C h:3 enabled \u00b2\n", "f")  # a digit to str.isdigit, not to int()
    assert entries == state and len(problems) == 5
    assert problems[0] == ("state file f:4: not POOL SERVICE ADDRESS enabled|drain|disabled "
                           "WEIGHT|-: ignored")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (adminstate.MAX_BYTES + 1))
    assert adminstate.read(str(big))[1] == [
        f"state file {big}: larger than {adminstate.MAX_BYTES} bytes: ignored"]
    link = tmp_path / "link"
    link.symlink_to(big)
    assert "cannot read" in adminstate.read(str(link))[1][0]
    assert adminstate.read(str(tmp_path / "none")) == ({}, [])
    assert "not a regular file" in adminstate.read(str(tmp_path))[1][0]


def test_the_master_saves_on_a_change_only_and_logs_a_failed_save_once(tmp_path):
    config = one_pool_config("A=h:1", "B=h:2")
    health = {"default": HealthTable(2, shared=False)}
    path = tmp_path / "state"
    path.write_text("default A h:1 drain 3\ndefault GONE h:9 disabled -\n" + "junk\n" * 10)
    log = Log()
    admin = AdminFile(str(path), log)
    admin.restore(config, health)
    assert health["default"].admin(0) == DRAINING and health["default"].weight(0, 1) == 3
    assert "notice: state file: service default/A drain, weight 3" in log.lines
    assert f"info: state file {path}: no service default/GONE at h:9 now: dropped" in log.lines
    assert sum("ignored" in line for line in log.lines) == 4  # 3 lines, then a count
    admin.save_if_changed(config, health)  # GONE dropped: a change
    assert path.read_text().splitlines()[1:] == ["default A h:1 drain 3"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    mtime = os.stat(path).st_mtime_ns
    admin.save_if_changed(config, health)
    assert os.stat(path).st_mtime_ns == mtime
    health["default"].set_admin(1, DISABLED)
    health["default"].set_admin(0, ENABLED)
    admin.save_if_changed(config, health)
    assert path.read_text().splitlines()[1:] == ["default A h:1 enabled 3",
                                                 "default B h:2 disabled -"]
    (tmp_path / "adir").mkdir()  # a path that cannot be replaced, even by root
    failing = AdminFile(str(tmp_path / "adir"), log)
    failing.save_if_changed(config, health)
    failing.save_if_changed(config, health)
    assert sum("cannot save the admin state" in line for line in log.lines) == 1
    assert sorted(os.listdir(tmp_path)) == ["adir", "state"]


def serving(backend: FakeBackend) -> int:
    return len(backend.live_requests)


def ask_new_transactions(daemon: Daemon, count: int) -> None:
    with PolicyClient(HOST, daemon.port) as client:
        for k in range(count):
            assert client.ask(request(instance=f"adm{k}")) == "action=DUNNO\n\n"


def test_weight_drain_and_disable_survive_a_hup_and_a_restart_with_the_state_file():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b, FakeBackend(name="C") as c:
        where = short_tmpdir()  # outlives the first daemon
        path, state = str(where / "control"), str(where / "admin.state")
        daemon = Daemon("-s", a.spec(), "-s", b.spec(), "-s", c.spec(), "--control", path,
                        "--state-file", state, workers=2)
        with daemon.start():
            assert ctl("--control", path, "disable", "default/C").returncode == 0
            assert ctl("--control", path, "weight", "default/A", "3").stdout == \
                "ok: default/A weight 3\n"
            ask_new_transactions(daemon, 400)
            assert serving(c) == 0
            assert 2.6 <= serving(a) / serving(b) <= 3.4, (serving(a), serving(b))
            # a transaction sticky to A keeps going there while A drains; new ones move
            with PolicyClient(HOST, daemon.port) as client:
                for _ in range(40):  # until this connection's transaction landed on A
                    before = serving(a)
                    client.ask(request(instance="sticky-tx"))
                    if serving(a) > before:
                        break
                    client.ask(request(instance="other-tx"))
                assert ctl("--control", path, "drain", "default/A").returncode == 0
                before_a, before_b = serving(a), serving(b)
                for _ in range(5):
                    client.ask(request(instance="sticky-tx", recipient="next@example.org"))
                assert serving(a) == before_a + 5
                ask_new_transactions(daemon, 50)
                assert serving(a) == before_a + 5 and serving(b) == before_b + 50
            # saved by the master within a second; the monitor answered the command before
            wait_for(lambda: os.path.exists(state) and "default A" in Path(state).read_text(), 5,
                     what="the state file")
            daemon.send(signal.SIGHUP)
            wait_for(lambda: "reloaded" in daemon.log.text(), 10, what="the reload")
            rows = csv_rows(path)
            assert [rows[f"default/{n}"]["admin"] for n in "ABC"] == ["drain", "enabled",
                                                                       "disabled"]
            assert rows["default/A"]["weight"] == "3"
            assert daemon.stop() == 0
        assert Path(state).read_text().splitlines()[1:] == [
            f"default A {a.host}:{a.port} drain 3", f"default C {c.host}:{c.port} disabled -"]
        again = Daemon(*daemon.args, workers=2)
        with again.start():
            wait_for(lambda: "state file: service default/C disabled" in again.log.text(), 5,
                     what="the restored state in the log")
            rows = csv_rows(path)
            assert [rows[f"default/{n}"]["admin"] for n in "ABC"] == ["drain", "enabled",
                                                                       "disabled"]
            before = serving(a), serving(c)
            ask_new_transactions(again, 30)
            assert (serving(a), serving(c)) == before
            assert ctl("--control", path, "enable", "default/A").returncode == 0
            assert ctl("--control", path, "enable", "default/C").returncode == 0
            wait_for(lambda: "default C" not in Path(state).read_text(), 5, what="the saved enable")
            assert Path(state).read_text().splitlines()[1:] == [(f"default A {a.host}:{a.port} "
                                                           "enabled 3")]
        shutil.rmtree(where)


def test_a_service_given_back_or_reweighted_splits_by_weight_at_once():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        where = short_tmpdir()
        path = str(where / "control")
        with Daemon("-s", a.spec(), "-s", b.spec(), "--control", path, workers=2) as daemon:
            ask_new_transactions(daemon, 100)
            for out in ("disable", "drain"):
                assert ctl("--control", path, out, "default/A").returncode == 0
                before = serving(a)
                ask_new_transactions(daemon, 200)  # the maintenance window
                assert serving(a) == before
                assert ctl("--control", path, "enable", "default/A").returncode == 0
                before = serving(a)
                ask_new_transactions(daemon, 100)
                assert 45 <= serving(a) - before <= 55, (out, serving(a) - before)
            assert ctl("--control", path, "weight", "default/B", "3").returncode == 0
            before = serving(b)
            ask_new_transactions(daemon, 100)
            assert 67 <= serving(b) - before <= 83, serving(b) - before
        shutil.rmtree(where)


def test_settings_that_cannot_work_fail_at_start_with_one_line(tmp_path):
    missing = tmp_path / "missing"
    regular = tmp_path / "a-file"
    regular.write_text("")
    for args, text in (
            (["--state-file", f"{missing}/state"], (f"state file {missing}/state: no directory "
                                                  f"{missing}")),
            (["--control", f"{missing}/control"], (f"control socket {missing}/control: no "
                                                  f"directory {missing}")),
            (["--control", f"{tmp_path}/control", "--control-group", "no-such-group-x"],
             "control group 'no-such-group-x' does not exist"),
            (["--control", str(regular)], (f"control socket {regular}: exists and is not a "
                                          "socket"))):
        result = run_hapolicy(["-L", "--listen", f"{HOST}:{free_port()}", "-s", "A=127.0.0.1:9", *args])
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1].endswith(text), result.stderr
        assert "Traceback" not in result.stderr


def test_the_manual_names_every_command():
    manual = (REPO / "docs" / "operating.md").read_text()
    for usage, _ in COMMANDS:
        assert f"| `{usage}` |" in manual, usage


def test_disable_reaches_a_worker_that_retires_on_the_old_table_after_a_reload(tmp_path):
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b, FakeBackend(name="C") as c:
        where = short_tmpdir()
        path, conf = str(where / "control"), tmp_path / "h.conf"
        services = f"service = {a.spec(prio=10)}\nservice = {b.spec(prio=10)}\n"
        conf.write_text(f"check-interval = 0\ncontrol = {path}\n{services}")
        with Daemon("-c", str(conf), workers=1) as daemon, \
                PolicyClient(HOST, daemon.port) as old_client:
            assert old_client.ask(request(instance="r0")) == "action=DUNNO\n\n"
            conf.write_text(f"check-interval = 0\ncontrol = {path}\n{services}"
                            f"service = {c.spec(prio=20)}\n")  # new services: a new table
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded: 3 services, 1 workers; 1 old workers retire")
            assert ctl("--control", path, "disable", "default/A").returncode == 0
            before = serving(a)
            for k in range(20):  # on the retiring worker, which keeps its client
                assert old_client.ask(request(instance=f"r{k + 1}")) == "action=DUNNO\n\n"
            ask_new_transactions(daemon, 20)  # on the new worker
            assert serving(a) == before
            assert ctl("--control", path, "enable", "default/A").returncode == 0
            for k in range(20):
                old_client.ask(request(instance=f"s{k}"))
            assert serving(a) > before
        shutil.rmtree(where)


def test_with_slowstart_a_service_enabled_again_gets_its_share_over_that_time():
    """--slowstart 3: in its first 0.6 s back, under a quarter of its share; after 3 s, all."""
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        where = short_tmpdir()
        path = str(where / "control")
        with Daemon("-s", a.spec(), "-s", b.spec(), "--control", path, "--slowstart", "3",
                    workers=2) as daemon:
            assert ctl("--control", path, "disable", "default/A").returncode == 0
            ask_new_transactions(daemon, 100)
            assert ctl("--control", path, "enable", "default/A").returncode == 0
            enabled = time.monotonic()
            before, total = serving(a), 0
            with PolicyClient(HOST, daemon.port) as client:
                while time.monotonic() - enabled < 0.6:
                    assert client.ask(request(instance=f"s{total}")) == "action=DUNNO\n\n"
                    total += 1
            assert total >= 40 and serving(a) - before < 0.25 * total / 2, (serving(a) - before,
                                                                            total)
            time.sleep(max(0.0, enabled + 3.2 - time.monotonic()))
            before = serving(a)
            ask_new_transactions(daemon, 100)
            assert 40 <= serving(a) - before <= 60, serving(a) - before
        shutil.rmtree(where)
