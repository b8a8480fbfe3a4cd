"""The handover's input checks at their bounds (daemon/handover.py, tables/snapshot.py): a
variable or a document with numbers out of range must be one HandoverError line (exit 2), never
another exception (a traceback); a table word no float holds is skipped, as anything else in the
document that is not as `take` writes it."""

from __future__ import annotations

import pytest

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.daemon.handover import ENVIRONMENT, Handover, HandoverError, write_document
from hapolicy.tables import snapshot
from hapolicy.tables.health import HealthTable

HUGE = 10 ** 400  # json reads it as an int; no C int, long or double holds it


@pytest.mark.parametrize("value", ["\u00b2", str(10 ** 30)])
def test_a_variable_of_digits_that_is_no_descriptor_is_one_line(value):
    # "²".isdigit() is True but int("²") raises ValueError; a huge number OverflowError
    with pytest.raises(HandoverError):
        Handover.from_environ({ENVIRONMENT: value})


@pytest.mark.parametrize("document", [
    {"from": 1, "status": 10 ** 30, "stderr": 2, "sockets": []},
    {"from": 1, "status": 1, "stderr": 2,
     "sockets": [{"fd": 10 ** 30, "role": "listen", "address": "x"}]},
    {"from": 1, "status": 1, "stderr": 2,
     "sockets": [{"fd": -1, "role": "listen", "address": "x"}]},
])
def test_a_document_with_a_descriptor_out_of_range_is_one_line(document):
    with pytest.raises(HandoverError):
        Handover.from_environ({ENVIRONMENT: str(write_document(document))})


@pytest.mark.parametrize("where", ["counters", "slot"])
def test_a_table_word_no_float_holds_is_skipped(where):
    pools = [PoolConfig(services=(parse_service("A=127.0.0.1:1"),), name="grey")]
    tables = {p.name: HealthTable(len(p.services), shared=False) for p in pools}
    document = snapshot.take(pools, tables)
    entry = document["pools"][0] if where == "counters" else document["pools"][0]["services"][0]
    entry[where] = [HUGE] + entry[where][1:]
    fresh = {p.name: HealthTable(len(p.services), shared=False) for p in pools}
    snapshot.restore(document, pools, fresh)  # OverflowError today: a master internal error
