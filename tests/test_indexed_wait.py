"""``wait_indexed`` for events another recorder saved: found by reading the index
backwards from its head, so recent ones cost a page or two whatever its size."""

from __future__ import annotations

import threading
import uuid

import pytest
from eventsourcing.utils import Environment

from ledger.dynamodb import (
    CorruptNotificationBatchError,
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
    IndexWaitTimeoutError,
    measure,
    schema,
)
from ledger.indexer import Indexer
from tests import indexed_support
from tests.faults import DELAY, SERVER_ERROR, FaultProxy
from tests.indexed_support import (
    indexed_env,
    indexed_factory,
    indexed_recorder,
    stored,
)
from tests.test_indexed_ordering import fill_index

factory = indexed_support.factory
recorder = indexed_support.recorder

INDEXED_BEFORE = 6_000
"""Positions the index holds before the saves waited for: six pages."""


@pytest.fixture
def filled(recorder: DynamoDBIndexedApplicationRecorder) -> Indexer:
    """An index of ``INDEXED_BEFORE`` positions, and an indexer to go on with."""
    fill_index(recorder, INDEXED_BEFORE)
    return Indexer(recorder)


def test_waiting_for_events_saved_elsewhere_reads_a_page_not_the_whole_index(
    factory: DynamoDBFactory, filled: Indexer
) -> None:
    saver = indexed_recorder(factory)
    first, second = uuid.uuid4(), uuid.uuid4()
    saved = [stored(first, 1), stored(second, 1), stored(first, 2)]
    saver.insert_events(saved[:2])
    saver.insert_events(saved[2:])
    filled.catch_up()
    waiter = indexed_recorder(factory)  # saved none of them

    with measure(waiter) as waiting:
        positions = waiter.wait_indexed(saved, timeout=10)

    assert sorted(positions.values()) == [
        INDEXED_BEFORE + 1,
        INDEXED_BEFORE + 2,
        INDEXED_BEFORE + 3,
    ]
    assert positions[str(first), 2] == INDEXED_BEFORE + 3
    assert waiting.calls == {"GetItem": 1, "Query": 1}


def test_events_deep_in_the_index_are_still_found(
    factory: DynamoDBFactory,
    recorder: DynamoDBIndexedApplicationRecorder,
    filled: Indexer,
) -> None:
    deep = [recorder.select_notifications(p, 1)[0] for p in (1, 2_500, INDEXED_BEFORE)]
    waiter = indexed_recorder(factory)

    with measure(waiter) as waiting:
        positions = waiter.wait_indexed(deep, timeout=10)

    assert positions == {
        (str(n.originator_id), n.originator_version): n.id for n in deep
    }
    assert waiting.calls["Query"] <= INDEXED_BEFORE // schema.PAGE_SIZE + 1


def test_a_wait_for_events_both_saved_here_and_elsewhere_finds_them_all(
    factory: DynamoDBFactory,
    recorder: DynamoDBIndexedApplicationRecorder,
    filled: Indexer,
) -> None:
    elsewhere = recorder.select_notifications(10, 1)[0]
    here = indexed_recorder(factory)
    aggregate = uuid.uuid4()
    here.insert_events([stored(aggregate, 1)])
    filled.catch_up()

    positions = here.wait_indexed([elsewhere, stored(aggregate, 1)], timeout=10)

    assert positions == {
        (str(elsewhere.originator_id), elsewhere.originator_version): 10,
        (str(aggregate), 1): INDEXED_BEFORE + 1,
    }


def test_a_wait_finds_events_indexed_after_the_head_it_read(
    factory: DynamoDBFactory, filled: Indexer
) -> None:
    saver = indexed_recorder(factory)
    aggregate = uuid.uuid4()
    saver.insert_events([stored(aggregate, 1)])
    waiter = indexed_recorder(factory)
    waiter.poll_interval = 0.01
    indexed_later = [False]

    def index_after_the_first_head_read(**_: object) -> None:
        if not indexed_later[0]:
            indexed_later[0] = True
            filled.catch_up()

    # The index holds it only after the wait's first head read: it is after
    # that head, and found reading on from there.
    waiter.connection.client.meta.events.register(
        "after-call.dynamodb.GetItem", index_after_the_first_head_read
    )

    positions = waiter.wait_indexed([stored(aggregate, 1)], timeout=10)

    assert positions == {(str(aggregate), 1): INDEXED_BEFORE + 1}


