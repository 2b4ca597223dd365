"""Opening a projection's view to query it: typed reads and a clear refusal."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from eventsourcing.persistence import ProgrammingError

from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.sequence import SequenceFeed
from projections.orders import OrderProjector, OrderSummary

ROOT = Path(__file__).parent.parent

A_TYPED_QUERY = """
from typing import assert_type
from uuid import UUID

from ledger.projections import InMemoryView
from ledger.projections.dynamodb import DynamoDBView, open_view
from projections.orders import OrderProjector, OrderSummary

view = open_view(OrderProjector)
assert_type(view, DynamoDBView)
assert_type(view.read(OrderSummary, UUID(int=1)), OrderSummary | None)
assert_type(open_view(OrderProjector, None, InMemoryView), InMemoryView)
"""


def test_a_view_reads_a_typed_read_model_from_the_active_version(orders, dynamodb_env):
    order_id = orders.place_order(
        uuid.uuid4(), [{"product_id": "tea", "quantity": 2, "price": Decimal(3)}]
    )
    writer = open_view(OrderProjector, dynamodb_env)
    feed = SequenceFeed(OrderProjector(writer, event_loader(orders)), orders)
    while feed.poll():
        pass
    reader = open_view(OrderProjector, dynamodb_env)
    before = reader.read(OrderSummary, order_id)
    orders.confirm(order_id)
    rebuild(orders, OrderProjector, open_view(OrderProjector, dynamodb_env))

    after = reader.read(OrderSummary, order_id)

    assert isinstance(before, OrderSummary)
    assert before.total == Decimal(6)
    assert after is not None
    assert after.status == "confirmed"
    assert reader.table_version == 2
    assert reader.read(OrderSummary, uuid.uuid4()) is None


def test_a_view_without_the_dynamodb_persistence_module_says_what_to_set(
    dynamodb_env, monkeypatch
):
    monkeypatch.delenv("PERSISTENCE_MODULE")

    with pytest.raises(ProgrammingError, match=r"PERSISTENCE_MODULE=ledger\.dynamodb"):
        open_view(OrderProjector)


def test_open_view_and_read_are_typed_for_mypy(tmp_path):
    (tmp_path / "query.py").write_text(A_TYPED_QUERY)
    env = {
        **os.environ,
        "MYPYPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT))),
    }

    done = subprocess.run(  # noqa: S603 - mypy on a file of our own
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(tmp_path / "query.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout
