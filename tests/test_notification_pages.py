"""Notification pages: each table's batches spread over keys of its own page size.

A table first written now files its batches on pages of ``schema.PAGE_SIZE``
(1,000) positions and records that size on its sequence item; a table
written before (no size recorded) keeps its pages of 100,000 positions, read
and appended as such. Every test here runs on DynamoDB Local.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eventsourcing.persistence import DataError, StoredEvent

from ledger.dynamodb import (
    CorruptNotificationBatchError,
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
    schema,
)
from ledger.dynamodb.batches import BatchEntry, batch_item
from ledger.indexer import Indexer
from tests import indexed_support

SAVE = 98
"""Events per save: the most a ``sequence`` save holds, so batches are large."""
STRADDLING = (981, 1078)
"""Positions of the 11th save of 98: across the boundary of pages 0 and 1."""


def stored(aggregate_id: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(aggregate_id, version, "tests:Happened", b"{}")


def save_in_batches(recorder: DynamoDBApplicationRecorder, events: int) -> None:
    """Save ``events`` events, ``SAVE`` to a save (one aggregate each)."""
    while events > 0:
        size = min(SAVE, events)
        aggregate_id = uuid.uuid4()
        recorder.insert_events([stored(aggregate_id, v) for v in range(1, size + 1)])
        events -= size


def batch_keys(recorder: DynamoDBApplicationRecorder) -> list[tuple[int, int]]:
    """Return (page, last position) of every batch item, in position order."""
    items = recorder.connection.items(
        "scan", TableName=recorder.notifications_table_name, ConsistentRead=True
    )
    keys = [(int(i[schema.PAGE]["N"]), int(i[schema.POSITION]["N"])) for i in items]
    return sorted(
        (key for key in keys if key[0] != schema.SEQUENCE_PAGE), key=lambda k: k[1]
    )


def sequence_item(recorder: DynamoDBApplicationRecorder) -> dict[str, Any]:
    item: dict[str, Any] = recorder.connection.call(
        "get_item",
        TableName=recorder.notifications_table_name,
        Key={
            schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
            schema.POSITION: {"N": "0"},
        },
        ConsistentRead=True,
    )["Item"]
    return item


def ids(recorder: DynamoDBApplicationRecorder, start: int, limit: int) -> list[int]:
    return [n.id for n in recorder.select_notifications(start=start, limit=limit)]


def write_notifications(
    recorder: DynamoDBApplicationRecorder,
    items: list[dict[str, Any]],
    last_position: int,
    positions_per_page: int | None = None,
) -> None:
    """Write batch ``items`` and the sequence item straight into the
    notifications table, bypassing saves: ``positions_per_page`` is the page
    size the sequence item records (``None``: none, as before sizes were).
    """
    table = recorder.notifications_table_name
    for offset in range(0, len(items), 25):
        recorder.connection.call(
            "batch_write_item",
            RequestItems={
                table: [
                    {"PutRequest": {"Item": i}} for i in items[offset : offset + 25]
                ]
            },
        )
    head = {
        schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
        schema.POSITION: {"N": "0"},
        schema.LAST_POSITION: {"N": str(last_position)},
    }
    if positions_per_page is not None:
        head[schema.POSITIONS_PER_PAGE] = {"N": str(positions_per_page)}
    recorder.connection.call("put_item", TableName=table, Item=head)


def write_legacy_table(recorder: DynamoDBApplicationRecorder, saves: int) -> int:
    """Write ``saves`` batches of ``SAVE`` events as ledger did before page sizes
    were recorded: pages of 100,000 positions, a sequence item without a size.

    Returns the last position.
    """
    position = 0
    items = []
    for _ in range(saves):
        aggregate_id = str(uuid.uuid4())
        entries = [
            BatchEntry(aggregate_id, v, "tests:Happened", b"{}")
            for v in range(1, SAVE + 1)
        ]
        items.append(batch_item(position + 1, entries, schema.LEGACY_PAGE_SIZE))
        position += SAVE
    write_notifications(recorder, items, position)
    return position


indexed = indexed_support.factory


def sequence_recorder(factory: DynamoDBFactory) -> DynamoDBApplicationRecorder:
    """A recorder of its own: it has read nothing of the table yet."""
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBApplicationRecorder)
    return made


# New tables ---------------------------------------------------------------------


def test_a_new_sequence_table_files_its_batches_on_pages_of_1000_positions(
    factory: DynamoDBFactory,
) -> None:
    writer = sequence_recorder(factory)

    save_in_batches(writer, 2_100)

    keys = batch_keys(writer)
    assert sequence_item(writer)[schema.POSITIONS_PER_PAGE] == {"N": "1000"}
    assert [page for page, position in keys] == [p // 1000 for _, p in keys]
    assert {page for page, _ in keys} == {0, 1, 2}
    reader = sequence_recorder(factory)
    assert ids(reader, 1, 3_000) == list(range(1, 2_101))
    assert reader.page_size == 1000


def test_a_new_indexed_table_files_its_batches_on_pages_of_1000_positions(
    indexed: DynamoDBFactory,
) -> None:
    recorder = indexed.application_recorder()
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    for _ in range(12):  # 1,200 events, saves of 100
        aggregate_id = uuid.uuid4()
        recorder.insert_events([stored(aggregate_id, v) for v in range(1, 101)])

    Indexer(recorder).catch_up()

    keys = batch_keys(recorder)
    assert recorder.max_notification_id() == 1_200
    assert sequence_item(recorder)[schema.POSITIONS_PER_PAGE] == {"N": "1000"}
    assert [page for page, position in keys] == [p // 1000 for _, p in keys]
    assert {page for page, _ in keys} == {0, 1}
    assert ids(indexed.application_recorder(), 1, 2_000) == list(range(1, 1_201))


# Page boundaries -----------------------------------------------------------------


def test_a_batch_across_a_page_boundary_is_filed_on_its_last_page_and_read_from_both(
    factory: DynamoDBFactory,
) -> None:
    save_in_batches(sequence_recorder(factory), 12 * SAVE)
    keys = batch_keys(sequence_recorder(factory))
    assert (0, STRADDLING[0] - 1) in keys
    assert (1, STRADDLING[1]) in keys

    reader = sequence_recorder(factory)

    assert ids(reader, 950, 100) == list(range(950, 1_050))
    assert ids(reader, 990, 5) == list(range(990, 995))
    assert ids(reader, 1_000, 1) == [1_000]
    assert reader.select_notifications(start=990, limit=10, stop=992)[-1].id == 992
    assert reader.batch_end(990) == STRADDLING[1]


def test_a_missing_batch_at_the_end_of_a_page_is_reported_not_skipped(
    factory: DynamoDBFactory,
) -> None:
    writer = sequence_recorder(factory)
    save_in_batches(writer, 12 * SAVE)
    # The last batch filed on page 0 (883 to 980): after it, page 1 begins
    # with the batch ending at 1078.
    assert (1, STRADDLING[1]) in batch_keys(writer)
    writer.connection.call(
        "delete_item",
        TableName=writer.notifications_table_name,
        Key={schema.PAGE: {"N": "0"}, schema.POSITION: {"N": "980"}},
    )
    reader = sequence_recorder(factory)

    assert ids(reader, 870, 50) == list(range(870, 883))
    with pytest.raises(
        CorruptNotificationBatchError, match="no batch item holds positions 883 to 980"
    ):
        reader.select_notifications(start=883, limit=200)


# Tables written before page sizes were recorded ------------------------------------


def test_a_legacy_table_is_appended_to_on_its_pages_of_100000_positions(
    factory: DynamoDBFactory,
) -> None:
    last = write_legacy_table(sequence_recorder(factory), 12)
    writer = sequence_recorder(factory)  # has read nothing: learns as it saves

    save_in_batches(writer, 30)

    assert batch_keys(writer)[-1] == (0, last + 30)
    assert all(page == 0 for page, _ in batch_keys(writer))
    assert schema.POSITIONS_PER_PAGE not in sequence_item(writer)  # as it was
    reader = sequence_recorder(factory)
    assert ids(reader, 1, 2_000) == list(range(1, last + 31))
    assert reader.page_size == schema.LEGACY_PAGE_SIZE
    assert reader.batch_end(990) == STRADDLING[1]


def test_a_legacy_table_reads_across_1000_positions_from_its_one_page(
    factory: DynamoDBFactory,
) -> None:
    last = write_legacy_table(sequence_recorder(factory), 12)
    reader = sequence_recorder(factory)

    # Positions a page of 1,000 would file on page 1: here all on page 0.
    assert ids(reader, 1_050, 100) == list(range(1_050, 1_150))
    assert ids(reader, 950, 100) == list(range(950, 1_050))
    assert ids(reader, 1, 2_000) == list(range(1, last + 1))
    assert reader.batch_end(1_100) == 1_176


def test_the_indexer_appends_to_a_legacy_index_on_its_pages_of_100000_positions(
    indexed: DynamoDBFactory,
) -> None:
    recorder = indexed.application_recorder()
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    last = write_legacy_table(recorder, 12)
    saved = [uuid.uuid4() for _ in range(3)]
    for aggregate_id in saved:
        recorder.insert_events([stored(aggregate_id, 1)])

    Indexer(indexed.application_recorder()).catch_up()  # type: ignore[arg-type]

    assert batch_keys(recorder)[-1] == (0, last + 3)
    assert schema.POSITIONS_PER_PAGE not in sequence_item(recorder)
    tail = indexed.application_recorder().select_notifications(start=last + 1, limit=5)
    assert [n.originator_id for n in tail] == saved


def test_a_page_size_that_is_not_a_positive_number_is_refused_naming_it(
    factory: DynamoDBFactory,
) -> None:
    writer = sequence_recorder(factory)
    save_in_batches(writer, 3)
    writer.connection.call(
        "update_item",
        TableName=writer.notifications_table_name,
        Key={
            schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
            schema.POSITION: {"N": "0"},
        },
        UpdateExpression="SET #size = :zero",
        ExpressionAttributeNames={"#size": schema.POSITIONS_PER_PAGE},
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )

    with pytest.raises(DataError, match=r"positions_per_page = .* not a positive"):
        sequence_recorder(factory).select_notifications(start=1, limit=3)


def test_a_writer_that_assumed_another_page_size_files_by_the_tables(
    factory: DynamoDBFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = sequence_recorder(factory)
    save_in_batches(stale, 5)  # the table records 1,000, and so does ``stale``
    for page, position in [(0, 5), (schema.SEQUENCE_PAGE, 0)]:  # emptied...
        stale.connection.call(
            "delete_item",
            TableName=stale.notifications_table_name,
            Key={schema.PAGE: {"N": str(page)}, schema.POSITION: {"N": str(position)}},
        )
    monkeypatch.setattr(schema, "PAGE_SIZE", 10)
    save_in_batches(sequence_recorder(factory), 5)  # ...and written again: 10

    save_in_batches(stale, 10)  # positions 6 to 15, expected by ``stale``

    assert batch_keys(stale) == [(0, 5), (1, 15)]
    assert sequence_item(stale)[schema.POSITIONS_PER_PAGE] == {"N": "10"}
