"""The Order fulfilment saga: confirmed order -> stock reserved -> charged -> shipped.

:class:`Fulfilment` is the saga of one confirmed order: it reserves the
order's stock in the :class:`~aggregates.warehouse.Warehouse`, asks
:class:`~aggregates.payments.Payments` for the order's total (and gives the
gateway ``payment_timeout`` to answer), and ships the order in
:class:`~aggregates.application.Orders` once charged. When something fails
it compensates, then cancels the order with the reason:

============================  ===============================================
what failed                   compensation
============================  ===============================================
out of stock                  nothing was reserved: the order is cancelled
payment declined              stock released, order cancelled
no answer in time (timeout)   stock released, order cancelled; a charge that
                              arrives later is refunded
the customer cancelled        stock released, any charge refunded
============================  ===============================================

So, once the saga has run: the order's stock stays reserved if and only if
the order shipped, and a charge stays unrefunded if and only if the order
shipped. :class:`OrderFulfilment` is the saga application (see
:mod:`ledger.sagas` for how it runs and what it guarantees).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import singledispatchmethod
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from uuid import UUID

from eventsourcing.persistence import ProgrammingError
from eventsourcing.utils import EnvType, get_topic

from aggregates.inventory import Reservation
from aggregates.order import Order, OrderError, OrderStatus
from aggregates.payment import Payment
from ledger.sagas import Saga, SagaApplication

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aggregates.application import Orders
    from aggregates.payments import Payments
    from aggregates.warehouse import Warehouse

__all__ = ["PAYMENT_TIMEOUT", "Fact", "Fulfilment", "OrderFulfilment"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PAYMENT_TIMEOUT: Final = "payment"
"""The name of the timeout the gateway has to answer a payment request."""


class Fact(StrEnum):
    """What the saga learns from the other applications' events (stored values)."""

    STOCK_RESERVED = "stock reserved"
    OUT_OF_STOCK = "out of stock"
    STOCK_RELEASED = "stock released"
    PAYMENT_CHARGED = "payment charged"
    PAYMENT_DECLINED = "payment declined"
    PAYMENT_REFUNDED = "payment refunded"
    ORDER_SHIPPED = "order shipped"
    ORDER_CANCELLED = "order cancelled"


