"""Benchmark the Order fulfilment saga: its steps/s beside the same commands, direct.

A *step* is one command the saga sends: reserve the stock, request the
payment, then ship the order (3 per order) or, when the payment is
declined, release the stock and cancel the order (4). Contenders, in the
same run on the same DynamoDB Local, taking turns at going first:

* ``saga``: ``OrderFulfilment`` follows ``Orders``, ``Warehouse`` and
  ``Payments`` and sends its steps (each decision committed with its
  tracking, each step sent from its own sequence under an idempotency key,
  then its tracking committed);
* ``raw``: the same commands called directly, one after another, with the
  same idempotency keys, and the order read as the saga reads it.

Each is run on the ``sequence`` feed (every application ``sequence``
ordering; the saga pulls the notification logs with a ``SagaRunner``) and
the ``stream`` feed (``Orders``, ``Warehouse`` and ``Payments`` in
``stream`` ordering; the saga fed by ``StreamFollower`` s with the records a
Lambda would receive, built by a Scan that is not timed, and its steps sent
by a ``SagaRunner`` of no leaders). Orders are placed and confirmed, and the
gateway answers, outside the timed phases; the rest is timed: from the
confirmed orders to every payment requested, and from the answers to every
order shipped (or cancelled). Round trips and write units are counted over
the timed phases, for every application, and are deterministic; wall times
on a shared machine are not: compare a saga row with the raw row beside it.

    python benchmarks/bench_saga.py [--orders 50] [--quick] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from aggregates.application import Orders
from aggregates.fulfilment import Fulfilment, OrderFulfilment
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.dynamodb import Meter, measure
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.local import DynamoDBLocal
from ledger.feeds import StreamSource, feed_records
from ledger.projections.followers import StreamFollower
from ledger.sagas import SagaRunner

RESULTS = Path(__file__).parent / "results"
PRODUCTS = [f"sku-{n}" for n in range(20)]
PRICE = Decimal("2.50")
CASES = {"shipped": True, "declined": False}
"""Case name, and whether the gateway approves every payment."""
STEPS = {"shipped": 3, "declined": 4}


@dataclass
class Shop:
    """The four applications of one contender, on tables of their own."""

    orders: Orders
    warehouse: Warehouse
    payments: Payments
    fulfilment: OrderFulfilment

    @property
    def applications(self) -> list[Any]:
        return [self.orders, self.warehouse, self.payments, self.fulfilment]

    def close(self) -> None:
        for app in self.applications:
            app.close()


@dataclass
class Timing:
    """The timed phases of one contender: wall time and what DynamoDB was asked."""

    seconds: float = 0.0
    meter: Meter = field(default_factory=Meter)

    @contextmanager
    def phase(self, shop: Shop) -> Iterator[None]:
        with ExitStack() as stack:
            meters = [stack.enter_context(measure(app)) for app in shop.applications]
            started = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - started
        for meter in meters:
            self.meter.add(meter)


def open_shop(endpoint: str, ordering: str) -> Shop:
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": f"b{uuid.uuid4().hex[:10]}_",
        "DYNAMODB_EVENTS_STREAM": "no",
        "DYNAMODB_ORDERING": ordering,
    }
    shop = Shop(
        Orders(env=env), Warehouse(env=env), Payments(env=env), OrderFulfilment(env=env)
    )
    shop.fulfilment.connect(shop.orders, shop.warehouse, shop.payments)
    for product in PRODUCTS:
        shop.warehouse.stock(product, 1_000_000)
    for app in (shop.orders, shop.warehouse, shop.payments):
        app.first_outcome("warm-up")  # makes the idempotency table, not timed
    return shop


def confirmed_orders(shop: Shop, count: int) -> list[uuid.UUID]:
    """Place and confirm ``count`` orders of two products each (not timed)."""
    ids = []
    for n in range(count):
        lines = [
            {
                "product_id": PRODUCTS[(2 * n + k) % len(PRODUCTS)],
                "quantity": 1,
                "price": PRICE,
            }
            for k in range(2)
        ]
        order_id = shop.orders.place_order(uuid.uuid4(), lines, "EUR")
        shop.orders.confirm(order_id)
        ids.append(order_id)
    return ids


def answer(shop: Shop, order_ids: list[uuid.UUID], *, approved: bool) -> None:
    """Play the gateway (not timed)."""
    for order_id in order_ids:
        shop.payments.settle(
            order_id, approved=approved, idempotency_key=f"gateway/{order_id}"
        )


# The contenders -----------------------------------------------------------------


def run_raw(shop: Shop, order_ids: list[uuid.UUID], *, approved: bool) -> Timing:
    """Call the saga's commands directly, with keys, order by order."""
    timing = Timing()
    with timing.phase(shop):
        for order_id in order_ids:
            order = shop.orders.get_order(order_id)
            items = {line.product_id: line.quantity for line in order.lines.values()}
            shop.warehouse.reserve(
                order_id, items, idempotency_key=f"raw/{order_id}/reserve"
            )
            shop.payments.request(
                order_id,
                order.total,
                order.currency,
                idempotency_key=f"raw/{order_id}/pay",
            )
    answer(shop, order_ids, approved=approved)
    with timing.phase(shop):
        for order_id in order_ids:
            if approved:
                shop.orders.ship(
                    order_id, "TRK-1", idempotency_key=f"raw/{order_id}/ship"
                )
            else:
                shop.warehouse.release(
                    order_id, idempotency_key=f"raw/{order_id}/release"
                )
                shop.orders.cancel(
                    order_id,
                    "payment declined",
                    idempotency_key=f"raw/{order_id}/cancel",
                )
    return timing


