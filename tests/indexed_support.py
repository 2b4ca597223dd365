"""Helpers for the tests of ``DYNAMODB_ORDERING=indexed``."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from ledger.dynamodb import DynamoDBFactory, DynamoDBIndexedApplicationRecorder
from ledger.indexer import Indexer


def indexed_env(dynamodb_endpoint: str, table_prefix: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
        "DYNAMODB_ORDERING": "indexed",
        "DYNAMODB_EVENTS_STREAM": "yes",
    }


def indexed_factory(dynamodb_endpoint: str, table_prefix: str) -> DynamoDBFactory:
    return DynamoDBFactory(
        Environment("ledger_test", indexed_env(dynamodb_endpoint, table_prefix))
    )


def stored(aggregate_id: uuid.UUID, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(aggregate_id, version, "tests:Happened", state)


def index_until(
    indexer: Indexer,
    recorder: DynamoDBIndexedApplicationRecorder,
    saved: Sequence[Any],
    timeout: float = 20.0,
) -> dict[tuple[str, int], int]:
    """Run indexer rounds until the index holds ``saved``; return their positions."""
    deadline = time.monotonic() + timeout
    while True:
        indexer.poll()
        try:
            return recorder.wait_indexed(saved, timeout=0)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


class ReorderingStreams:
    """The real DynamoDB Streams client, with its GetRecords pages altered.

    ``alter`` gets each non-empty page of records and returns the records to
    hand on (shuffled, repeated, ...): the faults the indexer must survive.
    """

    def __init__(self, client: Any, alter: Callable[[list[Any]], list[Any]]) -> None:
        self.client = client
        self.alter = alter
        self.from_start = False
        """Hand out every shard iterator from the shard's start (redelivery)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        if self.from_start:
            params.pop("SequenceNumber", None)
            params["ShardIteratorType"] = "TRIM_HORIZON"
        response: dict[str, Any] = self.client.get_shard_iterator(**params)
        return response

    def get_records(self, **params: Any) -> dict[str, Any]:
        response: dict[str, Any] = self.client.get_records(**params)
        if response.get("Records"):
            response["Records"] = self.alter(list(response["Records"]))
        return response


def shuffled(records: list[Any]) -> list[Any]:
    random.shuffle(records)
    return records


def repeated(records: list[Any]) -> list[Any]:
    return records + records[::-1]


def all_notifications(recorder: DynamoDBIndexedApplicationRecorder) -> Iterator[Any]:
    start = 1
    while True:
        page = recorder.select_notifications(start, 1000)
        if not page:
            return
        yield from page
        start = page[-1].id + 1
