"""Bash completion for hapolicy and hapolicyctl, made from the sources as the man pages are.

    python -m hapolicy.completion PROGRAM        one script (hapolicy, hapolicyctl)
    python -m hapolicy.completion --dir DIR      both, as DIR/PROGRAM

hapolicy's options come from the option table (config/options.py; `--help` and `--version`
are argparse's), hapolicyctl's from `ctl.OPTIONS`, its commands from `commands.COMMANDS` and
`check`, whose options are `check.OPTIONS`. A value is completed where that is cheap and
certain: a file for FILE and PATH, a user, a group, the choices of a choice; after
disable/drain/enable/weight the POOL/SERVICE names and after `check --pool` the pools, which
hapolicyctl reads from the daemon's `csv` (at most 2 s; nothing when the socket is not the
user's). The Debian package runs this at build time (debian/rules) and installs the scripts in
/usr/share/bash-completion/completions/, where bash-completion loads them on first use.
"""

from __future__ import annotations

import sys

from hapolicy.check import OPTIONS as CHECK_OPTIONS
from hapolicy.config.options import OPTIONS
from hapolicy.ctl import OPTIONS as CTL_OPTIONS
from hapolicy.man.generated import generate
from hapolicy.monitor.commands import COMMANDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

HEAD = ("# bash completion for {program}: made by `python -m hapolicy.completion`\n"
        "# from {what}; do not edit\n")
FILES = "mapfile -t COMPREPLY < <(compgen -f -- \"$cur\"); compopt -o filenames 2>/dev/null"
SERVICE_COMMANDS = ("disable", "drain", "enable", "weight")


def words(command: str, choices: Iterable[str]) -> str:
    """A bash command that completes `cur` from these words."""
    return f"{command}mapfile -t COMPREPLY < <(compgen -W '{' '.join(choices)}' -- \"$cur\")"


def value_cases(rows: Sequence[tuple[Sequence[str], str]], indent: str) -> str:
    """`case $prev` branches: (flags, the completion of their value)."""
    return "".join(f"{indent}{'|'.join(flags)}) {action}; return;;\n" for flags, action in rows)


def hapolicy_script() -> str:
    rows, flags = [], []
    for option in OPTIONS:
        flags += option.flags
        if option.flag:
            continue
        if option.choices:
            action = words("", option.choices)
        elif option.metavar in ("FILE", "PATH"):
            action = FILES
        elif option.metavar == "USER":
            action = "mapfile -t COMPREPLY < <(compgen -u -- \"$cur\")"
        elif option.metavar == "GROUP":
            action = "mapfile -t COMPREPLY < <(compgen -g -- \"$cur\")"
        else:
            action = "COMPREPLY=()"  # a value of its own: nothing to offer
        rows.append((option.flags, action))
    flags += ["-h", "--help", "--version"]
    return (HEAD.format(program="hapolicy(8)", what="its option table (config/options.py)")
            + "_hapolicy() {\n"
            "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
            "    case $prev in\n" + value_cases(rows, " " * 8) + "    esac\n"
            + words("    ", flags) + "\n}\ncomplete -F _hapolicy hapolicy\n")


def split_rows(rows: Iterable[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """The flags of rows like ("-c, --config CONFIG", text), and those that take a value."""
    flags, valued = [], []
    for key, _ in rows:
        own = [word.rstrip(",") for word in key.split() if word.startswith("-")]
        flags += own
        if any(not word.startswith("-") for word in key.split()):
            valued.append(own)
    return flags, valued


def hapolicyctl_script() -> str:
    flags, valued = split_rows(CTL_OPTIONS)
    commands = [usage.split()[0] for usage, _ in COMMANDS] + ["check"]
    check_flags, check_valued = split_rows(CHECK_OPTIONS)
    pools = ("mapfile -t COMPREPLY < <(compgen -W \"$(_hapolicyctl_ask \"$1\" 1 | sort -u)\" "
             "-- \"$cur\")")
    check_rows = [(own, pools if own == ["--pool"] else "COMPREPLY=()") for own in check_valued]
    return (HEAD.format(program="hapolicyctl(8)", what="its options (ctl.py, check.py) and the "
                        "control commands (monitor/commands.py)")
            + "_hapolicyctl_ask() {  # POOL/SERVICE names (field 1: the pools) of the csv\n"
            "    local fields='$1 \"/\" $2'\n"
            "    [ \"$2\" = 1 ] && fields='$1'\n"
            "    # only names a config file allows: compgen -W expands $(...) in what it gets\n"
            "    timeout 2 \"$1\" \"${ctl[@]}\" csv 2>/dev/null | awk -F, \"NF > 2 && !/^#/ &&\n"
            "        \\$1 ~ /^[A-Za-z0-9_.-]+\\$/ && \\$2 ~ /^[A-Za-z0-9_.-]+\\$/ {print $fields}\"\n"
            "}\n"
            "_hapolicyctl() {\n"
            "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
            "    local i=1 command= ctl=()\n"
            "    while [ \"$i\" -lt \"$COMP_CWORD\" ]; do\n"
            "        case ${COMP_WORDS[i]} in\n"
            + "".join(f"            {'|'.join(own)}) ctl+=(\"${{COMP_WORDS[i]}}\" "
                      "\"${COMP_WORDS[i+1]}\"); i=$((i + 2));;\n" for own in valued)
            + "            -*) i=$((i + 1));;\n"
            "            *) command=${COMP_WORDS[i]}; break;;\n"
            "        esac\n"
            "    done\n"
            "    case $command in\n"
            "        '')\n"
            "            case $prev in\n"
            + value_cases([(own, FILES) for own in valued], " " * 16)
            + "            esac\n"
            + words("            ", flags + commands) + ";;\n"
            f"        {'|'.join(SERVICE_COMMANDS)})\n"
            "            [ \"$COMP_CWORD\" -eq $((i + 1)) ] &&\n"
            "                mapfile -t COMPREPLY < <(compgen -W \"$(_hapolicyctl_ask \"$1\")\" "
            "-- \"$cur\");;\n"
            "        check)\n"
            "            case $prev in\n"
            + value_cases(check_rows, " " * 16)
            + "            esac\n"
            + words("            ", check_flags) + ";;\n"
            "    esac\n"
            "}\ncomplete -F _hapolicyctl hapolicyctl\n")


SCRIPTS = {"hapolicy": hapolicy_script, "hapolicyctl": hapolicyctl_script}
USAGE = ("usage: python -m hapolicy.completion PROGRAM | --dir DIR   (PROGRAM: "
         + ", ".join(SCRIPTS) + ")")


def main(argv: Sequence[str]) -> int:
    return generate(argv, SCRIPTS, "hapolicy.completion", USAGE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
