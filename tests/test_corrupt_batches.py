"""A notification batch that cannot be read: reported with its position, never
skipped silently, and gone past only by an operator's explicit command."""

from __future__ import annotations

import uuid

import pytest
from eventsourcing.projection import ProjectionRunner

from aggregates.application import Orders
from aggregates.order import Order, OrderStatus
from ledger.dynamodb import CorruptNotificationBatchError, schema
from ledger.dynamodb.batches import BatchEntry, decode_batch, encode_batch
from ledger.projections import DynamoDBView, event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.history import ScanHistory
from ledger.projections.rebuild import rebuild
from ledger.projections.sequence import SequenceFeed
from projections.orders import OrderProjector, get_order_summary
from tests.test_projections_core import ITEM


def batch_key(app: Orders, last_position: int) -> dict:
    page_size = app.recorder.page_size
    return {
        schema.PAGE: {"N": str(schema.page_of(last_position, page_size))},
        schema.POSITION: {"N": str(last_position)},
    }


def damage_batch(app: Orders, last_position: int, **attributes: dict) -> None:
    """Overwrite attributes of the batch item ending at ``last_position``."""
    names = {f"#a{i}": name for i, name in enumerate(attributes)}
    values = {f":v{i}": value for i, value in enumerate(attributes.values())}
    app.recorder.connection.call(
        "update_item",
        TableName=app.recorder.notifications_table_name,
        Key=batch_key(app, last_position),
        UpdateExpression="SET "
        + ", ".join(f"{name} = :v{i}" for i, name in enumerate(names)),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def change_inside_batch(
    app: Orders, last_position: int, old: bytes, new: bytes
) -> None:
    """Replace ``old`` by ``new`` inside the batch ending at ``last_position``.

    The batch is first stored again uncompressed (still valid), so that a
    state's bytes can be found in it.
    """
    table = app.recorder.notifications_table_name
    item = app.recorder.connection.call(
        "get_item",
        TableName=table,
        Key=batch_key(app, last_position),
        ConsistentRead=True,
    )["Item"]
    first = int(item[schema.FIRST_POSITION]["N"])
    entries = decode_batch(item[schema.EVENTS]["B"], first)
    events = encode_batch(first, entries, compress=False)
    assert events.count(old) == 1
    damage_batch(app, last_position, **{schema.EVENTS: {"B": events.replace(old, new)}})


def delete_batch(app: Orders, last_position: int) -> None:
    app.recorder.connection.call(
        "delete_item",
        TableName=app.recorder.notifications_table_name,
        Key=batch_key(app, last_position),
    )


def remove_first_position(app: Orders, last_position: int) -> None:
    app.recorder.connection.call(
        "update_item",
        TableName=app.recorder.notifications_table_name,
        Key=batch_key(app, last_position),
        UpdateExpression="REMOVE #f",
        ExpressionAttributeNames={"#f": schema.FIRST_POSITION},
    )


def three_orders(app: Orders) -> list[uuid.UUID]:
    """Place three orders, a batch of two events each: positions 1-2, 3-4, 5-6."""
    placed = [app.place_order(uuid.uuid4(), [ITEM]) for _ in range(3)]
    assert app.recorder.max_notification_id() == 6
    return placed


ENTRY = BatchEntry(str(uuid.uuid4()), 1, "aggregates.order:Order.Placed", b"{}")

# Damage to the batch ending at position 4 (positions 3 and 4).
DAMAGE = {
    "truncated bytes": {schema.EVENTS: {"B": encode_batch(3, [ENTRY] * 2)[:-5]}},
    "unknown format": {
        schema.EVENTS: {"B": b"\x09" + encode_batch(3, [ENTRY] * 2)[1:]}
    },
    "no bytes": {schema.EVENTS: {"B": b"\x00"}},
    "wrong type": {schema.EVENTS: {"S": "not binary"}},
    "too many events": {schema.EVENTS: {"B": encode_batch(3, [ENTRY] * 3)}},
    "id not a UUID": {
        schema.EVENTS: {
            "B": encode_batch(3, [ENTRY._replace(aggregate_id="nope"), ENTRY])
        }
    },
    "written for other positions": {schema.EVENTS: {"B": encode_batch(1, [ENTRY] * 2)}},
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_reading_a_damaged_batch_names_its_position_and_the_way_past(orders, damage):
    three_orders(orders)
    damage_batch(orders, 4, **damage)

    before = orders.recorder.select_notifications(start=1, limit=10)
    with pytest.raises(CorruptNotificationBatchError) as raised:
        orders.recorder.select_notifications(start=3, limit=10)

    assert [n.id for n in before] == [1, 2]
    assert raised.value.last_position == 4
    assert "position 4" in str(raised.value)
    assert "skip-batch" in str(raised.value)


def test_a_batch_without_its_first_position_is_reported_as_damaged(orders):
    three_orders(orders)
    remove_first_position(orders, 6)

    with pytest.raises(CorruptNotificationBatchError, match="position 6"):
        orders.recorder.select_notifications(start=5, limit=10)


@pytest.mark.parametrize("missing", [4, 6], ids=["within", "last"])
def test_a_missing_batch_is_reported_where_its_positions_are(orders, missing):
    three_orders(orders)
    delete_batch(orders, missing)

    before = orders.recorder.select_notifications(start=1, limit=10)
    with pytest.raises(CorruptNotificationBatchError) as raised:
        orders.recorder.select_notifications(start=missing - 1, limit=10)

    assert [n.id for n in before] == list(range(1, missing - 1))
    assert raised.value.last_position == missing
    assert f"no batch item holds positions {missing - 1} to {missing}" in str(
        raised.value
    )


@pytest.fixture
def feed(orders: Orders, dynamodb_env) -> SequenceFeed:
    view = open_view(OrderProjector, dynamodb_env)
    return SequenceFeed(OrderProjector(view, event_loader(orders)), orders)


def test_a_quantity_changed_inside_a_batch_stops_the_feed_before_it_is_applied(
    orders, feed
):
    first, second, third = three_orders(orders)
    change_inside_batch(orders, 4, b'"quantity":2', b'"quantity":7')

    assert feed.poll() == 2
    assert feed.poll() == 0

    assert feed.position == 2
    assert feed.blocked is not None
    assert feed.blocked.last_position == 4
    assert "checksum mismatch" in feed.blocked.reason
    view = feed.projector.view
    assert get_order_summary(view, first).total == orders.get_order(first).total
    assert get_order_summary(view, second) is None
    assert get_order_summary(view, third) is None


def test_skipping_a_batch_changed_inside_applies_the_events_as_stored(orders, feed):
    placed = three_orders(orders)
    change_inside_batch(orders, 4, b'"quantity":2', b'"quantity":7')
    feed.poll()
    feed.poll()

    applied = feed.skip_batch(3)

    assert applied == 2
    assert feed.poll() == 2
    view = feed.projector.view
    assert {order: get_order_summary(view, order).total for order in placed} == {
        order: orders.get_order(order).total for order in placed
    }


def test_the_sequence_feed_stops_at_a_damaged_batch_and_goes_no_further(orders, feed):
    first, second, third = three_orders(orders)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])

    assert feed.poll() == 2
    assert feed.poll() == 0
    assert feed.poll() == 0

    assert feed.position == 2
    assert feed.blocked is not None
    assert feed.blocked.last_position == 4
    view = feed.projector.view
    assert get_order_summary(view, first) is not None
    assert get_order_summary(view, second) is None
    assert get_order_summary(view, third) is None


