"""The Orders application, on every backend: commands, replay and schema history.

On DynamoDB each test runs in both orderings (``DYNAMODB_ORDERING``): none of
them reads the application sequence, so none depends on it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given
from orders_support import make_orders

from aggregates.order import Order, OrderError, OrderStatus
from aggregates.strategies import order_scripts, rejected_commands
from ledger.testing import replay


@pytest.fixture(
    name="orders_env",
    params=["popo", "dynamodb-sequence", "dynamodb-stream"],
)
def orders_env_fixture(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The ``env`` of an Orders application: in memory, then each DynamoDB ordering."""
    if request.param == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    ordering = request.param.removeprefix("dynamodb-")
    monkeypatch.setenv("DYNAMODB_ORDERING", ordering)
    env: dict[str, str] = request.getfixturevalue("dynamodb_env")
    return {**env, "DYNAMODB_ORDERING": ordering}


def test_place_order_returns_the_id_of_the_placed_order(orders_env):
    customer_id = uuid4()
    with make_orders(orders_env) as orders:
        order_id = orders.place_order(
            customer_id,
            [{"product_id": "apple", "quantity": 2, "price": Decimal("2.50")}],
        )

        order = orders.get_order(order_id)

    assert (order.id, order.customer_id, order.currency) == (
        order_id,
        customer_id,
        "USD",
    )


def test_get_order_shows_the_order_as_commands_left_it(orders_env):
    with make_orders(orders_env) as orders:
        order_id = orders.place_order(uuid4(), [], currency="EUR")
        orders.add_item(order_id, "apple", 2, Decimal("2.50"))
        orders.add_item(order_id, "fig", 1, Decimal("0.99"))
        orders.remove_item(order_id, "apple")
        orders.confirm(order_id)
        orders.ship(order_id, "TN123")

        order = orders.get_order(order_id)

    assert order.status is OrderStatus.SHIPPED
    assert list(order.lines) == ["fig"]
    assert order.total == Decimal("0.99")
    assert (order.currency, order.tracking_number, order.cancel_reason) == (
        "EUR",
        "TN123",
        None,
    )
    assert order.version == 6


def test_cancel_records_the_reason(orders_env):
    with make_orders(orders_env) as orders:
        order_id = orders.place_order(uuid4(), [])
        orders.cancel(order_id, "changed my mind")

        order = orders.get_order(order_id)

    assert (order.status, order.cancel_reason) == (
        OrderStatus.CANCELLED,
        "changed my mind",
    )


@given(script=order_scripts())
def test_state_rebuilt_from_stored_events_equals_the_live_state(orders_env, script):
    live = script.build()
    with make_orders(orders_env) as orders:
        orders.save(live)

        rebuilt = orders.get_order(live.id)

    assert rebuilt == live


@given(script=order_scripts())
def test_commands_through_the_application_match_the_same_commands_in_memory(
    orders_env, script
):
    with make_orders(orders_env) as orders:
        order_id = script.run(orders)
        stored = list(orders.events.get(order_id))

    in_memory = script.build()
    assert [type(e) for e in stored] == [type(e) for e in in_memory.collect_events()]
    assert replay(stored).total == in_memory.total


@given(case=rejected_commands())
def test_a_rejected_command_appends_nothing(orders_env, case):
    script, command = case
    with make_orders(orders_env) as orders:
        order_id = script.run(orders)
        before = orders.recorder.select_events(order_id)

        with pytest.raises(OrderError):
            command.run(orders, order_id)

        assert orders.recorder.select_events(order_id) == before


def as_v1(stored: StoredEvent) -> StoredEvent:
    """The same OrderPlaced as version 1 wrote it: no currency, no class_version."""
    state = json.loads(stored.state)
    assert state.pop("class_version") == 2
    assert state.pop("currency") == "USD"
    return replace(stored, state=json.dumps(state).encode())


def without_id(order: Order) -> dict[str, object]:
    return {name: value for name, value in vars(order).items() if name != "_id"}


@given(script=order_scripts())
def test_a_history_stored_by_v1_replays_like_the_v2_history(orders_env, script):
    script = replace(script, currency="USD")
    with make_orders(orders_env) as orders:
        v2_id = script.run(orders)
        v2_history = orders.recorder.select_events(v2_id)
        v1_id = uuid4()
        orders.recorder.insert_events(
            [
                replace(stored, originator_id=v1_id)
                for stored in [as_v1(v2_history[0]), *v2_history[1:]]
            ]
        )

        from_v1, from_v2 = orders.get_order(v1_id), orders.get_order(v2_id)

    assert without_id(from_v1) == without_id(from_v2)
