"""One consumer interface for the index and the stream: a consumer is written once.

A consumer of the events table's stream is a consumer of the reader
interface, fed batches (``ledger.feeds.StreamSource``: one shard's records
each, an item's position its record's sequence number). So one class reads
either source: the index through a ``Runner``, the stream through a
``StreamPoller`` (or Lambda). What differs is the position (one per shard,
kept by the consumer's ``shard_checkpoints``) and the order (per aggregate
only). The shard checkpoints are the items the previous release wrote, in
the same layout: a running deployment goes on from them. EventBridge is
moto's server (``tests/test_publisher.py``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aggregates.application import Orders
from ledger.dynamodb import schema as store_schema
from ledger.feeds import (
    Batch,
    IndexSource,
    Progress,
    Raced,
    Runner,
    StreamPoller,
    StreamSource,
    TrackingCheckpoint,
    stream_handler,
)
from ledger.feeds.stream import sequence_number
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.followers import StreamFollower
from ledger.publishing import Publisher
from projections.integration import OrderEvents
from projections.orders import OrderProjector, get_order_summary
from tests import test_projections_followers as follower_tests
from tests import test_publisher as publisher_tests
from tests.test_faults_feeds import lambda_records
from tests.test_feeds import tracking
from tests.test_feeds_stream import Collector, ShardsInMemory, until
from tests.test_projections_core import ITEM
from tests.test_projections_followers import confirmed_orders, invoices_of
from tests.test_publisher import (
    NO_WAITING,
    a_life_of_orders,
    expected_ids,
    ids,
)

__all__ = ["tracking"]  # the fixture, used here by name

DEADLINE = 30.0
EVENTS = 10
"""Events :func:`a_life_of_orders` saves."""

eventbridge_endpoint = publisher_tests.eventbridge_endpoint
bus = publisher_tests.bus
publisher_env = publisher_tests.publisher_env
stream_env = follower_tests.stream_env
leader = follower_tests.leader
invoicing = follower_tests.invoicing


class Noted:
    """A consumer written once: notes each event's aggregate, version and topic.

    Its position in the index is a tracking item; in the stream, one per shard.
    """

    name = "noted"
    topics: tuple[str, ...] = ()
    atomic = False

    def __init__(self, recorder: Any, connection: Any) -> None:
        self.checkpoint = TrackingCheckpoint(recorder, self.name)
        self.shard_checkpoints = ShardsInMemory(connection)
        self.seen: list[tuple[str, int, str]] = []

    def process(self, batch: Batch) -> Progress:
        for item in batch.items:
            notification = item.notification
            self.seen.append(
                (
                    str(notification.originator_id),
                    notification.originator_version,
                    item.topic,
                )
            )
        return Progress(len(batch.items), batch.checkpoint)


def test_a_consumer_written_once_reads_the_same_events_from_the_index_and_the_stream(
    streamed, orders, tracking
):
    a_life_of_orders(orders)
    connection = orders.factory.connection
    on_the_index = Noted(tracking, connection)
    on_the_stream = Noted(tracking, connection)
    poller = StreamPoller(on_the_stream, orders)

    def read_the_stream() -> bool:
        poller.poll()
        return len(on_the_stream.seen) >= EVENTS

    assert Runner(IndexSource(orders), on_the_index).poll() == EVENTS
    until(read_the_stream, "the stream's records")

    assert sorted(on_the_stream.seen) == sorted(on_the_index.seen)
    for aggregate_id in {seen[0] for seen in on_the_stream.seen}:
        versions = [v for a, v, _ in on_the_stream.seen if a == aggregate_id]
        assert versions == sorted(versions)  # in order per aggregate


def test_one_publisher_consumer_publishes_the_index_and_the_stream_alike(
    streamed, orders, publisher_env, bus
):
    order_ids = a_life_of_orders(orders)
    from_the_index = Publisher(
        OrderEvents(), orders, env=publisher_env, retry_delays=NO_WAITING
    )
    from_the_stream = Publisher(
        OrderEvents(), orders, env=publisher_env, retry_delays=NO_WAITING
    )
    runner = from_the_index.runner()
    poller = StreamPoller(from_the_stream, orders)

    assert runner.drain(time.monotonic() + DEADLINE) == EVENTS
    published_from_the_index = ids(bus.received())
    published_from_the_stream: list[str] = []

    def publish_the_stream() -> bool:
        poller.poll()
        published_from_the_stream.extend(ids(bus.received()))
        return len(published_from_the_stream) >= len(published_from_the_index)

    until(publish_the_stream, "the stream's publications")

    # One class, one way of making and sending entries: the same events.
    assert type(runner.consumer) is type(from_the_stream.consumer)
    assert sorted(published_from_the_stream) == sorted(published_from_the_index)
    assert set(published_from_the_index) == expected_ids(order_ids)


# --- checkpoints the previous release wrote ------------------------------------------


def the_stream_holds(app: Orders, count: int) -> list[dict[str, Any]]:
    """Return the stream's records once it shows ``count`` (one shard here)."""
    probe = Collector(app.factory.connection)
    poller = StreamPoller(probe, app)
    records: list[str] = []

    def read() -> bool:
        poller.poll()
        records[:] = probe.seen
        return len(records) >= count

    until(read, f"{count} records in the stream")
    [shard_id] = probe.checkpoints
    return [{"shard": shard_id, "number": number} for number in records]


