"""The indexer's work per event: what a round does once, and what it skips."""

from __future__ import annotations

import datetime
import gc
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import KeysView, Sequence
from contextlib import closing
from typing import Any

import pytest

from ledger import indexer as indexer_module
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder
from ledger.dynamodb.batches import BatchEntry
from ledger.index_rounds import _Record
from ledger.indexer import Indexer, freeze_start_up
from tests import indexed_support
from tests.indexed_support import counting_encodes, index_until, stored

factory = indexed_support.factory
recorder = indexed_support.recorder


def test_a_round_encodes_each_batch_item_once(
    recorder: DynamoDBIndexedApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = [stored(uuid.uuid4(), 1) for _ in range(150)]  # two batch items
    for event in saved:
        recorder.insert_events([event])
    encoded = counting_encodes(monkeypatch)

    index_until(Indexer(recorder), recorder, saved)

    assert len(encoded) >= 2
    assert len(encoded) == len(set(encoded))  # fitted once, written as fitted


def test_the_indexer_reads_stream_timestamps_in_utc(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    indexer = Indexer(recorder)
    shard_id = indexer._shards()[0]["ShardId"]
    iterator = indexer.client.get_shard_iterator(
        StreamArn=indexer.stream_arn,
        ShardId=shard_id,
        ShardIteratorType="TRIM_HORIZON",
    )["ShardIterator"]

    records = records_read(indexer, iterator)

    created = records[0]["dynamodb"]["ApproximateCreationDateTime"]
    assert created.tzinfo is datetime.UTC
    assert abs(created.timestamp() - time.time()) < 300


def records_read(indexer: Indexer, iterator: str) -> Sequence[Any]:
    """Return the first records of a shard (they may reach its stream a little late)."""
    deadline = time.monotonic() + 20
    while True:
        answer = indexer.client.get_records(ShardIterator=iterator)
        if answer["Records"]:
            records: Sequence[Any] = answer["Records"]
            return records
        assert time.monotonic() < deadline, "no stream record within 20 s"
        iterator = answer["NextShardIterator"]


class _UncopiedVersions(OrderedDict[str, int]):
    """Versions remembered by an indexer, refusing to be copied whole."""

    def keys(self) -> KeysView[str]:
        raise AssertionError("the remembered versions were copied")


def test_a_round_checks_versions_without_copying_those_remembered(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    aggregate = uuid.uuid4()
    indexer = Indexer(recorder)
    index_until(indexer, recorder, [recorder_save(recorder, aggregate, 1)])
    indexer._last_versions = _UncopiedVersions(indexer._last_versions)

    index_until(indexer, recorder, [recorder_save(recorder, aggregate, 2)])

    assert indexer._last_versions[str(aggregate)] == 2


def recorder_save(
    recorder: DynamoDBIndexedApplicationRecorder, aggregate: uuid.UUID, version: int
) -> Any:
    event = stored(aggregate, version)
    recorder.insert_events([event])
    return event


def test_records_of_a_round_are_told_apart_by_identity() -> None:
    entry = BatchEntry("a", 1, "t", b"state")
    first = _Record("shard", 1, "1", entry, None)
    same_fields = _Record("shard", 1, "1", entry, None)

    assert len({first, same_fields}) == 2
    assert first in {first}


READERS = pytest.mark.parametrize("readers", [0, 1], ids=["in-process", "a-reader"])
"""Read in the indexer's process, and by a reader process given the round's budget."""


def saves_of_100(
    recorder: DynamoDBIndexedApplicationRecorder, count: int, state: bytes = b"{}"
) -> list[Any]:
    """Save ``count`` saves of 100 events (one aggregate each); return the events."""
    events = []
    for _ in range(count):
        aggregate = uuid.uuid4()
        save = [stored(aggregate, version, state) for version in range(1, 101)]
        recorder.insert_events(save)
        events += save
    return events


def on_the_stream(indexer: Indexer, count: int) -> None:
    """Wait until the stream holds ``count`` records after the checkpoints."""
    deadline = time.monotonic() + 20
    while indexer.status().behind < count:
        assert time.monotonic() < deadline, f"{count} records never reached the stream"


@READERS
def test_a_round_catching_up_reads_a_shard_past_one_page(
    recorder: DynamoDBIndexedApplicationRecorder, readers: int
) -> None:
    """A backlog is read in rounds of what one transaction holds, not of 1,000.

    Each round pays a DescribeStream, a GetShardIterator per shard, two
    GetItems and a transaction: catching up, they are paid once per round.
    """
    saved = saves_of_100(recorder, 25)
    with closing(Indexer(recorder, readers=readers)) as indexer:
        on_the_stream(indexer, 2500)

        assert indexer.poll() == 2500  # one round, one transaction

        index_until(indexer, recorder, saved)


@READERS
def test_a_round_reads_no_more_pages_once_it_holds_a_transaction(
    recorder: DynamoDBIndexedApplicationRecorder,
    monkeypatch: pytest.MonkeyPatch,
    readers: int,
) -> None:
    saved = saves_of_100(recorder, 3)
    monkeypatch.setattr(indexer_module, "_PAGE_RECORDS", 100, raising=False)
    monkeypatch.setattr(indexer_module, "ROUND_RECORDS", 200)
    with closing(Indexer(recorder, readers=readers)) as indexer:
        on_the_stream(indexer, 300)

        assert indexer.poll() == 200  # two pages: the round's records reached

        index_until(indexer, recorder, saved)


@READERS
def test_a_round_reads_no_more_pages_once_its_states_fill_half_a_transaction(
    recorder: DynamoDBIndexedApplicationRecorder,
    monkeypatch: pytest.MonkeyPatch,
    readers: int,
) -> None:
    """States that do not compress must still fit the round's one transaction."""
    saved = saves_of_100(recorder, 3, state=os.urandom(1000))
    monkeypatch.setattr(indexer_module, "_PAGE_RECORDS", 100, raising=False)
    monkeypatch.setattr(indexer_module, "_ROUND_STATE_BYTES", 150_000, raising=False)
    with closing(Indexer(recorder, readers=readers)) as indexer:
        on_the_stream(indexer, 300)

        assert indexer.poll() == 200  # two pages: over 150,000 bytes of state

        index_until(indexer, recorder, saved)


def test_freeze_start_up_leaves_what_exists_out_of_collections() -> None:
    freeze_start_up.cache_clear()  # once per process: here, once per test
    gc.unfreeze()
    try:
        freeze_start_up()

        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
