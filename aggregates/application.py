"""The Orders application: commands and queries on Order aggregates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.utils import get_topic

from aggregates.order import DEFAULT_CURRENCY, Order, OrderError
from ledger.commands import IdempotentApplication
from ledger.persistence import PydanticMapper
from ledger.snapshots import SnapshottingApplication, StrategyMap

__all__ = ["Orders"]


class Orders(IdempotentApplication, SnapshottingApplication):
    """Places orders and carries them through their life.

    Every command loads the order, lets it decide, and saves the events it
    recorded; a rejected command raises :class:`~aggregates.order.OrderError`
    and saves nothing. Each command takes an optional ``idempotency_key``: a
    command repeated with the same key (a retry after a lost answer, a
    redelivered message) is applied once, and the repeat returns what the
    first returned (see :mod:`ledger.commands`).
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
        *,
        idempotency_key: str | None = None,
    ) -> UUID:
        """Place an order with its first items; return its id."""
        first = self.first_outcome(idempotency_key)
        if first is None:
            order = Order.place(customer_id, items, currency)
            first = self.save_once(order, idempotency_key=idempotency_key)
            if first is None:
                return order.id
        return UUID(first.aggregate_ids[0])

    def add_item(
        self,
        order_id: UUID,
        product_id: str,
        quantity: int,
        price: Decimal,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """Add a quantity of a product to an order."""
        self._change(
            order_id,
            lambda order: order.add_item(product_id, quantity, price),
            idempotency_key,
        )

    def remove_item(
        self, order_id: UUID, product_id: str, *, idempotency_key: str | None = None
    ) -> None:
        """Remove a product's line from an order."""
        self._change(
            order_id, lambda order: order.remove_item(product_id), idempotency_key
        )

    def confirm(self, order_id: UUID, *, idempotency_key: str | None = None) -> None:
        """Confirm an order."""
        self._change(order_id, lambda order: order.confirm(), idempotency_key)

    def ship(
        self,
        order_id: UUID,
        tracking_number: str,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """Record that an order shipped."""
        self._change(
            order_id, lambda order: order.ship(tracking_number), idempotency_key
        )

    def cancel(
        self, order_id: UUID, reason: str, *, idempotency_key: str | None = None
    ) -> None:
        """Cancel an order."""
        self._change(order_id, lambda order: order.cancel(reason), idempotency_key)

    def _change(
        self,
        order_id: UUID,
        decide: Callable[[Order], None],
        idempotency_key: str | None,
    ) -> None:
        """Load an order, let it decide, save: once per idempotency key."""
        if self.first_outcome(idempotency_key) is not None:
            return  # applied before
        order = self.get_order(order_id)
        try:
            decide(order)
        except OrderError:
            # A twin of this command (same key) may have been applied since
            # the key was read: then this one is done, not refused.
            if self.first_outcome(idempotency_key) is not None:
                return
            raise
        self.save_once(order, idempotency_key=idempotency_key)

    def get_order(self, order_id: UUID) -> Order:
        """Return an order as it is now."""
        order: Order = self.repository.get(order_id)
        return order
