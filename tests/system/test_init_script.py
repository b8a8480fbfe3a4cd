"""scripts/hapolicy.init with start-stop-daemon: start, status, reload (HUP), stop, the pidfile,
and upgrade (USR2: the upgrade in place, under load, failed, and under systemd).

The defaults file (HAPOLICY_DEFAULTS) points DAEMON at a wrapper that runs this checkout with
this interpreter (a pyenv `hapolicy` shim would not do: start-stop-daemon needs the real
program); the daemon runs with --daemonize, as the script starts it, workers as nobody.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import short_tmpdir
from testkit.load import Load
from testkit.ports import HOST, free_port
from testkit.processes import alive, children, cmdline, wait_children, workers_of
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO
from testkit.syslog import SyslogReceiver
from testkit.wait import wait_for

SCRIPT = REPO / "scripts" / "hapolicy.init"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="init scripts run as root"),
    pytest.mark.skipif(shutil.which("start-stop-daemon") is None and
                       not os.path.exists("/sbin/start-stop-daemon"),
                       reason="needs start-stop-daemon (dpkg)"),
]


class Init:
    def __init__(self, backend_port: int) -> None:
        self.dir = short_tmpdir()
        self.dir.chmod(0o755)
        self.log = SyslogReceiver(self.dir / "log.sock")
        self.masters: list[int] = []  # every pid the pidfile named: cleanup's
        self.port = free_port()
        self.pidfile = self.dir / "hapolicy.pid"
        self.config = self.dir / "hapolicy.conf"
        self.write_config(backend_port, "FIRST")
        wrapper = self.dir / "hapolicy"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO}\nexport PYTHONPATH\n"
                           f'exec {sys.executable} -m hapolicy "$@"\n')
        wrapper.chmod(0o755)
        self.defaults = self.dir / "defaults"
        self.defaults.write_text(
            f"DAEMON={wrapper}\nCONFIG={self.config}\nPIDFILE={self.pidfile}\n"
            f"RUNDIR={self.dir / 'run'}\n"
            f'DAEMON_ARGS="--user nobody --group nogroup --workers 2 '
            f'--syslog-socket {self.log.path}"\nSTOP_TIMEOUT=10\n')

    def write_config(self, backend_port: int, default: str, extra: str = "") -> None:
        self.config.write_text(f"listen = {HOST}:{self.port}\n"
                               f"service = A={HOST}:{backend_port}\n"
                               f"default = {default}\n{extra}")

    def run(self, action: str, script: Path = SCRIPT) -> subprocess.CompletedProcess:
        env = dict(os.environ, HAPOLICY_DEFAULTS=str(self.defaults))
        return subprocess.run(["sh", str(script), action], check=False, env=env,
                              capture_output=True, text=True, timeout=90, cwd="/")

    def pid(self) -> int:
        pid = int(self.pidfile.read_text())
        if pid not in self.masters:
            self.masters.append(pid)
        return pid

    def ask(self) -> str:
        with PolicyClient(HOST, self.port) as client:
            return client.ask(request())

    def cleanup(self) -> None:
        try:
            self.pid()
        except (OSError, ValueError):
            pass
        for pid in self.masters:  # an upgrade's old master too, if a test failed before its end
            if alive(pid) and cmdline(pid).startswith("hapolicy:"):
                for child in children(pid):
                    os.kill(child, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def init():
    with FakeBackend(action="FROM-A") as backend:
        setup = Init(backend.port)
        setup.backend = backend
        yield setup
        setup.cleanup()


def test_start_status_reload_stop(init):
    done = init.run("start")
    assert done.returncode == 0, done.stdout + done.stderr
    pid = init.pid()  # the daemon wrote it before the script returned
    assert alive(pid) and cmdline(pid) == "hapolicy: master"
    workers = wait_children(pid, 2)
    assert init.ask() == "action=FROM-A\n\n"

    done = init.run("status")
    assert done.returncode == 0
    assert f"hapolicy is running (pid {pid})" in done.stdout

    # start again: already running, nothing new started
    done = init.run("start")
    assert done.returncode == 0, done.stdout + done.stderr
    assert init.pid() == pid
    assert sorted(workers_of(pid)) == sorted(workers)

    # reload: the service is gone from the new file, the default answers
    init.write_config(1, "DEFER reloaded")
    done = init.run("reload")
    assert done.returncode == 0, done.stdout + done.stderr
    init.log.wait("reloaded")
    wait_for(lambda: init.ask() == "action=DEFER reloaded\n\n", 10)
    assert init.pid() == pid

    # a broken file: reload refuses, the daemon keeps running the last good one
    init.config.write_text(init.config.read_text() + "bogus = 1\n")
    done = init.run("reload")
    assert done.returncode == 1
    assert "unknown setting 'bogus'" in done.stderr
    assert alive(pid) and init.ask() == "action=DEFER reloaded\n\n"
    init.write_config(1, "DEFER reloaded")

    done = init.run("stop")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not alive(pid)
    assert not any(alive(w) for w in children(pid))
    assert not init.pidfile.exists()
    done = init.run("status")
    assert done.returncode == 3
    assert "hapolicy is not running" in done.stdout
    assert "Traceback" not in init.log.text()

    # stop when stopped is fine; reload when stopped says so
    assert init.run("stop").returncode == 0
    assert init.run("reload").returncode == 7


def test_stale_pidfile_does_not_block_start(init):
    dead = subprocess.Popen(["true"])
    dead.wait()
    init.pidfile.write_text(f"{dead.pid}\n")
    assert init.run("status").returncode == 1  # dead, with a pidfile
    done = init.run("start")
    assert done.returncode == 0, done.stdout + done.stderr
    pid = init.pid()
    assert pid != dead.pid and alive(pid)
    assert init.ask() == "action=FROM-A\n\n"
    done = init.run("restart")
    assert done.returncode == 0, done.stdout + done.stderr
    new = init.pid()
    assert new != pid and not alive(pid)
    assert init.ask() == "action=FROM-A\n\n"
    assert init.run("stop").returncode == 0
    assert not alive(new)


def test_without_a_service_start_and_restart_do_nothing_and_succeed(init):
    # the Debian package's /etc/hapolicy.conf until the postmaster configures it: the
    # postinst's start (restart on an upgrade) must neither fail nor start anything
    init.config.write_text(f"listen = {HOST}:{init.port}\n#service = A={HOST}:1\n"
                           "[pool x]\n# service = B=127.0.0.1:2\n")
    for action in ("start", "restart"):
        done = init.run(action)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == f"hapolicy: not starting: no service in {init.config} yet " \
                              "(see hapolicy.conf(5))\n"
        assert not init.pidfile.exists()
    # configured, it starts (and makes its RUNDIR); unconfigured again, restart stops it
    init.write_config(init.backend.port, "dunno")
    assert init.run("start").returncode == 0
    pid = init.pid()
    assert (init.dir / "run").is_dir()
    init.config.write_text(f"listen = {HOST}:{init.port}\n")
    done = init.run("restart")
    assert done.returncode == 0 and "not starting" in done.stdout, done.stdout + done.stderr
    wait_for(lambda: not alive(pid), 10, what="the daemon stopped")
    assert not init.pidfile.exists()


def test_upgrade_refuses_what_it_cannot_upgrade(init):
    done = init.run("upgrade")
    assert (done.returncode, done.stdout) == (7, "hapolicy is not running: nothing to upgrade\n")
    # the pidfile names another program (a pid reused), or a master that does not handle
    # SIGUSR2 (an older hapolicy), which the signal would kill: neither gets it
    other = subprocess.Popen(["sleep", "60"])
    older = subprocess.Popen([sys.executable, "-c", "import setproctitle, time; "
                              "setproctitle.setproctitle('hapolicy: master'); time.sleep(60)"])
    try:
        wait_for(lambda: cmdline(older.pid) == "hapolicy: master", 10, what="its title")
        for proc, said in ((other, f"pid {other.pid} is not a hapolicy master"),
                           (older, f"the running master (pid {older.pid}) cannot upgrade in "
                                   "place: restart it")):
            init.pidfile.write_text(f"{proc.pid}\n")
            done = init.run("upgrade")
            assert done.returncode == 1, done.stdout + done.stderr
            assert said in done.stderr and done.stdout == "", done.stderr
            assert proc.poll() is None
    finally:
        for proc in (other, older):
            proc.kill()
            proc.wait()


def test_upgrade_in_place_while_clients_keep_asking(init):
    with FakeBackend(mode="echo", attr="recipient") as echo:
        init.write_config(echo.port, "dunno")
        assert init.run("start").returncode == 0
        old = init.pid()
        old_workers = wait_children(old, 2)
        load = Load([socket.create_connection((HOST, init.port)) for _ in range(20)], 0,
                    name="U").start()
        wait_for(lambda: load.answered > 100, 10, what="answers before the upgrade")

        done = init.run("upgrade")
        assert done.returncode == 0, done.stdout + done.stderr + init.log.text()
        new = init.pid()
        assert done.stdout == f"hapolicy: upgraded in place: the new master (pid {new}) " \
                              f"serves; the old one (pid {old}) leaves once its clients have\n"
        assert new != old and alive(new) and cmdline(new) == "hapolicy: master"
        # it returned once the old master handed over (the new one lived a second more)
        assert cmdline(old) == "hapolicy: old master (retiring)"
        init.log.wait(f"upgrade: new master {new} serves")
        # new connections: the new master's workers; the old ones keep their clients
        assert not set(wait_children(new, 2)) & set(old_workers)
        with PolicyClient(HOST, init.port) as client:
            assert client.ask(request(recipient="new@example.org")) == \
                "action=new@example.org\n\n"
        load.finish_after(100)
        # the clients leave: so does the old master, which left the pidfile to the new one
        load.close()
        wait_for(lambda: not alive(old) and not any(alive(w) for w in old_workers), 20,
                 what="the old master gone with its clients")
        done = init.run("status")
        assert (done.returncode, done.stdout) == (0, f"hapolicy is running (pid {new})\n")
        assert init.run("stop").returncode == 0
        assert not alive(new) and not init.pidfile.exists()
        assert "Traceback" not in init.log.text()


def systemd_stand_in(init: Init) -> Path:
    """The init script as under systemd (/run/systemd/system here a directory of the test),
    with a stand-in systemctl first on PATH that logs its arguments: the unit's MainPID is the
    pidfile's (a new master writes it as it tells systemd its pid; a rollback, the old one).
    While the file kill-new holds the old master's pid, the second answer that names another
    master kills that one: it dies after it said it serves, before the hand-over."""
    (init.dir / "systemd").mkdir()
    bin_dir = init.dir / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f"""#!/bin/sh
