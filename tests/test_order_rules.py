"""The Order rules, as given/when/then specifications on the aggregate."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given as for_all
from hypothesis import strategies as st

from aggregates.order import Order, OrderError, OrderStatus
from ledger.testing import given, money, replay

APPLE = ("apple", 1, "2.50")


def history(*commands: Callable[[Order], object], items: Any = (APPLE,)) -> list[Any]:
    """The events of an order placed with ``items``, then given ``commands``."""
    order = Order.place(
        uuid4(),
        [
            {"product_id": product, "quantity": quantity, "price": Decimal(price)}
            for product, quantity, price in items
        ],
    )
    for command in commands:
        command(order)
    return list(order.collect_events())


def confirm(order: Order) -> None:
    order.confirm()


def ship(order: Order) -> None:
    order.ship("TN1")


def cancel(order: Order) -> None:
    order.cancel("changed my mind")


REACH_STATUS = {
    OrderStatus.CREATED: (),
    OrderStatus.CONFIRMED: (confirm,),
    OrderStatus.SHIPPED: (confirm, ship),
    OrderStatus.CANCELLED: (cancel,),
}


def test_placed_order_is_created_with_its_items():
    order = replay(history(items=[("apple", 2, "2.50"), ("fig", 1, "0.99")]))

    assert order.status is OrderStatus.CREATED
    assert {p: (line.quantity, line.price) for p, line in order.lines.items()} == {
        "apple": (2, Decimal("2.50")),
        "fig": (1, Decimal("0.99")),
    }


def test_place_defaults_currency_to_usd():
    order = Order.place(uuid4())

    assert order.currency == "USD"


def test_place_rejects_a_currency_that_is_not_an_iso_code():
    with pytest.raises(OrderError, match="ISO 4217"):
        Order.place(uuid4(), currency="dollars")


def test_place_rejects_an_item_without_exactly_its_three_keys():
    with pytest.raises(OrderError, match="exactly product_id, quantity and price"):
        Order.place(uuid4(), [{"product_id": "apple", "quantity": 1}])


@pytest.mark.parametrize("items", [None, "tea", {"product_id": "tea"}, 7])
def test_place_rejects_items_that_are_not_a_list_of_dicts(items):
    with pytest.raises(OrderError, match="items must be a list of dicts"):
        Order.place(uuid4(), items)


def test_add_item_records_item_added():
    outcome = given(*history()).when(
        lambda order: order.add_item("fig", 3, Decimal("0.99"))
    )

    (added,) = outcome.then(Order.ItemAdded)
    assert (added.product_id, added.quantity, added.price) == (
        "fig",
        3,
        Decimal("0.99"),
    )


def test_adding_a_product_already_on_the_order_adds_to_its_quantity():
    order = replay(history(lambda order: order.add_item("apple", 2, Decimal("2.50"))))

    assert order.lines["apple"].quantity == 3


def test_adding_a_product_again_at_a_different_price_is_rejected():
    given(*history()).when(
        lambda order: order.add_item("apple", 1, Decimal("2.60"))
    ).then_rejected(OrderError, match="one price per order")


@pytest.mark.parametrize("quantity", [0, -1, True, 1.0, "1"])
def test_quantity_must_be_an_int_of_at_least_one(quantity):
    given(*history()).when(
        lambda order: order.add_item("fig", quantity, Decimal(1))
    ).then_rejected(OrderError, match="quantity must be an int >= 1")


@pytest.mark.parametrize(
    "price", [Decimal(-1), Decimal("NaN"), Decimal("Infinity"), 1.5, 1, "1"]
)
def test_price_must_be_a_finite_decimal_of_at_least_zero(price):
    given(*history()).when(lambda order: order.add_item("fig", 1, price)).then_rejected(
        OrderError, match="price must be a finite Decimal >= 0"
    )


def test_price_may_be_zero():
    given(*history()).when(
        lambda order: order.add_item("fig", 1, Decimal("0.00"))
    ).then(Order.ItemAdded)


def test_product_id_must_be_a_non_empty_string():
    given(*history()).when(
        lambda order: order.add_item("", 1, Decimal(1))
    ).then_rejected(OrderError, match="product_id must be a non-empty str")


def test_remove_item_removes_the_products_line():
    order = replay(history(lambda order: order.remove_item("apple")))

    assert order.lines == {}


def test_removing_a_product_not_on_the_order_is_rejected():
    given(*history()).when(lambda order: order.remove_item("fig")).then_rejected(
        OrderError, match="not on the order"
    )


@pytest.mark.parametrize(
    "status", [OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.CANCELLED]
)
@pytest.mark.parametrize(
    "change",
    [
        lambda order: order.add_item("fig", 1, Decimal(1)),
        lambda order: order.remove_item("apple"),
    ],
    ids=["add_item", "remove_item"],
)
def test_items_change_only_while_the_order_is_created(status, change):
    given(*history(*REACH_STATUS[status])).when(change).then_rejected(
        OrderError, match="items can change only while the order is created"
    )


def test_confirm_records_order_confirmed():
    given(*history()).when(confirm).then(Order.OrderConfirmed)


def test_confirm_requires_at_least_one_line():
    given(*history(items=())).when(confirm).then_rejected(
        OrderError, match="without at least one line"
    )


@pytest.mark.parametrize(
    "status", [OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.CANCELLED]
)
def test_confirm_requires_status_created(status):
    given(*history(*REACH_STATUS[status])).when(confirm).then_rejected(
        OrderError, match="can confirm only an order that is created"
    )


def test_ship_records_the_tracking_number():
    order = replay(history(confirm, ship))

    assert (order.status, order.tracking_number) == (OrderStatus.SHIPPED, "TN1")


@pytest.mark.parametrize(
    "status", [OrderStatus.CREATED, OrderStatus.SHIPPED, OrderStatus.CANCELLED]
)
def test_ship_requires_status_confirmed(status):
    given(*history(*REACH_STATUS[status])).when(ship).then_rejected(
        OrderError, match="can ship only an order that is confirmed"
    )


def test_ship_requires_a_tracking_number():
    given(*history(confirm)).when(lambda order: order.ship(" ")).then_rejected(
        OrderError, match="tracking_number must be a non-blank str"
    )


@pytest.mark.parametrize("status", [OrderStatus.CREATED, OrderStatus.CONFIRMED])
def test_cancel_is_allowed_from_created_or_confirmed(status):
    order = replay(history(*REACH_STATUS[status], cancel))

    assert (order.status, order.cancel_reason) == (
        OrderStatus.CANCELLED,
        "changed my mind",
    )


@pytest.mark.parametrize("status", [OrderStatus.SHIPPED, OrderStatus.CANCELLED])
def test_cancel_is_rejected_once_shipped_or_cancelled(status):
    given(*history(*REACH_STATUS[status])).when(cancel).then_rejected(
        OrderError, match="can cancel only an order that is created or confirmed"
    )


def test_cancel_requires_a_reason():
    given(*history()).when(lambda order: order.cancel("")).then_rejected(
        OrderError, match="reason must be a non-blank str"
    )


@for_all(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=10**6), money(places=4)),
        max_size=6,
    )
)
def test_total_is_the_exact_sum_of_quantity_times_price(lines):
    items = [
        (f"p{i}", quantity, str(price)) for i, (quantity, price) in enumerate(lines)
    ]

    order = replay(history(items=items))

    assert Fraction(order.total) == sum(
        (quantity * Fraction(price) for quantity, price in lines), Fraction(0)
    )


def test_total_does_not_round_past_the_default_28_digits():
    price = "1234567890123456789.0123456789"
    order = replay(history(items=[("gold", 3, price)]))

    assert order.total == Decimal("3703703670370370367.0370370367")