class Fulfilment(Saga):
    """The saga of one confirmed order, from its stock to its shipment."""

    saga_type = "OrderFulfilment"

    if TYPE_CHECKING:  # eventsourcing would make class annotations fields
        order_id: UUID
        items: dict[str, int]
        amount: Decimal
        currency: str
        payment_timeout: timedelta

    class Started(Saga.Started):
        """An order was confirmed: fulfil it."""

        order_id: UUID
        items: dict[str, int]
        """Units wanted, per product."""
        amount: Decimal
        currency: str
        payment_timeout: timedelta
        """How long the gateway has to answer the payment request."""

        def apply(self, aggregate: Fulfilment) -> None:
            """Start with the order's items, total and the payment's timeout."""
            super().apply(aggregate)
            aggregate.order_id = self.order_id
            aggregate.items = dict(self.items)
            aggregate.amount = self.amount
            aggregate.currency = self.currency
            aggregate.payment_timeout = self.payment_timeout

    class ReserveStock(Saga.Step):
        """Reserve the order's items in the warehouse."""

        order_id: UUID
        items: dict[str, int]

    class RequestPayment(Saga.Step):
        """Ask the payment gateway for the order's total."""

        order_id: UUID
        amount: Decimal
        currency: str

    class ShipOrder(Saga.Step):
        """Ship the order (it is paid for and its stock is reserved)."""

        order_id: UUID
        tracking_number: str

    class ReleaseStock(Saga.Step):
        """Compensation: put the order's reserved stock back."""

        order_id: UUID

    class RefundPayment(Saga.Step):
        """Compensation: give the order's charge back."""

        order_id: UUID

    class CancelOrder(Saga.Step):
        """Cancel the order, saying why."""

        order_id: UUID
        reason: str

    @classmethod
    def begin(  # noqa: PLR0917 - the order's facts, each named at the call
        cls,
        order_id: UUID,
        items: Mapping[str, int],
        amount: Decimal,
        currency: str,
        payment_timeout: timedelta,
        at: datetime,
    ) -> Fulfilment:
        """Start fulfilling a confirmed order (its first step: reserve its stock)."""
        saga = cls._begin(
            cls.Started,
            order_id,
            order_id=order_id,
            items=dict(items),
            amount=amount,
            currency=currency,
            payment_timeout=payment_timeout,
        )
        saga.advance(at)
        return saga

    # What the saga learns ------------------------------------------------------

    def stock_reserved(self, at: datetime) -> None:
        """Learn that the warehouse reserved the order's stock."""
        self._learn(Fact.STOCK_RESERVED, at)

    def out_of_stock(self, missing: Mapping[str, int], at: datetime) -> None:
        """Learn that some products were short: nothing was reserved."""
        if self.note(Fact.OUT_OF_STOCK):
            short = ", ".join(
                f"{product} ({units} short)"
                for product, units in sorted(missing.items())
            )
            self.fail(f"out of stock: {short}")
        self.advance(at)

    def stock_released(self, at: datetime) -> None:
        """Learn that the warehouse put the order's stock back."""
        self._learn(Fact.STOCK_RELEASED, at)

    def payment_charged(self, at: datetime) -> None:
        """Learn that the gateway charged the total (perhaps after the timeout)."""
        self._learn(Fact.PAYMENT_CHARGED, at)

    def payment_declined(self, reason: str, at: datetime) -> None:
        """Learn that the gateway declined the charge."""
        if self.note(Fact.PAYMENT_DECLINED):
            self.fail(f"payment declined: {reason}")
        self.advance(at)

    def payment_refunded(self, at: datetime) -> None:
        """Learn that the order's charge was given back."""
        self._learn(Fact.PAYMENT_REFUNDED, at)

    def order_shipped(self, at: datetime) -> None:
        """Learn that the order shipped: the saga's goal."""
        self._learn(Fact.ORDER_SHIPPED, at)

    def order_cancelled(self, reason: str, at: datetime) -> None:
        """Learn that the order was cancelled (by this saga, or the customer)."""
        if self.note(Fact.ORDER_CANCELLED):
            self.fail(reason)  # nothing new if this saga cancelled it
        self.advance(at)

    def on_timeout(self, name: str) -> None:
        """Give up on the order if the gateway did not answer in time."""
        if name == PAYMENT_TIMEOUT and not self._answered:
            self.fail(f"payment timed out after {self.payment_timeout}")

    # Deciding -----------------------------------------------------------------

    def advance(self, now: datetime) -> None:
        """Decide the next steps from what the saga knows (idempotent)."""
        if self.failure is None:
            self.decide(self.ReserveStock, order_id=self.order_id, items=self.items)
            if (
                Fact.STOCK_RESERVED in self.facts
                and self.amount > 0
                and self.decide(
                    self.RequestPayment,
                    order_id=self.order_id,
                    amount=self.amount,
                    currency=self.currency,
                )
            ):
                self.schedule(PAYMENT_TIMEOUT, now + self.payment_timeout)
            if Fact.STOCK_RESERVED in self.facts and self._paid:
                self.cancel_timeout(PAYMENT_TIMEOUT)
                self.decide(
                    self.ShipOrder,
                    order_id=self.order_id,
                    tracking_number=self.tracking_number,
                )
            return
        self.cancel_timeout(PAYMENT_TIMEOUT)
        if Fact.STOCK_RESERVED in self.facts:
            self.decide(self.ReleaseStock, order_id=self.order_id)
        if Fact.PAYMENT_CHARGED in self.facts:
            self.decide(self.RefundPayment, order_id=self.order_id)
        if Fact.ORDER_CANCELLED not in self.facts:
            self.decide(self.CancelOrder, order_id=self.order_id, reason=self.failure)

    @property
    def tracking_number(self) -> str:
        """The shipment's tracking number (derived from the order's id)."""
        return f"TRK-{self.order_id.hex[:12].upper()}"

    @property
    def outcome(self) -> str:
        """Where the saga is: ``shipped``, ``cancelled`` or ``in progress``.

        ``cancelled`` only once every compensation is done.
        """
        if Fact.ORDER_SHIPPED in self.facts:
            return "shipped"
        stock_back = (
            Fact.STOCK_RESERVED not in self.facts or Fact.STOCK_RELEASED in self.facts
        )
        money_back = (
            Fact.PAYMENT_CHARGED not in self.facts
            or Fact.PAYMENT_REFUNDED in self.facts
        )
        if Fact.ORDER_CANCELLED in self.facts and stock_back and money_back:
            return "cancelled"
        return "in progress"

    @property
    def _answered(self) -> bool:
        return bool({Fact.PAYMENT_CHARGED, Fact.PAYMENT_DECLINED} & self.facts)

    @property
    def _paid(self) -> bool:
        return Fact.PAYMENT_CHARGED in self.facts or self.amount == 0

    def _learn(self, fact: Fact, at: datetime) -> None:
        self.note(fact)
        self.advance(at)


