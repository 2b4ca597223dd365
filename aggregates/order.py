"""The Order aggregate: placed, given items, confirmed, shipped or cancelled.

Rules (each rejection raises :class:`OrderError` and records nothing):

* lines are keyed by product id; quantity is an int >= 1; price a Decimal >= 0;
* adding a product already on the order adds to its quantity, at the same price;
* removing a product that is not on the order is an error;
* items change only while the order is ``created``;
* confirming needs status ``created`` and at least one line;
* shipping needs status ``confirmed``;
* cancelling is allowed from ``created`` or ``confirmed`` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from decimal import MAX_PREC, Decimal, Inexact, localcontext
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from ledger.domain import Aggregate, AggregateState
from ledger.domain import Snapshot as BaseSnapshot

__all__ = ["Order", "OrderError", "OrderLine", "OrderState", "OrderStatus"]

DEFAULT_CURRENCY: Final = "USD"
"""The currency of orders placed without one, and of every order before v2."""

_CURRENCY_CODE: Final = re.compile(r"[A-Z]{3}")
_ITEM_KEYS: Final = frozenset({"product_id", "quantity", "price"})


class OrderError(ValueError):
    """A command broke one of the Order rules; the message says which."""


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    CREATED = "created"
    CONFIRMED = "confirmed"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


class OrderLine(BaseModel):
    """One product on an order: how many, at what unit price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: str
    quantity: int
    price: Decimal

    @property
    def subtotal(self) -> Decimal:
        """Quantity times price, exactly."""
        return _exactly(lambda: self.quantity * self.price)


class OrderState(AggregateState):
    """What an Order snapshot keeps of the order."""

    customer_id: UUID
    currency: str
    status: OrderStatus
    lines: dict[str, OrderLine]
    tracking_number: str | None
    cancel_reason: str | None


