"""Counters against a live daemon: hapolicyctl status/csv under load, /metrics (metrics.py) read
by a real Prometheus (Debian's package) and by promtool, bad HTTP input, start errors, reload.

Under load from four connections over two workers, with one service that answers garbage and is
probed again every 0.2 s, the counters move, add up (answers + failures = the requests each
fake backend received; a pool's requests = its answers + default answers) and /metrics says
what csv says. The counters are written without locks by both workers, so an increment may
rarely be lost in a race (health.py): the sums are compared with a slack of 1 + 1/500th.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families
from testkit.backends import FakeBackend
from testkit.ctl import Load, ask_all, csv_rows, ctl, read_all
from testkit.daemon import Daemon
from testkit.packages import package_present
from testkit.ports import HOST, free_port
from testkit.prometheus import PROMTOOL, Prometheus, fetch
from testkit.protocol import PolicyClient, request
from testkit.repo import run_hapolicy
from testkit.wait import wait_for

from hapolicy.monitor.metrics import MAX_HEAD
from hapolicy.monitor.oneshot import HEAD_SECONDS, MAX_CONNECTIONS


def near(counted: float, true: float) -> bool:
    """Equal but for the increments a race may have lost (see the module doc)."""
    return abs(true - counted) <= 1 + true // 500


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, body, content_type = fetch(f"http://{HOST}:{port}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), content_type
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def samples_or_none(port: int) -> dict | None:
    """samples(port), or None when the scrape failed: a HUP replaces the monitor that serves
    /metrics, and a scrape it was answering is cut (Prometheus's next one succeeds)."""
    try:
        return samples(port)
    except OSError:
        return None


def total(found: dict, name: str, **labels: str) -> float:
    """The sum of the samples of name whose labels include these."""
    return sum(v for (n, ls), v in found.items()
               if n == name and set(labels.items()) <= set(ls))


def test_status_and_csv_under_load_add_up_and_match_the_backends():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b, \
            FakeBackend(name="F", mode="garbage") as f:
        mport = free_port()
        daemon = Daemon("-s", f.spec(prio=10), "-s", a.spec(prio=20), "-s", b.spec(prio=20),
                        "--check-interval", "0", "--cooldown", "0.2", "--cooldown-max", "0.2",
                        "--metrics-listen", f"{HOST}:{mport}", workers=2)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            ask_all(daemon, 1)  # F fails and is down: from now on only probes reach it
            header = ctl("--control", path, "csv").stdout.splitlines()[0]
            assert header == ("# pool,service,address,state,admin,weight,answers,failures,"
                              "p50_ms,p99_ms,last_change,down_s,hedged,hedge_won,shadow_agree,"
                              "shadow_disagree,shadow_failed,shadow_dropped,internal_errors,"
                              "ewma_ms,in_flight,queued,turned_away,queued_out,cache_hits,"
                              "cache_misses,cache_stale,cache_evictions")
            with Load(daemon) as load:
                def answered() -> int:
                    return sum(int(r["answers"]) for r in csv_rows(path).values())

                first = wait_for(lambda: answered() >= 100 and answered(), 20, what="answers")
                wait_for(lambda: answered() > first + 100, 20, what="the counters to move")
                during = samples(mport)
                assert total(during, "hapolicy_requests_total") > first
                status = ctl("--control", path, "status").stdout.splitlines()
                assert status[0].split()[8:11] == ["p50_ms", "p99_ms", "last_change"]
                cells = {line.split()[1]: line.split() for line in status[1:]}
                assert cells["A"][3] == "up" and cells["F"][3] == "down"
                assert float(cells["A"][8]) > 0 and cells["F"][8] == "-"
                wait_for(lambda: int(csv_rows(path)["default/F"]["failures"]) >= 3, 20,
                         what="probes of F")
            assert not load.bad and load.answers > 200
            time.sleep(0.5)  # the last answers are counted (and written out) before we read
            rows = csv_rows(path)
            for name, backend in (("A", a), ("B", b), ("F", f)):
                row = rows[f"default/{name}"]
                assert near(int(row["answers"]) + int(row["failures"]),
                            len(backend.live_requests)), (name, row, len(backend.live_requests))
            assert rows["default/F"]["answers"] == "0"
            assert rows["default/A"]["failures"] == rows["default/B"]["failures"] == "0"
            found = samples(mport)
            requests = total(found, "hapolicy_requests_total", pool="default")
            answers = total(found, "hapolicy_service_answers_total")
            defaults = total(found, "hapolicy_default_answers_total")
            assert near(requests, load.answers + 1) and near(requests, answers + defaults)
            assert defaults == 0
            assert near(answers, sum(int(r["answers"]) for r in rows.values()))
            assert total(found, "hapolicy_service_answers_total", action="DUNNO") == answers
            assert total(found, "hapolicy_service_failures_total", service="F",
                         outcome="invalid_answer") == int(rows["default/F"]["failures"])
            for name in ("A", "B"):
                assert total(found, "hapolicy_service_latency_seconds_count", service=name) == \
                    total(found, "hapolicy_service_answers_total", service=name) > 0
            assert total(found, "hapolicy_service_up", service="F") == 0
            assert rows["default/F"]["state"] == "down"
            assert total(found, "hapolicy_service_down_seconds_total", service="F") > 0
            assert total(found, "hapolicy_service_down_seconds_total", service="A") == 0
            assert total(found, "hapolicy_service_up", service="A") == 1
            assert total(found, "hapolicy_workers") == 2
            wait_for(lambda: total(samples(mport), "hapolicy_requests_in_flight") == 0, 10,
                     what="nothing in flight")
            assert daemon.stop() == 0
            daemon.assert_clean_output()


def test_prometheus_scrapes_the_metrics_and_promtool_finds_them_clean():
    assert package_present("prometheus"), "Debian's prometheus: scripts/run-tests installs it"
    with FakeBackend(name="A", action="REJECT no") as a:
        mport = free_port()
        with Daemon("-s", a.spec(), "--metrics-listen", f"{HOST}:{mport}", workers=2) as daemon:
            with PolicyClient(HOST, daemon.port) as client:
                for i in range(30):
                    assert client.ask(request(recipient=f"r{i}@example.net")) == \
                        "action=REJECT no\n\n"
            status, body, _ = fetch(f"http://{HOST}:{mport}/metrics")
            assert status == 200
            lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, check=False,
                                  capture_output=True, timeout=30)
            assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint
            with Prometheus(f"{HOST}:{mport}") as prometheus:
                wait_for(lambda: prometheus.value('hapolicy_requests_total{pool="default"}')
                         == 30, 60, interval=0.5, what="prometheus to scrape 30 requests")
                assert prometheus.value('up{job="hapolicy"}') == 1
                assert prometheus.value('hapolicy_service_answers_total{service="A",'
                                        'action="REJECT"}') == 30
                assert prometheus.value('hapolicy_service_latency_seconds_count'
                                        '{service="A"}') == 30
                assert prometheus.value("sum(hapolicy_service_failures_total)") == 0
                assert prometheus.value('hapolicy_build_info') == 1
            assert daemon.stop() == 0
        assert len(a.live_requests) == 30


