"""What processes of other users (Postfix's, `nobody` under spawn(8)) must read: a directory
everyone can traverse, and a world-readable copy of a Python package.

pytest's ``tmp_path`` (``/tmp/pytest-of-root``, mode 700) cannot be reached by them, so
`public_dir` gives the preferred directory when its parents allow it and a new one under /tmp
otherwise; `world_readable_copy` copies a package there, and the temporary directories it made
are removed when the test process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path


def _traversable_by_all(path: Path) -> bool:
    """Whether every directory from / down to *path* has the others-execute bit."""
    path = path.resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def public_dir(preferred: Path, prefix: str) -> tuple[Path, bool]:
    """A mode-755 directory that any user can traverse: *preferred* when its parents
    allow it, else a new one under /tmp. Returns (directory, is_temporary)."""
    preferred.parent.mkdir(parents=True, exist_ok=True)
    if _traversable_by_all(preferred.parent):
        preferred.mkdir(exist_ok=True)
        preferred.chmod(0o755)
        return preferred, False
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path, True


_temporary_dirs: list[Path] = []


@atexit.register
def _remove_temporary_dirs() -> None:
    for path in _temporary_dirs:
        shutil.rmtree(path, ignore_errors=True)


def world_readable_copy(src_pkg_dir: Path, dest: Path, compile_with: str = "") -> Path:
    """Copy the package directory *src_pkg_dir* into *dest* so that nobody can import it.

    Directories get mode 755 and files 644 (``__pycache__`` is left out, or made anew by the
    interpreter *compile_with*, as a system-wide ``pip install`` does: then a process that
    cannot write there does not compile every module at each start). When *dest*'s
    parents cannot be traversed by everyone (pytest's tmp_path), a directory under /tmp
    is used instead and removed when the test process exits. Returns the directory to put
    on PYTHONPATH (it contains the package directory).
    """
    src_pkg_dir = Path(src_pkg_dir)
    dest, temporary = public_dir(Path(dest), "hapolicy-pkg-")
    if temporary:
        _temporary_dirs.append(dest)
    target = dest / src_pkg_dir.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(src_pkg_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if compile_with:
        subprocess.run([compile_with, "-m", "compileall", "-q", str(target)], check=True,
                       capture_output=True, timeout=60)
    for path in (target, *target.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest
