"""`skip-batch` on ``DYNAMODB_ORDERING=indexed``: a damaged index batch is gone
past with its events found in the events table, each applied once, in an
order the index could have given them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from eventsourcing.persistence import (
    DataError,
    Notification,
    OperationalError,
    Tracking,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregates.application import Orders
from aggregates.order import Order, OrderStatus
from ledger.dynamodb import (
    CorruptNotificationBatchError,
    IndexWaitTimeoutError,
    measure,
    schema,
)
from ledger.dynamodb.indexed_recorders import _index_order, _SavePlace, _Unindexed
from ledger.indexer import Indexer
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.history import decode
from ledger.projections.sequence import SequenceFeed, session_for
from ledger.projections.session import Session
from projections.orders import OrderProjector, get_order_summary
from tests.test_corrupt_batches import damage_batch, delete_batch
from tests.test_projections_core import ITEM

DAMAGED = {schema.EVENTS: {"B": b"\x07damaged"}}

Key = tuple[uuid.UUID, int]


@pytest.fixture
def env(
    streamed: None, dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """This test's applications and `ledger` processes use the indexed ordering."""
    dynamodb_env["DYNAMODB_ORDERING"] = "indexed"
    monkeypatch.setenv("DYNAMODB_ORDERING", "indexed")
    return dynamodb_env


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Orders]:
    made = Orders(env=env)
    # DynamoDB Local's stream times are this machine's clock.
    made.recorder.skip_clock_margin = 1.0
    yield made
    made.close()


@dataclass
class History:
    """Three rounds of the indexer; the second's batch is the one damaged."""

    low: int
    high: int
    batch: list[Notification]
    """The damaged batch's notifications, read before the damage."""
    saves: list[list[Key]]
    """The batch's saves, each in its order."""
    orders: list[uuid.UUID]


def indexed_history(app: Orders) -> History:
    """Save and index three rounds; damage the batch of the second.

    The second round holds four saves: a confirmation of an order placed in
    the first round, a save of two new orders (four events, one save across
    two aggregates), and a confirmation of one of them; the third round
    holds later versions of the first order and of the other new one.
    """
    indexer = Indexer(app.recorder)
    first = app.place_order(uuid.uuid4(), [ITEM])
    indexer.catch_up()
    low = app.recorder.max_notification_id()
    assert low is not None
    low += 1
    app.confirm(first)
    two = Order.place(uuid.uuid4(), [ITEM], "EUR")
    three = Order.place(uuid.uuid4(), [ITEM], "EUR")
    app.save(two, three)
    app.confirm(two.id)
    indexer.catch_up()
    high = app.recorder.max_notification_id()
    assert high == low + 5
    assert app.recorder.batch_end(low) == high  # one batch holds the round
    batch = list(app.recorder.select_notifications(low, high - low + 1))
    app.ship(first, "TRACK-1")
    app.confirm(three.id)
    indexer.catch_up()
    damage_batch(app, high, **DAMAGED)
    saves = [
        [(first, 3)],
        [(two.id, 1), (two.id, 2), (three.id, 1), (three.id, 2)],
        [(two.id, 3)],
    ]
    return History(low, high, batch, saves, [first, two.id, three.id])


def keys_of(notifications: Sequence[Notification]) -> list[Key]:
    return [(n.originator_id, n.originator_version) for n in notifications]


def assert_in_an_index_order(found: Sequence[Notification], history: History) -> None:
    """Each aggregate's versions ascend; each save is contiguous, in its order."""
    keys = keys_of(found)
    by_aggregate: dict[uuid.UUID, list[int]] = {}
    for aggregate, version in keys:
        by_aggregate.setdefault(aggregate, []).append(version)
    assert all(v == sorted(v) for v in by_aggregate.values()), keys
    for save in history.saves:
        start = keys.index(save[0])
        assert keys[start : start + len(save)] == save, keys


def summaries_match(app: Orders, feed: SequenceFeed, orders: list[uuid.UUID]) -> None:
    view = feed.projector.view
    for order_id in orders:
        summary = get_order_summary(view, order_id)
        order = app.get_order(order_id)
        assert summary is not None, order_id
        assert (summary.status, summary.total) == (order.status, order.total)


