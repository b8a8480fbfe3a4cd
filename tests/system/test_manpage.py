"""The man pages (hapolicy/manpage.py) hold every option, setting and command with its default,
and agree with the manual (README.md, docs/configuration.md, docs/operating.md); the control
commands are declared once (commands.COMMANDS), and every one of them is answered; the Debian
version is the package's. Fast; the built package's pages are checked by
tests/system/test_debian_package.py.

The pages are made at build time (debian/rules) rather than committed: a change to the option
table or to the commands reaches them with no step to forget, and no page can be stale.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from testkit.packages import require_packages
from testkit.repo import REPO, hapolicy_env, run_hapolicy

from hapolicy import __version__, ctl, manpage
from hapolicy.config.option import COMMAND, DAEMON, default_of
from hapolicy.config.options import OPTIONS
from hapolicy.man import roff
from hapolicy.man import texts as mantexts
from hapolicy.monitor import commands

README = (REPO / "README.md").read_text()
CONFIGURATION = (REPO / "docs" / "configuration.md").read_text()
OPERATING = (REPO / "docs" / "operating.md").read_text()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Each page as man renders it: plain text, one line per paragraph, blanks collapsed."""
    require_packages("man-db")
    out = {}
    directory = tmp_path_factory.mktemp("man")
    for name, make in manpage.PAGES.items():
        path = directory / name
        path.write_text(make())
        done = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True,
                              text=True, timeout=60, check=False,
                              env={**os.environ, "MANWIDTH": "2000", "MANPAGER": "cat"})
        assert done.returncode == 0 and done.stderr == "", (name, done.stderr)  # no warning
        text = re.sub(r".\x08", "", done.stdout)
        out[name] = re.sub(r"[ \t]+", " ", text.replace("\u2010", "-"))
    return out


def plain(text: str) -> str:
    return text.replace("`", "")


def test_hapolicy_8_has_every_option_with_its_default(pages):
    page = pages["hapolicy.8"]
    for option in OPTIONS:
        tag = ", ".join(option.flags)
        match = re.search(rf"^ *{re.escape(tag)}\b.*\n(.*)$", page, re.M)
        assert match, tag
        if option.scope != COMMAND:
            default = default_of(option)
            said = f"Default: {plain(default)}." if default else "No default."
            assert said in match.group(1), (tag, said)
    for word in ("--version", "--help", "SIGNALS", "EXIT STATUS", "FILES", "master.cf",
                 "main.cf", "/usr/sbin/hapolicy", "spawn"):
        assert word in page, word
    for name, _ in mantexts.SIGNALS:
        assert re.search(rf"^ *{name}\b", page, re.M), name
    for status, _ in mantexts.EXIT_STATUS:
        assert re.search(rf"^ *{status} ", page, re.M), status


def test_hapolicy_conf_5_has_every_setting_with_its_default_where_it_belongs(pages):
    page = pages["hapolicy.conf.5"]
    daemon, _, pools = page.partition("\nPOOL SETTINGS\n")
    daemon = daemon.partition("\nDAEMON SETTINGS\n")[2]
    assert daemon and pools
    for option in OPTIONS:
        if option.scope == COMMAND:
            continue
        part = daemon if option.scope == DAEMON else pools
        match = re.search(rf"^ *{re.escape(option.name)} = .*\n(.*)$", part, re.M)
        assert match, option.name
        default = default_of(option)
        if option.flag:
            default = "yes" if default == "on" else "no"
        assert (f"Default: {plain(default)}." if default else "No default.") in match.group(1)
    assert "service = NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]" in page
    assert "[pool grey]" in page and "policy_context=rate" in page


def test_hapolicyctl_8_and_help_have_every_command_and_option(pages):
    page = pages["hapolicyctl.8"]
    done = subprocess.run([sys.executable, "-m", "hapolicy.ctl", "--help"], capture_output=True,
                          text=True, env=hapolicy_env(), timeout=20, check=False)
    assert done.returncode == 0 and done.stdout.startswith(ctl.USAGE)
    for usage, _ in commands.COMMANDS:
        assert re.search(rf"^ *{re.escape(usage)}\b", page, re.M), usage
        assert re.search(rf"^ *{re.escape(usage)} ", done.stdout, re.M), usage
    for flags, _ in ctl.OPTIONS:
        assert re.search(rf"^ *{re.escape(flags)}\b", page, re.M), flags
    for status, _ in ctl.EXIT_STATUS:
        assert re.search(rf"^ *{status} ", page, re.M), status


def test_commands_are_declared_once_and_each_is_answered():
    usages = [usage for usage, _ in commands.COMMANDS]
    helped = [line.split("  ")[1] for line in commands.HELP.splitlines()[1:]]
    assert [h.strip() for h in helped] == usages
    idle = SimpleNamespace(pools=[])
    for usage in usages:
        line = re.sub(r"\b[A-Z]+/[A-Z]+\b", "p/s", usage)  # disable POOL/SERVICE: no pool p
        line = re.sub(r"\b[A-Z]+\b", "1", line)  # any other argument, e.g. N
        answer = commands.answer(line, idle, {}, {}, None, None)
        assert "unknown command" not in answer and "takes no arguments" not in answer, usage
    # and only those: any other word is unknown
    assert "unknown command" in commands.answer("bogus", idle, {}, {}, None, None)