class OrderFulfilment(SagaApplication):
    """Runs the :class:`Fulfilment` saga of every confirmed order.

    Follows ``Orders``, ``Warehouse`` and ``Payments`` (and itself, to send
    its steps); :meth:`connect` gives it the applications it sends commands
    to. ``PAYMENT_TIMEOUT_SECONDS`` sets how long the gateway has to answer.
    """

    PAYMENT_TIMEOUT_SECONDS: Final = "PAYMENT_TIMEOUT_SECONDS"
    """Environment key: seconds the gateway has to answer a payment request
    (default 300). Read by this application when a saga starts: a saga keeps
    the timeout it started with."""
    DEFAULT_PAYMENT_TIMEOUT: ClassVar[timedelta] = timedelta(minutes=5)

    saga_classes: ClassVar[tuple[type[Saga], ...]] = (Fulfilment,)
    upstream_topics: ClassVar[tuple[str, ...]] = tuple(
        get_topic(cls)
        for cls in (
            Order.OrderConfirmed,
            Order.OrderShipped,
            Order.OrderCancelled,
            Reservation.StockReserved,
            Reservation.OutOfStock,
            Reservation.StockReleased,
            Payment.Charged,
            Payment.Declined,
            Payment.Refunded,
        )
    )

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        seconds = self.env.get(self.PAYMENT_TIMEOUT_SECONDS)
        self.payment_timeout = (
            timedelta(seconds=float(seconds))
            if seconds
            else self.DEFAULT_PAYMENT_TIMEOUT
        )
        self._orders: Orders | None = None
        self._warehouse: Warehouse | None = None
        self._payments: Payments | None = None

    def connect(self, orders: Orders, warehouse: Warehouse, payments: Payments) -> None:
        """Give the saga the applications it reads and sends commands to."""
        self._orders, self._warehouse, self._payments = orders, warehouse, payments

    @property
    def orders(self) -> Orders:
        """The Orders application this saga ships and cancels orders in."""
        return self._connected(self._orders)

    @property
    def warehouse(self) -> Warehouse:
        """The Warehouse application this saga reserves and releases stock in."""
        return self._connected(self._warehouse)

    @property
    def payments(self) -> Payments:
        """The Payments application this saga requests and refunds payments in."""
        return self._connected(self._payments)

    def fulfilment(self, order_id: UUID) -> Fulfilment | None:
        """Return an order's saga as it is now, or None if it has none."""
        return self.saga(Fulfilment, order_id)

    # Reacting to upstream events ---------------------------------------------

    @singledispatchmethod
    def react(self, domain_event: Any) -> Saga | None:
        """Ignore events no saga needs."""
        return None

    @react.register
    def _(self, event: Order.OrderConfirmed) -> Saga | None:
        if self.fulfilment(event.originator_id) is not None:
            return None
        # The order as confirmed: its items are fixed from then on.
        order: Order = self.orders.repository.get(
            event.originator_id, version=event.originator_version
        )
        return Fulfilment.begin(
            event.originator_id,
            items={line.product_id: line.quantity for line in order.lines.values()},
            amount=order.total,
            currency=order.currency,
            payment_timeout=self.payment_timeout,
            at=event.timestamp,
        )

    @react.register
    def _(self, event: Order.OrderShipped) -> Saga | None:
        return self._learn(
            event.originator_id, lambda saga: saga.order_shipped(event.timestamp)
        )

    @react.register
    def _(self, event: Order.OrderCancelled) -> Saga | None:
        return self._learn(
            event.originator_id,
            lambda saga: saga.order_cancelled(event.reason, event.timestamp),
        )

    @react.register
    def _(self, event: Reservation.StockReserved) -> Saga | None:
        return self._learn(
            event.order_id, lambda saga: saga.stock_reserved(event.timestamp)
        )

    @react.register
    def _(self, event: Reservation.OutOfStock) -> Saga | None:
        return self._learn(
            event.order_id,
            lambda saga: saga.out_of_stock(event.missing, event.timestamp),
        )

    @react.register
    def _(self, event: Reservation.StockReleased) -> Saga | None:
        return self._learn(
            event.order_id, lambda saga: saga.stock_released(event.timestamp)
        )

    @react.register
    def _(self, event: Payment.Charged) -> Saga | None:
        return self._learn(
            event.order_id, lambda saga: saga.payment_charged(event.timestamp)
        )

    @react.register
    def _(self, event: Payment.Declined) -> Saga | None:
        return self._learn(
            event.order_id,
            lambda saga: saga.payment_declined(event.reason, event.timestamp),
        )

    @react.register
    def _(self, event: Payment.Refunded) -> Saga | None:
        return self._learn(
            event.order_id, lambda saga: saga.payment_refunded(event.timestamp)
        )

    # Sending decided steps -----------------------------------------------------

    def step_applied(self, step: Saga.Step, idempotency_key: str) -> bool:
        """Return whether Orders, Warehouse or Payments holds the step's key.

        Asked only when sending a step failed: a target that stored the key
        applied the step (a delivery before a crash did), so it is done.
        """
        del step  # every target is asked: a key names one step of one saga
        targets = (self.orders, self.warehouse, self.payments)
        return any(t.first_outcome(idempotency_key) is not None for t in targets)

    @singledispatchmethod
    def dispatch(self, step: Saga.Step, idempotency_key: str) -> None:
        """Refuse a step this application has no handler for."""
        super().dispatch(step, idempotency_key)

    @dispatch.register
    def _(self, step: Fulfilment.ReserveStock, idempotency_key: str) -> None:
        self.warehouse.reserve(
            step.order_id, step.items, idempotency_key=idempotency_key
        )

    @dispatch.register
    def _(self, step: Fulfilment.RequestPayment, idempotency_key: str) -> None:
        self.payments.request(
            step.order_id, step.amount, step.currency, idempotency_key=idempotency_key
        )

    @dispatch.register
    def _(self, step: Fulfilment.ShipOrder, idempotency_key: str) -> None:
        try:
            self.orders.ship(
                step.order_id, step.tracking_number, idempotency_key=idempotency_key
            )
        except OrderError:
            order = self.orders.get_order(step.order_id)
            if order.status is OrderStatus.CANCELLED:
                # Cancelled meanwhile (by the customer): the cancellation is
                # an event of Orders, and the saga compensates when it learns it.
                logger.warning(
                    "order not shipped: it was cancelled first (%s)",
                    order.cancel_reason,
                    extra={"order_id": str(step.order_id)},
                )
                return
            if order.status is OrderStatus.SHIPPED:
                # Shipped by another command: the saga's goal is reached, and
                # it learns the shipment from Orders like any other.
                logger.warning(
                    "order not shipped again: it had shipped already, as %s",
                    order.tracking_number,
                    extra={"order_id": str(step.order_id)},
                )
                return
            raise  # not sent: the step is delivered again

    @dispatch.register
    def _(self, step: Fulfilment.ReleaseStock, idempotency_key: str) -> None:
        self.warehouse.release(step.order_id, idempotency_key=idempotency_key)

    @dispatch.register
    def _(self, step: Fulfilment.RefundPayment, idempotency_key: str) -> None:
        self.payments.refund(step.order_id, idempotency_key=idempotency_key)

    @dispatch.register
    def _(self, step: Fulfilment.CancelOrder, idempotency_key: str) -> None:
        try:
            self.orders.cancel(
                step.order_id, step.reason, idempotency_key=idempotency_key
            )
        except OrderError:
            if self.orders.get_order(step.order_id).status is not OrderStatus.CANCELLED:
                raise
            # The customer cancelled it first: nothing more to do.

    # Helpers -------------------------------------------------------------------

    def _learn(self, order_id: UUID, learn: Any) -> Saga | None:
        saga = self.fulfilment(order_id)
        if saga is None:
            return None  # no saga began for this order: nothing to learn
        learn(saga)
        return saga

    @staticmethod
    def _connected(application: T | None) -> T:
        if application is None:
            raise ProgrammingError(
                "OrderFulfilment is not connected to the applications it sends "
                "commands to: call connect(orders, warehouse, payments) first."
            )
        return application
