"""What the index costs (write units per indexed event, by ledger's own metering),
and the batch format it is written in."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import (
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
    measure,
    schema,
)
from ledger.dynamodb.batches import FORMAT, ROWS_FORMAT
from ledger.index_rounds import BATCH_EVENTS
from ledger.indexer import Indexer
from tests.indexed_support import indexed_env

EVENTS = 3 * BATCH_EVENTS
"""One round's append: three full batch items, the head and the checkpoints."""
TOPIC = "aggregates.order:Order.OrderPlaced"


@pytest.fixture
def app(dynamodb_endpoint: str, table_prefix: str) -> Iterator[Orders]:
    made = Orders(
        env=indexed_env(dynamodb_endpoint, table_prefix) | {"CREATE_TABLE": "yes"}
    )
    yield made
    made.close()


def random_events(count: int) -> list[StoredEvent]:
    """1-event saves of ~200 B states that do not compress (encrypted ones do not)."""
    draw = random.Random(17)
    return [
        StoredEvent(
            uuid.UUID(int=draw.getrandbits(128), version=4),
            1,
            TOPIC,
            draw.randbytes(200),
        )
        for _ in range(count)
    ]


def placed_orders(app: Orders, count: int) -> list[StoredEvent]:
    """1-event saves of new Orders, as the mapper stores them (~175 B of JSON)."""
    draw = random.Random(17)
    return [
        app.mapper.to_stored_event(
            Order.place(
                uuid.UUID(int=draw.getrandbits(128), version=4), [], "EUR"
            ).collect_events()[0]
        )
        for _ in range(count)
    ]


def index_cost(app: Orders, events: list[StoredEvent]) -> float:
    """Save ``events`` one a save, index them; return write units per event."""
    recorder = app.recorder
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    for event in events:
        recorder.insert_events([event])
    indexer = Indexer(recorder)
    with measure(app) as meter:
        indexer.catch_up()
    assert recorder.max_notification_id() == len(events)
    return meter.estimated_write_units / len(events)


@pytest.mark.parametrize("mix", ["random 200 B states", "new Orders"])
def test_an_index_of_200_byte_events_costs_at_most_half_a_write_unit_per_event(
    app: Orders, mix: str
) -> None:
    events = (
        random_events(EVENTS)
        if mix == "random 200 B states"
        else placed_orders(app, EVENTS)
    )
    assert 170 <= sum(len(e.state) for e in events) / len(events) <= 230

    assert index_cost(app, events) <= 0.5


def test_the_indexer_writes_batches_in_the_format_its_recorder_names(
    app: Orders,
) -> None:
    recorder = app.recorder
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    assert recorder.batch_format == FORMAT
    recorder.insert_events(random_events(1))
    Indexer(recorder).catch_up()
    recorder.batch_format = ROWS_FORMAT
    recorder.insert_events(placed_orders(app, 1))
    Indexer(recorder).catch_up()

    formats = [
        recorder.connection.call(
            "get_item",
            TableName=recorder.notifications_table_name,
            Key={schema.PAGE: {"N": "0"}, schema.POSITION: {"N": str(position)}},
            ConsistentRead=True,
        )["Item"][schema.EVENTS]["B"][0]
        for position in (1, 2)
    ]

    assert formats == [FORMAT, ROWS_FORMAT]
    assert [n.id for n in recorder.select_notifications(1, 10)] == [1, 2]


def test_the_batch_format_written_is_chosen_by_dynamodb_batch_format(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    env = indexed_env(dynamodb_endpoint, table_prefix)
    older_readers = DynamoDBFactory(
        Environment("ledger_test", env | {"DYNAMODB_BATCH_FORMAT": "2"})
    )
    default = DynamoDBFactory(Environment("ledger_test", env))
    try:
        assert older_readers.application_recorder().batch_format == ROWS_FORMAT  # type: ignore[attr-defined]
        assert older_readers.process_recorder().batch_format == ROWS_FORMAT  # type: ignore[attr-defined]
        assert default.application_recorder().batch_format == FORMAT  # type: ignore[attr-defined]
    finally:
        older_readers.close()
        default.close()
    with pytest.raises(OSError, match="DYNAMODB_BATCH_FORMAT 1: use 2 or 3"):
        DynamoDBFactory(
            Environment("ledger_test", env | {"DYNAMODB_BATCH_FORMAT": "1"})
        )
