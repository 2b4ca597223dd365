"""Moving a notifications table of 100,000-position pages onto pages of 1,000.

Each test builds a table the way ledger wrote them before page sizes were
recorded (batches keyed by ``position // 100,000``, a sequence item without
a size: as ``tests/test_notification_pages.py`` does), past position
100,000 so that it has two old pages, and moves it with
``ledger.dynamodb.repaging.repage`` on DynamoDB Local. Faults are injected
on the wire with ``tests/faults.py``.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import Notification, OperationalError, StoredEvent
from eventsourcing.utils import Environment
from faults import CUT, LOSE_RESPONSE, FaultProxy

from aggregates.application import Orders
from ledger.dynamodb import (
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
    schema,
)
from ledger.dynamodb.batches import BatchEntry, batch_item
from ledger.dynamodb.repaging import remove_old_pages, repage
from ledger.indexer import Indexer
from tests.indexed_support import indexed_factory
from tests.test_notification_pages import write_notifications

SAVE = 98
"""Events per legacy batch: the most a save holds."""
TOPICS = ("tests:Happened", "tests:Rare")


@pytest.fixture
def old_pages_of_5000(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old pages of 5,000 positions: a table past its first page 20 times faster.

    Readers, writers and the move take the old size from
    ``schema.LEGACY_PAGE_SIZE`` each time they use it; one test keeps the
    real 100,000.
    """
    monkeypatch.setattr(schema, "LEGACY_PAGE_SIZE", 5_000)


@pytest.fixture
def progress_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress written after every 25 copies, so a small table has several."""
    monkeypatch.setattr("ledger.dynamodb.repaging._PROGRESS_EVERY", 1)


def legacy_batches() -> int:
    """Batches of a legacy table: just past its first old page."""
    return schema.LEGACY_PAGE_SIZE // SAVE + 5


def moving() -> int:
    """Batch items a move copies: all but those ending below 1,000 (same key)."""
    return legacy_batches() - 999 // SAVE


def write_legacy_table(
    recorder: DynamoDBApplicationRecorder, batches: int | None = None
) -> int:
    """Write ``batches`` (``legacy_batches()``) batches on the old pages, no
    size on the sequence item, as ledger wrote tables before sizes were recorded.

    Every 50th batch's events have the topic ``tests:Rare``. Returns the last
    position.
    """
    position = 0
    items = []
    for number in range(legacy_batches() if batches is None else batches):
        aggregate_id = str(uuid.uuid4())
        topic = TOPICS[1] if number % 50 == 0 else TOPICS[0]
        entries = [
            BatchEntry(aggregate_id, v, topic, b"{}") for v in range(1, SAVE + 1)
        ]
        items.append(batch_item(position + 1, entries, schema.LEGACY_PAGE_SIZE))
        position += SAVE
    write_notifications(recorder, items, position)
    return position


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


def batch_keys(recorder: DynamoDBApplicationRecorder) -> set[tuple[int, int]]:
    """Return (page, last position) of every batch item."""
    items = recorder.connection.items(
        "scan", TableName=recorder.notifications_table_name, ConsistentRead=True
    )
    return {
        (int(i[schema.PAGE]["N"]), int(i[schema.POSITION]["N"]))
        for i in items
        if int(i[schema.PAGE]["N"]) != schema.SEQUENCE_PAGE
    }


Read = tuple[int, int, tuple[str, ...]]
"""A read: (start, limit, topics)."""


def reads() -> list[Read]:
    old = schema.LEGACY_PAGE_SIZE
    return [
        (1, 2 * old, ()),  # everything, in windows as wide as the table
        (old - 50, 200, ()),  # across the old pages' boundary
        (950, 1_200, ()),  # across new pages
        (1_000, 1, ()),
        (old + 1, 300, ()),
        (1, 30, (TOPICS[1],)),  # rare topics: windows that double, past old pages
    ]


def read(recorder: DynamoDBApplicationRecorder, how: Read) -> list[Notification]:
    start, limit, topics = how
    return list(recorder.select_notifications(start, limit, topics=topics))


def fresh_reader(factory: DynamoDBFactory) -> DynamoDBApplicationRecorder:
    """A recorder that has read nothing of the table yet."""
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBApplicationRecorder)
    return made


def reads_of(factory: DynamoDBFactory) -> dict[Read, list[Notification]]:
    reader = fresh_reader(factory)
    found: dict[Read, list[Notification]] = {how: read(reader, how) for how in reads()}
    found[0, 0, ("max",)] = [reader.max_notification_id()]  # type: ignore[list-item]
    return found


@pytest.mark.parametrize(
    "old_page_size",
    [pytest.param(100_000, marks=pytest.mark.slow), 5_000],
)
def test_a_legacy_table_moved_onto_pages_of_1000_reads_the_same(
    factory: DynamoDBFactory, old_page_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "LEGACY_PAGE_SIZE", old_page_size)
    last = write_legacy_table(fresh_reader(factory))
    before = reads_of(factory)
    old_keys = batch_keys(fresh_reader(factory))

    moved = repage(fresh_reader(factory))

    assert (moved.copied, moved.last_position, moved.already) == (
        moving(),
        last,
        False,
    )
    assert sequence_item(fresh_reader(factory))[schema.POSITIONS_PER_PAGE] == {
        "N": "1000"
    }
    assert reads_of(factory) == before
    assert before[reads()[0]][-1].id == last
    new_keys = {(position // 1000, position) for _, position in old_keys}
    assert batch_keys(fresh_reader(factory)) == old_keys | new_keys
    assert repage(fresh_reader(factory)).already is True


def test_writers_of_either_page_size_append_on_the_new_pages_after_the_move(
    factory: DynamoDBFactory, old_pages_of_5000: None
) -> None:
    last = write_legacy_table(fresh_reader(factory))
    stale = fresh_reader(factory)
    stale.insert_events([StoredEvent(uuid.uuid4(), 1, TOPICS[0], b"{}")])
    assert stale.page_size == schema.LEGACY_PAGE_SIZE

    repage(fresh_reader(factory))
    stale.insert_events([StoredEvent(uuid.uuid4(), 1, TOPICS[0], b"{}")])
    fresh_reader(factory).insert_events(
        [StoredEvent(uuid.uuid4(), v, TOPICS[0], b"{}") for v in (1, 2)]
    )

    keys = batch_keys(fresh_reader(factory))
    old_page, new_page = last // schema.LEGACY_PAGE_SIZE, last // 1000
    assert (old_page, last + 1) in keys  # before the move, on its old page...
    assert (new_page, last + 1) in keys  # ...and copied
    assert (new_page, last + 2) in keys  # after it, by the stale writer too
    assert (old_page, last + 2) not in keys
    assert (new_page, last + 4) in keys
    assert [n.id for n in read(stale, (last - 5, 100, ()))] == list(
        range(last - 5, last + 5)
    )


def test_old_keys_removed_after_the_move_leave_the_same_reads(
    factory: DynamoDBFactory, old_pages_of_5000: None
) -> None:
    write_legacy_table(fresh_reader(factory))
    before = reads_of(factory)
    repage(fresh_reader(factory))

    removed = remove_old_pages(fresh_reader(factory))

    assert removed == moving()
    assert all(
        page == position // 1000 for page, position in batch_keys(fresh_reader(factory))
    )
    assert reads_of(factory) == before
    assert remove_old_pages(fresh_reader(factory)) == 0


def test_old_keys_are_not_removed_before_the_move(
    factory: DynamoDBFactory, old_pages_of_5000: None
) -> None:
    write_legacy_table(fresh_reader(factory))

    with pytest.raises(Exception, match="move it first"):
        remove_old_pages(fresh_reader(factory))


class QueryCounter:
    """A recorder's connection, counting the Queries it has answered."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.queries = 0

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.connection.call(operation, **params)
        if operation == "query":
            self.queries += 1
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


