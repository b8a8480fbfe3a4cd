"""--daemonize as root with --user nobody: the parent returns once the pidfile is written,
the workers run as nobody, the master stays root; a relative -c FILE still reloads on HUP.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import short_tmpdir
from testkit.ports import HOST, free_port
from testkit.processes import alive, cmdline, uid_of, wait_children
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, run_hapolicy
from testkit.syslog import SyslogReceiver
from testkit.wait import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


def start(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = run_hapolicy(argv, cwd=cwd)
    assert time.monotonic() - started < 10
    return done


def stop(pid: int, pidfile: Path) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 15, what="the daemon to stop")
    assert not pidfile.exists()


def ask(port: int) -> str:
    with PolicyClient(HOST, port) as client:
        return client.ask(request())


def test_daemonize_as_root_with_workers_as_nobody():
    workdir = short_tmpdir()
    log = SyslogReceiver(workdir / "log.sock")
    pidfile = workdir / "hapolicy.pid"
    port = free_port()
    nobody = pwd.getpwnam("nobody").pw_uid
    try:
        with FakeBackend(action="OK") as backend:
            # a host name, not an address: the workers resolve it after the privilege drop
            argv = ["--listen", f"{HOST}:{port}", "--daemonize", "--pidfile", str(pidfile),
                    "--user", "nobody", "--workers", "2", "--syslog-socket", log.path,
                    "-s", f"A=localhost:{backend.port}"]
            done = start(argv, REPO)
            assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
            pid = int(pidfile.read_text())  # written before the parent returned
            assert alive(pid)
            assert cmdline(pid) == "hapolicy: master"
            assert uid_of(pid) == 0
            workers = wait_children(pid, 2)
            for worker in workers:
                wait_for(lambda w=worker: cmdline(w).startswith("hapolicy: worker"), 5)
                assert uid_of(worker) == nobody
            for _ in range(3):
                assert ask(port) == "action=OK\n\n"
            # a second one is refused: the pidfile names a live hapolicy
            again = start(argv, REPO)
            assert again.returncode == 2
            assert f"hapolicy is already running as pid {pid}" in again.stderr
            assert int(pidfile.read_text()) == pid
            stop(pid, pidfile)
            assert not any(alive(w) for w in workers)
            assert "Traceback" not in log.text() and "internal error" not in log.text()
    finally:
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_daemonized_reload_reads_a_relative_config_file():
    workdir = short_tmpdir()
    log = SyslogReceiver(workdir / "log.sock")
    pidfile = workdir / "hapolicy.pid"
    port = free_port()
    conf = workdir / "relative.conf"
    try:
        with FakeBackend(action="FIRST") as first, FakeBackend(action="SECOND") as second:
            conf.write_text(f"service = A={HOST}:{first.port}\n")
            done = start(["-c", "relative.conf", "--listen", f"{HOST}:{port}", "--daemonize",
                          "--pidfile", str(pidfile), "--workers", "1",
                          "--syslog-socket", log.path], workdir)
            assert done.returncode == 0, done.stderr
            pid = int(pidfile.read_text())
            assert ask(port) == "action=FIRST\n\n"
            conf.write_text(f"service = B={HOST}:{second.port}\n")
            os.kill(pid, signal.SIGHUP)
            log.wait("reloaded")
            wait_for(lambda: ask(port) == "action=SECOND\n\n", 10)
            stop(pid, pidfile)
    finally:
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_daemonize_reports_failure_in_the_exit_status(tmp_path: Path):
    missing = tmp_path / "no" / "such" / "dir" / "hapolicy.pid"
    done = start(["--listen", f"{HOST}:{free_port()}", "--daemonize", "--pidfile",
                  str(missing), "-s", "A=127.0.0.1:1", "--syslog-socket", ""], REPO)
    assert done.returncode == 1
    assert done.stderr.startswith(f"hapolicy: error: cannot write pidfile {missing}")
