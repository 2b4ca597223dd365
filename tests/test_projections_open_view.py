"""Opening a projection's view to query it: typed reads and a clear refusal."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from eventsourcing.persistence import ProgrammingError

from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.sequence import SequenceFeed
from projections.orders import OrderProjector, OrderSummary


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
