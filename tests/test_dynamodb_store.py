"""ledger's DynamoDB event store: its promises, each checked on DynamoDB Local."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.utils import Environment
from hypothesis import given
from hypothesis import strategies as st

from ledger.dynamodb import (
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    ItemTooLargeError,
    TransactionTooLargeError,
    measure,
    schema,
)
from ledger.dynamodb.limits import MAX_TRANSACTION_ACTIONS


@pytest.fixture
def recorder(factory: DynamoDBFactory) -> DynamoDBApplicationRecorder:
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBApplicationRecorder)
    return made


def stored(aggregate_id: uuid.UUID, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(aggregate_id, version, "tests:Happened", state)


class Counter(Aggregate):
    """A tiny aggregate for application-level tests."""

    def __init__(self) -> None:
        self.count = 0
        self.amount = Decimal(0)

    @event("Incremented")
    def increment(self, amount: Decimal = Decimal(1)) -> None:
        self.count += 1
        self.amount += amount


class Counters(Application[uuid.UUID]):
    is_snapshotting_enabled = True


# Optimistic locking --------------------------------------------------------------


def test_second_writer_of_same_version_conflicts_and_first_event_is_intact(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    recorder.insert_events([stored(aggregate_id, 1, b"first")])

    with pytest.raises(IntegrityError, match="already has version 1"):
        recorder.insert_events([stored(aggregate_id, 1, b"second")])

    events = recorder.select_events(aggregate_id)
    assert [(e.originator_version, e.state) for e in events] == [(1, b"first")]
    assert recorder.max_notification_id() == 1


def test_save_of_two_aggregates_where_one_conflicts_writes_nothing(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    clean_id, taken_id = uuid.uuid4(), uuid.uuid4()
    recorder.insert_events([stored(taken_id, 1)])

    with pytest.raises(IntegrityError):
        recorder.insert_events([stored(clean_id, 1), stored(taken_id, 1)])

    assert recorder.select_events(clean_id) == []
    assert recorder.max_notification_id() == 1


def test_repeated_version_within_one_save_is_rejected_before_sending(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    with (
        measure(recorder) as meter,
        pytest.raises(IntegrityError, match="repeat an aggregate version"),
    ):
        recorder.insert_events([stored(aggregate_id, 1), stored(aggregate_id, 1)])
    assert meter.round_trips == 0


def test_two_processes_racing_for_the_sequence_keep_it_gap_free(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    env = {
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
    }
    first = DynamoDBFactory(Environment("race", env)).application_recorder()
    second = DynamoDBFactory(Environment("race", env)).application_recorder()

    # Each recorder's idea of the last position goes stale at every turn.
    positions = []
    for turn in range(6):
        writer = first if turn % 2 == 0 else second
        positions += writer.insert_events([stored(uuid.uuid4(), 1)]) or []

    assert positions == [1, 2, 3, 4, 5, 6]
    notifications = first.select_notifications(start=None, limit=10)
    assert [n.id for n in notifications] == [1, 2, 3, 4, 5, 6]


# DynamoDB's limits, checked before sending -------------------------------------------


def test_oversized_event_is_rejected_naming_the_aggregate_and_writes_nothing(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    big = stored(aggregate_id, 1, b"x" * (400 * 1024))

    with measure(recorder) as meter, pytest.raises(ItemTooLargeError) as raised:
        recorder.insert_events([big])

    message = str(raised.value)
    assert str(aggregate_id) in message
    assert "409,600 bytes" in message
    assert meter.round_trips == 0
    assert recorder.select_events(aggregate_id) == []
    assert recorder.max_notification_id() is None


def test_save_with_more_actions_than_a_transaction_allows_is_rejected(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    events = [stored(aggregate_id, v) for v in range(1, MAX_TRANSACTION_ACTIONS)]

    with pytest.raises(TransactionTooLargeError, match="limit is 100"):
        recorder.insert_events(events)

    assert recorder.select_events(aggregate_id) == []


def test_save_over_four_megabytes_is_rejected_and_writes_nothing(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    events = [stored(aggregate_id, v, b"x" * 390_000) for v in range(1, 12)]

    with pytest.raises(TransactionTooLargeError, match="4 MB"):
        recorder.insert_events(events)

    assert recorder.select_events(aggregate_id) == []


def test_large_save_keeps_notifications_as_pointers_and_reads_them_whole(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    states = [bytes([v]) * 150_000 for v in range(1, 5)]  # 600 KB in one save
    recorder.insert_events(
        [stored(aggregate_id, v, s) for v, s in enumerate(states, 1)]
    )

    notifications = recorder.select_notifications(start=None, limit=10)

    assert [n.state for n in notifications] == states
    assert [n.id for n in notifications] == [1, 2, 3, 4]


# Snapshots ---------------------------------------------------------------------------


def test_snapshot_never_replaces_an_event(factory: DynamoDBFactory) -> None:
    events = factory.application_recorder()
    snapshots = factory.aggregate_recorder("snapshots")
    aggregate_id = uuid.uuid4()
    events.insert_events([stored(aggregate_id, 1, b"event")])

    snapshots.insert_events([stored(aggregate_id, 1, b"snapshot")])

    assert [e.state for e in events.select_events(aggregate_id)] == [b"event"]
    assert [s.state for s in snapshots.select_events(aggregate_id)] == [b"snapshot"]


# Reads -----------------------------------------------------------------------------


def test_reads_page_through_more_than_one_megabyte_and_honour_limit(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    for start in range(1, 31, 10):  # 30 events of 100 KB: 3 MB, several pages
        recorder.insert_events(
            [stored(aggregate_id, v, b"x" * 100_000) for v in range(start, start + 10)]
        )

    with measure(recorder) as meter:
        everything = recorder.select_events(aggregate_id)
    newest_three = recorder.select_events(aggregate_id, desc=True, limit=3)
    middle = recorder.select_events(aggregate_id, gt=10, lte=20, limit=5)

    assert [e.originator_version for e in everything] == list(range(1, 31))
    assert meter.calls["Query"] > 1
    assert [e.originator_version for e in newest_three] == [30, 29, 28]
    assert [e.originator_version for e in middle] == [11, 12, 13, 14, 15]


# Retries and errors ------------------------------------------------------------------


def test_throttled_save_is_retried_and_succeeds_once(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    throttled: list[str] = []

    def throttle_first_transaction(request: Any, **_: Any) -> AWSResponse | None:
        target = request.headers.get("X-Amz-Target", b"")
        if b"TransactWriteItems" in target and not throttled:
            throttled.append("once")
            body = (
                b'{"__type":"ProvisionedThroughputExceededException",'
                b'"message":"slow down"}'
            )
            return AWSResponse(request.url, 400, {}, _Raw(body))
        return None

    events = recorder.connection.client.meta.events
    events.register_first("before-send.dynamodb", throttle_first_transaction)
    aggregate_id = uuid.uuid4()
    try:
        with measure(recorder) as meter:
            recorder.insert_events([stored(aggregate_id, 1), stored(aggregate_id, 2)])
    finally:
        events.unregister("before-send.dynamodb", throttle_first_transaction)

    assert throttled == ["once"]
    assert meter.calls["TransactWriteItems"] == 1
    assert meter.round_trips == 2
    assert [e.originator_version for e in recorder.select_events(aggregate_id)] == [
        1,
        2,
    ]
    assert recorder.max_notification_id() == 2


class _Raw:
    """The raw body botocore reads from an HTTP response."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def test_missing_table_without_create_table_is_a_clear_error(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    factory = DynamoDBFactory(
        Environment(
            "absent",
            {
                "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                "DYNAMODB_TABLE_PREFIX": table_prefix,
                "CREATE_TABLE": "no",
            },
        )
    )
    recorder = factory.application_recorder()

    with pytest.raises(ProgrammingError, match="CREATE_TABLE"):
        recorder.select_events(uuid.uuid4())


def test_unreachable_endpoint_is_an_operational_error_saying_where() -> None:
    factory = DynamoDBFactory(
        Environment(
            "nowhere",
            {
                "DYNAMODB_ENDPOINT_URL": "http://127.0.0.1:9",
                "DYNAMODB_MAX_ATTEMPTS": "1",
                "CREATE_TABLE": "no",
            },
        )
    )

    with pytest.raises(OperationalError, match="DYNAMODB_ENDPOINT_URL"):
        factory.application_recorder().max_notification_id()


def test_invalid_setting_names_the_key_and_the_fix(dynamodb_endpoint: str) -> None:
    with pytest.raises(OSError, match="DYNAMODB_MAX_ATTEMPTS"):
        DynamoDBFactory(
            Environment(
                "bad",
                {
                    "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                    "DYNAMODB_MAX_ATTEMPTS": "x",
                },
            )
        )


def test_events_stream_setting_must_be_yes_or_no(dynamodb_endpoint: str) -> None:
    with pytest.raises(OSError, match=r"DYNAMODB_EVENTS_STREAM 'maybe'.*'yes' or 'no'"):
        DynamoDBFactory(
            Environment(
                "bad",
                {
                    "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                    "DYNAMODB_EVENTS_STREAM": "maybe",
                },
            )
        )


