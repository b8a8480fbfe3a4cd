"""The command line read straight from the option table, so that a start needs no argparse.

`parse(argv)` reads the spellings that command lines of hapolicy use: `--name VALUE`,
`--name=VALUE`, `-x VALUE`, `-xVALUE`, flags, bundled short options (`-lv`, `-ldX`), a repeated
`-s`, and the choices of an option. It returns the value of every option by its destination (None
when not given, `service` a list), just as argparse's namespace holds it, or None for anything else:
`-h`, `--version`, an unknown option, a missing value, a value that begins with `-`, `-x=...`, `--`,
a word that is no option's value, a value outside the choices. Then cli.py lets argparse read the
command line, so every error message and every corner of argparse's grammar stay argparse's own;
tests/unit/config/test_cmdline.py checks that both agree wherever this one answers.

`expand_original_abbreviations` is done before either: the Perl original's Getopt::Long took
any unique prefix of its five long options (`--serv`, `--def`), and so do we.
"""

from __future__ import annotations

from hapolicy.config.options import OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from hapolicy.config.option import Option

# The original's long options; prefixes of the daemon's options stay errors.
ORIGINAL_LONG = ("service", "default", "logging", "verbose", "stdout")

LONG: dict[str, Option] = {}
SHORT: dict[str, Option] = {}
for _option in OPTIONS:
    for _flag in _option.flags:
        (LONG if _flag.startswith("--") else SHORT)[_flag] = _option
KNOWN = frozenset((*LONG, *SHORT, "-h", "--help", "--version"))


def dest(option: Option) -> str:
    """Where the option's value goes: its record's field, or its long name with `_`."""
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
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            i = _long(arg, argv, i, values)
        elif arg.startswith("-") and len(arg) > 1:
            i = _short(arg, argv, i, values)
        else:
            return None
        if i < 0:
            return None
    return values


def _following(argv: Sequence[str], i: int) -> str | None:
    """argv[i] as the value of the option before it; None when there is none or it looks like
    an option (argparse's way)."""
    if i == len(argv) or argv[i].startswith("-"):
        return None
    return argv[i]


def _long(arg: str, argv: Sequence[str], i: int, values: dict[str, Any]) -> int:
    """Take `--name[=value]` (its value maybe argv[i]); the next index, or -1: argparse's."""
    name, eq, value = arg.partition("=")
    option = LONG.get(name)
    if option is None:
        return -1
    if option.flag:
        if eq:
            return -1
        values[dest(option)] = True
        return i
    if not eq:
        value = _following(argv, i)
        if value is None:
            return -1
        i += 1
    return i if _store(values, option, value) else -1


def _short(arg: str, argv: Sequence[str], i: int, values: dict[str, Any]) -> int:
    """Take a bundle of short options (`-lv`, `-sX`, `-s X`); the next index, or -1."""
    for j in range(1, len(arg)):
        option = SHORT.get("-" + arg[j])
        if option is None:
            return -1
        if option.flag:
            values[dest(option)] = True
            continue
        value = arg[j + 1:]
        if value.startswith("="):
            return -1
        if not value:
            value = _following(argv, i)
            if value is None:
                return -1
            i += 1
        return i if _store(values, option, value) else -1
    return i


def _store(values: dict[str, Any], option: Option, value: str) -> bool:
    if option.choices and value not in option.choices:
        return False
    key = dest(option)
    if option.flags[0] == "-s":
        values[key] = [*(values[key] or ()), value]
    else:
        values[key] = value
    return True
