"""A saga step that keeps failing parks its saga; the other sagas go on.

The real fulfilment saga on DynamoDB Local, with its targets made to fail
for one order (a ``Warehouse`` or ``Payments`` of the same name, whose
command raises for that order): the failing saga is parked with its error's
type and place, its later steps wait behind it, and a redrive after the fix
sends them in order, once. Targets down for a while, a target's store
unreachable (the fault proxy), twins and racing runners are not failures.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from aggregates.application import Orders
from aggregates.fulfilment import OrderFulfilment
from aggregates.inventory import ReservationStatus
from aggregates.order import OrderStatus
from aggregates.payment import PaymentStatus
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.projections.metrics import (
    SAGA_STEP_RETRIES,
    SAGAS_PARKED,
    MemoryMetrics,
)
from ledger.sagas import WAITING, Saga
from tests.faults import SERVER_ERROR, FaultProxy
from tests.test_saga_fulfilment import (  # noqa: F401 - shop_env is a fixture
    FIG,
    TEA,
    Crash,
    Shop,
    events_of,
    on_hand,
    shop_env,
)

DEADLINE = 30.0
"""Seconds a test waits for another thread before it fails."""
CARD = "card 4111 1111 1111 1111"
"""What a failing command's message quotes: it must never reach a dead letter."""


class GatewayDownError(ConnectionError):
    """A target's own dependency did not answer (raised by a test's target)."""


