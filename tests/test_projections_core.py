"""The projector on an in-memory view: handlers, exactly-once, parking, redrive."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import OperationalError, Tracking

from aggregates.application import Orders
from aggregates.order import Order, OrderStatus
from ledger.projections import (
    AggregatePosition,
    InMemoryView,
    Outcome,
    Session,
    event_loader,
    handles,
)
from projections.orders import (
    OrderProjector,
    get_order_summary,
    list_customer_orders,
)

ITEM = {"product_id": "apple", "quantity": 2, "price": Decimal("1.50")}


@pytest.fixture
def orders():
    app = Orders(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield app
    app.close()


def project_all(app: Orders, projector: OrderProjector) -> None:
    for notification in app.recorder.select_notifications(start=1, limit=10_000):
        event = app.mapper.to_domain_event(notification)
        projector.process_event(event, Tracking(app.name, notification.id))


def test_summary_follows_an_order_through_its_life(orders):
    customer = uuid4()
    order_id = orders.place_order(customer, [ITEM], "EUR")
    orders.add_item(order_id, "fig", 1, Decimal("3"))
    orders.confirm(order_id)
    orders.ship(order_id, "AB123456")
    projector = OrderProjector(InMemoryView())

    project_all(orders, projector)

    summary = get_order_summary(projector.view, order_id)
    assert summary is not None
    assert (summary.status, summary.total, summary.line_count) == (
        OrderStatus.SHIPPED,
        Decimal("6.00"),
        2,
    )
    assert summary.tracking_number == "AB123456"
    assert summary.currency == "EUR"


def test_lifetime_value_counts_confirmed_orders_and_drops_cancelled_ones(orders):
    customer = uuid4()
    kept = orders.place_order(customer, [ITEM], "USD")
    orders.confirm(kept)
    dropped = orders.place_order(customer, [ITEM], "USD")
    orders.confirm(dropped)
    orders.cancel(dropped, "customer asked")
    projector = OrderProjector(InMemoryView())

    project_all(orders, projector)

    customer_orders = list_customer_orders(projector.view, customer)
    assert customer_orders is not None
    assert customer_orders.order_ids == [kept, dropped]
    assert customer_orders.lifetime_value == {"USD": Decimal("3.00")}


def test_an_event_delivered_twice_changes_nothing(orders):
    order_id = orders.place_order(uuid4(), [ITEM])
    projector = OrderProjector(InMemoryView())
    project_all(orders, projector)
    before = projector.view.load_all()

    project_all(orders, projector)

    assert projector.view.load_all() == before
    assert projector.view.max_tracking_id(orders.name) == 2
    assert get_order_summary(projector.view, order_id) is not None


def test_a_gap_is_filled_from_the_events_table(orders):
    order_id = orders.place_order(uuid4(), [ITEM])
    orders.confirm(order_id)
    projector = OrderProjector(InMemoryView(), event_loader(orders))
    last = orders.repository.get(order_id).collect_events()  # nothing pending
    assert last == []
    confirmed = orders.mapper.to_domain_event(
        orders.recorder.select_events(order_id, gt=2)[0]
    )
    session = Session(projector.view)

    outcome = projector.apply(session, confirmed, None)
    session.commit()

    assert outcome is Outcome.APPLIED
    summary = get_order_summary(projector.view, order_id)
    assert summary is not None
    assert (summary.status, summary.line_count) == (OrderStatus.CONFIRMED, 1)


class FlakyOrderProjector(OrderProjector):
    """Fails on fig items while ``broken``; retries without waiting."""

    retry_delays = (0.0, 0.0)
    broken = True

    @handles(Order.ItemAdded)
    def item_added(self, event: Any, models: Session) -> None:
        if self.broken and event.product_id == "fig":
            msg = "fig handler bug"
            raise RuntimeError(msg)
        super().item_added(event, models)


def test_a_poison_event_is_parked_and_its_aggregate_waits_while_others_go_on(orders):
    poisoned = orders.place_order(uuid4(), [ITEM])
    orders.add_item(poisoned, "fig", 1, Decimal(1))
    orders.confirm(poisoned)
    healthy = orders.place_order(uuid4(), [ITEM])
    orders.confirm(healthy)
    projector = FlakyOrderProjector(InMemoryView(), event_loader(orders))

    project_all(orders, projector)

    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version, parked.attempts) == (
        str(poisoned),
        3,
        3,
    )
    assert parked.error.startswith("RuntimeError at test_projections_core.py:")
    assert "item_added" in parked.error
    assert "fig handler bug" not in parked.error  # messages may quote event data
    assert parked.position == 3
    waiting = get_order_summary(projector.view, poisoned)
    assert waiting is not None
    assert waiting.status is OrderStatus.CREATED
    done = get_order_summary(projector.view, healthy)
    assert done is not None
    assert done.status is OrderStatus.CONFIRMED


def test_redrive_after_the_fix_applies_the_parked_event_and_those_behind_it(orders):
    order_id = orders.place_order(uuid4(), [ITEM])
    orders.add_item(order_id, "fig", 1, Decimal(1))
    orders.confirm(order_id)
    projector = FlakyOrderProjector(InMemoryView(), event_loader(orders))
    project_all(orders, projector)
    projector.broken = False

    outcomes = projector.redrive()

    assert outcomes == {str(order_id): Outcome.APPLIED}
    assert projector.parked() == []
    summary = get_order_summary(projector.view, order_id)
    assert summary is not None
    assert (summary.status, summary.line_count) == (OrderStatus.CONFIRMED, 2)
    # Fed by the sequence, the view keeps one position, none per aggregate.
    assert Session(projector.view).get(AggregatePosition, order_id) is None


def test_an_event_parked_after_a_gap_was_filled_waits_at_the_filled_version(
    orders,
):
    order_id = orders.place_order(uuid4(), [ITEM])
    orders.add_item(order_id, "fig", 1, Decimal(1))
    orders.confirm(order_id)
    fig = orders.mapper.to_domain_event(orders.recorder.select_events(order_id)[2])
    projector = FlakyOrderProjector(InMemoryView(), event_loader(orders))
    session = Session(projector.view)

    outcome = projector.apply(session, fig, None)  # versions 1 and 2 missing
    session.commit()
    projector.broken = False

    assert outcome is Outcome.PARKED
    position = Session(projector.view).get(AggregatePosition, order_id)
    assert position == AggregatePosition(
        aggregate_id=str(order_id), version=2, parked_version=3
    )
    assert projector.redrive() == {str(order_id): Outcome.APPLIED}
    summary = get_order_summary(projector.view, order_id)
    assert summary is not None
    assert (summary.status, summary.line_count) == (OrderStatus.CONFIRMED, 2)


def test_a_redrive_that_fails_again_keeps_the_event_parked_with_more_attempts(orders):
    order_id = orders.place_order(uuid4(), [ITEM])
    orders.add_item(order_id, "fig", 1, Decimal(1))
    projector = FlakyOrderProjector(InMemoryView(), event_loader(orders))
    project_all(orders, projector)

    outcomes = projector.redrive(str(order_id))

    assert outcomes == {str(order_id): Outcome.PARKED}
    [parked] = projector.parked()
    assert parked.attempts == 6


class ThrottledOrderProjector(OrderProjector):
    """DynamoDB keeps refusing while an item is added: not the event's fault."""

    retry_delays = (0.0,)
    outage_patience = 0.0  # raise at once instead of waiting DynamoDB out

    @handles(Order.ItemAdded)
    def item_added(self, event: Any, models: Session) -> None:
        msg = "throttled past retries"
        raise OperationalError(msg)


def test_a_store_failure_in_a_handler_is_raised_not_parked(orders):
    orders.place_order(uuid4(), [ITEM])
    projector = ThrottledOrderProjector(InMemoryView(), event_loader(orders))

    with pytest.raises(OperationalError, match="throttled"):
        project_all(orders, projector)

    assert projector.parked() == []


def test_a_live_runner_applies_new_events_after_a_redrive_elsewhere(orders):
    view = InMemoryView()
    order_id = orders.place_order(uuid4(), [ITEM])
    orders.add_item(order_id, "fig", 1, Decimal(1))  # parked by the bug
    live = FlakyOrderProjector(view, event_loader(orders))
    project_all(orders, live)
    operator = FlakyOrderProjector(view, event_loader(orders))
    operator.broken = False
    live.broken = False

    operator.redrive()  # another process: the live runner's cache is stale
    orders.confirm(order_id)
    last = orders.recorder.max_notification_id()
    [confirmed] = orders.recorder.select_notifications(start=last, limit=1)
    live.process_event(
        orders.mapper.to_domain_event(confirmed), Tracking(orders.name, confirmed.id)
    )

    summary = get_order_summary(view, order_id)
    assert summary is not None
    assert summary.status is OrderStatus.CONFIRMED
