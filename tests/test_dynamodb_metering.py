"""Metering: round trips and capacity units, reported and estimated."""

from __future__ import annotations

import threading
import time
import uuid

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from ledger.dynamodb import (
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    connection_of,
    measure,
)
from ledger.dynamodb.limits import item_size, number_size, read_units, write_units


def test_item_size_follows_dynamodb_rules() -> None:
    item = {
        "aggregate_id": {"S": "abc"},  # 12 + 3
        "version": {"N": "12345"},  # 7 + (5 digits -> 3) + 1
        "state": {"B": b"\x00" * 10},  # 5 + 10
        "events": {"L": [{"S": "x"}, {"N": "1"}]},  # 6 + 3 + (1+1) + (1+2)
    }
    assert item_size(item) == 15 + 11 + 15 + 14


def test_numbers_count_a_byte_per_two_significant_digits_plus_one() -> None:
    assert number_size("0") == 2
    assert number_size("100") == 2  # trailing zeros are trimmed
    assert number_size("-12.345") == 4


def test_capacity_units_round_up_per_kilobyte_and_double_in_transactions() -> None:
    assert write_units(1) == 1
    assert write_units(1025) == 2
    assert write_units(1025, transactional=True) == 4
    assert read_units(4096) == 1
    assert read_units(4097) == 2


def test_put_of_a_ten_kilobyte_snapshot_costs_ten_write_units(
    factory: DynamoDBFactory,
) -> None:
    snapshots = factory.aggregate_recorder("snapshots")
    snapshot = StoredEvent(uuid.uuid4(), 1, "tests:Snapshot", b"x" * 10_000)

    with measure(factory) as meter:
        snapshots.insert_events([snapshot])

    assert meter.round_trips == 1
    assert meter.calls == {"PutItem": 1}
    assert meter.items_written == 1
    assert meter.estimated_write_units == 10
    assert meter.write_units == 10  # as DynamoDB reported it


def test_read_units_reported_match_the_estimate(factory: DynamoDBFactory) -> None:
    recorder = factory.application_recorder()
    aggregate_id = uuid.uuid4()
    recorder.insert_events(
        [
            StoredEvent(aggregate_id, v, "tests:Happened", b"y" * 500)
            for v in range(1, 41)
        ]
    )

    with measure(factory) as meter:
        events = recorder.select_events(aggregate_id)

    assert len(events) == 40
    assert meter.bytes_read > 40 * 500
    assert meter.read_units == meter.estimated_read_units == 6


def test_a_save_writes_its_events_one_batch_item_and_the_sequence_item(
    factory: DynamoDBFactory,
) -> None:
    recorder = factory.application_recorder()
    aggregate_id = uuid.uuid4()
    events = [StoredEvent(aggregate_id, v, "tests:Happened", b"z") for v in (1, 2, 3)]

    with measure(factory) as meter:
        recorder.insert_events(events)

    assert meter.calls == {"TransactWriteItems": 1}
    assert meter.items_written == 3 + 1 + 1


def test_a_batch_write_counts_its_puts_and_deletes(factory: DynamoDBFactory) -> None:
    factory.aggregate_recorder("snapshots")
    table = factory.table_name("snapshots")
    key = {"aggregate_id": {"S": str(uuid.uuid4())}, "version": {"N": "1"}}
    other = {"aggregate_id": {"S": str(uuid.uuid4())}, "version": {"N": "1"}}

    with measure(factory) as meter:
        connection_of(factory).call(
            "batch_write_item",
            RequestItems={
                table: [
                    {"PutRequest": {"Item": {**key, "state": {"B": b"s"}}}},
                    {"DeleteRequest": {"Key": other}},
                ]
            },
        )

    assert meter.calls == {"BatchWriteItem": 1}
    assert meter.items_written == 2


def test_meter_counts_only_inside_its_block(factory: DynamoDBFactory) -> None:
    recorder = factory.application_recorder()
    recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "t", b"")])
    with measure(factory) as meter:
        pass
    recorder.max_notification_id()
    assert meter.round_trips == 0


