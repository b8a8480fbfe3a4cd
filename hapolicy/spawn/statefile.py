"""Spawn mode's health table in a file, mapped shared by every process spawned for one service list.

Under spawn(8) every SMTP connection gets a new process. Through this file they share what the
daemon's workers share in memory: a service found dead by one is skipped by the next ones for
its cool-down, one request probes it after, weighted round robin runs over all of them. The
table is health.py's, whole 8-byte words written without locks: nothing here is on the path of
a request.

Where (`--state-file`): the PATH given, or by default `health-DIGEST` (a digest of the service
list, so that two spawn entries with other services have their own files) in RUN_DIR,
`/run/hapolicy/spawn/`, when that is a directory (not a symbolic link) of the user hapolicy runs
as that no one else may write (the Debian package makes it for its user `hapolicy`, which
master.cf's `user=` should name: a user no other program runs as, since any process of that
user can write the file); else in `$XDG_RUNTIME_DIR/hapolicy/` when XDG_RUNTIME_DIR is set, else
in `/tmp/hapolicy-EUID/`. hapolicy makes either of those two with mode 0700, and uses it only
if it is a directory (not a symbolic link) owned by the user it runs as and writable by no one
else. (Not `/run/hapolicy/` itself: root's, the daemon's control socket is there.)

The file is HEADER_BYTES of header (magic, layout version, words per slot, number of services, a
digest of this boot's id, a digest of the service list), then the table. It is used only when opened
without following a symbolic link, a regular file owned by the running user (or root) and not
writable by group or others (safefile.distrust, the daemon's rule too), with exactly the header
expected and the size that follows from it. So a file of another service list, another layout or an
earlier boot (whose monotonic times mean nothing now), or a truncated, empty, garbage or foreign one
is never read as a table: it is replaced (what is not a regular file or a symbolic link, such as a
device or a directory, is left alone: then no file is used).

Making or replacing it: the directory is locked (flock, waited for at most LOCK_WAIT seconds),
the file looked at again (another process may have just made it), and when it is still not
usable a new file is written under a temporary name and renamed over PATH. So processes that
start together all end on the one file, and a file in use is never replaced by a process of
the same services. A file is never truncated or written in place by this module (a process
that maps it would die of SIGBUS).

`open_table` never raises: it gives the table, or None and one line saying why; spawn mode then
keeps a private table, as it did before this file existed, and logs that line once.

In use, the file is looked at before each request (watch.py): one truncated or spoilt under
a process leaves it with memory of its own, not a SIGBUS.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time

from hapolicy.base.safefile import distrust
from hapolicy.tables.health import HealthTable, table_bytes
from hapolicy.tables.layout import SLOT

try:  # hashlib's own blake2b; importing hashlib loads OpenSSL: 2 ms of each spawned start
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter without it
    from hashlib import blake2b

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hapolicy.config.records import Service

MAGIC = b"hapolicy health\n"  # 16 bytes
LAYOUT = 6  # the header's and the table's (tables/layout.py); a change makes old files be
# replaced (2: counters in the words 5, 6 of a service's slot and 1..4 of the table's own;
# 3: 16 words a slot, with the operator's drain and weight; 4: a statistics slot per service
# after the table's own; 5: when a service came back, for its slow start)
HEADER_BYTES = 64
# the header's fields, bytes at these places: MAGIC; LAYOUT and SLOT (4 bytes each, little
# endian, as the count); the number of services; 4 zero bytes; the boot's digest; the digest
# of the service list
MAGIC_FIELD = slice(0, 16)
LAYOUT_FIELD = slice(16, 20)
FORMAT_FIELDS = slice(16, 24)  # LAYOUT and SLOT
COUNT_FIELD = slice(24, 28)
BOOT_FIELD = slice(32, 48)
SERVICES_FIELD = slice(48, 64)
MODE = 0o600
LOCK_WAIT = 1.0  # seconds a process waits for another that makes the file
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MISSING = "missing"
RUN_DIR = "/run/hapolicy/spawn"  # the default directory, when it is the running user's own


class Unusable(Exception):
    """Why the file or its directory cannot be used: one line."""


def digest(services: Sequence[Service]) -> bytes:
    """16 bytes that differ between service lists (names, addresses, priorities, weights,
    timeouts: what the table's slots stand for)."""
    return blake2b("\n".join(s.spec for s in services).encode(), digest_size=16).digest()


def boot_digest(path: str | None = None) -> bytes:
    """16 bytes that differ between boots; Unusable when the kernel does not say (a chroot
    without /proc): the table holds monotonic times, which a file kept over a reboot (a /tmp
    on disk) would make mean days of cool-down."""
    path = path or BOOT_ID
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 256)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Unusable(f"no boot id to tell this boot's file from an earlier one's ({path}: "
                       f"{exc.strerror})") from None
    return blake2b(text.strip(), digest_size=16).digest()


