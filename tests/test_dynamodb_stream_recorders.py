"""``DYNAMODB_ORDERING=stream``: saves without an application sequence."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.utils import Environment, get_topic

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import (
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    DynamoDBProcessRecorder,
    DynamoDBStreamApplicationRecorder,
    DynamoDBStreamProcessRecorder,
    SequenceDisabledError,
    TransactionTooLargeError,
    aggregate_tracking,
    measure,
)
from ledger.dynamodb.limits import MAX_TRANSACTION_ACTIONS


@pytest.fixture
def stream_factory(
    dynamodb_endpoint: str, table_prefix: str
) -> Iterator[DynamoDBFactory]:
    """A factory in stream ordering for application ``ledger_test``, fresh tables."""
    made = DynamoDBFactory(
        Environment(
            "ledger_test",
            {
                "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                "DYNAMODB_TABLE_PREFIX": table_prefix,
                "DYNAMODB_ORDERING": "stream",
                "DYNAMODB_EVENTS_STREAM": "no",  # faster on DynamoDB Local
            },
        )
    )
    yield made
    made.close()


@pytest.fixture
def recorder(stream_factory: DynamoDBFactory) -> DynamoDBStreamApplicationRecorder:
    made = stream_factory.application_recorder()
    assert isinstance(made, DynamoDBStreamApplicationRecorder)
    return made


@pytest.fixture
def process_recorder(
    stream_factory: DynamoDBFactory,
) -> DynamoDBStreamProcessRecorder:
    made = stream_factory.process_recorder()
    assert isinstance(made, DynamoDBStreamProcessRecorder)
    return made


def stored(aggregate_id: uuid.UUID, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(aggregate_id, version, "tests:Happened", state)


def table_names(factory: DynamoDBFactory) -> set[str]:
    """The tables of this test (its prefix), out of every table on the server."""
    names: list[str] = []
    params: dict[str, str] = {}
    while True:
        response = factory.connection.call("list_tables", **params)
        names += response["TableNames"]
        if "LastEvaluatedTableName" not in response:
            return {name for name in names if name.startswith(factory.table_prefix)}
        params["ExclusiveStartTableName"] = response["LastEvaluatedTableName"]


# The setting ---------------------------------------------------------------------


def test_ordering_is_sequence_unless_set(factory: DynamoDBFactory) -> None:
    assert factory.ordering == "sequence"
    assert isinstance(factory.application_recorder(), DynamoDBApplicationRecorder)
    assert isinstance(factory.process_recorder(), DynamoDBProcessRecorder)


def test_ordering_set_for_one_application_by_its_name_prefix(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    env = {
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
        "ORDERS_DYNAMODB_ORDERING": "stream",
    }

    orders = DynamoDBFactory(Environment("orders", env))
    others = DynamoDBFactory(Environment("others", env))

    assert (orders.ordering, others.ordering) == ("stream", "sequence")
    orders.close()
    others.close()


def test_ordering_setting_must_be_sequence_or_stream(dynamodb_endpoint: str) -> None:
    with pytest.raises(
        OSError, match=r"DYNAMODB_ORDERING 'total'.*'sequence'.*or 'stream'"
    ):
        DynamoDBFactory(
            Environment(
                "bad",
                {
                    "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                    "DYNAMODB_ORDERING": "total",
                },
            )
        )


def test_each_application_recorder_says_its_ordering() -> None:
    assert DynamoDBApplicationRecorder.ordering == "sequence"
    assert DynamoDBProcessRecorder.ordering == "sequence"
    assert DynamoDBStreamApplicationRecorder.ordering == "stream"
    assert DynamoDBStreamProcessRecorder.ordering == "stream"


def test_a_recorder_topic_of_the_other_ordering_is_refused(
    stream_factory: DynamoDBFactory,
) -> None:
    stream_factory.env["APPLICATION_RECORDER_TOPIC"] = get_topic(
        DynamoDBApplicationRecorder
    )

    with pytest.raises(
        OSError, match=r"not a DynamoDBStreamApplicationRecorder.*ORDERING=stream"
    ):
        stream_factory.application_recorder()


def test_only_the_events_table_is_created(
    recorder: DynamoDBStreamApplicationRecorder, stream_factory: DynamoDBFactory
) -> None:
    assert table_names(stream_factory) == {stream_factory.table_name("events")}


# Writing -----------------------------------------------------------------------


def test_one_event_save_is_one_put_item_of_one_write_unit(
    recorder: DynamoDBStreamApplicationRecorder,
) -> None:
    with measure(recorder) as meter:
        result = recorder.insert_events([stored(uuid.uuid4(), 1)])

    assert result is None
    assert meter.round_trips == 1
    assert meter.calls == {"PutItem": 1}
    assert meter.estimated_write_units == 1


def test_ten_event_save_is_one_transaction_of_the_events_only(
    recorder: DynamoDBStreamApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()

    with measure(recorder) as meter:
        recorder.insert_events([stored(aggregate_id, v) for v in range(1, 11)])

    assert meter.round_trips == 1
    assert meter.calls == {"TransactWriteItems": 1}
    assert meter.items_written == 10
    assert meter.estimated_write_units == 20
    assert len(recorder.select_events(aggregate_id)) == 10


def test_a_save_may_hold_as_many_events_as_a_transaction_has_actions(
    recorder: DynamoDBStreamApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    events = [stored(aggregate_id, v) for v in range(1, MAX_TRANSACTION_ACTIONS + 2)]

    with pytest.raises(TransactionTooLargeError, match="101 writes"):
        recorder.insert_events(events)
    recorder.insert_events(events[:MAX_TRANSACTION_ACTIONS])

    assert len(recorder.select_events(aggregate_id)) == MAX_TRANSACTION_ACTIONS


def test_second_writer_of_same_version_conflicts_and_nothing_is_overwritten(
    recorder: DynamoDBStreamApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    recorder.insert_events([stored(aggregate_id, 1, b"first")])

    with pytest.raises(IntegrityError, match=f"{aggregate_id} already has version 1"):
        recorder.insert_events([stored(aggregate_id, 1, b"second")])

    events = recorder.select_events(aggregate_id)
    assert [(e.originator_version, e.state) for e in events] == [(1, b"first")]


def test_save_of_two_aggregates_where_one_conflicts_writes_nothing(
    recorder: DynamoDBStreamApplicationRecorder,
) -> None:
    clean_id, taken_id = uuid.uuid4(), uuid.uuid4()
    recorder.insert_events([stored(taken_id, 1)])

    with pytest.raises(IntegrityError, match=f"{taken_id} already has version 1"):
        recorder.insert_events([stored(clean_id, 1), stored(taken_id, 1)])

    assert recorder.select_events(clean_id) == []


# The sequence is off ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("read", "name"),
    [
        (lambda r: r.select_notifications(start=None, limit=10), "select_notif"),
        (lambda r: r.max_notification_id(), "max_notification_id"),
        (lambda r: r.subscribe(gt=None), "subscribe"),
    ],
)
def test_reading_the_sequence_says_it_is_off_and_names_the_stream(
    recorder: DynamoDBStreamApplicationRecorder, read, name: str
) -> None:
    with pytest.raises(SequenceDisabledError) as raised:
        read(recorder)

    message = str(raised.value)
    assert name in message
    assert "DYNAMODB_ORDERING=stream" in message
    assert "ledger.projections.streams" in message
    assert "--feed stream" in message
    assert "ledger projections rebuild" in message


# Per-aggregate tracking ---------------------------------------------------------------


def test_aggregate_tracking_is_keyed_by_application_and_aggregate() -> None:
    aggregate_id = uuid.uuid4()

    tracking = aggregate_tracking("orders", aggregate_id, 7)

    assert tracking == Tracking(f"orders#{aggregate_id}", 7)


def test_tracking_records_the_last_version_processed_per_aggregate(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    process_recorder.insert_events([], tracking=aggregate_tracking("orders", first, 1))
    process_recorder.insert_events([], tracking=aggregate_tracking("orders", first, 2))
    process_recorder.insert_events([], tracking=aggregate_tracking("orders", second, 5))

    assert process_recorder.max_tracking_id(f"orders#{first}") == 2
    assert process_recorder.max_tracking_id(f"orders#{second}") == 5
    assert process_recorder.max_tracking_id(f"orders#{uuid.uuid4()}") is None


def test_tracking_with_one_event_is_one_transaction_of_two_actions(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    upstream = aggregate_tracking("orders", uuid.uuid4(), 1)

    with measure(process_recorder) as meter:
        process_recorder.insert_events([stored(uuid.uuid4(), 1)], tracking=upstream)

    assert meter.round_trips == 1
    assert meter.calls == {"TransactWriteItems": 1}
    assert meter.items_written == 2
    assert process_recorder.max_tracking_id(upstream.application_name) == 1


def test_tracking_alone_is_one_update(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    with measure(process_recorder) as meter:
        process_recorder.insert_events(
            [], tracking=aggregate_tracking("orders", uuid.uuid4(), 1)
        )

    assert meter.calls == {"UpdateItem": 1}


def test_a_repeated_delivery_is_refused_and_writes_nothing(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    upstream = aggregate_tracking("orders", uuid.uuid4(), 3)
    process_recorder.insert_events([stored(uuid.uuid4(), 1)], tracking=upstream)
    downstream_id = uuid.uuid4()

    with pytest.raises(IntegrityError, match="processed before"):
        process_recorder.insert_events([stored(downstream_id, 1)], tracking=upstream)

    assert process_recorder.select_events(downstream_id) == []
    assert process_recorder.max_tracking_id(upstream.application_name) == 3


def test_an_earlier_version_delivered_late_is_refused(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    upstream_id = uuid.uuid4()
    process_recorder.insert_events(
        [], tracking=aggregate_tracking("orders", upstream_id, 3)
    )

    with pytest.raises(IntegrityError, match="processed before"):
        process_recorder.insert_events(
            [], tracking=aggregate_tracking("orders", upstream_id, 2)
        )

    assert process_recorder.max_tracking_id(f"orders#{upstream_id}") == 3


def test_a_conflicting_event_leaves_the_tracking_unwritten(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    downstream_id = uuid.uuid4()
    process_recorder.insert_events([stored(downstream_id, 1, b"first")])
    upstream = aggregate_tracking("orders", uuid.uuid4(), 1)

    with pytest.raises(IntegrityError, match="already has version 1"):
        process_recorder.insert_events(
            [stored(downstream_id, 1, b"second")], tracking=upstream
        )

    assert process_recorder.max_tracking_id(upstream.application_name) is None
    assert [e.state for e in process_recorder.select_events(downstream_id)] == [
        b"first"
    ]


def test_the_tracking_counts_towards_the_transaction_limit(
    process_recorder: DynamoDBStreamProcessRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    upstream = aggregate_tracking("orders", uuid.uuid4(), 1)
    events = [stored(aggregate_id, v) for v in range(1, MAX_TRANSACTION_ACTIONS + 1)]

    with pytest.raises(TransactionTooLargeError, match="101 writes"):
        process_recorder.insert_events(events, tracking=upstream)
    process_recorder.insert_events(events[:-1], tracking=upstream)

    assert len(process_recorder.select_events(aggregate_id)) == 99
    assert process_recorder.max_tracking_id(upstream.application_name) == 1


def test_the_process_recorder_creates_events_and_tracking_tables_only(
    process_recorder: DynamoDBStreamProcessRecorder, stream_factory: DynamoDBFactory
) -> None:
    assert table_names(stream_factory) == {
        stream_factory.table_name("events"),
        stream_factory.table_name("tracking"),
    }


# Applications ------------------------------------------------------------------------


def test_placing_an_order_is_one_put_and_records_no_notifications(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNAMODB_ORDERING", "stream")
    orders = Orders()
    order = Order.place(uuid.uuid4(), [])

    with measure(orders) as meter:
        recordings = orders.save(order)

    assert recordings == []
    assert meter.calls == {"PutItem": 1}
    assert orders.recorder.ordering == "stream"
    with pytest.raises(SequenceDisabledError):
        orders.notification_log.select(start=1, limit=10)
