"""Benchmark what the example Order projection costs per event, on each feed.

Seeds N distinct orders (each its own customer, placed with one item: two
events, ``OrderPlaced`` and ``ItemAdded``, in one save), 49 orders per
transaction, into an application of the ``sequence`` ordering and one of
the ``indexed`` ordering (whose indexer then indexes them), each on a
DynamoDB Local of its own. Then feeds ``OrderProjector``
(``projections/orders.py``) from the application sequence
(:class:`~ledger.projections.sequence.SequenceFeed`) into a fresh view, in
two ways:

* ``one position``: a new view, which keeps its tracking position only
  (what every new view, and every version rebuilt from the sequence, does);
* ``per aggregate``: a view built before views kept one position (its
  tracking records no ``one_position``), which keeps an
  ``AggregatePosition`` item per aggregate, as every view did before:
  the baseline, measured in the same run.

and, as a comparison, the stream feed (``process_records``, 1,000-record
Lambda-shaped batches built from the sequence) into a fresh view of the
``sequence`` application.

Reported per event, from ledger's ``measure`` on the application's and the
view's connections: round trips; write and read units, estimated from item
sizes by AWS's rules and as DynamoDB Local reported them; events/s (wall
time, not deterministic: the load average is printed beside it); and the
calls made.

    python benchmarks/bench_projection_cost.py [--quick | --orders N] [--endpoint URL]

Target: fed by the index, <= 3.0 WCU and <= 1.5 round trips per
event on distinct orders.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from eventsourcing.persistence import StoredEvent, Tracking

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import Meter, measure
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.local import DynamoDBLocal
from ledger.indexer import Indexer
from ledger.projections import event_loader
from ledger.projections.dynamodb import DynamoDBView, open_view
from ledger.projections.sequence import SequenceFeed
from ledger.projections.streams import process_records
from projections.orders import OrderProjector

RESULTS = Path(__file__).parent / "results"
ORDERS = 2_000
QUICK_ORDERS = 300
ORDERINGS = ("sequence", "indexed")
MAX_WRITE_UNITS = 3.0
MAX_ROUND_TRIPS = 1.5
ORDERS_PER_TRANSACTION = 49
"""Two events each: 98 events, the most one save holds beside its sequence."""


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def say(what: str, started: float) -> None:
    """Say on stderr which stage finished, and when."""
    elapsed = time.perf_counter() - started
    print(f"{what} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


# Seeding ------------------------------------------------------------------------


def seed(app: Orders, orders: int) -> int:
    """Store ``orders`` distinct placed orders, each with an item; return events."""
    events = 0
    for start in range(0, orders, ORDERS_PER_TRANSACTION):
        stored: list[StoredEvent] = []
        for _ in range(min(ORDERS_PER_TRANSACTION, orders - start)):
            order = Order.place(uuid.uuid4(), [], "EUR")
            order.add_item("apple", 1, Decimal("2.50"))
            stored.extend(app.mapper.to_stored_event(e) for e in order.collect_events())
        app.recorder.insert_events(stored)
        events += len(stored)
    if getattr(app.recorder, "ordering", "sequence") == "indexed":
        indexer = Indexer(app.recorder)  # type: ignore[arg-type]
        deadline = time.monotonic() + 600
        while (app.recorder.max_notification_id() or 0) < events:
            indexer.poll()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the indexer did not index {events} events")
    return events


# Feeding ------------------------------------------------------------------------


def fresh_view(env: dict[str, str]) -> DynamoDBView:
    """Open OrderProjector's view under its own prefix: it starts empty."""
    prefix = f"v{uuid.uuid4().hex[:8]}_"
    view: DynamoDBView = open_view(
        OrderProjector, {**env, "DYNAMODB_TABLE_PREFIX": prefix}
    )
    return view


def per_event(
    label: str, ordering: str, events: int, seconds: float, *meters: Meter
) -> dict[str, Any]:
    total = Meter()
    for meter in meters:
        total.add(meter)
    return {
        "ordering": ordering,
        "feed": label,
        "events": events,
        "round_trips": total.round_trips / events,
        "est_wcu": total.estimated_write_units / events,
        "wcu": total.write_units / events,
        "est_rcu": total.estimated_read_units / events,
        "rcu": total.read_units / events,
        "events_per_second": events / seconds,
        "calls": dict(sorted(total.calls.items())),
    }


def sequence_feed(
    app: Orders, env: dict[str, str], events: int, *, per_aggregate: bool
) -> dict[str, Any]:
    """Feed a fresh view from the sequence; return its cost per event."""
    view = fresh_view(env)
    if per_aggregate:
        # As a view fed before views kept one position: its tracking exists
        # and records no one_position.
        view.commit((), Tracking(app.name, 0))
    feed = SequenceFeed(OrderProjector(view, event_loader(app)), app)
    applied = 0
    with measure(app) as reads, measure(view) as writes:
        started = time.perf_counter()
        while count := feed.poll():
            applied += count
        seconds = time.perf_counter() - started
    if applied != events:
        raise AssertionError(f"applied {applied} of {events} events")
    label = "sequence feed, " + ("per aggregate" if per_aggregate else "one position")
    ordering = getattr(app.recorder, "ordering", "sequence")
    return per_event(label, ordering, events, seconds, reads, writes)


