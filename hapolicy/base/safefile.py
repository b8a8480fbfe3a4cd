"""Files that root writes or trusts in a directory another user may be able to write.

`replace_file` writes a whole file under a new temporary name in the target's directory, made
with O_CREAT|O_EXCL|O_NOFOLLOW under a random name: nothing made there in advance (a symbolic
link to a root-only file, a file of another user) is ever followed, truncated or reused. The
file gets the mode asked whatever the umask, is flushed to disk, then renamed over the target,
which is then the old file or the new one, never half of one; a symbolic link at the target is
replaced, not followed. A failure removes the temporary file and raises OSError.

`distrust` says why a file, by the fstat of its open descriptor, is not one to read state from:
it must be a regular file, owned by root or by the user we run as, and not
writable by group or others; '' when it is. Open it with O_NOFOLLOW first (a symbolic link
then fails with ELOOP): the check is of what was opened, not of a path that may change.
"""

from __future__ import annotations

import os
import stat

TEMPORARY_TRIES = 5  # random names taken in a row (by another process) before giving up


def replace_file(path: str, data: bytes, mode: int) -> None:
    """Write data as the whole file at path, with mode, through a fresh temporary file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(TEMPORARY_TRIES):
        temporary = f"{path}.tmp-{os.urandom(6).hex()}"
        try:
            fd = os.open(temporary, flags, mode & 0o600)  # no one else's until it is whole
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{TEMPORARY_TRIES} temporary names for {path} taken")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def distrust(st: os.stat_result) -> str:
    """'' when a file of this status may be trusted, else why not, in a few words."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"writable by others (mode {st.st_mode & 0o7777:04o})"
    return ""