class LearnsTheSizeMidRead(DynamoDBApplicationRecorder):
    """A recorder another of whose threads reads the sequence item mid-read.

    Once armed, the first time this recorder's page size is taken after a
    Query was answered, another thread reads the sequence item (learning the
    table's size, switched meanwhile) before the size taken is used.
    """

    armed = False

    @property
    def page_size(self) -> int:
        size = super().page_size
        counter = self.connection
        if self.armed and isinstance(counter, QueryCounter) and counter.queries:
            self.armed = False
            other = threading.Thread(target=self.max_notification_id)
            other.start()
            other.join()
        return size


def test_a_read_that_started_on_the_old_pages_reads_them_though_the_size_changes(
    factory: DynamoDBFactory, old_pages_of_5000: None
) -> None:
    last = write_legacy_table(fresh_reader(factory), batches=70)
    made = fresh_reader(factory)
    reader = LearnsTheSizeMidRead(
        QueryCounter(made.connection),  # type: ignore[arg-type]
        made.events_table_name,
        made.notifications_table_name,
    )
    assert reader.max_notification_id() == last  # it holds the old size
    start, limit = 4_950, 1_150  # the old page 0 then across new pages 5 and 6
    assert start + limit < last
    repage(fresh_reader(factory))

    reader.armed = True
    notifications = reader.select_notifications(start, limit)

    assert [n.id for n in notifications] == list(range(start, start + limit))
    assert reader.max_notification_id() == last
    assert reader.page_size == 1_000  # and the next read files by the new size
    assert len(reader.select_notifications(start, limit)) == limit