def test_skipping_a_damaged_batch_applies_its_events_from_the_events_table(
    orders, feed
):
    first, second, third = three_orders(orders)
    orders.confirm(second)  # position 7, after the damaged batch
    damage_batch(orders, 4, **DAMAGE["unknown format"])
    feed.poll()
    feed.poll()

    applied = feed.skip_batch(3)

    assert applied == 2
    assert feed.position == 4
    assert feed.blocked is None
    assert feed.poll() == 3
    view = feed.projector.view
    assert get_order_summary(view, second).status is OrderStatus.CONFIRMED
    assert get_order_summary(view, third) is not None
    assert get_order_summary(view, first) is not None


@pytest.mark.parametrize("missing", [4, 6], ids=["within", "last"])
def test_skipping_a_missing_batch_applies_its_events_from_the_events_table(
    orders, feed, missing
):
    placed = three_orders(orders)
    delete_batch(orders, missing)
    feed.poll()
    feed.poll()
    assert feed.blocked is not None
    assert feed.position == missing - 2

    feed.skip_batch(missing - 1)
    feed.poll()

    assert feed.position == 6
    view = feed.projector.view
    assert {order: get_order_summary(view, order).total for order in placed} == {
        order: orders.get_order(order).total for order in placed
    }


def test_skipping_a_batch_of_several_events_applies_them_all(orders, feed):
    one = Order.place(uuid.uuid4(), [ITEM], "EUR")
    two = Order.place(uuid.uuid4(), [ITEM], "EUR")
    orders.save(one, two)  # positions 1-4, one batch
    damage_batch(orders, 4, **DAMAGE["no bytes"])
    feed.poll()

    assert feed.skip_batch(1) == 4

    assert feed.position == 4
    assert get_order_summary(feed.projector.view, one.id) is not None
    assert get_order_summary(feed.projector.view, two.id) is not None


