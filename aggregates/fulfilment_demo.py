"""The Order fulfilment story on DynamoDB: the happy path and every failing one.

Run it from a checkout with ``python -m aggregates.fulfilment_demo --local``
(starts DynamoDB Local for it) or without ``--local`` against
``DYNAMODB_ENDPOINT_URL``. ``run_story`` tells it, printing what each
chapter cost; it writes to tables under a fresh prefix of its own, with
every application (Orders, Warehouse, Payments and the saga's) in
``indexed`` ordering, the saga fed by a :class:`~ledger.sagas.SagaRunner`
that runs an indexer per application in process (``DYNAMODB_ORDERING=sequence``
tells it on the ``sequence`` ordering instead), and the story playing the
payment gateway and the clock of the timeout poller. Each chapter's cost
includes the indexers' work.
"""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rich.console import Console

from aggregates.application import Orders
from aggregates.fulfilment import OrderFulfilment
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder, Meter, measure
from ledger.indexer import Indexer
from ledger.sagas import Saga, SagaRunner, TimeoutPoller

__all__ = ["main", "run_story"]

PRICE = Decimal("4.50")


class _Crash(BaseException):  # it stands for the process dying
    """The saga process died (the story makes it; not an error a step retries)."""


class _CrashOnceAfterSending(OrderFulfilment):
    """The saga application, dying once after it sent a step."""

    name = "OrderFulfilment"  # the same application, only failing once

    def dispatch(self, step: Saga.Step, idempotency_key: str) -> None:
        super().dispatch(step, idempotency_key)
        raise _Crash(type(step).__name__)


@dataclass
class _Shop:
    orders: Orders
    warehouse: Warehouse
    payments: Payments
    fulfilment: OrderFulfilment
    console: Console

    def __post_init__(self) -> None:
        self.fulfilment.connect(self.orders, self.warehouse, self.payments)
        self.runner = self.runner_of(self.fulfilment)
        self.timeouts = TimeoutPoller(self.fulfilment)
        self.total = Meter()

    def runner_of(self, fulfilment: OrderFulfilment) -> SagaRunner:
        """Feed ``fulfilment``, indexing every indexed application in this process."""
        leaders = [self.orders, self.warehouse, self.payments]
        indexers = [
            Indexer(app.recorder)
            for app in (*leaders, fulfilment)
            if isinstance(app.recorder, DynamoDBIndexedApplicationRecorder)
        ]
        return SagaRunner(fulfilment, leaders, indexers=indexers)

    @contextmanager
    def chapter(self, title: str) -> Iterator[None]:
        """Print a chapter's title, then what it cost in all four applications."""
        self.console.print(f"\n[bold]{title}[/bold]")
        apps = (self.orders, self.warehouse, self.payments, self.fulfilment)
        with ExitStack() as stack:
            meters = [stack.enter_context(measure(app)) for app in apps]
            yield
        meter = Meter()
        for part in meters:
            meter.add(part)
        self.total.add(meter)
        self.console.print(
            f"   [dim]cost: {meter.round_trips} round trips, "
            f"{meter.estimated_write_units:g} WCU, "
            f"{meter.estimated_read_units:g} RCU[/dim]"
        )

    def say(self, text: str) -> None:
        self.console.print(f"   {text}")

    def order(self, items: Mapping[str, int]) -> uuid.UUID:
        lines = [
            {"product_id": product, "quantity": units, "price": PRICE}
            for product, units in items.items()
        ]
        order_id = self.orders.place_order(uuid.uuid4(), lines, "EUR")
        self.orders.confirm(order_id)
        self.say(f"order {str(order_id)[:8]} confirmed: {dict(items)}")
        return order_id

    def run_saga(self) -> None:
        processed = self.runner.poll()
        self.say(f"the saga processed {processed} events")

    def show(self, order_id: uuid.UUID) -> None:
        order = self.orders.get_order(order_id)
        saga = self.fulfilment.fulfilment(order_id)
        reservation = self.warehouse.get_reservation(order_id)
        payment = self.payments.get_payment(order_id)
        detail = order.tracking_number or order.cancel_reason
        # Two lines, so that neither wraps at 80 columns.
        self.say(f"order {order.status} ({detail})")
        self.say(
            f"stock {reservation.status if reservation else 'never reserved'}; "
            f"payment {payment.status if payment else 'never requested'}; "
            f"saga {saga.outcome if saga else '-'}"
        )

    def stock(self) -> str:
        units = {}
        for product in ("tea", "fig"):
            inventory = self.warehouse.get_inventory(product)
            units[product] = inventory.on_hand if inventory else 0
        return ", ".join(f"{p} {n}" for p, n in units.items())


