"""Feeds of a total order keep one position, not one per aggregate.

Fed by the application sequence or the index, a view's tracking position,
committed with the effects, refuses an event applied before, and the order
has no gaps: no ``AggregatePosition`` item is read or written per event.
Parking still holds a parked aggregate's later events back, and a redrive
applies exactly what the feed went past.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import Tracking

from aggregates.application import Orders
from ledger.dynamodb import measure
from ledger.indexer import Indexer
from ledger.projections import (
    AggregatePosition,
    DynamoDBView,
    Outcome,
    ParkedEvent,
    Session,
    event_loader,
)
from ledger.projections import schema as view_schema
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.sequence import SequenceFeed
from ledger.projections.views import ConcurrentChangeError, ItemWrite, tracking_key
from projections.orders import OrderProjector, get_order_summary
from tests.indexed_support import index_until
from tests.test_projections_core import ITEM, FlakyOrderProjector
from tests.test_projections_dynamodb import Crash, read_model
from tests.test_projections_gaps import (
    AuditProjector,
    lines_of,
    long_order,
)

ORDERS = 40
"""Distinct orders fed in the cost tests: two events each, one page."""
MAX_ROUND_TRIPS_PER_EVENT = 1.5
MAX_WRITE_UNITS_PER_EVENT = 3.0


@pytest.fixture(params=["sequence", "indexed"])
def total_order_env(
    request: pytest.FixtureRequest, dynamodb_env: dict[str, str]
) -> dict[str, str]:
    """An environment of an application with a total order: sequence or index."""
    env = {**dynamodb_env, "DYNAMODB_ORDERING": request.param}
    if request.param == "indexed":
        env["DYNAMODB_EVENTS_STREAM"] = "yes"  # the indexer reads it
    return env


@pytest.fixture
def app(total_order_env: dict[str, str]) -> Iterator[Orders]:
    made = Orders(env=total_order_env)
    yield made
    made.close()


def place_distinct_orders(app: Orders, count: int) -> list[uuid.UUID]:
    """Place ``count`` orders of their own customers, each with an item (2 events)."""
    placed = [app.place_order(uuid.uuid4(), [ITEM]) for _ in range(count)]
    make_readable(app, placed)
    return placed


def make_readable(app: Orders, order_ids: list[uuid.UUID]) -> None:
    """Index the orders' events if the application is indexed."""
    if app.recorder.ordering == "indexed":
        events = [e for o in order_ids for e in app.recorder.select_events(o)]
        index_until(Indexer(app.recorder), app.recorder, events)


def feed_all(feed: SequenceFeed) -> int:
    applied = 0
    while count := feed.poll():
        applied += count
    return applied


def stored_keys(view: DynamoDBView) -> list[str]:
    return [key for key, _ in view.stored_items()]


def positions_per_aggregate(view: DynamoDBView) -> list[str]:
    return [k for k in stored_keys(view) if AggregatePosition.key_of(k) is not None]