def delete_batch_holding(
    recorder: DynamoDBIndexedApplicationRecorder, position: int
) -> int:
    """Delete the batch item holding ``position``; return its last position."""
    end = recorder.batch_end(position)
    assert end is not None
    recorder.connection.call(
        "delete_item",
        TableName=recorder.notifications_table_name,
        Key={
            schema.PAGE: {"N": str(schema.page_of(end, schema.PAGE_SIZE))},
            schema.POSITION: {"N": str(end)},
        },
    )
    return end


def test_an_event_below_a_missing_batch_is_found_past_it(
    factory: DynamoDBFactory,
    recorder: DynamoDBIndexedApplicationRecorder,
    filled: Indexer,
) -> None:
    looked_for = recorder.select_notifications(1, 1)[0]
    delete_batch_holding(recorder, 3_000)

    positions = indexed_recorder(factory).wait_indexed([looked_for], timeout=10)

    assert positions == {(str(looked_for.originator_id), 1): 1}


def test_an_event_below_a_damaged_batch_is_found_past_it(
    factory: DynamoDBFactory,
    recorder: DynamoDBIndexedApplicationRecorder,
    filled: Indexer,
) -> None:
    looked_for = recorder.select_notifications(1, 1)[0]
    end = recorder.batch_end(3_000)
    assert end is not None
    recorder.connection.call(
        "update_item",
        TableName=recorder.notifications_table_name,
        Key={
            schema.PAGE: {"N": str(schema.page_of(end, schema.PAGE_SIZE))},
            schema.POSITION: {"N": str(end)},
        },
        UpdateExpression="SET #e = :e",
        ExpressionAttributeNames={"#e": schema.EVENTS},
        ExpressionAttributeValues={":e": {"B": b"\x07damaged"}},
    )

    positions = indexed_recorder(factory).wait_indexed([looked_for], timeout=10)

    assert positions == {(str(looked_for.originator_id), 1): 1}


def test_an_event_still_missing_past_a_missing_batch_is_reported_with_it(
    factory: DynamoDBFactory,
    recorder: DynamoDBIndexedApplicationRecorder,
    filled: Indexer,
) -> None:
    # The wait cannot tell an event of the missing batch from one not
    # indexed yet: when it ends, it names the batch.
    looked_for = recorder.select_notifications(3_000, 1)[0]
    delete_batch_holding(recorder, 3_000)

    with pytest.raises(CorruptNotificationBatchError, match="it is missing") as raised:
        indexed_recorder(factory).wait_indexed([looked_for], timeout=1)

    assert "still lacks 1 saved event" in str(raised.value)


def test_the_read_back_from_the_head_ends_at_the_timeout(
    dynamodb_endpoint: str,
    table_prefix: str,
    recorder: DynamoDBIndexedApplicationRecorder,
    filled: Indexer,
) -> None:
    deep = recorder.select_notifications(1, 1)[0]
    with FaultProxy(dynamodb_endpoint) as proxy:
        slow = indexed_factory(proxy.endpoint_url, table_prefix)
        waiter = indexed_recorder(slow)
        proxy.on("Query", fault=DELAY(0.4), times=None)

        with pytest.raises(IndexWaitTimeoutError) as raised:
            waiter.wait_indexed([deep], timeout=1)

        queries = sum(1 for operation, _ in proxy.requests if operation == "Query")
        slow.close()
    # Seven pages down to position 1, 0.4 s each: it stopped reading at 1 s.
    assert queries <= 4
    # The event may be below where it stopped: it says so, not "no indexer".
    told = str(raised.value)
    assert f"stopped its read of the index back from position {INDEXED_BEFORE} " in told
    assert "they may be indexed below it" in told
    assert "timeout=0" in told


