"""Several pools in one daemon: each with its own services and default action, policy_context
routing on a shared address, a reload that adds and removes pools and addresses under load,
fail-answer, and config errors inside sections named FILE:LINE.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.load import Load
from testkit.ports import HOST, free_port, refused_port
from testkit.protocol import read_frame, request
from testkit.wait import wait_for

from hapolicy.base.protocol import Request
from hapolicy.config.file import assemble, read_config_file
from hapolicy.config.records import ConfigError, Service
from hapolicy.request.hashkey import key_function, mask_address


def ask(port: int, **attrs: str) -> str:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(request(**attrs))
        return read_frame(sock).decode()


def refuses(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_two_pools_then_a_reload_adds_one_and_removes_one_without_losing_a_request(
        tmp_path: Path):
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    conf = tmp_path / "pools.conf"
    pool_a = f"[pool a]\nlisten = {HOST}:{port_a}\nservice = ECHO={HOST}:{{echo}}\n" \
             "default = A-DEF\n"
    pool_b = f"[pool b]\nlisten = {HOST}:{port_b}\nservice = DEAD={HOST}:{refused_port()}\n" \
             "default = B-DEF\n"
    with FakeBackend(mode="echo", attr="recipient") as echo, \
            FakeBackend(action="FROM-C") as backend_c:
        pool_a = pool_a.format(echo=echo.port)
        conf.write_text("check-interval = 0\n" + pool_a + pool_b)
        with Daemon("-c", str(conf), listen="", workers=2) as daemon:
            assert ask(port_a, recipient="x@example.net") == "action=x@example.net\n\n"
            assert ask(port_b) == "action=B-DEF\n\n"  # its own default action
            daemon.log.wait("pool b: no service answered (all services failed): action=B-DEF")
            loads = [Load([socket.create_connection((HOST, port_a)) for _ in range(10)], 0,
                          name=f"P{t}-").start() for t in range(3)]
            wait_for(lambda: all(load.answered > 50 for load in loads), 10)

            conf.write_text("check-interval = 0\n" + pool_a + f"[pool c]\nlisten = {HOST}:"
                            f"{port_c}\nservice = C={HOST}:{backend_c.port}\ndefault = C-DEF\n")
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded: pools a (1 services), c (1 services), 2 workers")
            assert ask(port_c) == "action=FROM-C\n\n"
            wait_for(lambda: refuses(port_b), 10, what=f"pool b's port {port_b} to close")
            assert ask(port_a, recipient="y@example.net") == "action=y@example.net\n\n"
            during = [load.answered for load in loads]
            wait_for(lambda: all(load.answered > n + 50 for load, n in zip(loads, during)), 10)
            for load in loads:
                load.stop()
            for load in loads:
                load.join()
            assert [load.errors for load in loads] == [[], [], []]
            assert all(load.answered == load.sent for load in loads)
            text = daemon.log.text()
            assert f"reload: listening on {HOST}:{port_c}" in text
            assert f"reload: no longer listening on {HOST}:{port_b}" in text
            assert daemon.stop() == 0


def test_pools_on_one_address_are_chosen_by_policy_context(tmp_path: Path):
    port = free_port()
    conf = tmp_path / "ctx.conf"
    with FakeBackend(action="GREY") as grey, FakeBackend(action="RATE") as rate:
        conf.write_text(
            f"check-interval = 0\nlisten = {HOST}:{port}\n"
            f"[pool grey]\npolicy-context = grey\nservice = G={HOST}:{grey.port}\n"
            f"[pool rate]\npolicy-context = rate\nservice = R={HOST}:{rate.port}\n"
            "default = RATE-DEF\n")
        with Daemon("-c", str(conf), listen="", workers=1) as daemon:
            assert ask(port, policy_context="grey") == "action=GREY\n\n"
            assert ask(port, policy_context="rate") == "action=RATE\n\n"
            # no pool says `*`: the first pool's default action, and a warning
            assert ask(port, policy_context="spf") == "action=dunno\n\n"
            assert ask(port) == "action=dunno\n\n"
            daemon.log.wait("request of policy_context spf that no pool serves: answering "
                            "pool grey's action=dunno")
            conf.write_text(conf.read_text().replace("policy-context = rate",
                                                     "policy-context = *"))
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded: pools grey")
            wait_for(lambda: ask(port, policy_context="spf") == "action=RATE\n\n", 10)
            assert ask(port, policy_context="grey") == "action=GREY\n\n"
            assert ask(port) == "action=RATE\n\n"


def test_an_answer_matching_fail_answer_fails_over_and_takes_the_service_down(tmp_path: Path):
    with FakeBackend(action="451 4.3.5 Server configuration problem") as broken, \
            FakeBackend(action="DUNNO") as good:
        with Daemon("-s", broken.spec("BROKEN", prio=1), "-s", good.spec("GOOD", prio=2),
                    "--fail-answer", r"^451 4\.3\.5|service temporarily unavailable",
                    "--check-interval", "0", "--cooldown", "30", "-l", "-v",
                    workers=1) as daemon:
            assert ask(daemon.port) == "action=DUNNO\n\n"
            text = daemon.log.wait_text("service BROKEN")
            assert ("service BROKEN (" in text and "down: answer matched fail-answer: 451 4.3.5 "
                    "Server configuration problem, retry in 30s") in text
            assert 'failed="BROKEN: answer matched fail-answer: 451 4.3.5' in \
                daemon.log.wait_text("pool=default service=GOOD")
            before = len(broken.requests)
            for _ in range(5):  # down: not asked again during its cool-down
                assert ask(daemon.port) == "action=DUNNO\n\n"
            assert len(broken.requests) == before


def test_checks_count_a_fail_answer_as_a_failed_check(tmp_path: Path):
    with FakeBackend(action="DEFER_IF_PERMIT Service temporarily unavailable") as broken, \
            FakeBackend(action="DUNNO") as good:
        with Daemon("-s", broken.spec("BROKEN", prio=1), "-s", good.spec("GOOD", prio=2),
                    "--fail-answer", "service temporarily unavailable",
                    "--check-interval", "0.2", "--check-down-interval", "0.2",
                    workers=1) as daemon:
            daemon.log.wait("service BROKEN (")
            assert "check: answer matched fail-answer" in daemon.log.text()
            assert ask(daemon.port) == "action=DUNNO\n\n"
            time.sleep(1.0)  # checks keep it down: no "up" line
            assert f"service BROKEN ({HOST}:{broken.port}) up" not in daemon.log.text()


def test_hash_prefixes_key_on_the_network_of_an_address():
    assert mask_address(b"192.0.2.10", 24, 64) == mask_address(b"192.0.2.200", 24, 64)
    assert mask_address(b"192.0.2.10", 24, 64) != mask_address(b"192.0.3.10", 24, 64)
    assert mask_address(b"2001:db8:1:2::5", 24, 64) == mask_address(b"2001:db8:1:2:ff::1", 24, 64)
    assert mask_address(b"2001:db8:1:2::5", 24, 64) != mask_address(b"2001:db8:1:3::5", 24, 64)
    assert mask_address(b"unknown", 24, 64) == b"unknown"
    key = key_function("hash:client_address/24,sender")
    one = Request(b"client_address=192.0.2.1\nsender=a@b\n\n")
    two = Request(b"client_address=192.0.2.99\nsender=a@b\n\n")
    assert key(one) == key(two)
    plain = key_function("hash:client_address,sender")
    assert plain(one) == b"192.0.2.1\0a@b" and plain(one) != plain(two)
    v6 = key_function("hash:client_address/48")  # /48 for IPv6, IPv4 at its /24
    assert v6(Request(b"client_address=2001:db8:1:5::1\n\n")) == \
        v6(Request(b"client_address=2001:db8:1:7::1\n\n"))
    assert v6(Request(b"client_address=192.0.2.1\n\n")) == \
        v6(Request(b"client_address=192.0.2.2\n\n"))
    assert key_function("weighted") is None


@pytest.mark.parametrize(("text", "fragment"), [
    ("[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\nbogus = 1\n",
     ":4: unknown setting 'bogus'"),
    ("[pool a]\nworkers = 2\n", ":2: workers is a setting of the daemon, not of pool a"),
    ("service = A=127.0.0.1:1\n[pool a]\nlisten = 127.0.0.1:5\n",
     ":1: service outside any [pool] section"),
    ("policy-context = x\n[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\n",
     ":1: policy-context outside any [pool] section"),
    ("[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\n"
     "[pool b]\nlisten = 127.0.0.1:5\nservice = B=127.0.0.1:1\n",
     ":4: pool b: shares 127.0.0.1:5 with pool a; pools on one address need a policy-context"),
    ("[pool a]\nlisten = 127.0.0.1:5\n\n[pool b]\nlisten = 127.0.0.1:6\n"
     "service = B=127.0.0.1:1\n", ":1: pool a: no service given"),
    ("[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\n[pool a]\n",
     ":4: pool 'a' is given twice (first on line 1)"),
    ("[pool a]\nservice = A=127.0.0.1:1\n[pool b]\nlisten = 127.0.0.1:6\n"
     "service = B=127.0.0.1:1\n", ":1: pool a: no listen address"),
    ("[pools]\n", ":1: expected a section '[pool NAME]'"),
    ("[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\nbalance = hash:client_address/200\n",
     ":4: balance 'hash:client_address/200'"),
    ("[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\nfail-answer = (\n",
     ":4: fail-answer '(' is not a regular expression"),
    ("[pool a]\nlisten = 127.0.0.1:5\nservice = A=127.0.0.1:1\ncooldown = 9\ncooldown-max = 3\n",
     ":1: pool a: cooldown-max 3.0 is below cooldown 9.0"),
])
def test_config_errors_inside_sections_name_file_and_line(tmp_path: Path, text: str,
                                                          fragment: str):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        assemble(read_config_file(str(path)), {}, [])
    assert str(err.value).startswith(f"{path}:") and fragment in str(err.value), str(err.value)


def test_a_file_of_pools_assembles_every_pool_with_the_defaults_before_the_sections(
        tmp_path: Path):
    path = tmp_path / "ok.conf"
    path.write_text("workers = 3\ntotal-timeout = 7\nlisten = 127.0.0.1:9\n"
                    "[pool a]\npolicy-context = a\nservice = A=127.0.0.1:1\n"
                    "[pool b]\npolicy-context = *\nservice = A=127.0.0.1:2\ntotal-timeout = 8\n")
    config = assemble(read_config_file(str(path)), {"default_action": "X"}, [])
    assert [p.name for p in config.pools] == ["a", "b"]
    assert config.workers == 3 and config.addresses == ["127.0.0.1:9"]
    assert [p.total_timeout for p in config.pools] == [7.0, 8.0]
    assert [p.default_action for p in config.pools] == ["X", "X"]  # the command line wins
    assert config.pools[1].services == (Service("A", "127.0.0.1", 2),)
    with pytest.raises(ConfigError, match="-s cannot be used"):
        assemble(read_config_file(str(path)), {}, [Service("S", "127.0.0.1", 3)])


def test_a_request_of_no_pool_counts_toward_max_use():
    """The router answers it itself, with the first pool's default: the worker's max-use
    counts it all the same (else a stream of them would never retire the worker)."""
    from types import SimpleNamespace

    from hapolicy.base.protocol import Request
    from hapolicy.request.routing import ContextRouter

    counted: list[int] = []
    first = SimpleNamespace(default_answer=b"action=DUNNO\n\n", count=lambda: counted.append(1),
                            config=SimpleNamespace(name="grey", default_action="DUNNO"))
    other = SimpleNamespace(submit=lambda request, client: None)
    log = SimpleNamespace(warning=lambda line: None)
    router = ContextRouter([("grey", first), ("rate", other)], log)
    answers: list[bytes] = []
    client = SimpleNamespace(deliver=answers.append, route=None, instance=b"")
    router.submit(Request(b"policy_context=spf\nsender=a@b\n\n"), client)
    assert answers == [b"action=DUNNO\n\n"] and counted == [1]
