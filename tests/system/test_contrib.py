"""contrib/: the Prometheus rules (promtool's check and unit tests) and the Grafana dashboard
(its model), then every PromQL expression of both evaluated by a real Prometheus (Debian's
package) that scrapes a real daemon under load and evaluates the rules itself.

The daemon has two pools: grey hedges and has a shadow (the pool next), and one of its two
services answers garbage (down, failures by outcome); a worker is killed once (a restart).
The dashboard's variables are given concrete values ($pool grey, $instance .*, the intervals a
few seconds: Prometheus scrapes every second). An alert's expression is asked with its last
comparison made a `bool` one, so that it gives data whether or not it fires.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.packages import package_present
from testkit.ports import HOST, free_port
from testkit.prometheus import PROMTOOL, Prometheus
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO
from testkit.wait import wait_for

RULES_DIR = REPO / "contrib" / "prometheus"
RULES = RULES_DIR / "hapolicy.rules.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "hapolicy.json"
VARIABLES = {"$pool": "grey", "$instance": ".*", "$__rate_interval": "5s",
             "$__interval": "2s", "$__range": "30s"}
COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)\s*(-?[0-9.]+)\s*$")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          check=False, timeout=60)


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    assert package_present("prometheus"), "Debian's prometheus: scripts/run-tests installs it"
    check = promtool("check", "rules", RULES.name)
    rules = len(re.findall(r"^\s+- (record|alert): ", RULES.read_text(), re.M))
    assert check.returncode == 0 and f"SUCCESS: {rules} rules found" in check.stdout, check
    test = promtool("test", "rules", "hapolicy.rules.test.yml")
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test
    # every alert has a case that fires it and one where it stays silent
    cases = (RULES_DIR / "hapolicy.rules.test.yml").read_text()
    for alert in re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M):
        firing = re.findall(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", cases)
        silent = re.findall(rf"alertname: {alert}\n\s+exp_alerts: \[\]", cases)
        assert firing and silent, alert


def panels(dashboard: dict) -> list[dict]:
    return [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def test_the_dashboard_has_its_variables_a_row_per_pool_and_no_external_asset():
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["pool"]["type"] == "query" and variables["pool"]["multi"]
    assert "label_values(hapolicy_requests_total" in variables["pool"]["definition"]
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == [None, "pool"] and "$pool" in rows[1]["title"]
    titles = [p["title"] for p in panels(dashboard)]
    for title in ("Requests and default answers", "Answers by service", "Failures by outcome",
                  "Latency", "Service state"):
        assert title in titles
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    pool_panels = [p for p in dashboard["panels"] if p["gridPos"]["y"] > rows[1]["gridPos"]["y"]]
    for panel in pool_panels:
        assert all('pool="$pool"' in t["expr"] for t in panel["targets"]), panel["title"]
    assert "http://" not in text and "https://" not in text and "<img" not in text
    assert len(dashboard_expressions()) >= 15


def concrete(expr: str) -> str:
    """The dashboard's expression with its variables given values."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, expr
    return expr


def load(ports: list[int], stop: threading.Event, count: list[int]) -> None:
    """Requests to each port from two connections until stop."""
    clients = [PolicyClient(HOST, port) for port in ports for _ in range(2)]
    try:
        while not stop.is_set():
            for n, client in enumerate(clients):
                client.ask(request(instance=f"contrib{count[0]}.{n}"))
                count[0] += 1
            stop.wait(0.005)
    finally:
        for client in clients:
            client.sock.close()


def config(path: Path, ports: list[int], good: FakeBackend, bad: FakeBackend,
           shadow: FakeBackend) -> None:
    path.write_text(
        "check-interval = 0\ncooldown = 0.5\ncooldown-max = 0.5\n"
        f"[pool grey]\nlisten = {HOST}:{ports[0]}\n"
        f"service = G1={HOST}:{good.port}:1\nservice = G2={HOST}:{bad.port}:2\n"
        "hedge = 0.002\nhedge-max = 50\nsticky-instance = no\n"
        "shadow = next\nshadow-share = 50\n"
        f"[pool next]\nlisten = {HOST}:{ports[1]}\nservice = N={HOST}:{shadow.port}\n")


