"""The Perl original, Debian's /usr/sbin/hapolicy, run by the tests and by scripts/failover.py.

* :func:`require_original` -- the package is installed, or the test fails in CI (skips elsewhere).
* :func:`original_missing` -- why it cannot run here ('' when it can).
* :func:`syslog_shim` -- perl's options that point its syslog at a socket of ours.
* :class:`Perl` -- how to run it here: with a syslog socket of ours when /dev/log is absent.
* :class:`PerlConn` -- one spawn-style process whose stdin and stdout are our socketpair.
* :func:`wait_reading_stdin` -- until a process is blocked reading its stdin.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time

from testkit.packages import require_packages
from testkit.protocol import PolicyClient, action_of, request
from testkit.syslog import SyslogReceiver

PERL_HAPOLICY = "/usr/sbin/hapolicy"
PERL_SYSLOG_SHIM = """package MODULE;
use strict;
use Sys::Syslog ();
my $setlogsock = \\&Sys::Syslog::setlogsock;
{
    no warnings 'redefine';
    *Sys::Syslog::setlogsock = sub { $setlogsock->({type => 'unix', path => 'PATH'}) };
}
1;
"""
ASK_TIMEOUT = 45.0  # longer than any answer can take (30 s on a blackhole, then the next)


def require_original() -> None:
    """/usr/sbin/hapolicy is there; else the test fails in CI and is skipped elsewhere."""
    require_packages("hapolicy")
    assert os.access(PERL_HAPOLICY, os.X_OK), f"package hapolicy is there but {PERL_HAPOLICY} not"


def original_missing() -> str:
    """'' when /usr/sbin/hapolicy and perl are here, else why the original cannot run."""
    if not os.access(PERL_HAPOLICY, os.X_OK) or not shutil.which("perl"):
        return f"{PERL_HAPOLICY} not installed (apt-get install hapolicy)"
    return ""


def syslog_shim(tmp: str, socket_path: str, module: str = "FailoverSyslog") -> list[str]:
    """The start of the original's argv (perl and its options) that loads `module`, written to
    tmp, which points Sys::Syslog at the datagram socket socket_path: without /dev/log, the
    original's setlogsock('unix') fails at start."""
    with open(os.path.join(tmp, f"{module}.pm"), "w") as handle:
        handle.write(PERL_SYSLOG_SHIM.replace("MODULE", module).replace("PATH", socket_path))
    perl = shutil.which("perl") or "/usr/bin/perl"
    return [perl, "-T", "-w", "-I" + tmp, f"-M{module}"]


class Perl:
    """How to run /usr/sbin/hapolicy here (with a syslog socket of ours when /dev/log is absent)."""

    def __init__(self, tmp: str, enabled: bool) -> None:
        self.missing = ""
        self.note = ""
        self.log: SyslogReceiver | None = None
        self.prefix: list[str] = []
        if not enabled:
            self.missing = "--no-perl"
        elif original_missing():
            self.missing = original_missing()
        elif not os.path.exists("/dev/log"):
            # Without /dev/log its setlogsock('unix') fails; give it a syslog socket of ours
            # through a module loaded before the script (as scripts/benchkit/servers.py does).
            self.log = SyslogReceiver(os.path.join(tmp, "perl.log.sock"))
            self.prefix = syslog_shim(tmp, self.log.path)
            self.note = "no /dev/log here: its syslog goes to a socket of this script"

    def argv(self, services: list[str], options: tuple[str, ...] = ()) -> list[str]:
        args = [*options, *(a for s in services for a in ("-s", s))]
        return [*self.prefix, PERL_HAPOLICY, *args]

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class PerlConn:
    """One spawn-style process of the Perl original: its stdin and stdout are our socketpair."""

    def __init__(self, argv: list[str]) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.client = PolicyClient.from_socket(ours)
        self.ready = wait_reading_stdin(self.proc)

    def ask(self, attrs: dict[str, str] | None = None,
            timeout: float = ASK_TIMEOUT) -> tuple[str, float]:
        """One request (:func:`request` with attrs): (its action, seconds to the answer)."""
        begin = time.monotonic()
        answer = self.client.ask(request(**(attrs or {})), timeout=timeout)
        return action_of(answer), time.monotonic() - begin

    def close(self) -> None:
        self.client.close()  # EOF on its stdin: it exits
        try:
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # still waiting for a backend
            self.proc.wait(5.0)


def wait_reading_stdin(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    """Until the process is blocked reading its stdin (it has compiled and started its loop)."""
    read_stdin = "0 0x0 " if platform.machine() == "x86_64" else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for path, ok in ((f"/proc/{proc.pid}/wchan", lambda s: "unix_stream_read" in s),
                         (f"/proc/{proc.pid}/syscall",
                          lambda s: read_stdin is not None and s.startswith(read_stdin))):
            try:
                with open(path) as handle:
                    if ok(handle.read()):
                        return True
            except OSError:
                pass
        time.sleep(0.005)
    if proc.poll() is None:
        time.sleep(0.5)  # /proc tells nothing here: give it time to start
    return False
