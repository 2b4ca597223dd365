"""The Warehouse application: stock per product, reserved and released per order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from aggregates.inventory import Inventory, Reservation, ReservationStatus
from ledger.commands import IdempotentApplication
from ledger.persistence import PydanticMapper

__all__ = ["Warehouse"]


class Warehouse(IdempotentApplication):
    """Keeps stock, and reserves and releases it for orders.

    Every command takes an optional ``idempotency_key``: repeated with the
    same key it stores nothing more. A reservation and the stock it takes are
    saved in one transaction; a save that races another on the same product
    raises ``IntegrityError`` and may be retried.
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}

    def stock(
        self, product_id: str, quantity: int, *, idempotency_key: str | None = None
    ) -> None:
        """Add ``quantity`` units of a product (the first time, begin keeping it)."""
        if self.first_outcome(idempotency_key) is not None:
            return
        inventory = self.get_inventory(product_id)
        if inventory is None:
            inventory = Inventory.stock(product_id, quantity)
        else:
            inventory.restock(quantity)
        self.save_once(inventory, idempotency_key=idempotency_key)

    def reserve(
        self,
        order_id: UUID,
        items: Mapping[str, int],
        *,
        idempotency_key: str | None = None,
    ) -> ReservationStatus:
        """Reserve ``items`` (product to units) for an order, all or none.

        Returns the reservation's status: ``reserved``, or ``out of stock``
        (nothing reserved). An order reserves once: asked again, with any key,
        it returns the status of the reservation it has.
        """
        existing = self.get_reservation(order_id)
        if existing is None and self.first_outcome(idempotency_key) is None:
            stock = {
                product_id: inventory
                for product_id in items
                if (inventory := self.get_inventory(product_id)) is not None
            }
            reservation = Reservation.reserve(order_id, items, stock)
            if (
                self.save_once(
                    reservation, *stock.values(), idempotency_key=idempotency_key
                )
                is None
            ):
                return reservation.status
            existing = self.get_reservation(order_id)
        if existing is None:  # pragma: no cover - a key's save always holds one
            msg = f"order {order_id}'s reservation was saved but cannot be read"
            raise LookupError(msg)
        return existing.status

    def release(self, order_id: UUID, *, idempotency_key: str | None = None) -> bool:
        """Put an order's reserved units back on hand; False if it holds none."""
        if self.first_outcome(idempotency_key) is not None:
            return True
        reservation = self.get_reservation(order_id)
        if reservation is None:
            return False
        stock = {
            product_id: self._inventory(product_id) for product_id in reservation.items
        }
        if not reservation.release(stock):
            return False
        self.save_once(reservation, *stock.values(), idempotency_key=idempotency_key)
        return True

    def get_inventory(self, product_id: str) -> Inventory | None:
        """Return a product's stock, or None if the warehouse never kept it."""
        inventory: Inventory | None = self._find(Inventory.id_for(product_id))
        return inventory

    def get_reservation(self, order_id: UUID) -> Reservation | None:
        """Return an order's reservation, or None if it has none."""
        reservation: Reservation | None = self._find(Reservation.id_for(order_id))
        return reservation

    def _inventory(self, product_id: str) -> Inventory:
        inventory: Inventory = self.repository.get(Inventory.id_for(product_id))
        return inventory

    def _find(self, aggregate_id: UUID) -> Any:
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
