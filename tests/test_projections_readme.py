"""The README's projections snippet, run as written."""

# ruff: noqa: PLC0415 - the snippet's imports are part of what the README shows

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4


def test_readme_projector_snippet_runs(dynamodb_env):
    # --- README snippet starts ---
    from aggregates.application import Orders
    from aggregates.order import Order
    from ledger.projections import Projector, ReadModel, handles
    from ledger.projections.dynamodb import open_view
    from ledger.projections.rebuild import rebuild

    class OrderCount(ReadModel):
        id: str
        placed: int = 0

    class OrderCounter(Projector):
        name = "OrderCounter"

        @handles(Order.OrderPlaced)
        def placed(self, event, models):
            count = models.get(OrderCount, "all") or OrderCount(id="all")
            models.put(count.model_copy(update={"placed": count.placed + 1}))

    orders = Orders()  # PERSISTENCE_MODULE=ledger.dynamodb
    orders.place_order(
        uuid4(), [{"product_id": "a", "quantity": 1, "price": Decimal(1)}]
    )
    view = open_view(OrderCounter)
    result = rebuild(orders, OrderCounter, view, progress=print)  # blue/green
    # --- README snippet ends ---

    assert result.table_version == 2
    assert view.load("OrderCount#all") is not None
    orders.close()
