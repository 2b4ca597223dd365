"""The example as services: Orders publishes, Warehouse and Payments receive.

Orders publishes its integration events (:mod:`projections.integration`,
source ``ledger.orders``) to an EventBridge bus. Warehouse and Payments are
services of their own: each has an EventBridge rule matching the detail
types its inbox handles (:func:`event_pattern`), an SQS queue the rule
targets, and an inbox (:func:`warehouse_inbox`, :func:`payments_inbox`)
that calls its application's keyed commands, keyed by the integration
event's ``id``. Neither reads Orders' tables: each owns its tables, under a
table prefix of its own (:func:`service_env`), so a policy granting
``table/{prefix}*`` gives it its tables and no other (``deploy/template.yaml``
wires both, each role naming its service's tables: ``deploy/README.md``, "The
services").

What crosses the bus
    ``OrderConfirmed.v2`` (the order's lines, currency and total, fixed at
    confirmation): Warehouse reserves the lines' units, Payments requests
    the total (nothing for a free order, as the saga does). Both commands
    are idempotent per order in the domain (an order has one reservation
    and one payment) and keyed per event in the inbox, so they need no
    order among deliveries and no other service's facts: they are safe to
    receive from a bus that promises neither order nor a single delivery.

What stays in-process: the fulfilment saga (:mod:`aggregates.fulfilment`)
    Everything that needs the facts of more than one service, or their
    order: ship once stock is reserved *and* the payment charged; the
    payment's timeout; the compensations (release stock on a decline, a
    timeout or a cancellation, refund a charge that came late or was
    cancelled); cancelling the order with the reason. Those facts
    (``StockReserved``, ``OutOfStock``, ``Charged``, ``Declined``...) are
    Warehouse's and Payments' domain events, which nothing publishes to
    the bus, and a release received before the reservation it undoes
    (EventBridge keeps no order) would leave the stock held: the saga sees
    each order's facts in its own order and compensates whatever arrives
    late. So the cancellation is deliberately *not* routed to Warehouse.

The saga keeps working unchanged beside the bus, as long as its process
is given the three applications (``connect(orders, warehouse, payments)``)
made with each service's environment: its ``ReserveStock`` and
``RequestPayment`` steps find the reservation and the payment the inboxes
made and store nothing more (``Warehouse.reserve`` answers the existing
reservation's status, ``Payments.request`` does nothing for an order
already asked for). One difference: the payment is now requested at
confirmation, not after the stock is reserved, so an order out of stock
may be charged and then refunded by the saga's compensation. For the
services to be separate in deployment too (the saga not reading
Warehouse's and Payments' tables), Warehouse and Payments would publish
their own integration events and the saga would learn them through an
inbox of its own; that is a change of the saga, not made here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Final
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aggregates.inventory import InventoryError
from aggregates.payment import PaymentError
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.inbox import InboundMessage, Inbox, lambda_handler
from projections.integration import SOURCE

__all__ = [
    "PAYMENTS",
    "SCHEMAS",
    "WAREHOUSE",
    "ConfirmedLine",
    "OrderToCharge",
    "OrderToReserve",
    "event_pattern",
    "make_payments_inbox",
    "make_warehouse_inbox",
    "payments_handler",
    "payments_inbox",
    "service_env",
    "warehouse_handler",
    "warehouse_inbox",
]

WAREHOUSE: Final = "Warehouse"
"""The Warehouse service's name: its application's, its inbox's (so
``WAREHOUSE_DYNAMODB_TABLE_PREFIX`` applies to both) and its rule's."""
PAYMENTS: Final = "Payments"
"""The Payments service's name (see :data:`WAREHOUSE`)."""

SCHEMAS: Final = Path(__file__).parent.parent / "schemas" / "integration"
"""The publisher's JSON Schema files: each received event is checked against
its file before its model reads it."""


