"""The command line read straight from the option table, so that a start needs no argparse.

`parse(argv)` reads the spellings that command lines of hapolicy use: `--name VALUE`,
`--name=VALUE`, `-x VALUE`, `-xVALUE`, flags, bundled short options (`-lv`, `-ldX`), a
repeated `-s`, and the choices of an option. It returns the value of every option by its
destination (None when not given, `service` a list), just as argparse's namespace holds it, or
None for anything else: `-h`, `--version`, an unknown option, a missing value, a value that
begins with `-`, `-x=...`, `--`, a word that is no option's value, a value outside the choices.
Then cli.py lets argparse read the command line, so every error message and every corner of
argparse's grammar stay argparse's own; tests/test_cmdline.py checks that both agree wherever
this one answers.

`expand_original_abbreviations` is done before either: the Perl original's Getopt::Long took
any unique prefix of its five long options (`--serv`, `--def`), and so do we.
"""

from __future__ import annotations

from .options import OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .options import Option

# The original's long options; prefixes of the daemon's options stay errors.
ORIGINAL_LONG = ("service", "default", "logging", "verbose", "stdout")

LONG: dict[str, Option] = {}
SHORT: dict[str, Option] = {}
for _option in OPTIONS:
    for _flag in _option.flags:
        (LONG if _flag.startswith("--") else SHORT)[_flag] = _option
KNOWN = frozenset((*LONG, *SHORT, "-h", "--help", "--version"))


def dest(option: Option) -> str:
    """Where the option's value goes: its Config field, or its long name with `_`."""
    return option.key or option.name.replace("-", "_")


def expand_original_abbreviations(argv: Sequence[str]) -> list[str]:
    """`--serv=X` -> `--service=X` when the prefix names exactly one of ORIGINAL_LONG and no
    option of ours; everything after a bare `--` is left alone."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        name, eq, value = arg.partition("=")
        if name.startswith("--") and len(name) > 2 and name not in KNOWN:
            full = [o for o in ORIGINAL_LONG if o.startswith(name[2:])]
            if len(full) == 1:
                arg = "--" + full[0] + eq + value
        out.append(arg)
    return out


def parse(argv: Sequence[str]) -> dict[str, Any] | None:
    """The options' values by destination, or None: argparse must decide (see the module doc).

    argv must have gone through expand_original_abbreviations."""
    values: dict[str, Any] = {dest(option): None for option in OPTIONS}
    count = len(argv)
    i = 0
    while i < count:
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            option = LONG.get(name)
            if option is None:
                return None
            if option.flag:
                if eq:
                    return None
                values[dest(option)] = True
                continue
            if not eq:
                if i == count or argv[i].startswith("-"):
                    return None
                value = argv[i]
                i += 1
            if not _store(values, option, value):
                return None
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                option = SHORT.get("-" + arg[j])
                if option is None:
                    return None
                if option.flag:
                    values[dest(option)] = True
                    j += 1
                    continue
                value = arg[j + 1:]
                if value.startswith("="):
                    return None
                if not value:
                    if i == count or argv[i].startswith("-"):
                        return None
                    value = argv[i]
                    i += 1
                if not _store(values, option, value):
                    return None
                break
        else:
            return None
    return values


def _store(values: dict[str, Any], option: Option, value: str) -> bool:
    if option.choices and value not in option.choices:
        return False
    key = dest(option)
    if option.flags[0] == "-s":
        values[key] = [*(values[key] or ()), value]
    else:
        values[key] = value
    return True