@pytest.mark.parametrize(("setting", "expected"), [(None, True), ("no", False)])
def test_the_events_table_has_a_stream_unless_told_not_to(
    dynamodb_endpoint: str, table_prefix: str, setting: str | None, expected: bool
) -> None:
    env = {
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
    }
    if setting is not None:
        env["DYNAMODB_EVENTS_STREAM"] = setting
    factory = DynamoDBFactory(Environment("streams", env))
    factory.application_recorder()

    table = factory.connection.call(
        "describe_table", TableName=factory.table_name("events")
    )["Table"]
    stream = table.get("StreamSpecification", {})
    assert stream.get("StreamEnabled", False) is expected
    if expected:
        assert stream["StreamViewType"] == "NEW_IMAGE"
    factory.close()


# Applications ------------------------------------------------------------------------


def test_application_save_and_load_take_one_round_trip_each(
    dynamodb_env: dict[str, str],
) -> None:
    app = Counters()
    counter = Counter()
    counter.increment()
    app.save(counter)  # warm: the recorder learns the sequence position

    counter.increment()
    with measure(app) as save_meter:
        app.save(counter)
    with measure(app) as load_meter:
        loaded = app.repository.get(counter.id)

    assert loaded.count == 2
    assert save_meter.round_trips == 1
    assert load_meter.round_trips == 2  # snapshots enabled: snapshot query + events


def test_saving_two_aggregates_is_atomic(dynamodb_env: dict[str, str]) -> None:
    app = Counters()
    first, second = Counter(), Counter()
    app.save(first, second)
    stale = app.repository.get(second.id)
    second.increment()
    app.save(second)
    first.increment()
    stale.increment()

    with pytest.raises(IntegrityError):
        app.save(first, stale)

    assert app.repository.get(first.id).version == 1
    assert app.repository.get(second.id).version == 2


def test_encrypted_and_compressed_application_round_trips(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIPHER_KEY", AESCipher.create_key(16))
    monkeypatch.setenv("COMPRESSOR_TOPIC", "eventsourcing.compressor:ZlibCompressor")
    app = Counters()
    counter = Counter()
    counter.increment(Decimal("12.34"))
    app.save(counter)
    app.take_snapshot(counter.id)

    loaded = app.repository.get(counter.id)
    raw = app.recorder.select_events(counter.id)

    assert (loaded.count, loaded.amount) == (1, Decimal("12.34"))
    assert all(b"12.34" not in event.state for event in raw)


def test_racing_commands_on_one_aggregate_are_serialised_without_gaps(
    dynamodb_env: dict[str, str],
) -> None:
    app = Counters()
    counter = Counter()
    app.save(counter)
    successes: list[int] = []
    lock = threading.Lock()

    def command() -> None:
        for _ in range(5):
            while True:
                loaded = app.repository.get(counter.id)
                loaded.increment()
                try:
                    recordings = app.save(loaded)
                except IntegrityError:
                    continue  # another writer won this version: reload, retry
                with lock:
                    successes.extend(r.notification.id for r in recordings)
                break

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(command) for _ in range(8)]:
            future.result()

    final = app.repository.get(counter.id)
    versions = [e.originator_version for e in app.recorder.select_events(counter.id)]
    notifications = app.recorder.select_notifications(start=None, limit=1000)
    assert final.version == 1 + len(successes) == 41
    assert versions == list(range(1, 42))
    assert [n.id for n in notifications] == list(range(1, 42))
    # Commit order: positions follow versions.
    assert [n.originator_version for n in notifications] == versions


def test_lost_sequence_race_is_logged_with_positions_and_no_event_state(
    dynamodb_endpoint: str, table_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
    }
    first = DynamoDBFactory(Environment("logs", env)).application_recorder()
    second = DynamoDBFactory(Environment("logs", env)).application_recorder()
    first.insert_events([stored(uuid.uuid4(), 1, b"secret-payload")])

    with caplog.at_level("DEBUG", logger="ledger.dynamodb"):
        second.insert_events([stored(uuid.uuid4(), 1, b"secret-payload")])

    race = [r for r in caplog.records if "race" in r.getMessage()]
    assert [(r.levelname, r.expected, r.position) for r in race] == [("INFO", 0, 1)]
    assert all("secret-payload" not in str(vars(r)) for r in caplog.records)


