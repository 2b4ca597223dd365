"""Idempotent commands: a command repeated with its key is applied once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from eventsourcing.persistence import ProgrammingError

from aggregates.application import Orders
from aggregates.order import DEFAULT_CURRENCY, Order
from ledger.commands import IdempotencyKeyReusedError, command_fingerprint
from ledger.dynamodb import measure
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.idempotency import expired, expiry_cutoff
from tests.test_projections_core import ITEM

ORDERINGS = ["sequence", "stream"]
SOURCES = Path(__file__).parent.parent / "src"


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


# A key means one command ------------------------------------------------------


def test_a_key_reused_for_another_customers_order_is_refused(app):
    alice, bob = uuid.uuid4(), uuid.uuid4()
    alices = app.place_order(alice, [ITEM], idempotency_key="req-1")
    figs = [{"product_id": "fig", "quantity": 3, "price": Decimal(2)}]

    with pytest.raises(IdempotencyKeyReusedError, match=r"'req-1'.*place_order"):
        app.place_order(bob, figs, idempotency_key="req-1")

    assert stored_aggregates(app) == {str(alices)}  # and Bob was told


def test_a_key_reused_for_another_order_or_command_changes_nothing(app):
    first, second = (app.place_order(uuid.uuid4(), [ITEM]) for _ in range(2))
    app.confirm(first, idempotency_key="k")

    with pytest.raises(IdempotencyKeyReusedError, match="confirm"):
        app.confirm(second, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReusedError, match=r"confirm\(\).*add_item"):
        app.add_item(first, "fig", 1, Decimal(1), idempotency_key="k")

    assert app.get_order(second).version == 2  # placed, apple: not confirmed
    assert app.get_order(first).version == 3  # placed, apple, confirmed


def test_a_repeat_with_the_same_arguments_in_another_form_is_the_same_command(app):
    customer = uuid.uuid4()
    line = {"product_id": "apple", "quantity": 2, "price": Decimal("1.50")}
    first = app.place_order(customer, [line], DEFAULT_CURRENCY, idempotency_key="k")

    reordered = dict(reversed(line.items()))
    again = app.place_order(customer, (x for x in [reordered]), idempotency_key="k")

    assert again == first  # key order, a generator, the default currency


def test_a_key_stored_before_fingerprints_answers_any_command_as_before(app):
    order_id = app.place_order(uuid.uuid4(), [ITEM])
    keys = app.recorder.idempotency
    keys.create_table()
    outcome = {"events": [[str(order_id), 1], [str(order_id), 2]], "positions": None}
    app.factory.connection.call(
        "put_item",
        TableName=keys.table_name,
        Item={  # the item as stored before fingerprints: no FINGERPRINT
            store_schema.IDEMPOTENCY_KEY: {"S": "old"},
            store_schema.OUTCOME: {"S": json.dumps(outcome)},
            store_schema.EXPIRES_AT: {"N": str(int(time.time()) + 60)},
        },
    )

    again = app.place_order(uuid.uuid4(), [ITEM], idempotency_key="old")
    app.confirm(order_id, idempotency_key="old")

    assert again == order_id
    assert stored_aggregates(app) == {str(order_id)}
    assert app.get_order(order_id).version == 2  # the confirm was a repeat


def test_a_fingerprint_is_the_same_in_another_process():
    arguments = {
        "customer_id": uuid.UUID(int=7),
        "items": [{"product_id": "tea", "quantity": 1, "price": Decimal("4.50")}],
        "tags": {"gift", "express", "fragile"},  # a set's order depends on the seed
    }
    script = (
        "import uuid, decimal, sys\n"
        "from ledger.commands import command_fingerprint\n"
        "print(command_fingerprint('place_order', {'customer_id': uuid.UUID(int=7),"
        " 'items': [{'price': decimal.Decimal('4.50'), 'quantity': 1,"
        " 'product_id': 'tea'}], 'tags': {'fragile', 'gift', 'express'}}))\n"
    )
    elsewhere = {
        subprocess.run(  # noqa: S603 - our own script, fixed argv
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(SOURCES)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }

    assert elsewhere == {command_fingerprint("place_order", arguments)}
    assert command_fingerprint("place_order", {**arguments, "tags": set()}) not in (
        elsewhere
    )


# Expiry: one definition for the read and the write ---------------------------


class Clock:
    """The time the keys see, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app) -> Clock:
    # Near the real time: DynamoDB Local's TTL sweeper deletes items whose
    # expiry is past by the real clock, which would race the test's reads.
    made = Clock(float(int(time.time())) + 0.25)
    app.recorder.idempotency.clock = made
    return made


def expires_at(app: Orders, key: str) -> int:
    item = app.factory.connection.call(
        "get_item",
        TableName=app.recorder.idempotency.table_name,
        Key={store_schema.IDEMPOTENCY_KEY: {"S": key}},
        ConsistentRead=True,
    )["Item"]
    return int(item[store_schema.EXPIRES_AT]["N"])


@pytest.mark.parametrize("into_the_second", [0.0, 0.5, 0.999])
def test_in_the_second_a_key_expires_at_it_is_live_to_reads_and_writes(
    app, clock, into_the_second
):
    customer = uuid.uuid4()
    order_id = app.place_order(customer, [ITEM], idempotency_key="place")
    app.add_item(order_id, "fig", 1, Decimal(1), idempotency_key="fig")
    clock.now = expires_at(app, "place") + into_the_second

    assert app.first_outcome("place") is not None  # live to the read ...
    again = app.place_order(customer, [ITEM], idempotency_key="place")
    app.add_item(order_id, "fig", 1, Decimal(1), idempotency_key="fig")

    assert again == order_id  # ... and to the write: the first outcome
    assert stored_aggregates(app) == {str(order_id)}
    assert app.get_order(order_id).version == 3  # placed, apple, fig: once


def test_from_the_next_second_a_key_is_free_to_reads_and_writes(app, clock):
    customer = uuid.uuid4()
    first = app.place_order(customer, [ITEM], idempotency_key="place")
    clock.now = expires_at(app, "place") + 1

    assert app.first_outcome("place") is None  # expired to the read ...
    second = app.place_order(customer, [ITEM], idempotency_key="place")

    assert second != first  # ... and to the write: a new command
    assert stored_aggregates(app) == {str(first), str(second)}
    assert app.first_outcome("place").aggregate_ids == [str(second)]


def test_expiry_is_one_definition_with_the_key_live_through_its_second():
    assert not expired(100, 100.0)
    assert not expired(100, 100.999)
    assert expired(100, 101.0)
    assert expiry_cutoff(100.999) == 100
