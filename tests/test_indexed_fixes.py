"""The indexed ordering's indexer and readers: stalls, early ends and double work."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ledger import index_rounds
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder
from ledger.indexer import Indexer
from tests import indexed_support
from tests.indexed_support import stored

factory = indexed_support.factory
recorder = indexed_support.recorder


def counting_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the batch items the indexer encodes: the first position of each."""
    encoded: list[int] = []
    batch_item = index_rounds.batch_item

    def counted(first_position: int, *args: Any, **kwargs: Any) -> Any:
        encoded.append(first_position)
        return batch_item(first_position, *args, **kwargs)

    monkeypatch.setattr(index_rounds, "batch_item", counted)
    return encoded


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