def test_a_stop_inside_a_save_that_ends_on_the_next_page_is_still_read(
    recorder: DynamoDBApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "PAGE_SIZE", 10)  # pages of 10 positions
    recorder.insert_events([stored(uuid.uuid4(), v) for v in range(1, 8)])  # 1-7
    recorder.insert_events([stored(uuid.uuid4(), v) for v in range(1, 5)])  # 8-11

    notifications = recorder.select_notifications(start=9, limit=10, stop=9)

    assert [n.id for n in notifications] == [9]


def test_an_idle_poll_costs_one_get_item(recorder: DynamoDBApplicationRecorder) -> None:
    recorder.insert_events([stored(uuid.uuid4(), 1)])

    with measure(recorder) as meter:
        notifications = recorder.select_notifications(start=2, limit=10)

    assert notifications == []
    assert meter.calls == {"GetItem": 1}


# Bounded sequence reads --------------------------------------------------------------

_SAVE_SIZES = [1, 98, 3, 1, 1, 50, 97, 2, 1, 10]
"""Saves of every size, so reads start, stop and page inside and between batches."""
_LAST_POSITION = sum(_SAVE_SIZES)


def _topic(position: int) -> str:
    # "rare" is sparse, so topic-filtered reads must go on past their first window.
    return "tests:Rare" if position % 40 == 0 else f"tests:T{position % 3}"


@pytest.fixture
def sequence(
    recorder: DynamoDBApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, uuid.UUID, int, str]]:
    """Saves of ``_SAVE_SIZES`` on pages of 64 positions.

    Returns what was written: (position, aggregate id, version, topic).
    """
    monkeypatch.setattr(schema, "PAGE_SIZE", 64)
    written = []
    position = 0
    for size in _SAVE_SIZES:
        aggregate_id = uuid.uuid4()
        events = []
        for version in range(1, size + 1):
            position += 1
            written.append((position, aggregate_id, version, _topic(position)))
            events.append(
                StoredEvent(aggregate_id, version, _topic(position), b"%d" % position)
            )
        recorder.insert_events(events)
    return written


@given(
    query=st.fixed_dictionaries(
        {
            "start": st.none() | st.integers(0, _LAST_POSITION + 2),
            "limit": st.integers(1, 120),
            "stop": st.none() | st.integers(0, _LAST_POSITION + 2),
            "topics": st.sampled_from(
                [(), ("tests:Rare",), ("tests:T1",), ("tests:T0", "tests:Rare")]
            ),
            "inclusive_of_start": st.booleans(),
        }
    )
)
def test_bounded_reads_return_what_a_full_scan_would(
    recorder: DynamoDBApplicationRecorder,
    sequence: list[tuple[int, uuid.UUID, int, str]],
    query: dict[str, Any],
) -> None:
    start, stop, topics = query["start"], query["stop"], query["topics"]
    low = 1 if start is None else start + (0 if query["inclusive_of_start"] else 1)
    expected = [
        (position, aggregate_id, version, topic, b"%d" % position)
        for position, aggregate_id, version, topic in sequence
        if position >= low
        and (stop is None or position <= stop)
        and (not topics or topic in topics)
    ][: query["limit"]]

    notifications = recorder.select_notifications(**query)

    assert [
        (n.id, n.originator_id, n.originator_version, n.topic, n.state)
        for n in notifications
    ] == expected


def test_an_existing_table_with_other_key_types_is_refused_by_name(
    factory: DynamoDBFactory,
) -> None:
    name = factory.table_name("events")
    factory.connection.call(
        "create_table",
        **schema.table_definition(name, ("aggregate_id", "S"), ("version", "S")),
    )

    with pytest.raises(ProgrammingError, match=f"{name} exists with keys"):
        factory.application_recorder()


def test_a_non_uuid_aggregate_id_is_refused_before_anything_is_written(
    recorder: DynamoDBApplicationRecorder,
) -> None:
    event = StoredEvent("not-a-uuid", 1, "tests:Happened", b"{}")

    with pytest.raises(DataError, match="ORIGINATOR_ID_TYPE=text"):
        recorder.insert_events([event])

    assert recorder.max_notification_id() is None
