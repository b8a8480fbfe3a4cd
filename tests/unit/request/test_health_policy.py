"""What brings a service down and back, in one process: Health, the checker and the dispatcher
with the real event loop against fake backends on 127.0.0.1. Fast: no subprocess."""

from __future__ import annotations

import errno
import math
import time

import pytest
from testkit.backends import FakeBackend
from testkit.ports import refused_port
from testkit.protocol import request

from hapolicy.backend import exchange as backend_module
from hapolicy.base import frozen
from hapolicy.base.eventloop import EventLoop
from hapolicy.base.outcome import (
    ABANDONED,
    ANSWER_TIMEOUT,
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    INVALID,
    LOCAL,
    RESET,
)
from hapolicy.base.protocol import RequestFramer
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.monitor.checks import Checker, CheckerSet
from hapolicy.request import assembly
from hapolicy.request.dispatch import Dispatcher
from hapolicy.tables.health import HealthTable, carry_over
from hapolicy.tables.layout import DOWN, PROBE_DUE, SLOT, UP
from hapolicy.tables.transitions import Health


class Lines:
    """A Logger stand-in that keeps what is logged."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda message: self.lines.append(f"{level}: {message}")


def make_health(*specs: str, checked: bool = False, **settings) -> tuple[Health, HealthTable]:
    services = tuple(parse_service(s) for s in specs)
    config = PoolConfig(services=services, **settings)
    table = HealthTable(len(services), shared=False)
    table.set_recovery(checked, 0.0)  # as the master's checker says
    return Health(table, services, config, Lines()), table


def test_only_timeouts_double_the_cooldown():
    health, table = make_health("A=h:1", cooldown=2.0, cooldown_max=60.0)
    now, pauses = 0.0, []
    for outcome in (ANSWER_TIMEOUT, CONNECT_TIMEOUT, ANSWER_TIMEOUT, CONNECT_FAILED, RESET,
                    CLOSED, INVALID, ANSWER_TIMEOUT):
        health.mark_down(0, outcome, "x", now)
        pauses.append(table.f[0] - now)
        now = table.f[0]  # the next failure is the probe after the cool-down
    assert pauses == [2, 4, 8, 2, 2, 2, 2, 16]


def test_a_success_ends_the_streak_of_timeouts():
    health, table = make_health("A=h:1", cooldown=2.0, cooldown_max=60.0)
    health.mark_down(0, ANSWER_TIMEOUT, "x", 0.0)
    health.mark_down(0, ANSWER_TIMEOUT, "x", 2.0)
    assert table.f[0] == 6.0
    health.ok(0)
    assert table.state(0, 6.0) == UP
    health.mark_down(0, ANSWER_TIMEOUT, "x", 10.0)
    assert table.f[0] == 12.0


def test_local_and_abandoned_outcomes_say_nothing_of_the_service():
    health, table = make_health("A=h:1")
    for outcome in (LOCAL, ABANDONED):
        assert health.failed(0, outcome, "x", 1.0) is False
    assert table.state(0, 1.0) == UP
    assert health.log.lines == []


def test_state_changes_are_logged_once_each():
    health, _ = make_health("A=127.0.0.1:10023", cooldown=2.0)
    assert health.failed(0, CONNECT_FAILED, "connection refused", 1.0) is True
    assert health.failed(0, CONNECT_FAILED, "connection refused", 1.1) is False  # in flight
    health.ok(0)
    health.ok(0)
    assert health.log.lines == [
        "warning: service A (127.0.0.1:10023) down: connection refused, retry in 2s",
        "notice: service A (127.0.0.1:10023) up"]


def test_with_checks_a_down_service_is_never_probed_and_only_a_check_brings_it_back():
    health, table = make_health("A=127.0.0.1:10023", checked=True, check_down_interval=1.0)
    assert health.failed(0, ANSWER_TIMEOUT, "no answer after 2.0s", 1.0) is True
    assert table.state(0, 1e9) == DOWN  # never due a probe
    health.ok(0)  # a late answer of a request sent before it went down
    assert table.state(0, 1e9) == DOWN
    health.mark_up(0, ": check answered 2 times")
    assert table.state(0, 2.0) == UP
    assert health.log.lines == [
        "warning: service A (127.0.0.1:10023) down: no answer after 2.0s, "
        "checked every 1s until it answers",
        "notice: service A (127.0.0.1:10023) up: check answered 2 times"]


def test_a_reload_that_turns_checks_on_or_off_keeps_every_down_service_recoverable():
    _, table = make_health("A=h:1", "B=h:2")
    table.record_failure(0, 10.0, 2.0, 60.0)
    table.set_recovery(True, 11.0)
    assert table.f[0] == math.inf and table.state(1, 11.0) == UP
    table.set_recovery(False, 12.0)
    assert table.state(0, 12.0) == PROBE_DUE  # a request may probe it at once


# --------------------------------------------------------------------------- the checker


def run_until(loop: EventLoop, condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        loop.run_once(0.05)


def make_checker(spec: str, **settings) -> tuple[Checker, HealthTable, EventLoop]:
    loop = EventLoop()
    config = PoolConfig(services=(parse_service(spec),), check_interval=0.05,
                        check_down_interval=0.05, **settings)
    table = HealthTable(1, shared=False)
    table.set_recovery(True, 0.0)  # as the master's plan says (CheckerSet.replace)
    checker = Checker(loop, config, table, Lines())
    return checker, table, loop


def record_outcomes(checker: Checker) -> list[int]:
    """The outcome of every check the checker finishes, in order (it acts on each as usual)."""
    outcomes: list[int] = []
    done = checker.done

    def recording(i: int, outcome: int, detail: str, action: bytes = b"") -> None:
        outcomes.append(outcome)
        done(i, outcome, detail, action)

    checker.done = recording
    return outcomes


def test_fall_failed_checks_take_a_service_down_and_rise_answered_ones_bring_it_back():
    port = refused_port()
    checker, table, loop = make_checker(f"A=127.0.0.1:{port}", check_fall=3, check_rise=2)
    failures = record_outcomes(checker)
    checker.start()
    try:
        run_until(loop, lambda: len(failures) == 2)
        assert table.state(0, time.monotonic()) == UP  # two failed checks: not yet
        run_until(loop, lambda: len(failures) == 3)
        assert table.state(0, time.monotonic()) == DOWN
        assert table.f[0] == math.inf
        with FakeBackend(action="OK", port=port) as fake:
            seen = len(failures)
            run_until(loop, lambda: len(failures) == seen + 1)
            assert table.state(0, time.monotonic()) == DOWN  # one answered check: not yet
            run_until(loop, lambda: len(failures) == seen + 2)
            assert table.state(0, time.monotonic()) == UP
            assert fake.requests[0]["sender"] == "hapolicy-check@localhost"
    finally:
        checker.stop()
    assert checker.log.lines[-1].endswith(" up: check answered 2 times")


def test_a_check_that_cannot_make_a_socket_does_not_count(monkeypatch):
    checker, table, loop = make_checker(f"A=127.0.0.1:{refused_port()}", check_fall=1)

    def no_descriptors(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(backend_module._socket, "socket", no_descriptors)
    outcomes = record_outcomes(checker)
    checker.start()
    try:
        run_until(loop, lambda: len(outcomes) >= 3)
    finally:
        checker.stop()
    assert set(outcomes) == {LOCAL}
    assert table.state(0, time.monotonic()) == UP
    assert "not checked: cannot make a socket" in checker.log.lines[0]


# --------------------------------------------------------------------------- the dispatcher


class Client:
    instance = b""
    instance_service = -1

    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def deliver(self, answer: bytes) -> None:
        self.answers.append(answer)


def framed(**attrs):
    return RequestFramer().feed(request(**attrs), 1)[0]


@pytest.mark.parametrize("all_down", ["default", "try"])
def test_every_service_down_answers_the_default_at_once_without_connecting(all_down):
    with FakeBackend(action="OK") as fake:
        loop = EventLoop()
        services = (parse_service(fake.spec("A")), parse_service(fake.spec("B", prio=20)))
        config = PoolConfig(services=services, all_down=all_down, default_action="DEFER down")
        table = HealthTable(2, shared=False)
        for i in (0, 1):
            table.record_failure(i, time.monotonic(), 60.0, 60.0)
        log = Lines()
        dispatcher = assembly.make_dispatcher(loop, config, table, log)
        client = Client()
        dispatcher.submit(framed(), client)
        if all_down == "default":
            assert client.answers == [b"action=DEFER down\n\n"]  # synchronously
            assert log.lines == ["warning: no service answered (all services down): "
                                 "action=DEFER down"]
        else:
            run_until(loop, lambda: client.answers)
            assert client.answers == [b"action=OK\n\n"]
        dispatcher.close()
        assert len(fake.requests) == (0 if all_down == "default" else 1)


def test_default_answer_warnings_are_held_to_one_line_a_second_per_reason():
    loop = EventLoop()
    config = PoolConfig(services=(parse_service(f"A=127.0.0.1:{refused_port()}"),))
    table = HealthTable(1, shared=False)
    table.record_failure(0, time.monotonic(), 60.0, 60.0)
    log = Lines()
    dispatcher = assembly.make_dispatcher(loop, config, table, log)
    client = Client()
    for _ in range(100):
        dispatcher.submit(framed(), client)
    assert len(client.answers) == 100
    assert log.lines == ["warning: no service answered (all services down): action=dunno"]
    run_until(loop, lambda: len(log.lines) == 2, timeout=1.5)
    assert log.lines[1] == ("warning: no service answered (all services down): action=dunno"
                            " (99 requests in 1s)")
    dispatcher.submit(framed(), client)  # within the next second: held, then told at close
    dispatcher.close()
    assert log.lines[2].endswith("(1 request in 1s)")


def test_the_table_says_who_owns_recovery_so_old_and_new_workers_agree():
    """A reload that stops the checks on a table (turned off, or the new workers got a new
    table) makes every process that still uses it probe again, whatever it was started with."""
    old_worker, table = make_health("A=h:1", checked=True)
    old_worker.mark_down(0, ANSWER_TIMEOUT, "x", 10.0)
    assert table.f[0] == math.inf
    table.set_recovery(False, 11.0)  # the master's checker of this table stopped
    assert table.state(0, 11.0) == PROBE_DUE
    old_worker.mark_down(0, ANSWER_TIMEOUT, "x", 11.5)  # the old worker's probe failed
    assert table.f[0] != math.inf and table.state(0, 20.0) == PROBE_DUE
    old_worker.ok(0)  # and its next probe brings it back
    assert table.state(0, 20.0) == UP


def test_the_masters_plan_says_who_owns_a_table_and_the_monitor_runs_it():
    """CheckerSet.replace (the master) sets the table's flag; a Checker (the monitor) never
    changes it, so a monitor that dies or is replaced leaves the table as the plan says."""
    loop = EventLoop()
    checked = PoolConfig(services=(parse_service(f"A=127.0.0.1:{refused_port()}"),),
                         check_interval=0.05, check_down_interval=0.05)
    table = HealthTable(1, shared=False)
    plan = CheckerSet()
    plan.replace(checked, table, None, 0.0)
    assert table.checked and plan.checking
    assert all(entry.checker is None for entry in plan.all())  # nothing runs in the master
    plan.start(loop, Lines())
    (entry,) = plan.all()
    assert entry.checker is not None and entry.checker.timers[0] is not None
    plan.stop_all()
    assert entry.checker is None and table.checked
    new_table = HealthTable(1, shared=False)
    plan.replace(frozen.replace(checked, check_interval=0.0), new_table, 3, 0.0)
    assert not new_table.checked and not plan.current["default"].config.check_interval
    assert [generation for generation, _ in plan.kept] == [3]  # the old table, for its workers
    assert plan.checking
    plan.stop_unused({3, 4})
    assert plan.kept
    plan.stop_unused({4})
    assert plan.kept == [] and not plan.checking


def test_a_service_a_live_request_took_down_is_checked_at_the_down_interval():
    with FakeBackend(action="OK") as fake:
        checker, table, loop = make_checker(fake.spec("A"), check_rise=1)
        checker.config = PoolConfig(services=checker.config.services, check_interval=30.0,
                                    check_down_interval=0.05, check_rise=1)
        outcomes = record_outcomes(checker)
        checker.start()
        try:
            run_until(loop, lambda: len(outcomes) == 1)  # answered: the next check in 30 s
            assert checker.timers[0].when - time.monotonic() > 29.0
            # a live request takes it down; the watch brings its next check forward
            checker.health.mark_down(0, CONNECT_FAILED, "connection refused", time.monotonic())
            started = time.monotonic()
            run_until(loop, lambda: table.state(0, time.monotonic()) == UP, timeout=2.0)
            assert time.monotonic() - started < 0.5
            assert checker.timers[0].when - time.monotonic() > 29.0  # up: the up schedule again
            later = time.monotonic() + 0.2  # the watch goes on: a second outage, a while after
            run_until(loop, lambda: time.monotonic() > later)
            checker.health.mark_down(0, CONNECT_FAILED, "connection refused", time.monotonic())
            started = time.monotonic()
            run_until(loop, lambda: table.state(0, time.monotonic()) == UP, timeout=2.0)
            assert time.monotonic() - started < 0.5
        finally:
            checker.stop()


def test_the_sweep_rides_on_the_deadline_tick_with_no_timer_of_its_own():
    with FakeBackend(mode="silent") as hung, FakeBackend(action="OK") as good:
        loop = EventLoop()
        services = (parse_service(hung.spec("H", timeout=20)),
                    parse_service(good.spec("G", prio=20)))
        config = PoolConfig(services=services)
        table = HealthTable(2, shared=False)
        dispatcher = assembly.make_dispatcher(loop, config, table, Lines())
        clients = [Client() for _ in range(3)]
        for client in clients:
            dispatcher.submit(framed(), client)
        run_until(loop, lambda: len(hung.requests) == 3)
        # another process takes H down: the sweep releases the three, which go on to G
        table.record_failure(0, time.monotonic(), 60.0, 60.0)
        run_until(loop, lambda: all(c.answers for c in clients))
        assert [c.answers for c in clients] == [[b"action=OK\n\n"]] * 3
        assert not [t for t in loop.timers if t.callback == dispatcher.sweep]
        dispatcher.close()


def test_checks_run_at_the_up_interval_and_confirm_a_failure_at_the_down_interval():
    port = refused_port()
    with FakeBackend(action="OK", port=port) as fake:
        checker, table, loop = make_checker(f"A=127.0.0.1:{port}", check_fall=2)
        checker.config = PoolConfig(services=checker.config.services, check_interval=30.0,
                                    check_down_interval=0.05, check_fall=2)
        outcomes = record_outcomes(checker)
        checker.start()
        try:
            run_until(loop, lambda: len(outcomes) == 1)
            # answered, up: the next check on the up schedule, 30 s after this one started
            assert 29.0 < checker.timers[0].when - time.monotonic() <= 30.0
            fake.stop()
            checker.timers[0].cancel()
            checker.check(0)  # fails: one of two
            run_until(loop, lambda: len(outcomes) == 2)
            assert table.state(0, time.monotonic()) == UP
            assert checker.timers[0].when - time.monotonic() <= 0.05  # confirmed soon
            fake.start()
            run_until(loop, lambda: len(outcomes) == 3)  # answered: the count starts again
            fake.stop()
            checker.timers[0].cancel()
            checker.check(0)
            run_until(loop, lambda: len(outcomes) == 4)
            assert table.state(0, time.monotonic()) == UP  # one failure after an answer
            run_until(loop, lambda: len(outcomes) == 5)  # the second in a row
            assert table.state(0, time.monotonic()) == DOWN
            assert checker.timers[0].when - time.monotonic() <= 0.05  # down: watched closely
        finally:
            checker.stop()
    assert any(line.startswith("warning: service A (127.0.0.1:") and
               line.endswith(") down: check: connection refused, checked every 0.05s until it "
                             "answers") for line in checker.log.lines), checker.log.lines


def make_dispatcher(*specs: str, log_requests: bool = False,
                    **settings) -> tuple[Dispatcher, HealthTable, EventLoop, Lines]:
    loop = EventLoop()
    services = tuple(parse_service(s) for s in specs)
    table = HealthTable(len(services), shared=False)
    log = Lines()
    return (assembly.make_dispatcher(loop, PoolConfig(services=services, **settings), table, log,
                                     log_requests=log_requests),
            table, loop, log)


def test_a_request_tries_each_service_once_even_when_trying_down_ones():
    dispatcher, table, loop, log = make_dispatcher(
        f"A=127.0.0.1:{refused_port()}:10", f"B=127.0.0.1:{refused_port()}:20",
        all_down="try", log_requests=True)
    client = Client()
    dispatcher.submit(framed(), client)
    run_until(loop, lambda: client.answers)
    assert client.answers == [b"action=dunno\n\n"]
    assert log.lines[-1].count("connection refused") == 2  # A once, B once, then the default
    assert not dispatcher.backends.in_flight  # nothing left behind
    dispatcher.close()


def test_a_timeout_of_a_live_request_doubles_the_cooldown_and_a_refusal_does_not():
    with FakeBackend(mode="silent") as silent, FakeBackend(action="OK") as good:
        dispatcher, table, loop, _ = make_dispatcher(
            silent.spec("S", prio=10, timeout=0.2), good.spec("G", prio=20),
            cooldown=0.3, cooldown_max=10.0)
        pauses = []
        for _ in range(2):  # the first finds it dead, the second probes it after the cool-down
            client = Client()
            dispatcher.submit(framed(), client)
            run_until(loop, lambda: client.answers)
            pauses.append(round(table.f[0] - time.monotonic(), 1))
            run_until(loop, lambda: table.state(0, time.monotonic()) == PROBE_DUE)
        assert pauses == [0.3, 0.6]
        dispatcher.close()


def test_requests_waiting_on_a_service_move_on_when_one_of_them_finds_it_dead():
    with FakeBackend(mode="silent") as silent, FakeBackend(action="OK") as good:
        dispatcher, table, loop, _ = make_dispatcher(
            silent.spec("S", prio=10, timeout=0.3), good.spec("G", prio=20))
        first, second = Client(), Client()
        dispatcher.submit(framed(), first)
        run_until(loop, lambda: len(silent.requests) == 1)
        loop.run_once(0.1)  # the second starts later: its own timeout would be later too
        dispatcher.submit(framed(), second)
        run_until(loop, lambda: len(silent.requests) == 2)
        run_until(loop, lambda: first.answers)
        answered = time.monotonic()
        run_until(loop, lambda: second.answers)
        assert time.monotonic() - answered < 0.05  # released, not its own 0.3 s
        assert first.answers == second.answers == [b"action=OK\n\n"]
        assert not dispatcher.backends.in_flight
        dispatcher.close()


def test_the_sweep_keeps_watching_while_requests_wait():
    with FakeBackend(mode="silent") as hung, FakeBackend(action="OK") as good:
        dispatcher, table, loop, _ = make_dispatcher(
            hung.spec("H", timeout=20), good.spec("G", prio=20))
        client = Client()
        dispatcher.submit(framed(), client)
        waited = time.monotonic() + 0.35  # past the first sweeps
        run_until(loop, lambda: time.monotonic() > waited)
        table.record_failure(0, time.monotonic(), 60.0, 60.0)  # another process takes H down
        run_until(loop, lambda: client.answers, timeout=1.0)
        assert client.answers == [b"action=OK\n\n"]
        dispatcher.close()


def test_a_reload_carries_over_the_state_of_services_that_keep_name_and_address():
    before = [parse_service(s) for s in ("A=h:1", "B=h:2", "C=h:3")]
    after = [parse_service(s) for s in ("C=h:3", "NEW=h:4", "B=h:9", "A=h:1")]
    old = HealthTable(3, shared=False)
    old.record_failure(0, 10.0, 2.0, 60.0)  # A down
    old.record_failure(2, 10.0, 60.0, 60.0)  # C down longer
    old.set_served(2, 7.0)
    new = carry_over(old, before, after)
    assert new.count == 4
    assert new.f[0] == 70.0 and new.served(0) == 7.0  # C, moved to the front
    assert new.state(1, 11.0) == UP  # a new service starts up
    assert new.state(2, 11.0) == UP  # B at another address is another service
    assert new.f[3 * SLOT] == 12.0  # A keeps its cool-down
    assert not new.checked  # the checker of the new table says so itself


def test_turning_checks_off_frees_every_down_service_whatever_its_place():
    _, table = make_health("A=h:1", "B=h:2", "C=h:3", checked=True)
    for i in (1, 2):  # A stays up: the loop must go past it
        table.record_failure(i, 10.0, math.inf, math.inf)
    table.set_recovery(False, 11.0)
    assert [table.state(i, 11.0) for i in range(3)] == [UP, PROBE_DUE, PROBE_DUE]
