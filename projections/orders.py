"""Order read models: a summary per order and the orders of each customer.

``OrderSummary`` answers "where is this order, what is it worth";
``CustomerOrders`` answers "what has this customer ordered". Lifetime value
counts orders that are confirmed or shipped (a cancelled order stops
counting), per currency.
"""

from __future__ import annotations

import functools
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from pydantic import Field, computed_field

from aggregates.order import Order, OrderStatus
from ledger.projections import Projector, ReadModel, ReadModelView, Session, handles

__all__ = [
    "CustomerOrders",
    "OrderLineView",
    "OrderProjector",
    "OrderSummary",
    "get_order_summary",
    "list_customer_orders",
]

_COUNTED = frozenset({OrderStatus.CONFIRMED, OrderStatus.SHIPPED})
"""Statuses whose orders count towards a customer's lifetime value."""


class OrderLineView(ReadModel):
    """One product on an order, as the summary shows it."""

    product_id: str
    quantity: int
    price: Decimal


class OrderSummary(ReadModel):
    """One order at a glance."""

    key_field: ClassVar[str] = "order_id"

    order_id: UUID
    customer_id: UUID
    status: OrderStatus
    currency: str
    lines: dict[str, OrderLineView] = Field(default_factory=dict)
    tracking_number: str | None = None
    last_event_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> Decimal:
        """Sum of quantity times price over the lines."""
        return sum(
            (line.quantity * line.price for line in self.lines.values()), Decimal(0)
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def line_count(self) -> int:
        """How many products are on the order."""
        return len(self.lines)


class CustomerOrders(ReadModel):
    """Every order of one customer, and what the customer has spent."""

    key_field: ClassVar[str] = "customer_id"

    customer_id: UUID
    placed_at: dict[UUID, datetime] = Field(default_factory=dict)
    """When each order was placed. A map, not a list: stream feeds apply
    different orders in any interleaving, and a map comes out the same."""
    lifetime_value: dict[str, Decimal] = Field(default_factory=dict)
    """Totals of confirmed and shipped orders, per currency."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def order_ids(self) -> list[UUID]:
        """The customer's orders, oldest first."""
        return sorted(self.placed_at, key=lambda o: (self.placed_at[o], str(o)))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def order_count(self) -> int:
        """How many orders the customer has placed."""
        return len(self.placed_at)


class OrderProjector(Projector):
    """Keeps ``OrderSummary`` and ``CustomerOrders`` up to date."""

    name = "OrderViews"

    @handles
    def placed(self, event: Order.OrderPlaced, models: Session) -> None:
        """Start the summary; add the order to its customer."""
        models.put(
            OrderSummary(
                order_id=event.originator_id,
                customer_id=event.customer_id,
                status=OrderStatus.CREATED,
                currency=event.currency,
                last_event_at=event.timestamp,
            )
        )
        customer = models.get(CustomerOrders, event.customer_id) or CustomerOrders(
            customer_id=event.customer_id
        )
        placed_at = {**customer.placed_at, event.originator_id: event.timestamp}
        models.put(customer.model_copy(update={"placed_at": placed_at}))

    @handles
    def item_added(self, event: Order.ItemAdded, models: Session) -> None:
        """Add to the product's line, at the line's price."""
        summary = _summary(models, event)
        line = summary.lines.get(event.product_id)
        quantity = event.quantity + (line.quantity if line else 0)
        new_line = OrderLineView(
            product_id=event.product_id,
            quantity=quantity,
            price=line.price if line else event.price,
        )
        lines = {**summary.lines, event.product_id: new_line}
        models.put(_touched(summary, event, lines=lines))

    @handles
    def item_removed(self, event: Order.ItemRemoved, models: Session) -> None:
        """Remove the product's line."""
        summary = _summary(models, event)
        lines = {k: v for k, v in summary.lines.items() if k != event.product_id}
        models.put(_touched(summary, event, lines=lines))

    @handles
    def confirmed(self, event: Order.OrderConfirmed, models: Session) -> None:
        """Mark confirmed; the order starts counting towards lifetime value."""
        self._move(models, event, OrderStatus.CONFIRMED)

    @handles
    def shipped(self, event: Order.OrderShipped, models: Session) -> None:
        """Mark shipped with its tracking number."""
        self._move(
            models, event, OrderStatus.SHIPPED, tracking_number=event.tracking_number
        )

    @handles
    def cancelled(self, event: Order.OrderCancelled, models: Session) -> None:
        """Mark cancelled; the order stops counting towards lifetime value."""
        self._move(models, event, OrderStatus.CANCELLED)

    @staticmethod
    def _move(models: Session, event: Any, status: OrderStatus, **update: Any) -> None:
        summary = _summary(models, event)
        counted_before = summary.status in _COUNTED
        counted_after = status in _COUNTED
        models.put(_touched(summary, event, status=status, **update))
        if counted_before == counted_after:
            return
        customer = models.get(CustomerOrders, summary.customer_id) or CustomerOrders(
            customer_id=summary.customer_id
        )
        change = summary.total if counted_after else -summary.total
        value = dict(customer.lifetime_value)
        value[summary.currency] = value.get(summary.currency, Decimal(0)) + change
        models.put(customer.model_copy(update={"lifetime_value": value}))


def _summary(models: Session, event: Any) -> OrderSummary:
    summary = models.get(OrderSummary, event.originator_id)
    if summary is None:
        msg = (
            f"No summary of order {event.originator_id} before its "
            f"{type(event).__name__}: its OrderPlaced was not applied"
        )
        raise LookupError(msg)
    return summary


def _touched(summary: OrderSummary, event: Any, **update: Any) -> OrderSummary:
    return summary.model_copy(update={**update, "last_event_at": event.timestamp})


def _readable(view: ReadModelView) -> Session:
    # Readers follow a rebuild's switch: resolve the active version per query
    # (one GetItem of the pointer).
    view.follow_active()
    return Session(view)


def get_order_summary(view: ReadModelView, order_id: UUID) -> OrderSummary | None:
    """Return an order's summary, or None if the projection has not seen it."""
    return _readable(view).get(OrderSummary, order_id)


def list_customer_orders(
    view: ReadModelView, customer_id: UUID
) -> CustomerOrders | None:
    """Return a customer's orders and lifetime value, or None if none is known."""
    return _readable(view).get(CustomerOrders, customer_id)


@functools.cache
def _handler() -> Any:
    from aggregates.application import Orders  # noqa: PLC0415 - Lambda-only path
    from ledger.projections.streams import lambda_handler as make  # noqa: PLC0415

    return make(OrderProjector, Orders)


def lambda_handler(event: Any, context: Any) -> Any:
    """Apply a Lambda batch of stream records to the Order read models.

    For an event source mapping on the events stream (``stream`` ordering;
    ``deploy/template.yaml``, indexed, runs ``ledger.index_consumers.project``
    instead). Builds its application and view at the first invocation, not
    at import.
    """
    return _handler()(event, context)
