"""`hapolicy --check-config`, run as a command: the example file passes and prints the
effective configuration; a broken file exits 2 with one line `FILE:LINE: what is wrong`.
And the example never rots: it documents every setting, with the defaults as its values.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from testkit.repo import REPO, run_hapolicy

from hapolicy.base import frozen
from hapolicy.cli import make_parser
from hapolicy.config.file import assemble, read_config_file
from hapolicy.config.options import FILE_KEYS, OPTIONS, SETTINGS, markdown_table, summary
from hapolicy.config.records import Config

EXAMPLE = REPO / "etc" / "hapolicy.conf.example"


def check_config(*args: str) -> subprocess.CompletedProcess:
    return run_hapolicy([*args, "--check-config"])


def test_example_passes_and_prints_the_effective_configuration():
    done = check_config("-c", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    expected = summary(assemble(read_config_file(str(EXAMPLE)), {}, []))
    assert done.stdout.splitlines() == expected
    pools = [line for line in expected if line.startswith("[pool ")]
    assert pools == ["[pool grey]", "[pool rate]", "[pool spf]"]
    assert "service = GREY1=127.0.0.1:10023:10:1:30" in done.stdout
    assert "balance = hash:client_address/24,sender,recipient" in done.stdout
    assert "default = dunno" in done.stdout


def test_command_line_overrides_show_in_the_effective_configuration():
    done = check_config("-c", str(EXAMPLE), "-d", "DEFER busy", "--workers", "7")
    assert done.returncode == 0, done.stderr
    assert "default = DEFER busy" in done.stdout.splitlines()
    assert "workers = 7" in done.stdout.splitlines()


@pytest.mark.parametrize("text, line, message", [
    ("service = A=127.0.0.1:1\nbogus-key = 1\n", 2, "unknown setting 'bogus-key'"),
    ("service = A=127.0.0.1:1\n\n# note\nworkers = zero\n", 4, "workers 'zero' is not a whole number"),
    ("total-timeout = -1\nservice = A=127.0.0.1:1\n", 1, "total timeout '-1' must be more than zero"),
    ("service = A=127.0.0.1:1\nsocket-mode = 999\n", 2, "socket mode '999' is not an octal mode"),
    ("service = A=127.0.0.1:1\nlisten = nohost\n", 2, "listen address 'nohost'"),
    ("service = A=127.0.0.1:1\nservice = B=127.0.0.1:2\nservice = A=127.0.0.1:3\n", 3,
     "service name 'A' is given twice (first on line 1)"),
    ("service = A=127.0.0.1:70000\n", 1, "service A: port '70000' must be at most 65535"),
    ("service = A=127.0.0.1:1\nmax-use = 5\nmax_use = 6\n", 3, "max-use set again (first on line 2)"),
    ("service = A=127.0.0.1:1\njust some words\n", 2, "expected 'key = value'"),
])
def test_broken_file_exits_2_with_one_line(tmp_path: Path, text: str, line: int, message: str):
    path = tmp_path / "broken.conf"
    path.write_text(text)
    done = check_config("-c", str(path), "--syslog-socket", "")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"hapolicy: error: {path}:{line}: {message}")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n")


def test_missing_file_exits_2(tmp_path: Path):
    done = check_config("-c", str(tmp_path / "nope.conf"))
    assert done.returncode == 2
    assert re.fullmatch(r"hapolicy: error: .*nope\.conf: cannot read config file: .*\n",
                        done.stderr)


def test_bad_option_exits_2_with_one_line():
    done = check_config("-s", "A=127.0.0.1:1", "--workers", "0")
    assert done.returncode == 2
    assert done.stderr == "hapolicy: error: --workers: workers '0' must be at least 1\n"


@pytest.mark.parametrize("args, message", [
    (("--check-interval", "0.01"), "--check-interval: check interval '0.01' must be at least 0.1 "
     "seconds (or 0)"),
    (("--check-down-interval", "0"), "--check-down-interval: check down interval '0' must be more "
     "than zero seconds"),
    (("--check-timeout", "1e400"), "--check-timeout: check timeout '1e400' must be a finite "
     "number of seconds"),
    (("--check-rise", "101"), "--check-rise: check rise '101' must be at most 100"),
    (("--check-fall", "0"), "--check-fall: check fall '0' must be at least 1"),
    (("--check-request", "sender=a@b"), "--check-request: check request 'sender=a@b' has no "
     "request= attribute (e.g. request=smtpd_access_policy)"),
    (("--all-down", "wait"), "argument --all-down: invalid choice: 'wait' (choose from 'default', "
     "'try')"),
])
def test_bad_check_options_exit_2_with_one_line(args, message):
    done = check_config("-s", "A=127.0.0.1:1", *args)
    assert done.returncode == 2
    assert done.stderr == f"hapolicy: error: {message}\n"


def _example_keys() -> dict[str, bool]:
    """Keys written in the example as `key = ...`, active (True) or commented out (False)."""
    keys: dict[str, bool] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#\s*)?([a-z][a-z-]*)\s*=", line)
        if match:
            key = match.group(2).replace("-", "_")
            key = FILE_KEYS[key].key if key in FILE_KEYS else key
            keys[key] = keys.get(key, False) or not match.group(1)
    return keys


def test_example_documents_every_setting():
    keys = _example_keys()
    missing = [key for key in SETTINGS if key not in keys]
    assert missing == [], f"not in {EXAMPLE.name}: {missing}"
    unknown = [key for key in keys if key not in SETTINGS and key != "service"]
    assert unknown == []


def test_example_values_are_the_defaults():
    settings = read_config_file(str(EXAMPLE)).top.settings  # before the pools' sections
    defaults = Config()
    wrong = {key: (value, getattr(defaults, key)) for key, value in settings.items()
             if value != getattr(defaults, key)}
    assert wrong == {}, "example value != default: " + repr(wrong)
    # all but `workers` (the number of cores of the machine) and a pool's own policy-context
    # and shadow
    assert set(SETTINGS) - set(settings) == {"workers", "policy_context", "shadow"}


def test_every_config_field_has_an_option():
    fields = {f for f in frozen.fields(Config) if f not in ("services", "config_file", "name", "pool_configs", "log_prefix")}
    assert fields == set(SETTINGS)


def test_help_says_what_every_option_does_and_its_default():
    parser = make_parser()
    helped = {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings}
    for option in OPTIONS:
        text = helped[option.flags[-1]]
        assert text and len(text) > 15, option.flags
        if option.key and option.key not in ("pidfile", "user", "group", "control", "control_group",
                                              "metrics_listen"):
            assert "(default: " in text, option.flags


def test_the_manual_option_table_is_the_option_table():
    manual = (REPO / "docs" / "configuration.md").read_text()
    start = manual.index("| option | meaning | default |")
    table = manual[start:manual.index("\n\n", start) + 1]
    assert table == markdown_table(), \
        "docs/configuration.md's table is stale: python -m hapolicy.config.options"


def test_a_prefix_of_digits_int_cannot_read_is_a_one_line_error():
    done = check_config("-s", "A=127.0.0.1:1", "--balance", "hash:client_address/\u00b2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("hapolicy: error: --balance:") and done.stderr.count("\n") == 1