def header(services: Sequence[Service], boot: bytes) -> bytes:
    """The header a file for these services must have in this boot."""
    words = (LAYOUT, SLOT, len(services), 0)
    return MAGIC + b"".join(w.to_bytes(4, "little") for w in words) + boot + digest(services)


def file_bytes(count: int) -> int:
    return HEADER_BYTES + table_bytes(count)


def default_path(services: Sequence[Service], environ: Mapping[str, str] = os.environ,
                 euid: int | None = None) -> str:
    """Where the file of these services is when --state-file does not say (for user euid)."""
    euid = os.geteuid() if euid is None else euid
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if private_directory(RUN_DIR, euid):
        directory = RUN_DIR
    elif runtime.startswith("/"):
        directory = os.path.join(runtime, "hapolicy")
    else:
        directory = f"/tmp/hapolicy-{euid}"
    return os.path.join(directory, "health-" + digest(services).hex())


def private_directory(path: str, uid: int) -> bool:
    """Whether path is a directory, not a symbolic link, of uid that no one else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022


def open_table(setting: str, services: Sequence[Service]) -> tuple[HealthTable | None, str]:
    """The shared table of these services and a line to log ('' when there is nothing to say),
    or (None, why not) in one line."""
    path = setting or default_path(services)
    try:
        expected = header(services, boot_digest())
        directory, name = os.path.split(path)
        dfd = open_directory(directory, ours=not setting)
    except Unusable as exc:
        return None, f"state file {path}: {exc}; this process keeps a health table of its own"
    try:
        table, why = map_existing(dfd, name, expected, len(services))
        if table is None:
            lock(dfd)
            table, why = map_existing(dfd, name, expected, len(services))
        if table is not None:
            return table, ""
        if not replaceable(dfd, name):
            raise Unusable(f"{why}, which is not replaced")
        table = make(dfd, name, expected, len(services))
        return table, ("" if why == MISSING else f"state file {path}: {why}: replaced")
    except Unusable as exc:
        return None, f"state file {path}: {exc}; this process keeps a health table of its own"
    finally:
        os.close(dfd)  # which also unlocks it


def open_directory(path: str, ours: bool) -> int:
    """A descriptor of the file's directory; `ours`: hapolicy's own, made here if missing,
    which must be a real directory of the running user that no one else may write."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if ours:
        flags |= os.O_NOFOLLOW
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise Unusable(f"cannot make directory {path}: {why_not(exc)}") from None
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = why_not(exc)
        if ours and exc.errno == errno.ENOTDIR and os.path.islink(path):
            why = "a symbolic link (not followed)"
        raise Unusable(f"cannot open directory {path}: {why}") from None
    if ours:
        st = os.fstat(fd)
        euid = os.geteuid()
        problem = ""
        if st.st_uid != euid:
            problem = f"directory {path} is owned by uid {st.st_uid}, not {euid}"
        elif st.st_mode & 0o022:
            problem = f"directory {path} is writable by others (mode {st.st_mode & 0o7777:04o})"
        if problem:
            os.close(fd)
            raise Unusable(problem)
    return fd


