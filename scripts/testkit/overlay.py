"""A throwaway copy of this machine's root, for installing packages without changing it.

:class:`OverlayRoot` mounts, in a mount namespace of its own (``unshare --mount``), an overlay
whose lower layer is this machine's ``/`` and whose upper layer is a tmpfs, with /proc, /dev,
and fresh tmpfs on /run and /tmp. Commands run chrooted in it (``nsenter`` into the namespace,
then ``chroot``) see the machine as it is, installed packages and users included, and every
change they make (dpkg's database, /usr/sbin, /etc/passwd) lands in the tmpfs: the machine
itself never changes, so a test that replaces a system package cannot disturb tests that run
at the same time, nor leave the machine changed if it dies half-way. When the holder process
ends (when the test closes its stdin, or dies) it kills whatever still runs in the copy,
and the namespace goes, the tmpfs with it.

Root only (mount). The test reaches the copy's files from outside through ``path``
(``/proc/PID/root`` of the holder), and a host directory can be bound in (``share``) for
sockets and files both sides use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

SETUP = r"""
set -eu
base=$1 share=$2
mount -t tmpfs -o mode=0755 hapolicy-overlay "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
mount -t proc proc "$base/root/proc"
mount --rbind /dev "$base/root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$base/root/run"
mkdir "$base/root/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$base/root/tmp"
mkdir -p "$base/root$share"
mount --bind "$share" "$base/root$share"
echo ready
# until the test closes our stdin (or dies): then nothing may go on running in the copy
read -r _ || true
for proc in /proc/[0-9]*; do
    [ "$(readlink "$proc/root" 2>/dev/null)" = "$base/root" ] && kill -9 "${proc#/proc/}"
done 2>/dev/null
exit 0
"""

#: The environment of a command in the copy: what an administrator's root shell has, no more
#: (no pyenv or virtualenv on PATH, nothing of the test's).
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}


#: apt, dpkg, man and the rest run at a lower priority, so that the tests that time their
#: processes while this one runs (the suite runs in four processes on two cores) keep the CPU
NICE = ("nice", "-n", "10")


class OverlayRoot:
    """This machine's root, copy-on-write; `run` a command in it, `close` to throw it away."""

    def __init__(self, base: Path, share: Path) -> None:
        self.base = base
        self.share = share
        base.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", SETUP, "sh",
             str(base), str(share)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.wait(10)
            raise RuntimeError(f"overlay root: {line!r} {self.holder.stderr.read()}")
        self.root = base / "root"
        #: the copy's / as this process sees it
        self.path = Path(f"/proc/{self.holder.pid}/root") / str(self.root).lstrip("/")

    def file(self, path: str) -> Path:
        """A path in the copy, for this process to read or write."""
        return self.path / path.lstrip("/")

    def argv(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        """The command line that runs argv chrooted in the copy, with CLEAN_ENV (and env)."""
        values = {**CLEAN_ENV, **(env or {})}
        return [*NICE, "nsenter", "-t", str(self.holder.pid), "-m", "--", "chroot", str(self.root),
                "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in values.items()), *argv]

    def run(self, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv, env), capture_output=True, text=True,
                              timeout=timeout, check=False, **kwargs)

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(["/bin/sh", "-c", script], timeout=timeout)

    def processes(self) -> list[int]:
        """The pids of processes chrooted in the copy (not the holder)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.holder.pid:
                continue
            try:
                if os.readlink(f"/proc/{entry}/root") == str(self.root):
                    found.append(int(entry))
            except OSError:
                pass
        return found

    def close(self) -> None:
        """Kill what still runs in the copy, then the holder: the namespace and tmpfs go."""
        for _ in range(3):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.holder.stdin.close()  # it kills what is left, then exits: the namespace goes
        try:
            self.holder.wait(10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait(10)
        self.holder.stdout.close()
        self.holder.stderr.close()
        try:
            self.base.rmdir()  # empty here: its tmpfs was the namespace's
        except OSError:
            pass