def test_the_sequence_feed_keeps_no_position_per_aggregate(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    order_ids = place_distinct_orders(app, 10)
    view = open_view(OrderProjector, total_order_env)

    applied = feed_all(SequenceFeed(OrderProjector(view, event_loader(app)), app))

    assert applied == 20
    assert positions_per_aggregate(view) == []
    # Its summaries, its customers, its tracking: nothing else.
    assert len(stored_keys(view)) == 2 * len(order_ids) + 1
    reopened = open_view(OrderProjector, total_order_env)
    assert reopened.keeps_one_position(app.name)  # as its tracking records


def test_the_sequence_feed_costs_at_most_one_and_a_half_round_trips_per_event(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    place_distinct_orders(app, ORDERS)
    view = open_view(OrderProjector, total_order_env)
    feed = SequenceFeed(OrderProjector(view, event_loader(app)), app)

    assert view.connection is not app.recorder.connection  # counted once each
    with measure(app) as reads, measure(view) as writes:
        applied = feed_all(feed)

    assert applied == 2 * ORDERS
    round_trips = reads.round_trips + writes.round_trips
    write_units = reads.estimated_write_units + writes.estimated_write_units
    # A customer per order, none of the orders' positions.
    assert writes.calls["GetItem"] <= ORDERS + 6
    assert writes.calls["BatchGetItem"] >= 1  # summaries written unread: one request
    assert round_trips / applied <= MAX_ROUND_TRIPS_PER_EVENT
    assert write_units / applied <= MAX_WRITE_UNITS_PER_EVENT


def fig_order(app: Orders) -> uuid.UUID:
    """An order whose third event (a fig) the flaky projector parks; then a pear."""
    order_id = app.place_order(uuid.uuid4(), [ITEM])
    app.add_item(order_id, "fig", 1, Decimal(1))
    app.add_item(order_id, "pear", 1, Decimal(1))
    return order_id


def test_a_parked_aggregate_waits_and_a_redrive_applies_what_the_feed_went_past(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    parked_id = fig_order(app)
    other_id = app.place_order(uuid.uuid4(), [ITEM])
    make_readable(app, [parked_id, other_id])
    view = open_view(FlakyOrderProjector, total_order_env)
    projector = FlakyOrderProjector(view, event_loader(app))
    feed = SequenceFeed(projector, app)

    feed_all(feed)

    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version) == (str(parked_id), 3)
    assert parked.passed_version == 4  # the pear waited behind it
    summary = get_order_summary(view, parked_id)
    assert summary is not None
    assert summary.line_count == 1  # nothing after the parked event applied
    other = get_order_summary(view, other_id)
    assert other is not None
    assert other.line_count == 1  # other aggregates went on

    # Saved after the feed's position: the feed's to apply, not the redrive's.
    app.add_item(parked_id, "pear", 1, Decimal(1))
    make_readable(app, [parked_id])
    projector.broken = False
    assert projector.redrive() == {str(parked_id): Outcome.APPLIED}
    assert projector.parked() == []
    redriven = get_order_summary(view, parked_id)
    assert redriven is not None
    assert {p: line.quantity for p, line in redriven.lines.items()} == {
        "apple": 2,
        "fig": 1,
        "pear": 1,
    }

    feed_all(feed)

    after = get_order_summary(view, parked_id)
    assert after is not None
    assert {p: line.quantity for p, line in after.lines.items()} == {
        "apple": 2,
        "fig": 1,
        "pear": 2,
    }
    assert positions_per_aggregate(view) == []


def test_a_commit_that_meets_a_redrive_is_applied_afresh(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    parked_id = fig_order(app)
    make_readable(app, [parked_id])
    view = open_view(FlakyOrderProjector, total_order_env)
    projector = FlakyOrderProjector(view, event_loader(app))
    feed = SequenceFeed(projector, app)
    feed_all(feed)
    app.add_item(parked_id, "pear", 1, Decimal(1))
    make_readable(app, [parked_id])
    # The feed reads the dead letters (its session), then a redrive elsewhere
    # releases the aggregate before the feed commits the waiting event.
    session = Session(view, total_order=True)
    assert session.parked_event(str(parked_id)) is not None
    projector.broken = False
    other = FlakyOrderProjector(
        open_view(FlakyOrderProjector, total_order_env), event_loader(app)
    )
    other.broken = False
    assert other.redrive() == {str(parked_id): Outcome.APPLIED}
    [notification] = app.recorder.select_notifications(start=feed.position + 1, limit=5)
    event = app.mapper.to_domain_event(notification)

    assert projector.apply(session, event, notification.id) is Outcome.WAITING
    session.tracking = Tracking(app.name, notification.id)
    with pytest.raises(ConcurrentChangeError):
        projector.commit(session)

    feed_all(feed)  # read again: the aggregate is released, the event applied
    after = get_order_summary(view, parked_id)
    assert after is not None
    assert after.lines["pear"].quantity == 2


def test_a_version_rebuilt_from_the_sequence_keeps_one_position_and_the_feed_goes_on(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    place_distinct_orders(app, 5)
    view = open_view(OrderProjector, total_order_env)
    feed_all(SequenceFeed(OrderProjector(view, event_loader(app)), app))

    result = rebuild(app, OrderProjector, open_view(OrderProjector, total_order_env))
    rebuilt = view.at_version(result.table_version)
    later = place_distinct_orders(app, 3)
    live = open_view(OrderProjector, total_order_env)
    feed_all(SequenceFeed(OrderProjector(live, event_loader(app)), app))

    assert live.table_version == result.table_version
    assert positions_per_aggregate(rebuilt) == []
    assert all(get_order_summary(live, o) is not None for o in later)
    assert rebuilt.max_tracking_id(app.name) == app.recorder.max_notification_id()


def built_before_one_position(view: DynamoDBView, app: Orders) -> str:
    """Make ``view`` one fed by the sequence before it kept one position.

    Its tracking records no ``one_position``, and it holds an aggregate's
    position. Returns that aggregate's id.
    """
    earlier = AggregatePosition(aggregate_id=str(uuid.uuid4()), version=1)
    view.commit(
        [ItemWrite(earlier.own_key(), earlier.model_dump_json(), 0)],
        Tracking(app.name, 0),
    )
    return earlier.aggregate_id


def test_a_view_built_with_positions_per_aggregate_keeps_them(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    view = open_view(OrderProjector, total_order_env)
    earlier = built_before_one_position(view, app)
    order_ids = place_distinct_orders(app, 3)

    feed_all(SequenceFeed(OrderProjector(view, event_loader(app)), app))

    assert not view.keeps_one_position(app.name)
    assert sorted(positions_per_aggregate(view)) == sorted(
        AggregatePosition.storage_key(a) for a in [earlier, *map(str, order_ids)]
    )
    tracking = view.connection.call(
        "get_item",
        TableName=view.table_name,
        Key={view_schema.KEY: {"S": tracking_key(app.name)}},
    )["Item"]
    assert view_schema.ONE_POSITION not in tracking
    assert all(get_order_summary(view, o) is not None for o in order_ids)


def test_a_stream_built_view_fed_by_the_sequence_skips_what_it_applied(
    app: Orders, total_order_env: dict[str, str]
) -> None:
    [order_id] = place_distinct_orders(app, 1)
    view = open_view(OrderProjector, total_order_env)
    projector = OrderProjector(view, event_loader(app))
    # As the stream feed left it: positions per aggregate, no tracking.
    session = Session(view)
    for stored in app.recorder.select_events(order_id):
        projector.apply(session, app.mapper.to_domain_event(stored), None)
    session.commit()
    before: dict[str, Any] = read_model(view)

    feed_all(SequenceFeed(projector, app))

    assert not view.keeps_one_position(app.name)
    assert read_model(view) == before  # nothing applied twice
    assert ParkedEvent.storage_key(order_id) not in stored_keys(view)


def test_a_redrive_on_a_total_order_stopped_part_way_goes_on_later(
    orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    audit_view = open_view(AuditProjector, dynamodb_env)
    order_id = long_order(orders, 200)
    projector = AuditProjector(audit_view, event_loader(orders))
    projector.broken_at = 2
    feed_all(SequenceFeed(projector, orders))
    [parked] = projector.parked()
    assert (parked.version, parked.passed_version) == (2, 200)
    projector.broken_at = None
    projector.crash_at = 180  # after the redrive committed its first parts

    with pytest.raises(Crash):
        projector.redrive()

    [still_parked] = projector.parked()
    assert 2 < still_parked.version < 180
    assert still_parked.passed_version == 200
    assert "redrive" in still_parked.error
    assert projector.redrive() == {str(order_id): Outcome.APPLIED}
    assert lines_of(audit_view, order_id) == dict.fromkeys(range(1, 201), 1)
    assert projector.parked() == []
    assert positions_per_aggregate(audit_view) == []
