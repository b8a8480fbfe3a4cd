"""End to end, real Postfix in front of one hapolicy daemon of several pools.

* Two `check_policy_service { inet:127.0.0.1:P, policy_context=... }` entries on one hapolicy
  address: each reaches its own pool, and the SMTP client sees each pool's answer.
* Two real postgrey servers with separate databases behind one pool hashed on
  `client_address/24,sender,recipient`: a triplet greylisted from 127.0.0.1 passes when
  retried from 127.0.0.2 after the delay, for each of 30 triplets. A second pool on the same
  postgreys hashed on the unmasked `client_address` shows what that costs: the share of
  retries greylisted again (printed; about half, as two servers split the keys).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.packages import require_packages
from testkit.ports import HOST, free_port
from testkit.postfix import PostfixInstance, requires_root, smtp_rcpt
from testkit.postgrey import Postgrey

TRIPLETS = 30
DELAY = 2  # postgrey's --delay


@pytest.fixture(scope="module", autouse=True)
def packages():
    if os.geteuid() == 0:  # as root (CI): a missing package fails in CI, skips elsewhere
        require_packages("postfix", "postgrey")


@requires_root
def test_policy_contexts_on_one_address_reach_their_own_pools(tmp_path: Path):
    port = free_port()
    conf = tmp_path / "pools.conf"
    with FakeBackend(action="REJECT grey pool says no") as grey, \
            FakeBackend(action="REJECT rate pool says no") as rate:
        conf.write_text(f"check-interval = 0\nlisten = {HOST}:{port}\nlogging = yes\n"
                        f"[pool grey]\npolicy-context = grey\nservice = G={HOST}:{grey.port}\n"
                        f"[pool rate]\npolicy-context = rate\nservice = R={HOST}:{rate.port}\n")
        policy = (f"check_policy_service {{ inet:{HOST}:{port}, policy_context=grey }}, "
                  f"check_policy_service {{ inet:{HOST}:{port}, policy_context=rate }}")
        with Daemon("-c", str(conf), listen="", workers=2) as daemon, \
                PostfixInstance(tmp_path, policy=policy) as mx:
            code, text = smtp_rcpt(mx.smtpd_port, "a@example.org", "b@example.net")
            assert code == 554 and "grey pool says no" in text, (code, text)
            grey.set_mode("answer", action="DUNNO")
            code, text = smtp_rcpt(mx.smtpd_port, "a@example.org", "b@example.net")
            assert code == 554 and "rate pool says no" in text, (code, text)
            assert {r.get("policy_context") for r in grey.live_requests} == {"grey"}
            assert {r.get("policy_context") for r in rate.live_requests} == {"rate"}
            daemon.log.wait("pool=rate service=R ")
            assert "pool=grey service=G " in daemon.log.text()


def _greylist_round(port: int, senders: list[str], source: str) -> list[int]:
    """The RCPT reply code of one SMTP session per sender, in parallel."""
    def one(sender: str) -> int:
        return smtp_rcpt(port, sender, "rcpt@dest.example", source=source)[0]

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(one, senders))


@requires_root
def test_postgrey_pool_hashed_on_the_client_network_greylists_a_triplet_once(tmp_path: Path):
    masked_port, unmasked_port, smtpd2 = free_port(), free_port(), free_port()
    with Postgrey(DELAY) as grey1, Postgrey(DELAY) as grey2:
        services = (f"service = GREY1={grey1.spec_address}:10:1:10\n"
                    f"service = GREY2={grey2.spec_address}:10:1:10\n")
        conf = tmp_path / "grey.conf"
        conf.write_text(
            "check-interval = 0\ndefault = DUNNO\nsticky-instance = no\n"
            f"[pool masked]\nlisten = {HOST}:{masked_port}\n{services}"
            "balance = hash:client_address/24,sender,recipient\n"
            f"[pool unmasked]\nlisten = {HOST}:{unmasked_port}\n{services}"
            "balance = hash:client_address,sender,recipient\n")
        # a second smtpd whose policy is the unmasked pool
        second = (f"{HOST}:{smtpd2} inet n - n - - smtpd -o smtpd_recipient_restrictions="
                  f"check_policy_service,inet:{HOST}:{unmasked_port},permit\n")
        with Daemon("-c", str(conf), listen="", workers=2) as daemon, \
                PostfixInstance(tmp_path, policy=f"check_policy_service inet:{HOST}:{masked_port}",
                                master_extra=second) as mx:
            masked = [f"m{i}@sender{i}.example" for i in range(TRIPLETS)]
            unmasked = [f"u{i}@sender{i}.example" for i in range(TRIPLETS)]
            started = time.monotonic()
            first = (_greylist_round(mx.smtpd_port, masked, "127.0.0.1")
                     + _greylist_round(smtpd2, unmasked, "127.0.0.1"))
            assert first == [450] * (2 * TRIPLETS), first  # every new triplet is greylisted
            time.sleep(max(0.0, started + DELAY + 1.0 - time.monotonic()))
            retried = _greylist_round(mx.smtpd_port, masked, "127.0.0.2")
            again = _greylist_round(smtpd2, unmasked, "127.0.0.2")
            passed = retried.count(250)
            greylisted_again = again.count(450)
            print(f"\npostgrey x2, retried from 127.0.0.2 after {DELAY}s: "
                  f"hash:client_address/24,sender,recipient: {passed}/{TRIPLETS} passed; "
                  f"hash:client_address,sender,recipient: {greylisted_again}/{TRIPLETS} "
                  f"({100 * greylisted_again / TRIPLETS:.0f}%) greylisted again")
            assert retried == [250] * TRIPLETS, retried
            # unmasked, a retry from another address is hashed anew: the other postgrey
            # (which never saw the triplet) gets about half of them
            assert 0 < greylisted_again < TRIPLETS, again
            assert set(again) <= {250, 450}
            assert daemon.stop() == 0
