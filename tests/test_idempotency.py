"""Idempotent commands: a command repeated with its key is applied once."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import pytest
from eventsourcing.persistence import ProgrammingError

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import measure
from ledger.dynamodb import schema as store_schema
from tests.test_projections_core import ITEM

ORDERINGS = ["sequence", "stream"]


@pytest.fixture(params=ORDERINGS)
def app(request, dynamodb_env):
    made = Orders(env={**dynamodb_env, "DYNAMODB_ORDERING": request.param})
    yield made
    made.close()


def stored_aggregates(app: Orders) -> set[str]:
    connection = app.factory.connection
    items = connection.items("scan", TableName=app.recorder.events_table_name)
    return {item[store_schema.AGGREGATE_ID]["S"] for item in items}


def test_placing_an_order_twice_with_one_key_places_it_once(app):
    customer = uuid.uuid4()

    first = app.place_order(customer, [ITEM], idempotency_key="req-1")
    with measure(app) as meter:
        again = app.place_order(customer, [ITEM], idempotency_key="req-1")

    assert again == first
    assert stored_aggregates(app) == {str(first)}
    assert meter.items_written == 0
    assert meter.calls == {"GetItem": 1}  # the key, read first


def test_a_repeated_change_is_applied_once_and_not_refused(app):
    order_id = app.place_order(uuid.uuid4(), [ITEM])
    app.add_item(order_id, "fig", 1, Decimal(1), idempotency_key="fig-1")
    app.confirm(order_id, idempotency_key="confirm-1")

    app.add_item(order_id, "fig", 1, Decimal(1), idempotency_key="fig-1")
    app.confirm(order_id, idempotency_key="confirm-1")  # not "already confirmed"

    order = app.get_order(order_id)
    assert order.version == 4  # placed, apple, fig, confirmed: each once
    assert order.lines["fig"].quantity == 1


def test_a_save_racing_on_a_used_key_writes_nothing_and_gets_the_first_outcome(app):
    first = Order.place(uuid.uuid4(), [ITEM], "EUR")
    second = Order.place(uuid.uuid4(), [ITEM], "EUR")
    assert app.save_once(first, idempotency_key="k") is None

    outcome = app.save_once(second, idempotency_key="k")  # skipped the read

    assert outcome is not None
    assert outcome.aggregate_ids == [str(first.id)]
    assert [v for _, v in outcome.events] == [1, 2]
    assert (outcome.positions is None) == (app.factory.ordering == "stream")
    assert stored_aggregates(app) == {str(first.id)}
    assert app.save(second, idempotency_key="k") == []


def test_a_key_and_its_events_are_written_together_or_not_at_all(app):
    order_id = app.place_order(uuid.uuid4(), [ITEM])
    stale = app.get_order(order_id)
    app.confirm(order_id)  # another writer takes version 3
    stale.confirm()

    with pytest.raises(Exception, match="already has version 3"):
        app.save(stale, idempotency_key="late")

    assert app.first_outcome("late") is None


def test_an_expired_key_can_be_used_again(app):
    keys = app.recorder.idempotency
    keys.create_table()
    app.factory.connection.call(
        "put_item",
        TableName=keys.table_name,
        Item={
            store_schema.IDEMPOTENCY_KEY: {"S": "old"},
            store_schema.OUTCOME: {"S": json.dumps({"events": [], "positions": None})},
            store_schema.EXPIRES_AT: {"N": str(int(time.time()) - 10)},
        },
    )

    order_id = app.place_order(uuid.uuid4(), [ITEM], idempotency_key="old")

    assert stored_aggregates(app) == {str(order_id)}
    first = app.first_outcome("old")
    assert first is not None
    assert first.aggregate_ids == [str(order_id)]


@pytest.mark.parametrize("key", ["", "x" * 1025])
def test_an_unusable_key_is_refused_before_anything_is_written(app, key):
    with pytest.raises(ValueError, match="Invalid idempotency key"):
        app.save(Order.place(uuid.uuid4(), [ITEM], "EUR"), idempotency_key=key)

    assert stored_aggregates(app) == set()


def test_keys_need_the_dynamodb_store():
    app = Orders(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})

    with pytest.raises(ProgrammingError, match=r"PERSISTENCE_MODULE=ledger\.dynamodb"):
        app.place_order(uuid.uuid4(), [ITEM], idempotency_key="k")


def test_the_key_table_is_made_at_the_first_use_of_a_key(app):
    connection = app.factory.connection
    table = app.recorder.idempotency.table_name
    with pytest.raises(ProgrammingError):
        connection.call("describe_table", TableName=table)

    app.place_order(uuid.uuid4(), [ITEM], idempotency_key="first")

    described = connection.call("describe_table", TableName=table)["Table"]
    assert described["TableStatus"] == "ACTIVE"
