"""Slow, not dead: least-latency and max-inflight against live daemons and fake services.

least-latency: of two services answering in 1 ms and 40 ms, the slow one gets at most 15 % of
2,000 requests and the median stays within 1.3x of the fast service's alone (weighted round
robin gives it half); two alike split 2:1 by weight within 10 %; one that answers `451 4.3.5`
at once (a fail-answer) gets under 5 % once noticed (health's cool-down does most of that here;
tests/unit/request/test_least_latency.py holds the rule that a failure counts as slow). max-inflight: a service that serves one
request at a time (as postgrey) never holds more than the limit, the excess goes to the other
service (weighted) or waits and turns away (hashed), no request waits longer than
queue-timeout, and status, csv and /metrics count it all (each service's answer time too). A
worker killed with requests in flight leaves none counted. --check-config refuses least-latency
mixed with hash: and warns of it with sticky instances, and of max-inflight in spawn mode.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon, short_tmpdir
from testkit.ports import HOST
from testkit.protocol import PolicyClient, request


def serving(backend: FakeBackend) -> int:
    return len(backend.live_requests)


def run_clients(daemon: Daemon, total: int, clients: int, **attrs: str) -> list[float]:
    """total requests, each a new transaction, over `clients` connections at once; the time
    each took, in seconds."""
    return [took for took, _ in answers(daemon, total, clients, **attrs)]


def answers(daemon: Daemon, total: int, clients: int,
            **attrs: str) -> list[tuple[float, str]]:
    """What run_clients does: (time taken, action) of each request; every answer must be a
    whole `action=` answer."""
    found: list[tuple[float, str]] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client(k: int) -> None:
        with PolicyClient(HOST, daemon.port) as conn:
            for n in counter:
                start = time.monotonic()
                answer = conn.ask(request(instance=f"c{k}.{n}", **attrs))
                took = time.monotonic() - start
                with lock:
                    found.append((took, answer[7:-2]))
                    if not answer.startswith("action="):
                        errors.append(answer)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(found) == total, (errors[:3], len(found))
    return found


def p50(times: list[float]) -> float:
    return statistics.median(times)


def least_latency(*specs: str, extra: tuple[str, ...] = ()) -> Daemon:
    args = [a for spec in specs for a in ("-s", spec)]
    return Daemon(*args, "--balance", "least-latency", "--sticky-instance", "no",
                  "--check-interval", "0", *extra, workers=2)


def test_least_latency_keeps_a_slow_service_to_a_small_share_and_the_median_low():
    with FakeBackend(name="FAST", delay=0.001, action="OK fast") as fast, \
            FakeBackend(name="SLOW", delay=0.040, action="OK slow") as slow:
        with Daemon("-s", fast.spec(), "-s", slow.spec(), "--sticky-instance", "no",
                    "--check-interval", "0", workers=2) as weighted:
            round_robin = [a for _, a in answers(weighted, 400, 8)].count("OK slow") / 400
        with least_latency(fast.spec(), slow.spec()) as daemon:
            found = answers(daemon, 2000, 4)
        share = [a for _, a in found].count("OK slow") / 2000
        # the fast service's own: the times of the requests it answered, in the same run
        own = p50([t for t, a in found if a == "OK fast"])
        times = [t for t, _ in found]
        print(f"\nslow share: least-latency {share:.1%}, weighted {round_robin:.1%}; p50 "
              f"{p50(times) * 1000:.2f} ms, the fast service's own {own * 1000:.2f} ms")
        assert 0.40 <= round_robin <= 0.60, round_robin
        assert share <= 0.15, share
        assert p50(times) <= 1.3 * own, (p50(times), own)


def test_least_latency_splits_services_alike_by_weight():
    # 10 ms each: a stall of the test process's threads (its clients and backends share one
    # interpreter) of a few ms on a loaded machine must not look like a slower service
    with FakeBackend(name="A", delay=0.010) as a, FakeBackend(name="B", delay=0.010) as b:
        with least_latency(a.spec(weight=2), b.spec()) as daemon:
            before_a, before_b = serving(a), serving(b)
            run_clients(daemon, 1500, 8)
            got_a, got_b = serving(a) - before_a, serving(b) - before_b
        share = got_a / (got_a + got_b)
        print(f"\nweights 2:1, equal latencies: A {got_a}, B {got_b}: {share:.1%}")
        assert abs(share - 2 / 3) <= 0.10 * 2 / 3, (got_a, got_b)


def test_least_latency_gives_a_service_failing_fast_next_to_nothing():
    with FakeBackend(name="GOOD", delay=0.001) as good, \
            FakeBackend(name="BROKEN", action="451 4.3.5 Server configuration problem") as bad:
        with least_latency(good.spec(), bad.spec(),
                           extra=("--fail-answer", "^451")) as daemon:
            run_clients(daemon, 200, 2)
            before = serving(bad)
            run_clients(daemon, 1000, 2)
            share = (serving(bad) - before) / 1000
        print(f"\nfailing fast: {share:.1%} of the requests asked it")
        assert share < 0.05, share


def limited(*specs: str, control: str, extra: tuple[str, ...] = ()) -> Daemon:
    args = [a for spec in specs for a in ("-s", spec)]
    return Daemon(*args, "--max-inflight", "2", "--control", control, "--check-interval", "0",
                  *extra, workers=2)


def spread(times: list[float]) -> str:
    ordered = sorted(times)
    return (f"p50 {p50(times) * 1000:.1f} ms, p99 {ordered[int(len(ordered) * 0.99)] * 1000:.1f}"
            f" ms, max {ordered[-1] * 1000:.1f} ms")


def test_max_inflight_sends_the_excess_of_a_serial_service_to_the_other():
    where = short_tmpdir()
    control = str(where / "control")
    with FakeBackend(name="SERIAL", delay=0.005, serial=True, action="OK serial") as serial, \
            FakeBackend(name="OTHER", delay=0.001, action="OK other") as other:
        with Daemon("-s", serial.spec(), "-s", other.spec(), "--sticky-instance", "no",
                    "--check-interval", "0", workers=2) as daemon:
            unlimited = run_clients(daemon, 400, 32)
        print(f"\nno limit: the serial service held up to {serial.max_pending} requests; "
              f"{spread(unlimited)}")
        serial.max_pending = 0
        with limited(serial.spec(), other.spec(), control=control,
                     extra=("--sticky-instance", "no", "--queue-timeout", "0.5")) as daemon:
            before = serving(serial), serving(other)
            times = run_clients(daemon, 800, 32)
            rows = csv_rows(control)
        got = serving(serial) - before[0], serving(other) - before[1]
        print(f"max-inflight 2: the serial service held up to {serial.max_pending}; it got "
              f"{got[0]}, the other {got[1]}; {spread(times)}")
        assert serial.max_pending <= 2, serial.max_pending
        assert got[0] + got[1] == 800 and got[1] > got[0], got
        assert max(times) < 0.5 + 0.3, spread(times)
        assert int(rows["default/SERIAL"]["turned_away"]) > 0, rows
        assert rows["default/SERIAL"]["in_flight"] == "0" == rows["default/SERIAL"]["queued"]
        assert rows["default/SERIAL"]["queued_out"] == "0"


def test_max_inflight_in_a_hashed_pool_waits_then_turns_away():
    where = short_tmpdir()
    control = str(where / "control")
    with FakeBackend(name="SERIAL", delay=0.005, serial=True, action="OK serial") as serial, \
            FakeBackend(name="OTHER", delay=0.001, action="OK other") as other:
        with limited(serial.spec(), other.spec(), control=control,
                     extra=("--balance", "hash:sender", "--queue-timeout", "0.1")) as daemon:
            times: list[float] = []
            for k in range(4):  # a sender each, some on each service
                times += run_clients(daemon, 150, 32, sender=f"s{k}@example.org")
            rows = csv_rows(control)
            status = ctl("--control", control, "status").stdout
        print(f"\nhashed, max-inflight 2, queue-timeout 0.1: the serial service held up to "
              f"{serial.max_pending}; {spread(times)}; turned away "
              f"{rows['default/SERIAL']['turned_away']}, queued out "
              f"{rows['default/SERIAL']['queued_out']}")
        assert serial.max_pending <= 2, serial.max_pending
        assert max(times) < 0.1 + 0.3, spread(times)
        assert int(rows["default/SERIAL"]["turned_away"]) > 0
        assert "turned_away" in status.splitlines()[0] and "queued" in status.splitlines()[0]


def test_a_worker_killed_with_requests_in_flight_leaves_no_count_behind():
    """A worker that retires (max-use) while two requests wait on a service at max-inflight 2,
    killed before they are answered: its replacement, in another slot, must not find the
    service full for ever."""
    where = short_tmpdir()
    control = str(where / "control")
    with FakeBackend(name="SLOW", delay=3.0, serial=True) as slow:
        with Daemon("-s", slow.spec(timeout=20), "--max-inflight", "2", "--max-use", "2",
                    "--control", control, "--check-interval", "0", workers=1) as daemon:
            clients = [PolicyClient(HOST, daemon.port) for _ in range(2)]
            for k, client in enumerate(clients):
                client.send_raw(request(instance=f"k{k}"))
            first = daemon.pids[0]
            deadline = time.monotonic() + 10
            while (csv_rows(control)["default/SLOW"]["in_flight"] != "2"
                   or len(daemon.workers_now()) < 2):  # retiring, and its replacement
                assert time.monotonic() < deadline, daemon.workers_now()
                time.sleep(0.05)
            os.kill(first, signal.SIGKILL)
            while first in daemon.workers_now():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.2)  # the master reaps it
            assert csv_rows(control)["default/SLOW"]["in_flight"] == "0"
            for client in clients:
                client.close()


def test_least_latency_shows_each_service_answer_time_and_load_in_csv_and_metrics():
    from prometheus_client.parser import text_string_to_metric_families
    from testkit.ports import free_port
    from testkit.prometheus import fetch

    where = short_tmpdir()
    control = str(where / "control")
    mport = free_port()
    with FakeBackend(name="FAST", delay=0.001) as fast, \
            FakeBackend(name="SLOW", delay=0.040) as slow:
        with least_latency(fast.spec(), slow.spec(),
                           extra=("--max-inflight", "4", "--control", control,
                                  "--metrics-listen", f"{HOST}:{mport}")) as daemon:
            run_clients(daemon, 200, 2)
            rows = csv_rows(control)
            status = ctl("--control", control, "status").stdout
            _, body, _ = fetch(f"http://{HOST}:{mport}/metrics")
    found = {(s.name, s.labels.get("service")): s.value
             for family in text_string_to_metric_families(body.decode())
             for s in family.samples}
    fast_ms, slow_ms = float(rows["default/FAST"]["ewma_ms"]), float(rows["default/SLOW"]["ewma_ms"])
    assert 0 < fast_ms < slow_ms, rows
    assert "ewma_ms" in status.splitlines()[0] and "in_flight" in status.splitlines()[0]
    assert 0 < found[("hapolicy_service_answer_time_ewma_seconds", "FAST")] \
        < found[("hapolicy_service_answer_time_ewma_seconds", "SLOW")]
    assert found[("hapolicy_service_requests_in_flight", "SLOW")] == 0
    assert ("hapolicy_service_turned_away_total", "SLOW") in found


def test_check_config_refuses_least_latency_with_hash_and_warns_with_sticky_instances():
    from testkit.repo import run_hapolicy

    mixed = run_hapolicy(["-s", "A=127.0.0.1:1", "--balance", "least-latency,hash:sender",
                          "--check-config"])
    assert mixed.returncode == 2 and mixed.stderr.count("\n") == 1, mixed.stderr
    assert "least-latency does not hash" in mixed.stderr
    sticky = run_hapolicy(["--listen", "127.0.0.1:1", "-s", "A=127.0.0.1:1",
                           "--balance", "least-latency", "--check-config"])
    assert sticky.returncode == 0 and "warning: pool default: balance = least-latency with " \
        "sticky-instance = yes" in sticky.stderr
    spawned = run_hapolicy(["-s", "A=127.0.0.1:1", "--max-inflight", "2", "--check-config"])
    assert spawned.returncode == 0 and "max-inflight in spawn mode" in spawned.stderr