def http(port: int, data: bytes, timeout: float = HEAD_SECONDS + 25) -> bytes:
    """Send data, read until the server closes; what it answered."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before we sent it all: the answer waits
        return read_all(sock)


def test_bad_http_requests_get_an_answer_and_the_master_goes_on():
    with FakeBackend(name="A") as a:
        mport = free_port()
        daemon = Daemon("-s", a.spec(), "--metrics-listen", f"{HOST}:{mport}", workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start(), Load(daemon) as load:
            for data, status in ((b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
                                 (b"GET /metrics?x=1 HTTP/1.0\n\n", b"200"),
                                 (b"GET / HTTP/1.1\r\n\r\n", b"200"),
                                 (b"GET /status?x=1 HTTP/1.0\n\n", b"200"),
                                 (b"GET /metricsX HTTP/1.1\r\n\r\n", b"404"),
                                 (b"GET /status/x HTTP/1.1\r\n\r\n", b"404"),
                                 (b"GET /index.html HTTP/1.1\r\n\r\n", b"404"),
                                 (b"HEAD /status HTTP/1.1\r\n\r\n", b"405"),
                                 (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                                  b"405"),
                                 (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                                  b"405"),
                                 (b"garbage\r\n\r\n", b"400"),
                                 (b"\x00\xff\xfe\r\n\r\n", b"400"),
                                 (b"GET /metrics SMTP/1.0\r\n\r\n", b"400"),
                                 (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD // 6)
                                  + b"\r\n", b"431"),
                                 (b"x" * 10_000_000, b"431")):
                answer = http(mport, data)
                assert answer.startswith(b"HTTP/1.1 " + status + b" "), (data[:40], answer[:80])
            # a request head never finished: answered 408 after HEAD_SECONDS, then closed
            assert http(mport, b"GET /metrics HTTP/1.1\r\n").startswith(
                b"HTTP/1.1 408 Request Timeout\r\n")
            assert ctl("--control", path, "status").returncode == 0
            assert daemon.proc.poll() is None
        assert load.answers > 100 and not load.bad


def test_idle_connections_never_keep_a_scrape_or_a_command_out():
    """MAX_CONNECTIONS connections that send nothing to /metrics (any local user may) and as
    many to the control socket: a scrape and hapolicyctl still get their answers, each taking
    the place of the oldest idle connection."""
    with FakeBackend(name="A") as a:
        mport = free_port()
        daemon = Daemon("-s", a.spec(), "--metrics-listen", f"{HOST}:{mport}", workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            wait_for(lambda: http(mport, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(
                b"HTTP/1.1 200 "), 10, what="the monitor")
            held = [socket.create_connection((HOST, mport), timeout=30)
                    for _ in range(MAX_CONNECTIONS)]
            for _ in range(MAX_CONNECTIONS):
                held.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                held[-1].connect(path)
            try:
                assert total(samples(mport), "hapolicy_workers") == 1
                status = ctl("--control", path, "status")
                assert status.returncode == 0 and status.stdout.startswith("pool "), status
            finally:
                for sock in held:
                    sock.close()
            for what in ("metrics", "control socket"):
                daemon.log.wait(f"{what}: {MAX_CONNECTIONS} connections at once: closed the "
                                "oldest one waiting on its client to make room")
            assert daemon.stop() == 0
            daemon.assert_clean_output()


def test_a_bad_or_busy_metrics_address_is_a_one_line_error_at_start():
    with FakeBackend(name="A") as a, socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        for address, code, message in (
                (f"{HOST}:{busy.getsockname()[1]}", 1,
                 (f"cannot listen on metrics address {HOST}:{busy.getsockname()[1]}: "
                  "Address already in use")),
                ("unix:/tmp/x", 2, "expected one HOST:PORT or [IPv6]:PORT"),
                (f"{HOST}:99999", 2, "port must be at most 65535")):
            done = run_hapolicy(["--listen", f"{HOST}:{free_port()}", "-s", a.spec(),
                                 "--metrics-listen", address, "--syslog-socket", ""])
            assert done.returncode == code, done
            assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


def test_counters_survive_a_reload_for_the_services_that_stay():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        mport = free_port()
        daemon = Daemon(workers=1)
        conf = daemon.dir / "hapolicy.conf"
        conf.write_text(f"service = {a.spec()}\nmetrics-listen = {HOST}:{mport}\n")
        daemon.args += ["-c", str(conf)]
        with daemon.start():
            ask_all(daemon, 20)
            before = samples(mport)
            assert total(before, "hapolicy_service_answers_total", service="A") == 20
            conf.write_text(f"service = {a.spec()}\nservice = {b.spec()}\n"
                            f"metrics-listen = {HOST}:{mport}\n")
            daemon.send(signal.SIGHUP)
            wait_for(lambda: total(samples_or_none(mport) or {}, "hapolicy_service_up",
                                   service="B") == 1, 10, what="the reload")
            ask_all(daemon, 20)
            after = samples(mport)
            assert total(after, "hapolicy_requests_total") == 40
            assert total(after, "hapolicy_service_answers_total", service="A") == \
                len(a.live_requests) >= 20  # the 20 of before the reload, and any after
            assert total(after, "hapolicy_service_answers_total", service="B") == \
                len(b.live_requests) > 0
            assert total(after, "hapolicy_service_latency_seconds_count", service="A") >= 20
            assert daemon.stop() == 0
