"""The command line of a generator of files made from the sources at build time (the man pages,
the shell completion): `--dir DIR` writes every file into DIR, `NAME` prints one."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Callable


def generate(argv: Sequence[str], files: Mapping[str, Callable[[], str]], program: str,
             usage: str) -> int:
    """Write or print as argv says; the exit status (1: a file not written, 2: usage)."""
    if len(argv) == 2 and argv[0] == "--dir":
        for name, make in files.items():
            path = os.path.join(argv[1], name)
            try:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(make())
            except OSError as exc:
                print(f"{program}: cannot write {path}: {exc.strerror}", file=sys.stderr)
                return 1
        return 0
    if len(argv) == 1 and argv[0] in files:
        sys.stdout.write(files[argv[0]]())
        return 0
    print(usage, file=sys.stderr)
    return 2