def test_the_manual_command_table_lists_the_commands():
    start = OPERATING.index("| command | answer |")
    table = OPERATING[start:OPERATING.index("\n\n", start)]
    listed = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    assert listed == [usage for usage, _ in commands.COMMANDS]


def block(text: str, indent: str = "    ") -> str:
    return "".join(indent + line + "\n" if line else "\n" for line in text.splitlines())


def test_the_manual_shows_the_pages_examples_and_signals():
    """The README's first configurations, the pools of docs/configuration.md, the status, the
    ask and the signal table of docs/operating.md are the pages' own."""
    assert "`/etc/hapolicy.conf`:\n\n" + block(mantexts.EXAMPLE_POOLS) + "\nmain.cf:\n\n" + \
        block(mantexts.EXAMPLE_POOLS_MAIN_CF) in CONFIGURATION
    assert block(mantexts.SPAWN_MASTER_CF).replace("/usr/sbin/", "/usr/local/bin/") in README
    assert block(mantexts.SPAWN_MAIN_CF) in README
    assert block(mantexts.DAEMON_MAIN_CF) in README
    assert block(mantexts.STATUS_EXAMPLE) in OPERATING
    assert block(mantexts.ASK_EXAMPLE) in OPERATING
    start = OPERATING.index("| signal | effect |")
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$",
                      OPERATING[start:OPERATING.index("\n\n", start)], re.M)
    assert rows[1:] == list(mantexts.SIGNALS) and rows[0] == ("signal", "effect")


def test_every_master_cf_example_runs_spawn_mode_as_the_user_hapolicy():
    """Not as nobody, whom other services share: any process of that user can write the state
    file every spawned session maps (statefile.py)."""
    assert "\n  user=hapolicy argv=" in mantexts.SPAWN_MASTER_CF
    sources = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "etc").iterdir(),
               *(p for p in (REPO / "debian").iterdir() if p.is_file())]
    texts = {str(p): p.read_text() for p in sources}
    texts.update({name: make() for name, make in manpage.PAGES.items()})
    for name, text in texts.items():
        entries = re.findall(r"^\s+user=(\S+) argv=", text, re.M)
        assert set(entries) <= {"hapolicy"}, name
    assert re.findall(r"^\s+user=(\S+) argv=", README, re.M) == ["hapolicy"]


def test_the_example_with_pools_is_a_valid_configuration(tmp_path):
    path = tmp_path / "pools.conf"
    path.write_text(mantexts.EXAMPLE_POOLS)
    done = run_hapolicy(["-c", str(path), "--check-config"])
    assert done.returncode == 0, done.stderr
    assert "[pool grey]" in done.stdout and "[pool spf]" in done.stdout


def test_the_command_line_of_the_generator(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hapolicy.manpage", "hapolicyctl.8"],
                          capture_output=True, text=True, env=hapolicy_env(), timeout=20,
                          check=False)
    assert done.returncode == 0 and done.stdout == manpage.PAGES["hapolicyctl.8"]()
    assert done.stdout.startswith(f'.TH HAPOLICYCTL 8 "" "hapolicy {__version__}"')
    done = subprocess.run([sys.executable, "-m", "hapolicy.manpage", "--dir", str(tmp_path)],
                          env={**hapolicy_env(), "SOURCE_DATE_EPOCH": "1796126400"},
                          timeout=20, check=False)
    assert done.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(manpage.PAGES)
    assert '.TH HAPOLICY 8 "2026-12-01"' in (tmp_path / "hapolicy.8").read_text()
    done = subprocess.run([sys.executable, "-m", "hapolicy.manpage", "hapolicy.1"],
                          capture_output=True, text=True, env=hapolicy_env(), timeout=20,
                          check=False)
    assert done.returncode == 2 and done.stderr.startswith("usage:")
    done = subprocess.run([sys.executable, "-m", "hapolicy.manpage", "--dir",
                           str(tmp_path / "missing")], capture_output=True, text=True,
                          env=hapolicy_env(), timeout=20, check=False)
    assert (done.returncode, done.stderr) == (
        1, f"hapolicy.manpage: cannot write {tmp_path}/missing/hapolicy.8: No such file or "
        "directory\n")


def test_roff_escapes():
    assert roff.escape("a-b\\c ÷") == "a\\-b\\ec \\[u00F7]"
    assert roff.inline("use `--x` now") == "use \\fB\\-\\-x\\fR now"
    assert roff.lines(".x\n'y\nz") == "\\&.x\n\\&'y\nz\n"


def test_the_debian_version_is_the_packages():
    changelog = (REPO / "debian" / "changelog").read_text()
    assert changelog.startswith(f"hapolicy ({__version__}) ")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(__version__)}"$', pyproject, re.M)
