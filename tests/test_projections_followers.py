"""eventsourcing process applications fed by the events stream (stream ordering)."""

from __future__ import annotations

import random
import time
import uuid
from functools import singledispatchmethod
from typing import Any

import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import ProcessApplication

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import measure
from ledger.feeds import StreamSource, feed_records
from ledger.projections.followers import StreamFollower
from ledger.projections.streams import StreamPoller
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import (
    DEADLINE,
    _aggregate,
    interleave,
    stream_records,
)


class Invoice(Aggregate):
    """One invoice per confirmed order (its id follows from the order's)."""

    @event("Raised")
    def __init__(self, order_id: str) -> None:
        self.order_id = order_id

    @staticmethod
    def create_id(order_id: str) -> uuid.UUID:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"invoice/{order_id}")


class Invoicing(ProcessApplication[uuid.UUID]):
    """Raises an invoice when an order is confirmed."""

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent) -> None:
        """Ignore other events."""

    @policy.register
    def _(
        self, domain_event: Order.OrderConfirmed, processing: ProcessingEvent
    ) -> None:
        processing.collect_events(Invoice(str(domain_event.originator_id)))


def deliver(follower: StreamFollower, records: list[dict[str, Any]]) -> list[str]:
    """Hand records to the follower as one batch, as Lambda would; return those
    not done (every record from the first that failed on)."""
    return feed_records(follower, records, StreamSource.of(follower.leader))


@pytest.fixture
def stream_env(dynamodb_env, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("DYNAMODB_ORDERING", "stream")
    return {**dynamodb_env, "DYNAMODB_ORDERING": "stream"}


@pytest.fixture
def leader(stream_env):
    app = Orders(env=stream_env)
    yield app
    app.close()


@pytest.fixture
def invoicing(stream_env):
    app = Invoicing(env=stream_env)
    yield app
    app.close()


def confirmed_orders(app: Orders, count: int) -> list[uuid.UUID]:
    ids = []
    for _ in range(count):
        order_id = app.place_order(uuid.uuid4(), [ITEM], "EUR")
        app.confirm(order_id)
        ids.append(order_id)
    return ids


def invoices_of(app: Invoicing) -> list[dict[str, Any]]:
    connection = app.factory.connection
    return list(connection.items("scan", TableName=app.recorder.events_table_name))


def test_each_event_is_processed_once_in_any_interleaving_delivered_twice(
    leader, invoicing
):
    order_ids = confirmed_orders(leader, 4)
    follower = StreamFollower(invoicing, leader)
    records = stream_records(leader)
    rng = random.Random(5)

    for delivery in (interleave(records, rng), interleave(records, rng)):
        assert deliver(follower, delivery) == []

    assert len(invoices_of(invoicing)) == len(order_ids)
    for order_id in order_ids:
        invoice = invoicing.repository.get(Invoice.create_id(str(order_id)))
        assert (invoice.order_id, invoice.version) == (str(order_id), 1)


def test_a_redelivered_record_costs_one_read_and_writes_nothing(leader, invoicing):
    confirmed_orders(leader, 1)
    follower = StreamFollower(invoicing, leader)
    records = stream_records(leader)
    deliver(follower, records)

    with measure(invoicing) as meter:
        assert deliver(follower, records[-1:]) == []

    assert meter.round_trips == 1
    assert meter.items_written == 0


def test_a_record_after_a_gap_has_the_missing_events_processed_first(leader, invoicing):
    [order_id] = confirmed_orders(leader, 1)
    follower = StreamFollower(invoicing, leader)
    confirmed = stream_records(leader)[-1]  # version 2; version 1 never delivered

    assert deliver(follower, [confirmed]) == []

    invoice = invoicing.repository.get(Invoice.create_id(str(order_id)))
    assert invoice.order_id == str(order_id)


def test_an_undecodable_record_fails_with_the_later_records_of_its_aggregate(
    leader, invoicing
):
    first, _ = confirmed_orders(leader, 2)
    records = stream_records(leader)
    of_first = [r for r in records if _aggregate(r) == str(first)]
    of_second = [r for r in records if r not in of_first]
    of_first[0]["dynamodb"]["NewImage"]["topic"] = {"S": "nowhere:Nothing"}
    follower = StreamFollower(invoicing, leader)

    failed = deliver(follower, of_first + of_second)

    # From the first failed record on: Lambda delivers the shard from there.
    assert failed == [r["dynamodb"]["SequenceNumber"] for r in of_first + of_second]
    assert len(invoices_of(invoicing)) == 1  # the second order's


def test_the_stream_poller_feeds_a_follower_and_checkpoints_its_shards(
    streamed, leader, invoicing
):
    order_ids = confirmed_orders(leader, 3)
    follower = StreamFollower(invoicing, leader)
    poller = StreamPoller(follower, leader)

    processed, deadline = 0, time.monotonic() + DEADLINE
    while processed < 2 * len(order_ids) and time.monotonic() < deadline:
        processed += poller.poll()

    assert len(invoices_of(invoicing)) == len(order_ids)
    assert poller.poll() == 0  # resumes after its checkpoints


def test_a_lambda_follower_processes_only_its_leaders_records(leader, invoicing):
    confirmed_orders(leader, 1)
    records = stream_records(leader)
    follower = StreamFollower(invoicing, leader)
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-11-29T00:00"
    table = leader.recorder.events_table_name
    forged = [{**r, "eventSourceARN": arn.format("Other_events")} for r in records]
    genuine = [{**r, "eventSourceARN": arn.format(table)} for r in records]

    assert follower.handle({"Records": forged}) == {"batchItemFailures": []}
    assert invoices_of(invoicing) == []
    assert follower.handle({"Records": genuine}) == {"batchItemFailures": []}
    assert len(invoices_of(invoicing)) == 1