class ConfirmedLine(BaseModel):
    """One line of a confirmed order, as the services read it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    product_id: str
    quantity: int = Field(ge=1)
    unit_price: Decimal
    subtotal: Decimal


class OrderToReserve(InboundMessage):
    """What Warehouse reads of ``OrderConfirmed.v2``: the units to reserve."""

    # A tolerant reader: fields Orders adds in a compatible change are ignored.
    model_config = ConfigDict(frozen=True, extra="ignore")

    message_type: ClassVar[str] = "OrderConfirmed.v2"

    order_id: UUID
    lines: list[ConfirmedLine] = Field(min_length=1)

    @property
    def items(self) -> dict[str, int]:
        """Units wanted per product."""
        wanted: dict[str, int] = {}
        for line in self.lines:
            wanted[line.product_id] = wanted.get(line.product_id, 0) + line.quantity
        return wanted


class OrderToCharge(InboundMessage):
    """What Payments reads of ``OrderConfirmed.v2``: the amount to ask for.

    The total must be the sum of the lines' subtotals, each its quantity
    times its unit price, exactly (as the schema file promises): an event
    that breaks that is refused, never charged.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_type: ClassVar[str] = "OrderConfirmed.v2"

    order_id: UUID
    currency: str
    lines: list[ConfirmedLine] = Field(min_length=1)
    total: Decimal

    @model_validator(mode="after")
    def _total_is_the_lines(self) -> OrderToCharge:
        if any(line.subtotal != line.quantity * line.unit_price for line in self.lines):
            raise ValueError("a line's subtotal is not its quantity times its price")
        if self.total != sum((line.subtotal for line in self.lines), Decimal(0)):
            raise ValueError("the total is not the sum of the lines' subtotals")
        return self


def warehouse_inbox(
    warehouse: Warehouse,
    *,
    env: Mapping[str, str] | None = None,
    schemas: Path | None = SCHEMAS,
    retry_delays: tuple[float, ...] | None = None,
) -> Inbox:
    """Return Warehouse's inbox: a confirmed order's units are reserved, once."""
    inbox = Inbox(
        WAREHOUSE,
        warehouse,
        refusals=(InventoryError,),
        env=env,
        schemas=schemas,
        retry_delays=retry_delays,
    )

    @inbox.handles(OrderToReserve)
    def reserve(order: OrderToReserve, key: str) -> None:
        # Out of stock is an answer, not a refusal: the saga learns it from
        # Warehouse's events and cancels the order.
        warehouse.reserve(order.order_id, order.items, idempotency_key=key)

    return inbox


def payments_inbox(
    payments: Payments,
    *,
    env: Mapping[str, str] | None = None,
    schemas: Path | None = SCHEMAS,
    retry_delays: tuple[float, ...] | None = None,
) -> Inbox:
    """Return Payments' inbox: a confirmed order's total is requested, once."""
    inbox = Inbox(
        PAYMENTS,
        payments,
        refusals=(PaymentError,),
        env=env,
        schemas=schemas,
        retry_delays=retry_delays,
    )

    @inbox.handles(OrderToCharge)
    def request(order: OrderToCharge, key: str) -> None:
        if order.total == 0:
            return  # nothing to charge (the saga ships a free order unpaid)
        payments.request(
            order.order_id, order.total, order.currency, idempotency_key=key
        )

    return inbox


def event_pattern(inbox: Inbox) -> dict[str, list[str]]:
    """Return the EventBridge pattern of the rule feeding ``inbox``'s queue.

    It matches Orders' events of exactly the detail types the inbox
    handles, so the queue carries nothing the service would park.
    """
    return {"source": [SOURCE], "detail-type": sorted(inbox.routes)}


def service_env(
    service: str, prefix: str, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return ``env`` with ``service``'s tables under a ``prefix`` of its own.

    Sets ``{SERVICE}_DYNAMODB_TABLE_PREFIX``, which the application's store
    and its inbox (both named after the service) read before the shared
    ``DYNAMODB_TABLE_PREFIX``: services in one process (tests, the demo)
    keep separate tables. Deployed, each service's function simply has its
    own ``DYNAMODB_TABLE_PREFIX``.
    """
    return {**(env or {}), f"{service.upper()}_DYNAMODB_TABLE_PREFIX": prefix}


def make_warehouse_inbox(env: Mapping[str, str]) -> Inbox:
    """Return Warehouse's inbox on its own application (for ``ledger inbox``).

    ``ledger inbox dead-letters list --inbox aggregates.services:make_warehouse_inbox``
    """
    return warehouse_inbox(Warehouse(env=dict(env)), env=env)


def make_payments_inbox(env: Mapping[str, str]) -> Inbox:
    """Return Payments' inbox on its own application (for ``ledger inbox``)."""
    return payments_inbox(Payments(env=dict(env)), env=env)


def _from_environ(make: Callable[[Mapping[str, str]], Inbox]) -> Callable[[], Inbox]:
    return lambda: make(dict(os.environ))


warehouse_handler: Callable[[Mapping[str, Any], Any], Any] = lambda_handler(
    _from_environ(make_warehouse_inbox)
)
"""Warehouse's Lambda entry point (an SQS event source mapping on its queue,
with ``ReportBatchItemFailures``); its inbox is made at the first call."""
payments_handler: Callable[[Mapping[str, Any], Any], Any] = lambda_handler(
    _from_environ(make_payments_inbox)
)
"""Payments' Lambda entry point (see :data:`warehouse_handler`)."""