def test_an_answer_read_before_the_move_takes_no_recorder_back_to_the_old_size(
    factory: DynamoDBFactory, old_pages_of_5000: None
) -> None:
    last = write_legacy_table(fresh_reader(factory), batches=70)
    reader = fresh_reader(factory)
    stale = sequence_item(reader)  # answered before the switch...
    repage(fresh_reader(factory))
    assert reader.max_notification_id() == last
    assert reader.page_size == 1_000

    reader._learn_page_size(stale)  # ...and handled after it

    assert reader.page_size == 1_000
    assert len(reader.select_notifications(4_950, 1_150)) == 1_150


@pytest.fixture
def proxied(
    dynamodb_endpoint: str, table_prefix: str
) -> Iterator[tuple[FaultProxy, DynamoDBFactory]]:
    with FaultProxy(dynamodb_endpoint) as proxy:
        made = DynamoDBFactory(
            Environment(
                "ledger_test",
                {
                    "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
                    "DYNAMODB_TABLE_PREFIX": table_prefix,
                    "DYNAMODB_MAX_ATTEMPTS": "2",
                    "DYNAMODB_EVENTS_STREAM": "no",
                },
            )
        )
        yield proxy, made
        made.close()


def test_a_move_killed_while_copying_is_resumed_by_the_next_run(
    proxied: tuple[FaultProxy, DynamoDBFactory],
    old_pages_of_5000: None,
    progress_every_chunk: None,
) -> None:
    proxy, factory = proxied
    last = write_legacy_table(fresh_reader(factory))
    before = reads_of(factory)
    # After the move's first 25 copies and their progress, the connection is
    # cut at each BatchWriteItem: the run dies.
    written = len([op for op, _ in proxy.requests if op == "BatchWriteItem"])
    proxy.on("BatchWriteItem", fault=CUT, nth=written + 2, times=None)

    with pytest.raises(OperationalError):
        repage(fresh_reader(factory))
    during = reads_of(factory)  # readers go on, on the old pages
    proxy.clear_rules()
    resumed = repage(fresh_reader(factory))

    assert during == before
    assert resumed.copied == moving() - 25  # what was copied stayed copied
    assert resumed.last_position == last
    assert reads_of(factory) == before
    new_keys = {(p // 1000, p) for _, p in batch_keys(fresh_reader(factory))}
    assert new_keys <= batch_keys(fresh_reader(factory))


def test_a_move_whose_switch_lost_its_answer_ends_switched(
    proxied: tuple[FaultProxy, DynamoDBFactory], old_pages_of_5000: None
) -> None:
    proxy, factory = proxied
    write_legacy_table(fresh_reader(factory))
    before = reads_of(factory)
    lost = proxy.on("UpdateItem", fault=LOSE_RESPONSE)

    moved = repage(fresh_reader(factory))

    assert lost.fired == 1
    assert moved.already is False
    assert sequence_item(fresh_reader(factory))[schema.POSITIONS_PER_PAGE] == {
        "N": "1000"
    }
    assert reads_of(factory) == before


def check_reads(
    reader: DynamoDBApplicationRecorder, written: dict[int, tuple[Any, int]]
) -> int:
    """Read a random window; check it is gap-free and holds what was written.

    Returns how many notifications it read.
    """
    old = schema.LEGACY_PAGE_SIZE
    start = random.choice([1, 950, old - 100, old - 10, old + 100, old + 200])
    notifications = reader.select_notifications(start, random.choice([1, 150, 3_000]))
    ids = [n.id for n in notifications]
    assert ids == list(range(start, start + len(ids)))
    for notification in notifications:
        if notification.id in written:
            assert written[notification.id] == (
                notification.originator_id,
                notification.originator_version,
            )
    return len(ids)


def test_readers_and_a_writer_go_on_throughout_a_move(
    factory: DynamoDBFactory, old_pages_of_5000: None, progress_every_chunk: None
) -> None:
    write_legacy_table(fresh_reader(factory))
    expected = {
        n.id: (n.originator_id, n.originator_version)
        for n in read(fresh_reader(factory), reads()[0])
    }
    writer = fresh_reader(factory)
    long_lived = fresh_reader(factory)
    stop = threading.Event()
    failures: list[BaseException] = []
    reads_done = 0

    def save() -> None:
        aggregate_id = uuid.uuid4()
        events = [StoredEvent(aggregate_id, v, TOPICS[0], b"{}") for v in (1, 2)]
        positions = writer.insert_events(events) or []
        for position, event in zip(positions, events, strict=True):
            expected[position] = (aggregate_id, event.originator_version)

    def read_on() -> None:
        nonlocal reads_done
        try:
            while not stop.is_set():
                reads_done += check_reads(long_lived, expected)
                reads_done += check_reads(fresh_reader(factory), expected)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    saves_left = 8

    def at_each_progress(through: int, last: int) -> None:
        nonlocal saves_left
        # A save at every step, the one after the last copy included: the
        # first switch fails on it, and its batch is copied before the next.
        if saves_left:
            saves_left -= 1
            save()
        check_reads(fresh_reader(factory), expected)

    reader = threading.Thread(target=read_on)
    reader.start()
    try:
        save()
        moved = repage(fresh_reader(factory), progress=at_each_progress)
        save()
    finally:
        stop.set()
        reader.join()

    assert not failures, failures
    assert reads_done > 0
    assert saves_left == 0
    # Switched after the saves made at its steps, the last one's included
    # (its first switch failed on it), before the one after it.
    assert moved.last_position == max(expected) - 2
    everything = read(fresh_reader(factory), reads()[0])
    assert [n.id for n in everything] == sorted(expected)
    assert {
        n.id: (n.originator_id, n.originator_version) for n in everything
    } == expected


def test_an_indexed_table_is_moved_while_the_indexer_appends(
    dynamodb_endpoint: str,
    table_prefix: str,
    old_pages_of_5000: None,
    progress_every_chunk: None,
) -> None:
    factory = indexed_factory(dynamodb_endpoint, table_prefix)
    try:
        recorder = factory.application_recorder()
        assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
        last = write_legacy_table(recorder)
        indexer = Indexer(recorder)  # type: ignore[arg-type]
        saved: list[uuid.UUID] = []

        def save_and_index(through: int, up_to: int) -> None:
            if len(saved) < 4:
                saved.append(uuid.uuid4())
                recorder.insert_events([StoredEvent(saved[-1], 1, TOPICS[0], b"{}")])
                indexer.catch_up()

        before = reads_of(factory)
        moved = repage(fresh_reader(factory), progress=save_and_index)
        saved.append(uuid.uuid4())
        recorder.insert_events([StoredEvent(saved[-1], 1, TOPICS[0], b"{}")])
        indexer.catch_up()

        tail = fresh_reader(factory).select_notifications(last + 1, 10)
        assert [n.originator_id for n in tail] == saved
        assert moved.last_position >= last + 1
        keys = batch_keys(recorder)
        assert (last // 1000, last + len(saved)) in keys
        assert (last // schema.LEGACY_PAGE_SIZE, last + len(saved)) not in keys
        after = reads_of(factory)
        for how in reads()[1:]:
            if how[0] <= last - 500:
                assert after[how] == before[how]
    finally:
        factory.close()


def test_ledger_index_repage_moves_a_legacy_table_and_says_what_it_did(
    orders: Orders, ledger: Any
) -> None:
    recorder = orders.recorder
    assert isinstance(recorder, DynamoDBApplicationRecorder)
    last = write_legacy_table(recorder, batches=20)  # 10 end past 1,000
    before = read(fresh_reader_of(orders), (1, 3_000, ()))

    helped = ledger("index", "repage", "--help")
    moved = ledger("index", "repage", "--json")
    again = ledger("index", "repage", "--remove-old-pages")

    assert "Writers and readers need not stop" in " ".join(helped.stdout.split())
    assert "Costs:" in helped.stdout
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout) == {
        "copied": 10,
        "last_position": last,
        "page_size": 1000,
        "already": False,
        "removed": 0,
    }
    assert again.returncode == 0, again.stderr
    assert "already on pages of 1000 positions" in again.stdout
    assert "removed 10 items under old keys" in again.stdout
    assert read(fresh_reader_of(orders), (1, 3_000, ())) == before


def fresh_reader_of(orders: Orders) -> DynamoDBApplicationRecorder:
    """A recorder of the application's tables that has read nothing yet."""
    made = Orders(env=dict(orders.env)).recorder
    assert isinstance(made, DynamoDBApplicationRecorder)
    return made


def test_ledger_index_repage_keeps_the_old_keys_in_the_run_that_moves_the_table(
    orders: Orders, ledger: Any
) -> None:
    """Readers from before the switch may still use the old keys: not that run."""
    recorder = orders.recorder
    assert isinstance(recorder, DynamoDBApplicationRecorder)
    write_legacy_table(recorder, batches=20)
    before = read(fresh_reader_of(orders), (1, 3_000, ()))

    moved = ledger("index", "repage", "--remove-old-pages", "--json")

    assert moved.returncode == 1
    assert json.loads(moved.stdout)["removed"] == 0
    assert "were not removed" in moved.stderr
    assert read(fresh_reader_of(orders), (1, 3_000, ())) == before
