"""The Order domain's integration events, and what publishes them.

Other systems learn about orders from these events on an EventBridge bus
(source ``ledger.orders``), never from the stored domain events. Published:
an order placed, confirmed, shipped or cancelled. Not published: items
added and removed while the order is being filled (they are the order's
own business until it is confirmed).

Each class is a released schema (``schemas/integration/ledger.orders/``):
it never changes. A change is a new class (``OrderConfirmedV2``, detail-type
``OrderConfirmed.v2``) published beside the old one until consumers have
moved: every version of an event is published each time it happens, and a
consumer chooses the versions it reads by ``detail-type`` in its
EventBridge rule, so consumers of v1 keep receiving v1.

``OrderConfirmed.v2`` is the order as a consumer needs it: its customer,
currency, lines and total, fixed from confirmation on (read from the order
as its confirmation left it). An order placed is not given lines: they are
separate events and change until confirmation, so ``OrderPlaced`` has no
v2 (lines there would be empty, or not the same on every publication).
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from aggregates.order import Order
from ledger.publishing import IntegrationEvent, Publication, translates

__all__ = [
    "SOURCE",
    "OrderCancelledV1",
    "OrderConfirmedV1",
    "OrderConfirmedV2",
    "OrderEvents",
    "OrderLineV2",
    "OrderPlacedV1",
    "OrderShippedV1",
    "lambda_handler",
]

SOURCE = "ledger.orders"
"""EventBridge ``source`` of every Order integration event."""


class OrderPlacedV1(IntegrationEvent):
    """A customer placed an order (it has no items yet: they follow it)."""

    source: ClassVar[str] = SOURCE
    detail_type: ClassVar[str] = "OrderPlaced.v1"

    order_id: UUID
    customer_id: UUID
    currency: str = Field(description="ISO 4217 code of the order's prices.")


class OrderConfirmedV1(IntegrationEvent):
    """The customer confirmed the order; its items are fixed from now on."""

    source: ClassVar[str] = SOURCE
    detail_type: ClassVar[str] = "OrderConfirmed.v1"

    order_id: UUID


class OrderLineV2(BaseModel):
    """One product on a confirmed order (amounts are exact decimal strings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: str
    quantity: int = Field(ge=1)
    unit_price: Decimal = Field(description="Price of one unit, in the currency.")
    subtotal: Decimal = Field(description="Quantity times unit price, exactly.")


class OrderConfirmedV2(IntegrationEvent):
    """The customer confirmed the order: who, what and how much, fixed from now on."""

    source: ClassVar[str] = SOURCE
    detail_type: ClassVar[str] = "OrderConfirmed.v2"

    order_id: UUID
    customer_id: UUID
    currency: str = Field(description="ISO 4217 code of the order's amounts.")
    lines: list[OrderLineV2] = Field(
        min_length=1, description="In the order they were first added."
    )
    total: Decimal = Field(description="Sum of the lines' subtotals, exactly.")


class OrderShippedV1(IntegrationEvent):
    """The order left the warehouse."""

    source: ClassVar[str] = SOURCE
    detail_type: ClassVar[str] = "OrderShipped.v1"

    order_id: UUID
    tracking_number: str


class OrderCancelledV1(IntegrationEvent):
    """The order was cancelled before it shipped."""

    source: ClassVar[str] = SOURCE
    detail_type: ClassVar[str] = "OrderCancelled.v1"

    order_id: UUID
    reason: str


class OrderEvents(Publication):
    """Publishes the Order integration events."""

    name = "OrderEvents"
    events = (
        OrderPlacedV1,
        OrderConfirmedV1,
        OrderConfirmedV2,
        OrderShippedV1,
        OrderCancelledV1,
    )

    @translates(Order.OrderPlaced)
    def placed(self, event: Order.OrderPlaced) -> OrderPlacedV1:
        """Make OrderPlaced.v1 of an order placed."""
        return OrderPlacedV1.of(
            event,
            order_id=event.originator_id,
            customer_id=event.customer_id,
            currency=event.currency,
        )

    @translates(Order.OrderConfirmed)
    def confirmed(
        self, event: Order.OrderConfirmed
    ) -> tuple[OrderConfirmedV1, OrderConfirmedV2]:
        """Make OrderConfirmed.v1 and .v2 of an order confirmed."""
        order: Order = self.aggregate_at(event)
        return (
            OrderConfirmedV1.of(event, order_id=event.originator_id),
            OrderConfirmedV2.of(
                event,
                order_id=event.originator_id,
                customer_id=order.customer_id,
                currency=order.currency,
                lines=[
                    OrderLineV2(
                        product_id=line.product_id,
                        quantity=line.quantity,
                        unit_price=line.price,
                        subtotal=line.subtotal,
                    )
                    for line in order.lines.values()
                ],
                total=order.total,
            ),
        )

    @translates(Order.OrderShipped)
    def shipped(self, event: Order.OrderShipped) -> OrderShippedV1:
        """Make OrderShipped.v1 of an order shipped."""
        return OrderShippedV1.of(
            event, order_id=event.originator_id, tracking_number=event.tracking_number
        )

    @translates(Order.OrderCancelled)
    def cancelled(self, event: Order.OrderCancelled) -> OrderCancelledV1:
        """Make OrderCancelled.v1 of an order cancelled."""
        return OrderCancelledV1.of(
            event, order_id=event.originator_id, reason=event.reason
        )


@functools.cache
def _handler() -> Any:
    from aggregates.application import Orders  # noqa: PLC0415 - Lambda-only path
    from ledger.publishing import lambda_handler as make  # noqa: PLC0415

    return make(OrderEvents, Orders)


def lambda_handler(event: Any, context: Any) -> Any:
    """Publish a Lambda batch of stream records as Order integration events.

    For an event source mapping on the events stream (``stream`` ordering;
    ``deploy/template.yaml``, indexed, runs ``ledger.index_consumers.publish``
    instead). Builds its application and publisher at the first invocation,
    not at import.
    """
    return _handler()(event, context)
