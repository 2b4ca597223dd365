"""Twin keyed commands: two deliveries of one command at once are answered alike.

A keyed command is answered by its first outcome whatever happens in
between. Here a twin delivery (same command, same key) is made to land in
the middle of the first one: deterministically, by subclasses that run the
twin just before one of the first delivery's aggregate reads (after the
first delivery has read the key), and for real, with pairs of threads on
two applications sharing the tables.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from aggregates.application import Orders
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.commands import IdempotencyKeyReusedError
from tests.test_projections_core import ITEM

ORDERINGS = ["sequence", "stream"]


class Interleaved:
    """Lets a twin command run between two steps of this application's command.

    Subclasses call ``_before_read`` before each aggregate their commands read.
    """

    _twin: Callable[[], Any] | None = None
    _reads_left = 0

    def interleave(self, twin: Callable[[], Any], *, after_reads: int) -> None:
        """Run ``twin`` once, after this application's next ``after_reads`` reads."""
        self._twin, self._reads_left = twin, after_reads

    @property
    def twin_ran(self) -> bool:
        return self._twin is None

    def _before_read(self) -> None:
        if self._twin is None:
            return
        if self._reads_left == 0:
            twin, self._twin = self._twin, None
            twin()
        else:
            self._reads_left -= 1


class InterleavedOrders(Interleaved, Orders):
    name = Orders.name  # the same tables as its twin's

    def get_order(self, order_id: uuid.UUID) -> Any:
        self._before_read()
        return super().get_order(order_id)


class InterleavedWarehouse(Interleaved, Warehouse):
    name = Warehouse.name

    def get_inventory(self, product_id: str) -> Any:
        self._before_read()
        return super().get_inventory(product_id)

    def get_reservation(self, order_id: uuid.UUID) -> Any:
        self._before_read()
        return super().get_reservation(order_id)

    def _inventory(self, product_id: str) -> Any:
        self._before_read()
        return super()._inventory(product_id)


class InterleavedPayments(Interleaved, Payments):
    name = Payments.name

    def get_payment(self, order_id: uuid.UUID) -> Any:
        self._before_read()
        return super().get_payment(order_id)


@dataclass
class Twins:
    """One application's interleaved first delivery and its twin's application."""

    first: Any
    twin: Any

    def events_stored(self) -> int:
        connection = self.first.factory.connection
        table = self.first.recorder.events_table_name
        return sum(1 for _ in connection.items("scan", TableName=table))


KINDS = {
    "orders": (InterleavedOrders, Orders),
    "warehouse": (InterleavedWarehouse, Warehouse),
    "payments": (InterleavedPayments, Payments),
}


@pytest.fixture(params=ORDERINGS)
def ordering(request):
    return request.param


@pytest.fixture
def make_twins(dynamodb_env, ordering):
    made: list[Any] = []

    def make(kind: str) -> Twins:
        interleaved, plain = KINDS[kind]
        env = {**dynamodb_env, "DYNAMODB_ORDERING": ordering}
        twins = Twins(interleaved(env=env), plain(env=env))
        made.extend((twins.first, twins.twin))
        return twins

    yield make
    for app in made:
        app.close()


def placed(orders: Orders) -> uuid.UUID:
    return orders.place_order(uuid.uuid4(), [ITEM])


def confirmed(orders: Orders) -> uuid.UUID:
    order_id = placed(orders)
    orders.confirm(order_id)
    return order_id


def stocked(warehouse: Warehouse) -> uuid.UUID:
    warehouse.stock("tea", 5)
    return uuid.uuid4()


def reserved(warehouse: Warehouse) -> uuid.UUID:
    order_id = stocked(warehouse)
    warehouse.reserve(order_id, {"tea": 2})
    return order_id


def requested(payments: Payments) -> uuid.UUID:
    order_id = uuid.uuid4()
    payments.request(order_id, Decimal(5), "EUR")
    return order_id


def charged(payments: Payments) -> uuid.UUID:
    order_id = requested(payments)
    payments.settle(order_id, approved=True)
    return order_id


