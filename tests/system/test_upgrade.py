"""The upgrade in place (SIGUSR2) with real processes: the program on disk replaces the running
one under load without closing a client connection; a new program that fails leaves the old
master serving (and a later USR2 may succeed); health and the operator's admin state carry
over; the sockets' files stay where they are and the pidfile follows the new master.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon, short_tmpdir
from testkit.install import package_copy, set_version
from testkit.load import Load
from testkit.ports import HOST, refused_port
from testkit.processes import alive, cmdline, workers_of
from testkit.protocol import PolicyClient, request
from testkit.wait import wait_for


def ask_once(daemon: Daemon, **attrs: str) -> str:
    with PolicyClient(HOST, daemon.port) as client:
        return client.ask(request(**attrs))


def test_usr2_under_load_runs_the_new_program_and_closes_no_client_connection():
    tree = package_copy(short_tmpdir())
    with FakeBackend(mode="echo", attr="recipient") as echo, Daemon(
            "-s", f"A={HOST}:{echo.port}", workers=2, cwd=tree,
            env={"PYTHONPATH": str(tree)}) as daemon:
        old_master, old_workers = daemon.pid, daemon.wait_ready()
        loads = [Load([daemon.connect() for _ in range(25)], 0, name=f"U{t}-").start()
                 for t in range(4)]
        wait_for(lambda: all(load.answered > 50 for load in loads), 10)
        set_version(tree, "9.9.9+upgraded")  # the package on disk is replaced meanwhile

        new_master = daemon.upgrade()
        assert new_master != old_master
        started = daemon.log.wait_text(f"hapolicy[{new_master}]: master started:")
        assert "master started: hapolicy 9.9.9+upgraded, listening on" in started
        assert f"upgrading master {old_master}" in started
        assert cmdline(old_master) == "hapolicy: old master (retiring)"
        wait_for(lambda: cmdline(new_master) == "hapolicy: master", 5)
        # new connections go to the new master's workers; the old ones keep their clients
        new_workers = daemon.wait_ready()
        assert not set(new_workers) & set(old_workers)
        wait_for(lambda: all("(retiring)" in cmdline(p) for p in old_workers), 5,
                 what="the old workers to retire")
        for k in range(20):
            assert ask_once(daemon, recipient=f"new{k}@example.org") == \
                f"action=new{k}@example.org\n\n"
        during = [load.answered for load in loads]
        wait_for(lambda: all(load.answered > n + 50 for load, n in zip(loads, during)), 10,
                 what="the old connections to keep getting answers")
        for load in loads:
            load.stop()
        for load in loads:
            load.join()
        print(f"\nUSR2 under load: {sum(load.answered for load in loads)} answers on 100 "
              "connections that lived through the upgrade, "
              f"{sum(len(load.errors) for load in loads)} lost or wrong")
        for load in loads:
            assert load.errors == []
            assert load.answered == load.sent
        # the old workers, then the old master, leave once their clients did
        assert daemon.proc.poll() is None
        for load in loads:
            load.close()
        assert daemon.proc.wait(timeout=15) == 0
        assert not any(alive(p) for p in old_workers)
        assert sorted(workers_of(new_master)) == sorted(new_workers)
        assert ask_once(daemon, recipient="after@example.org") == \
            "action=after@example.org\n\n"
        assert daemon.stop() == 0
        log = daemon.log.text()
        assert f"upgrade: new master {new_master} serves; 2 old workers retire" in log
        assert "Traceback" not in log and "internal error" not in log


def test_a_new_program_that_fails_leaves_the_old_master_serving_until_a_later_usr2(tmp_path):
    conf = tmp_path / "hapolicy.conf"
    tree = package_copy(short_tmpdir())
    with FakeBackend(action="OK") as backend:
        good = f"service = A={HOST}:{backend.port}\n"
        conf.write_text(good)
        with Daemon("-c", str(conf), workers=2, cwd=tree,
                    env={"PYTHONPATH": str(tree)}) as daemon:
            master, workers = daemon.pid, daemon.wait_ready()
            with PolicyClient(HOST, daemon.port) as client:
                assert client.ask(request()) == "action=OK\n\n"
                # a configuration the new program refuses
                conf.write_text(good + "workers = many\n")
                daemon.send(signal.SIGUSR2)
                _, line = daemon.log.wait("upgrade failed")
                assert "upgrade failed, the running master keeps serving: new master " in line
                assert line.rstrip().endswith(f" exited with status 2: {conf}:2: workers "
                                              "'many' is not a whole number"), repr(line)
                # a broken install: the program dies before it can say anything itself
                conf.write_text(good)
                cli = tree / "hapolicy" / "cli.py"
                intact = cli.read_text()
                cli.write_text(intact + "\nraise RuntimeError('a broken install')\n")
                daemon.send(signal.SIGUSR2)
                daemon.log.wait("upgrade failed", count=2)
                line = daemon.log.matching("upgrade failed")[1][1]
                assert "exited with status 1: RuntimeError: a broken install" in line
                assert daemon.pid == master
                assert cmdline(master) == "hapolicy: master"
                assert sorted(daemon.workers_now()) == sorted(workers)
                assert client.ask(request()) == "action=OK\n\n"
                assert ask_once(daemon) == "action=OK\n\n"

                cli.write_text(intact)
                new_master = daemon.upgrade()
                assert new_master != master
                assert client.ask(request()) == "action=OK\n\n"  # still the old worker's
            assert daemon.proc.wait(timeout=15) == 0
            assert ask_once(daemon) == "action=OK\n\n"
            assert daemon.stop() == 0
            assert len(daemon.log.matching("upgrade failed")) == 2


def test_health_admin_state_and_counters_carry_over_and_files_follow_the_new_master():
    where = short_tmpdir()
    control, pidfile = str(where / "control"), str(where / "hapolicy.pid")
    listen = f"unix:{where / 'policy'}"
    with FakeBackend(name="A") as a, FakeBackend(name="C") as c:
        dead = f"DEAD={HOST}:{refused_port()}"
        daemon = Daemon("-s", a.spec(), "-s", dead, "-s", c.spec(), "--control", control,
                        "--pidfile", pidfile, "--check-interval", "0", "--cooldown", "300",
                        "--cooldown-max", "300", workers=2, listen=listen)
        with daemon.start():
            old_master = daemon.pid
            assert ctl("--control", control, "disable", "default/C").returncode == 0
            assert ctl("--control", control, "weight", "default/A", "3").returncode == 0
            for k in range(30):  # DEAD taken down by live traffic, not by a check
                assert ask_unix(daemon, instance=f"t{k}") == "action=DUNNO\n\n"
            before = csv_rows(control)
            assert before["default/DEAD"]["state"] == "down"
            assert Path(pidfile).read_text() == f"{old_master}\n"

            held = PolicyClient.from_socket(daemon.connect())  # keeps an old worker
            assert held.ask(request()) == "action=DUNNO\n\n"
            new_master = daemon.upgrade()
            daemon.log.wait("upgrade: the state of 3 services carried over")
            after = csv_rows(control)
            answering = ctl("--control", control, "workers").stdout  # the new master's monitor
            old_workers = workers_of(old_master)
            assert old_workers and not any(str(pid) in answering for pid in old_workers)
            assert all(str(pid) in answering for pid in workers_of(new_master)), answering
            assert held.ask(request()) == "action=DUNNO\n\n"
            held.sock.close()
            assert [after[f"default/{n}"]["state"] for n in ("A", "DEAD", "C")] == \
                [before[f"default/{n}"]["state"] for n in ("A", "DEAD", "C")]
            assert after["default/DEAD"]["state"] == "down"
            assert [after[f"default/{n}"]["admin"] for n in ("A", "DEAD", "C")] == \
                ["enabled", "enabled", "disabled"]
            assert after["default/A"]["weight"] == "3"
            assert int(after["default/A"]["answers"]) >= int(before["default/A"]["answers"])
            assert Path(pidfile).read_text() == f"{new_master}\n"
            for k in range(10):  # nothing goes to DEAD or C in the new master either
                assert ask_unix(daemon, instance=f"n{k}") == "action=DUNNO\n\n"
            assert csv_rows(control)["default/DEAD"]["failures"] == \
                before["default/DEAD"]["failures"]
            assert daemon.proc.wait(timeout=15) == 0  # the old master: no client left
            # it removed neither the sockets' files nor the pidfile: the new master's now
            assert os.path.exists(control) and os.path.exists(where / "policy")
            assert Path(pidfile).read_text() == f"{new_master}\n"
            assert ask_unix(daemon) == "action=DUNNO\n\n"
            assert daemon.stop() == 0
        assert not os.path.exists(control) and not os.path.exists(where / "policy")
        assert not os.path.exists(pidfile)


def ask_unix(daemon: Daemon, **attrs: str) -> str:
    sock = daemon.connect()
    with PolicyClient.from_socket(sock) as client:
        return client.ask(request(**attrs))


def test_usr2_is_the_masters_alone_and_one_upgrade_runs_at_a_time():
    with FakeBackend(action="OK") as backend, Daemon(
            "-s", f"A={HOST}:{backend.port}", workers=2) as daemon:
        master, workers = daemon.pid, daemon.wait_ready()
        monitor = daemon.monitor()
        for pid in [*workers, monitor] if monitor else workers:
            os.kill(pid, signal.SIGUSR2)  # what `systemctl kill -s USR2` does without whom=main
        time.sleep(0.3)
        assert all(alive(pid) for pid in workers) and daemon.pid == master
        assert "upgrade" not in daemon.log.text()
        with PolicyClient(HOST, daemon.port) as client:  # keeps an old worker, and its master
            assert client.ask(request()) == "action=OK\n\n"
            daemon.send(signal.SIGUSR2)
            _, line = daemon.log.wait("upgrade: started the new program as pid ")
            started = int(line.split(" as pid ")[1].split()[0])
            daemon.send(signal.SIGUSR2)  # while it starts (the first might be ready already)
            daemon.log.wait("upgrade ignored: ")
            assert daemon.upgraded() == started
            assert len(daemon.log.matching("upgrade: started the new program")) == 1
            os.kill(master, signal.SIGUSR2)  # the old master, which retires
            _, line = daemon.log.wait("upgrade ignored: ", count=2)
            assert line.endswith("upgrade ignored: this old master retires")
            assert client.ask(request()) == "action=OK\n\n"
        assert daemon.proc.wait(timeout=15) == 0
        assert ask_once(daemon) == "action=OK\n\n"
        assert daemon.stop() == 0


def test_term_while_the_new_program_starts_stops_both_and_the_old_master_cleans_up():
    where = short_tmpdir()
    tree = package_copy(where)
    listen, control = where / "policy", where / "control"
    with FakeBackend(action="OK") as backend, Daemon(
            "-s", f"A={HOST}:{backend.port}", "--control", str(control), workers=2,
            listen=f"unix:{listen}", cwd=tree, env={"PYTHONPATH": str(tree)}) as daemon:
        cli = tree / "hapolicy" / "cli.py"
        cli.write_text(cli.read_text() + "\nimport time\ntime.sleep(3)\n")  # a slow start
        daemon.send(signal.SIGUSR2)
        _, line = daemon.log.wait("upgrade: started the new program as pid ")
        new = int(line.split(" as pid ")[1].split()[0])
        daemon.send(signal.SIGTERM)
        daemon.log.wait("upgrade abandoned: the new master stops too")
        assert daemon.wait() == 0
        wait_for(lambda: not alive(new), 10, what="the new program to stop")
        assert "upgrade: new master" not in daemon.log.text()
        assert not listen.exists() and not control.exists()  # the old master's, removed
