"""Reading the application sequence: what ``select_notifications`` returns, and
what a long read costs.

A Query of batches reads on to the end of its notifications page (at most one
``limit`` further, never past ``stop``) and the recorder keeps that answer, so a
reader paging through the sequence makes one Query per page of the table, not
two per call. Every test here runs on DynamoDB Local, on tables whose pages
hold 100 positions, so that a few hundred events cross many pages.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.utils import Environment
from hypothesis import given
from hypothesis import strategies as st

from ledger.dynamodb import (
    CorruptNotificationBatchError,
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    measure,
    schema,
)

Item = dict[str, Any]
PAGE_SIZE = 100
TOPICS = ("tests:Placed", "tests:Added", "tests:Confirmed")
EVENTS = 1_000


class Expected(NamedTuple):
    """A notification as the sequence must return it."""

    id: int
    originator_id: uuid.UUID
    originator_version: int
    topic: str
    state: bytes


class Sequence(NamedTuple):
    """A sequence written once, with every notification it holds, in order."""

    factory: DynamoDBFactory
    notifications: list[Expected]
    pages: int
    """Notification pages holding its batches."""


def write(
    recorder: DynamoDBApplicationRecorder, events: int, seed: int
) -> list[Expected]:
    """Save ``events`` events in saves of 1 to 98, one aggregate each."""
    chooser = random.Random(seed)
    written: list[Expected] = []
    while len(written) < events:
        size = min(chooser.randint(1, 98), events - len(written))
        aggregate_id = uuid.uuid4()
        stored = [
            StoredEvent(
                aggregate_id,
                version,
                chooser.choice(TOPICS),
                f'{{"n": {len(written) + version}}}'.encode(),
            )
            for version in range(1, size + 1)
        ]
        recorder.insert_events(stored)
        written += [
            Expected(
                len(written) + offset + 1,
                aggregate_id,
                event.originator_version,
                event.topic,
                event.state,
            )
            for offset, event in enumerate(stored)
        ]
    return written


def open_factory(endpoint: str) -> DynamoDBFactory:
    return DynamoDBFactory(
        Environment(
            "ledger_test",
            {
                "DYNAMODB_ENDPOINT_URL": endpoint,
                "DYNAMODB_TABLE_PREFIX": f"t{uuid.uuid4().hex[:12]}_",
                "DYNAMODB_EVENTS_STREAM": "no",
            },
        )
    )


def new_sequence(endpoint: str, events: int, seed: int) -> Sequence:
    """Write a sequence of ``events`` on pages of ``PAGE_SIZE`` positions."""
    factory = open_factory(endpoint)
    with pytest.MonkeyPatch.context() as patch:
        # A new table records the size its first write files batches by.
        patch.setattr(schema, "PAGE_SIZE", PAGE_SIZE)
        writer = reader(factory)
        written = write(writer, events, seed)
    assert writer.page_size == PAGE_SIZE
    pages = len({schema.page_of(batch_end, PAGE_SIZE) for batch_end in ends(writer)})
    return Sequence(factory, written, pages)


def ends(recorder: DynamoDBApplicationRecorder) -> list[int]:
    """Return the last position of every batch item of the table."""
    items = recorder.connection.items(
        "scan", TableName=recorder.notifications_table_name, ConsistentRead=True
    )
    return sorted(
        int(item[schema.POSITION]["N"])
        for item in items
        if int(item[schema.PAGE]["N"]) != schema.SEQUENCE_PAGE
    )


def reader(factory: DynamoDBFactory) -> DynamoDBApplicationRecorder:
    """A recorder of its own, as in another process: it has read nothing yet."""
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBApplicationRecorder)
    return made


@pytest.fixture(scope="module")
def sequence(dynamodb_endpoint: str) -> Iterator[Sequence]:
    made = new_sequence(dynamodb_endpoint, EVENTS, seed=17)
    yield made
    made.factory.close()


@pytest.fixture(scope="module")
def shared_reader(sequence: Sequence) -> DynamoDBApplicationRecorder:
    """One recorder for every example of a property: it reads ahead as it goes."""
    return reader(sequence.factory)


def as_expected(notifications: list[Notification]) -> list[Expected]:
    return [
        Expected(n.id, n.originator_id, n.originator_version, n.topic, n.state)  # type: ignore[arg-type]
        for n in notifications
    ]


def read_all(recorder: DynamoDBApplicationRecorder, limit: int) -> list[Expected]:
    """Page through the whole sequence, ``limit`` positions a call."""
    found: list[Expected] = []
    while True:
        page = recorder.select_notifications(start=len(found) + 1, limit=limit)
        if not page:
            return found
        found += as_expected(list(page))


# What is returned -----------------------------------------------------------------


class Query(NamedTuple):
    """The arguments of one ``select_notifications`` call."""

    start: int | None
    limit: int
    stop: int | None
    topics: list[str]
    inclusive_of_start: bool


queries = st.builds(
    Query,
    start=st.none() | st.integers(min_value=0, max_value=EVENTS + 5),
    limit=st.integers(min_value=1, max_value=400),
    stop=st.none() | st.integers(min_value=0, max_value=EVENTS + 5),
    topics=st.lists(st.sampled_from(TOPICS), unique=True, max_size=2),
    inclusive_of_start=st.booleans(),
)


@given(query=queries)
def test_a_reader_gets_what_start_limit_stop_topics_and_inclusive_of_start_select(
    sequence: Sequence, shared_reader: DynamoDBApplicationRecorder, query: Query
) -> None:
    start, limit, stop, topics, inclusive = query
    low = 1 if start is None else (start if inclusive else start + 1)
    expected = [
        n
        for n in sequence.notifications
        if n.id >= low and (stop is None or n.id <= stop)
        if not topics or n.topic in topics
    ][:limit]

    found = shared_reader.select_notifications(
        start, limit, stop, topics, inclusive_of_start=inclusive
    )

    assert as_expected(list(found)) == expected


@pytest.mark.parametrize("limit", [7, 100, 1_000])
def test_paging_through_the_sequence_returns_every_notification_once_in_order(
    sequence: Sequence, limit: int
) -> None:
    assert read_all(reader(sequence.factory), limit) == sequence.notifications


def test_readers_in_threads_of_one_recorder_each_get_the_whole_sequence(
    sequence: Sequence,
) -> None:
    shared = reader(sequence.factory)
    results: list[list[Expected]] = []
    errors: list[BaseException] = []

    def page_through(limit: int) -> None:
        try:
            results.append(read_all(shared, limit))
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    threads = [
        threading.Thread(target=page_through, args=(limit,))
        for limit in (50, 100, 150, 300, 1000, 37)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert results == [sequence.notifications] * len(threads)


# What it costs -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [PAGE_SIZE, 3 * PAGE_SIZE])
def test_a_reader_paging_through_the_sequence_queries_each_page_once(
    sequence: Sequence, limit: int
) -> None:
    fresh = reader(sequence.factory)

    with measure(sequence.factory) as meter:
        found = read_all(fresh, limit)

    assert len(found) == EVENTS
    assert meter.calls["Query"] == sequence.pages
    # Where it starts, a call wanting positions past the head, one past the end.
    assert meter.calls["GetItem"] <= 3


# What was read ahead, then repaired ---------------------------------------------


@pytest.fixture
def small_sequence(dynamodb_endpoint: str) -> Iterator[Sequence]:
    made = new_sequence(dynamodb_endpoint, 300, seed=5)
    yield made
    made.factory.close()


def batch_key(last_position: int) -> dict[str, dict[str, str]]:
    return {
        schema.PAGE: {"N": str(schema.page_of(last_position, PAGE_SIZE))},
        schema.POSITION: {"N": str(last_position)},
    }


def batch_of_page_1(recorder: DynamoDBApplicationRecorder) -> Item:
    """Return the item of a batch that a read of page 1 reads ahead, as stored."""
    on_page_1 = [end for end in ends(recorder) if end // PAGE_SIZE == 1]
    assert len(on_page_1) >= 2
    item: Item = recorder.connection.call(
        "get_item",
        TableName=recorder.notifications_table_name,
        Key=batch_key(on_page_1[1]),
        ConsistentRead=True,
    )["Item"]
    return item


def put(recorder: DynamoDBApplicationRecorder, item: Item) -> None:
    recorder.connection.call(
        "put_item", TableName=recorder.notifications_table_name, Item=item
    )


def first_and_last(item: Item) -> tuple[int, int]:
    return int(item[schema.FIRST_POSITION]["N"]), int(item[schema.POSITION]["N"])


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_batch_repaired_after_it_was_read_ahead_is_read_as_repaired(
    small_sequence: Sequence, damage: str
) -> None:
    table_reader = reader(small_sequence.factory)
    intact = batch_of_page_1(table_reader)
    first, end = first_and_last(intact)
    if damage == "deleted":
        table_reader.connection.call(
            "delete_item",
            TableName=table_reader.notifications_table_name,
            Key=batch_key(end),
        )
    else:
        put(table_reader, {**intact, schema.EVENTS: {"B": b"\x03damaged"}})
    # Reads up to the damaged batch, having read ahead past it on page 1.
    before = table_reader.select_notifications(start=1, limit=first - 1)
    assert [n.id for n in before] == list(range(1, first))

    put(table_reader, intact)
    after = table_reader.select_notifications(start=first, limit=PAGE_SIZE)

    wanted = small_sequence.notifications[first - 1 : first - 1 + PAGE_SIZE]
    assert as_expected(list(after)) == wanted


def test_a_damaged_batch_read_ahead_is_reported_when_reached(
    small_sequence: Sequence,
) -> None:
    table_reader = reader(small_sequence.factory)
    intact = batch_of_page_1(table_reader)
    first, end = first_and_last(intact)
    put(table_reader, {**intact, schema.EVENTS: {"B": b"\x03"}})
    table_reader.select_notifications(start=1, limit=first - 1)

    with pytest.raises(CorruptNotificationBatchError) as raised:
        table_reader.select_notifications(start=first, limit=10)

    assert raised.value.last_position == end


def test_a_batch_damaged_after_it_was_returned_is_reported_when_read_again(
    small_sequence: Sequence,
) -> None:
    table_reader = reader(small_sequence.factory)
    intact = batch_of_page_1(table_reader)
    first, end = first_and_last(intact)
    table_reader.select_notifications(start=1, limit=end)  # returns the batch whole
    put(table_reader, {**intact, schema.EVENTS: {"B": b"\x03"}})

    with pytest.raises(CorruptNotificationBatchError) as raised:
        table_reader.select_notifications(start=first, limit=10)

    assert raised.value.last_position == end
