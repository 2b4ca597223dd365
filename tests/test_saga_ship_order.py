"""What the fulfilment saga's ShipOrder step does when Orders refuses the shipment.

The step is sent by hand (as its dispatcher does, with its key) to an order
in each state, on DynamoDB Local.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from aggregates.fulfilment import Fulfilment
from aggregates.order import OrderError, OrderStatus
from tests.test_saga_fulfilment import (  # noqa: F401 - shop_env is a fixture
    TEA,
    Shop,
    open_shop,
    shop_env,
)

LOGGER = "aggregates.fulfilment"


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[Shop]:  # noqa: F811 - the fixture
    """The shop, every application on ``sequence``, then on ``indexed``."""
    made = open_shop(shop_env)
    yield made
    made.close()


def ship(shop: Shop, order_id: uuid.UUID, tracking_number: str = "TRK-7") -> None:
    """Send a ShipOrder step for an order, with a key of its own."""
    step = Fulfilment.ShipOrder(
        originator_id=uuid.uuid4(),
        originator_version=7,
        timestamp=datetime.now(UTC),
        order_id=order_id,
        tracking_number=tracking_number,
    )
    shop.fulfilment.dispatch(step, f"saga/{step.originator_id}/7")


def test_a_shipment_refused_because_the_order_was_cancelled_says_so(shop, caplog):
    order_id = shop.place({TEA: 1})
    shop.orders.cancel(order_id, "changed my mind")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ship(shop, order_id)

    [record] = caplog.records
    assert record.getMessage() == (
        "order not shipped: it was cancelled first (changed my mind)"
    )
    assert record.order_id == str(order_id)


def test_a_shipment_of_an_order_shipped_already_says_so(shop, caplog):
    order_id = shop.place({TEA: 1})
    shop.orders.ship(order_id, "BY-HAND-1")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ship(shop, order_id)

    [record] = caplog.records
    assert record.getMessage() == (
        "order not shipped again: it had shipped already, as BY-HAND-1"
    )
    assert shop.orders.get_order(order_id).tracking_number == "BY-HAND-1"


@pytest.mark.parametrize(
    ("confirm", "tracking_number"),
    [(False, "TRK-7"), (True, " ")],
    ids=["order-not-confirmed", "blank-tracking-number"],
)
def test_any_other_refusal_is_raised_so_the_step_is_sent_again(
    shop, caplog, confirm, tracking_number
):
    order_id = shop.place({TEA: 1}, confirm=confirm)

    with pytest.raises(OrderError), caplog.at_level(logging.WARNING, logger=LOGGER):
        ship(shop, order_id, tracking_number)

    assert caplog.records == []
    assert shop.orders.get_order(order_id).status is not OrderStatus.SHIPPED
