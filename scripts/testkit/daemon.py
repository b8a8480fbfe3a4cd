"""The real daemon, `hapolicy --listen ...`, as a subprocess of a test or a script.

:class:`Daemon` runs ``python -m hapolicy`` (cwd = the repository), collects its log lines
from a private syslog socket (:class:`testkit.syslog.SyslogReceiver`) and reads its workers
from /proc. After :meth:`Daemon.upgrade` (USR2) its master is the new one, which is no child
of the test: it is waited for through /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from testkit.ports import HOST, free_port
from testkit.processes import alive, children, cmdline, monitor_of, workers_of
from testkit.repo import REPO, command, hapolicy_env
from testkit.syslog import SyslogReceiver
from testkit.wait import wait_for

if TYPE_CHECKING:
    from typing_extensions import Self


def short_tmpdir() -> Path:
    """A private directory with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))


class Daemon:
    """`hapolicy --listen ...` as a subprocess; use as a context manager.

    Its stdout and stderr are pipes read by :meth:`wait`, or with *output* one file both
    go to (a long run that never reads a pipe must not block on it). With *new_session* it
    runs in a session of its own (a terminal's Ctrl-C does not reach it). ``pids`` holds
    the workers found ready by :meth:`start`.
    """

    def __init__(self, *args: str, workers: int = 2, listen: str | None = None,
                 env: dict | None = None, output: str | Path | None = None,
                 new_session: bool = False, cwd: str | Path = REPO) -> None:
        self.dir = short_tmpdir()
        self.cwd = cwd
        self.masters: list[int] = []  # the new masters of upgrades, the last one current
        self.output = output
        self.new_session = new_session
        self.pids: list[int] = []
        self.port = 0
        if listen is None:  # a free port; "" for the listen addresses of a config file
            self.port = free_port()
            listen = f"{HOST}:{self.port}"
        self.listen = listen
        self.workers = workers
        self.args = list(args)
        self.env = env
        self.log: SyslogReceiver | None = None
        self.proc: subprocess.Popen | None = None
        self.stdout = self.stderr = ""

    def argv(self) -> list[str]:
        listen = ["--listen", self.listen] if self.listen else []  # "": the config file's
        return command([*listen, "--workers", str(self.workers),
                        "--syslog-socket", self.log.path, *self.args])

    def start(self, wait: bool = True, timeout: float = 15.0) -> Daemon:
        """Start it; with *wait*, return once its workers are ready (see :meth:`wait_ready`)."""
        self.log = SyslogReceiver(self.dir / "log.sock")
        env = hapolicy_env()
        env.update(self.env or {})
        if self.output is None:
            self.proc = subprocess.Popen(self.argv(), cwd=self.cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE,
                                         start_new_session=self.new_session)
        else:
            with open(self.output, "wb") as out:
                self.proc = subprocess.Popen(self.argv(), cwd=self.cwd, env=env,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             start_new_session=self.new_session)
        if wait:
            try:
                self.pids = self.wait_ready(timeout)
            except BaseException:
                self.close()
                raise
        return self

    @property
    def pid(self) -> int:
        """The master's: the last upgrade's new master, else the process started."""
        return self.masters[-1] if self.masters else self.proc.pid

    def upgrade(self, timeout: float = 30.0) -> int:
        """USR2 to the master; once the new master serves, it is this daemon's master (pid,
        send, workers_now and stop act on it). Returns its pid."""
        seen = len(self.log.matching("upgrade: new master"))
        os.kill(self.pid, signal.SIGUSR2)
        return self.upgraded(seen + 1, timeout)

    def upgraded(self, count: int = 1, timeout: float = 30.0) -> int:
        """Wait for the count-th `upgrade: new master N serves` line: N becomes this daemon's
        master (a USR2 the test sent itself)."""
        _, line = self.log.wait("upgrade: new master", count=count, timeout=timeout)
        self.masters.append(int(line.split("upgrade: new master ")[1].split()[0]))
        return self.masters[-1]

    def workers_now(self) -> list[int]:
        """The master's live workers now (its children but the monitor)."""
        return workers_of(self.pid)

    def monitor(self) -> int:
        """The pid of the monitor now, 0 when none runs."""
        return monitor_of(self.pid)

    def output_text(self) -> str:
        """What it wrote on stderr (and, with *output*, on stdout) so far or in all."""
        if self.output is None:
            return self.stderr
        try:
            with open(self.output, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 15.0) -> list[int]:
        """Until `workers` workers run their loop (their title is set) and accept."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"hapolicy exited with {self.proc.returncode}: "
                                     f"{self._early_output()}\n{self.log.text()}")
            pids = self.workers_now()
            if len(pids) == self.workers and all(
                    cmdline(p).startswith("hapolicy: worker") for p in pids):
                return pids
            return None

        pids = wait_for(ready, timeout, what="the workers")
        return pids

    def _early_output(self) -> str:
        if self.proc.stderr is not None:
            return self.proc.stderr.read().decode(errors="replace")
        return self.output_text()

    def connect(self, timeout: float = 5.0) -> socket.socket:
        if self.port:
            return socket.create_connection((HOST, self.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.listen[5:])
        return sock

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the master, wait for it; returns its exit status; collects its output."""
        if self.proc is None:
            return 0
        for pid in self.masters:  # the new masters first: they are no children of ours
            if alive(pid):
                os.kill(pid, signum)
        for pid in self.masters:
            wait_for(lambda pid=pid: not alive(pid), timeout, what=f"master {pid} to exit")
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the master to exit; returns its exit status; collects its output."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"hapolicy did not stop within {timeout}s") from None
        if self.output is None:
            self.stdout, self.stderr = out.decode(errors="replace"), err.decode(errors="replace")
        return self.proc.returncode

    def assert_clean_output(self) -> None:
        """Nothing on stdout; no traceback anywhere."""
        assert self.stdout == "", self.stdout
        assert "Traceback" not in self.stderr, self.stderr
        assert "Traceback" not in self.log.text()
        assert "internal error" not in self.log.text(), self.log.text()

    def close(self) -> None:
        for master in self.masters:
            for pid in [master, *children(master)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None and self.proc.poll() is None:
            pids = children(self.proc.pid)
            self.proc.kill()
            self.proc.communicate()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