def test_subscription_sees_saves_of_another_process_by_polling(
    factory: DynamoDBFactory, dynamodb_endpoint: str, table_prefix: str
) -> None:
    reader = factory.application_recorder()
    other_process = DynamoDBFactory(
        Environment(
            "ledger_test",
            {
                "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                "DYNAMODB_TABLE_PREFIX": table_prefix,
            },
        )
    ).application_recorder()
    assert isinstance(reader, DynamoDBApplicationRecorder)
    received: list[int] = []
    done = threading.Event()

    def consume() -> None:
        with reader.subscribe(gt=None) as subscription:
            for notification in subscription:
                received.append(notification.id)
                if len(received) == 3:
                    done.set()
                    return

    consumer = threading.Thread(target=consume)
    consumer.start()
    for _ in range(3):
        other_process.insert_events([StoredEvent(uuid.uuid4(), 1, "t", b"")])
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        done.wait(0.05)
    consumer.join(timeout=5)
    assert received == [1, 2, 3]


def test_reading_ten_notifications_reads_at_most_two_batches_of_98(
    factory: DynamoDBFactory,
) -> None:
    recorder = factory.application_recorder()
    saves = 5
    for _ in range(saves):  # positions 1-98, 99-196, ... 393-490
        aggregate_id = uuid.uuid4()
        recorder.insert_events(
            [
                StoredEvent(aggregate_id, v, "tests:Happened", b"{}")
                for v in range(1, 99)
            ]
        )
    with measure(factory) as sequence_item:
        factory.application_recorder().max_notification_id()
    whole_reader = factory.application_recorder()  # knows no position yet
    with measure(factory) as whole:
        whole_reader.select_notifications(start=None, limit=saves * 98)
    batch_bytes = (whole.bytes_read - sequence_item.bytes_read) / saves

    for start in (1, 95, 200, 481):
        reader = factory.application_recorder()  # as in another process
        with measure(factory) as meter:
            notifications = reader.select_notifications(start=start, limit=10)

        assert [n.id for n in notifications] == list(range(start, start + 10))
        assert meter.calls == {"GetItem": 1, "Query": 1}
        # Fewer than three batches' bytes: two batches and the answer's own
        # envelope, which the whole read shares among five (its batches are
        # small, compressed, so the envelope is not negligible beside two).
        assert meter.bytes_read - sequence_item.bytes_read < 3 * batch_bytes
        assert meter.estimated_read_units <= 1 + read_units(int(2 * batch_bytes))


def test_positions_a_recorder_saw_committed_are_read_without_the_sequence_item(
    factory: DynamoDBFactory,
) -> None:
    writer = factory.application_recorder()
    aggregate_id = uuid.uuid4()
    writer.insert_events(
        [StoredEvent(aggregate_id, v, "tests:Happened", b"{}") for v in range(1, 21)]
    )
    reader = factory.application_recorder()

    with measure(factory) as first:
        reader.select_notifications(start=1, limit=10)
    with measure(factory) as second:
        notifications = reader.select_notifications(start=11, limit=10)
    with measure(factory) as by_writer:
        writer.select_notifications(start=1, limit=10)
    with measure(factory) as past_what_was_seen:
        reader.select_notifications(start=21, limit=10)

    assert [n.id for n in notifications] == list(range(11, 21))
    assert first.calls == {"GetItem": 1, "Query": 1}
    assert second.calls == {}  # the first read's Query answer held their batch
    assert by_writer.calls == {"Query": 1}
    assert past_what_was_seen.calls == {"GetItem": 1}


def test_capacity_is_asked_for_and_counted_only_while_a_meter_is_open(
    factory: DynamoDBFactory,
) -> None:
    recorder = factory.application_recorder()
    aggregate_id = uuid.uuid4()
    recorder.insert_events([StoredEvent(aggregate_id, 1, "tests:Happened", b"y")])
    client = connection_of(factory).client
    bodies: list[bytes] = []
    client.meta.events.register(
        "before-call.dynamodb",
        lambda params, **_: bodies.append(params["body"]),
    )
    total = connection_of(factory).total
    read_before = total.estimated_read_units

    recorder.select_events(aggregate_id)
    with measure(factory) as meter:
        recorder.select_events(aggregate_id)

    asked = [b'"ReturnConsumedCapacity"' in body for body in bodies]
    assert asked == [False, True]
    assert (meter.round_trips, meter.read_units, meter.estimated_read_units) == (
        1,
        1,
        1,
    )
    # The total counts every call, and the capacity of the measured one only.
    assert total.calls["Query"] == 2
    assert total.estimated_read_units - read_before == 1
