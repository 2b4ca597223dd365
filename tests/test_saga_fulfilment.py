"""The Order fulfilment saga on the sequence feed: happy and failing paths.

Orders, Warehouse and Payments are separate applications (on DynamoDB
Local); :class:`OrderFulfilment` follows them with a
:class:`~ledger.sagas.SagaRunner` and fires timeouts with a
:class:`~ledger.sagas.TimeoutPoller`. Tests play the payment gateway. Most
run twice (``shop_env``): every application in ``sequence`` ordering, then
every one, the saga application included, in ``indexed`` ordering with an
in-process indexer per application run by the saga's runner.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import pytest
from eventsourcing.persistence import IntegrityError, ProgrammingError
from eventsourcing.system import SingleThreadedRunner, System
from eventsourcing.utils import get_topic
from rich.console import Console

from aggregates.application import Orders
from aggregates.fulfilment import Fulfilment, OrderFulfilment
from aggregates.fulfilment_demo import run_story
from aggregates.inventory import ReservationStatus
from aggregates.order import OrderStatus
from aggregates.payment import PaymentStatus
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder
from ledger.indexer import Indexer
from ledger.metadata import event_id, metadata
from ledger.sagas import Saga, SagaRunner, TimeoutPoller, step_key

TEA = "tea"
FIG = "fig"
PRICE = Decimal("4.50")
LATER = timedelta(days=1)
"""Far enough ahead for every timeout of a test to be due."""


class Crash(BaseException):  # it stands for the process dying
    """The saga process died here (raised by a test's hook).

    A ``BaseException``, as the projections' tests' ``Crash``: a process
    dying is not an error the saga's step retries would catch.
    """


@dataclass
class Shop:
    """The applications of one test, wired as they would be deployed."""

    orders: Orders
    warehouse: Warehouse
    payments: Payments
    fulfilment: OrderFulfilment
    env: dict[str, str]

    def __post_init__(self) -> None:
        self.fulfilment.connect(self.orders, self.warehouse, self.payments)
        leaders = [self.orders, self.warehouse, self.payments]
        self.runner = SagaRunner(
            self.fulfilment,
            leaders,
            indexers=[
                Indexer(app.recorder)
                for app in (*leaders, self.fulfilment)
                if isinstance(app.recorder, DynamoDBIndexedApplicationRecorder)
            ],
        )
        self.poller = TimeoutPoller(self.fulfilment)

    def place(self, items: dict[str, int], *, confirm: bool = True) -> uuid.UUID:
        """Place an order of ``items`` (product to units), confirmed unless told."""
        lines = [
            {"product_id": product, "quantity": units, "price": PRICE}
            for product, units in items.items()
        ]
        order_id = self.orders.place_order(uuid.uuid4(), lines, "EUR")
        if confirm:
            self.orders.confirm(order_id)
        return order_id

    def run(self) -> int:
        """Let the saga process everything there is; return how many events."""
        return self.runner.poll()

    def index(self) -> None:
        """Let every indexed application's index catch up (none: nothing to do)."""
        for indexer in self.runner.indexers:
            indexer.catch_up()

    def answer(self, order_id: uuid.UUID, *, approved: bool) -> None:
        """Play the gateway: answer an order's payment request."""
        self.payments.settle(
            order_id,
            approved=approved,
            reason="card expired",
            idempotency_key=f"gateway/{order_id}",
        )

    def fire_timeouts(self, after: timedelta = LATER) -> int:
        """Fire every timeout due ``after`` from now; return how many fired."""
        return self.poller.poll(datetime.now(UTC) + after)

    def saga(self, order_id: uuid.UUID) -> Fulfilment:
        saga = self.fulfilment.fulfilment(order_id)
        assert saga is not None
        return saga

    def restarted(
        self, fulfilment_class: type[OrderFulfilment] = OrderFulfilment
    ) -> Shop:
        """The same shop after the saga process restarted (a new instance)."""
        self.fulfilment.close()
        return type(self)(
            self.orders,
            self.warehouse,
            self.payments,
            fulfilment_class(env=self.env),
            self.env,
        )

    def close(self) -> None:
        for app in (self.orders, self.warehouse, self.payments, self.fulfilment):
            app.close()


def open_shop(
    env: dict[str, str],
    stock: dict[str, int] | None = None,
    shop_class: type[Shop] = Shop,
) -> Shop:
    """Open the four applications on ``env`` and put ``stock`` in the warehouse."""
    shop = shop_class(
        Orders(env=env),
        Warehouse(env=env),
        Payments(env=env),
        OrderFulfilment(env=env),
        env,
    )
    for product, units in (stock or {TEA: 5, FIG: 5}).items():
        shop.warehouse.stock(product, units)
    return shop


INDEXED: Final = {
    "DYNAMODB_ORDERING": "indexed",
    "ORDERFULFILMENT_DYNAMODB_ORDERING": "indexed",
    "DYNAMODB_EVENTS_STREAM": "yes",
}
"""Every application of the shop indexed, the saga application included."""


@pytest.fixture(params=["sequence", "indexed"])
def shop_env(
    request: pytest.FixtureRequest,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The shop's environment: every application on one ordering, then the other."""
    if request.param == "sequence":
        return dynamodb_env
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    return {**dynamodb_env, **INDEXED}


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[Shop]:
    made = open_shop(shop_env)
    yield made
    made.close()


def events_of(app: Any, aggregate_id: uuid.UUID) -> list[str]:
    """Return the names of an aggregate's stored events, in order."""
    return [type(e).__name__ for e in app.repository.event_store.get(aggregate_id)]


def on_hand(shop: Shop, product: str) -> int:
    inventory = shop.warehouse.get_inventory(product)
    assert inventory is not None
    return inventory.on_hand


# The happy path --------------------------------------------------------------


def test_a_confirmed_order_is_reserved_charged_then_shipped(shop):
    order_id = shop.place({TEA: 2})

    shop.run()
    assert shop.warehouse.get_reservation(order_id).status is ReservationStatus.RESERVED
    assert shop.payments.get_payment(order_id).amount == Decimal("9.00")
    shop.answer(order_id, approved=True)
    shop.run()

    order = shop.orders.get_order(order_id)
    assert order.status is OrderStatus.SHIPPED
    assert order.tracking_number == shop.saga(order_id).tracking_number
    assert on_hand(shop, TEA) == 3
    assert shop.payments.get_payment(order_id).status is PaymentStatus.CHARGED
    assert shop.saga(order_id).outcome == "shipped"


def test_the_payment_timeout_of_a_shipped_order_is_cancelled_and_never_fires(shop):
    order_id = shop.place({TEA: 1})
    shop.run()
    shop.answer(order_id, approved=True)
    shop.run()

    assert shop.fire_timeouts() == 0
    assert shop.saga(order_id).timeouts == {}
    assert shop.orders.get_order(order_id).status is OrderStatus.SHIPPED


def test_an_order_that_is_only_placed_starts_no_saga(shop):
    order_id = shop.place({TEA: 1}, confirm=False)

    shop.run()

    assert shop.fulfilment.fulfilment(order_id) is None
    assert shop.warehouse.get_reservation(order_id) is None


# Failing paths ---------------------------------------------------------------


def test_an_order_out_of_stock_is_cancelled_with_the_reason(shop):
    order_id = shop.place({TEA: 2, FIG: 9})

    shop.run()

    order = shop.orders.get_order(order_id)
    assert order.status is OrderStatus.CANCELLED
    assert order.cancel_reason == "out of stock: fig (4 short)"
    assert shop.warehouse.get_reservation(order_id).status is (
        ReservationStatus.OUT_OF_STOCK
    )
    assert (on_hand(shop, TEA), on_hand(shop, FIG)) == (5, 5)  # nothing taken
    assert shop.payments.get_payment(order_id) is None  # never asked
    assert shop.saga(order_id).outcome == "cancelled"


def test_a_declined_payment_releases_the_stock_and_cancels_the_order(shop):
    order_id = shop.place({TEA: 2})
    shop.run()

    shop.answer(order_id, approved=False)
    shop.run()

    order = shop.orders.get_order(order_id)
    assert order.status is OrderStatus.CANCELLED
    assert order.cancel_reason == "payment declined: card expired"
    assert shop.warehouse.get_reservation(order_id).status is ReservationStatus.RELEASED
    assert on_hand(shop, TEA) == 5
    assert shop.saga(order_id).outcome == "cancelled"


def test_a_payment_unanswered_in_time_releases_the_stock_and_cancels(shop):
    order_id = shop.place({TEA: 2})
    shop.run()

    assert shop.fire_timeouts(after=timedelta(0)) == 0  # not due yet
    assert shop.fire_timeouts() == 1
    shop.run()

    order = shop.orders.get_order(order_id)
    assert order.status is OrderStatus.CANCELLED
    assert order.cancel_reason == "payment timed out after 0:05:00"
    assert on_hand(shop, TEA) == 5
    assert shop.saga(order_id).fired == {"payment"}


def test_a_payment_charged_after_its_timeout_is_refunded(shop):
    order_id = shop.place({TEA: 2})
    shop.run()
    shop.fire_timeouts()
    shop.run()

    shop.answer(order_id, approved=True)  # the gateway answers, late
    shop.run()

    assert shop.payments.get_payment(order_id).status is PaymentStatus.REFUNDED
    assert shop.orders.get_order(order_id).status is OrderStatus.CANCELLED
    assert shop.saga(order_id).outcome == "cancelled"


def test_a_payment_declined_after_its_timeout_changes_nothing_more(shop):
    order_id = shop.place({TEA: 2})
    shop.run()
    shop.fire_timeouts()
    shop.run()
    decided = dict(shop.saga(order_id).decided)

    shop.answer(order_id, approved=False)
    shop.run()

    assert shop.saga(order_id).decided == decided
    assert shop.payments.get_payment(order_id).status is PaymentStatus.DECLINED


def test_an_order_the_customer_cancels_while_paying_is_compensated(shop):
    order_id = shop.place({TEA: 2})
    shop.run()

    shop.orders.cancel(order_id, "changed my mind")
    shop.run()
    assert on_hand(shop, TEA) == 5
    shop.answer(order_id, approved=True)
    shop.run()

    assert shop.orders.get_order(order_id).cancel_reason == "changed my mind"
    assert shop.payments.get_payment(order_id).status is PaymentStatus.REFUNDED
    assert shop.saga(order_id).failure == "changed my mind"
    assert shop.saga(order_id).outcome == "cancelled"
    assert shop.fire_timeouts() == 0  # cancelled with the compensation


def test_a_shipment_refused_because_the_customer_cancelled_first_is_compensated(
    shop,
):
    order_id = shop.place({TEA: 1})
    shop.run()
    shop.answer(order_id, approved=True)
    shop.index()
    shop.fulfilment.pull_and_process(shop.payments.name)  # decides to ship
    assert shop.saga(order_id).has_decided(Fulfilment.ShipOrder)

    shop.orders.cancel(order_id, "too slow")  # before the shipment is sent
    shop.run()

    assert shop.orders.get_order(order_id).cancel_reason == "too slow"
    assert shop.payments.get_payment(order_id).status is PaymentStatus.REFUNDED
    assert on_hand(shop, TEA) == 5
    assert shop.saga(order_id).outcome == "cancelled"


# Exactly once ----------------------------------------------------------------


def test_each_step_is_sent_under_the_key_of_the_saga_and_its_version(shop):
    order_id = shop.place({TEA: 1})
    shop.run()

    saga = shop.saga(order_id)
    reserve_version = saga.decided["ReserveStock"]
    step = next(
        e
        for e in shop.fulfilment.repository.event_store.get(saga.id)
        if isinstance(e, Saga.Step)
    )
    assert step.originator_version == reserve_version
    assert step_key(step) == f"saga/{saga.id}/{reserve_version}"
    assert shop.warehouse.first_outcome(step_key(step)) is not None


def test_events_delivered_again_change_nothing(shop):
    order_id = shop.place({TEA: 2})
    shop.run()
    shop.answer(order_id, approved=True)
    shop.run()
    before = (
        events_of(shop.fulfilment, shop.saga(order_id).id),
        events_of(shop.orders, order_id),
        on_hand(shop, TEA),
    )

    for leader in (shop.orders, shop.warehouse, shop.payments, shop.fulfilment):
        for notification in leader.recorder.select_notifications(start=1, limit=100):
            [(event, tracking)] = shop.fulfilment.convert_notifications(
                leader.name, [notification]
            )
            # Refused if processed; an event the saga skipped is processed now.
            with contextlib.suppress(IntegrityError):
                shop.fulfilment.process_event(event, tracking)

    after = (
        events_of(shop.fulfilment, shop.saga(order_id).id),
        events_of(shop.orders, order_id),
        on_hand(shop, TEA),
    )
    assert after == before


class CrashAfterSending(OrderFulfilment):
    """Dies after sending a step, before its tracking is committed."""

    name = "OrderFulfilment"  # the same application, only failing

    crashes = 1
    """Crashes left in this instance (a restarted process crashes no more)."""

    def dispatch(self, step: Saga.Step, idempotency_key: str) -> None:
        super().dispatch(step, idempotency_key)
        if self.crashes:
            self.crashes -= 1
            raise Crash(type(step).__name__)


class CrashBeforeDeciding(OrderFulfilment):
    """Dies after a saga decided, before the decision is committed."""

    name = "OrderFulfilment"  # the same application, only failing

    crashes = 1

    def react(self, domain_event: Any) -> Saga | None:
        saga = super().react(domain_event)
        if saga is not None and self.crashes:
            self.crashes -= 1
            raise Crash(type(domain_event).__name__)
        return saga


def test_a_step_sent_then_a_crash_before_tracking_is_applied_once(shop_env):
    shop = open_shop(shop_env)
    crashing = shop.restarted(CrashAfterSending)
    order_id = crashing.place({TEA: 2})

    with pytest.raises(Crash, match="ReserveStock"):
        crashing.run()
    assert on_hand(crashing, TEA) == 3  # sent: the stock is reserved
    again = crashing.restarted()
    again.run()  # the step is delivered again, with the same key
    again.answer(order_id, approved=True)
    again.run()

    assert events_of(again.warehouse, again.warehouse.get_reservation(order_id).id) == [
        "StockReserved"
    ]
    assert on_hand(again, TEA) == 3
    assert again.orders.get_order(order_id).status is OrderStatus.SHIPPED
    again.close()


def test_a_crash_before_a_decision_is_committed_leaves_no_trace(shop_env):
    shop = open_shop(shop_env).restarted(CrashBeforeDeciding)
    order_id = shop.place({TEA: 2})

    with pytest.raises(Crash, match="OrderConfirmed"):
        shop.run()
    assert shop.fulfilment.fulfilment(order_id) is None
    again = shop.restarted()
    again.run()

    assert again.warehouse.get_reservation(order_id).status is (
        ReservationStatus.RESERVED
    )
    again.close()


def test_what_the_saga_causes_continues_the_order_s_correlation(shop):
    with metadata(correlation_id="checkout-7"):
        order_id = shop.place({TEA: 1})
    shop.run()
    shop.fire_timeouts()
    shop.run()

    saga = shop.saga(order_id)
    saga_events = list(shop.fulfilment.repository.event_store.get(saga.id))
    reserve = next(e for e in saga_events if type(e).__name__ == "ReserveStock")
    reservation_id = shop.warehouse.get_reservation(order_id).id
    [reserved, released] = shop.warehouse.repository.event_store.get(reservation_id)
    cancelled = list(shop.orders.repository.event_store.get(order_id))[-1]
    every = [*saga_events, reserved, released, cancelled]
    assert {e.metadata.correlation_id for e in every} == {"checkout-7"}
    assert reserved.metadata.causation_id == event_id(reserve)
    fired = next(e for e in saga_events if type(e).__name__ == "TimeoutFired")
    scheduled = next(e for e in saga_events if type(e).__name__ == "TimeoutScheduled")
    assert fired.metadata.causation_id == event_id(scheduled)


# Timeouts ----------------------------------------------------------------------


def test_a_timeout_fires_once_whatever_the_number_of_pollers(shop):
    order_id = shop.place({TEA: 1})
    shop.run()
    other = TimeoutPoller(shop.fulfilment)
    now = datetime.now(UTC) + LATER

    fired = [
        shop.poller.poll(now),
        other.poll(now),
        TimeoutPoller(shop.fulfilment).poll(now),
    ]

    assert fired == [1, 0, 0]
    assert events_of(shop.fulfilment, shop.saga(order_id).id).count("TimeoutFired") == 1


class FiresTheTimeoutMeanwhile(OrderFulfilment):
    """Lets the payment timeout fire while it decides what a charge means."""

    name = "OrderFulfilment"  # the same application, only racing

    raced = False

    def react(self, domain_event: Any) -> Saga | None:
        saga = super().react(domain_event)
        charged = type(domain_event).__name__ == "Charged"
        if charged and saga is not None and not self.raced:
            self.raced = True  # the first time only: the next try sees it fired
            assert self.fire_timeout(saga.id, "payment", datetime.now(UTC) + LATER)
        return saga


def test_a_timeout_firing_while_a_charge_is_decided_on_lets_one_decision_win(
    shop_env,
):
    shop = open_shop(shop_env).restarted(FiresTheTimeoutMeanwhile)
    order_id = shop.place({TEA: 2})
    shop.run()
    shop.answer(order_id, approved=True)

    shop.run()  # the charge's decision (ship) loses to the timeout's: decided again

    saga = shop.saga(order_id)
    assert saga.fired == {"payment"}
    assert not saga.has_decided(Fulfilment.ShipOrder)
    assert shop.orders.get_order(order_id).status is OrderStatus.CANCELLED
    assert shop.payments.get_payment(order_id).status is PaymentStatus.REFUNDED
    assert on_hand(shop, TEA) == 5
    shop.close()


def test_a_timeout_does_not_fire_once_the_saga_cancelled_it(shop):
    order_id = shop.place({TEA: 1})
    shop.run()
    saga_id = shop.saga(order_id).id
    shop.poller.poll()  # it has read the timeout, pending
    shop.answer(order_id, approved=True)
    shop.run()  # charged: the saga cancels the timeout

    assert not shop.fulfilment.fire_timeout(
        saga_id, "payment", datetime.now(UTC) + LATER
    )
    assert shop.fire_timeouts() == 0


def test_a_restarted_poller_reads_from_before_the_oldest_pending_timeout(shop):
    first, second = shop.place({TEA: 1}), shop.place({TEA: 1})
    shop.run()
    shop.answer(first, approved=True)
    shop.run()  # the first's timeout is cancelled, the second's pending

    shop.poller.poll()
    restarted = TimeoutPoller(shop.fulfilment)

    [scheduled] = [
        n.id
        for n in shop.fulfilment.recorder.select_notifications(
            start=1, limit=1000, topics=[get_topic(Fulfilment.TimeoutScheduled)]
        )
        if n.originator_id == shop.saga(second).id
    ]
    mark = shop.fulfilment.recorder.max_tracking_id(shop.poller.tracking_name)
    assert mark == scheduled - 1
    assert restarted.poll(datetime.now(UTC) + LATER) == 1
    assert shop.saga(second).fired == {"payment"}
    assert shop.saga(first).fired == set()


def test_a_timeout_that_is_not_due_does_not_fire(shop):
    order_id = shop.place({TEA: 1})
    shop.run()
    saga = shop.saga(order_id)

    assert not shop.fulfilment.fire_timeout(saga.id, "payment", datetime.now(UTC))
    assert not shop.fulfilment.fire_timeout(saga.id, "no such timeout")


# Running it --------------------------------------------------------------------


@pytest.mark.parametrize("leaders", ["stream", "indexed"])
def test_a_saga_application_keeps_its_own_sequence_whatever_its_leaders_use(
    dynamodb_env, leaders
):
    streamed = {"DYNAMODB_EVENTS_STREAM": "yes"}
    app = OrderFulfilment(
        env={**dynamodb_env, **streamed, "DYNAMODB_ORDERING": leaders}
    )
    assert app.recorder.ordering == "sequence"
    app.close()


def test_a_saga_application_may_be_indexed_but_never_on_the_stream_alone(
    dynamodb_env,
):
    app = OrderFulfilment(env={**dynamodb_env, **INDEXED})
    assert app.recorder.ordering == "indexed"
    app.close()

    with pytest.raises(ProgrammingError, match="reads its own sequence"):
        OrderFulfilment(
            env={**dynamodb_env, "ORDERFULFILMENT_DYNAMODB_ORDERING": "stream"}
        )


def test_a_saga_with_no_dispatch_handler_for_a_step_says_so(shop):
    class Unwired(Saga.Step):
        pass

    step = Unwired(
        originator_id=uuid.uuid4(), originator_version=2, timestamp=datetime.now(UTC)
    )
    with pytest.raises(ProgrammingError, match="no dispatch handler"):
        shop.fulfilment.dispatch(step, step_key(step))


def test_an_unconnected_saga_application_says_what_to_connect(dynamodb_env):
    app = OrderFulfilment(env=dynamodb_env)
    with pytest.raises(ProgrammingError, match="connect"):
        _ = app.orders
    app.close()


fulfilment_system = System(
    pipes=[
        [Orders, OrderFulfilment],
        [Warehouse, OrderFulfilment],
        [Payments, OrderFulfilment],
        [OrderFulfilment, OrderFulfilment],
    ]
)


def test_the_saga_runs_in_an_eventsourcing_system_too(dynamodb_env):
    runner: SingleThreadedRunner[uuid.UUID] = SingleThreadedRunner(
        fulfilment_system, env=dynamodb_env
    )
    runner.start()
    orders, warehouse, payments = (
        runner.get(Orders),
        runner.get(Warehouse),
        runner.get(Payments),
    )
    runner.get(OrderFulfilment).connect(orders, warehouse, payments)
    warehouse.stock(TEA, 5)
    try:
        order_id = orders.place_order(
            uuid.uuid4(), [{"product_id": TEA, "quantity": 2, "price": PRICE}]
        )
        orders.confirm(order_id)  # the runner processes it all, in this thread
        payments.settle(order_id, approved=True)

        assert orders.get_order(order_id).status is OrderStatus.SHIPPED
        assert warehouse.get_inventory(TEA).on_hand == 3
    finally:
        runner.stop()


@pytest.mark.parametrize("ordering", ["indexed", "sequence"])
def test_the_fulfilment_story_tells_every_path(dynamodb_env, ordering, caplog):
    console = Console(record=True, width=200)  # wide: lines keep their length

    with caplog.at_level(logging.WARNING):
        run_story({**dynamodb_env, "DYNAMODB_ORDERING": ordering}, console)

    told = console.export_text()
    assert f"Every application in {ordering} ordering" in told
    assert "order shipped (TRK-" in told
    assert "out of stock: fig (2 short)" in told
    assert "order cancelled (payment declined: card expired)" in told
    assert "stock released; payment declined; saga cancelled" in told
    assert "order cancelled (payment timed out after 0:05:00)" in told
    assert "stock released; payment refunded; saga cancelled" in told
    assert "the reservation has 1 event" in told
    assert "on hand at the end: tea 2, fig 1" in told
    assert [r.getMessage() for r in caplog.records] == []  # no WARNING in it
    assert max(len(line) for line in told.splitlines()) <= 80  # none would wrap
