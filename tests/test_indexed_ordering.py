"""``DYNAMODB_ORDERING=indexed``: saves as ``stream``; the indexer appends them."""

from __future__ import annotations

import threading
import uuid

import pytest
from eventsourcing.utils import Environment

from ledger.dynamodb import (
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
    DynamoDBIndexedProcessRecorder,
    IndexWaitTimeoutError,
    measure,
    schema,
)
from ledger.dynamodb.batches import BatchEntry, batch_item
from ledger.dynamodb.limits import MAX_ITEM_BYTES, ItemTooLargeError, item_size
from ledger.indexer import BATCH_EVENTS, Indexer
from tests import indexed_support
from tests.faults import REFUSE, FaultProxy
from tests.indexed_support import (
    all_notifications,
    index_until,
    indexed_env,
    indexed_factory,
    indexed_recorder,
    stored,
)
from tests.test_notification_pages import write_notifications

factory = indexed_support.factory
recorder = indexed_support.recorder


@pytest.fixture
def indexer(recorder: DynamoDBIndexedApplicationRecorder) -> Indexer:
    return Indexer(recorder)


def test_factory_makes_indexed_recorders(factory: DynamoDBFactory) -> None:
    assert factory.ordering == "indexed"
    assert isinstance(factory.process_recorder(), DynamoDBIndexedProcessRecorder)


def test_indexed_needs_the_events_stream(dynamodb_endpoint: str) -> None:
    with pytest.raises(OSError, match="needs the events table's DynamoDB stream"):
        DynamoDBFactory(
            Environment(
                "ledger_test",
                {
                    "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                    "DYNAMODB_ORDERING": "indexed",
                    "DYNAMODB_EVENTS_STREAM": "no",
                },
            )
        )