def run_story(env: Mapping[str, str], console: Console) -> None:
    """Tell the fulfilment story against the DynamoDB that ``env`` points at."""
    ordering = env.get("DYNAMODB_ORDERING", "indexed")
    if ordering not in ("indexed", "sequence"):
        raise SystemExit(
            f"The fulfilment story runs on DYNAMODB_ORDERING=indexed (the default) "
            f"or sequence, not {ordering!r}: its saga runner pulls sequences."
        )
    settings: dict[str, str] = {
        **env,
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_TABLE_PREFIX": env.get(
            "DYNAMODB_TABLE_PREFIX", f"saga{uuid.uuid4().hex[:6]}_"
        ),
        "DYNAMODB_ORDERING": ordering,
        # The saga application's own: it keeps a sequence unless told.
        "ORDERFULFILMENT_DYNAMODB_ORDERING": ordering,
        # An indexer reads each events table's stream; nothing else does.
        "DYNAMODB_EVENTS_STREAM": "yes" if ordering == "indexed" else "no",
    }
    console.print(f"Every application in {ordering} ordering")
    shop = _Shop(
        Orders(env=settings),
        Warehouse(env=settings),
        Payments(env=settings),
        OrderFulfilment(env=settings),
        console,
    )
    with shop.chapter("1. The warehouse is stocked"):
        shop.warehouse.stock("tea", 5)
        shop.warehouse.stock("fig", 1)
        shop.say(f"on hand: {shop.stock()}")
    _shipped(shop)
    _out_of_stock(shop)
    _declined(shop)
    _timed_out(shop)
    _crashed(shop, settings)
    console.print(f"\non hand at the end: {shop.stock()} (3 tea shipped)")
    console.print(f"[bold]Whole story:[/bold]\n   {shop.total.summary()}")
    for app in (shop.orders, shop.warehouse, shop.payments, shop.fulfilment):
        app.close()


def _shipped(shop: _Shop) -> None:
    with shop.chapter("2. Confirmed, reserved, charged, shipped"):
        shipped = shop.order({"tea": 2})
        shop.run_saga()
        shop.payments.settle(shipped, approved=True, idempotency_key="gw-1")
        shop.say("the gateway approved the payment")
        shop.run_saga()
        shop.show(shipped)


def _out_of_stock(shop: _Shop) -> None:
    with shop.chapter("3. Out of stock: cancelled, nothing to undo"):
        short = shop.order({"fig": 3})
        shop.run_saga()
        shop.show(short)


def _declined(shop: _Shop) -> None:
    with shop.chapter("4. Declined: the stock is released, the order cancelled"):
        declined = shop.order({"tea": 1})
        shop.run_saga()
        shop.payments.settle(
            declined, approved=False, reason="card expired", idempotency_key="gw-2"
        )
        shop.say("the gateway declined the payment")
        shop.run_saga()
        shop.show(declined)


def _timed_out(shop: _Shop) -> None:
    with shop.chapter("5. No answer in time, then a late charge: refunded"):
        late = shop.order({"tea": 1})
        shop.run_saga()
        later = datetime.now(UTC) + shop.fulfilment.payment_timeout + timedelta(1)
        fired = shop.timeouts.poll(later)
        shop.say(f"the timeout poller, a day later, fired {fired} timeout")
        shop.run_saga()
        shop.payments.settle(late, approved=True, idempotency_key="gw-3")
        shop.say("then the gateway approved it, late")
        shop.run_saga()
        shop.show(late)


def _crashed(shop: _Shop, settings: Mapping[str, str]) -> None:
    with shop.chapter("6. The saga dies after sending a step; restarted, once"):
        crashing = _CrashOnceAfterSending(env=settings)
        crashing.connect(shop.orders, shop.warehouse, shop.payments)
        crashed = shop.order({"tea": 1})
        try:
            shop.runner_of(crashing).poll()
        except _Crash as crash:
            shop.say(f"died after sending {crash}, before recording that it did")
        crashing.close()
        shop.run_saga()  # the restarted process: the step is sent again
        reservation = shop.warehouse.get_reservation(crashed)
        events = 0 if reservation is None else reservation.version
        shop.say(f"sent twice, under one key: the reservation has {events} event")
        shop.payments.settle(crashed, approved=True, idempotency_key="gw-4")
        shop.run_saga()
        shop.show(crashed)


def main(argv: list[str] | None = None) -> None:
    """Tell the story: ``--local`` starts DynamoDB Local for it and stops it after."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--local",
        action="store_true",
        help="start DynamoDB Local on a free port for the story; stop it after",
    )
    arguments = parser.parse_args(argv)
    # The story tells of the retries and parked events it causes itself:
    # ledger's log lines about them would only interrupt it (a failure the
    # story does not expect raises).
    logging.getLogger("ledger").setLevel(logging.CRITICAL)
    # Long lines are left to the terminal to wrap, not cut at 80 columns.
    console = Console(highlight=False, soft_wrap=True)
    env = dict(os.environ)
    if arguments.local:
        from ledger.dynamodb.local import DynamoDBLocal  # noqa: PLC0415

        with DynamoDBLocal() as server:
            console.print(f"Started DynamoDB Local at {server.endpoint_url}")
            env["DYNAMODB_ENDPOINT_URL"] = server.endpoint_url
            run_story(env, console)
    else:
        run_story(env, console)


if __name__ == "__main__":
    main()
