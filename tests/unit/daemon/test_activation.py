"""hapolicy.daemon.activation in process: which LISTEN_* variables are ours, garbage in LISTEN_FDS,
and matching a passed socket to a listen address by getsockname."""

from __future__ import annotations

import os
import socket

import pytest
from testkit.daemon import short_tmpdir

from hapolicy.daemon.activation import ActivationError, describe, find_passed, passed_sockets


def test_variables_of_another_pid_are_not_ours_and_stay():
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1)}
    assert passed_sockets(env) == []
    assert env["LISTEN_FDS"] == "1"
    assert passed_sockets({}) == []


@pytest.mark.parametrize("text", ["lots", "0", "-1", "99999"])
def test_garbage_in_listen_fds_is_one_line_and_the_variables_go(text: str):
    env = {"LISTEN_FDS": text, "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "x"}
    with pytest.raises(ActivationError, match=f"^LISTEN_FDS '{text}': expected a number"):
        passed_sockets(env)
    assert env == {}


def test_find_passed_by_inet_address_and_port_or_unix_path():
    path = str(short_tmpdir() / "s")
    with socket.socket() as inet, socket.socket(socket.AF_UNIX) as unix:
        inet.bind(("127.0.0.1", 0))
        unix.bind(path)
        port = inet.getsockname()[1]
        passed = [unix, inet]
        assert find_passed(f"127.0.0.1:{port}", passed) is inet
        assert find_passed(f"localhost:{port}", passed) is inet
        assert find_passed(f"127.0.0.1:{port + 1 if port < 65535 else 1}", passed) is None
        assert find_passed(f"unix:{path}", passed) is unix
        assert find_passed(f"unix:{path}x", passed) is None
        assert describe(inet) == f"127.0.0.1:{port}"
        assert describe(unix) == f"unix:{path}"
    os.unlink(path)
    os.rmdir(os.path.dirname(path))
