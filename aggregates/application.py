"""The Orders application: commands and queries on Order aggregates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.utils import get_topic

from aggregates.order import DEFAULT_CURRENCY, Order
from ledger.commands import Decision, IdempotentApplication, keyed_command
from ledger.persistence import PydanticMapper
from ledger.snapshots import SnapshottingApplication, StrategyMap

__all__ = ["Orders"]


class Orders(IdempotentApplication, SnapshottingApplication):
    """Places orders and carries them through their life.

    Every command loads the order, lets it decide, and saves the events it
    recorded; a rejected command raises :class:`~aggregates.order.OrderError`
    and saves nothing. Each command takes an optional ``idempotency_key``: a
    command repeated with the same key (a retry after a lost answer, a
    redelivered message, a twin sent at the same time) is applied once, and
    every delivery returns what the first returned; a key sent with another
    command raises ``IdempotencyKeyReusedError`` (see :mod:`ledger.commands`).
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}
    # No snapshots until the benchmarks say which strategy pays for itself;
    # pass ``snapshot_strategies=`` to choose one.
    snapshot_strategies: ClassVar[StrategyMap] = {}

    @keyed_command(answer=lambda _orders, first, **_: UUID(first.aggregate_ids[0]))
    def place_order(
        self,
        customer_id: UUID,
        items: Iterable[Mapping[str, Any]],
        currency: str = DEFAULT_CURRENCY,
        *,
        idempotency_key: str | None = None,
    ) -> Decision[UUID]:
        """Place an order with its first items; return its id."""
        order = Order.place(customer_id, items, currency)
        return Decision(order.id, order)

    @keyed_command()
    def add_item(
        self,
        order_id: UUID,
        product_id: str,
        quantity: int,
        price: Decimal,
        *,
        idempotency_key: str | None = None,
    ) -> Decision[None]:
        """Add a quantity of a product to an order."""
        return self._change(
            order_id, lambda order: order.add_item(product_id, quantity, price)
        )

    @keyed_command()
    def remove_item(
        self, order_id: UUID, product_id: str, *, idempotency_key: str | None = None
    ) -> Decision[None]:
        """Remove a product's line from an order."""
        return self._change(order_id, lambda order: order.remove_item(product_id))

    @keyed_command()
    def confirm(
        self, order_id: UUID, *, idempotency_key: str | None = None
    ) -> Decision[None]:
        """Confirm an order."""
        return self._change(order_id, lambda order: order.confirm())

    @keyed_command()
    def ship(
        self,
        order_id: UUID,
        tracking_number: str,
        *,
        idempotency_key: str | None = None,
    ) -> Decision[None]:
        """Record that an order shipped."""
        return self._change(order_id, lambda order: order.ship(tracking_number))

    @keyed_command()
    def cancel(
        self, order_id: UUID, reason: str, *, idempotency_key: str | None = None
    ) -> Decision[None]:
        """Cancel an order."""
        return self._change(order_id, lambda order: order.cancel(reason))

    def _change(
        self, order_id: UUID, decide: Callable[[Order], None]
    ) -> Decision[None]:
        """Load an order and let it decide (a refusal raises ``OrderError``)."""
        order = self.get_order(order_id)
        decide(order)
        return Decision(None, order)

    def get_order(self, order_id: UUID) -> Order:
        """Return an order as it is now."""
        order: Order = self.repository.get(order_id)
        return order