def run_saga_on_sequence(
    shop: Shop, order_ids: list[uuid.UUID], *, approved: bool
) -> Timing:
    """Let the saga pull the notification logs (a SagaRunner)."""
    runner = SagaRunner(shop.fulfilment, [shop.orders, shop.warehouse, shop.payments])
    return _run_saga(shop, order_ids, runner.poll, approved=approved)


def run_saga_on_stream(
    shop: Shop, order_ids: list[uuid.UUID], *, approved: bool
) -> Timing:
    """Feed the saga stream records, as Lambda would; send steps with a SagaRunner."""
    runner = SagaRunner(shop.fulfilment, [])
    leaders = [shop.orders, shop.warehouse, shop.payments]
    feeds = [
        (StreamFollower(shop.fulfilment, leader), NewRecords(leader))
        for leader in leaders
    ]
    pending: list[tuple[StreamFollower, list[dict[str, Any]]]] = []

    def deliver() -> int:
        processed = 0
        for follower, records in pending:
            if feed_records(follower, records, StreamSource.of(follower.leader)):
                raise RuntimeError("a record failed")
            processed += len(records)
        return processed + runner.poll()

    def read() -> None:  # not timed: Lambda is handed the records
        pending[:] = [(follower, new()) for follower, new in feeds]

    return _run_saga(shop, order_ids, deliver, approved=approved, between=read)


def _run_saga(
    shop: Shop,
    order_ids: list[uuid.UUID],
    poll: Callable[[], int],
    *,
    approved: bool,
    between: Callable[[], None] = lambda: None,
) -> Timing:
    timing = Timing()
    for phase in ("reserve and request", "ship or compensate"):
        if phase == "ship or compensate":
            answer(shop, order_ids, approved=approved)
        while True:
            between()
            with timing.phase(shop):
                processed = poll()
            if not processed:
                break
    expected = "shipped" if approved else "cancelled"
    for order_id in order_ids:
        saga: Fulfilment | None = shop.fulfilment.fulfilment(order_id)
        if saga is None or saga.outcome != expected:
            raise RuntimeError(f"order {order_id} did not end {expected}")
    return timing


