"""The stream feed refuses a view that keeps one position (one fed by the sequence).

Such a view keeps no position per aggregate: the stream feed, which tells
duplicates and gaps by those positions, would take every aggregate's earlier
events as missing and apply them a second time. A new view fed by the stream
first keeps positions per aggregate, as it always did.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import Tracking

from aggregates.application import Orders
from ledger.projections import (
    AggregatePosition,
    DynamoDBView,
    Projector,
    event_loader,
)
from ledger.projections import schema as view_schema
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.sequence import SequenceFeed
from ledger.projections.streams import StreamPoller, lambda_handler
from ledger.projections.views import InMemoryView, OnePositionViewError, tracking_key
from projections.orders import OrderProjector, get_order_summary
from tests.test_faults_feeds import LambdaContext, lambda_records
from tests.test_projections_core import ITEM
from tests.test_projections_gaps import AuditProjector, lines_of

DEADLINE = 30.0
REFUSAL = "keeps one position for 'Orders'"


def feed_sequence(
    app: Orders, view: DynamoDBView, projector_class: type[Projector] = OrderProjector
) -> None:
    """Apply the application sequence to the view, as `ledger projections run` does."""
    feed = SequenceFeed(projector_class(view, event_loader(app)), app)
    while feed.poll():
        pass


def stored(view: DynamoDBView) -> dict[str, dict[str, Any]]:
    """Every item of the view's version as stored: bodies, revisions, tracking."""
    return dict(view.stored_items())


def positions_per_aggregate(view: DynamoDBView) -> list[str]:
    return [k for k in stored(view) if AggregatePosition.key_of(k) is not None]


def tracking_item(view: DynamoDBView, app: Orders) -> dict[str, Any] | None:
    item: dict[str, Any] | None = view.connection.call(
        "get_item",
        TableName=view.table_name,
        Key={view_schema.KEY: {"S": tracking_key(app.name)}},
        ConsistentRead=True,
    ).get("Item")
    return item


def poll_until_projected(
    poller: StreamPoller, env: dict[str, str], order_id: uuid.UUID, lines: int
) -> None:
    """Poll until the order's summary has ``lines`` lines, failing after the deadline.

    Read through a view of its own, as a reader process would.
    """
    readers = open_view(OrderProjector, env)
    deadline = time.monotonic() + DEADLINE
    while True:
        summary = get_order_summary(readers, order_id)
        if summary is not None and summary.line_count == lines:
            return
        assert time.monotonic() < deadline, f"not projected within {DEADLINE}s"
        poller.poll()


def a_view_fed_by_the_sequence(
    app: Orders, env: dict[str, str], projector_class: type[Projector] = OrderProjector
) -> tuple[DynamoDBView, uuid.UUID]:
    """Place an order (two events) and project it with the sequence feed.

    Then add an item to it (its third event), not fed yet. Returns the view
    and the order's id.
    """
    order_id = app.place_order(uuid.uuid4(), [ITEM])
    view = open_view(projector_class, env)
    feed_sequence(app, view, projector_class)
    assert view.keeps_one_position(app.name)
    app.add_item(order_id, "fig", 1, Decimal(1))
    return view, order_id


def test_the_stream_poller_refuses_a_view_fed_by_the_sequence(
    streamed: None, orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    fed, order_id = a_view_fed_by_the_sequence(orders, dynamodb_env, AuditProjector)
    before = stored(fed)
    view = open_view(AuditProjector, dynamodb_env)  # another process's
    poller = StreamPoller(AuditProjector(view, event_loader(orders)), orders)

    with pytest.raises(OnePositionViewError, match=REFUSAL) as refused:
        poller.poll()

    assert "ledger projections run" in str(refused.value)
    assert "--source scan" in str(refused.value)
    assert lines_of(view, order_id) == {1: 1, 2: 1}  # none applied again
    assert stored(view) == before  # nothing applied, not even the new event
    assert positions_per_aggregate(view) == []


def test_a_lambda_handler_refuses_a_view_fed_by_the_sequence(
    orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    before = stored(a_view_fed_by_the_sequence(orders, dynamodb_env)[0])
    handler = lambda_handler(OrderProjector, Orders, dynamodb_env)

    with pytest.raises(OnePositionViewError, match=REFUSAL):
        handler({"Records": lambda_records(orders)}, LambdaContext(60))

    assert stored(open_view(OrderProjector, dynamodb_env)) == before


def test_a_new_view_fed_by_the_stream_first_keeps_positions_per_aggregate(
    streamed: None, orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    view = open_view(OrderProjector, dynamodb_env)
    poller = StreamPoller(OrderProjector(view, event_loader(orders)), orders)
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    poll_until_projected(poller, dynamodb_env, order_id, lines=1)
    orders.add_item(order_id, "fig", 1, Decimal(1))

    poll_until_projected(poller, dynamodb_env, order_id, lines=2)

    assert positions_per_aggregate(view) == [AggregatePosition.storage_key(order_id)]
    tracking = tracking_item(view, orders)
    assert tracking is None or view_schema.ONE_POSITION not in tracking
    assert not open_view(OrderProjector, dynamodb_env).keeps_one_position(orders.name)


def test_the_stream_feed_reads_the_tracking_once_per_view_version(
    streamed: None,
    orders: Orders,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view = open_view(OrderProjector, dynamodb_env)
    poller = StreamPoller(OrderProjector(view, event_loader(orders)), orders)
    reads: list[dict[str, Any]] = []
    real_call = view.connection.call

    def counting_call(operation: str, **params: Any) -> Any:
        if operation == "get_item" and params["Key"] == {
            view_schema.KEY: {"S": tracking_key(orders.name)}
        }:
            reads.append(params)
        return real_call(operation, **params)

    monkeypatch.setattr(view.connection, "call", counting_call)
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    poll_until_projected(poller, dynamodb_env, order_id, lines=1)
    orders.add_item(order_id, "fig", 1, Decimal(1))

    poll_until_projected(poller, dynamodb_env, order_id, lines=2)

    assert len(reads) == 1


def test_a_switch_to_a_version_rebuilt_from_the_sequence_stops_the_stream_feed(
    streamed: None, orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    view = open_view(OrderProjector, dynamodb_env)
    poller = StreamPoller(OrderProjector(view, event_loader(orders)), orders)
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    poll_until_projected(poller, dynamodb_env, order_id, lines=1)
    result = rebuild(orders, OrderProjector, open_view(OrderProjector, dynamodb_env))
    rebuilt = view.at_version(result.table_version)
    assert rebuilt.keeps_one_position(orders.name)
    before = stored(rebuilt)
    orders.add_item(order_id, "fig", 1, Decimal(1))

    with pytest.raises(OnePositionViewError, match=REFUSAL):
        poller.poll()  # its commit to the old version finds the switch

    assert stored(rebuilt) == before


def test_an_in_memory_view_whose_tracking_records_one_position_is_refused() -> None:
    view = InMemoryView()
    view.keep_one_position("Orders")
    view.commit((), Tracking("Orders", 1))
    view.forget_positioning()  # decided again, from what is stored

    with pytest.raises(OnePositionViewError, match=REFUSAL):
        view.refuse_feed_per_aggregate("Orders")


def test_a_new_in_memory_view_fed_per_aggregate_first_keeps_one_per_aggregate() -> None:
    view = InMemoryView()

    view.refuse_feed_per_aggregate("Orders")

    assert not view.keeps_one_position("Orders")
    view.commit((), Tracking("Orders", 1))
    assert view.one_position_recorded == set()
