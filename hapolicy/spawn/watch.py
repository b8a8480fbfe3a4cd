"""The look at spawn mode's mapped state file (statefile.py) before each request.

Any process of the same user can write the file, and one that truncates it kills every
process that maps it at its next access to a page past the new end (SIGBUS, which Python
cannot catch: the request in progress unanswered). So before each request spawn mode fstats
the file (one system call: a spawned process serves one connection, and a request costs far
more) and, when its size is not the table's or it is no longer to be trusted, puts private
zeroed memory in place of the file's pages, at the same address: every view of the table goes
on there, the request is answered, and the process works from then on as with a table of its
own; one line says so. A truncation while a request is in flight (the time of its exchange
with a service) is not seen before that request's end.
"""

from __future__ import annotations

import mmap
import os

from hapolicy.base.safefile import distrust
from hapolicy.spawn.statefile import file_bytes, why_not

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from hapolicy.config.records import Service
    from hapolicy.tables.health import HealthTable


class Watch:
    """The look at a mapped file before each request (see the module doc)."""

    def __init__(self, table: HealthTable, path: str, services: Sequence[Service]) -> None:
        self.table = table
        self.path = path
        self.size = file_bytes(len(services))
        self.weights = [s.weight for s in services]
        self.fd = table.probe_lock  # a descriptor of the mapped file (mapped() made it)
        self.told = False  # that the memory could not be made private
        self.lost = False  # the map failed half-way: the table's memory may be gone

    def check(self) -> str:
        """'' while the file may be used (or is no longer used); else, once, the line to log
        (the table is then private memory)."""
        if self.fd < 0:
            return ""
        try:
            st = os.fstat(self.fd)
            why = distrust(st) or (f"its size changed to {st.st_size} bytes"
                                   if st.st_size != self.size else "")
        except OSError as exc:
            why = why_not(exc)
        if not why:
            return ""
        table = self.table
        try:
            private_memory(table._map)  # the mapping mapped() gave it
        except OSError as exc:
            # mmap(MAP_FIXED) failed (ENOMEM): before Linux 6.12 the old pages may be gone
            # already, and the next read of the table would be a SIGSEGV
            self.lost = True
            return (f"state file {self.path}: {why}, and its memory could not be made private "
                    f"({exc.strerror}): this process ends")
        except Exception as exc:  # noqa: BLE001 - no ctypes: make the map safe another way
            try:  # no page of the map past the end of the file; go on with it, and watch it
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            if self.told:
                return ""
            self.told = True
            return (f"state file {self.path}: {why}, and its memory could not be made private "
                    f"({exc}): its size restored")
        self.fd = -1
        os.close(table.probe_lock)
        table.probe_lock = -1  # no other process shares this memory: no lock to claim a probe
        table.randomize_phase(self.weights)
        return (f"state file {self.path}: {why}; this process keeps a health table of its own "
                "from now on")


MAP_FIXED = 0x10  # Linux's on the architectures Debian releases for; Python's mmap lacks it


def private_memory(memory: mmap.mmap) -> None:
    """Put private zeroed pages in place of what memory maps, at the same address: every view
    into it (a memoryview, a cast of one) reads and writes them from then on."""
    import ctypes  # here: only a process whose file was spoilt under it needs it

    libc = ctypes.CDLL(None, use_errno=True)
    remap = libc.mmap
    remap.restype = ctypes.c_void_p
    remap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
    anchor = ctypes.c_char.from_buffer(memory)  # its first byte: the map's address
    address = ctypes.addressof(anchor)
    del anchor  # holds an export of the map, which would keep it from being closed
    got = remap(address, len(memory), mmap.PROT_READ | mmap.PROT_WRITE,
                mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if got != address:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
