"""A rebuild's reads of the application sequence: what build and catch-up cover."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from aggregates.application import Orders
from ledger.dynamodb import CorruptNotificationBatchError
from ledger.feeds import Batch, Progress
from ledger.projections import DynamoDBView, Session, event_loader
from ledger.projections import rebuild as rebuilding
from ledger.projections.metrics import LAG, MemoryMetrics
from ledger.projections.rebuild import RebuildProgress, rebuild, status
from ledger.projections.sequence import ProjectorConsumer, SequenceFeed
from projections.orders import OrderProjector, OrderSummary, get_order_summary
from tests.test_corrupt_batches import DAMAGE, damage_batch
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import place_some_orders


def place_order(orders: Orders) -> uuid.UUID:
    """Place one order (two events, one batch of the sequence)."""
    placed: uuid.UUID = orders.place_order(uuid.uuid4(), [ITEM])
    return placed


def around_the_switch(
    monkeypatch: pytest.MonkeyPatch,
    *,
    before: Any = None,
    after: Any = None,
) -> None:
    """Run ``before(view)`` / ``after(view, target)`` around a rebuild's switch."""
    real_switch = rebuilding._switch

    def switch(view: DynamoDBView, version: int, owner: str) -> int:
        if before is not None:
            before(view)
        old = real_switch(view, version, owner)
        if after is not None:
            after(view, version)
        return old

    monkeypatch.setattr(rebuilding, "_switch", switch)


def test_a_rebuild_from_the_sequence_reads_what_is_committed_while_it_reads(
    orders, view
):
    place_some_orders(orders, 4)
    head = orders.recorder.max_notification_id()
    late: list[uuid.UUID] = []

    def place_while_building(progress: RebuildProgress) -> None:
        if not late:
            late.append(place_order(orders))

    # Not switched: no catch-up after a switch; the build alone reads it.
    result = rebuild(
        orders,
        OrderProjector,
        view,
        page_size=2,
        switch=False,
        progress=place_while_building,
    )

    built = view.at_version(result.table_version)
    assert orders.recorder.max_notification_id() == head + 2
    assert built.max_tracking_id(orders.name) == head + 2
    assert Session(built).get(OrderSummary, late[0]) is not None


def test_the_catch_up_goes_on_from_the_builds_position_and_applies_what_came_since(
    orders, view, monkeypatch
):
    place_some_orders(orders, 3)
    built_to = orders.recorder.max_notification_id()
    late: list[uuid.UUID] = []
    tracked_at_switch: list[int | None] = []
    around_the_switch(
        monkeypatch,
        # Committed after the build read its last page, before readers move.
        before=lambda _view: late.append(place_order(orders)),
        after=lambda view, target: tracked_at_switch.append(
            view.at_version(target).max_tracking_id(orders.name)
        ),
    )

    result = rebuild(orders, OrderProjector, view, page_size=2)

    assert tracked_at_switch == [built_to]
    found = status(view, orders)
    assert (found.active_version, found.rebuilding_version) == (
        result.table_version,
        None,
    )
    assert found.position == found.head == built_to + 2
    assert get_order_summary(view, late[0]) is not None


def test_a_damaged_batch_met_after_the_switch_leaves_the_rebuild_unfinished(
    orders, view, monkeypatch
):
    place_some_orders(orders, 2)
    built_to = orders.recorder.max_notification_id()

    def commit_a_damaged_batch(view: DynamoDBView, target: int) -> None:
        place_order(orders)
        damage_batch(orders, built_to + 2, **DAMAGE["wrong type"])

    around_the_switch(monkeypatch, after=commit_a_damaged_batch)

    with pytest.raises(CorruptNotificationBatchError):
        rebuild(orders, OrderProjector, view)

    # Switched, but the catch-up is not done: the batch was not skipped.
    found = status(view, orders)
    assert found.active_version == found.rebuilding_version == 2
    assert found.position == built_to
    with pytest.raises(CorruptNotificationBatchError):
        rebuild(orders, OrderProjector, view)  # resumed: meets it again
    monkeypatch.undo()

    live = OrderProjector(view.at_version(2), event_loader(orders))
    assert SequenceFeed(live, orders).skip_batch(built_to + 1) == 2
    rebuild(orders, OrderProjector, view)

    found = status(view, orders)
    assert (found.rebuilding_version, found.position) == (None, built_to + 2)


def test_the_catch_up_ends_where_a_live_feed_got_in_first(orders, view, monkeypatch):
    place_some_orders(orders, 2)
    late: list[uuid.UUID] = []
    around_the_switch(monkeypatch, after=lambda *_: late.append(place_order(orders)))
    live_applied: list[int] = []

    class LiveFeedFirst(ProjectorConsumer):
        """The catch-up's consumer, with a live feed committing just before it."""

        def process(self, batch: Batch) -> Progress:
            if not live_applied:
                live = OrderProjector(self.projector.view, event_loader(orders))
                live_applied.append(SequenceFeed(live, orders).poll())
            return super().process(batch)

    monkeypatch.setattr(rebuilding, "ProjectorConsumer", LiveFeedFirst)

    rebuild(orders, OrderProjector, view)

    assert live_applied == [2]  # the catch-up's own commit of them was refused
    found = status(view, orders)
    assert found.rebuilding_version is None
    assert found.position == found.head
    assert get_order_summary(view, late[0]) is not None


def test_the_catch_up_records_the_projections_lag_as_its_feed_does(
    orders, view, monkeypatch
):
    place_some_orders(orders, 2)
    around_the_switch(monkeypatch, before=lambda _view: place_order(orders))

    class MeteredOrderProjector(OrderProjector):
        name = OrderProjector.name
        metrics = MemoryMetrics()

    rebuild(orders, MeteredOrderProjector, view)

    lag = [
        (m.value, m.projection)
        for m in MeteredOrderProjector.metrics.measurements
        if m.name == LAG
    ]
    assert lag == [(0, OrderProjector.name)]


def test_the_catch_up_applies_each_event_once_beside_a_live_feed_ending_earlier(
    orders, view, monkeypatch
):
    """A live feed commits part of the catch-up's page first: none of it twice."""
    first = orders.place_order(uuid.uuid4(), [ITEM])
    real_switch = rebuilding._switch

    def switch(view: DynamoDBView, version: int, owner: str) -> int:
        old = real_switch(view, version, owner)
        # Committed after the switch: an item added to the first order, a new order.
        orders.add_item(first, "apple", 2, Decimal("1.50"))
        orders.place_order(uuid.uuid4(), [ITEM])
        return int(old)

    monkeypatch.setattr(rebuilding, "_switch", switch)
    live_applied: list[int] = []

    class LiveFeedFirst(ProjectorConsumer):
        def process(self, batch: Batch) -> Progress:
            if not live_applied:
                live = OrderProjector(self.projector.view, event_loader(orders))
                # A live feed whose one-position page ends before the catch-up's.
                feed = SequenceFeed(live, orders, page_size=1)
                live_applied.append(feed.runner.poll(deadline=0.0))
            return super().process(batch)

    monkeypatch.setattr(rebuilding, "ProjectorConsumer", LiveFeedFirst)
    rebuild(orders, OrderProjector, view)

    summary = get_order_summary(view, first)
    assert live_applied == [1]
    assert summary is not None
    assert summary.lines["apple"].quantity == 4  # 2 placed + 2 added, once