@pytest.fixture
def feed(app: Orders, env: dict[str, str]) -> SequenceFeed:
    view = open_view(OrderProjector, env)
    return SequenceFeed(OrderProjector(view, event_loader(app)), app)


def test_the_damaged_batchs_events_are_found_once_each_at_its_positions_in_an_index_order(  # noqa: E501
    app: Orders,
) -> None:
    history = indexed_history(app)

    found = app.recorder.notifications_from_events(history.low, history.high)

    assert [n.id for n in found] == list(range(history.low, history.high + 1))
    assert sorted(keys_of(found)) == sorted(keys_of(history.batch))
    states = {(n.originator_id, n.originator_version): n for n in history.batch}
    assert all(
        (n.topic, n.state)
        == (
            states[n.originator_id, n.originator_version].topic,
            states[n.originator_id, n.originator_version].state,
        )
        for n in found
    )
    assert_in_an_index_order(found, history)


def test_skip_batch_applies_the_damaged_index_batch_and_the_projection_goes_on(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    feed.poll()
    assert feed.blocked is not None
    assert feed.position == history.low - 1

    applied = feed.skip_batch(history.low)

    assert applied == history.high - history.low + 1
    assert feed.position == history.high
    assert feed.blocked is None
    assert feed.poll() == 2  # the third round's events
    summaries_match(app, feed, history.orders)
    first = get_order_summary(feed.projector.view, history.orders[0])
    assert first is not None
    assert first.status is OrderStatus.SHIPPED


def test_saves_made_and_indexed_while_skip_batch_reads_are_told_from_the_batch(
    app: Orders, env: dict[str, str]
) -> None:
    history = indexed_history(app)
    writer = Orders(env=env)
    pending = [writer.place_order(uuid.uuid4(), [ITEM]) for _ in range(5)]
    indexing = Orders(env=env)
    indexer = Indexer(indexing.recorder)
    indexer.interval = 0.05
    stop = threading.Event()

    def keep_saving() -> None:
        while not stop.is_set():
            writer.place_order(uuid.uuid4(), [ITEM])

    def index_once_scanned(reading: dict[str, int]) -> None:
        # The pending saves are neither indexed at the head read nor when
        # the events table is scanned: only after, while skip-batch waits.
        deadline = time.monotonic() + 30
        while not reading.get("Scan") and time.monotonic() < deadline:
            time.sleep(0.01)
        # Saves stop with the Scan: DynamoDB Local rounds stream record
        # times down to the minute, so under saves that never stop
        # skip-batch would wait for the indexer to catch up entirely, or
        # for the next minute.
        stop.set()
        indexer.start()

    saving = threading.Thread(target=keep_saving)
    try:
        with measure(app) as reading:
            starter = threading.Thread(target=index_once_scanned, args=(reading.calls,))
            starter.start()
            saving.start()
            found = app.recorder.notifications_from_events(history.low, history.high)
            starter.join()
    finally:
        stop.set()
        saving.join()
        indexer.stop()

    assert sorted(keys_of(found)) == sorted(keys_of(history.batch))
    assert [n.id for n in found] == list(range(history.low, history.high + 1))
    assert_in_an_index_order(found, history)
    assert reading.calls["Scan"] == 1
    assert reading.calls["GetItem"] > 1  # it read the head again, waiting
    assert writer.recorder.wait_indexed(
        [e for order in pending for e in writer.recorder.select_events(order)],
        timeout=30,
    )
    writer.close()
    indexing.close()


def test_skip_batch_with_saves_pending_and_no_indexer_running_says_so_and_moves_nothing(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    app.place_order(uuid.uuid4(), [ITEM])  # saved, never indexed: no indexer runs
    feed.poll()
    app.recorder.skip_wait_timeout = 1.5  # the clock margin (1 s), and a little

    with pytest.raises(IndexWaitTimeoutError, match="indexer") as raised:
        feed.skip_batch(history.low)

    assert "not indexed yet" in str(raised.value)
    assert "the indexer looks stopped" in str(raised.value)
    assert "Nothing was applied" in str(raised.value)
    assert feed.position == history.low - 1
    assert get_order_summary(feed.projector.view, history.orders[1]) is None


def test_a_skip_batch_timeout_below_the_clock_margin_is_refused_before_any_read(
    app: Orders, feed: SequenceFeed
) -> None:
    """It waits at least the margin after its Scan: a shorter timeout could
    only fail, after reading the events table and the index whole."""
    history = indexed_history(app)
    feed.poll()
    app.recorder.skip_clock_margin = 5.0
    app.recorder.skip_wait_timeout = 2.0

    with measure(app) as reading, pytest.raises(ValueError, match=r"at least 5\.0 s"):
        app.recorder.notifications_from_events(history.low, history.high)
    with pytest.raises(ValueError, match="skip_clock_margin"):
        feed.skip_batch(history.low)

    assert reading.calls == {}
    assert feed.position == history.low - 1


def test_skip_batch_when_the_events_table_lacks_an_event_of_the_batch_says_so(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    lost = history.saves[2][0]
    app.recorder.connection.call(
        "delete_item",
        TableName=app.recorder.events_table_name,
        Key={
            schema.AGGREGATE_ID: {"S": str(lost[0])},
            schema.VERSION: {"N": str(lost[1])},
        },
    )
    feed.poll()

    with pytest.raises(DataError, match="the events table lacks events"):
        feed.skip_batch(history.low)

    assert feed.position == history.low - 1


def test_skip_batch_refuses_while_another_index_batch_cannot_be_read(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    head = app.recorder.max_notification_id()
    damage_batch(app, head, **DAMAGED)
    feed.poll()

    with pytest.raises(DataError, match=f"Positions {history.high + 1} to {head}"):
        feed.skip_batch(history.low)

    assert feed.position == history.low - 1


def test_the_cli_goes_past_a_damaged_index_batch(
    app: Orders, env: dict[str, str], ledger
) -> None:
    history = indexed_history(app)

    stopped = ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")
    skipped = ledger(
        "projections", "skip-batch", "OrderViews", "--position", str(history.low)
    )
    ran = ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")

    assert stopped.returncode == 1
    assert f"position {history.high}" in stopped.stderr
    assert skipped.returncode == 0, skipped.stderr
    assert f"applied {history.high - history.low + 1} events" in skipped.stdout
    assert ran.returncode == 0, ran.stderr
    assert "processed 2 events" in ran.stdout
    readers = open_view(OrderProjector, env)
    for order_id in history.orders:
        summary = get_order_summary(readers, order_id)
        assert summary is not None
        assert summary.status is app.get_order(order_id).status


def test_skip_batch_past_a_missing_index_batch_applies_its_events_once(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    head = app.recorder.max_notification_id()
    delete_batch(app, history.high)
    feed.poll()
    assert feed.blocked is not None

    # No key says where a missing batch ended: skip-batch goes to the end of
    # the next batch, whose events come from that batch.
    applied = feed.skip_batch(history.low)

    assert feed.position == head
    assert applied == head - history.low + 1
    summaries_match(app, feed, history.orders)


def delete_event(app: Orders, key: Key) -> None:
    """Delete an event item, as an operator's mistake or a bad restore would."""
    app.recorder.connection.call(
        "delete_item",
        TableName=app.recorder.events_table_name,
        Key={
            schema.AGGREGATE_ID: {"S": str(key[0])},
            schema.VERSION: {"N": str(key[1])},
        },
    )


def test_events_lost_from_the_batch_while_as_many_are_saved_are_refused(
    app: Orders, feed: SequenceFeed, env: dict[str, str]
) -> None:
    history = indexed_history(app)
    lost = [history.saves[0][0], history.saves[2][0]]
    for key in lost:
        delete_event(app, key)
    # A save of two events, as many as were lost: in no batch when the
    # events table is scanned, indexed after.
    pending = app.place_order(uuid.uuid4(), [ITEM])
    assert len(list(app.recorder.select_events(pending))) == len(lost)
    indexing = Orders(env=env)
    indexed: list[int] = []

    def index_once_scanned(**_: object) -> None:
        if not indexed:
            indexed.append(Indexer(indexing.recorder).catch_up())

    app.recorder.connection.client.meta.events.register(
        "after-call.dynamodb.Scan", index_once_scanned
    )
    feed.poll()

    with pytest.raises(DataError, match="the events table lacks events"):
        feed.skip_batch(history.low)

    assert indexed
    assert feed.position == history.low - 1
    assert get_order_summary(feed.projector.view, pending) is None
    indexing.close()


def test_a_lost_event_is_refused_though_saves_made_meanwhile_make_up_the_count(
    app: Orders, feed: SequenceFeed, env: dict[str, str]
) -> None:
    history = indexed_history(app)
    delete_event(app, history.saves[2][0])
    other = Orders(env=env)
    indexer = Indexer(other.recorder)
    first, second = (other.place_order(uuid.uuid4(), [ITEM]) for _ in range(2))
    indexer.catch_up()
    other.confirm(first)  # pending when skip-batch reads the head
    scanned: list[bool] = []
    head_reads_since = [0]

    def before_the_scan(**_: object) -> None:
        if not scanned:
            scanned.append(True)
            indexer.catch_up()  # the first confirmation: indexed past the head
            other.confirm(second)  # pending when scanned: one event more

    def index_at_the_second_read_since(**_: object) -> None:
        # The second confirmation is indexed only once skip-batch has read
        # the index again (a slow indexer): the count of events in no batch
        # then equals the batch's positions, one of them that confirmation.
        if scanned:
            head_reads_since[0] += 1
            if head_reads_since[0] == 2:
                indexer.catch_up()

    events = app.recorder.connection.client.meta.events
    events.register("before-call.dynamodb.Scan", before_the_scan)
    events.register("before-call.dynamodb.GetItem", index_at_the_second_read_since)
    feed.poll()

    with pytest.raises(DataError, match="the events table lacks events"):
        feed.skip_batch(history.low)

    assert feed.position == history.low - 1
    summary = get_order_summary(feed.projector.view, second)
    assert summary is None or summary.status is not OrderStatus.CONFIRMED
    other.close()


@pytest.mark.parametrize("way_in", ["a skip cut short", "read before the damage"])
def test_a_projection_standing_inside_the_damaged_batch_is_refused(
    app: Orders, feed: SequenceFeed, monkeypatch: pytest.MonkeyPatch, way_in: str
) -> None:
    """The order the batch held is gone: which of its events the projection
    applied, and so which are left, cannot be told. Taking them by the
    computed order would apply one twice and miss another whenever that
    order differs from the batch's."""
    history = indexed_history(app)
    feed.poll()  # the first round; stopped at the damaged batch
    if way_in == "a skip cut short":
        # One event per commit (its two read-model items and its tracking),
        # the second commit refused.
        monkeypatch.setattr(feed.projector.view, "max_actions", 3, raising=False)
        commit = feed.projector.commit
        commits = [0]

        def refuse_the_second(session: Session) -> None:
            commits[0] += 1
            if commits[0] == 2:
                raise OperationalError("throttled")
            commit(session)

        monkeypatch.setattr(feed.projector, "commit", refuse_the_second)
        with pytest.raises(OperationalError):
            feed.skip_batch(history.low)
        monkeypatch.setattr(feed.projector, "commit", commit)
    else:
        # Its first event applied by a run before the batch was damaged (a
        # page that ended inside the batch): the batch's own first event.
        first = history.batch[0]
        feed.projector.apply_batch(
            session_for(feed.projector, app.name),
            [(decode(app.mapper, first), Tracking(app.name, first.id))],
        )
        feed.runner.reload()
    reached = feed.position
    assert history.low <= reached < history.high
    view_before = sorted(map(str, feed.projector.view.stored_items()))

    with pytest.raises(DataError, match="stands inside the unreadable positions"):
        feed.skip_batch(reached + 1)

    assert feed.position == reached
    assert sorted(map(str, feed.projector.view.stored_items())) == view_before


def test_skip_batch_while_a_reindex_is_under_way_says_it_cannot_pass_the_batch(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    app.place_order(uuid.uuid4(), [ITEM])  # saved, not indexed
    with pytest.raises(CorruptNotificationBatchError):
        Indexer(app.recorder).reindex(timeout=30)  # stops at the damaged batch
    feed.poll()
    app.recorder.skip_wait_timeout = 1

    with pytest.raises(IndexWaitTimeoutError, match="re-index") as raised:
        feed.skip_batch(history.low)

    assert "--source scan" in str(raised.value)
    assert feed.position == history.low - 1


GONE_SHARD = "shardId-00000000000000000000-00000000"
"""A shard the stream does not list (DynamoDB Streams stopped listing it)."""


def checkpoint_a_shard_gone(app: Orders, *, read_to_its_end: bool) -> None:
    """Give the indexer's checkpoints item a shard the stream no longer lists.

    As if the shard's records expired while the indexer was stopped: it
    checkpointed the shard, and recorded reading it to its end or not.
    """
    update = "SET #cp.#gone = :at"
    values: dict[str, dict[str, object]] = {":at": {"S": "100"}}
    if read_to_its_end:
        update += " ADD #ended :gone"
        values[":gone"] = {"SS": [GONE_SHARD]}
    names = {"#cp": schema.SHARD_CHECKPOINTS, "#gone": GONE_SHARD}
    if read_to_its_end:
        names["#ended"] = schema.ENDED_SHARDS
    app.recorder.connection.call(
        "update_item",
        TableName=app.recorder.notifications_table_name,
        Key=schema.index_checkpoints_key(),
        UpdateExpression=update,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
        ConditionExpression="attribute_exists(#cp)",
    )


def test_skip_batch_refuses_while_a_checkpointed_shard_left_the_stream_unread(
    app: Orders, feed: SequenceFeed
) -> None:
    """Its records may have expired unindexed: saves the index lacks could then
    stand in for events lost from the events table."""
    history = indexed_history(app)
    checkpoint_a_shard_gone(app, read_to_its_end=False)
    feed.poll()
    view_before = sorted(map(str, feed.projector.view.stored_items()))

    with pytest.raises(DataError, match="stream no longer lists") as raised:
        feed.skip_batch(history.low)

    assert GONE_SHARD in str(raised.value)
    assert "Nothing was applied" in str(raised.value)
    assert feed.position == history.low - 1
    assert sorted(map(str, feed.projector.view.stored_items())) == view_before


def test_skip_batch_goes_past_a_shard_gone_from_the_stream_once_read_to_its_end(
    app: Orders, feed: SequenceFeed
) -> None:
    history = indexed_history(app)
    checkpoint_a_shard_gone(app, read_to_its_end=True)
    feed.poll()

    applied = feed.skip_batch(history.low)

    assert applied == history.high - history.low + 1
    assert feed.position == history.high


def uncheckpoint_the_listed_shards(app: Orders, last_found_empty: float) -> list[str]:
    """Leave the stream's shards without a checkpoint, last found empty then.

    As if the indexer stopped while they held nothing and had no checkpoint
    (a child of a shard it read to its end, say), and ``last_found_empty``
    was the last time it found them so. Returns the shards' ids.
    """
    recorder = app.recorder
    connection = recorder.connection
    table = connection.call("describe_table", TableName=recorder.events_table_name)
    streams = connection.streams_client()
    description = streams.describe_stream(StreamArn=table["Table"]["LatestStreamArn"])
    listed = [shard["ShardId"] for shard in description["StreamDescription"]["Shards"]]
    names = {f"#s{n}": shard for n, shard in enumerate(listed)}
    connection.call(
        "update_item",
        TableName=recorder.notifications_table_name,
        Key=schema.index_checkpoints_key(),
        UpdateExpression="SET #caught = :then REMOVE #started, "
        + ", ".join(f"#cp.{name}" for name in names),
        ExpressionAttributeNames={
            "#cp": schema.SHARD_CHECKPOINTS,
            "#caught": schema.REINDEX_CAUGHT_UP,
            "#started": schema.REINDEX_STARTED,
            **names,
        },
        ExpressionAttributeValues={":then": {"N": str(last_found_empty)}},
        ConditionExpression="attribute_exists(#cp)",
    )
    return listed


def test_skip_batch_refuses_while_shards_without_a_checkpoint_may_have_lost_records(
    app: Orders, feed: SequenceFeed
) -> None:
    """They are read from their oldest record, never refused as trimmed: past
    the stream's retention since they were last found empty, records of them
    may have expired unindexed, and the indexer re-indexes."""
    history = indexed_history(app)
    two_days_ago = time.time() - 2 * 24 * 3600
    unguarded = uncheckpoint_the_listed_shards(app, two_days_ago)
    app.recorder.skip_wait_timeout = 3.0
    feed.poll()

    with pytest.raises(DataError, match="holds no checkpoint of stream") as raised:
        feed.skip_batch(history.low)

    assert all(shard in str(raised.value) for shard in unguarded)
    assert "Nothing was applied" in str(raised.value)
    assert feed.position == history.low - 1
    # The indexer judges the same: its next round starts a re-index.
    Indexer(app.recorder).poll()
    item = app.recorder.connection.call(
        "get_item",
        TableName=app.recorder.notifications_table_name,
        Key=schema.index_checkpoints_key(),
        ConsistentRead=True,
    )["Item"]
    assert schema.REINDEX_SCAN in item


def test_skip_batch_waits_on_shards_without_a_checkpoint_found_empty_lately(
    app: Orders, feed: SequenceFeed
) -> None:
    # Within the retention, what they hold is still there: read, not refused.
    history = indexed_history(app)
    uncheckpoint_the_listed_shards(app, time.time() - 3600)
    app.recorder.skip_wait_timeout = 3.0
    feed.poll()

    with pytest.raises(IndexWaitTimeoutError, match="not indexed yet"):
        feed.skip_batch(history.low)

    assert feed.position == history.low - 1


@st.composite
def an_index_and_a_run_of_it(
    draw: st.DrawFn,
) -> tuple[list[list[tuple[str, int]]], int, int]:
    """Saves as an indexer appends them (each whole, each aggregate's versions
    in order), and the first and last position of a run of them."""
    aggregates = [f"aggregate-{n}" for n in range(draw(st.integers(1, 4)))]
    versions = dict.fromkeys(aggregates, 0)
    saves = []
    for _ in range(draw(st.integers(1, 12))):
        save = []
        for aggregate in draw(
            st.lists(st.sampled_from(aggregates), min_size=1, max_size=5)
        ):
            versions[aggregate] += 1
            save.append((aggregate, versions[aggregate]))
        saves.append(save)
    total = sum(len(save) for save in saves)
    low = draw(st.integers(1, total))
    return saves, low, draw(st.integers(low, total))


@settings(max_examples=500)  # a pure function: many cases cost a second or two
@given(an_index_and_a_run_of_it())
def test_a_runs_events_are_put_in_an_order_the_index_could_have_had(
    drawn: tuple[list[list[tuple[str, int]]], int, int],
) -> None:
    saves, low, high = drawn
    index = [(key, n, save) for n, save in enumerate(saves) for key in save]
    run = index[low - 1 : high]
    events = {
        key: _Unindexed(
            "tests:Happened",
            None
            if len(save) == 1
            else _SavePlace(f"save-{n}", save.index(key), len(save)),
        )
        for key, n, save in run
    }

    ordered = _index_order(events, "events")

    assert sorted(ordered) == sorted(events)
    for aggregate in {a for a, _ in ordered}:
        mine = [v for a, v in ordered if a == aggregate]
        assert mine == sorted(mine)
    for n, save in enumerate(saves):
        held = [key for key, m, _ in run if m == n]
        if held:
            start = ordered.index(held[0])
            assert ordered[start : start + len(held)] == held
            if held[0] != save[0]:
                assert start == 0  # the save began before the run
            if held[-1] != save[-1]:
                assert start + len(held) == len(ordered)  # it ends after it


def test_two_skip_batches_at_once_apply_the_batch_once(
    app: Orders, env: dict[str, str]
) -> None:
    """Twin operators (or a retry racing the first run): one skip goes
    through, the other applies nothing, and each event counts once."""
    history = indexed_history(app)
    feeds = [
        SequenceFeed(
            OrderProjector(open_view(OrderProjector, env), event_loader(app)), app
        )
        for _ in range(2)
    ]
    for twin in feeds:
        twin.poll()  # stopped at the damaged batch
    start = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def skip(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = feeds[index].skip_batch(history.low)
        except Exception as error:  # noqa: BLE001 - the loser's refusal, asserted below
            outcomes[index] = error

    threads = [threading.Thread(target=skip, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    applied = [outcome for outcome in outcomes if isinstance(outcome, int)]
    # The other was refused: another writer first, or no longer at its position.
    assert applied == [history.high - history.low + 1], outcomes
    assert sum(isinstance(outcome, Exception) for outcome in outcomes) == 1
    feed = feeds[0]
    feed.runner.reload()
    assert feed.position == history.high
    assert feed.poll() == 2
    summaries_match(app, feed, history.orders)
