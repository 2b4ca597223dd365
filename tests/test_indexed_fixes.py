"""The indexed ordering's indexer and readers: stalls, early ends and double work."""

from __future__ import annotations

import threading
import uuid

import pytest

from ledger import index_rounds
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder, schema
from ledger.indexer import Indexer
from tests import indexed_support
from tests.indexed_support import (
    ToldShard,
    ToldShards,
    aggregate_of,
    checkpoints_item,
    counting_encodes,
    index_until,
    stored,
)
from tests.test_indexed_guarantees import assert_indexed_once_in_order
from tests.test_indexed_shards import of_parity, parity

factory = indexed_support.factory
recorder = indexed_support.recorder


def test_a_reindex_round_encodes_each_batch_item_once(
    recorder: DynamoDBIndexedApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = [stored(uuid.uuid4(), 1) for _ in range(150)]  # two batch items
    for event in saved:
        recorder.insert_events([event])
    encoded = counting_encodes(monkeypatch)

    appended = Indexer(recorder).reindex(timeout=60)

    assert appended == len(saved)
    assert sorted(set(encoded)) == [1, 1 + index_rounds.BATCH_EVENTS]
    assert len(encoded) == len(set(encoded))  # fitted once, written as fitted


def test_a_save_trimmed_from_one_shard_after_a_reindex_holds_back_no_other_shard(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """Back on the stream after a re-index, records the index holds are passed over.

    A save across two sibling shards is re-indexed from the events table;
    then DynamoDB trims the even shard's part of it well before the odd
    shard's. The odd shard, read from its TRIM_HORIZON, starts with its part
    of a save it can no longer read whole: it must be passed over as
    indexed, not held back as incomplete (with every later record of the
    shard) until it is trimmed too.
    """
    [even], [odd] = of_parity(0, 1), of_parity(1, 1)
    save = [stored(even, 1), stored(odd, 1)]
    recorder.insert_events(save)
    trimmed = threading.Event()
    streams = ToldShards(
        recorder.connection.streams_client(),
        [
            ToldShard(
                "even",
                lambda r: (
                    parity(r) == 0
                    and not (trimmed.is_set() and aggregate_of(r) == str(even))
                ),
            ),
            ToldShard("odd", lambda r: parity(r) == 1),
        ],
    )
    indexer = Indexer(recorder, streams_client=streams)
    assert indexer.reindex(timeout=60) == len(save)
    trimmed.set()
    later = [stored(odd, 2)]
    recorder.insert_events(later)

    index_until(indexer, recorder, later, timeout=10)

    assert_indexed_once_in_order(recorder, [save, later])
    odd_shard = streams.shard_id("odd")
    assert odd_shard in checkpoints_item(recorder)[schema.SHARD_CHECKPOINTS]["M"]
