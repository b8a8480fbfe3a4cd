"""The verdict cache against a live daemon: one cache for all workers (a key answered by one is
known to the other), its counters in csv, status, /metrics, the status page and the summary
line, `cache-clear`, a HUP that keeps the entries of a pool whose key and services stay and
empties one whose key changed; --check-config refuses a pool that caches with state
(FILE:LINE), and one whose hash secret PYTHONHASHSEED fixes (at --check-config and at
start), and warns in spawn mode; the docs' SPF example passes the check
(docs/configuration.md, The verdict cache)."""

from __future__ import annotations

import signal
import subprocess

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port
from testkit.prometheus import fetch
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, command, hapolicy_env, run_hapolicy
from testkit.wait import wait_for

from hapolicy.man.texts import EXAMPLE_CACHE

CACHED = "sticky-instance = no\ncache = 300\ncache-key = client_address,sender\n"


def ask_keys(daemon: Daemon, keys: range, rounds: int) -> list[str]:
    """Each key `rounds` times, a connection each time (so that every worker serves some)."""
    answers = []
    for n in range(rounds):
        for key in keys:
            with PolicyClient(HOST, daemon.port) as client:
                answers.append(client.ask(request(sender=f"k{key}@example.org",
                                                  recipient=f"r{n}@example.net")))
    return answers


def test_one_cache_for_all_workers_its_counters_cache_clear_and_a_hup(tmp_path):
    with FakeBackend(mode="echo", attr="sender") as backend:
        mport = free_port()
        conf = tmp_path / "h.conf"
        settings = (f"service = {backend.spec('A')}\ncheck-interval = 0\nsummary = 1\n"
                    f"metrics-listen = {HOST}:{mport}\ncache-actions = k\n")
        conf.write_text(settings + CACHED)
        daemon = Daemon("-c", str(conf), workers=2)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            answers = ask_keys(daemon, range(10), 20)
            assert answers == [f"action=k{k}@example.org\n\n" for _ in range(20)
                               for k in range(10)]
            assert len(backend.requests) == 10  # once a key, whichever worker asked first

            def both_served() -> bool:  # as of their last heartbeat
                served = ctl("--control", path, "workers").stdout.splitlines()[1:]
                return len(served) == 2 and all(int(line.split()[1]) > 0 for line in served)

            wait_for(both_served, 5, what="requests served by both workers")
            row = csv_rows(path)["default/A"]
            assert (row["cache_hits"], row["cache_misses"]) == ("190", "10")
            assert row["cache_stale"] == row["cache_evictions"] == "0"
            assert "cache_hits" in ctl("--control", path, "status").stdout
            _, body, _ = fetch(f"http://{HOST}:{mport}/metrics")
            assert b'hapolicy_cache_total{pool="default",result="hits"} 190.0' in body
            _, page, _ = fetch(f"http://{HOST}:{mport}/status")
            assert b"cache_hits 190, cache_misses 10" in page
            wait_for(lambda: "cache hits=190 misses=10 stale=0 evictions=0" in daemon.log.text(),
                     5, what="the summary line")
            assert ctl("--control", path, "cache-clear", "default").stdout == \
                "ok: cache of pool default cleared\n"
            ask_keys(daemon, range(2), 1)
            assert len(backend.requests) == 12
            assert ctl("--control", path, "cache-clear", "nosuch").stdout.startswith("error:")
            daemon.send(signal.SIGHUP)  # the same configuration: the entries stay
            wait_for(lambda: daemon.log.text().count("reloaded") == 1, 10, what="the reload")
            ask_keys(daemon, range(2), 1)
            assert len(backend.requests) == 12
            conf.write_text(settings + CACHED.replace("client_address,sender", "sender"))
            daemon.send(signal.SIGHUP)  # another key: empty, its counters kept
            wait_for(lambda: daemon.log.text().count("reloaded") == 2, 10, what="the reload")
            ask_keys(daemon, range(2), 2)
            assert len(backend.requests) == 14
            assert csv_rows(path)["default/A"]["cache_misses"] == "14"


