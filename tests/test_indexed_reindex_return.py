"""The indexer's shards without a checkpoint, after a re-index pass or in running.

The stream must hold every record written since the pass began that the
index lacks, until the indexer has read it or holds a checkpoint whose
loss DynamoDB Streams refuses as trimmed. A shard without a checkpoint is
read from its TRIM_HORIZON, which is never refused: in steady running too,
only the time a round last found such shards empty tells a stopped
indexer that records may have come and expired unread. DynamoDB Local can neither age a
stream, split a shard, nor make hours pass: the indexer gets a clock that
jumps, ``TrimmedStreams`` (tests/indexed_support.py) expires records, and
``SplitStreams`` (tests/test_indexed_guarantees.py) shows the table's one
shard as a closed parent and its child.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from eventsourcing.persistence import StoredEvent

from ledger.dynamodb import DynamoDBIndexedApplicationRecorder, schema
from ledger.indexer import Indexer
from tests import indexed_support
from tests.indexed_support import (
    TrimmedStreams,
    checkpoints_item,
    index_until,
    stored,
)
from tests.test_indexed_guarantees import (
    SplitStreams,
    assert_indexed_once_in_order,
    random_saves,
    stream_numbers,
)
from tests.test_indexed_reindex import every_event, expire_once_written

factory = indexed_support.factory
recorder = indexed_support.recorder


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


def scans(recorder: DynamoDBIndexedApplicationRecorder) -> int:
    """Scans of the events table the recorder's connection has made so far."""
    return recorder.connection.total.calls.get("Scan", 0)


def writes(recorder: DynamoDBIndexedApplicationRecorder) -> int:
    """Transactions the recorder's connection has made so far."""
    return recorder.connection.total.calls.get("TransactWriteItems", 0)


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


