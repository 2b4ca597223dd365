"""The indexer back on the stream after a re-index pass: when the pass is forgotten.

The stream must hold every record written since the pass began that the
index lacks, until the indexer has read it or holds a checkpoint whose
loss DynamoDB Streams refuses as trimmed. DynamoDB Local can neither age a
stream, split a shard, nor make hours pass: the indexer gets a clock that
jumps, ``TrimmedStreams`` (tests/indexed_support.py) expires records, and
``SplitStreams`` (tests/test_indexed_guarantees.py) shows the table's one
shard as a closed parent and its child.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.dynamodb import DynamoDBFactory, DynamoDBIndexedApplicationRecorder, schema
from ledger.indexer import Indexer
from tests.indexed_support import (
    TrimmedStreams,
    index_until,
    indexed_factory,
    stored,
)
from tests.test_indexed_guarantees import (
    SplitStreams,
    assert_indexed_once_in_order,
    random_saves,
    stream_numbers,
)
from tests.test_indexed_reindex import every_event, expire_once_written


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


class Clock:
    """The indexer's clock: this host's, ``hours`` ahead."""

    def __init__(self) -> None:
        self.hours = 0.0

    def __call__(self) -> float:
        return time.time() + self.hours * 3600


def numbers_once_in_the_stream(
    recorder: DynamoDBIndexedApplicationRecorder, saved: list[StoredEvent]
) -> dict[Any, int]:
    """Return the stream's sequence numbers, once it holds a record of each saved.

    The stream gets a save's records a moment after the save: poll for them.
    """
    deadline = time.monotonic() + 20
    while True:
        numbers = stream_numbers(recorder)
        if all((str(e.originator_id), e.originator_version) in numbers for e in saved):
            return numbers
        assert time.monotonic() < deadline, "the stream lacks a record of a save"


def test_a_pass_is_kept_while_a_child_shard_without_a_checkpoint_holds_a_save(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """A save made after a pass, in a child shard read from its TRIM_HORIZON.

    Back on the stream, the closed parent is read to its end and
    checkpointed, while the child holds the save back (one of its records
    has not arrived). The indexer stops; 25 hours later the stream has
    expired the save's records. A child without a checkpoint is read from
    its TRIM_HORIZON, which is never refused: only the pass, still
    remembered, says the stream may lack what the index lacks.
    """
    before = random_saves(recorder, 6, seed=21)
    split = SplitStreams(recorder.connection.streams_client(), split=0)
    streams = TrimmedStreams(split)
    clock = Clock()
    indexer = Indexer(recorder, streams_client=streams, clock=clock)
    indexer.reindex(timeout=60)  # pass 1
    single, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    after = [[stored(single, 1)], [stored(first, 1), stored(second, 1)]]
    for save in after:
        recorder.insert_events(save)
    split.split = numbers_once_in_the_stream(recorder, every_event(after))[
        str(single), 1
    ]  # the parent ends at the single event; the save of two is in the child

    def withhold_second(records: list[Any]) -> list[Any]:
        return [
            r
            for r in records
            if r["dynamodb"]["Keys"][schema.AGGREGATE_ID]["S"] != str(second)
        ]

    streams.alter = withhold_second
    index_until(indexer, recorder, after[0])  # the parent, to its end
    checkpoints = indexer._read_state().checkpoints
    assert checkpoints == {split.parent: str(split.split)}  # the child: none
    kept = indexer.status().reindex_pass
    clock.hours = 25.0
    expire_once_written(streams, indexer.stream_arn, every_event(before + after))

    back = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(back, recorder, after[1], timeout=30.0)

    assert kept == 1
    assert back.status().reindex_pass == 2
    assert_indexed_once_in_order(recorder, before + after)