def check(tmp_path, text: str):
    conf = tmp_path / "h.conf"
    conf.write_text(text)
    return run_hapolicy(["-c", str(conf), "--check-config"]), str(conf)


def test_a_pool_that_caches_with_state_is_refused_with_its_file_and_line(tmp_path):
    pool = "[pool spf]\nlisten = 127.0.0.1:10099\nservice = A=127.0.0.1:10023\n"
    other = "[pool other]\nlisten = 127.0.0.1:10098\nservice = B=127.0.0.1:10024\n"
    for extra, why in (
            ("balance = hash:client_address\n", "cache with balance = hash:client_address"),
            ("sticky-instance = yes\n", "cache with sticky-instance = yes"),
            ("shadow = other\n", "cache with shadow = other"),
            ("cache-actions = DEFER\n", "cache-actions keeping temporary answers"),
            ("cache-actions = .*\n", "cache-actions keeping temporary answers")):
        stateless = "" if "sticky" in extra else "sticky-instance = no\n"
        cached = pool + stateless + "cache = 60\ncache-key = sender\n" + extra
        result, path = check(tmp_path, cached + other)
        assert result.returncode == 2, (extra, result.stdout)
        line = 4 if "sticky" in extra else 5  # the cache line
        assert f"{path}:{line}: pool spf: " in result.stderr and why in result.stderr, \
            result.stderr
        forced, _ = check(tmp_path, cached + "cache-force = yes\n" + other)
        assert forced.returncode == 0, forced.stderr
    for text, why in (("cache = 60\n", ":4: pool spf: cache needs cache-key"),
                      ("cache-stale = 60\n", ":4: pool spf: cache-stale needs cache"),
                      ("cache = 60\ncache-key = sender\ncache-stale = 30\n",
                       ":4: pool spf: cache-stale 30 must be longer than cache 60"),
                      ("cache = 60\ncache-key = sender/99x\n", ":5: cache-key 'sender/99x'")):
        result, path = check(tmp_path, pool + text + "sticky-instance = no\n")
        assert result.returncode == 2 and path + why in result.stderr, result.stderr


def test_a_pool_that_caches_is_refused_with_a_fixed_hash_seed(tmp_path):
    """PYTHONHASHSEED=0 or a number: --check-config and a start refuse a pool that caches, one
    line naming the file and its cache line; `random` is accepted."""
    conf = tmp_path / "h.conf"
    conf.write_text("[pool spf]\nlisten = 127.0.0.1:10099\nservice = A=127.0.0.1:10023\n"
                    "sticky-instance = no\ncache = 60\ncache-key = sender\n")
    for seed, args in (("0", ["--check-config"]), ("123", ["--check-config"]), ("0", [])):
        result = subprocess.run(command(["-c", str(conf), *args]), check=False,
                                env={**hapolicy_env(), "PYTHONHASHSEED": seed},
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 2, (seed, args, result.stderr)
        [line] = [x for x in result.stderr.splitlines() if "PYTHONHASHSEED" in x]
        assert f" {conf}:5: pool spf: cache with PYTHONHASHSEED={seed}: " in line, line
    result = subprocess.run(command(["-c", str(conf), "--check-config"]), check=False,
                            env={**hapolicy_env(), "PYTHONHASHSEED": "random"},
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr


def test_spawn_mode_is_warned_that_its_cache_lives_for_one_connection(tmp_path):
    result, _ = check(tmp_path, "service = A=127.0.0.1:10023\nsticky-instance = no\n"
                                "cache = 60\ncache-key = sender\n")
    assert result.returncode == 0
    assert "warning: pool default: cache in spawn mode" in result.stderr


def test_the_example_spf_pool_is_in_the_docs_and_passes_the_check(tmp_path):
    block = "".join("    " + line + "\n" for line in EXAMPLE_CACHE.rstrip("\n").split("\n"))
    for doc in ("README.md", "docs/configuration.md"):
        assert block in (REPO / doc).read_text(), doc
    result, _ = check(tmp_path, EXAMPLE_CACHE)
    assert result.returncode == 0, result.stderr
    assert "cache-stale = 3600" in result.stdout