class FailingWarehouse(Warehouse):
    """The Warehouse, whose ``reserve`` fails for the orders it is told."""

    name = "Warehouse"  # the same application, only failing

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.refuse: set[uuid.UUID] = set()
        """Orders whose reservation raises before anything is reserved."""
        self.fail_after: set[uuid.UUID] = set()
        """Orders whose reservation is saved, then raises (applied, yet failed)."""
        self.down_for = 0
        """How many more calls fail as if a dependency were down."""
        self.calls = 0

    def reserve(self, order_id: uuid.UUID, items: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.down_for:
            self.down_for -= 1
            raise GatewayDownError("the stock service did not answer")
        if order_id in self.refuse:
            raise RuntimeError(f"reservation refused for {CARD}")
        status = super().reserve(order_id, items, **kwargs)
        if order_id in self.fail_after:
            raise RuntimeError(f"reserved, then failed for {CARD}")
        return status


class FailingPayments(Payments):
    """Payments, whose ``request`` fails for the orders it is told."""

    name = "Payments"  # the same application, only failing

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.refuse: set[uuid.UUID] = set()

    def request(self, order_id: uuid.UUID, *args: Any, **kwargs: Any) -> Any:
        if order_id in self.refuse:
            raise RuntimeError(f"payment refused for {CARD}")
        return super().request(order_id, *args, **kwargs)


class QuickFulfilment(OrderFulfilment):
    """The saga application with short retries, noting what it sent, in order."""

    name = "OrderFulfilment"  # the same application
    step_retry_delays = (0.01, 0.01)

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.metrics = MemoryMetrics()
        self.sent: list[tuple[uuid.UUID, str]] = []
        """(order, step) of each step whose dispatch returned, in order."""

    def dispatch(self, step: Saga.Step, idempotency_key: str) -> None:
        super().dispatch(step, idempotency_key)
        self.sent.append((step.order_id, type(step).__name__))  # type: ignore[attr-defined]


def open_failing_shop(
    env: dict[str, str], fulfilment_class: type[OrderFulfilment] = QuickFulfilment
) -> Shop:
    shop = Shop(
        Orders(env=env),
        FailingWarehouse(env=env),
        FailingPayments(env=env),
        fulfilment_class(env=env),
        env,
    )
    for product in (TEA, FIG):
        shop.warehouse.stock(product, 5)
    return shop


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[Shop]:  # noqa: F811 - the fixture
    """The failing shop, every application on ``sequence``, then on ``indexed``."""
    made = open_failing_shop(shop_env)
    yield made
    made.close()


def warehouse(shop: Shop) -> FailingWarehouse:
    found = shop.warehouse
    assert isinstance(found, FailingWarehouse)
    return found


def payments(shop: Shop) -> FailingPayments:
    found = shop.payments
    assert isinstance(found, FailingPayments)
    return found


def metrics(shop: Shop) -> MemoryMetrics:
    found = shop.fulfilment.metrics
    assert isinstance(found, MemoryMetrics)
    return found


def ship_every(shop: Shop, order_ids: list[uuid.UUID]) -> None:
    shop.run()
    for order_id in order_ids:
        shop.answer(order_id, approved=True)
    shop.run()


# Parking -------------------------------------------------------------------------


def test_a_step_that_keeps_failing_parks_its_saga_while_the_others_complete(shop):
    failing, *others = [shop.place({TEA: 1}) for _ in range(3)]
    warehouse(shop).refuse.add(failing)

    ship_every(shop, others)

    for order_id in others:
        assert shop.orders.get_order(order_id).status is OrderStatus.SHIPPED
    assert shop.warehouse.get_reservation(failing) is None
    [parked] = shop.fulfilment.parked_sagas()
    saga = shop.saga(failing)
    assert (parked.saga_id, parked.step) == (str(saga.id), "ReserveStock")
    assert parked.version == saga.decided["ReserveStock"]
    assert parked.attempts == 3  # the first, then one per retry delay
    assert parked.waiting == []
    assert parked.error.startswith("RuntimeError at test_saga_parking.py:")
    assert parked.error.endswith(" in reserve")
    assert "4111" not in parked.error
    assert metrics(shop).values(SAGAS_PARKED) == [1]
    assert metrics(shop).values(SAGA_STEP_RETRIES) == [1, 1]


def test_a_parked_saga_s_dead_letter_holds_no_message_text(shop):
    order_id = shop.place({TEA: 1})
    warehouse(shop).refuse.add(order_id)

    shop.run()

    stored = shop.fulfilment.parked_steps.connection.call(
        "scan", TableName=shop.fulfilment.parked_steps.table_name
    )["Items"]
    assert len(stored) == 1
    assert CARD not in json.dumps(stored)
    assert "refused" not in json.dumps(stored)


def test_later_steps_of_a_parked_saga_wait_behind_it_in_order(shop):
    order_id = shop.place({TEA: 2})
    payments(shop).refuse.add(order_id)
    shop.run()  # reserved; the payment request parks the saga

    shop.orders.cancel(order_id, "changed my mind")
    shop.run()  # the saga compensates: its ReleaseStock waits

    saga = shop.saga(order_id)
    [parked] = shop.fulfilment.parked_sagas()
    assert parked.step == "RequestPayment"
    assert parked.waiting == [saga.decided["ReleaseStock"]]
    assert shop.warehouse.get_reservation(order_id).status is (
        ReservationStatus.RESERVED
    )
    assert on_hand(shop, TEA) == 3  # not released past the parked request
    [waiting] = shop.fulfilment.parked_steps.of_saga(saga.id)[1:]
    assert (waiting.error, waiting.attempts) == (WAITING, 0)


# Redrive and drop ------------------------------------------------------------------


def test_redrive_after_the_fix_completes_the_saga_exactly_once(shop):
    failing, other = shop.place({TEA: 2}), shop.place({TEA: 1})
    warehouse(shop).refuse.add(failing)
    ship_every(shop, [other])
    [parked] = shop.fulfilment.parked_sagas()

    warehouse(shop).refuse.clear()  # the fix
    outcomes = shop.fulfilment.redrive()
    ship_every(shop, [failing])

    assert outcomes == {parked.saga_id: "resumed"}
    assert shop.fulfilment.parked_sagas() == []
    assert shop.orders.get_order(failing).status is OrderStatus.SHIPPED
    reservation = shop.warehouse.get_reservation(failing)
    assert events_of(shop.warehouse, reservation.id) == ["StockReserved"]
    assert on_hand(shop, TEA) == 2
    assert shop.fulfilment.redrive() == {}
    assert shop.fulfilment.redrive(parked.saga_id) == {parked.saga_id: "not parked"}


def test_a_step_its_target_applied_before_failing_is_done_not_parked(shop):
    order_id = shop.place({TEA: 2})
    warehouse(shop).fail_after.add(order_id)  # reserved, then an error

    ship_every(shop, [order_id])

    assert shop.fulfilment.parked_sagas() == []
    reservation = shop.warehouse.get_reservation(order_id)
    assert events_of(shop.warehouse, reservation.id) == ["StockReserved"]
    assert on_hand(shop, TEA) == 3


def test_redrive_sends_the_parked_step_then_those_waiting_in_order(shop):
    order_id = shop.place({TEA: 2})
    payments(shop).refuse.add(order_id)
    shop.run()
    shop.orders.cancel(order_id, "changed my mind")
    shop.run()
    sent_before = list(shop.fulfilment.sent)

    payments(shop).refuse.clear()
    outcomes = shop.fulfilment.redrive()
    shop.run()

    assert outcomes == {str(shop.saga(order_id).id): "resumed"}
    assert shop.fulfilment.sent[len(sent_before) :] == [
        (order_id, "RequestPayment"),
        (order_id, "ReleaseStock"),
    ]
    assert shop.payments.get_payment(order_id).status is PaymentStatus.REQUESTED
    assert on_hand(shop, TEA) == 5
    assert shop.fulfilment.parked_sagas() == []


def test_a_redrive_that_fails_again_keeps_the_saga_parked_with_its_attempts(shop):
    order_id = shop.place({TEA: 1})
    warehouse(shop).refuse.add(order_id)
    shop.run()

    outcomes = shop.fulfilment.redrive()

    [parked] = shop.fulfilment.parked_sagas()
    assert outcomes == {parked.saga_id: "parked"}
    assert parked.attempts == 6
    assert parked.error.endswith(" in reserve on redrive")
    assert metrics(shop).values(SAGAS_PARKED) == [1, 1]


def test_drop_forgets_a_parked_saga_and_its_later_steps_are_sent(shop):
    order_id = shop.place({TEA: 2})
    payments(shop).refuse.add(order_id)
    shop.run()
    saga_id = shop.saga(order_id).id

    assert shop.fulfilment.drop(saga_id) == 1
    shop.orders.cancel(order_id, "changed my mind")
    shop.run()

    assert shop.fulfilment.parked_sagas() == []
    assert shop.payments.get_payment(order_id) is None  # given up on: never sent
    assert on_hand(shop, TEA) == 5  # the later ReleaseStock was sent
    assert shop.fulfilment.drop(saga_id) == 0


# What is not a failure -----------------------------------------------------------


def test_a_target_down_for_a_while_completes_within_the_retries(shop):
    order_id = shop.place({TEA: 1})
    warehouse(shop).down_for = 2

    ship_every(shop, [order_id])

    assert shop.orders.get_order(order_id).status is OrderStatus.SHIPPED
    assert shop.fulfilment.parked_sagas() == []
    assert metrics(shop).values(SAGA_STEP_RETRIES) == [1, 1]
    assert metrics(shop).values(SAGAS_PARKED) == []


def test_a_target_whose_store_is_unreachable_stops_the_poll_and_parks_nothing(
    dynamodb_env,
):
    with FaultProxy(dynamodb_env["DYNAMODB_ENDPOINT_URL"]) as proxy:
        env = {
            **dynamodb_env,
            "WAREHOUSE_DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "WAREHOUSE_DYNAMODB_MAX_ATTEMPTS": "1",
        }
        shop = open_failing_shop(env)
        try:
            order_id = shop.place({TEA: 1})
            # The warehouse's writes fail (reads pass): the reservation's save.
            proxy.on("TransactWriteItems", fault=SERVER_ERROR, times=None)

            with pytest.raises(OperationalError):
                shop.run()
            assert shop.fulfilment.parked_sagas() == []
            assert shop.warehouse.get_reservation(order_id) is None
            proxy.clear_rules()
            ship_every(shop, [order_id])

            assert shop.orders.get_order(order_id).status is OrderStatus.SHIPPED
            assert metrics(shop).values(SAGAS_PARKED) == []
        finally:
            shop.close()


class RefusesTwins(FailingWarehouse):
    """A Warehouse whose ``reserve`` refuses an order reserved before, key or not."""

    name = "Warehouse"  # the same application

    def reserve(self, order_id: uuid.UUID, items: Any, **kwargs: Any) -> Any:
        if self.get_reservation(order_id) is not None:
            raise RuntimeError("this order is reserved already")
        return super().reserve(order_id, items, **kwargs)


class CrashAfterSending(QuickFulfilment):
    """Dies after sending a step, before its tracking is committed."""

    name = "OrderFulfilment"  # the same application

    def dispatch(self, step: Saga.Step, idempotency_key: str) -> None:
        super().dispatch(step, idempotency_key)
        raise Crash(type(step).__name__)


def test_a_twin_of_a_step_applied_before_a_crash_is_done_not_parked(dynamodb_env):
    env = dynamodb_env
    orders, stock = Orders(env=env), RefusesTwins(env=env)
    stock.stock(TEA, 5)
    crashing = Shop(
        orders, stock, FailingPayments(env=env), CrashAfterSending(env), env
    )
    order_id = crashing.place({TEA: 1})
    with pytest.raises(Crash, match="ReserveStock"):
        crashing.run()

    again = crashing.restarted(QuickFulfilment)
    again.run()  # the twin is refused by the warehouse, but it was applied
    again.answer(order_id, approved=True)
    again.run()

    assert again.fulfilment.parked_sagas() == []
    assert again.orders.get_order(order_id).status is OrderStatus.SHIPPED
    assert on_hand(again, TEA) == 4
    again.close()


class BothInReserve(RefusesTwins):
    """Holds its first ``reserve`` until another is in one too; then one at a time."""

    name = "Warehouse"  # the same application

    one_at_a_time = threading.Lock()

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.entered = 0
        self.barrier: threading.Barrier | None = None

    def reserve(self, order_id: uuid.UUID, items: Any, **kwargs: Any) -> Any:
        self.entered += 1
        if self.entered == 1 and self.barrier is not None:
            self.barrier.wait()
        with self.one_at_a_time:
            return super().reserve(order_id, items, **kwargs)


def test_two_runners_racing_on_one_step_apply_it_once_and_park_nothing(dynamodb_env):
    env = dynamodb_env
    barrier = threading.Barrier(2, timeout=DEADLINE)
    shops = []
    for _ in range(2):  # two saga processes, each with its own applications
        stock = BothInReserve(env=env)
        stock.barrier = barrier
        fulfilment = QuickFulfilment(env=env)
        shops.append(Shop(Orders(env=env), stock, Payments(env=env), fulfilment, env))
    shops[0].warehouse.stock(TEA, 5)
    order_id = shops[0].place({TEA: 1})
    errors: list[BaseException] = []

    def run(shop: Shop) -> None:
        try:
            shop.run()
        except BaseException as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    threads = [threading.Thread(target=run, args=(shop,)) for shop in shops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)

    assert errors == []
    assert [shop.warehouse.entered for shop in shops] == [1, 1]  # both sent it
    reservation = shops[0].warehouse.get_reservation(order_id)
    assert events_of(shops[0].warehouse, reservation.id) == ["StockReserved"]
    assert on_hand(shops[0], TEA) == 4
    assert shops[0].fulfilment.parked_sagas() == []
    for shop in shops:
        shop.close()


# The command line and the metrics ---------------------------------------------------


def connected_fulfilment(env: Mapping[str, str]) -> OrderFulfilment:
    """The saga application as deployed, connected to its targets (``--saga``)."""
    fulfilment = OrderFulfilment(env=env)
    fulfilment.connect(Orders(env=env), Warehouse(env=env), Payments(env=env))
    return fulfilment


SAGA_CLASS = "aggregates.fulfilment:OrderFulfilment"
CONNECTED = "tests.test_saga_parking:connected_fulfilment"


@pytest.fixture
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``ledger`` run this checkout's code, whichever ledger is installed."""
    root = Path(__file__).parent.parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root / "src"), str(root)]))


