"""An indexer fallen behind the stream's 24 hours re-indexes from the events table.

DynamoDB Local never expires stream records, so the expiry is injected:
``TrimmedStreams`` (tests/indexed_support.py) wraps the real streams client,
hides the records below a mark from every read, refuses an iterator after a
sequence number below it with ``TrimmedDataAccessException`` (as DynamoDB
Streams refuses it), and can make the stream look older than it is.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from faults import REFUSE, FaultProxy

from ledger.dynamodb import DynamoDBIndexedApplicationRecorder, schema
from ledger.indexer import Indexer, IndexRound
from ledger.projections.metrics import (
    INDEX_LAG_RECORDS,
    INDEX_OLDEST_UNINDEXED_AGE,
    INDEX_RECORDS_APPENDED,
    MemoryMetrics,
)
from tests import indexed_support
from tests.indexed_support import (
    TrimmedStreams,
    checkpoints_item,
    index_until,
    indexed_factory,
    stored,
)
from tests.test_indexed_guarantees import assert_indexed_once_in_order, random_saves

factory = indexed_support.factory
recorder = indexed_support.recorder


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scan pages of 7 items, so a re-index takes many rounds and holds saves."""
    monkeypatch.setattr("ledger.reindexing._SCAN_LIMIT", 7)


def every_event(saves: list[list[StoredEvent]]) -> list[StoredEvent]:
    return [event for save in saves for event in save]


