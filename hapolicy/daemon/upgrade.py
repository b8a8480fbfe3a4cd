"""The old master's side of an upgrade in place (SIGUSR2): start the program on disk with every
listening socket (handover.py), follow what it says, and give the master the outcome: the new
master serves (the master hands over: its workers retire), or it failed (the master keeps
serving: the rollback).

`Upgrade.start` runs the command that started this program (`program`: the script itself when
it is one, so that its first line picks the interpreter the new install wants; otherwise the
interpreter with its original arguments, `python3 -m hapolicy ...`) in the directory the
master started in, with HAPOLICY_UPGRADE and without WATCHDOG_PID (the new master sends
systemd's watchdog from its own pid once it is the main one). Its standard error is a pipe the
upgrade reads (the last MAX_WHY bytes kept), its status another. The outcome is SERVING once
the new master said so and has lived SETTLE_SECONDS more (meanwhile both masters' workers
accept); FAILING when it said why, exited before the master handed over (also after it said
it serves: the master's reap says `exited`), or did not serve within UPGRADE_TIMEOUT (it is
killed); HANDED once the master handed over, after which its exit is none of the upgrade's
business. The new master is the old one's child: the
master's reap gives its exit status here, which sets the Popen's return code too, so that
subprocess never waits for that pid again (it may be a worker's by then).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from hapolicy.base.eventloop import EVENT_READ
from hapolicy.daemon.handover import ENVIRONMENT, FAILED, MAX_WHY, READY, write_document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.base.eventloop import EventLoop

STARTING, SERVING, FAILING, HANDED = "starting", "serving", "failed", "handed over"
UPGRADE_TIMEOUT = 60.0  # seconds for the new program to start and have a worker accept
SETTLE_SECONDS = 1.0  # the new master lives this long after it said it serves: a crash at once
#                       after its first accept (a bad turn of its loop) is a rollback


def program() -> list[str]:
    """The command that starts this program again from disk, with its arguments."""
    script = sys.argv[0]
    if (script and os.path.basename(script) != "__main__.py" and os.path.isfile(script)
            and os.access(script, os.X_OK)):
        return [script, *sys.argv[1:]]
    return [sys.executable, *sys.orig_argv[1:]]


class Upgrade:
    """One upgrade under way or decided: the new master's pid, what it said, the outcome."""

    def __init__(self, proc: subprocess.Popen, status: int, stderr: int, deadline: float,
                 loop: EventLoop) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.status = status  # our ends of the pipes, -1 once at end of file
        self.stderr = stderr
        self.deadline = deadline
        self.loop = loop
        self.outcome = STARTING
        self.announced = False  # it said it serves: it wrote the pidfile, told systemd
        self.settled_at = 0.0  # monotonic: when it has lived long enough after that
        self.why = ""
        self.said = b""  # on the status pipe
        self.tail = b""  # the end of what it wrote on its standard error
        loop.add(status, EVENT_READ, lambda mask: self._on_status())
        loop.add(stderr, EVENT_READ, lambda mask: self._on_stderr())

    @classmethod
    def start(cls, document: dict, sockets: list[int], cwd: str, loop: EventLoop,
              now: float) -> Upgrade:
        """Start the new program; raises OSError (nothing left open) when it cannot run."""
        status_r, status_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        memfd = -1
        try:
            document = dict(document, status=status_w, stderr=os.dup(2))
            fds = [status_w, document["stderr"], *sockets]
            memfd = write_document(document)
            env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
            env[ENVIRONMENT] = str(memfd)
            proc = subprocess.Popen(program(), cwd=cwd, env=env, stderr=stderr_w,
                                    pass_fds=[memfd, *fds])
        except BaseException:
            for fd in (status_r, stderr_r):
                os.close(fd)
            raise
        finally:
            for fd in (status_w, stderr_w, memfd, document.get("stderr", -1)):
                if fd >= 0:
                    os.close(fd)
        for fd in (status_r, stderr_r):
            os.set_blocking(fd, False)
        return cls(proc, status_r, stderr_r, now + UPGRADE_TIMEOUT, loop)

    def _on_status(self) -> bool:
        """Read the status pipe; False when it had nothing (yet, or any more)."""
        data = self._read("status")
        if data is None:
            return False
        self.said = (self.said + data)[-MAX_WHY:]
        if self.outcome == STARTING and READY in self.said:
            self.announced = True
        elif self.outcome == STARTING and not data and self.said.startswith(FAILED):
            why = self.said[len(FAILED):].decode(errors="replace").strip()
            self._fail(f"new master {self.pid}: {why}")
        return bool(data)

    def _on_stderr(self) -> bool:
        data = self._read("stderr")
        self.tail = (self.tail + (data or b""))[-MAX_WHY:]
        return bool(data)

    def _read(self, which: str) -> bytes | None:
        """What a pipe holds now (None: nothing yet); b"" at its end, and it is closed."""
        fd = getattr(self, which)
        if fd < 0:
            return b""
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._close(which)
        return data

    def _close(self, which: str) -> None:
        fd = getattr(self, which)
        if fd >= 0:
            self.loop.remove(fd)
            os.close(fd)
            setattr(self, which, -1)

    def check(self, now: float) -> None:
        """It serves once it has lived SETTLE_SECONDS after it said so; past the deadline
        without serving: kill it, fail."""
        if self.outcome == STARTING and self.announced:
            self.settled_at = self.settled_at or now + SETTLE_SECONDS
            if now >= self.settled_at:
                self.outcome = SERVING
        elif self.outcome == STARTING and now >= self.deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._fail(f"new master {self.pid} did not serve within {UPGRADE_TIMEOUT:.0f}s: "
                       "killed")

    def exited(self, code: int) -> None:
        """The master reaped the new master with exit status code."""
        self.proc.returncode = code
        if self.outcome != STARTING:
            return
        while self._on_status() or self._on_stderr():  # what it said before its end
            pass
        if self.outcome == FAILING:
            return
        said = self.tail.decode(errors="replace").strip().splitlines()
        last = said[-1].strip().removeprefix("hapolicy: error: ") if said else ""
        self._fail(f"new master {self.pid} exited with status {code}"
                   + (f": {last}" if last else ""))

    def handed(self) -> None:
        """The master handed over: the new master's exit is no longer a failed upgrade."""
        self.outcome = HANDED
        self.close()

    def _fail(self, why: str) -> None:
        self.outcome = FAILING
        self.why = why

    def close(self) -> None:
        """Stop reading its pipes (the master is done with it)."""
        self._close("status")
        self._close("stderr")
