"""Service specs, options and the config file."""

import pytest

from hapolicy.cli import load_config
from hapolicy.config.file import read_config_file
from hapolicy.config.records import ConfigError, parse_service


@pytest.mark.parametrize("spec, expected", [
    ("G=10.0.0.1:10031", ("G", "10.0.0.1", 10031, 10, 1, 30.0, "")),
    ("G=10.0.0.1:10031:9", ("G", "10.0.0.1", 10031, 9, 1, 30.0, "")),
    ("G=host.example:10031::3", ("G", "host.example", 10031, 10, 3, 30.0, "")),
    ("G=10.0.0.1:10031:::2.5", ("G", "10.0.0.1", 10031, 10, 1, 2.5, "")),
    ("G=10.0.0.1:10031:5:2:7", ("G", "10.0.0.1", 10031, 5, 2, 7.0, "")),
    ("G=[2001:db8::1]:10031:5", ("G", "2001:db8::1", 10031, 5, 1, 30.0, "")),
    ("G=unix:/run/pg.sock", ("G", "", 0, 10, 1, 30.0, "/run/pg.sock")),
    ("G=unix:/run/pg.sock:1:4:9", ("G", "", 0, 1, 4, 9.0, "/run/pg.sock")),
])
def test_good_specs(spec, expected):
    s = parse_service(spec)
    assert (s.name, s.host, s.port, s.prio, s.weight, s.timeout, s.path) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("G", "expected NAME=HOST:PORT"),
    ("=1.2.3.4:5", "name"),
    ("G=1.2.3.4", "expected NAME=HOST:PORT"),
    ("G=1.2.3.4:0", "port '0'"),
    ("G=1.2.3.4:70000", "at most 65535"),
    ("G=1.2.3.4:x", "port 'x'"),
    ("G=1.2.3.4:5:ten", "priority 'ten'"),
    ("G=1.2.3.4:5:10:0", "weight '0'"),
    ("G=1.2.3.4:5:10:1:-3", "timeout '-3'"),
    ("G=1.2.3.4:5:10:1:0", "timeout '0'"),
    ("G=1.2.3.4:5:10:1:nan", "timeout 'nan'"),
    ("G=1.2.3.4:5:1:1:1:1", "too many fields"),
    ("G=[::1:5", "[IPv6]:PORT"),
    ("G=unix:relative", "absolute"),
    ("bad name=1.2.3.4:5", "name"),
])
def test_bad_specs_name_the_bad_value(spec, fragment):
    with pytest.raises(ConfigError) as err:
        parse_service(spec)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_original_command_line():
    config, _ = load_config(["-d", "DEFER_IF_PERMIT policy service unavailable", "-lv", "-L",
                             "-s", "GREY1=10.0.0.1:10031:10", "--service=GREY2=10.0.0.2:10031:20"])
    assert config.default_action == "DEFER_IF_PERMIT policy service unavailable"
    assert config.log_requests and config.verbose and config.log_stderr
    assert [s.name for s in config.services] == ["GREY1", "GREY2"]


def test_duplicate_service_names_refused():
    with pytest.raises(ConfigError, match="given twice"):
        load_config(["-s", "A=1.2.3.4:5", "-s", "A=1.2.3.4:6"])


def test_config_file_and_command_line_override(tmp_path):
    path = tmp_path / "h.conf"
    path.write_text("# comment\ndefault = REJECT busy\ntotal-timeout = 20\n"
                    "service = A=127.0.0.1:10031:5\nservice = B=127.0.0.1:10032\n")
    config, _ = load_config(["-c", str(path), "--total-timeout", "9"])
    assert config.default_action == "REJECT busy"
    assert config.total_timeout == 9
    assert [s.name for s in config.services] == ["A", "B"]
    config, _ = load_config(["-c", str(path), "-s", "C=127.0.0.1:1"])
    assert [s.name for s in config.services] == ["C"]


@pytest.mark.parametrize("text, fragment", [
    ("bogus = 1\n", ":1: unknown setting 'bogus'"),
    ("workers = zero\n", ":1: workers 'zero'"),
    ("\n\nservice = A\n", ":3: service 'A'"),
    ("total-timeout = 5\ntotal_timeout = 6\n", ":2: total-timeout set again"),
    ("just words\n", ":1: expected 'key = value'"),
])
def test_config_file_errors_name_file_and_line(tmp_path, text, fragment):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config_file(str(path))
    assert str(err.value).startswith(str(path)) and fragment in str(err.value)


def test_unix_paths_the_kernel_refuses_are_config_errors():
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        parse_service("U=unix:/" + "x" * 120)
    with pytest.raises(ConfigError, match="NUL"):
        parse_service("U=unix:/tmp/a\0b")
