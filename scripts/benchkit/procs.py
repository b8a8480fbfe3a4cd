"""Processes of the bench: start them, track them, always stop them; /proc accounting.

Contract: every process the bench starts goes through Children.fork or Children.popen and is
then tracked until Children.stop (or stop_all, at exit) has ended it, its process group
included when it leads one; each child also gets SIGKILL when the bench dies (PDEATHSIG). The
/proc readers return empty or None values for a process that is gone, never raise.
Linux only.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from typing import Any, Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child: get SIGKILL when the bench dies, even by SIGKILL (a backstop to cleanup)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)


class Child:
    def __init__(self, name: str, pid: int, session: bool, popen: Any = None,
                 stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.pid = pid
        self.session = session  # leads its own session and process group: kill the group too
        self.popen = popen
        self.stop_signal = stop_signal
        self.reaped = False


class Children:
    """Every process the bench starts; stop() and stop_all() leave none behind."""

    def __init__(self) -> None:
        self.items: list[Child] = []

    def fork(self, name: str, fn: Callable[..., None], *args: Any,
             session: bool = False) -> Child:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                _child_signals()
                if session:
                    os.setsid()
                die_with_parent()
                if os.getppid() != parent:
                    os._exit(1)
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - a child never returns into the bench
                status = 1
                _report_child_error(name, exc)
            os._exit(status)
        child = Child(name, pid, session)
        self.items.append(child)
        return child

    def popen(self, name: str, argv: list[str], log_path: str, env: dict[str, str] | None = None,
              stop_signal: int = signal.SIGTERM, cwd: str | None = None) -> Child:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, cwd=cwd, start_new_session=True,
                                    preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads
        child = Child(name, proc.pid, True, proc, stop_signal)
        self.items.append(child)
        return child

    def alive(self, child: Child) -> bool:
        self._reap(child)
        return not child.reaped

    def _reap(self, child: Child) -> None:
        if child.reaped:
            return
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = child.pid, 0
        if pid:
            child.reaped = True
            if child.popen is not None:
                child.popen.returncode = os.waitstatus_to_exitcode(status) if status else 0

    def wait(self, child: Child, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._reap(child)
            if child.reaped or time.monotonic() >= deadline:
                return child.reaped
            time.sleep(0.02)

    def stop(self, child: Child, timeout: float = 3.0) -> None:
        """Ask politely, then SIGKILL the child and (if it leads one) its whole process group."""
        if not child.reaped:
            send_signal(child.pid, child.stop_signal)
            self.wait(child, timeout)
        if not child.reaped:
            send_signal(child.pid, signal.SIGKILL)
            self.wait(child, 5.0)
        if child.session:
            deadline = time.monotonic() + 5.0
            while group_members(child.pid) and time.monotonic() < deadline:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.05)
        if child in self.items:
            self.items.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.items)):
            self.stop(child, timeout=2.0)


def _report_child_error(name: str, exc: BaseException) -> None:
    if isinstance(exc, KeyboardInterrupt):
        return
    try:
        os.write(2, f"bench: {name} (pid {os.getpid()}) failed: {exc!r}\n".encode())
    except OSError:
        return


def send_signal(pid: int, sig: int) -> None:
    """os.kill, quiet when the process is gone."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from `state` on (index 0 = field 3 of proc(5))."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode().split()


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _live_with(field: int, value: int) -> list[int]:
    """Live (not zombie) processes whose /proc stat field (1: ppid, 2: pgid) is value."""
    out = []
    for pid in all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and int(fields[field]) == value:
            out.append(pid)
    return out


def group_members(pgid: int) -> list[int]:
    return _live_with(2, pgid)


def children_of(ppid: int) -> list[int]:
    return _live_with(1, ppid)


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB (empty for a zombie or a gone process)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    out[line[:5].decode()] = int(line.split()[1])
    except OSError:
        pass
    return out


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def host_cpu() -> tuple[int, int, int]:
    """(idle ticks, total ticks, irq and softirq ticks) over all cores.

    Loopback TCP is largely processed in softirq context, which the kernel may account here
    rather than to the processes that sent the data.
    """
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return values[3] + values[4], sum(values[:8]), values[5] + values[6]


class ProcSampler:
    """CPU time and peak memory of a changing set of processes over the measured window."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.cpu0: dict[int, tuple[float, float]] = {}
        self.cpu1: dict[int, tuple[float, float]] = {}
        self.hwm: dict[int, int] = {}
        self.rss: dict[int, int] = {}
        self.pss: dict[int, int] = {}

    def sample(self) -> None:
        for pid in self.pids():
            mem = memory_kib(pid)
            if mem:
                self.hwm[pid] = max(self.hwm.get(pid, 0), mem.get("VmHWM", 0))
                self.rss[pid] = mem.get("VmRSS", 0)
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu1[pid] = cpu

    def start(self) -> None:
        self.sample()
        self.cpu0 = dict(self.cpu1)

    def finish(self) -> None:
        self.sample()
        for pid in self.pids():
            self.pss[pid] = pss_kib(pid)

    def cpu_by_pid(self, part: slice = slice(0, 2)) -> dict[int, float]:
        """CPU seconds used in the window; part=slice(1, 2) for system time only."""
        return {pid: sum(self.cpu1[pid][part]) - sum(self.cpu0.get(pid, (0.0, 0.0))[part])
                for pid in self.cpu1}


def close_fds_except(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 but those in keep."""
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft

