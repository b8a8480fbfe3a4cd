"""--idle: connections that had one request answered and then stay idle, held by the bench.

Contract: open_idle_for(bench, name, title, addr, pids, count, note) opens `count` of them to
a proxy, records in bench.idle[name] the RSS and PSS of its processes `pids` before and after
(hence memory per idle connection), its descriptors, and the answers that were not the
backend's own; it returns the sockets, which the caller closes. still_held() records how many
the proxy still holds after the row (a closed one reads EOF); both add warnings on trouble.
"""

from __future__ import annotations

import resource
import socket
import time
from typing import Callable

from .procs import memory_kib, open_fds, pss_kib
from .runner import Bench
from .wire import classify, make_request, wait_readable


def open_idle(addr: tuple[str, int], count: int, expected: bytes, batch: int = 200,
              timeout: float = 30.0) -> tuple[list[socket.socket], str, dict[str, int]]:
    """count connections that each had one request answered, then stay idle.

    (socks, error, answers counted by kind: see classify)."""
    kinds = {"ok": 0, "default": 0, "wrong": 0}
    socks: list[socket.socket] = []
    request = make_request(999999)
    deadline = time.monotonic() + timeout
    try:
        while len(socks) < count:
            group = []
            for _ in range(min(batch, count - len(socks))):
                sock = socket.create_connection(addr, timeout=10)
                group.append(sock)
                socks.append(sock)
                sock.sendall(request)
            for sock in group:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return socks, "an idle connection was closed by the proxy", kinds
                    data += chunk
                kinds[classify(data, expected)] += 1
    except OSError as exc:
        return socks, f"opening idle connection {len(socks) + 1}: {exc}", kinds
    return socks, "", kinds


def open_idle_for(bench: Bench, name: str, title: str, addr: tuple[str, int],
                  pids: Callable[[], list[int]], count: int,
                  note: str = "") -> list[socket.socket]:
    if count <= 0:
        return []
    time.sleep(0.5)
    before = {pid: memory_kib(pid).get("VmRSS", 0) for pid in pids()}
    pss_before = sum(pss_kib(pid) for pid in pids())
    bench.log(f"{title}: opening {count} idle connections")
    socks, why, kinds = open_idle(addr, count, bench.backend.answer)
    time.sleep(0.5)
    after = {pid: memory_kib(pid).get("VmRSS", 0) for pid in pids()}
    pss_after = sum(pss_kib(pid) for pid in pids())
    rss0, rss1 = sum(before.values()), sum(after.values())
    entry = {"connections": len(socks), "requested": count,
             "rss_before_kib": rss0, "rss_after_kib": rss1,
             "pss_before_kib": pss_before, "pss_after_kib": pss_after,
             "kib_per_connection": (rss1 - rss0) / len(socks) if socks else 0.0,
             "pss_kib_per_connection": (pss_after - pss_before) / len(socks) if socks else 0.0,
             "processes_before": len(before), "processes_after": len(after),
             "fds_per_process": [open_fds(pid) for pid in after],
             "default_answers": kinds["default"], "wrong_answers": kinds["wrong"],
             "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    if note:
        entry["note"] = note
    if why:
        entry["error"] = why
        bench.warnings.append(f"{title} idle connections: {why}")
    bench.idle[name] = entry
    bench.log(f"{title}: {len(socks)} idle connections: "
              f"{entry['kib_per_connection']:.1f} KiB RSS each")
    return socks


def still_held(bench: Bench, name: str, title: str, socks: list[socket.socket]) -> None:
    """Count the idle connections the proxy still holds (a closed one reads EOF)."""
    if not socks:
        return
    ended = 0
    for start in range(0, len(socks), 1000):
        ended += len(wait_readable(socks[start:start + 1000], 0.0))
    bench.idle[name]["still_open"] = len(socks) - ended
    if ended:
        bench.warnings.append(f"{title}: {ended} idle connections were closed during the row")