def map_existing(dfd: int, name: str, expected: bytes,
                 count: int) -> tuple[HealthTable | None, str]:
    """(the table, '') when the file is there and usable, else (None, why not)."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None, MISSING
    except OSError as exc:
        return None, why_not(exc)
    try:
        why = check(fd, expected, count)
    except OSError as exc:  # fstat or pread (an I/O error): not a file to trust
        why = why_not(exc)
    try:
        return (None, why) if why else (mapped(fd, count), "")
    finally:
        os.close(fd)


def replaceable(dfd: int, name: str) -> bool:
    """Whether what is at name may be renamed over: nothing, a regular file or a symbolic link
    (itself, not what it points to); never a directory, a device, a pipe or a socket."""
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)


def check(fd: int, expected: bytes, count: int) -> str:
    """'' when the open file is one to use, else why not."""
    st = os.fstat(fd)
    why = distrust(st)
    if why:
        return why
    if st.st_size == 0:
        return "empty"
    data = os.pread(fd, HEADER_BYTES, 0)
    if len(data) < HEADER_BYTES:
        return f"truncated ({st.st_size} bytes)"
    if data[MAGIC_FIELD] != MAGIC:
        return "not a hapolicy state file"
    if data[FORMAT_FIELDS] != expected[FORMAT_FIELDS]:
        return f"of layout {int.from_bytes(data[LAYOUT_FIELD], 'little')}, not {LAYOUT}"
    if data[BOOT_FIELD] != expected[BOOT_FIELD]:
        return "of an earlier boot"
    if (data[COUNT_FIELD] != expected[COUNT_FIELD]
            or data[SERVICES_FIELD] != expected[SERVICES_FIELD]):
        return "of another service list"
    if data != expected:
        return "with an unknown header"
    if st.st_size != file_bytes(count):
        return f"truncated ({st.st_size} bytes)" if st.st_size < file_bytes(count) else (
            f"of {st.st_size} bytes, not {file_bytes(count)}")
    return ""


def mapped(fd: int, count: int) -> HealthTable:
    try:
        memory = mmap.mmap(fd, file_bytes(count), flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        raise Unusable(f"cannot map it: {exc}") from None
    return HealthTable(count, mapping=memory, offset=HEADER_BYTES, probe_lock=os.dup(fd))


def lock(dfd: int) -> None:
    """Lock the directory against other processes making the file (LOCK_WAIT at most)."""
    import fcntl  # here: only a process that makes the file needs it

    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Unusable(f"its directory stayed locked by another process for "
                               f"{LOCK_WAIT:g}s") from None
            time.sleep(0.005)
        except OSError as exc:
            raise Unusable(f"cannot lock its directory: {why_not(exc)}") from None


def make(dfd: int, name: str, expected: bytes, count: int) -> HealthTable:
    """Write a new file under a temporary name, rename it over the old one, map it."""
    temporary = name + ".new"
    try:
        os.unlink(temporary, dir_fd=dfd)  # left by a process that died making it
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Unusable(f"cannot remove {temporary}: {why_not(exc)}") from None
    try:
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, MODE, dir_fd=dfd)
    except OSError as exc:
        raise Unusable(f"cannot create {temporary}: {why_not(exc)}") from None
    try:
        try:
            os.fchmod(fd, MODE)  # whatever the umask
            data = memoryview(expected + bytes(table_bytes(count)))
            while data:
                data = data[os.write(fd, data):]
            os.rename(temporary, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            try:
                os.unlink(temporary, dir_fd=dfd)
            except OSError:
                pass
            raise Unusable(f"cannot write it: {why_not(exc)}") from None
        return mapped(fd, count)
    finally:
        os.close(fd)


def why_not(exc: OSError) -> str:
    """An OSError as a reason in a line: lower case, a symbolic link and a directory named."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link (not followed)"
    return (exc.strerror or str(exc)).lower() if exc.errno != errno.EISDIR else "a directory"