class NewRecords:
    """The records of a leader's events table not yet handed out, as Lambda's."""

    def __init__(self, leader: Any) -> None:
        self.leader = leader
        self.seen: set[tuple[str, int]] = set()
        self.number = 0

    def __call__(self) -> list[dict[str, Any]]:
        connection = self.leader.factory.connection
        items = connection.items(
            "scan", TableName=self.leader.recorder.events_table_name
        )
        new = [
            item
            for item in items
            if (
                item[store_schema.AGGREGATE_ID]["S"],
                int(item[store_schema.VERSION]["N"]),
            )
            not in self.seen
        ]
        new.sort(
            key=lambda i: (
                i[store_schema.AGGREGATE_ID]["S"],
                int(i[store_schema.VERSION]["N"]),
            )
        )
        records = []
        for item in new:
            self.seen.add(
                (
                    item[store_schema.AGGREGATE_ID]["S"],
                    int(item[store_schema.VERSION]["N"]),
                )
            )
            self.number += 1
            records.append(
                {
                    "eventName": "INSERT",
                    "dynamodb": {
                        "Keys": {
                            store_schema.AGGREGATE_ID: item[store_schema.AGGREGATE_ID],
                            store_schema.VERSION: item[store_schema.VERSION],
                        },
                        "NewImage": item,
                        "SequenceNumber": f"{self.number:021d}",
                    },
                }
            )
        return records


SAGA_RUNS = {"sequence": run_saga_on_sequence, "stream": run_saga_on_stream}


def warm_up(endpoint: str) -> None:
    """Run every contender once on a few orders, untimed (the server's JIT)."""
    for feed in ("sequence", "stream"):
        for run_one in (SAGA_RUNS[feed], run_raw):
            shop = open_shop(endpoint, feed)
            try:
                run_one(shop, confirmed_orders(shop, 5), approved=True)
            finally:
                shop.close()


def run(endpoint: str, orders: int) -> list[dict[str, Any]]:
    warm_up(endpoint)
    rows = []
    turn = 0
    for feed in ("sequence", "stream"):
        for case, approved in CASES.items():
            contenders: list[tuple[str, Callable[..., Timing]]] = [
                ("saga", SAGA_RUNS[feed]),
                ("raw", run_raw),
            ]
            if turn % 2:
                contenders.reverse()
            turn += 1
            for contender, run_one in contenders:
                shop = open_shop(endpoint, feed)
                try:
                    order_ids = confirmed_orders(shop, orders)
                    timing = run_one(shop, order_ids, approved=approved)
                finally:
                    shop.close()
                steps = STEPS[case] * orders
                row = {
                    "feed": feed,
                    "case": case,
                    "contender": contender,
                    "orders": orders,
                    "steps": steps,
                    "seconds": round(timing.seconds, 3),
                    "steps_per_second": round(steps / timing.seconds, 1),
                    "round_trips_per_order": round(
                        timing.meter.round_trips / orders, 1
                    ),
                    "estimated_wcu_per_order": round(
                        timing.meter.estimated_write_units / orders, 1
                    ),
                    "estimated_rcu_per_order": round(
                        timing.meter.estimated_read_units / orders, 1
                    ),
                    "calls": dict(timing.meter.calls),
                }
                rows.append(row)
                rate = row["steps_per_second"]
                print(
                    f"{feed:8} {case:8} {contender:4} {rate:7.1f} steps/s",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| feed | case | saga steps/s | raw steps/s | saga / raw "
        "| round trips per order, saga / raw | est. WCU per order, saga / raw |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    by_key = {(r["feed"], r["case"], r["contender"]): r for r in rows}
    for feed in ("sequence", "stream"):
        for case in CASES:
            saga, raw = by_key[feed, case, "saga"], by_key[feed, case, "raw"]
            print(
                f"| {feed} | {case} | {saga['steps_per_second']:,.1f} "
                f"| {raw['steps_per_second']:,.1f} "
                f"| {saga['steps_per_second'] / raw['steps_per_second']:.2f} "
                f"| {saga['round_trips_per_order']} / {raw['round_trips_per_order']} "
                f"| {saga['estimated_wcu_per_order']} "
                f"/ {raw['estimated_wcu_per_order']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50, help="orders per run (50)")
    parser.add_argument("--quick", action="store_true", help="10 orders per run")
    parser.add_argument(
        "--endpoint", help="DynamoDB endpoint (default: start DynamoDB Local)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "saga.json",
        help="where to write the results (benchmarks/results/saga.json)",
    )
    args = parser.parse_args()
    orders = 10 if args.quick else args.orders
    if args.endpoint:
        rows = run(args.endpoint, orders)
    else:
        with DynamoDBLocal() as server:
            rows = run(server.endpoint_url, orders)
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
