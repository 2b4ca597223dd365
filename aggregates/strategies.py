"""Hypothesis strategies for Order command sequences and Order event histories.

A small model of the Order rules (status and each product's price) decides
which commands are valid next, independently of the aggregate, so a test
finds both an aggregate that rejects a valid command and one that accepts an
invalid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from hypothesis import strategies as st

from aggregates.order import Order, OrderStatus
from ledger.testing import money

if TYPE_CHECKING:
    from aggregates.application import Orders

__all__ = [
    "CURRENCIES",
    "PRODUCTS",
    "OrderCommand",
    "OrderScript",
    "order_histories",
    "order_scripts",
    "rejected_commands",
]

PRODUCTS = ("apple", "fig", "pear", "plum")
"""A small pool, so products repeat: re-adding and removing get exercised."""
CURRENCIES = ("USD", "EUR", "GBP", "JPY")


@dataclass(frozen=True)
class OrderCommand:
    """One command on an existing order: an ``Orders`` method and its arguments."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def run(self, orders: Orders, order_id: UUID) -> None:
        """Run the command through the application."""
        getattr(orders, self.name)(order_id, **self.arguments)

    def apply_to(self, order: Order) -> None:
        """Run the command on an aggregate in memory."""
        getattr(order, self.name)(**self.arguments)


@dataclass(frozen=True)
class OrderScript:
    """Placing one order, then commands on it."""

    customer_id: UUID
    currency: str
    items: tuple[Mapping[str, Any], ...]
    commands: tuple[OrderCommand, ...]

    def run(self, orders: Orders) -> UUID:
        """Place the order and run every command through the application."""
        order_id = orders.place_order(self.customer_id, self.items, self.currency)
        for command in self.commands:
            command.run(orders, order_id)
        return order_id

    def build(self) -> Order:
        """Place the order and run every command in memory; events stay pending."""
        order = Order.place(self.customer_id, self.items, self.currency)
        for command in self.commands:
            command.apply_to(order)
        return order


@dataclass
class _Model:
    status: OrderStatus = OrderStatus.CREATED
    prices: dict[str, Decimal] = field(default_factory=dict)

    def add(self, product_id: str, price: Decimal) -> None:
        self.prices.setdefault(product_id, price)

    def apply(self, command: OrderCommand) -> None:
        if command.name == "add_item":
            self.add(command.arguments["product_id"], command.arguments["price"])
        elif command.name == "remove_item":
            del self.prices[command.arguments["product_id"]]
        else:
            self.status = {
                "confirm": OrderStatus.CONFIRMED,
                "ship": OrderStatus.SHIPPED,
                "cancel": OrderStatus.CANCELLED,
            }[command.name]


def _add_item(draw: st.DrawFn, model: _Model) -> dict[str, Any]:
    product_id = draw(st.sampled_from(PRODUCTS))
    price = model.prices.get(product_id)
    return {
        "product_id": product_id,
        "quantity": draw(st.integers(min_value=1, max_value=5)),
        "price": draw(money()) if price is None else price,
    }


def _valid_command(draw: st.DrawFn, model: _Model) -> OrderCommand | None:
    if model.status is OrderStatus.CREATED:
        names = ["add_item", "add_item", "add_item", "cancel"]
        if model.prices:
            names += ["remove_item", "confirm"]
    elif model.status is OrderStatus.CONFIRMED:
        names = ["ship", "cancel"]
    else:
        return None
    name = draw(st.sampled_from(names))
    if name == "add_item":
        return OrderCommand(name, _add_item(draw, model))
    if name == "remove_item":
        product_id = draw(st.sampled_from(sorted(model.prices)))
        return OrderCommand(name, {"product_id": product_id})
    if name == "ship":
        number = draw(st.from_regex(r"[A-Z]{2}[0-9]{6}", fullmatch=True))
        return OrderCommand(name, {"tracking_number": number})
    if name == "cancel":
        reason = draw(st.sampled_from(["out of stock", "customer asked", "fraud"]))
        return OrderCommand(name, {"reason": reason})
    return OrderCommand(name)


@st.composite
def _scripts_with_model(
    draw: st.DrawFn, max_commands: int = 12
) -> tuple[OrderScript, _Model]:
    model = _Model()
    items = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        item = _add_item(draw, model)
        model.add(item["product_id"], item["price"])
        items.append(item)
    commands = []
    for _ in range(draw(st.integers(min_value=0, max_value=max_commands))):
        command = _valid_command(draw, model)
        if command is None:
            break
        model.apply(command)
        commands.append(command)
    script = OrderScript(
        customer_id=draw(st.uuids()),
        currency=draw(st.sampled_from(CURRENCIES)),
        items=tuple(items),
        commands=tuple(commands),
    )
    return script, model


def order_scripts(max_commands: int = 12) -> st.SearchStrategy[OrderScript]:
    """Generate valid sequences: an order placed, then commands the rules allow."""
    return _scripts_with_model(max_commands).map(lambda pair: pair[0])


def _invalid_commands(draw: st.DrawFn, model: _Model) -> list[OrderCommand]:
    add = OrderCommand("add_item", _add_item(draw, model))
    absent = [p for p in PRODUCTS if p not in model.prices]
    if model.status is not OrderStatus.CREATED:
        rejected = [add, OrderCommand("confirm")]
        if model.prices:
            rejected.append(OrderCommand("remove_item", {"product_id": "apple"}))
        if model.status is not OrderStatus.CONFIRMED:
            rejected += [
                OrderCommand("ship", {"tracking_number": "XX000000"}),
                OrderCommand("cancel", {"reason": "too late"}),
            ]
        return rejected
    bad_quantity = draw(st.sampled_from([0, -1, True, 1.5, "2"]))
    bad_price = draw(
        st.sampled_from([Decimal(-1), Decimal("NaN"), Decimal("Infinity"), 1.5, "1"])
    )
    rejected = [
        OrderCommand("add_item", {**add.arguments, "quantity": bad_quantity}),
        OrderCommand("add_item", {**add.arguments, "price": bad_price}),
        OrderCommand("ship", {"tracking_number": "XX000000"}),
        OrderCommand("cancel", {"reason": " "}),
    ]
    if absent:
        rejected.append(OrderCommand("remove_item", {"product_id": absent[0]}))
    if not model.prices:
        rejected.append(OrderCommand("confirm"))
    for product_id, price in model.prices.items():
        other = {**add.arguments, "product_id": product_id, "price": price + 1}
        rejected.append(OrderCommand("add_item", other))
    return rejected


@st.composite
def rejected_commands(draw: st.DrawFn) -> tuple[OrderScript, OrderCommand]:
    """Generate a valid script, and a command the rules reject after it."""
    script, model = draw(_scripts_with_model())
    command = draw(st.sampled_from(_invalid_commands(draw, model)))
    return script, command


def order_histories(max_commands: int = 12) -> st.SearchStrategy[list[Any]]:
    """Event histories of one Order, oldest first, as valid commands produce them."""
    return order_scripts(max_commands).map(lambda s: list(s.build().collect_events()))