def test_one_event_save_is_one_put_with_no_save_marks(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    recorder.insert_events([stored(uuid.uuid4(), 1)])  # its first: reads the head
    aggregate = uuid.uuid4()
    with measure(recorder) as meter:
        assert recorder.insert_events([stored(aggregate, 1)]) is None
    assert meter.round_trips == 1
    item = recorder.connection.call(
        "get_item",
        TableName=recorder.events_table_name,
        Key={schema.AGGREGATE_ID: {"S": str(aggregate)}, schema.VERSION: {"N": "1"}},
    )["Item"]
    assert set(item) == {
        schema.AGGREGATE_ID,
        schema.VERSION,
        schema.TOPIC,
        schema.STATE,
    }


def test_multi_event_save_marks_each_event_with_its_save(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    recorder.insert_events([stored(first, 1), stored(second, 1), stored(first, 2)])
    marks = []
    for aggregate, version in ((first, 1), (second, 1), (first, 2)):
        item = recorder.connection.call(
            "get_item",
            TableName=recorder.events_table_name,
            Key={
                schema.AGGREGATE_ID: {"S": str(aggregate)},
                schema.VERSION: {"N": str(version)},
            },
        )["Item"]
        marks.append(
            (
                item[schema.SAVE_ID]["S"],
                item[schema.SAVE_INDEX]["N"],
                item[schema.SAVE_SIZE]["N"],
            )
        )
    assert len({save_id for save_id, _, _ in marks}) == 1
    assert [(index, size) for _, index, size in marks] == [
        ("0", "3"),
        ("1", "3"),
        ("2", "3"),
    ]


def test_an_event_its_save_marks_take_over_the_item_limit_is_refused_before_sending(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    aggregate = uuid.uuid4()
    unmarked = {
        schema.AGGREGATE_ID: {"S": str(aggregate)},
        schema.VERSION: {"N": "1"},
        schema.TOPIC: {"S": "tests:Happened"},
        schema.STATE: {"B": b""},
    }
    # 10 bytes under DynamoDB's limit alone; over it with the save's marks.
    state = b"x" * (MAX_ITEM_BYTES - item_size(unmarked) - 10)

    with measure(recorder) as meter, pytest.raises(ItemTooLargeError) as refused:
        recorder.insert_events([stored(aggregate, 1, state), stored(aggregate, 2)])

    assert "save marks" in str(refused.value)
    assert "TransactWriteItems" not in meter.calls  # refused before sending
    assert recorder.select_events(aggregate) == []


def test_indexer_appends_saves_to_the_sequence(
    recorder: DynamoDBIndexedApplicationRecorder, indexer: Indexer
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    saves = [
        [stored(first, 1)],
        [stored(first, 2), stored(second, 1)],
        [stored(second, 2)],
    ]
    for save in saves:
        recorder.insert_events(save)
    positions = index_until(indexer, recorder, [e for s in saves for e in s])
    assert sorted(positions.values()) == [1, 2, 3, 4]
    assert recorder.max_notification_id() == 4
    found = [
        (n.originator_id, n.originator_version) for n in all_notifications(recorder)
    ]
    assert found == [(first, 1), (first, 2), (second, 1), (second, 2)]


def test_wait_indexed_names_what_is_missing(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    aggregate = uuid.uuid4()
    recorder.insert_events([stored(aggregate, 1)])
    with pytest.raises(IndexWaitTimeoutError, match=f"{aggregate} v1"):
        recorder.wait_indexed([stored(aggregate, 1)], timeout=0.2)


# Read-your-writes from a cold start ----------------------------------------------

INDEXED_BEFORE = 10_000
"""Positions the index holds before a new recorder's save: ten pages."""


def fill_index(recorder: DynamoDBIndexedApplicationRecorder, positions: int) -> None:
    """Write an index of ``positions`` events, as an indexer would have.

    Straight into the notifications table (batches of ``BATCH_EVENTS`` events
    and the head item): indexing that many events through the stream would
    take most of a minute, and only the index's size matters here.
    """
    items = []
    for first in range(1, positions + 1, BATCH_EVENTS):
        aggregate_id = str(uuid.uuid4())
        entries = [
            BatchEntry(aggregate_id, version, "tests:Happened", b"{}")
            for version in range(1, min(BATCH_EVENTS, positions - first + 1) + 1)
        ]
        items.append(batch_item(first, entries, schema.PAGE_SIZE))
    write_notifications(recorder, items, positions, schema.PAGE_SIZE)


@pytest.fixture
def cold(
    factory: DynamoDBFactory, recorder: DynamoDBIndexedApplicationRecorder
) -> DynamoDBIndexedApplicationRecorder:
    """A recorder new to an index of ``INDEXED_BEFORE`` events, as after a cold
    start: it has read nothing yet."""
    fill_index(recorder, INDEXED_BEFORE)
    return indexed_recorder(factory)


def test_a_recorder_reads_the_index_head_once_before_its_first_save(
    factory: DynamoDBFactory,
) -> None:
    cold = indexed_recorder(factory)  # as after a cold start: it has read nothing

    with measure(cold) as meter:
        for version in (1, 2, 3):
            cold.insert_events([stored(uuid.uuid4(), version)])

    assert meter.calls == {"GetItem": 1, "PutItem": 3}


def test_a_new_recorder_waits_for_its_save_in_a_few_calls_whatever_the_index_size(
    indexer: Indexer, cold: DynamoDBIndexedApplicationRecorder
) -> None:
    aggregate = uuid.uuid4()

    with measure(cold) as saving:
        cold.insert_events([stored(aggregate, 1)])
    # Indexed between the save and the wait's first read of the head.
    indexer.catch_up()
    with measure(cold) as waiting:
        positions = cold.wait_indexed([stored(aggregate, 1)], timeout=10)

    assert positions == {(str(aggregate), 1): INDEXED_BEFORE + 1}
    assert waiting.calls == {"GetItem": 1, "Query": 1}
    assert saving.calls == {"GetItem": 1, "PutItem": 1}


def test_a_new_recorder_finds_its_save_indexed_while_it_waits(
    indexer: Indexer, cold: DynamoDBIndexedApplicationRecorder
) -> None:
    aggregate = uuid.uuid4()
    cold.insert_events([stored(aggregate, 1)])
    with pytest.raises(IndexWaitTimeoutError):
        cold.wait_indexed([stored(aggregate, 1)], timeout=0)
    indexing = threading.Thread(target=indexer.catch_up)

    with measure(cold) as waiting:
        indexing.start()
        positions = cold.wait_indexed([stored(aggregate, 1)], timeout=30)
    indexing.join()

    assert positions == {(str(aggregate), 1): INDEXED_BEFORE + 1}
    assert waiting.calls["Query"] == 1


@pytest.mark.parametrize(
    "refusal", ["ProvisionedThroughputExceededException", "AccessDeniedException"]
)
def test_a_save_goes_on_when_the_index_head_cannot_be_read(
    dynamodb_endpoint: str, table_prefix: str, refusal: str
) -> None:
    env = indexed_env(dynamodb_endpoint, table_prefix)
    direct = indexed_factory(dynamodb_endpoint, table_prefix)  # makes the tables
    with FaultProxy(dynamodb_endpoint) as proxy:
        proxied = DynamoDBFactory(
            Environment(
                "ledger_test",
                env
                | {
                    "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
                    "DYNAMODB_MAX_ATTEMPTS": "1",
                },
            )
        )
        cold = indexed_recorder(proxied)
        proxy.on("GetItem", fault=REFUSE(refusal), times=None)
        aggregate = uuid.uuid4()

        cold.insert_events([stored(aggregate, 1)])
        cold.insert_events([stored(aggregate, 2)])

        proxy.clear_rules()
        assert [e.originator_version for e in cold.select_events(aggregate)] == [1, 2]
        # Tried once: the second save paid no read of the head.
        assert [op for op, _ in proxy.requests].count("GetItem") == 1
        proxied.close()
    direct.close()
