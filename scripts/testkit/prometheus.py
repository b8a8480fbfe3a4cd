"""A real Prometheus server (Debian's `prometheus` package) that scrapes one target, for tests.

:class:`Prometheus` runs /usr/bin/prometheus with a config of its own (one job, `hapolicy`,
scraping the target every second) and a storage directory in a temporary directory, listening
on a free 127.0.0.1 port; :meth:`Prometheus.query` asks its HTTP API (/api/v1/query). Given
rule files, it evaluates them every second; :meth:`Prometheus.rules` says how each fared.
:func:`fetch` is a plain HTTP GET that returns the status and body.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from testkit.ports import HOST, free_port
from testkit.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    from typing_extensions import Self

BINARY = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def fetch(url: str, timeout: float = 10.0) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET of url."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


class Prometheus:
    """Prometheus scraping `target` (HOST:PORT, path /metrics) every second."""

    def __init__(self, target: str, rule_files: Sequence[Path] = ()) -> None:
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        self.dir = Path(tempfile.mkdtemp(prefix="prom-"))
        self.port = free_port()
        self.target = target
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "prometheus.log"

    def start(self) -> Prometheus:
        config = self.dir / "prometheus.yml"
        rules = "".join(f"  - {json.dumps(f)}\n" for f in self.rule_files)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + "scrape_configs:\n  - job_name: hapolicy\n"
            f"    static_configs:\n      - targets: ['{self.target}']\n")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [BINARY, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address={HOST}:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.dir)
        wait_for(self._ready, 60, interval=0.2, what="prometheus ready")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')}")
        try:
            return fetch(f"http://{HOST}:{self.port}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        """The result of an instant query (a vector: [{"metric": {...}, "value": [t, "v"]}])."""
        return self.api("query?" + urllib.parse.urlencode({"query": expr}))["result"]

    def rules(self) -> list[dict]:
        """Every rule loaded (/api/v1/rules): name or alert, query, health, lastError..."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def api(self, path: str) -> dict:
        status, body, _ = fetch(f"http://{HOST}:{self.port}/api/v1/{path}")
        assert status == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def value(self, expr: str) -> float | None:
        """The value of a query that gives one sample, or None when it gives none."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
