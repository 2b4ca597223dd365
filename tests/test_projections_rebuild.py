"""Rebuilds on DynamoDB Local: flushes, crashes mid-flush, take-overs, catch-up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from eventsourcing.persistence import ProgrammingError, Tracking
from eventsourcing.utils import register_topic

from aggregates.application import Orders
from aggregates.order import Order, OrderStatus
from ledger.dynamodb import measure
from ledger.projections import (
    DynamoDBView,
    Outcome,
    Projector,
    ReadModel,
    Session,
    epochs,
    event_loader,
    handles,
)
from ledger.projections.dynamodb import open_view
from ledger.projections.epochs import EpochWriter, FlushWrite
from ledger.projections.history import Checkpoint, Page, ScanHistory, SequenceHistory
from ledger.projections.rebuild import (
    _start_or_resume,
    _switch,
    _take_over,
    drop_version,
    rebuild,
    status,
    switch_version,
)
from ledger.projections.streams import process_records
from ledger.projections.views import ConcurrentChangeError
from projections.orders import OrderProjector, get_order_summary
from tests.test_projections_core import ITEM, FlakyOrderProjector
from tests.test_projections_dynamodb import (
    Crash,
    place_some_orders,
    project_sequence,
    read_model,
    store_an_undecodable_event,
    stream_records,
)


class OpenOrder(ReadModel):
    """An order not yet shipped or cancelled: deleted when it closes."""

    key_field: ClassVar[str] = "order_id"

    order_id: uuid.UUID
    customer_id: uuid.UUID


class OpenOrdersProjector(Projector):
    name = "OpenOrders"

    @handles(Order.OrderPlaced)
    def placed(self, event: Any, models: Session) -> None:
        models.put(
            OpenOrder(order_id=event.originator_id, customer_id=event.customer_id)
        )

    @handles(Order.OrderShipped, Order.OrderCancelled)
    def closed(self, event: Any, models: Session) -> None:
        models.delete(OpenOrder, event.originator_id)


def interleaved_orders(app: Orders, count: int) -> list[uuid.UUID]:
    """Orders whose events interleave: each step is taken by every order in turn."""
    customers = [uuid.uuid4() for _ in range(3)]
    ids = [app.place_order(customers[n % 3], [ITEM], "EUR") for n in range(count)]
    for order_id in ids:
        app.add_item(order_id, "fig", 1, Decimal(2))
    for order_id in ids:
        app.confirm(order_id)
    for index, order_id in enumerate(ids):
        if index % 3 == 0:
            app.ship(order_id, f"AB{index:06d}")
        elif index % 3 == 1:
            app.cancel(order_id, "changed mind")
    return ids


def crash_at_transaction(monkeypatch, view: DynamoDBView, number: int) -> None:
    """Make the ``number``-th TransactWriteItems from now kill the process."""
    real_call = view.connection.call
    left = {"count": number}

    def crashing_call(operation: str, **params: Any) -> Any:
        if operation == "transact_write_items":
            left["count"] -= 1
            if left["count"] == 0:
                raise Crash
        return real_call(operation, **params)

    monkeypatch.setattr(view.connection, "call", crashing_call)


def stamped_leftovers(view: DynamoDBView) -> list[dict[str, Any]]:
    """Items of a finished version that are tombstones (no body)."""
    items = view.connection.items("scan", TableName=view.table_name)
    return [i for i in items if "epoch" in i and "body" not in i]


@pytest.mark.parametrize("history_kind", ["sequence", "scan"])
@pytest.mark.parametrize("crash_at", [1, 2, 3, 5, 8])
def test_a_rebuild_crashed_mid_flush_then_resumed_equals_the_live_model(
    orders, view, monkeypatch, history_kind, crash_at
):
    interleaved_orders(orders, 6)
    project_sequence(orders, OrderProjector(view))
    # Flushes of several transactions each, so a crash can fall inside one.
    monkeypatch.setattr(epochs, "_MAX_ITEMS_PER_TRANSACTION", 3)

    def history() -> Any:
        if history_kind == "scan":
            return ScanHistory(orders, segments=2, limit=4)
        return SequenceHistory(orders, page_size=4)

    crash_at_transaction(monkeypatch, view, crash_at)
    with pytest.raises(Crash):
        rebuild(orders, OrderProjector, view, flush_items=5, history=history())
    monkeypatch.undo()
    monkeypatch.setattr(epochs, "_MAX_ITEMS_PER_TRANSACTION", 3)

    result = rebuild(orders, OrderProjector, view, flush_items=5, history=history())

    assert status(view).active_version == result.table_version == 2
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_a_resumed_rebuild_goes_on_from_its_last_committed_flush(
    orders, view, monkeypatch
):
    interleaved_orders(orders, 6)
    project_sequence(orders, OrderProjector(view))
    total = orders.recorder.max_notification_id()
    # Each flush: its items in one transaction, then the commit.
    crash_at_transaction(monkeypatch, view, 5)  # the third flush's items
    with pytest.raises(Crash):
        rebuild(orders, OrderProjector, view, page_size=4, flush_items=1)
    monkeypatch.undo()

    resumed = rebuild(orders, OrderProjector, view, page_size=4)

    assert resumed.events == total - 8  # two pages of 4 were committed
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


@pytest.mark.parametrize("crash_at", [2, 4, 6])
def test_deletions_survive_a_crash_and_leave_no_tombstones(
    orders, dynamodb_env, monkeypatch, crash_at
):
    interleaved_orders(orders, 9)
    live = open_view(OpenOrdersProjector, dynamodb_env)
    project_sequence(orders, OpenOrdersProjector(live))
    monkeypatch.setattr(epochs, "_MAX_ITEMS_PER_TRANSACTION", 2)
    crash_at_transaction(monkeypatch, live, crash_at)
    with pytest.raises(Crash):
        rebuild(orders, OpenOrdersProjector, live, page_size=3, flush_items=3)
    monkeypatch.undo()

    rebuild(orders, OpenOrdersProjector, live, page_size=3, flush_items=3)

    rebuilt = live.at_version(2)
    assert read_model(rebuilt) == read_model(live.at_version(1))
    assert len([k for k in read_model(rebuilt) if k.startswith("OpenOrder#")]) == 3
    assert stamped_leftovers(rebuilt) == []


def test_an_interleaved_history_writes_each_item_once_per_flush(orders, view):
    interleaved_orders(orders, 12)
    project_sequence(orders, OrderProjector(view))

    with measure(view) as meter:
        result = rebuild(orders, OrderProjector, view)

    final_items = len(read_model(view.at_version(2)))
    assert result.flushes == 1
    assert result.items_written == final_items
    # The flush's items, its commit, the switch of readers.
    assert meter.calls["TransactWriteItems"] == 3


def test_a_rebuild_with_a_tiny_cache_reads_back_what_it_evicted(orders, view):
    interleaved_orders(orders, 6)
    project_sequence(orders, OrderProjector(view))

    with measure(view) as meter:
        rebuild(orders, OrderProjector, view, page_size=2, flush_items=2, cache_bytes=1)

    assert meter.calls["GetItem"] > 10  # evicted items were read again
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_a_rebuild_run_that_was_taken_over_can_no_longer_write(orders, view):
    place_some_orders(orders, 1)
    target = _start_or_resume(view)
    target_view = view.at_version(target)
    target_view.create_version_table(target)
    left_behind = EpochWriter(target_view, _take_over(view, target))
    _take_over(view, target)  # a resumed run takes the rebuild over
    write = FlushWrite("OrderSummary#x", '{"order_id": "x"}', 1, None)

    with pytest.raises(ConcurrentChangeError, match="took over"):
        left_behind.flush([write], 1, {"position": 1}, Tracking(orders.name, 1))

    assert target_view.load("OrderSummary#x") is None
    assert target_view.max_tracking_id(orders.name) is None


class MissingTail:
    """A history that misses one order's events after its first (as if they
    were written after the Scan passed it)."""

    kind = "scan"

    def __init__(self, app: Orders, late: uuid.UUID) -> None:
        self.inner = ScanHistory(app)
        self.late = late

    def pages(self, checkpoint: Checkpoint | None) -> Iterator[Page]:
        for page in self.inner.pages(checkpoint):
            events = [
                (event, position)
                for event, position in page.events
                if event.originator_id != self.late or event.originator_version == 1
            ]
            yield Page(events, page.checkpoint, page.head)


@pytest.fixture
def stream_orders(dynamodb_env):
    """Orders and the Order view with ``DYNAMODB_ORDERING=stream``."""
    env = {**dynamodb_env, "DYNAMODB_ORDERING": "stream"}
    app = Orders(env=env)
    yield app, open_view(OrderProjector, env)
    app.close()


def test_a_scan_rebuild_catches_up_aggregates_the_live_feed_applied_further(
    stream_orders,
):
    orders, view = stream_orders
    late, *_ = place_some_orders(orders, 3)
    feed = OrderProjector(view, event_loader(orders))
    assert process_records(feed, stream_records(orders), orders.mapper) == []

    rebuild(orders, OrderProjector, view, history=MissingTail(orders, late))

    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_a_rebuild_stopped_between_switch_and_catch_up_catches_up_when_run_again(
    stream_orders, monkeypatch
):
    orders, view = stream_orders
    late, *_ = place_some_orders(orders, 3)
    feed = OrderProjector(view, event_loader(orders))
    assert process_records(feed, stream_records(orders), orders.mapper) == []
    real_call = view.connection.call

    def crash_at_catch_up(operation: str, **params: Any) -> Any:
        if operation == "scan" and "FilterExpression" in params:
            raise Crash  # the catch-up's first Scan, after the switch
        return real_call(operation, **params)

    monkeypatch.setattr(view.connection, "call", crash_at_catch_up)
    with pytest.raises(Crash):
        rebuild(orders, OrderProjector, view, history=MissingTail(orders, late))
    monkeypatch.undo()
    assert status(view).active_version == 2
    assert read_model(view.at_version(2)) != read_model(view.at_version(1))

    resumed = rebuild(orders, OrderProjector, view)

    assert (resumed.table_version, resumed.events) == (2, 0)
    assert status(view).rebuilding_version is None
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_a_run_that_was_taken_over_cannot_switch_readers(orders, view):
    place_some_orders(orders, 1)
    target = _start_or_resume(view)
    view.at_version(target).create_version_table(target)
    left_behind = _take_over(view, target)
    _take_over(view, target)

    with pytest.raises(ConcurrentChangeError, match="took over"):
        _switch(view, target, left_behind)

    assert status(view).active_version == 1


def test_a_rebuild_that_crashed_before_switching_resumes_by_switching(
    orders, view, monkeypatch
):
    interleaved_orders(orders, 4)
    project_sequence(orders, OrderProjector(view))
    crash_at_transaction(monkeypatch, view, 3)  # items, commit, then the switch
    with pytest.raises(Crash):
        rebuild(orders, OrderProjector, view)
    monkeypatch.undo()

    with measure(view) as meter:
        resumed = rebuild(orders, OrderProjector, view)

    assert resumed.events == 0
    assert meter.calls["TransactWriteItems"] == 1  # the switch; nothing re-applied
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


@pytest.mark.parametrize("history_kind", ["sequence", "scan"])
def test_a_rebuild_parks_an_event_it_cannot_decode_and_builds_the_rest(
    orders, view, history_kind
):
    healthy, stuck, unknown, renamed = store_an_undecodable_event(orders)
    history = ScanHistory(orders) if history_kind == "scan" else None

    result = rebuild(orders, OrderProjector, view, history=history)

    rebuilt = view.at_version(result.table_version)
    projector = OrderProjector(rebuilt, event_loader(orders))
    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version, parked.topic) == (
        str(stuck),
        unknown.originator_version,
        renamed,
    )
    assert "while decoding" in parked.error
    assert get_order_summary(view, healthy) is not None
    register_topic(renamed, Order.ItemAdded)  # the fix
    assert projector.redrive() == {str(stuck): Outcome.APPLIED}
    fixed = get_order_summary(view, stuck)
    assert fixed is not None
    assert (fixed.status, "kiwi" in fixed.lines) == (OrderStatus.CONFIRMED, True)


def test_a_scan_rebuild_of_a_sequence_application_records_its_position(orders, view):
    place_some_orders(orders, 2)
    project_sequence(orders, OrderProjector(view))

    rebuild(orders, OrderProjector, view, history=ScanHistory(orders))

    head = orders.recorder.max_notification_id()
    assert view.at_version(2).max_tracking_id(orders.name) == head
    assert status(view, orders).lag == 0
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_dropping_a_version_drops_its_dead_letters(orders, view):
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    orders.add_item(order_id, "fig", 1, Decimal(1))
    project_sequence(orders, FlakyOrderProjector(view))
    assert FlakyOrderProjector(view).parked() != []
    rebuild(orders, OrderProjector, view)

    assert drop_version(view, 1) is True

    assert FlakyOrderProjector(view.at_version(1)).parked() == []


def test_switching_later_to_a_scan_rebuilt_version_catches_up_what_the_feed_applied(
    stream_orders,
):
    orders, view = stream_orders
    feed = OrderProjector(view, event_loader(orders))
    placed = place_some_orders(orders, 3)
    assert process_records(feed, stream_records(orders), orders.mapper) == []
    rebuild(orders, OrderProjector, view, switch=False)
    # Saved after the Scan: the live feed applies them to the active v1 only.
    orders.ship(placed[0], "AB999999")
    orders.place_order(uuid.uuid4(), [ITEM], "EUR")
    assert process_records(feed, stream_records(orders), orders.mapper) == []

    switch_version(view, 2, orders, OrderProjector)

    assert status(view).active_version == 2
    assert status(view).rebuilding_version is None
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_switching_later_restarts_the_local_stream_feed_as_a_rebuild_does(
    stream_orders,
):
    orders, view = stream_orders
    place_some_orders(orders, 1)
    rebuild(orders, OrderProjector, view, switch=False)
    view.control.save_shard_checkpoint("shardId-1", "000000000000000000004")

    switch_version(view, 2, orders, OrderProjector)

    assert view.control.shard_checkpoint("shardId-1") is None


def test_switching_to_a_version_being_rebuilt_without_the_projector_is_refused(
    stream_orders,
):
    orders, view = stream_orders
    place_some_orders(orders, 1)
    rebuild(orders, OrderProjector, view, switch=False)

    with pytest.raises(ProgrammingError, match="ledger projections rebuild NAME"):
        switch_version(view, 2)

    assert (status(view).active_version, status(view).rebuilding_version) == (1, 2)


def test_switching_later_to_a_version_rebuilt_by_scan_goes_on_from_the_scan(
    orders, view
):
    place_some_orders(orders, 2)
    project_sequence(orders, OrderProjector(view))
    rebuild(orders, OrderProjector, view, history=ScanHistory(orders), switch=False)
    place_some_orders(orders, 1)
    project_sequence(orders, OrderProjector(view))

    switch_version(view, 2, orders, OrderProjector)

    assert read_model(view.at_version(2)) == read_model(view.at_version(1))


def test_the_version_a_pending_catch_up_reads_cannot_be_dropped(
    stream_orders, monkeypatch
):
    orders, view = stream_orders
    late, *_ = place_some_orders(orders, 3)
    feed = OrderProjector(view, event_loader(orders))
    assert process_records(feed, stream_records(orders), orders.mapper) == []
    real_call = view.connection.call

    def crash_at_catch_up(operation: str, **params: Any) -> Any:
        if operation == "scan" and "FilterExpression" in params:
            raise Crash  # the catch-up's first Scan, after the switch
        return real_call(operation, **params)

    monkeypatch.setattr(view.connection, "call", crash_at_catch_up)
    with pytest.raises(Crash):
        rebuild(orders, OrderProjector, view, history=MissingTail(orders, late))
    monkeypatch.undo()

    with pytest.raises(ProgrammingError, match="ledger projections rebuild NAME"):
        drop_version(view, 1)

    rebuild(orders, OrderProjector, view)  # the catch-up, as the error says
    assert read_model(view.at_version(2)) == read_model(view.at_version(1))
    assert drop_version(view, 1) is True
