"""Pydantic events and snapshots: immutable, versioned, checked when defined."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import ValidationError

from aggregates.order import Order, OrderState
from ledger.domain import DomainEvent, SchemaVersionError, Snapshot, SnapshotStateError


def test_an_event_is_immutable():
    order = Order.place(uuid4())
    (placed,) = order.collect_events()

    with pytest.raises(ValidationError, match="frozen"):
        placed.currency = "EUR"


def test_an_event_rejects_a_naive_timestamp():
    with pytest.raises(ValidationError, match="timezone"):
        Order.ItemRemoved(
            originator_id=uuid4(),
            originator_version=2,
            timestamp=datetime(2024, 1, 1),
            product_id="apple",
        )


def test_an_event_rejects_unknown_fields():
    with pytest.raises(ValidationError, match="Extra inputs"):
        Order.ItemRemoved(
            originator_id=uuid4(),
            originator_version=2,
            timestamp=datetime.now().astimezone(),
            product_id="apple",
            quantity=1,
        )


def test_a_class_version_above_one_needs_every_upcaster_when_defined():
    with pytest.raises(SchemaVersionError, match="no static method upcast_v2_v3"):

        class Renamed(DomainEvent):
            class_version = 3
            name: str

            @staticmethod
            def upcast_v1_v2(state):
                state["name"] = ""


def test_a_class_version_must_be_a_positive_int():
    with pytest.raises(SchemaVersionError, match="must be an int >= 1"):

        class Renamed(DomainEvent):
            class_version = 0


def test_a_snapshot_class_must_declare_its_own_state_model():
    with pytest.raises(SnapshotStateError, match="must annotate 'state'"):

        class Vague(Snapshot):
            pass


def test_a_snapshot_refuses_to_drop_an_attribute_its_state_model_lacks():
    class NarrowState(OrderState):
        pass

    class Narrow(Snapshot):
        state: NarrowState

    order = Order.place(uuid4())
    order.gift_wrap = True

    with pytest.raises(
        SnapshotStateError, match=r"would lose attributes \['gift_wrap'\]"
    ):
        Narrow.take(order)


def test_a_snapshot_restores_an_equal_aggregate():
    order = Order.place(
        uuid4(), [{"product_id": "a", "quantity": 2, "price": Decimal(1)}]
    )
    order.collect_events()

    assert Order.Snapshot.take(order).mutate(None) == order


def test_a_snapshot_is_not_changed_by_later_commands():
    order = Order.place(
        uuid4(), [{"product_id": "a", "quantity": 2, "price": Decimal(1)}]
    )
    snapshot = Order.Snapshot.take(order)

    order.add_item("b", 1, Decimal(3))

    assert list(snapshot.state.lines) == ["a"]