def stream_records(app: Orders, events: int) -> list[dict[str, Any]]:
    """The events as Lambda receives their stream records (from the sequence)."""
    records = []
    for notification in app.recorder.select_notifications(start=1, limit=events):
        aggregate_id = str(notification.originator_id)
        records.append(
            {
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {store_schema.AGGREGATE_ID: {"S": aggregate_id}},
                    "NewImage": {
                        store_schema.AGGREGATE_ID: {"S": aggregate_id},
                        store_schema.VERSION: {
                            "N": str(notification.originator_version)
                        },
                        store_schema.TOPIC: {"S": notification.topic},
                        store_schema.STATE: {
                            "B": base64.b64encode(notification.state).decode()
                        },
                    },
                    "SequenceNumber": f"{notification.id:021d}",
                },
            }
        )
    return records


def stream_feed(app: Orders, env: dict[str, str], events: int) -> dict[str, Any]:
    """Feed a fresh view by stream records; return its cost per event."""
    records = stream_records(app, events)
    view = fresh_view(env)
    projector = OrderProjector(view, event_loader(app))
    with measure(app) as reads, measure(view) as writes:
        started = time.perf_counter()
        for start in range(0, len(records), 1000):
            failed = process_records(
                projector, records[start : start + 1000], app.mapper
            )
            if failed:
                raise AssertionError(f"{len(failed)} records failed")
        seconds = time.perf_counter() - started
    return per_event(
        "stream feed (comparison)", "sequence", events, seconds, reads, writes
    )


def run(endpoint: str, ordering: str, orders: int) -> list[dict[str, Any]]:
    started = time.perf_counter()
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": f"b{uuid.uuid4().hex[:8]}_",
        "DYNAMODB_ORDERING": ordering,
        # Only the indexer reads a stream.
        "DYNAMODB_EVENTS_STREAM": "yes" if ordering == "indexed" else "no",
    }
    app = Orders(env=env)
    events = seed(app, orders)
    say(f"[{ordering}] seeded {events} events", started)
    rows = []
    for per_aggregate in (False, True):
        rows.append(sequence_feed(app, env, events, per_aggregate=per_aggregate))
        say(f"[{ordering}] {rows[-1]['feed']}", started)
    if ordering == "sequence":
        rows.append(stream_feed(app, env, events))
        say(f"[{ordering}] {rows[-1]['feed']}", started)
    app.close()
    return rows


# Report -------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "| ordering | feed | events | round trips | est. WCU | reported WCU "
        "| est. RCU | reported RCU | events/s | target (<= 3.0 WCU, <= 1.5 trips) |"
    )
    print("\nPer event, distinct orders (OrderPlaced + ItemAdded each):\n")
    print(header)
    print("| --- " * 10 + "|")
    for row in rows:
        if row["feed"].startswith("sequence feed"):
            met = (
                row["est_wcu"] <= MAX_WRITE_UNITS
                and row["round_trips"] <= MAX_ROUND_TRIPS
            )
            target = "met" if met else "not met"
        else:
            target = ""
        print(
            f"| {row['ordering']} | {row['feed']} | {row['events']:,} "
            f"| {row['round_trips']:.3f} | {row['est_wcu']:.3f} | {row['wcu']:.3f} "
            f"| {row['est_rcu']:.3f} | {row['rcu']:.3f} "
            f"| {row['events_per_second']:,.0f} | {target} |"
        )
    print("\nCalls:\n")
    for row in rows:
        calls = ", ".join(f"{name} {count}" for name, count in row["calls"].items())
        print(f"- {row['ordering']}, {row['feed']}: {calls}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ORDERS} orders only"
    )
    parser.add_argument("--orders", type=int, help=f"orders to feed (default {ORDERS})")
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    args = parser.parse_args()
    orders = args.orders or (QUICK_ORDERS if args.quick else ORDERS)
    before = load_average()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for ordering in ORDERINGS:
        if args.endpoint:
            rows.extend(run(args.endpoint, ordering, orders))
        else:
            # A server each: DynamoDB Local slows writes into a table with a
            # stream once other tables with streams hold records.
            with DynamoDBLocal() as server:
                rows.extend(run(server.endpoint_url, ordering, orders))
    after = load_average()
    seconds = round(time.perf_counter() - started)
    command = shlex.join(
        ["python", "benchmarks/bench_projection_cost.py", *sys.argv[1:]]
    )
    print(f"\n{command}")
    print(f"load average (1, 5, 15 min) before {before}, after {after}")
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {
        "command": command,
        "seconds": seconds,
        "load_average_before": before,
        "load_average_after": after,
        "rows": rows,
    }
    (RESULTS / "projection_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{seconds} s; wrote results/projection_cost.json")


if __name__ == "__main__":
    main()