class Order(Aggregate):
    """An order a customer places, fills with items, then has shipped or cancels."""

    if TYPE_CHECKING:
        # Declared for type checkers only: eventsourcing would turn class-level
        # annotations into dataclass fields of the aggregate.
        customer_id: UUID
        currency: str
        status: OrderStatus
        lines: dict[str, OrderLine]
        tracking_number: str | None
        cancel_reason: str | None

    class OrderPlaced(Aggregate.Created):
        """The order was placed; it starts empty, in status ``created``.

        Version 2 added ``currency``.
        """

        class_version = 2

        customer_id: UUID
        currency: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 had no currency: every order then was in US dollars."""
            state["currency"] = DEFAULT_CURRENCY

        def apply(self, aggregate: Order) -> None:
            """Start the order."""
            aggregate.customer_id = self.customer_id
            aggregate.currency = self.currency
            aggregate.status = OrderStatus.CREATED
            aggregate.lines = {}
            aggregate.tracking_number = None
            aggregate.cancel_reason = None

    class ItemAdded(Aggregate.Event):
        """Some quantity of a product was added to the order."""

        product_id: str
        quantity: int
        price: Decimal

        def apply(self, aggregate: Order) -> None:
            """Add a line, or add to the quantity of the product's line."""
            line = aggregate.lines.get(self.product_id)
            quantity = self.quantity + (line.quantity if line else 0)
            aggregate.lines[self.product_id] = OrderLine(
                product_id=self.product_id,
                quantity=quantity,
                price=line.price if line else self.price,
            )

    class ItemRemoved(Aggregate.Event):
        """A product's line was removed from the order."""

        product_id: str

        def apply(self, aggregate: Order) -> None:
            """Remove the product's line."""
            del aggregate.lines[self.product_id]

    class OrderConfirmed(Aggregate.Event):
        """The customer confirmed the order; its items are now fixed."""

        def apply(self, aggregate: Order) -> None:
            """Mark the order confirmed."""
            aggregate.status = OrderStatus.CONFIRMED

    class OrderShipped(Aggregate.Event):
        """The order left the warehouse."""

        tracking_number: str

        def apply(self, aggregate: Order) -> None:
            """Mark the order shipped."""
            aggregate.status = OrderStatus.SHIPPED
            aggregate.tracking_number = self.tracking_number

    class OrderCancelled(Aggregate.Event):
        """The order was cancelled before it shipped."""

        reason: str

        def apply(self, aggregate: Order) -> None:
            """Mark the order cancelled."""
            aggregate.status = OrderStatus.CANCELLED
            aggregate.cancel_reason = self.reason

    class Snapshot(BaseSnapshot):
        """An Order's state at one version."""

        class_version = 1

        state: OrderState

    @classmethod
    def place(
        cls,
        customer_id: UUID,
        items: Iterable[Mapping[str, Any]] = (),
        currency: str = DEFAULT_CURRENCY,
    ) -> Order:
        """Place an order with its first items: dicts of product_id, quantity, price."""
        if not isinstance(customer_id, UUID):
            msg = f"customer_id must be a UUID, got {customer_id!r}"
            raise OrderError(msg)
        if not (isinstance(currency, str) and _CURRENCY_CODE.fullmatch(currency)):
            msg = f"currency must be a three-letter ISO 4217 code, got {currency!r}"
            raise OrderError(msg)
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            msg = (
                "items must be a list of dicts of product_id, quantity and price "
                f"(an empty list for none), got {items!r}"
            )
            raise OrderError(msg)
        items = list(items)
        for item in items:
            if not isinstance(item, Mapping) or set(item) != _ITEM_KEYS:
                msg = (
                    "each item must be a dict with exactly product_id, quantity "
                    f"and price, got {item!r}"
                )
                raise OrderError(msg)
        order = cls._create(cls.OrderPlaced, customer_id=customer_id, currency=currency)
        for item in items:
            order.add_item(item["product_id"], item["quantity"], item["price"])
        return order

    @property
    def total(self) -> Decimal:
        """Sum of quantity times price over the lines, exactly."""
        return _exactly(
            lambda: sum((line.subtotal for line in self.lines.values()), Decimal(0))
        )

    def add_item(self, product_id: str, quantity: int, price: Decimal) -> None:
        """Add ``quantity`` of a product at unit ``price``."""
        self._require_items_can_change()
        _require_product_id(product_id)
        if type(quantity) is not int or quantity < 1:
            msg = f"quantity must be an int >= 1, got {quantity!r}"
            raise OrderError(msg)
        if not isinstance(price, Decimal) or not price.is_finite() or price < 0:
            msg = f"price must be a finite Decimal >= 0, got {price!r}"
            raise OrderError(msg)
        line = self.lines.get(product_id)
        if line is not None and line.price != price:
            msg = (
                f"product {product_id!r} is already on the order at price "
                f"{line.price}, not {price}: a product has one price per order"
            )
            raise OrderError(msg)
        self.trigger_event(
            self.ItemAdded, product_id=product_id, quantity=quantity, price=price
        )

    def remove_item(self, product_id: str) -> None:
        """Remove a product's line from the order."""
        self._require_items_can_change()
        if product_id not in self.lines:
            msg = f"product {product_id!r} is not on the order, so cannot be removed"
            raise OrderError(msg)
        self.trigger_event(self.ItemRemoved, product_id=product_id)

    def confirm(self) -> None:
        """Confirm the order: its items become fixed."""
        self._require_status("confirm", OrderStatus.CREATED)
        if not self.lines:
            msg = "cannot confirm an order without at least one line"
            raise OrderError(msg)
        self.trigger_event(self.OrderConfirmed)

    def ship(self, tracking_number: str) -> None:
        """Record that the order shipped, with its tracking number."""
        self._require_status("ship", OrderStatus.CONFIRMED)
        if not isinstance(tracking_number, str) or not tracking_number.strip():
            msg = f"tracking_number must be a non-blank str, got {tracking_number!r}"
            raise OrderError(msg)
        self.trigger_event(self.OrderShipped, tracking_number=tracking_number)

    def cancel(self, reason: str) -> None:
        """Cancel the order, saying why."""
        self._require_status("cancel", OrderStatus.CREATED, OrderStatus.CONFIRMED)
        if not isinstance(reason, str) or not reason.strip():
            msg = f"reason must be a non-blank str, got {reason!r}"
            raise OrderError(msg)
        self.trigger_event(self.OrderCancelled, reason=reason)

    def _require_items_can_change(self) -> None:
        if self.status is not OrderStatus.CREATED:
            msg = (
                "items can change only while the order is created, "
                f"and it is {self.status}"
            )
            raise OrderError(msg)

    def _require_status(self, action: str, *allowed: OrderStatus) -> None:
        if self.status not in allowed:
            needed = " or ".join(status.value for status in allowed)
            msg = (
                f"can {action} only an order that is {needed}, and it is {self.status}"
            )
            raise OrderError(msg)


def _require_product_id(product_id: object) -> None:
    if not isinstance(product_id, str) or not product_id:
        msg = f"product_id must be a non-empty str, got {product_id!r}"
        raise OrderError(msg)


def _exactly(compute: Callable[[], Decimal]) -> Decimal:
    # The default decimal context rounds to 28 digits; money must not round.
    with localcontext() as context:
        context.prec = MAX_PREC
        context.traps[Inexact] = True
        return compute()
