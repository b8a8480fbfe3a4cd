"""Processes seen through /proc: state, children, titles, uids, memory, socket owners."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from testkit.wait import wait_for


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether pid runs (exists and is no zombie)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Live (non-zombie) children of pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                found.append(int(entry))
    return sorted(found)


MONITOR_TITLE = "hapolicy: monitor"
WORKER_TITLE = "hapolicy: worker"


def workers_of(pid: int) -> list[int]:
    """The live children of a master but its monitor (and the new master of an upgrade it
    started): its workers."""
    return [child for child in children(pid)
            if not cmdline(child).startswith(MONITOR_TITLE) and "master" not in cmdline(child)]


def monitor_of(pid: int) -> int:
    """The pid of a master's monitor, 0 when none runs."""
    return next((child for child in children(pid)
                 if cmdline(child).startswith(MONITOR_TITLE)), 0)


def wait_children(pid: int, count: int, timeout: float = 10.0) -> list[int]:
    """Until the master pid has exactly count live workers (its monitor aside), each titled
    as one; returns them. A child just forked still has the master's title: it may be the
    monitor, which would be taken for a worker until it sets its own."""
    found: list[int] = []

    def enough() -> bool:
        found[:] = workers_of(pid)
        return len(found) == count and all(cmdline(c).startswith(WORKER_TITLE) for c in found)

    wait_for(enough, timeout, what=f"{count} children of {pid}")
    return found


def cmdline(pid: int) -> str:
    """The command line (or the title set) of pid, "" when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def uid_of(pid: int) -> int:
    """The real uid of pid."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid line for {pid}")


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _server_side_inodes(server_port: int) -> dict[int, int]:
    """client port -> inode of the server's socket of that TCP connection on 127.0.0.1."""
    local = f"0100007F:{server_port:04X}"
    out = {}
    with open("/proc/net/tcp") as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "01":  # ESTABLISHED
                out[int(fields[2].split(":")[1], 16)] = int(fields[9])
    return out


def connection_owners(server_port: int, client_socks: list[socket.socket],
                      pids: list[int]) -> list[int]:
    """For each client socket, the pid (among pids) holding the server side; 0 if none."""
    by_port = _server_side_inodes(server_port)
    holders = {pid: _socket_inodes(pid) for pid in pids}
    owners = []
    for sock in client_socks:
        inode = by_port.get(sock.getsockname()[1], -1)
        owners.append(next((pid for pid, inodes in holders.items() if inode in inodes), 0))
    return owners


def holders(inode: int, pids: list[int]) -> list[int]:
    """The pids (among pids) that hold the socket of inode."""
    return [pid for pid in pids if inode in _socket_inodes(pid)]


def tcp_client_inodes(server_port: int) -> list[int]:
    """Inodes of the client sides of the TCP connections established to 127.0.0.1:port."""
    remote = f"0100007F:{server_port:04X}"
    with open("/proc/net/tcp") as handle:
        return [int(fields[9]) for fields in (line.split() for line in handle.readlines()[1:])
                if fields[2] == remote and fields[3] == "01"]


def unix_inodes(path: str) -> tuple[list[int], list[int]]:
    """(listening, accepted): inodes of the unix stream sockets bound at path, from
    /proc/net/unix (an accepted connection's server side carries the listener's path)."""
    listening, accepted = [], []
    with open("/proc/net/unix") as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            if len(fields) < 8 or fields[7] != path:
                continue
            flags, state = int(fields[3], 16), fields[5]
            if flags & 0x10000:  # __SO_ACCEPTCON: listening
                listening.append(int(fields[6]))
            elif state == "03":  # SS_CONNECTED
                accepted.append(int(fields[6]))
    return listening, accepted


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM, ...) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit status, or None if it is still running after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        time.sleep(0.02)
    return proc.poll()


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session *sid*, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[3] the session id (fields 3 and 6 of proc(5)).
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def wait_session_gone(sid: int, timeout: float) -> bool:
    """Until session *sid* has no live process; whether it got there within *timeout*."""
    deadline = time.monotonic() + timeout
    while session_pids(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_session(sid: int) -> None:
    """SIGKILL every process of session *sid*; wait (5 s at most) until they are gone."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_session_gone(sid, 5)


def listening(port: int) -> bool:
    """Whether some socket listens on 127.0.0.1:*port* (from /proc/net/tcp, no connect)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(
            line.split()[1] == wanted and line.split()[3] == "0A" for line in f.readlines()[1:]
        )