@pytest.fixture
def sequence_shop(dynamodb_env: dict[str, str]) -> Iterator[Shop]:
    """The failing shop on ``sequence`` (the CLI's ordering is not under test)."""
    made = open_failing_shop(dynamodb_env)
    yield made
    made.close()


def test_the_cli_lists_redrives_and_drops_parked_sagas(
    sequence_shop, ledger, this_checkout
):
    shop = sequence_shop
    redriven, dropped = shop.place({TEA: 1}), shop.place({FIG: 1})
    warehouse(shop).refuse.update({redriven, dropped})
    shop.run()
    saga_ids = {str(shop.saga(o).id): o for o in (redriven, dropped)}
    redriven_id, dropped_id = (str(shop.saga(o).id) for o in (redriven, dropped))

    listed = ledger("sagas", "dlq", "list", "--saga", SAGA_CLASS, "--json")
    redrive = ledger("sagas", "dlq", "redrive", redriven_id, "--saga", CONNECTED)
    drop = ledger("sagas", "dlq", "drop", dropped_id, "--saga", SAGA_CLASS, "--yes")
    after = ledger("sagas", "dlq", "list", "--saga", SAGA_CLASS)

    assert listed.returncode == 0, listed.stderr
    parked = json.loads(listed.stdout)
    assert {p["saga_id"] for p in parked} == set(saga_ids)
    assert {p["step"] for p in parked} == {"ReserveStock"}
    assert all(p["error"].endswith(" in reserve") for p in parked)
    assert "round trip" in listed.stderr
    assert redrive.returncode == 0, redrive.stderr
    assert f"{redriven_id}: resumed" in redrive.stdout
    assert shop.warehouse.get_reservation(redriven) is not None
    assert drop.returncode == 0, drop.stderr
    assert f"dropped 1 steps of saga {dropped_id}" in drop.stdout
    assert "no parked sagas" in after.stdout
    assert shop.warehouse.get_reservation(dropped) is None


def test_the_cli_says_how_to_name_the_saga_application(ledger, this_checkout):
    done = ledger("sagas", "dlq", "list")
    helped = ledger("sagas", "dlq", "--help")

    assert done.returncode == 2
    assert "--saga module:Class" in done.stderr
    for command in ("list", "redrive", "drop"):
        assert command in helped.stdout


def test_ledger_metrics_emf_reports_parks_with_the_saga_application_dimension(
    dynamodb_env, monkeypatch, capsys
):
    monkeypatch.setenv("ORDERFULFILMENT_LEDGER_METRICS", "emf")
    shop = open_failing_shop(dynamodb_env, OrderFulfilment)
    shop.fulfilment.step_retry_delays = ()  # park at the first failure
    try:
        order_id = shop.place({TEA: 1})
        warehouse(shop).refuse.add(order_id)
        capsys.readouterr()

        shop.run()

        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        shop.close()
    [parked] = [line for line in lines if "SagasParked" in line]
    [directive] = parked["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "ledger"
    assert directive["Dimensions"] == [["SagaApplication"]]
    assert parked["SagaApplication"] == "OrderFulfilment"
    assert parked["SagasParked"] == 1
