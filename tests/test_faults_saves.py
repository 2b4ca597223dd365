"""Saves through a faulty network: what the caller sees, and nothing lost or doubled.

A fault-injecting proxy (``tests/faults.py``) sits between ledger and
DynamoDB Local and loses DynamoDB's answers, or cuts connections, at chosen
requests. Each test says what the caller sees and checks the table.
"""

from __future__ import annotations

import uuid

import pytest
from eventsourcing.persistence import OperationalError
from faults import CUT, LOSE_RESPONSE, SERVER_ERROR, FaultProxy

from aggregates.application import Orders
from ledger.dynamodb import AmbiguousWriteError
from ledger.dynamodb import schema as store_schema
from tests.test_projections_core import ITEM

ATTEMPTS = 3
"""DYNAMODB_MAX_ATTEMPTS here: every request is tried at most this often."""
ORDERINGS = ["sequence", "stream"]
WRITES = {"PutItem", "TransactWriteItems"}


@pytest.fixture
def proxy(dynamodb_endpoint):
    with FaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture(params=ORDERINGS)
def app(request, dynamodb_env, proxy):
    env = {
        **dynamodb_env,
        "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
        "DYNAMODB_ORDERING": request.param,
        "DYNAMODB_MAX_ATTEMPTS": str(ATTEMPTS),
    }
    made = Orders(env=env)
    made.place_order(uuid.uuid4(), [ITEM])  # tables made, connections warm
    yield made
    made.close()


def orders_stored(app: Orders) -> dict[str, int]:
    """Events per aggregate in the events table."""
    connection = app.factory.connection
    counts: dict[str, int] = {}
    for item in connection.items("scan", TableName=app.recorder.events_table_name):
        aggregate_id = item[store_schema.AGGREGATE_ID]["S"]
        counts[aggregate_id] = counts.get(aggregate_id, 0) + 1
    return counts


def write_of(app: Orders) -> str:
    """The request a 1-event save (an order with no items) sends."""
    return "PutItem" if app.factory.ordering == "stream" else "TransactWriteItems"


def is_write(operation: str, index: int, body: bytes) -> bool:
    return operation in WRITES


def sent(proxy: FaultProxy, operations: set[str], since: int) -> int:
    """How many of these requests went through the proxy after the first ``since``."""
    return sum(1 for name, _ in proxy.requests[since:] if name in operations)


def test_an_answer_lost_once_is_retried_and_the_save_applied_once(app, proxy):
    before = orders_stored(app)
    since = len(proxy.requests)
    proxy.on(write_of(app), fault=LOSE_RESPONSE)

    order_id = app.place_order(uuid.uuid4(), [])  # the caller sees success

    assert sent(proxy, {write_of(app)}, since) == 2  # applied, lost, sent again
    assert orders_stored(app) == {**before, str(order_id): 1}
    assert app.get_order(order_id).version == 1
    if app.factory.ordering == "sequence":
        assert app.recorder.max_notification_id() == sum(orders_stored(app).values())


def test_answers_lost_on_every_attempt_are_ambiguous_and_the_key_makes_it_once(
    app, proxy
):
    before = orders_stored(app)
    customer = uuid.uuid4()
    proxy.on(is_write, fault=LOSE_RESPONSE, times=None)

    with pytest.raises(AmbiguousWriteError, match="may have been applied"):
        app.place_order(customer, [ITEM], idempotency_key="request-7")
    proxy.clear_rules()  # the network heals
    order_id = app.place_order(customer, [ITEM], idempotency_key="request-7")

    assert orders_stored(app) == {**before, str(order_id): 2}  # placed, item
    assert app.get_order(order_id).customer_id == customer


def test_without_a_key_the_caller_cannot_tell_and_a_retry_applies_it_again(app, proxy):
    before = orders_stored(app)
    proxy.on(is_write, fault=LOSE_RESPONSE, times=None)

    with pytest.raises(AmbiguousWriteError):
        app.place_order(uuid.uuid4(), [ITEM])
    proxy.clear_rules()
    app.place_order(uuid.uuid4(), [ITEM])

    assert len(orders_stored(app)) == len(before) + 2  # what keys are for


def test_connections_cut_before_sending_write_nothing_and_a_keyed_retry_applies(
    app, proxy
):
    before = orders_stored(app)
    since = len(proxy.requests)
    proxy.on(is_write, fault=CUT, times=None)

    with pytest.raises(OperationalError):
        app.place_order(uuid.uuid4(), [ITEM], idempotency_key="request-8")
    assert orders_stored(app) == before
    assert sent(proxy, WRITES, since) == ATTEMPTS
    proxy.clear_rules()

    order_id = app.place_order(uuid.uuid4(), [ITEM], idempotency_key="request-8")

    assert orders_stored(app) == {**before, str(order_id): 2}


def test_an_answer_lost_before_the_last_attempt_still_makes_the_failure_ambiguous(
    app, proxy
):
    before = orders_stored(app)
    proxy.on(is_write, fault=LOSE_RESPONSE)  # the first attempt: applied, lost
    proxy.on(is_write, fault=SERVER_ERROR, times=None)  # then DynamoDB fails

    with pytest.raises(AmbiguousWriteError, match="may have been applied"):
        app.place_order(uuid.uuid4(), [ITEM])

    assert len(orders_stored(app)) == len(before) + 1  # it was
