"""The warehouse's aggregates: stock per product, and each order's reservation.

Rules (each rejection raises :class:`InventoryError` and records nothing):

* a product's stock is a count of units on hand, never below zero;
* stock is added in positive whole units;
* a reservation takes units off the hand of each of its products, all or
  none: an order asking for more than is on hand of any product is out of
  stock, and nothing is reserved;
* an order has at most one reservation (its id follows from the order's);
* releasing puts a reservation's units back on hand, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Final
from uuid import UUID

from ledger.domain import Aggregate

__all__ = [
    "Inventory",
    "InventoryError",
    "Reservation",
    "ReservationStatus",
]

_NAMESPACE: Final = uuid.UUID("8c1a4a55-3f0e-5d8b-a1c6-2e9b7f4d6a10")
"""UUID namespace of inventory and reservation ids. Never change it."""


class InventoryError(ValueError):
    """A command broke one of the warehouse's rules; the message says which."""


class Inventory(Aggregate):
    """The stock of one product: units on hand, and units held per order."""

    if TYPE_CHECKING:  # eventsourcing would make class annotations fields
        product_id: str
        on_hand: int
        held: dict[str, int]

    class Stocked(Aggregate.Created):
        """The warehouse began keeping a product, with some units on hand."""

        product_id: str
        quantity: int

        def apply(self, aggregate: Inventory) -> None:
            """Start the product's stock."""
            aggregate.product_id = self.product_id
            aggregate.on_hand = self.quantity
            aggregate.held = {}

    class Restocked(Aggregate.Event):
        """Units of the product arrived."""

        quantity: int

        def apply(self, aggregate: Inventory) -> None:
            """Add the units to those on hand."""
            aggregate.on_hand += self.quantity

    class Held(Aggregate.Event):
        """Units were taken off hand for an order."""

        order_id: UUID
        quantity: int

        def apply(self, aggregate: Inventory) -> None:
            """Move the units from on hand to the order."""
            aggregate.on_hand -= self.quantity
            aggregate.held[str(self.order_id)] = self.quantity

    class Returned(Aggregate.Event):
        """An order's units went back on hand."""

        order_id: UUID
        quantity: int

        def apply(self, aggregate: Inventory) -> None:
            """Move the order's units back to on hand."""
            del aggregate.held[str(self.order_id)]
            aggregate.on_hand += self.quantity

    @staticmethod
    def id_for(product_id: str) -> UUID:
        """Return the id of a product's inventory."""
        return uuid.uuid5(_NAMESPACE, f"inventory/{product_id}")

    @classmethod
    def stock(cls, product_id: str, quantity: int) -> Inventory:
        """Begin keeping ``product_id``, with ``quantity`` units on hand."""
        if not isinstance(product_id, str) or not product_id:
            msg = f"product_id must be a non-empty str, got {product_id!r}"
            raise InventoryError(msg)
        _require_units(quantity, allow_zero=True)
        return cls._create(
            cls.Stocked,
            id=cls.id_for(product_id),
            product_id=product_id,
            quantity=quantity,
        )

    def restock(self, quantity: int) -> None:
        """Add ``quantity`` units on hand."""
        _require_units(quantity)
        self.trigger_event(self.Restocked, quantity=quantity)

    def hold(self, order_id: UUID, quantity: int) -> None:
        """Take ``quantity`` units off hand for an order."""
        _require_units(quantity)
        if str(order_id) in self.held:
            msg = f"{self.product_id!r} already holds units for order {order_id}"
            raise InventoryError(msg)
        if quantity > self.on_hand:
            msg = (
                f"{self.product_id!r} has {self.on_hand} on hand, "
                f"fewer than the {quantity} wanted"
            )
            raise InventoryError(msg)
        self.trigger_event(self.Held, order_id=order_id, quantity=quantity)

    def give_back(self, order_id: UUID) -> None:
        """Put an order's units back on hand."""
        quantity = self.held.get(str(order_id))
        if quantity is None:
            msg = f"{self.product_id!r} holds nothing for order {order_id}"
            raise InventoryError(msg)
        self.trigger_event(self.Returned, order_id=order_id, quantity=quantity)


class ReservationStatus(StrEnum):
    """Where an order's reservation is."""

    RESERVED = "reserved"
    OUT_OF_STOCK = "out of stock"
    RELEASED = "released"


class Reservation(Aggregate):
    """One order's claim on stock: reserved, refused (out of stock) or released."""

    if TYPE_CHECKING:
        order_id: UUID
        items: dict[str, int]
        missing: dict[str, int]
        status: ReservationStatus

    class StockReserved(Aggregate.Created):
        """Every unit the order wants was taken off hand for it."""

        order_id: UUID
        items: dict[str, int]

        def apply(self, aggregate: Reservation) -> None:
            """Record that the order holds its units."""
            aggregate.order_id = self.order_id
            aggregate.items = dict(self.items)
            aggregate.missing = {}
            aggregate.status = ReservationStatus.RESERVED

    class OutOfStock(Aggregate.Created):
        """Some product had too few units on hand: nothing was reserved."""

        order_id: UUID
        items: dict[str, int]
        missing: dict[str, int]
        """Per product short, the units lacking."""

        def apply(self, aggregate: Reservation) -> None:
            """Record that the order holds nothing."""
            aggregate.order_id = self.order_id
            aggregate.items = dict(self.items)
            aggregate.missing = dict(self.missing)
            aggregate.status = ReservationStatus.OUT_OF_STOCK

    class StockReleased(Aggregate.Event):
        """The order's units went back on hand."""

        order_id: UUID

        def apply(self, aggregate: Reservation) -> None:
            """Record that the order holds nothing any more."""
            aggregate.status = ReservationStatus.RELEASED

    @staticmethod
    def id_for(order_id: UUID) -> UUID:
        """Return the id of an order's reservation."""
        return uuid.uuid5(_NAMESPACE, f"reservation/{order_id}")

    @classmethod
    def reserve(
        cls, order_id: UUID, items: Mapping[str, int], stock: Mapping[str, Inventory]
    ) -> Reservation:
        """Reserve ``items`` (product to units) for an order out of ``stock``.

        ``stock`` holds the inventory of each product there is (a product
        missing from it has none). Either every product holds its units for
        the order, or the reservation is out of stock and none does.
        """
        if not items:
            msg = "a reservation needs at least one product"
            raise InventoryError(msg)
        for quantity in items.values():
            _require_units(quantity)
        missing = {
            product_id: quantity
            - (stock[product_id].on_hand if product_id in stock else 0)
            for product_id, quantity in items.items()
            if product_id not in stock or stock[product_id].on_hand < quantity
        }
        if missing:
            return cls._create(
                cls.OutOfStock,
                id=cls.id_for(order_id),
                order_id=order_id,
                items=dict(items),
                missing=missing,
            )
        for product_id, quantity in items.items():
            stock[product_id].hold(order_id, quantity)
        return cls._create(
            cls.StockReserved,
            id=cls.id_for(order_id),
            order_id=order_id,
            items=dict(items),
        )

    def release(self, stock: Mapping[str, Inventory]) -> bool:
        """Put the order's units back on hand; False if it holds none."""
        if self.status is not ReservationStatus.RESERVED:
            return False
        for product_id in self.items:
            stock[product_id].give_back(self.order_id)
        self.trigger_event(self.StockReleased, order_id=self.order_id)
        return True


def _require_units(quantity: object, *, allow_zero: bool = False) -> None:
    least = 0 if allow_zero else 1
    if type(quantity) is not int or quantity < least:
        msg = f"quantity must be an int >= {least}, got {quantity!r}"
        raise InventoryError(msg)