def idle_after_a_pass(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> tuple[list[list[StoredEvent]], TrimmedStreams, Clock, Indexer]:
    """Save, expire the whole stream, and re-index: the stream holds nothing after."""
    saves = random_saves(recorder, 8, seed=22)
    streams = TrimmedStreams(recorder.connection.streams_client())
    clock = Clock()
    indexer = Indexer(recorder, streams_client=streams, clock=clock)
    expire_once_written(streams, indexer.stream_arn, every_event(saves))
    indexer.reindex(timeout=60)
    return saves, streams, clock, indexer


def test_an_idle_stream_after_a_pass_is_not_scanned_again_every_day(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """The indexer runs on for two days after a pass; no record arrives.

    Each round reads the shard (which has no checkpoint) to its tip and
    finds nothing, so nothing written to it can have been trimmed unread:
    the 24 hours count from the latest such round (written hourly), and
    no second pass scans the events table. The first record read gives the
    shard a checkpoint, and the pass is forgotten.
    """
    saves, _streams, clock, indexer = idle_after_a_pass(recorder)
    scans_after_the_pass = scans(recorder)
    scanned_by: dict[int, int] = {}
    for hour in range(50):
        clock.hours = hour
        indexer.poll()
        scanned_by[hour] = scans(recorder) - scans_after_the_pass
    idle = indexer.status()
    idle_item = checkpoints_item(recorder)
    later = random_saves(recorder, 2, seed=23)
    index_until(indexer, recorder, every_event(later))

    assert (scanned_by[25], scanned_by[49]) == (0, 0)
    assert (idle.reindexing, idle.reindex_pass) == (False, 1)
    assert schema.REINDEX_CAUGHT_UP in idle_item
    assert indexer.status().reindex_pass == 0
    assert schema.REINDEX_STARTED not in checkpoints_item(recorder)
    assert_indexed_once_in_order(recorder, saves + later)


def test_an_indexer_stopped_a_day_on_an_idle_stream_after_a_pass_scans_again(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """Idle for 10 hours after a pass, then stopped; saves come, and 26 hours go by.

    The stream looks idle again when the indexer is back (the saves'
    records expired), but it was not read meanwhile: another pass.
    """
    saves, streams, clock, indexer = idle_after_a_pass(recorder)
    for hour in range(11):
        clock.hours = hour
        indexer.poll()
    later = random_saves(recorder, 4, seed=24)
    expire_once_written(streams, indexer.stream_arn, every_event(saves + later))
    clock.hours = 36.0

    index_until(indexer, recorder, every_event(later), timeout=30.0)

    assert indexer.status().reindex_pass == 2
    assert_indexed_once_in_order(recorder, saves + later)


def test_a_child_waiting_for_its_checkpointed_parent_calls_for_no_second_pass(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """A backlog the indexer is still reading when the pass's 24 hours run out.

    The closed parent holds more records than a round reads: checkpointed
    short of its end, it keeps its child (read after it) waiting. The
    child's records are younger than the parent's unread ones, whose loss
    would show as a trimmed refusal, so the child holds no second pass.
    """
    aggregate = uuid.uuid4()
    before = [[stored(aggregate, version)] for version in range(1, 151)]
    for save in before:
        recorder.insert_events(save)
    clock = Clock()
    split = SplitStreams(recorder.connection.streams_client(), split=0)
    indexer = Indexer(recorder, batch_size=100, streams_client=split, clock=clock)
    indexer.reindex(timeout=60)  # pass 1
    after = random_saves(recorder, 4, seed=25)
    numbers = numbers_once_in_the_stream(recorder, every_event(before + after))
    split.split = numbers[str(aggregate), 150]  # the saves after the pass: the child
    scans_after_the_pass = scans(recorder)
    clock.hours = 23.0
    indexer.poll()  # 100 records of the parent
    parent_only = indexer._read_state().checkpoints

    clock.hours = 23.95  # past the pass's start plus 24 hours less 10 minutes
    index_until(indexer, recorder, every_event(after))
    indexer.catch_up()

    assert list(parent_only) == [split.parent]
    assert int(parent_only[split.parent]) < split.split
    assert scans(recorder) == scans_after_the_pass
    assert indexer.status().reindex_pass == 0
    assert_indexed_once_in_order(recorder, before + after)


def indexed_with_an_empty_child(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> tuple[list[list[StoredEvent]], TrimmedStreams, Clock, Indexer]:
    """Index saves in steady running, the stream's shard split right after them.

    The closed parent ends at the saves' last record; its child, read in the
    same round, is empty, so it gets no checkpoint. No re-index runs.
    """
    before = random_saves(recorder, 6, seed=31)
    numbers = numbers_once_in_the_stream(recorder, every_event(before))
    last = max(
        numbers[str(e.originator_id), e.originator_version] for e in every_event(before)
    )
    split = SplitStreams(recorder.connection.streams_client(), split=last)
    streams = TrimmedStreams(split)
    clock = Clock()
    indexer = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(indexer, recorder, every_event(before))
    assert list(indexer._read_state().checkpoints) == [split.parent]
    assert schema.REINDEXED_AT not in checkpoints_item(recorder)  # a young stream
    return before, streams, clock, indexer


def test_saves_expired_unread_from_a_shard_without_a_checkpoint_are_reindexed(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """An empty child shard, then the indexer stops for 25 hours; saves go into it.

    Their records expire before the indexer is back. The child is read from
    its TRIM_HORIZON, which is never refused, and looks empty: only the time
    a round last found it empty (a day before) says records may have come
    and gone, so the events table is re-indexed.
    """
    before, streams, clock, indexer = indexed_with_an_empty_child(recorder)
    after = random_saves(recorder, 5, seed=32)
    clock.hours = 25.0
    expire_once_written(streams, indexer.stream_arn, every_event(before + after))

    back = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(back, recorder, every_event(after), timeout=30.0)

    assert back.status().reindex_pass == 1
    assert_indexed_once_in_order(recorder, before + after)


def test_an_indexer_running_on_an_idle_stream_with_an_empty_shard_never_scans(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """Rounds every 20 minutes for 49 hours; the empty child never gets a checkpoint.

    Each round finds the child empty to its tip, and the time of that is
    written once an hour (the rounds commit nothing else): no re-index.
    """
    before, _streams, clock, indexer = indexed_with_an_empty_child(recorder)
    scans_before, writes_before = scans(recorder), writes(recorder)
    for third in range(3 * 49 + 1):
        clock.hours = third / 3
        indexer.poll()
    idle_scans = scans(recorder) - scans_before
    idle_writes = writes(recorder) - writes_before
    later = random_saves(recorder, 3, seed=33)
    index_until(indexer, recorder, every_event(later))

    assert idle_scans == 0
    assert 0 < idle_writes <= 49
    assert indexer.status().reindex_pass == 0
    assert_indexed_once_in_order(recorder, before + later)


def test_an_indexer_stopped_ten_hours_reads_a_shard_without_a_checkpoint(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """Stopped 10 hours while saves go into the empty child: well within the 24.

    The stream still holds their records: the indexer back reads them, and
    scans nothing.
    """
    before, streams, clock, _indexer = indexed_with_an_empty_child(recorder)
    scans_before = scans(recorder)
    after = random_saves(recorder, 5, seed=34)
    clock.hours = 10.0

    back = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(back, recorder, every_event(after))

    assert scans(recorder) == scans_before
    assert back.status().reindex_pass == 0
    assert_indexed_once_in_order(recorder, before + after)


def split_holding_a_save(
    recorder: DynamoDBIndexedApplicationRecorder, seed: int
) -> tuple[
    list[list[StoredEvent]], list[list[StoredEvent]], SplitStreams, TrimmedStreams
]:
    """Random saves, then a save of one event and a save of two; return them
    (before, after) with the streams that show the table's shard split after
    the one-event save and hold the two-event save back in the child (its
    second event withheld from every read until ``alter`` is reset).
    """
    before = random_saves(recorder, 4, seed=seed)
    single, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    after = [[stored(single, 1)], [stored(first, 1), stored(second, 1)]]
    for save in after:
        recorder.insert_events(save)
    split = SplitStreams(recorder.connection.streams_client(), split=0)
    split.split = numbers_once_in_the_stream(recorder, every_event(after))[
        str(single), 1
    ]
    streams = TrimmedStreams(split)

    def withhold_second(records: list[Any]) -> list[Any]:
        return [
            r
            for r in records
            if r["dynamodb"]["Keys"][schema.AGGREGATE_ID]["S"] != str(second)
        ]

    streams.alter = withhold_second
    return before, after, split, streams


def test_a_first_commit_with_a_shard_holding_a_save_keeps_the_streams_start(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """A first run on a young stream: no re-index, and no round finds the child empty.

    The first commit checkpoints the closed parent while the child holds a
    save back (one of its records has not arrived), then the indexer stops
    for 25 hours and the save's records expire. The stream held every record
    since it was enabled: that time, kept with the first commit, calls for
    a re-index when the indexer is back.
    """
    before, after, split, streams = split_holding_a_save(recorder, seed=35)
    clock = Clock()
    indexer = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(indexer, recorder, every_event(before) + after[0])
    first_commit = checkpoints_item(recorder)
    clock.hours = 25.0
    expire_once_written(streams, indexer.stream_arn, every_event(before + after))

    back = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(back, recorder, after[1], timeout=30.0)

    assert list(first_commit[schema.SHARD_CHECKPOINTS]["M"]) == [split.parent]
    assert schema.REINDEXED_AT not in first_commit  # a young stream: no re-index
    assert schema.REINDEX_CAUGHT_UP in first_commit
    assert back.status().reindex_pass == 1
    assert_indexed_once_in_order(recorder, before + after)


def test_a_running_indexer_whose_unguarded_shard_holds_a_save_for_a_day_reindexes(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    before, after, _, streams = split_holding_a_save(recorder, seed=41)
    clock = Clock()
    indexer = Indexer(recorder, streams_client=streams, clock=clock)
    index_until(indexer, recorder, every_event(before) + after[0])
    for quarter in range(4 * 26):  # running: a round every 15 minutes for 26 hours
        clock.hours = quarter / 4
        indexer.poll()
    expire_once_written(streams, indexer.stream_arn, every_event(before + after))
    streams.alter = lambda records: records

    index_until(indexer, recorder, after[1], timeout=20.0)

    assert_indexed_once_in_order(recorder, before + after)
