"""hapolicyctl: send one command to a running daemon's control socket and print the answer.

    hapolicyctl [--control PATH | -c CONFIG] COMMAND [ARGS]

The socket is PATH, or the `control = PATH` line of the daemon's config file CONFIG (before
any `[pool ...]` section), or DEFAULT_PATH when neither is given. Commands: see commands.py
(`hapolicyctl help` asks the daemon; `hapolicyctl --help` prints the options and
commands.COMMANDS without it). Exit status (EXIT_STATUS): 0, or 1 when the answer is an
`error:` line, 2 for a usage error or a socket that cannot be reached (one line on stderr).
`hapolicyctl check` is a Monitoring Plugins check (check.py), with the plugins' exit statuses.
OPTIONS and EXIT_STATUS are also hapolicyctl(8)'s text (manpage.py).
"""

from __future__ import annotations

import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_PATH = "/run/hapolicy/control"
TIMEOUT = 10.0
USAGE = "usage: hapolicyctl [--control PATH | -c CONFIG] COMMAND [ARGS]"
#: The options, as --help and hapolicyctl(8) (manpage.py) say them.
OPTIONS = (
    ("--control PATH", ("the daemon's control socket (its `--control`, or `control` in its "
     "config file)")),
    ("-c, --config CONFIG", "the daemon's config file: the socket is its `control` line"),
    ("-h, --help", "print the options and the commands, and exit"),
)
EXIT_STATUS = (
    ("0", "the daemon answered"),
    ("1", "the answer is an `error:` line (an unknown command or name, a peer not allowed)"),
    ("2", "a usage error, or a socket that cannot be reached (one line on stderr)"),
)
CHECK_TITLE = ("check [OPTIONS]: the Monitoring Plugins check (not sent as such: it reads "
               "`pools` twice), one line, exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN "
               "(hapolicyctl(8) says when); its options:")


class UsageError(Exception):
    pass


def path_from_config(path: str) -> str:
    """The `control` setting of a config file ('' when it has none)."""
    value = ""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = raw.strip()
            if line.startswith("["):
                break
            key, eq, rest = line.partition("=")
            if eq and key.strip() == "control":
                value = rest.strip()
    return value


def parse(argv: Sequence[str]) -> tuple[str, str]:
    """(socket path, command line) from the arguments; UsageError when they are wrong."""
    args = list(argv)
    path = config = ""
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            raise UsageError("")
        if flag.startswith("--control="):
            path = flag.partition("=")[2]
            continue
        if flag not in ("--control", "-c", "--config") or not args:
            raise UsageError(f"unknown option or missing value: {flag}")
        value = args.pop(0)
        if flag == "--control":
            path = value
        else:
            config = value
    if path and config:
        raise UsageError("give --control or -c, not both")
    if not args:
        raise UsageError("no command")
    if config:
        try:
            path = path_from_config(config)
        except OSError as exc:
            raise UsageError(f"cannot read {config}: {exc.strerror}") from None
        if not path:
            raise UsageError(f"{config} sets no control socket (control = PATH)")
    return path or DEFAULT_PATH, " ".join(args)


def ask(path: str, line: str, timeout: float = TIMEOUT) -> str:
    """Send one command line, read the answer until the daemon closes; OSError on failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def help_text() -> str:
    """USAGE, the options and the commands (commands.COMMANDS), wrapped to 79 columns."""
    import textwrap

    from hapolicy.check import OPTIONS as CHECK_OPTIONS
    from hapolicy.monitor.commands import COMMANDS

    out = [USAGE, ""]
    for title, rows in (("options:", OPTIONS), ("commands:", COMMANDS),
                        (CHECK_TITLE, CHECK_OPTIONS)):
        out.append(textwrap.fill(title.replace("`", ""), 79))
        for key, text in rows:
            out.append(textwrap.fill(text.replace("`", ""), 79, initial_indent=f"  {key:22} ",
                                     subsequent_indent=" " * 25))
    return "\n".join(out) + "\n"


def is_check(args: Sequence[str]) -> bool:
    """Whether the command is `check` (check.py), which answers a usage error as UNKNOWN."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 if "=" in args[i] or args[i] in ("-h", "--help") else 2
    return i < len(args) and args[i] == "check"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        path, line = parse(args)
    except UsageError as exc:
        if not str(exc):  # --help
            print(help_text(), end="")
            return 0
        if is_check(args):
            print(f"HAPOLICY UNKNOWN - {exc}")
            return 3
        print(f"hapolicyctl: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    if line.split()[:1] == ["check"]:
        from hapolicy.check import run

        return run(path, line.split()[1:], ask)
    try:
        text = ask(path, line)
    except OSError as exc:
        print(f"hapolicyctl: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 1 if text.startswith("error:") or not text else 0


if __name__ == "__main__":
    sys.exit(main())
