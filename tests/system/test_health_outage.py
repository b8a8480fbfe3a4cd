"""The health promise in the cases that matter most, on a real daemon with fake backends.

Every service down or hung: after the first request(s) paid the timeouts, requests get the
default action at once. With active checks, no live request reaches a service that is down
until a check saw it answer. Without checks, a refused service is retried at the base
cool-down, whatever happened before. Requests waiting on a service that is found dead move on
at once instead of waiting out their own timeouts. Each bound on time has two sides.
"""

from __future__ import annotations

import threading
import time

from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.ports import refused_port
from testkit.protocol import PolicyClient, request
from testkit.wait import wait_for

DEFAULT = "DEFER_IF_PERMIT policy service unavailable"


def figure(case: str, **values: float) -> None:
    """A measured figure, shown with `pytest -s` (grep 'figure:')."""
    print(f"figure: {case}: " + " ".join(f"{k}={v:.4f}" for k, v in values.items()))


def ask(daemon: Daemon, **attrs) -> tuple[str, float]:
    """One request on a new connection: (action, seconds)."""
    started = time.monotonic()
    with PolicyClient("127.0.0.1", daemon.port) as client:
        answer = client.ask(request(**attrs), timeout=30)
    return answer.split("\n")[0].removeprefix("action="), time.monotonic() - started


