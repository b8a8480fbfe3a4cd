"""hapolicy_worker_restarts_total's count (workertable.py, supervision.py): a worker that dies
unasked (killed, crashed, killed by the watchdog) counts once; a worker that retires (max-use,
a reload), the workers a stop ends and the monitor do not count. With test_daemon_master_unit's
fake ProcessOps: no process is forked."""

from __future__ import annotations

import signal

import pytest
from test_daemon_master_unit import EXIT_3, KILLED, close_master, make_master, says_ready

from hapolicy.daemon.children import MONITOR
from hapolicy.daemon.throttle import STABLE_SECONDS
from hapolicy.monitor.metrics import Collector, Tables


@pytest.fixture
def checked():
    """With checks: the first fork is the monitor's (pid 100)."""
    m = make_master()
    yield m
    close_master(m)


def restarts(master) -> float:
    """The counter as /metrics says it."""
    tables = Tables(master.config, master.health_tables, master.worker_table,
                    sorted(master.worker_table.workers().values()))
    family = next(f for f in Collector(lambda: tables).collect()
                  if f.name == "hapolicy_worker_restarts")
    assert family.type == "counter"
    return family.samples[0].value


def test_only_workers_that_die_unasked_count(checked):
    master, ops = checked, checked.ops
    master.step()  # the monitor 100, the workers 101 and 102
    assert restarts(master) == 0
    master.workers[101].retiring = True  # as on its max-use message: 103 replaces it
    master.step()
    ops.t += 1
    ops.deaths = [(101, 0)]
    master.step()
    assert restarts(master) == 0
    ops.deaths = [(102, KILLED)]
    master.step()
    assert restarts(master) == 1
    says_ready(master, master.supervisor.first(MONITOR))
    ops.t += STABLE_SECONDS
    ops.deaths = [(100, KILLED)]  # the monitor, replaced, is no worker
    master.step()
    assert restarts(master) == 1
    for worker in master.workers.values():
        says_ready(master, worker)
    ops.deaths = [(pid, EXIT_3) for pid in sorted(master.workers)]
    master.step()
    assert restarts(master) == 3
    master.reload_config = lambda: master.config
    master.signals.append(signal.SIGHUP)  # a reload (the same config): the workers retire
    master.step()
    ops.deaths = [(pid, 0) for pid, w in master.workers.items() if w.retiring]
    assert len(ops.deaths) == 2
    master.step()
    master.signals.append(signal.SIGTERM)
    master.step()
    ops.deaths = [(pid, KILLED) for pid in sorted(master.workers)]
    master.step()
    assert restarts(master) == 3
