"""The look at spawn mode's mapped state file before each request (hapolicy.spawn.watch),
in-process: a file as it was made stays shared; one truncated, grown or made writable by others
under the process leaves it memory of its own at the same address (never a SIGBUS), said once;
without ctypes the file gets its size back; a map lost half-way ends the process.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from pathlib import Path

import pytest

from hapolicy.config.records import parse_service
from hapolicy.spawn import statefile
from hapolicy.spawn import watch as watch_module
from hapolicy.spawn.watch import Watch
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import SERVED, SLOT, UP

SERVICES = (parse_service("A=127.0.0.1:10023:10:2"), parse_service("B=127.0.0.1:10024:10:1"))
SIZE = statefile.file_bytes(len(SERVICES))


def opened(path: Path) -> tuple[HealthTable | None, str]:
    return statefile.open_table(str(path), SERVICES)


def watched(tmp_path: Path) -> tuple[HealthTable, Watch, HealthTable, Path]:
    """A table and its watch, and another process's table of the same file."""
    path = tmp_path / "state"
    table, _ = opened(path)
    other, _ = opened(path)
    assert table is not None and other is not None
    return table, Watch(table, str(path), SERVICES), other, path


def test_a_watched_file_as_it_was_made_is_shared_still(tmp_path):
    table, watch, other, _ = watched(tmp_path)
    assert watch.check() == ""
    table.set_served(1, 42.0)
    assert other.served(1) == 42.0
    assert watch.check() == "" and table.probe_lock >= 0
    table.close()
    other.close()


@pytest.mark.parametrize("spoil", ["truncate", "extend", "chmod"])
def test_a_watched_file_spoilt_leaves_the_process_memory_of_its_own(tmp_path, spoil):
    """Truncated (an access past its end would be SIGBUS), grown, or made writable by others:
    the table goes on in private memory at the same address (the views taken of it before,
    as the dispatcher's, see it), which the file no longer sees."""
    table, watch, other, path = watched(tmp_path)
    table.set_served(1, 42.0)
    view = table.f  # a view taken before, as Dispatcher.counts
    if spoil == "truncate":
        os.truncate(path, 100)
        why = "its size changed to 100 bytes"
    elif spoil == "extend":
        os.truncate(path, SIZE + 1)
        why = f"its size changed to {SIZE + 1} bytes"
    else:
        path.chmod(0o666)
        why = "writable by others (mode 0666)"
    other.close()  # it maps the file too: no access of it past the end
    assert watch.check() == (f"state file {path}: {why}; this process keeps a health table "
                             "of its own from now on")
    assert table.probe_lock == -1
    assert table.state(0, time.monotonic()) == UP and -1.0 <= table.served(1) <= 0.0
    view[SLOT + SERVED] = 7.0
    assert table.served(1) == 7.0
    assert watch.check() == ""  # said once
    table.close()
    os.truncate(path, SIZE)
    word = statefile.HEADER_BYTES + (SLOT + SERVED) * 8  # service 1's clock in the file
    in_file = struct.unpack("d", path.read_bytes()[word:word + 8])[0]
    assert in_file == (0.0 if spoil == "truncate" else 42.0)  # never the private 7.0


def test_memory_that_cannot_be_made_private_gets_the_files_size_back(tmp_path, monkeypatch):
    """Without ctypes the map is made safe by giving the file its size back (said once)."""
    table, watch, other, path = watched(tmp_path)
    other.close()

    def no_ctypes(memory):
        raise ImportError("no module named '_ctypes'")

    monkeypatch.setattr(watch_module, "private_memory", no_ctypes)
    os.truncate(path, 0)
    note = watch.check()
    assert note == (f"state file {path}: its size changed to 0 bytes, and its memory could not "
                    "be made private (no module named '_ctypes'): its size restored")
    assert path.stat().st_size == SIZE
    table.set_served(0, 3.0)  # no SIGBUS: the file has its pages again
    os.truncate(path, 0)
    assert watch.check() == "" and path.stat().st_size == SIZE
    table.close()


def test_a_map_that_failed_half_way_ends_the_process_it_was_lost_under(tmp_path, monkeypatch):
    """mmap(MAP_FIXED) that fails (ENOMEM) may have unmapped the table already: the table is
    not read again (Watch.lost: spawn mode then exits, its connection closed)."""
    table, watch, other, path = watched(tmp_path)
    other.close()

    def enomem(memory):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(watch_module, "private_memory", enomem)
    os.truncate(path, 0)
    assert watch.check() == (f"state file {path}: its size changed to 0 bytes, and its memory "
                             "could not be made private (Cannot allocate memory): this process "
                             "ends")
    assert watch.lost
    os.truncate(path, SIZE)
    table.close()