def raw_item(connection: Any, table: str, key: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = connection.call(
        "get_item", TableName=table, Key=key, ConsistentRead=True
    )["Item"]
    return item


def test_a_publishers_old_shard_checkpoint_is_gone_on_from_and_kept_as_it_was(
    streamed, orders, publisher_env, bus
):
    a_life_of_orders(orders)
    records = the_stream_holds(orders, EVENTS)
    shard_id, old = records[5]["shard"], records[5]["number"]
    publisher = Publisher(
        OrderEvents(), orders, env=publisher_env, retry_delays=NO_WAITING
    )
    connection, table = publisher.connection, publisher.table_name
    key = {"kind": {"S": "shard"}, "key": {"S": shard_id}}
    # As the previous release's Publisher.save_checkpoint put it.
    connection.call(
        "put_item", TableName=table, Item={**key, "sequence_number": {"S": old}}
    )

    poller = StreamPoller(publisher, orders)
    until(lambda: poller.poll() == 0 and publisher.report.records > 0, "a poll")

    assert publisher.report.records == EVENTS - 6  # only the records after it
    assert raw_item(connection, table, key) == {
        **key,
        "sequence_number": {"S": records[-1]["number"]},
    }


def test_a_projections_old_shard_checkpoint_is_gone_on_from_and_kept_as_it_was(
    streamed, orders, dynamodb_env
):
    first = orders.place_order(uuid.uuid4(), [ITEM])
    second = orders.place_order(uuid.uuid4(), [ITEM])
    records = the_stream_holds(orders, 4)
    shard_id, old = records[1]["shard"], records[1]["number"]
    view = open_view(OrderProjector, dynamodb_env)
    connection, table = view.connection, view.control.table_name
    key = {"name": {"S": f"shard#{shard_id}"}}
    # As the previous release's ControlTable.save_shard_checkpoint put it.
    connection.call(
        "put_item", TableName=table, Item={**key, "sequence_number": {"S": old}}
    )

    poller = StreamPoller(OrderProjector(view, event_loader(orders)), orders)

    def projected() -> bool:
        poller.poll()
        return get_order_summary(view, second) is not None

    until(projected, "the second order")

    assert get_order_summary(view, first) is None  # before the checkpoint
    assert raw_item(connection, table, key) == {
        **key,
        "sequence_number": {"S": records[-1]["number"]},
    }
    assert poller.poll() == 0


def test_a_followers_old_shard_checkpoint_is_gone_on_from_and_kept_as_it_was(
    streamed, leader, invoicing
):
    confirmed_orders(leader, 2)  # three records each
    records = the_stream_holds(leader, 6)
    shard_id, old = records[2]["shard"], records[2]["number"]
    follower = StreamFollower(invoicing, leader)
    connection = invoicing.recorder.connection
    table = invoicing.recorder.tracking_table_name
    key = {
        store_schema.APPLICATION_NAME: {"S": f"{leader.name}#stream-shard#{shard_id}"}
    }
    # As the previous release's StreamFollower.save_checkpoint put it.
    connection.call(
        "put_item", TableName=table, Item={**key, "sequence_number": {"S": old}}
    )

    poller = StreamPoller(follower, leader)

    def invoiced() -> bool:
        poller.poll()
        return len(invoices_of(invoicing)) == 1

    until(invoiced, "the second order's invoice")

    assert poller.poll() == 0
    assert len(invoices_of(invoicing)) == 1  # the first order's was before it
    assert raw_item(connection, table, key) == {
        **key,
        "sequence_number": {"S": records[-1]["number"]},
    }


# --- positions are the records' sequence numbers --------------------------------------


def test_a_stream_batchs_positions_are_its_records_sequence_numbers_as_integers(
    orders,
):
    orders.place_order(uuid.uuid4(), [ITEM])
    source = StreamSource.of(orders)
    # DynamoDB Local pads to 21 digits; AWS's grow longer: compare as integers.
    records = [
        _record(orders, "000000000000000000009"),
        _record(orders, "10"),
        _record(orders, "4421584500000000017450439091"),
    ]

    batch = source.batch(records)

    assert [item.position for item in batch.items] == [
        9,
        10,
        4421584500000000017450439091,
    ]
    assert [item.sequence_number for item in batch.items] == [
        sequence_number(record) for record in records
    ]
    assert (batch.after, batch.checkpoint) == (8, 4421584500000000017450439091)


def _record(app: Orders, number: str) -> dict[str, Any]:
    from tests.test_projections_dynamodb import stream_records  # noqa: PLC0415

    record = stream_records(app)[0]
    return {**record, "dynamodb": {**record["dynamodb"], "SequenceNumber": number}}


# --- a consumer that raced -----------------------------------------------------------


class RacesOnce(Collector):
    """A stream consumer whose first batch meets another writer (it raises Raced)."""

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        self.raced = False

    def process(self, batch: Batch) -> Progress:
        if not self.raced:
            self.raced = True
            raise Raced
        return super().process(batch)


def test_a_stream_consumer_that_raced_is_handed_its_records_again_in_full(
    streamed, orders
):
    orders.place_order(uuid.uuid4(), [ITEM])
    [first, second] = the_stream_holds(orders, 2)
    consumer = RacesOnce(orders.factory.connection)
    poller = StreamPoller(consumer, orders)

    assert poller.poll() == 0  # raced: nothing checkpointed
    assert consumer.checkpoints == {}
    assert poller.poll() == 2

    assert consumer.seen == [first["number"], second["number"]]
    assert consumer.checkpoints == {first["shard"]: second["number"]}


def test_a_lambda_batch_whose_consumer_raced_reports_every_record(orders):
    orders.place_order(uuid.uuid4(), [ITEM])
    records = lambda_records(orders)
    consumer = RacesOnce(orders.factory.connection)
    handler = stream_handler(lambda: (consumer, orders))

    response = handler({"Records": records}, None)

    assert response == {
        "batchItemFailures": [{"itemIdentifier": sequence_number(r)} for r in records]
    }
    assert handler({"Records": records}, None) == {"batchItemFailures": []}
