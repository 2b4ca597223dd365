"""Helpers for the tests of ``DYNAMODB_ORDERING=indexed``."""

from __future__ import annotations

import datetime
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from ledger import index_rounds
from ledger.dynamodb import DynamoDBFactory, DynamoDBIndexedApplicationRecorder, schema
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


@pytest.fixture
def factory(dynamodb_endpoint: str, table_prefix: str) -> Iterator[DynamoDBFactory]:
    """A factory of indexed recorders on this test's tables, closed after it."""
    made = indexed_factory(dynamodb_endpoint, table_prefix)
    yield made
    made.close()


def indexed_recorder(factory: DynamoDBFactory) -> DynamoDBIndexedApplicationRecorder:
    """A new application recorder of ``factory``, which makes indexed ones."""
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBIndexedApplicationRecorder)
    return made


@pytest.fixture
def recorder(factory: DynamoDBFactory) -> DynamoDBIndexedApplicationRecorder:
    """The indexed application recorder of ``factory``."""
    return indexed_recorder(factory)


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


class TrimmedStreams(ReorderingStreams):
    """The real streams client, as if records had passed the stream's retention.

    DynamoDB Local never expires stream records, so :meth:`trim` stands in for
    24 hours passing: records below the mark vanish from every read, and an
    iterator after a sequence number below it is refused with
    ``TrimmedDataAccessException``, as DynamoDB Streams refuses it.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client, lambda records: records)
        self.trimmed_below: int | None = None
        self.stream_age: float | None = None
        """Seconds to make the stream look old in DescribeStream (None: as is)."""

    def trim(self, stream_arn: str, keep: int) -> None:
        """Expire every record of the stream but its last ``keep``."""
        numbers: list[int] = []
        shards = self.client.describe_stream(StreamArn=stream_arn)
        for shard in shards["StreamDescription"]["Shards"]:
            iterator = self.client.get_shard_iterator(
                StreamArn=stream_arn,
                ShardId=shard["ShardId"],
                ShardIteratorType="TRIM_HORIZON",
            )["ShardIterator"]
            while iterator:
                page = self.client.get_records(ShardIterator=iterator)
                numbers += [
                    int(r["dynamodb"]["SequenceNumber"]) for r in page["Records"]
                ]
                if not page["Records"]:
                    break
                iterator = page.get("NextShardIterator")
        numbers.sort()
        self.trimmed_below = numbers[-keep] if keep else numbers[-1] + 1

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        response: dict[str, Any] = self.client.describe_stream(**params)
        if self.stream_age is not None:
            response["StreamDescription"]["CreationRequestDateTime"] = (
                datetime.datetime.now(datetime.UTC)
                - datetime.timedelta(seconds=self.stream_age)
            )
        return response

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        after = params.get("SequenceNumber")
        if (
            self.trimmed_below is not None
            and after is not None
            and int(after) + 1 < self.trimmed_below
        ):
            raise botocore.exceptions.ClientError(
                {
                    "Error": {
                        "Code": "TrimmedDataAccessException",
                        "Message": "the record is past the stream's retention",
                    }
                },
                "GetShardIterator",
            )
        return super().get_shard_iterator(**params)

    def get_records(self, **params: Any) -> dict[str, Any]:
        response = super().get_records(**params)
        if self.trimmed_below is not None:
            mark = self.trimmed_below
            response["Records"] = [
                r
                for r in response.get("Records", [])
                if int(r["dynamodb"]["SequenceNumber"]) >= mark
            ]
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


def aggregate_of(record: Any) -> str:
    """The aggregate id of a stream record of the events table."""
    key: str = record["dynamodb"]["Keys"][schema.AGGREGATE_ID]["S"]
    return key


@dataclass(frozen=True)
class ToldShard:
    """One shard :class:`ToldShards` shows: which records of the real one it holds."""

    name: str
    holds: Callable[[Any], bool] = lambda record: True
    """Whether a stream record (after ``after``, up to ``ending``) is this shard's."""
    parent: str | None = None
    """The ``name`` of its parent shard, if any."""
    after: int | None = None
    """Its records come after this sequence number (its TRIM_HORIZON starts there)."""
    ending: int | None = None
    """Closed, ending at this sequence number (None: open)."""


