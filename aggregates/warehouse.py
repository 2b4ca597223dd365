"""The Warehouse application: stock per product, reserved and released per order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from aggregates.inventory import Inventory, Reservation, ReservationStatus
from ledger.commands import (
    Decision,
    IdempotentApplication,
    SavedOutcome,
    keyed_command,
)
from ledger.persistence import PydanticMapper

__all__ = ["Warehouse"]


class Warehouse(IdempotentApplication):
    """Keeps stock, and reserves and releases it for orders.

    Every command takes an optional ``idempotency_key``: repeated with the
    same key, even by a twin running at the same time, it stores nothing more
    and returns what the first returned (see :mod:`ledger.commands`). A
    reservation and the stock it takes are saved in one transaction; a save
    that races another on the same product raises ``IntegrityError`` and may
    be retried.
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}

    @keyed_command()
    def stock(
        self, product_id: str, quantity: int, *, idempotency_key: str | None = None
    ) -> Decision[None]:
        """Add ``quantity`` units of a product (the first time, begin keeping it)."""
        inventory = self.get_inventory(product_id)
        if inventory is None:
            inventory = Inventory.stock(product_id, quantity)
        else:
            inventory.restock(quantity)
        return Decision(None, inventory)

    @keyed_command(
        answer=lambda warehouse, first, order_id, **_: warehouse._reserved_status(
            order_id, first
        )
    )
    def reserve(
        self,
        order_id: UUID,
        items: Mapping[str, int],
        *,
        idempotency_key: str | None = None,
    ) -> Decision[ReservationStatus]:
        """Reserve ``items`` (product to units) for an order, all or none.

        Returns the reservation's status: ``reserved``, or ``out of stock``
        (nothing reserved). An order reserves once: asked again with another
        key, it returns the status of the reservation it has; with the same
        key, the status the first reservation returned.
        """
        existing = self.get_reservation(order_id)
        if existing is not None:
            return Decision(existing.status)
        stock = {
            product_id: inventory
            for product_id in items
            if (inventory := self.get_inventory(product_id)) is not None
        }
        reservation = Reservation.reserve(order_id, items, stock)
        return Decision(reservation.status, reservation, *stock.values())

    @keyed_command(answer=lambda *_, **__: True)
    def release(
        self, order_id: UUID, *, idempotency_key: str | None = None
    ) -> Decision[bool]:
        """Put an order's reserved units back on hand; False if it holds none."""
        reservation = self.get_reservation(order_id)
        if reservation is None:
            return Decision(False)
        stock = {
            product_id: self._inventory(product_id) for product_id in reservation.items
        }
        if not reservation.release(stock):
            return Decision(False)
        return Decision(True, reservation, *stock.values())

    def _reserved_status(
        self, order_id: UUID, first: SavedOutcome | None = None
    ) -> ReservationStatus:
        """Return an order's reservation status (as ``first`` saved it, if given)."""
        reservation_id = Reservation.id_for(order_id)
        version = None if first is None else dict(first.events).get(str(reservation_id))
        try:
            reservation: Reservation = self.repository.get(
                reservation_id, version=version
            )
        except AggregateNotFoundError:
            msg = (
                f"order {order_id} has no reservation: its key was saved by "
                "another command (reserve with a key of its own)"
            )
            raise LookupError(msg) from None
        return reservation.status

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