def test_every_expression_gives_data_from_prometheus_scraping_a_daemon_under_load(
        tmp_path: Path):
    assert package_present("prometheus"), "Debian's prometheus: scripts/run-tests installs it"
    ports, metrics = [free_port(), free_port()], free_port()
    conf = tmp_path / "hapolicy.conf"
    with FakeBackend(name="G1", slow_every=4, slow_delay=0.01) as good, \
            FakeBackend(name="G2", mode="garbage") as bad, FakeBackend(name="N") as shadow:
        config(conf, ports, good, bad, shadow)
        daemon = Daemon("-c", str(conf), "--metrics-listen", f"{HOST}:{metrics}", listen="",
                        workers=2)
        stop, count = threading.Event(), [0]
        with daemon.start(), Prometheus(f"{HOST}:{metrics}", [RULES]) as prometheus:
            wait_for(lambda: prometheus.value("hapolicy_worker_restarts_total") == 0, 30,
                     interval=0.5, what="a first scrape")
            os.kill(daemon.workers_now()[0], signal.SIGKILL)  # before the load's connections
            wait_for(lambda: prometheus.value("hapolicy_worker_restarts_total") == 1, 30,
                     interval=0.5, what="the restart counted")
            thread = threading.Thread(target=load, args=(ports, stop, count), daemon=True)
            thread.start()
            try:
                wait_for(lambda: len(prometheus.query(
                    'pool_service:hapolicy_service_latency_seconds:p99_rate5m{service="G1"}'))
                    and prometheus.value('sum(hapolicy_hedges_total{pool="grey"})'), 30,
                    interval=0.5, what="hedges and a recorded p99")
                wait_for(lambda: len(prometheus.query(concrete(
                    'rate(hapolicy_service_answers_total{pool="$pool"}[$__rate_interval])'))),
                    30, interval=0.5, what="5 s of answers")
                check_expressions(prometheus)
            finally:
                stop.set()
                thread.join(10)
            assert count[0] > 100
            assert daemon.stop() == 0


def check_expressions(prometheus: Prometheus) -> None:
    empty = [e for e in map(concrete, dashboard_expressions()) if not prometheus.query(e)]
    assert not empty, empty
    rules = prometheus.rules()
    assert len(rules) == len(re.findall(r"^\s+- (record|alert): ", RULES.read_text(), re.M))
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules
    for rule in rules:
        if rule["type"] == "recording":
            assert prometheus.query(rule["name"]), rule["name"]
        elif rule["name"] == "HapolicyMetricsAbsent":
            assert not prometheus.query(rule["query"])  # hapolicy's metrics are there
        else:
            asked = COMPARISON.sub(r" \1 bool \2", rule["query"])
            assert prometheus.query(asked), (rule["name"], asked)
    assert prometheus.value('hapolicy_service_up{service="G2"}') == 0
    # the rules see it at their next evaluation: pending, as 15 minutes have not passed
    wait_for(lambda: prometheus.query('ALERTS{alertname="HapolicyServiceDown",'
                                      'alertstate="pending"}'), 10, interval=0.5,
             what="HapolicyServiceDown pending")
    quiet = ("HapolicyPoolDown", "HapolicyDefaultAnswers", "HapolicyTargetDown",
             "HapolicyMetricsAbsent", "HapolicyServiceFlapping")
    firing = prometheus.query('ALERTS{alertname=~"Hapolicy.*"}')
    assert not [a for a in firing if a["metric"]["alertname"] in quiet], firing
    assert prometheus.value("increase(hapolicy_worker_restarts_total[15m])") > 0