# (application, arrange, the keyed command, reads of the first delivery before
# the twin runs, events one delivery stores)
COMMANDS: dict[str, tuple[str, Callable[[Any], Any], Callable[..., Any], int, int]] = {
    "reserve, twin before the first reads": (
        "warehouse",
        stocked,
        lambda app, o, key: app.reserve(o, {"tea": 2}, idempotency_key=key),
        0,
        2,
    ),
    "reserve, twin after the reservation read": (
        "warehouse",
        stocked,
        lambda app, o, key: app.reserve(o, {"tea": 2}, idempotency_key=key),
        1,
        2,
    ),
    "release, twin before the first reads": (
        "warehouse",
        reserved,
        lambda app, o, key: app.release(o, idempotency_key=key),
        0,
        2,
    ),
    "release, twin after the reservation read": (
        "warehouse",
        reserved,
        lambda app, o, key: app.release(o, idempotency_key=key),
        1,
        2,
    ),
    "stock": (
        "warehouse",
        stocked,
        lambda app, _, key: app.stock("tea", 3, idempotency_key=key),
        0,
        1,
    ),
    "add_item": (
        "orders",
        placed,
        lambda app, o, key: app.add_item(o, "fig", 1, Decimal(1), idempotency_key=key),
        0,
        1,
    ),
    "remove_item": (
        "orders",
        placed,
        lambda app, o, key: app.remove_item(o, "apple", idempotency_key=key),
        0,
        1,
    ),
    "confirm": (
        "orders",
        placed,
        lambda app, o, key: app.confirm(o, idempotency_key=key),
        0,
        1,
    ),
    "ship": (
        "orders",
        confirmed,
        lambda app, o, key: app.ship(o, "TRK-1", idempotency_key=key),
        0,
        1,
    ),
    "cancel": (
        "orders",
        placed,
        lambda app, o, key: app.cancel(o, "changed my mind", idempotency_key=key),
        0,
        1,
    ),
    "request": (
        "payments",
        lambda payments: uuid.uuid4(),
        lambda app, o, key: app.request(o, Decimal(5), "EUR", idempotency_key=key),
        0,
        1,
    ),
    "settle": (
        "payments",
        requested,
        lambda app, o, key: app.settle(o, approved=True, idempotency_key=key),
        0,
        1,
    ),
    "refund": (
        "payments",
        charged,
        lambda app, o, key: app.refund(o, idempotency_key=key),
        0,
        1,
    ),
}


@pytest.mark.parametrize("case", COMMANDS)
def test_a_twin_applied_in_the_middle_of_a_keyed_command_makes_it_done(
    make_twins, case
):
    kind, arrange, command, after_reads, events = COMMANDS[case]
    twins = make_twins(kind)
    target = arrange(twins.first)
    before = twins.events_stored()
    answers = []
    twins.first.interleave(
        lambda: answers.append(command(twins.twin, target, "twin-key")),
        after_reads=after_reads,
    )

    answers.append(command(twins.first, target, "twin-key"))  # must not raise

    assert twins.first.twin_ran
    assert answers[0] == answers[1]  # the first outcome answers both
    assert twins.events_stored() == before + events  # applied once


def run_at_once(*commands: Callable[[], Any]) -> list[Any]:
    """Start the calls together (a barrier); return each one's answer or error."""
    barrier = threading.Barrier(len(commands))
    results: list[Any] = [None] * len(commands)

    def call(index: int, command: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = command()
        except Exception as error:  # noqa: BLE001 - the test reports it
            results[index] = error

    threads = [
        threading.Thread(target=call, args=(index, command))
        for index, command in enumerate(commands)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results


PAIRS = 25


def test_simultaneous_twin_saga_steps_are_each_applied_once(dynamodb_env, ordering):
    env = {**dynamodb_env, "DYNAMODB_ORDERING": ordering}
    one, two = Warehouse(env=env), Warehouse(env=env)
    answers: list[tuple[str, Any]] = []
    try:
        for n in range(PAIRS):
            product, order_id = f"p{n}", uuid.uuid4()
            one.stock(product, 5)

            def reserve(app: Warehouse, o=order_id, p=product, k=f"r{n}") -> Any:
                return app.reserve(o, {p: 2}, idempotency_key=k)

            def release(app: Warehouse, o=order_id, k=f"x{n}") -> Any:
                return app.release(o, idempotency_key=k)

            for step in (reserve, release):
                results = run_at_once(lambda s=step: s(one), lambda s=step: s(two))
                answers += [(step.__name__, result) for result in results]
            inventory = one.get_inventory(product)
            assert inventory is not None
            assert inventory.version == 3  # stocked, held once, returned once
    finally:
        one.close()
        two.close()

    wrong = [(step, a) for step, a in answers if a not in ("reserved", True)]
    assert wrong == []


def test_a_key_taken_meanwhile_by_another_command_refuses_this_one(make_twins):
    twins = make_twins("orders")
    mine, other = placed(twins.first), placed(twins.first)
    twins.first.interleave(
        lambda: twins.twin.confirm(other, idempotency_key="k"), after_reads=0
    )

    with pytest.raises(IdempotencyKeyReusedError, match="'k'"):
        twins.first.confirm(mine, idempotency_key="k")

    assert twins.first.twin_ran
    assert twins.first.get_order(mine).version == 2  # placed, apple: no more
