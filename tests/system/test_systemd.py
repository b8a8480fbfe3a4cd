"""The daemon under systemd's protocols, without systemd: Type=notify (a NOTIFY_SOCKET datagram
socket of the test), socket activation (systemd-socket-activate), and the unit files
(systemd-analyze verify)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.daemon import Daemon, short_tmpdir
from testkit.ports import HOST, free_port
from testkit.processes import workers_of
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, command, hapolicy_env
from testkit.syslog import SyslogReceiver
from testkit.wait import wait_for

ACTIVATE = "/usr/bin/systemd-socket-activate"
ANALYZE = "/usr/bin/systemd-analyze"


class NotifyReceiver:
    """A unix datagram socket in a private directory: every datagram, with its arrival time,
    and the pid that sent it (SCM_CREDENTIALS, as systemd reads it)."""

    def __init__(self) -> None:
        self.dir = short_tmpdir()
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self.senders: list[int] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = next((int.from_bytes(cdata[:4], "little") for level, kind, cdata in ancillary
                        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)), 0)
            self.senders.append(pid)
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [text for _, text in list(self.messages)]

    def wait(self, line: str, after: int = 0, timeout: float = 10.0) -> int:
        """The index of the first message from *after* on that has *line*."""
        def found():
            texts = self.texts()
            return next((i for i in range(after, len(texts))
                         if line in texts[i].splitlines()), None)
        return wait_for(found, timeout, what=f"{line!r} on NOTIFY_SOCKET: {self.texts()}")

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()


def test_notify_ready_reloading_stopping_status_and_watchdog():
    notify = NotifyReceiver()
    conf = notify.dir / "hapolicy.conf"
    try:
        with FakeBackend(mode="echo", attr="recipient") as echo:
            conf.write_text(f"service = A={HOST}:{echo.port}\ndefault = dunno\n")
            env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}
            with Daemon("-c", str(conf), workers=2, env=env) as daemon:
                ready = notify.wait("READY=1")
                assert any(t.startswith("STATUS=workers ") for t in notify.texts()[:ready + 1])
                notify.wait("STATUS=workers 2, services up 1 of 1")
                time.sleep(0.6)
                beats = [when for when, text in notify.messages if text == "WATCHDOG=1\n"]
                assert len(beats) >= 4, notify.texts()
                assert max(b - a for a, b in zip(beats, beats[1:])) < 0.5

                daemon.send(signal.SIGHUP)
                reloading = notify.wait("RELOADING=1", ready + 1)
                lines = notify.texts()[reloading].splitlines()
                usec = int(next(line for line in lines if line.startswith("MONOTONIC_USEC="))
                           .partition("=")[2])
                assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5
                notify.wait("READY=1", reloading + 1)
                daemon.log.wait_text("reloaded:")

                assert daemon.stop() == 0
                notify.wait("STOPPING=1", reloading + 1)
                daemon.assert_clean_output()
                assert "cannot notify" not in daemon.log.text()
    finally:
        notify.close()


def test_an_upgrade_says_the_new_main_pid_with_its_ready_and_the_old_master_falls_silent():
    notify = NotifyReceiver()
    try:
        with FakeBackend(action="OK") as backend, Daemon(
                "-s", f"A={HOST}:{backend.port}", workers=2,
                env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}) as daemon:
            old = daemon.pid
            ready = notify.wait("READY=1")
            with PolicyClient(HOST, daemon.port) as client:  # keeps the old master a while
                assert client.ask(request()) == "action=OK\n\n"
                new = daemon.upgrade()  # returns once the old master handed over
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mark:
                    mark.sendto(b"HANDED=1\n", notify.path)  # after the old one's last word
                handed = notify.wait("HANDED=1")
                time.sleep(0.6)
                assert set(notify.senders[handed + 1:]) == {new}, notify.texts()
                assert notify.texts()[handed + 1:].count("WATCHDOG=1\n") >= 2
            reloading = notify.wait("RELOADING=1", ready + 1)
            assert notify.senders[reloading] == old
            took = notify.wait(f"MAINPID={new}", reloading + 1)
            assert notify.texts()[took].splitlines()[:2] == [f"MAINPID={new}", "READY=1"]
            assert notify.senders[took] == new
            assert daemon.proc.wait(timeout=15) == 0  # its client gone, the old master leaves
            assert not any("STOPPING=1" in text for text in notify.texts())
            assert daemon.stop() == 0
            stopping = notify.wait("STOPPING=1", took + 1)
            assert notify.senders[stopping] == new
    finally:
        notify.close()


def test_a_missing_notify_socket_is_logged_once_and_ignored():
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "200000"}
    with Daemon("-s", f"A={HOST}:1", env=env) as d:
        time.sleep(0.5)
        assert d.stop() == 0
        d.assert_clean_output()
        lines = [line for line in d.log.text().splitlines() if "cannot notify" in line]
        assert len(lines) == 1, lines
        assert "cannot notify systemd at /nonexistent/notify: " in lines[0]


def activate(*args: str, listen: list[str], env: dict | None = None) -> list[str]:
    """The argv of systemd-socket-activate listening on *listen*, then hapolicy ARGS."""
    argv = [ACTIVATE]
    for address in listen:
        argv += ["-l", address]
    for key, value in (env or {}).items():
        argv += ["-E", f"{key}={value}"]
    return [*argv, *command(args)]


def trigger(port: int, proc: subprocess.Popen) -> PolicyClient:
    """Connect to the port systemd-socket-activate listens on: it starts hapolicy then."""
    def connected():
        assert proc.poll() is None, proc.communicate()
        try:
            return PolicyClient(HOST, port)
        except ConnectionRefusedError:
            return None
    return wait_for(connected, 10, what="systemd-socket-activate to listen")


def test_socket_activation_answers_on_the_passed_socket_and_binds_the_others():
    port, other = free_port(), free_port()
    unix_dir = short_tmpdir()
    path = str(unix_dir / "policy")
    log = SyslogReceiver(unix_dir / "log")
    with FakeBackend(mode="echo", attr="recipient") as echo:
        argv = activate("--listen", f"{HOST}:{port},unix:{path},{HOST}:{other}", "--workers", "2",
                        "-s", f"A={HOST}:{echo.port}", "-d", "dunno",
                        "--syslog-socket", log.path,
                        listen=[f"{HOST}:{port}", path], env={"PYTHONPATH": str(REPO)})
        proc = subprocess.Popen(argv, cwd=REPO, env=hapolicy_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = trigger(port, proc)
            assert first.ask(request(recipient="first@x"), timeout=15) == "action=first@x\n\n"
            first.close()
            log.wait_text("socket activation: listening on the sockets passed by systemd for "
                          f"{HOST}:{port}, unix:{path}")
            wait_for(lambda: len(workers_of(proc.pid)) == 2, 10, what="the workers")
            for target in ((HOST, port), (HOST, other)):
                with PolicyClient(*target) as client:
                    assert client.ask(request(recipient="a@x")) == "action=a@x\n\n"
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
                client = PolicyClient.from_socket(sock)
                assert client.ask(request(recipient="u@x")) == "action=u@x\n\n"
            proc.send_signal(signal.SIGHUP)
            log.wait_text("reloaded:")
            with PolicyClient(HOST, port) as client:
                assert client.ask(request(recipient="b@x")) == "action=b@x\n\n"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            assert b"Traceback" not in err
            assert os.path.exists(path)  # systemd's socket: not removed at exit
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            log.close()
    shutil.rmtree(unix_dir, ignore_errors=True)


def test_a_passed_socket_matching_no_listen_address_is_an_error():
    port = free_port()
    argv = activate("--listen", f"{HOST}:{free_port()}", "-s", f"A={HOST}:1", "--stdout",
                    listen=[f"{HOST}:{port}"], env={"PYTHONPATH": str(REPO)})
    proc = subprocess.Popen(argv, cwd=REPO, env=hapolicy_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        trigger(port, proc).close()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("hapolicy")]
    assert len(lines) == 1, err
    assert f"socket passed by systemd on {HOST}:{port} matches no listen address" in lines[0]


def test_garbage_in_listen_fds_is_one_line_and_status_2():
    env = {**hapolicy_env(), "LISTEN_FDS": "lots"}
    done = subprocess.run([*command(["--listen", f"{HOST}:{free_port()}", "-s", f"A={HOST}:1"]),
                           "--stdout"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "LISTEN_FDS 'lots': expected a number of sockets from 1 to 1024" in lines[0]


def verify_units(directory: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify of hapolicy.socket and hapolicy.service in *directory*: its exit
    status, and the lines it said about them (an unknown key or a bad value is only a warning)."""
    units = [str(directory / "hapolicy.socket"), str(directory / "hapolicy.service")]
    done = subprocess.run([ANALYZE, "verify", "--man=no", *units], cwd=directory,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    said = [line for line in (done.stdout + done.stderr).splitlines() if "hapolicy" in line]
    return done.returncode, said


def test_systemd_analyze_verifies_both_units():
    """The units as shipped, with ExecStart's binary (not installed here) an existing one."""
    directory = short_tmpdir()
    try:
        for name in ("hapolicy.service", "hapolicy.socket"):
            text = (REPO / "scripts" / name).read_text()
            (directory / name).write_text(text.replace("/usr/local/bin/hapolicy", "/bin/true"))
        assert "Type=notify" in (directory / "hapolicy.service").read_text()
        assert "--daemonize" not in (directory / "hapolicy.service").read_text()
        assert verify_units(directory) == (0, [])
        # and it would tell: a misspelt key in the socket unit
        sock = directory / "hapolicy.socket"
        sock.write_text(sock.read_text().replace("Backlog=", "Backlogg="))
        status, said = verify_units(directory)
        assert any("Unknown key" in line and "Backlogg" in line for line in said), said
    finally:
        shutil.rmtree(directory, ignore_errors=True)
