"""With --user nobody, and Python, its standard library, hapolicy and its dependencies where
nobody can read them (a directory of mode 0700, as a Python under /root or a root-only venv),
every feature of the daemon works: the workers and the monitor import nothing after they
dropped privileges (daemon.preload_lazy_modules, the daemon's module-level imports).

The interpreter runs with PYTHONHOME and PYTHONPATH in that directory, where symlinks lead to
the real standard library and packages: whatever a process opens through them needs the
directory, which only root may enter. The daemon serves pools with hash balancing (masked),
fail-answer, policy_context routing, a shadow pool and active checks, answers every control
command (`ask` through three pools too) and a scrape of /metrics, then reloads on HUP a
configuration that adds hedge and a shadow to a pool that had neither (and serves the status
page). Every request must get a backend's answer, and no process may log an internal error, a
traceback, an ImportError or a death at boot.

That run cannot take every path; the source can be read whole: every import inside a function
of hapolicy/ that a worker or the monitor may run names a module that the master has imported
before it forks (its modules, `preload_lazy_modules`, metrics' `preload`).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import prometheus_client
import pytest
import setproctitle
from testkit.backends import CHECK_SENDER, FakeBackend
from testkit.ctl import read_all
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, hapolicy_env
from testkit.wait import wait_for

DEFAULT = "DEFER_IF_PERMIT hapolicy default"
FORBIDDEN = ("internal error", "Traceback", "ImportError", "ModuleNotFoundError",
             "died at boot", "Permission denied")


def hide_python(home: Path) -> dict[str, str]:
    """Make home (mode 0700) a Python home with the standard library, hapolicy, prometheus_client
    and setproctitle reached through it; the environment that runs Python from it."""
    home.mkdir(mode=0o700)
    os.chmod(home, 0o700)
    lib = home / sys.platlibdir / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    lib.mkdir(parents=True)
    stdlib = Path(sysconfig.get_path("stdlib"))
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages", "lib-dynload"):
            (lib / entry.name).symlink_to(entry)
    dynload = next((p for p in sys.path if p.endswith("lib-dynload")), "")
    if dynload:
        (lib / "lib-dynload").symlink_to(dynload)
    site = home / "site"
    site.mkdir()
    for package in (prometheus_client, setproctitle):
        (site / package.__name__).symlink_to(Path(package.__file__).parent)
    (site / "hapolicy").symlink_to(REPO / "hapolicy")
    (home / "run.py").write_text("from hapolicy.cli import run\n\nrun()\n")
    return {"PYTHONHOME": str(home), "PYTHONPATH": str(site)}


class HiddenDaemon(Daemon):
    """The daemon run by Python from a hidden home (hide_python): `python -S HOME/run.py`."""

    def __init__(self, home: Path, *args: str, **kwargs) -> None:
        self.home = home
        self.python = os.path.realpath(sys.executable)  # the interpreter, not a venv's
        super().__init__(*args, env=hide_python(home), **kwargs)

    def argv(self) -> list[str]:
        return [self.python, "-S", str(self.home / "run.py"), *super().argv()[3:]]


def assert_hidden(daemon: HiddenDaemon) -> None:
    """The hidden Python imports from its home, and nobody cannot read there."""
    found = subprocess.run([daemon.python, "-S", "-c", "import json, prometheus_client, "
                            "hapolicy; print(json.__file__, prometheus_client.__file__, "
                            "hapolicy.__file__)"], env={**os.environ, **daemon.env},
                           cwd=daemon.home, capture_output=True, text=True, timeout=20)
    assert found.returncode == 0, found.stderr
    assert all(path.startswith(str(daemon.home)) for path in found.stdout.split()), found.stdout
    denied = subprocess.run(["cat", str(daemon.home / "site/hapolicy/__init__.py")],
                            user="nobody", capture_output=True, timeout=20)
    assert denied.returncode != 0


def config_text(backends: dict[str, FakeBackend], ports: tuple[int, int], added: str) -> str:
    """grey hashes on the client's /24 and the sender (policy_context grey), spf answers the
    other contexts on the same address, fails F's DEFER over to S and is shadowed by next;
    rbl, on an address of its own, gets `added`."""
    b = backends
    return (f"check-interval = 0.2\ncheck-down-interval = 0.2\ncheck-rise = 1\n"
            f"default = {DEFAULT}\n"
            f"[pool grey]\nlisten = {HOST}:{ports[0]}\npolicy-context = grey\n"
            f"balance = hash:client_address/24,sender\n"
            f"service = {b['G1'].spec()}\nservice = {b['G2'].spec()}\n"
            f"[pool spf]\nlisten = {HOST}:{ports[0]}\npolicy-context = *\n"
            f"fail-answer = ^defer\nsticky-instance = no\nshadow = next\n"
            f"service = {b['F'].spec(prio=10)}\nservice = {b['S'].spec(prio=20)}\n"
            f"[pool rbl]\nlisten = {HOST}:{ports[1]}\nsticky-instance = no\n"
            f"service = {b['R1'].spec(prio=10)}\nservice = {b['R2'].spec(prio=20)}\n{added}"
            f"[pool next]\nservice = {b['N'].spec()}\n")


def ask_every_pool(ports: tuple[int, int], rounds: int) -> dict[str, set[str]]:
    """Requests to each pool, on new and reused connections; the answers by pool."""
    answers: dict[str, set[str]] = {"grey": set(), "spf": set(), "rbl": set()}
    with PolicyClient(HOST, ports[0]) as shared, PolicyClient(HOST, ports[1]) as rbl:
        for n in range(rounds):
            answers["grey"].add(shared.ask(request(
                policy_context="grey", instance=f"g{n}", client_address=f"192.0.{n}.{n + 1}",
                sender=f"s{n}@example.org")))
            answers["spf"].add(shared.ask(request(policy_context="spf", instance=f"s{n}")))
            answers["rbl"].add(rbl.ask(request(instance=f"r{n}", x_pool="rbl")))
    return answers


def control(path: str, line: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(line.encode() + b"\n")
        return read_all(sock).decode()


def every_command(path: str) -> dict[str, str]:
    lines = ("help", "status", "csv", "workers", "disable grey/G1", "drain grey/G1",
             "enable grey/G1", "weight grey/G1 5", "weight grey/G1 reset",
             "ask --dry-run grey\nclient_address=192.0.2.1\nsender=a@example.org\n",
             "ask grey\nclient_address=192.0.2.1\nsender=a@example.org\n",
             "ask spf\ninstance=ask1\n", "ask rbl\nx_pool=rbl\n")  # ask: its request follows
    return {line: control(path, line) for line in lines}


def csv_row(path: str, name: str) -> dict[str, str]:
    lines = control(path, "csv").splitlines()
    header = lines[0][2:].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return next(r for r in rows if f"{r['pool']}/{r['service']}" == name)


def scrape(port: int, path: bytes = b"/metrics") -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_all(sock)


def assert_served(answers: dict[str, set[str]]) -> None:
    assert answers["grey"] <= {"action=OK g1\n\n", "action=OK g2\n\n"}, answers
    assert len(answers["grey"]) == 2, answers  # the hash spread the clients over both
    assert answers["spf"] == {"action=DUNNO s\n\n"}, answers  # F's DEFER failed over to S
    assert answers["rbl"] <= {"action=OK r1\n\n", "action=OK r2\n\n"}, answers


def assert_commands_answered(path: str) -> None:
    for line, answer in every_command(path).items():
        assert answer and not answer.startswith("error"), (line, answer)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
@pytest.mark.parametrize("metrics", [False, True], ids=["no-metrics", "metrics"])
def test_every_feature_as_nobody_with_python_and_the_package_unreadable(tmp_path: Path,
                                                                        metrics: bool):
    """Without --metrics-listen too: prometheus_client imports much of the standard library
    (hashlib among it), which would hide what the workers lack without it."""
    ports = (free_port(), free_port())
    metrics_port = free_port() if metrics else 0
    conf = tmp_path / "hapolicy.conf"
    with FakeBackend(name="G1", action="OK g1") as g1, \
            FakeBackend(name="G2", action="OK g2") as g2, \
            FakeBackend(name="F", action="DEFER try later") as f, \
            FakeBackend(name="S", action="DUNNO s") as s, \
            FakeBackend(name="R1", action="OK r1", slow_every=3, slow_delay=0.3) as r1, \
            FakeBackend(name="R2", action="OK r2") as r2, \
            FakeBackend(name="N", action="REJECT shadow") as n:
        backends = {b.name: b for b in (g1, g2, f, s, r1, r2, n)}
        conf.write_text(config_text(backends, ports, ""))
        extra = ["--metrics-listen", f"{HOST}:{metrics_port}"] if metrics else []
        daemon = HiddenDaemon(tmp_path / "python", "-c", str(conf), "--user", "nobody", "-l",
                              *extra, listen="", workers=2)
        os.chmod(daemon.dir, 0o711)  # nobody reaches the syslog socket in it
        daemon.args += ["--control", str(daemon.dir / "control")]
        assert_hidden(daemon)
        with daemon.start(wait=False):
            try:
                exercise(daemon, conf, backends, ports, metrics_port)
            except (AssertionError, OSError) as exc:
                raise AssertionError(f"{exc}\nthe daemon's log:\n{daemon.log.text()}") from exc
        log = daemon.log.text()
        for word in FORBIDDEN:
            assert word not in log, log
        daemon.assert_clean_output()


def exercise(daemon: HiddenDaemon, conf: Path, backends: dict[str, FakeBackend],
             ports: tuple[int, int], metrics_port: int) -> None:
    """Every feature, a HUP that adds hedge and a shadow to rbl, every feature again."""
    path = str(daemon.dir / "control")
    n, r2 = backends["N"], backends["R2"]
    daemon.pids = daemon.wait_ready(15)
    monitor = wait_for(daemon.monitor, 10, what="the monitor")
    assert_served(ask_every_pool(ports, 12))
    wait_for(lambda: n.live_requests, 10, what="spf's shadow copies")
    wait_for(lambda: all(any(r.get("sender") == CHECK_SENDER for r in b.requests)
                         for b in backends.values()), 10, what="every service checked")
    assert_commands_answered(path)
    if metrics_port:
        assert scrape(metrics_port).startswith(b"HTTP/1.1 200 ")

    conf.write_text(config_text(backends, ports, "hedge = 0.05\nhedge-max = 100\nshadow = next\n"))
    old = set(daemon.workers_now())
    daemon.send(signal.SIGHUP)
    daemon.log.wait("reloaded")
    wait_for(lambda: len(set(daemon.workers_now()) - old) == 2, 10, what="the new workers")
    wait_for(lambda: daemon.monitor() not in (0, monitor), 10, what="a new monitor")
    before = len(r2.live_requests)
    assert_served(ask_every_pool(ports, 12))
    # R1 is slow on every third request: those were hedged on R2; and copied to the shadow
    wait_for(lambda: int(csv_row(path, "rbl/R1")["hedged"]) > 0, 10, what="hedges")
    assert len(r2.live_requests) > before
    wait_for(lambda: any(r.get("x_pool") == "rbl" for r in n.live_requests), 10,
             what="rbl's shadow copies")
    assert_commands_answered(path)
    if metrics_port:
        assert scrape(metrics_port).startswith(b"HTTP/1.1 200 ")
        page = scrape(metrics_port, b"/status")  # the status page, rbl's hedge counters on it
        assert page.startswith(b"HTTP/1.1 200 ") and b"hedged " in page, page[:200]
    assert daemon.stop() == 0


# functions that no worker or monitor runs: their lazy imports may stay lazy
NOT_AFTER_FORK = {
    ("cli", "make_parser"): "the command line, read by the master",
    ("cli", "main"): "the command line, read by the master",
    ("cli", "_warnings"): "the master, at start",
    ("config.parsers", "parse_fail_answer"): "configurations are read by the master",
    ("ctl", "help_text"): "hapolicyctl",
    ("ctl", "main"): "hapolicyctl (its check)",
    ("tables.health", "claim_probe"): "the lock of spawn mode's state file",
    ("tables.health", "randomize_phase"): "spawn mode's own table",
    ("spawn.statefile", "lock"): "spawn mode's state file",
    ("spawn.watch", "private_memory"): "spawn mode's state file spoilt under a session",
    ("daemon.chores", "preload_lazy_modules"): "the master, before it forks",
    ("monitor.metrics", "preload"): "the master, before it forks",
}


def _is_module(name: str) -> bool:
    """Whether a dotted name is a module (or a package), not a name defined in one."""
    if name.split(".")[0] == "hapolicy":
        path = REPO.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # its parent is a module, not a package
        return False


def lazy_imports() -> list[tuple[str, str, str]]:
    """(module, function, imported module) of every import inside a function of hapolicy/."""
    found = []
    for source in sorted((REPO / "hapolicy").rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        module = ".".join(source.relative_to(REPO / "hapolicy").with_suffix("").parts)
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    assert not node.level, f"{source}: a relative import"
                    names = [node.module or ""]
                    # `from PACKAGE import MODULE` imports MODULE too
                    names += [f"{names[0]}.{a.name}" for a in node.names
                              if _is_module(f"{names[0]}.{a.name}")]
                else:
                    continue
                found += [(module, function.name, name) for name in names]
    return found


def test_every_lazy_import_of_a_worker_or_the_monitor_is_imported_before_the_fork():
    """What the master has imported when it forks, in a fresh interpreter: the daemon's
    modules, then what Master.start does before it forks (set_title, the preloads)."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from hapolicy import cli\n"
         "from hapolicy.daemon import runner\n"
         "from hapolicy.daemon.chores import preload_lazy_modules\n"
         "from hapolicy.monitor.metrics import preload\n"
         "from hapolicy.daemon.childproto import set_title\n"
         "set_title('test')\n"
         "preload_lazy_modules()\n"
         "preload()\n"  # with --metrics-listen
         "print(' '.join(sys.modules))"],
        cwd=REPO, env=hapolicy_env(), capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    before_fork = set(imported.stdout.split())
    lazy = [(module, function, name) for module, function, name in lazy_imports()
            if (module, function) not in NOT_AFTER_FORK]
    assert len(lazy) > 10  # the scan finds them
    assert [item for item in lazy if item[2] not in before_fork] == []


def test_the_scan_sees_a_module_imported_from_its_package():
    """`from hapolicy.request import hedge` inside a function imports the module
    hapolicy.request.hedge, not only its package (always imported before the fork): the scan
    names the module, as it named `from . import hedge` before the package split; a class
    imported from a module (`from hapolicy.request.hedge import Hedger`) is that module's."""
    found = lazy_imports()
    assert ("daemon.chores", "preload_lazy_modules", "hapolicy.request.hedge") in found
    assert ("monitor.metrics", "preload", "hapolicy.tables.stats") in found
    assert ("request.assembly", "make_dispatcher", "hapolicy.request.hedge") in found
    assert not any(name.endswith(".Hedger") for _, _, name in found)


def test_every_exception_names_a_function_with_lazy_imports():
    """An exception of NOT_AFTER_FORK that names no function of the scan (a module renamed,
    a function moved) would leave the function it meant unchecked without a word."""
    scanned = {(module, function) for module, function, _ in lazy_imports()}
    assert sorted(set(NOT_AFTER_FORK) - scanned) == []