cd {init.dir}
echo "$*" >>systemctl.log
case "$*" in
    "--quiet is-active hapolicy.service") ;;
    "show --property MainPID --value hapolicy.service")
        pid=$(cat {init.pidfile})
        echo "$pid"
        if [ -f kill-new ] && [ "$pid" != "$(cat kill-new)" ]; then
            echo "$pid" >>named-new
            if [ "$(wc -l <named-new)" = 2 ]; then kill -KILL "$pid"; rm kill-new; fi
        fi ;;
    "kill --kill-whom=main --signal=USR2 hapolicy.service") kill -USR2 "$(cat {init.pidfile})" ;;
    *) exit 1 ;;
esac
""")
    systemctl.chmod(0o755)
    script = init.dir / "hapolicy.init"
    text = SCRIPT.read_text()
    assert text.count("/run/systemd/system") == 1 and text.count("\nPATH=") == 1
    script.write_text(text.replace("/run/systemd/system", str(init.dir / "systemd"))
                      .replace("\nPATH=", f"\nPATH={bin_dir}:"))
    return script


def test_a_failed_upgrade_leaves_the_master_serving_and_a_later_one_succeeds(init):
    assert init.run("start").returncode == 0
    pid = init.pid()
    wait_children(pid, 2)
    good = init.config.read_text()
    # a file --check-config refuses: not even tried, as a reload
    init.config.write_text(good + "bogus = 1\n")
    done = init.run("upgrade")
    assert done.returncode == 1 and done.stdout == "", done
    assert "unknown setting 'bogus'" in done.stderr and "not upgrading" in done.stderr
    # a new program that cannot start (the file adds an address someone holds): the master
    # tries, the new one fails, the master serves on
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        init.config.write_text(good.replace(
            f"listen = {HOST}:{init.port}\n",
            f"listen = {HOST}:{init.port} {HOST}:{taken.getsockname()[1]}\n"))
        done = init.run("upgrade")
    assert done.returncode == 1, done.stdout + done.stderr + init.log.text()
    assert done.stderr == "hapolicy: upgrade failed, the running master keeps serving: " \
                          "see the log\n" and done.stdout == ""
    init.log.wait("upgrade failed, the running master keeps serving")
    assert init.pid() == pid and cmdline(pid) == "hapolicy: master"
    assert init.ask() == "action=FROM-A\n\n"

    # as under systemd, through systemctl: a new master that dies in the second after it said
    # it serves (the script saw it named): the old one names itself again and serves on, and
    # the script waited for that
    init.config.write_text(good)
    script = systemd_stand_in(init)
    (init.dir / "kill-new").write_text(f"{pid}\n")
    done = init.run("upgrade", script)
    assert done.returncode == 1, done.stdout + done.stderr + init.log.text()
    assert done.stderr == "hapolicy: upgrade failed, the running master keeps serving: " \
                          "see the log\n" and done.stdout == ""
    died = int((init.dir / "named-new").read_text().split()[0])
    assert not (init.dir / "kill-new").exists() and not alive(died)
    init.log.wait("upgrade failed", count=2)
    assert init.pid() == pid and cmdline(pid) == "hapolicy: master"
    assert init.ask() == "action=FROM-A\n\n"

    # a later one succeeds
    (init.dir / "systemctl.log").unlink()
    done = init.run("upgrade", script)
    assert done.returncode == 0, done.stdout + done.stderr + init.log.text()
    new = init.pid()
    assert new != pid and f"the new master (pid {new}) serves" in done.stdout
    calls = (init.dir / "systemctl.log").read_text().splitlines()
    kill = "kill --kill-whom=main --signal=USR2 hapolicy.service"
    assert calls[:3] == ["--quiet is-active hapolicy.service",
                         "show --property MainPID --value hapolicy.service", kill], calls
    assert set(calls[3:]) == {"show --property MainPID --value hapolicy.service"}, calls
    # Debian 12's systemctl (systemd 252) takes these options (a unit that is nowhere)
    if shutil.which("systemctl"):
        done = subprocess.run(["systemctl", *kill.replace("hapolicy.service",
                                                          "hapolicy-test-none.service").split()],
                              capture_output=True, text=True, timeout=30, check=False)
        assert "unrecognized" not in done.stderr and "invalid" not in done.stderr, done.stderr
    wait_for(lambda: not alive(pid), 20, what="the old master gone (no clients)")
    assert init.ask() == "action=FROM-A\n\n"
    assert init.run("stop").returncode == 0
    assert not alive(new)


def test_start_with_a_broken_config_fails(init):
    init.write_config(init.backend.port, "dunno", "workers = none\n")
    done = init.run("start")
    assert done.returncode == 1
    assert "workers 'none' is not a whole number" in done.stderr
    assert not init.pidfile.exists()


UNIT = REPO / "scripts" / "hapolicy.service"


def _unit_commands() -> list[list[str]]:
    """The hapolicy command lines of the systemd unit (ExecStartPre, ExecStart, ExecReload)."""
    commands = []
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.startswith("Exec") and value.startswith("/usr/local/bin/hapolicy"):
            commands.append(value.split())
    return commands


def test_systemd_unit_commands_are_valid(init):
    commands = _unit_commands()
    assert len(commands) == 3
    for argv in commands:
        argv = [str(init.dir / "hapolicy")] + [
            str(init.config) if a == "/etc/hapolicy.conf" else
            str(init.pidfile) if a == "/run/hapolicy.pid" else a for a in argv[1:]]
        if "--check-config" not in argv:
            argv.append("--check-config")
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, (argv, done.stderr)
        assert f"listen = {HOST}:{init.port}" in done.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(init):
    unit = init.dir / "hapolicy.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hapolicy",
                                             str(init.dir / "hapolicy")))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