def test_a_wait_with_no_indexer_running_says_the_checkpoints_did_not_move(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    indexer = Indexer(recorder)
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    indexer.catch_up()  # one round committed: the checkpoints' revision 1
    aggregate = uuid.uuid4()
    recorder.insert_events([stored(aggregate, 1)])  # never indexed

    with pytest.raises(IndexWaitTimeoutError, match=f"{aggregate} v1") as raised:
        recorder.wait_indexed([stored(aggregate, 1)], timeout=0.5)

    told = str(raised.value)
    assert "Each was saved after the index reached position 1" in told
    assert "nothing was appended after position 1" in told
    assert "checkpoints did not move while it waited (revision 1)" in told
    assert "is an indexer running" in told


def test_a_wait_with_an_indexer_behind_says_the_checkpoints_moved(
    factory: DynamoDBFactory, recorder: DynamoDBIndexedApplicationRecorder
) -> None:
    indexer = Indexer(indexed_recorder(factory))
    saver = indexed_recorder(factory)
    saver.insert_events([stored(uuid.uuid4(), 1)])
    indexer.catch_up()  # the wait reads back from a head
    stop = threading.Event()

    def save_and_index() -> None:
        # Other saves, indexed all along the wait: the indexer is running.
        while not stop.is_set():
            saver.insert_events([stored(uuid.uuid4(), 1)])
            indexer.catch_up()

    indexing = threading.Thread(target=save_and_index)
    indexing.start()
    not_indexed = stored(uuid.uuid4(), 1)  # saved elsewhere, behind the indexer
    try:
        with pytest.raises(IndexWaitTimeoutError) as raised:
            recorder.wait_indexed([not_indexed], timeout=2)
    finally:
        stop.set()
        indexing.join()

    told = str(raised.value)
    assert "It read the whole index back from position" in told
    assert "checkpoints moved while it waited" in told
    assert "an indexer is running, behind these saves" in told


def wait_failing_revision_reads(
    dynamodb_endpoint: str, table_prefix: str, failing: set[int]
) -> IndexWaitTimeoutError:
    """Wait for an event never indexed, the indexer's checkpoints read through
    a proxy that fails the ``failing`` reads of them (1: the first).

    Returns the wait's error; botocore makes one attempt per request.
    """
    aggregate = uuid.uuid4()
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = indexed_env(proxy.endpoint_url, table_prefix)
        env["DYNAMODB_MAX_ATTEMPTS"] = "1"
        through = DynamoDBFactory(Environment("ledger_test", env))
        waiter = indexed_recorder(through)
        indexer = Indexer(waiter)
        waiter.insert_events([stored(uuid.uuid4(), 1)])
        indexer.catch_up()  # one round committed: the checkpoints' revision 1
        waiter.insert_events([stored(aggregate, 1)])  # never indexed
        reads: list[int] = []

        def a_failing_revision_read(operation: str, index: int, body: bytes) -> bool:
            # The wait's reads of the checkpoints item ask for its revision only.
            if operation != "GetItem" or schema.REVISION.encode() not in body:
                return False
            reads.append(index)
            return len(reads) in failing

        proxy.on(a_failing_revision_read, fault=SERVER_ERROR, times=None)
        try:
            with pytest.raises(
                IndexWaitTimeoutError, match=f"{aggregate} v1"
            ) as raised:
                waiter.wait_indexed([stored(aggregate, 1)], timeout=0.5)
        finally:
            through.close()
        assert ("GetItem", SERVER_ERROR) in proxy.requests
    assert len(reads) == 2  # when the wait began to take time, and when it ended
    return raised.value


def test_a_failed_read_of_the_checkpoints_at_a_timeout_says_unknown_not_raised(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    raised = wait_failing_revision_reads(dynamodb_endpoint, table_prefix, {2})

    told = str(raised)
    assert "Each was saved after the index reached position 1" in told
    assert (
        "Whether the indexer's checkpoints moved while it waited is unknown: "
        "reading them failed (DynamoDB kept refusing the request" in told
    )
    assert "did not move" not in told


def test_a_failed_read_of_the_checkpoints_as_a_wait_begins_says_unknown_at_its_end(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    raised = wait_failing_revision_reads(dynamodb_endpoint, table_prefix, {1})

    told = str(raised)
    assert (
        "Whether the indexer's checkpoints moved while it waited is unknown: "
        "reading them when it began to wait failed (revision 1 now)" in told
    )
    assert "did not move" not in told
