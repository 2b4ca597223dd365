"""``DYNAMODB_ORDERING=indexed``: saves as ``stream``; the indexer appends them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
from ledger.indexer import Indexer
from tests.indexed_support import (
    all_notifications,
    index_until,
    indexed_factory,
    stored,
)


@pytest.fixture
def factory(dynamodb_endpoint: str, table_prefix: str) -> Iterator[DynamoDBFactory]:
    made = indexed_factory(dynamodb_endpoint, table_prefix)
    yield made
    made.close()


@pytest.fixture
def recorder(factory: DynamoDBFactory) -> DynamoDBIndexedApplicationRecorder:
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBIndexedApplicationRecorder)
    return made


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
