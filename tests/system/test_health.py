"""Shared health and balancing across the workers of a real daemon.

A dead service costs one timeout (the first request's), not one per request: every worker
skips it once any worker saw it fail; it comes back by a probe request or an active check.
Weights and hash routing hold for the whole daemon. Bounds on time are generous (shared,
noisy machines): they tell "paid a timeout" from "answered at once", nothing finer.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.ports import refused_port
from testkit.protocol import PolicyClient, request
from testkit.stubs import Blackhole
from testkit.wait import wait_for


def ask(daemon: Daemon, **attrs) -> tuple[str, float]:
    """One request on a new connection: (action, seconds)."""
    started = time.monotonic()
    with PolicyClient("127.0.0.1", daemon.port) as client:
        answer = client.ask(request(**attrs), timeout=30)
    return answer.split("\n")[0].removeprefix("action="), time.monotonic() - started


@pytest.fixture
def good():
    with FakeBackend(action="OK good", name="GOOD") as backend:
        yield backend


def test_silent_service_costs_only_the_first_request(good):
    with FakeBackend(mode="silent") as silent, Daemon(
            "-s", silent.spec("SILENT", prio=10, timeout=2), "-s", good.spec("GOOD", prio=20),
            "--cooldown", "60", workers=2) as daemon:
        action, first = ask(daemon)
        assert action == "OK good" and first >= 1.5
        later = [ask(daemon, sender=f"s{i}@example.org") for i in range(20)]
        assert all(a == "OK good" for a, _ in later)
        assert sum(t for _, t in later) < 2.0  # together less than one timeout
        assert len(silent.live_requests) == 1  # no other request, from any worker, went there
        assert "service SILENT (127.0.0.1:" in daemon.log.wait_text("down: no answer after")


def test_blackholed_service_costs_one_connect_timeout():
    with Blackhole() as hole, FakeBackend(action="OK good") as good, Daemon(
            "-s", f"HOLE=127.0.0.1:{hole.port}:10:1:30", "-s", good.spec("GOOD", prio=20),
            "--connect-timeout", "1", "--cooldown", "60", workers=2) as daemon:
        action, first = ask(daemon)
        assert action == "OK good" and 0.8 <= first < 10
        later = [ask(daemon) for _ in range(20)]
        assert all(a == "OK good" for a, _ in later)
        assert sum(t for _, t in later) < 1.0
        assert "down: connect timeout after 1.0s" in daemon.log.wait_text("connect timeout")


def test_healed_service_gets_traffic_back_through_a_probe(good):
    port = refused_port()
    with Daemon("-s", f"MAIN=127.0.0.1:{port}:10", "-s", good.spec("GOOD", prio=20),
                "--cooldown", "0.5", "--cooldown-max", "0.5", "--check-interval", "0",
                workers=2) as daemon:
        assert ask(daemon)[0] == "OK good"
        with FakeBackend(action="OK main", port=port):
            time.sleep(0.7)
            answers = [ask(daemon)[0] for _ in range(10)]
            assert answers == ["OK main"] * 10
            assert f"service MAIN (127.0.0.1:{port}) up" in daemon.log.wait_text(" up")


def test_active_checks_find_a_dead_service_before_traffic_and_a_healed_one(good):
    port = refused_port()
    with Daemon("-s", f"MAIN=127.0.0.1:{port}:10", "-s", good.spec("GOOD", prio=20), "-l",
                "--check-interval", "0.3", "--cooldown", "60", workers=2) as daemon:
        daemon.log.wait("down: check: connection refused")
        assert ask(daemon)[0] == "OK good"
        line = daemon.log.wait_text("service=GOOD")
        assert "failed=" not in line  # traffic never tried the dead service
        with FakeBackend(action="OK main", port=port) as main:
            daemon.log.wait(f"service MAIN (127.0.0.1:{port}) up")  # no traffic needed
            assert ask(daemon)[0] == "OK main"
            assert main.requests[0]["sender"] == "hapolicy-check@localhost"


def test_weights_hold_for_the_whole_daemon():
    with FakeBackend(action="A") as a, FakeBackend(action="B") as b, Daemon(
            "-s", a.spec("A", prio=10, weight=2), "-s", b.spec("B", prio=10, weight=1),
            "--sticky-instance", "no", workers=2) as daemon:
        counts: Counter[str] = Counter()
        for conn in range(30):
            with PolicyClient("127.0.0.1", daemon.port) as client:
                for i in range(10):
                    answer = client.ask(request(instance=f"{conn}.{i}"))
                    counts[answer.split("\n")[0][7:]] += 1
        assert abs(counts["A"] - 200) <= 6 and abs(counts["B"] - 100) <= 6, counts


def test_weights_stay_right_while_a_service_goes_down_and_comes_back():
    port = refused_port()
    with FakeBackend(action="A") as a, Daemon(
            "-s", a.spec("A", prio=10), "-s", f"B=127.0.0.1:{port}:10",
            "--cooldown", "0.3", "--cooldown-max", "0.3", "--sticky-instance", "no",
            "--check-interval", "0", workers=2) as daemon:
        assert {ask(daemon)[0] for _ in range(20)} == {"A"}
        with FakeBackend(action="B", port=port):
            time.sleep(0.5)
            counts = Counter(ask(daemon)[0] for _ in range(40))
        # back at its share at once: no burst while it "catches up" on what it missed
        assert 16 <= counts["B"] <= 24, counts


def triplet(i: int) -> dict[str, str]:
    return {"client_address": f"192.0.2.{i % 250}", "sender": f"s{i}@example.org",
            "recipient": f"r{i}@example.net", "instance": f"i{i}"}


def test_hash_routing_is_stable_and_a_dead_server_moves_only_its_share():
    backends = [FakeBackend(action=f"G{n}") for n in range(3)]
    for backend in backends:
        backend.start()
    try:
        specs = [arg for n, b in enumerate(backends) for arg in ("-s", b.spec(f"G{n}"))]
        with Daemon(*specs, "--balance", "hash:client_address,sender,recipient",
                    "--cooldown", "60", workers=2) as daemon:
            keys = [triplet(i) for i in range(300)]
            before = [ask(daemon, **k)[0] for k in keys]
            assert before == [ask(daemon, **k)[0] for k in keys]  # stable, any worker
            share = Counter(before)
            assert all(60 <= share[f"G{n}"] <= 140 for n in range(3)), share
            backends[1].stop()
            after = [ask(daemon, **k)[0] for k in keys]
            moved = [(b, a) for b, a in zip(before, after) if b != a]
            assert len(moved) == share["G1"]  # G1's keys, and nobody else's
            assert all(b == "G1" and a in ("G0", "G2") for b, a in moved)
    finally:
        for backend in backends:
            backend.stop()


@pytest.mark.parametrize("sticky", ["yes", "no"])
def test_requests_of_one_transaction_stay_on_one_service(sticky):
    with FakeBackend(action="A") as a, FakeBackend(action="B") as b, Daemon(
            "-s", a.spec("A"), "-s", b.spec("B"), "--sticky-instance", sticky,
            workers=2) as daemon, PolicyClient("127.0.0.1", daemon.port) as client:
        spread = []
        for mail in range(10):
            answers = {client.ask(request(instance=f"mail{mail}", recipient=f"r{n}@x"))
                       for n in range(4)}
            spread.append(len(answers))
        if sticky == "yes":
            assert spread == [1] * 10
        else:
            assert max(spread) == 2


def test_all_services_down_gives_the_default_within_the_total_deadline():
    with FakeBackend(mode="silent") as s1, FakeBackend(mode="silent") as s2, Daemon(
            "-s", s1.spec("S1", timeout=30), "-s", s2.spec("S2", prio=20, timeout=30),
            "-s", f"DEAD=127.0.0.1:{refused_port()}:30", "--total-timeout", "2",
            "-d", "DEFER_IF_PERMIT policy service unavailable", workers=2) as daemon:
        action, took = ask(daemon)
        assert action == "DEFER_IF_PERMIT policy service unavailable"
        assert 1.5 <= took < 10
        # all marked down now: still tried in order (they may be back), still bounded
        action, took = ask(daemon)
        assert action == "DEFER_IF_PERMIT policy service unavailable" and took < 10
        wait_for(lambda: "total timeout 2s reached" in daemon.log.text(), 5)


def test_reload_keeps_what_is_known_of_services_that_stay(tmp_path, good):
    with FakeBackend(mode="silent") as silent:
        conf = tmp_path / "h.conf"
        conf.write_text(f"service = {silent.spec('SILENT', prio=10, timeout=2)}\n"
                        f"service = {good.spec('GOOD', prio=20)}\ncooldown = 60\n")
        with Daemon("-c", str(conf), workers=2) as daemon:
            assert ask(daemon)[0] == "OK good"  # pays SILENT's timeout once
            conf.write_text(conf.read_text() + f"service = NEW=127.0.0.1:{refused_port()}:30\n")
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded: 3 services")
            wait_for(lambda: len(daemon.workers_now()) == 2, 10)  # the old ones retired
            later = [ask(daemon) for _ in range(5)]
            assert all(a == "OK good" for a, _ in later)
            assert sum(t for _, t in later) < 1.5
            assert len(silent.live_requests) == 1  # the new workers knew it was down