class ToldShards(ReorderingStreams):
    """The real streams client, showing the stream's one shard as ``shards``.

    DynamoDB Local never splits a shard, so splits are told here: each told
    shard is listed in DescribeStream in the order given (a child may come
    before its parent, as DynamoDB Streams does not promise an order) and
    reads only its own records of the real shard. A child's TRIM_HORIZON
    starts after its ``after``, as a real child's does; a closed shard's
    reads end (no ``NextShardIterator``) once its ``ending`` is passed.
    """

    def __init__(self, client: Any, shards: Sequence[ToldShard]) -> None:
        super().__init__(client, lambda records: records)
        self.told = {shard.name: shard for shard in shards}
        self.real: str | None = None

    def shard_id(self, name: str) -> str:
        """The ShardId DescribeStream gives the told shard ``name``."""
        return f"{self.real}-{name}"

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        response: dict[str, Any] = self.client.describe_stream(**params)
        description = response["StreamDescription"]
        [shard] = description["Shards"]
        self.real = shard["ShardId"]
        start = int(shard["SequenceNumberRange"]["StartingSequenceNumber"])
        listed = []
        for told in self.told.values():
            numbers = {
                "StartingSequenceNumber": str(
                    start if told.after is None else told.after + 1
                )
            }
            if told.ending is not None:
                numbers["EndingSequenceNumber"] = str(told.ending)
            listed.append(
                {
                    "ShardId": self.shard_id(told.name),
                    "SequenceNumberRange": numbers,
                    **(
                        {"ParentShardId": self.shard_id(told.parent)}
                        if told.parent
                        else {}
                    ),
                }
            )
        description["Shards"] = listed
        return response

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        name = params["ShardId"].removeprefix(f"{self.real}-")
        told = self.told[name]
        params["ShardId"] = self.real
        if params["ShardIteratorType"] == "TRIM_HORIZON" and told.after is not None:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            # Zero-padded, as DynamoDB gives sequence numbers (botocore wants 21+).
            params["SequenceNumber"] = str(told.after).zfill(21)
        response = super().get_shard_iterator(**params)
        response["ShardIterator"] = f"{name}|{response['ShardIterator']}"
        return response

    def get_records(self, **params: Any) -> dict[str, Any]:
        name, _, iterator = params["ShardIterator"].partition("|")
        told = self.told[name]
        response: dict[str, Any] = self.client.get_records(
            **{**params, "ShardIterator": iterator}
        )
        records = response.get("Records", [])
        numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
        response["Records"] = [
            record
            for record, number in zip(records, numbers, strict=True)
            if (told.after is None or number > told.after)
            and (told.ending is None or number <= told.ending)
            and told.holds(record)
        ]
        if told.ending is not None and (
            not records or any(n >= told.ending for n in numbers)
        ):
            # Past its end (the real shard has nothing more, or only later
            # records): the told shard is closed and read to its end.
            response.pop("NextShardIterator", None)
        elif response.get("NextShardIterator"):
            response["NextShardIterator"] = f"{name}|{response['NextShardIterator']}"
        return response


def checkpoints_item(recorder: DynamoDBIndexedApplicationRecorder) -> dict[str, Any]:
    item: dict[str, Any] = recorder.connection.call(
        "get_item",
        TableName=recorder.notifications_table_name,
        Key=schema.index_checkpoints_key(),
        ConsistentRead=True,
    )["Item"]
    return item


def counting_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the batch items the indexer encodes: the first position of each."""
    encoded: list[int] = []
    batch_item = index_rounds.batch_item

    def counted(first_position: int, *args: Any, **kwargs: Any) -> Any:
        encoded.append(first_position)
        return batch_item(first_position, *args, **kwargs)

    monkeypatch.setattr(index_rounds, "batch_item", counted)
    return encoded
