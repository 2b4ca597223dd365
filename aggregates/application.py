"""The Orders application: commands and queries on Order aggregates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.utils import get_topic

from aggregates.order import DEFAULT_CURRENCY, Order
from ledger.persistence import PydanticMapper
from ledger.snapshots import SnapshottingApplication, StrategyMap

__all__ = ["Orders"]


class Orders(SnapshottingApplication):
    """Places orders and carries them through their life.

    Every command loads the order, lets it decide, and saves the events it
    recorded; a rejected command raises :class:`~aggregates.order.OrderError`
    and saves nothing.
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}
    # No snapshots until the benchmarks say which strategy pays for itself;
    # pass ``snapshot_strategies=`` to choose one.
    snapshot_strategies: ClassVar[StrategyMap] = {}

    def place_order(
        self,
        customer_id: UUID,
        items: Iterable[Mapping[str, Any]],
        currency: str = DEFAULT_CURRENCY,
    ) -> UUID:
        """Place an order with its first items; return its id."""
        order = Order.place(customer_id, items, currency)
        self.save(order)
        return order.id

    def add_item(
        self, order_id: UUID, product_id: str, quantity: int, price: Decimal
    ) -> None:
        """Add a quantity of a product to an order."""
        order = self.get_order(order_id)
        order.add_item(product_id, quantity, price)
        self.save(order)

    def remove_item(self, order_id: UUID, product_id: str) -> None:
        """Remove a product's line from an order."""
        order = self.get_order(order_id)
        order.remove_item(product_id)
        self.save(order)

    def confirm(self, order_id: UUID) -> None:
        """Confirm an order."""
        order = self.get_order(order_id)
        order.confirm()
        self.save(order)

    def ship(self, order_id: UUID, tracking_number: str) -> None:
        """Record that an order shipped."""
        order = self.get_order(order_id)
        order.ship(tracking_number)
        self.save(order)

    def cancel(self, order_id: UUID, reason: str) -> None:
        """Cancel an order."""
        order = self.get_order(order_id)
        order.cancel(reason)
        self.save(order)

    def get_order(self, order_id: UUID) -> Order:
        """Return an order as it is now."""
        order: Order = self.repository.get(order_id)
        return order