def test_skipping_needs_the_position_the_projection_is_stopped_at(orders, feed):
    three_orders(orders)
    damage_batch(orders, 6, **DAMAGE["truncated bytes"])
    feed.poll()
    feed.poll()

    with pytest.raises(ValueError, match="Give --position 5"):
        feed.skip_batch(3)
    assert feed.position == 4


def test_a_readable_batch_is_never_skipped(orders, feed):
    three_orders(orders)

    with pytest.raises(ValueError, match="can be read: nothing to skip"):
        feed.skip_batch(1)
    assert feed.position == 0


def test_a_rebuild_from_the_sequence_stops_at_a_damaged_batch_and_one_from_the_events_table_does_not(  # noqa: E501
    orders, dynamodb_env
):
    placed = three_orders(orders)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])
    view: DynamoDBView = open_view(OrderProjector, dynamodb_env)

    with pytest.raises(CorruptNotificationBatchError, match="--source scan"):
        rebuild(orders, OrderProjector, view)
    result = rebuild(orders, OrderProjector, view, history=ScanHistory(orders))

    assert result.switched
    readers = open_view(OrderProjector, dynamodb_env)
    assert all(get_order_summary(readers, order) is not None for order in placed)


def test_eventsourcings_projection_runner_applies_up_to_a_damaged_batch_then_reports_it(
    orders, dynamodb_env
):
    first, second, _ = three_orders(orders)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])
    readers = open_view(OrderProjector, dynamodb_env)

    with (
        pytest.raises(CorruptNotificationBatchError, match="position 4"),
        ProjectionRunner(
            application_class=Orders,
            projection_class=OrderProjector,
            view_class=DynamoDBView,
            env=dynamodb_env,
        ) as runner,
    ):
        runner.run_forever(timeout=30)

    assert get_order_summary(readers, first) is not None
    assert get_order_summary(readers, second) is None


def test_the_cli_reports_a_damaged_batch_and_skip_batch_goes_past_it(
    orders, ledger, dynamodb_env
):
    _, second, third = three_orders(orders)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])

    stopped = ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")
    refused = ledger("projections", "skip-batch", "OrderViews", "--position", "5")
    skipped = ledger("projections", "skip-batch", "OrderViews", "--position", "3")
    ran = ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")

    assert stopped.returncode == 1
    assert "processed 2 events" in stopped.stdout
    assert "position 4" in stopped.stderr
    assert "skip-batch" in stopped.stderr
    assert refused.returncode == 1
    assert "Give --position 3" in refused.stderr
    assert skipped.returncode == 0, skipped.stderr
    assert "applied 2 events" in skipped.stdout
    assert ran.returncode == 0, ran.stderr
    assert "processed 2 events" in ran.stdout
    readers = open_view(OrderProjector, dynamodb_env)
    assert get_order_summary(readers, second) is not None
    assert get_order_summary(readers, third) is not None