def offline_past_retention(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> tuple[list[list[StoredEvent]], TrimmedStreams]:
    """Index some saves, then save more and expire all but 5 stream records.

    Returns every save, and the streams client of an indexer coming back.
    """
    streams = TrimmedStreams(recorder.connection.streams_client())
    before = random_saves(recorder, 10, seed=11)
    first = Indexer(recorder)
    index_until(first, recorder, every_event(before))
    assert schema.REINDEXED_AT not in checkpoints_item(recorder)  # a young stream
    offline = random_saves(recorder, 25, seed=12)
    streams.trim(first.stream_arn, keep=5)
    return before + offline, streams


def test_a_trimmed_refusal_from_dynamodb_streams_starts_a_reindex(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    # The refusal as DynamoDB Streams answers it, on the wire (the proxy's
    # REFUSE), once for an iterator after the checkpoint; records stay.
    with FaultProxy(dynamodb_endpoint) as proxy:
        factory = indexed_factory(proxy.endpoint_url, table_prefix)
        recorder = factory.application_recorder()
        assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
        indexer = Indexer(recorder)
        before = random_saves(recorder, 3, seed=16)
        index_until(indexer, recorder, every_event(before))
        after = random_saves(recorder, 4, seed=17)
        refused = proxy.on(
            lambda op, index, body: (
                op == "GetShardIterator" and b"AFTER_SEQUENCE_NUMBER" in body
            ),
            fault=REFUSE("TrimmedDataAccessException"),
        )

        index_until(indexer, recorder, every_event(after))
        indexer.catch_up()

        assert refused.fired == 1
        assert schema.REINDEXED_AT in checkpoints_item(recorder)
        assert_indexed_once_in_order(recorder, before + after)
        factory.close()


def test_events_saved_while_offline_past_retention_are_reindexed_once_in_order(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    saves, streams = offline_past_retention(recorder)
    back = Indexer(recorder, streams_client=streams)

    index_until(back, recorder, every_event(saves))
    back.catch_up()

    assert_indexed_once_in_order(recorder, saves)
    assert schema.REINDEXED_AT in checkpoints_item(recorder)
    assert schema.REINDEX_SCAN not in checkpoints_item(recorder)


class KilledError(Exception):
    """Stands for the indexer's process dying."""


def test_a_reindex_killed_in_the_middle_resumes_with_no_duplicates(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    saves, streams = offline_past_retention(recorder)
    commits = 0

    def die_after_the_fourth_commit(positions: range) -> None:
        nonlocal commits
        commits += 1
        if commits == 4:
            raise KilledError

    dying = Indexer(
        recorder, streams_client=streams, after_write=die_after_the_fourth_commit
    )
    with pytest.raises(KilledError):
        dying.catch_up()
    # KilledError mid-Scan: where it stood was committed with what it appended.
    assert schema.REINDEX_SCAN in checkpoints_item(recorder)
    head_when_killed = recorder.max_notification_id() or 0
    assert head_when_killed > 0

    resumed = Indexer(recorder, streams_client=streams)
    index_until(resumed, recorder, every_event(saves))
    resumed.catch_up()

    assert_indexed_once_in_order(recorder, saves)


def test_writes_during_a_reindex_are_indexed_once(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    saves, streams = offline_past_retention(recorder)
    late_aggregate = uuid.uuid4()
    written: list[list[StoredEvent]] = []
    old_aggregate = saves[0][0].originator_id
    old_version = max(
        e.originator_version
        for e in every_event(saves)
        if e.originator_id == old_aggregate
    )

    def save_meanwhile(positions: range) -> None:
        # During the Scan: a new aggregate, and an aggregate it may have passed.
        if len(written) < 6:
            done = len(written)
            save = [stored(late_aggregate, done + 1)]
            if done % 2:
                save.append(stored(old_aggregate, old_version + (done + 1) // 2))
            recorder.insert_events(save)
            written.append(save)

    back = Indexer(recorder, streams_client=streams, after_write=save_meanwhile)
    index_until(back, recorder, every_event(saves))
    back.after_write = None
    index_until(back, recorder, every_event(written))
    back.catch_up()

    assert len(written) == 6
    assert_indexed_once_in_order(recorder, saves + written)


def test_a_reindex_defers_what_one_transaction_cannot_take(
    recorder: DynamoDBIndexedApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.reindexing._MAX_BATCHES", 1)  # 98 events a round
    aggregate = uuid.uuid4()
    saves = [[stored(aggregate, version)] for version in range(1, 251)]
    for save in saves:
        recorder.insert_events(save)
    streams = TrimmedStreams(recorder.connection.streams_client())
    late = Indexer(recorder, streams_client=streams)
    streams.trim(late.stream_arn, keep=0)

    late.reindex(timeout=60)
    late.catch_up()

    assert_indexed_once_in_order(recorder, saves)


def test_a_first_run_on_a_stream_that_lost_records_reindexes(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    saves = random_saves(recorder, 15, seed=13)
    streams = TrimmedStreams(recorder.connection.streams_client())
    late = Indexer(recorder, streams_client=streams)
    streams.trim(late.stream_arn, keep=4)
    streams.stream_age = 2 * 24 * 3600.0  # older than its retention

    index_until(late, recorder, every_event(saves))
    late.catch_up()

    assert_indexed_once_in_order(recorder, saves)
    assert schema.REINDEXED_AT in checkpoints_item(recorder)


def test_reindex_by_hand_appends_nothing_already_indexed(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    saves = random_saves(recorder, 10, seed=14)
    indexer = Indexer(recorder)
    index_until(indexer, recorder, every_event(saves))

    appended = Indexer(recorder).reindex(timeout=60)
    more = random_saves(recorder, 3, seed=15)
    index_until(indexer, recorder, every_event(more))
    indexer.catch_up()

    assert appended == 0
    assert_indexed_once_in_order(recorder, saves + more)


def test_each_round_reports_appended_lag_and_oldest_age_and_alarms(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    metrics = MemoryMetrics()
    alarms: list[IndexRound] = []
    indexer = Indexer(recorder, batch_size=100, metrics=metrics, alarm=alarms.append)
    aggregate = uuid.uuid4()
    for version in range(1, 151):
        recorder.insert_events([stored(aggregate, version)])
    deadline = time.monotonic() + 20
    while indexer.status().behind < 150:  # every record in the stream first
        assert time.monotonic() < deadline
    indexer.alarm_age_ms = 0.0  # any unindexed record is too old

    index_until(indexer, recorder, [stored(aggregate, 150)])

    assert metrics.values(INDEX_RECORDS_APPENDED)[:2] == [100, 50]
    assert metrics.values(INDEX_LAG_RECORDS)[:2] == [100, 50]
    ages = metrics.values(INDEX_OLDEST_UNINDEXED_AGE)
    assert len(ages) == 2
    assert ages[0] >= ages[1] - 1000  # the first round read the oldest record
    assert [round.appended for round in alarms] == [100, 50]


def test_status_says_when_a_reindex_is_due_and_under_way(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    saves, streams = offline_past_retention(recorder)
    back = Indexer(recorder, streams_client=streams)

    due = back.status()
    back.poll()  # starts the re-index
    under_way = back.status()
    index_until(back, recorder, every_event(saves))
    back.catch_up()
    done = back.status()

    assert (due.trimmed, due.reindexing) == (True, False)
    assert under_way.reindexing is True
    assert (done.trimmed, done.reindexing, done.behind) == (False, False, 0)


def expire_once_written(
    streams: TrimmedStreams, stream_arn: str, written: list[StoredEvent]
) -> None:
    """Expire the whole stream once it holds a record of every event written.

    The stream gets a save's records a moment after the save: poll for them.
    """
    deadline = time.monotonic() + 20
    records = 0
    while records < len(written):
        assert time.monotonic() < deadline, f"{records} of {len(written)} records"
        records = 0
        description = streams.client.describe_stream(StreamArn=stream_arn)
        for shard in description["StreamDescription"]["Shards"]:
            iterator = streams.client.get_shard_iterator(
                StreamArn=stream_arn,
                ShardId=shard["ShardId"],
                ShardIteratorType="TRIM_HORIZON",
            )["ShardIterator"]
            while iterator:
                page = streams.client.get_records(ShardIterator=iterator)
                records += len(page["Records"])
                if not page["Records"]:
                    break
                iterator = page.get("NextShardIterator")
    streams.trim(stream_arn, keep=0)


def test_a_reindex_longer_than_the_streams_retention_scans_again(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    """Saves into ranges the Scan passed, then 25 hours, are indexed once, in order.

    DynamoDB Local can neither age a stream nor make a Scan take hours, so
    the indexer's clock jumps 25 hours in the middle of the first pass, and
    the stream (``TrimmedStreams``) expires every record written until then.
    """
    saves, streams = offline_past_retention(recorder)
    saved_versions: dict[Any, int] = {}
    for event in every_event(saves):
        saved_versions[event.originator_id] = event.originator_version
    hours = 0.0
    during: list[list[StoredEvent]] = []
    passes: set[int] = set()
    # A Scan reads the table in one order, each partition once: the order
    # says which aggregates a Scan standing at a key has passed for good.
    scan_order = [
        (item[schema.AGGREGATE_ID]["S"], int(item[schema.VERSION]["N"]))
        for item in recorder.connection.items(
            "scan", TableName=recorder.events_table_name, ConsistentRead=True
        )
    ]

    def clock() -> float:
        return time.time() + hours * 3600

    def save_into_scanned_ranges(positions: range) -> None:
        nonlocal hours
        item = checkpoints_item(recorder)
        if schema.REINDEX_PASS in item:
            passes.add(int(item[schema.REINDEX_PASS]["N"]))
        if during or schema.REINDEX_SCAN not in item:
            return
        scanning = item[schema.REINDEX_SCAN]["M"]["0"].get("M")
        if scanning is None:
            return
        at = scan_order.index(
            (scanning[schema.AGGREGATE_ID]["S"], int(scanning[schema.VERSION]["N"]))
        )
        passed = [
            aggregate
            for aggregate in saved_versions
            if max(i for i, key in enumerate(scan_order) if key[0] == str(aggregate))
            < at
        ]
        if not passed:
            return
        # The Scan has read these aggregates' partitions whole: it will not
        # come back to them, so their new events are only in the stream.
        aggregate = passed[0]
        version = saved_versions[aggregate]
        during.append([stored(aggregate, version + 1)])
        during.append([stored(aggregate, version + 2), stored(aggregate, version + 3)])
        for save in during:
            recorder.insert_events(save)
        hours = 25.0
        expire_once_written(streams, indexer.stream_arn, every_event(saves + during))

    indexer = Indexer(
        recorder,
        streams_client=streams,
        after_write=save_into_scanned_ranges,
        clock=clock,
    )
    index_until(indexer, recorder, every_event(saves))
    assert len(during) == 2
    index_until(indexer, recorder, every_event(during))
    later = [[stored(uuid.uuid4(), 1)]]
    recorder.insert_events(later[0])
    index_until(indexer, recorder, every_event(later))
    indexer.catch_up()

    assert passes == {1, 2}
    assert schema.REINDEX_STARTED not in checkpoints_item(recorder)
    assert_indexed_once_in_order(recorder, saves + during + later)


def test_an_indexer_back_25_hours_after_a_pass_ended_scans_again(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    """A pass ends, its process dies, and the next indexer starts 25 hours later.

    The pass's start is on the checkpoints item, so the new process knows
    the stream no longer holds what was saved since. DynamoDB Local cannot
    age a stream: the new indexer's clock is 25 hours ahead, and the stream
    (``TrimmedStreams``) expires every record written until then.
    """
    saves, streams = offline_past_retention(recorder)

    def die_when_the_pass_ends(positions: range) -> None:
        if schema.REINDEX_SCAN not in checkpoints_item(recorder):
            raise KilledError

    dying = Indexer(
        recorder, streams_client=streams, after_write=die_when_the_pass_ends
    )
    with pytest.raises(KilledError):
        dying.catch_up()
    assert schema.REINDEX_STARTED in checkpoints_item(recorder)
    meanwhile = random_saves(recorder, 6, seed=18)
    expire_once_written(streams, dying.stream_arn, every_event(saves + meanwhile))

    back = Indexer(
        recorder, streams_client=streams, clock=lambda: time.time() + 25 * 3600
    )
    index_until(back, recorder, every_event(saves + meanwhile))
    back.catch_up()
    after_the_pass = back.status()
    later = random_saves(recorder, 2, seed=19)
    index_until(back, recorder, every_event(later))
    back.catch_up()

    # Until stream checkpoints are committed again, the pass is remembered.
    assert (after_the_pass.reindexing, after_the_pass.reindex_pass) == (False, 2)
    assert back.status().reindex_pass == 0
    assert_indexed_once_in_order(recorder, saves + meanwhile + later)


class ParentAgedOut(TrimmedStreams):
    """The real streams client, as if the shard holding a checkpoint had aged out.

    DynamoDB Streams lists a closed shard until its records expire, then its
    child alone (whose ``ParentShardId`` names it). DynamoDB Local never
    rolls shards over: after :attr:`renamed` is set, its one shard is listed
    under a new id, as the child of the old, unlisted one.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.renamed: tuple[str, str] | None = None

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        response = super().describe_stream(**params)
        if self.renamed is not None:
            old, new = self.renamed
            for shard in response["StreamDescription"]["Shards"]:
                if shard["ShardId"] == old:
                    shard["ShardId"] = new
                    shard["ParentShardId"] = old
        return response

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        if self.renamed is not None and params.get("ShardId") == self.renamed[1]:
            params["ShardId"] = self.renamed[0]
        return super().get_shard_iterator(**params)


def test_a_checkpointed_shard_gone_from_the_stream_unfinished_is_reindexed(
    recorder: DynamoDBIndexedApplicationRecorder, small_pages: None
) -> None:
    """An indexer back after a day finds its shard gone: it re-indexes, in full."""
    streams = ParentAgedOut(recorder.connection.streams_client())
    before = random_saves(recorder, 10, seed=11)
    first = Indexer(recorder, streams_client=streams)
    index_until(first, recorder, every_event(before))
    offline = random_saves(recorder, 25, seed=12)  # saved while it was away
    streams.trim(first.stream_arn, keep=5)
    shards = streams.client.describe_stream(StreamArn=first.stream_arn)
    shard = shards["StreamDescription"]["Shards"][0]["ShardId"]
    streams.renamed = (shard, shard + "-child")

    back = Indexer(recorder, streams_client=streams)
    index_until(back, recorder, every_event(before + offline), timeout=30.0)
    back.catch_up()  # back on the stream: the gone shard's checkpoint is cleared

    assert_indexed_once_in_order(recorder, before + offline)
    status = back.status()
    assert (status.reindexing, status.reindex_pass) == (False, 0)