def first_answer_from(daemon: Daemon, action: str, within: float, every: float = 0.05) -> float:
    """Ask every `every` seconds until `action` answers; the monotonic time it first did."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ask(daemon)[0] == action:
            return time.monotonic()
        time.sleep(every)
    raise AssertionError(f"{action!r} did not answer within {within}s")


def test_every_service_hung_the_next_requests_get_the_default_at_once():
    with FakeBackend(mode="silent") as s1, FakeBackend(mode="silent") as s2, Daemon(
            "-s", s1.spec("S1", prio=10, timeout=2), "-s", s2.spec("S2", prio=20, timeout=2),
            "-d", DEFAULT, "--check-interval", "0", "--cooldown", "4", "-l",
            workers=2) as daemon:
        action, first = ask(daemon)
        assert action == DEFAULT and 4.0 <= first < 4.5  # S1's timeout, then S2's
        s2_down = time.monotonic()
        later = [ask(daemon, sender=f"s{i}@example.org") for i in range(50)]
        assert all(a == DEFAULT for a, _ in later)
        assert max(t for _, t in later) < 0.05, sorted(t for _, t in later)[-5:]
        figure("all hung, no checks", first=first, next_max=max(t for _, t in later))
        assert len(s1.requests) == len(s2.requests) == 1  # nobody waited on them again
        daemon.log.wait('default="all services down"')
        # S1 heals: the request that probes it after its cool-down (4 s from its failure,
        # 2 s before S2's) gets its answer, and traffic stays with it
        s1.set_mode("answer", action="OK s1")
        back = first_answer_from(daemon, "OK s1", within=6)
        assert 1.9 <= back - s2_down <= 2.4, back - s2_down
        figure("all hung, no checks", healed_back_after_s2_down=back - s2_down)


def test_every_service_hung_with_checks_traffic_returns_within_the_down_interval():
    with FakeBackend(mode="silent") as s1, FakeBackend(mode="silent") as s2, Daemon(
            "-s", s1.spec("S1", prio=10, timeout=1), "-s", s2.spec("S2", prio=20, timeout=1),
            "-d", DEFAULT, "--check-interval", "0.5", "--check-down-interval", "0.5",
            "--check-timeout", "0.5", "--check-rise", "1", workers=2) as daemon:
        daemon.log.wait("service S2 (")  # both found down, by checks or by traffic
        wait_for(lambda: "service S1 (" in daemon.log.text(), 5)
        later = [ask(daemon, sender=f"s{i}@example.org") for i in range(50)]
        assert all(a == DEFAULT for a, _ in later)
        assert max(t for _, t in later) < 0.05, sorted(t for _, t in later)[-5:]
        figure("all hung, checks", next_max=max(t for _, t in later))
        assert s1.live_requests == s2.live_requests == []  # no live request waited on them
        healed = time.monotonic()
        s1.set_mode("answer", action="OK s1")
        back = first_answer_from(daemon, "OK s1", within=5)
        # the check in flight (up to 0.5 s) may still time out; the next one, 0.5 s later, answers
        assert back - healed < 1.3, back - healed
        figure("all hung, checks", back_after_heal=back - healed)


def test_with_checks_no_live_request_reaches_a_hung_service_until_a_check_sees_it_answer():
    with FakeBackend(action="OK hang") as hang, FakeBackend(action="OK good") as good, Daemon(
            "-s", hang.spec("HANG", prio=10, timeout=1), "-s", good.spec("GOOD", prio=20),
            "--check-interval", "0.5", "--check-down-interval", "0.5", "--cooldown", "0.5",
            workers=2) as daemon:
        assert ask(daemon)[0] == "OK hang"
        stop = threading.Event()
        answers: list[str] = []

        def traffic() -> None:
            while not stop.is_set():
                answers.append(ask(daemon)[0])
                time.sleep(0.02)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        try:
            hang.set_mode("silent")
            daemon.log.wait("service HANG (")
            time.sleep(0.2)  # a request sent just before it was marked down has arrived
            reached = len(hang.live_requests)
            time.sleep(3.0)  # six check intervals and six cool-downs: no live probe
            assert len(hang.live_requests) == reached
            figure("hung, checks", live_requests_while_down=len(hang.live_requests) - reached)
            hang.set_mode("answer")
            wait_for(lambda: answers[-1:] == ["OK hang"], 5, what="traffic back on HANG")
            assert "up: check answered 2 times" in daemon.log.text()
        finally:
            stop.set()
            thread.join(5)
        assert set(answers) <= {"OK hang", "OK good"}


def test_a_refused_service_gets_traffic_back_within_the_base_cooldown_after_many_failures():
    port = refused_port()
    with FakeBackend(action="OK good") as good, Daemon(
            "-s", f"MAIN=127.0.0.1:{port}:10", "-s", good.spec("GOOD", prio=20),
            "--check-interval", "0", "--cooldown", "1", "--cooldown-max", "60", "-v",
            workers=2) as daemon:
        ends = time.monotonic() + 4.5  # four refused probes: doubling would reach 8 s
        while time.monotonic() < ends:
            assert ask(daemon)[0] == "OK good"
            time.sleep(0.05)
        assert daemon.log.text().count(f"MAIN address=127.0.0.1:{port} failed") >= 4
        with FakeBackend(action="OK main", port=port):
            listening = time.monotonic()
            back = first_answer_from(daemon, "OK main", within=5)
        assert back - listening < 1.2, back - listening
        figure("refused then restarted", back_after_listen=back - listening)
        assert "retry in 2s" not in daemon.log.text()


def _ask_at(port: int, at: float, results: list, n: int) -> None:
    """Ask one request on a new connection at `at`; (time answered, action line) to results."""
    time.sleep(max(0.0, at - time.monotonic()))
    with PolicyClient("127.0.0.1", port) as client:
        answer = client.ask(request(sender=f"w{n}@example.org"), timeout=25)
    results.append((time.monotonic(), answer.split("\n")[0]))


def test_requests_waiting_on_a_hung_service_move_on_when_the_first_times_out():
    with FakeBackend(mode="silent") as hang, FakeBackend(action="OK next") as good, Daemon(
            "-s", hang.spec("HANG", prio=10, timeout=1), "-s", good.spec("NEXT", prio=20),
            "--check-interval", "0", "--cooldown", "60", workers=1) as daemon:
        results: list[tuple[float, str]] = []
        start = time.monotonic() + 0.2
        threads = [threading.Thread(target=_ask_at, args=(daemon.port, start + n * 0.02,
                                                          results, n)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert len(hang.requests) == 20  # all twenty were waiting on it
    results.sort()
    assert [a for _, a in results] == ["action=OK next"] * 20
    first, last = results[0][0], results[-1][0]
    assert 1.0 <= first - start < 1.2
    # without the release the last would wait its own second: 0.38 s after the first
    assert last - first < 0.1, [round(t - first, 3) for t, _ in results]
    figure("20 waiting, 1 worker", first=first - start, last_after_first=last - first)


def test_requests_waiting_on_a_service_that_a_check_takes_down_move_on_within_the_sweep():
    with FakeBackend(action="OK hang") as hang, FakeBackend(action="OK next") as good, Daemon(
            "-s", hang.spec("HANG", prio=10, timeout=20), "-s", good.spec("NEXT", prio=20),
            "--check-interval", "0.3", "--check-down-interval", "0.3", "--check-timeout", "0.3",
            "--check-fall", "1", workers=2) as daemon:
        assert ask(daemon)[0] == "OK hang"
        hang.set_mode("silent")
        results: list[tuple[float, str]] = []
        start = time.monotonic()
        threads = [threading.Thread(target=_ask_at, args=(daemon.port, start, results, n))
                   for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(25)
    assert [a for _, a in results] == ["action=OK next"] * 6
    # the check in flight, or the next, times out within 0.6 s; the workers see it within 0.1 s
    # (without the sweep each request would wait its own 20 s)
    assert max(t for t, _ in results) - start < 1.0, [round(t - start, 3) for t, _ in results]
    figure("waiting, check takes it down", last=max(t for t, _ in results) - start)
