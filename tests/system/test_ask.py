"""`hapolicyctl ask` against a live daemon (two workers, its monitor answering the control
socket) and FakeBackends.

ask returns the backend's answer and names the service; a pool whose services all fail answers
the default with the reason, and that failure counted (the next ask finds them down, as
`status` does); a hash pool's --dry-run shows the masked key and the service that the live ask
of another address of the same /24 then gets; the request may come on standard input; bad input
(unknown pool, an attribute without `=`, a request over 64 KiB) is one `error:` line and exit
status 1; and the workers' request counters (`hapolicyctl workers`) do not move: nothing of an
ask counts toward max-use.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port, refused_port
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, hapolicy_env
from testkit.wait import wait_for

DEFAULT = "DEFER_IF_PERMIT hapolicy default"


def hapolicyctl(path: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hapolicy.ctl", "--control", path, *args],
                          cwd=REPO, env=hapolicy_env(), input=stdin, capture_output=True,
                          text=True, timeout=30, check=False)


def asked(path: str, *args: str, stdin: str = "") -> list[str]:
    done = hapolicyctl(path, "ask", *args, stdin=stdin)
    assert done.returncode == 0 and not done.stderr, done
    return done.stdout.splitlines()


def worker_requests(path: str) -> list[str]:
    lines = hapolicyctl(path, "workers").stdout.splitlines()[1:]
    return sorted(line.split()[1] for line in lines)


def config(g1: FakeBackend, g2: FakeBackend, port: int) -> str:
    return (f"check-interval = 0\ndefault = {DEFAULT}\n"
            f"[pool grey]\nlisten = {HOST}:{port}\nbalance = hash:client_address/24,sender\n"
            f"service = {g1.spec('GREY1')}\nservice = {g2.spec('GREY2')}\n"
            f"[pool down]\nlisten = {HOST}:{free_port()}\n"
            f"service = D1=127.0.0.1:{refused_port()}:10\n"
            f"service = D2=127.0.0.1:{refused_port()}:20\n")


def test_ask_answers_through_the_pool_and_counts_nothing_toward_max_use():
    with FakeBackend(action="DEFER_IF_PERMIT greylisted") as g1, \
            FakeBackend(action="DUNNO") as g2:
        daemon = Daemon(listen="", workers=2)
        port = free_port()
        conf = daemon.dir / "hapolicy.conf"
        conf.write_text(config(g1, g2, port))
        path = str(daemon.dir / "control")
        daemon.args += ["-c", str(conf), "--control", path]
        with daemon.start():
            with PolicyClient(HOST, port) as client:  # live traffic: the workers count it
                for n in range(6):
                    client.ask(request(client_address=f"203.0.113.{n}"))
            before = wait_for(lambda: (lambda r: r if sum(map(int, r)) == 6 else None)(
                worker_requests(path)), 10, what="the workers' counts")

            # the hash pool: the dry run's order, then the live ask of the same /24
            for n in range(4):
                dry = asked(path, "--dry-run", "grey", f"client_address=198.51.{n}.9",
                            "sender=s@example.org")
                assert dry[0] == ('pool=grey balance=hash:client_address/24,sender '
                                  f'key="client_address/24=198.51.{n}.0 sender=s@example.org"')
                first = dry[1].split()[1]
                assert dry[1] in (f"order: {first} GREY1", f"order: {first} GREY2")
                live = asked(path, "grey", f"client_address=198.51.{n}.250",
                             "sender=s@example.org")
                backend = g1 if first == "GREY1" else g2
                assert live[0] == (f"pool=grey service={first} address=127.0.0.1:{backend.port} "
                                   f"delay={live[0].split('delay=')[1].split()[0]} "
                                   f"action={backend.action}")
                assert re.fullmatch(rf"answer: service={first} delay=\d+\.\d{{3}}s "
                                    rf"action={backend.action}", live[1]), live
                assert backend.requests[-1]["client_address"] == f"198.51.{n}.250"

            # on standard input, as Postfix sends it
            lines = asked(path, "grey", stdin="request=smtpd_access_policy\n"
                          "client_address=198.51.0.1\nsender=s@example.org\n\n")
            assert lines[-1].startswith("answer: service=")

            # every service fails: the default and why; the failures counted
            first = asked(path, "down", "client_address=192.0.2.1")
            assert [line.split()[1] for line in first[:2]] == ["service=D1", "service=D2"]
            assert all(line.endswith('failed="connection refused"') for line in first[:2])
            assert re.fullmatch(r'answer: default="all services failed" delay=\d+\.\d{3}s '
                                f"action={DEFAULT}", first[2]), first
            rows = csv_rows(path)
            assert rows["down/D1"]["state"] == rows["down/D2"]["state"] == "down"
            assert rows["down/D1"]["failures"] == "1"
            again = asked(path, "down", "client_address=192.0.2.1")
            assert again[0] == 'pool=down service=none why="all services down"'
            assert again[1].startswith('answer: default="all services down"')

            # bad input: one error line, exit status 1
            for args, error in ((["nope", "a=b"], "error: no pool 'nope'"),
                                (["grey", "a=b", "foo"], "error: request refused (a line "
                                 "without `=`)"),
                                (["grey", "a=" + "x" * 70000], "error: request refused "
                                 "(request larger than 65536 bytes)")):
                done = hapolicyctl(path, "ask", *args)
                assert done.returncode == 1, done
                assert done.stdout.startswith(error) and done.stdout.count("\n") == 1, done

            time.sleep(1.5)  # a heartbeat of each worker since the asks
            assert worker_requests(path) == before
            assert g1.requests or g2.requests
        daemon.assert_clean_output()
