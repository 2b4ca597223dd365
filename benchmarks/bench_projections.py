"""Benchmark projections: rebuild throughput beside raw reads and writes of its data.

Seeds N Order events (5 per order) straight into the events and notifications
tables (the application recorder, 98 events per transaction), then measures,
in the same run and on the same server:

* raw Scan of the events table and raw reading of the application sequence
  (items/s): what any rebuild must read;
* rebuild (events/s) of OrderProjector into a new table version, with its
  round trips, items written and write units;
* raw writes of the rebuilt items into scratch tables (items/s), without
  ledger: TransactWriteItems of 99 puts one at a time, as the rebuild sends
  them, and BatchWriteItem of 25 from 4 threads, the fastest unconditional
  writes. Reading an event at the raw sequence rate plus writing its share of
  the items at the first rate is the fastest a rebuild that writes as ledger's
  does could go on this server ("bound", events/s); at the second rate, what
  a rebuild of parallel unfenced writes could reach ("parallel bound");
* stream-batch handling (records/s) of 1,000-record Lambda-shaped batches.

Rebuild and raw write run twice each, alternately, and the best of each pair
is reported (DynamoDB Local gets faster as it warms up).

    python benchmarks/bench_projections.py [--quick | --events N ...] [--endpoint URL]

Target: rebuild >= 50% of the raw read throughput (Scan).

Each size runs on a DynamoDB Local of its own: DynamoDB Local slows writes
into a table with a stream (the events table has one) once another table with
a stream holds records, about tenfold after one other table of 10,000 items,
and dropping that table does not help. With ``--endpoint`` all sizes share the
given server, so run one size per server there (``--quick`` or ``--events``).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import measure
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.local import DynamoDBLocal
from ledger.dynamodb.schema import table_definition
from ledger.dynamodb.tables import ensure_table
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.streams import process_records
from projections.orders import OrderProjector

RESULTS = Path(__file__).parent / "results" / "projections.json"
EVENTS_PER_ORDER = 5


def seed(app: Orders, events: int) -> None:
    stored = []
    for _ in range(events // EVENTS_PER_ORDER):
        order = Order.place(uuid.uuid4(), [], "EUR")
        for n in range(3):
            order.add_item(f"p{n}", 1, Decimal("2.50"))
        order.confirm()
        stored.extend(app.mapper.to_stored_event(e) for e in order.collect_events())
    for start in range(0, len(stored), 98):
        app.recorder.insert_events(stored[start : start + 98])


def scan_rate(app: Orders) -> float:
    connection = app.factory.connection
    started = time.perf_counter()
    count = sum(
        1 for _ in connection.items("scan", TableName=app.recorder.events_table_name)
    )
    return count / (time.perf_counter() - started)


def sequence_rate(app: Orders) -> float:
    count, position, started = 0, 0, time.perf_counter()
    while True:
        batch = app.recorder.select_notifications(start=position + 1, limit=1000)
        if not batch:
            return count / (time.perf_counter() - started)
        count += len(batch)
        position = batch[-1].id


def stream_rate(app: Orders, env: dict[str, str], records: int) -> float:
    items = [
        {
            "eventName": "INSERT",
            "dynamodb": {
                "Keys": {
                    store_schema.AGGREGATE_ID: {"S": str(notification.originator_id)}
                },
                "NewImage": {
                    store_schema.AGGREGATE_ID: {"S": str(notification.originator_id)},
                    store_schema.VERSION: {"N": str(notification.originator_version)},
                    store_schema.TOPIC: {"S": notification.topic},
                    store_schema.STATE: {
                        "B": base64.b64encode(notification.state).decode()
                    },
                },
                "SequenceNumber": f"{notification.id:021d}",
            },
        }
        for notification in app.recorder.select_notifications(start=1, limit=records)
    ]
    view = open_view(
        OrderProjector,
        {**env, "DYNAMODB_TABLE_PREFIX": f"stream{uuid.uuid4().hex[:6]}_"},
    )
    projector = OrderProjector(view, event_loader(app))
    started = time.perf_counter()
    for start in range(0, len(items), 1000):
        process_records(projector, items[start : start + 1000], app.mapper)
    return len(items) / (time.perf_counter() - started)


def raw_write_rates(view: Any) -> tuple[float, float]:
    """Copy the rebuilt items into scratch tables without ledger; return items/s.

    First as the rebuild sends them, one TransactWriteItems of 99 puts at a
    time; then as fast as DynamoDB takes unconditional writes, BatchWriteItem
    of 25 from 4 threads (no transaction, no checks).
    """
    connection = view.connection
    items = list(connection.items("scan", TableName=view.table_name))
    tables = [f"{view.table_name}_raw{kind}" for kind in ("tx", "batch")]
    for table in tables:
        ensure_table(connection, table_definition(table, ("key", "S")))

    def transact(chunk: list[dict[str, Any]]) -> None:
        puts = [{"Put": {"TableName": tables[0], "Item": item}} for item in chunk]
        connection.call("transact_write_items", TransactItems=puts)

    def batch(chunk: list[dict[str, Any]]) -> None:
        requests = {tables[1]: [{"PutRequest": {"Item": item}} for item in chunk]}
        while requests:
            response = connection.call("batch_write_item", RequestItems=requests)
            requests = response.get("UnprocessedItems") or {}

    rates = []
    for write, size, threads in ((transact, 99, 1), (batch, 25, 4)):
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(write, chunks))
        rates.append(len(items) / (time.perf_counter() - started))
    return rates[0], rates[1]


def stage(events: int, what: str, started: float) -> None:
    """Say on stderr which stage of which size finished, and when."""
    elapsed = time.perf_counter() - started
    print(f"[{events:,} events] {what} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def run(endpoint: str, events: int) -> dict[str, Any]:
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": f"b{uuid.uuid4().hex[:8]}_",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    app = Orders(env=env)
    started = time.perf_counter()
    seed(app, events)
    stage(events, "seeded", started)
    raw_scan = scan_rate(app)
    stage(events, "scanned", started)
    raw_sequence = sequence_rate(app)
    stage(events, "read the sequence", started)
    view = open_view(OrderProjector, env)
    # Twice each, alternately, best of two: the server warms up as it goes.
    rates, raw_writes, raw_parallel_writes = [], [], []
    for attempt in (1, 2):
        with measure(app) as reads, measure(view) as writes:
            result = rebuild(app, OrderProjector, view)
        writes.add(reads)
        rates.append(result.events_per_second)
        stage(events, f"rebuilt ({attempt} of 2)", started)
        sequential, parallel = raw_write_rates(view)
        raw_writes.append(sequential)
        raw_parallel_writes.append(parallel)
        stage(events, f"wrote the rebuilt items raw ({attempt} of 2)", started)
    raw_write, raw_parallel_write = max(raw_writes), max(raw_parallel_writes)
    streams = stream_rate(app, env, min(events, 5000))
    stage(events, "handled stream batches", started)
    app.close()
    rate = max(rates)
    # The server's time for one event: reading it, plus writing its share of
    # items, each at its raw rate measured above.
    items_per_event = writes.items_written / result.events
    bound = 1 / (1 / raw_sequence + items_per_event / raw_write)
    parallel_bound = 1 / (1 / raw_sequence + items_per_event / raw_parallel_write)
    return {
        "events": events,
        "scan_items_per_s": round(raw_scan),
        "sequence_items_per_s": round(raw_sequence),
        "raw_write_items_per_s": round(raw_write),
        "raw_parallel_write_items_per_s": round(raw_parallel_write),
        "rebuild_events_per_s": round(rate),
        "rebuild_vs_scan": round(rate / raw_scan, 2),
        "rebuild_vs_sequence": round(rate / raw_sequence, 2),
        "bound_events_per_s": round(bound),
        "rebuild_vs_bound": round(rate / bound, 2),
        "parallel_bound_events_per_s": round(parallel_bound),
        "parallel_bound_vs_scan": round(parallel_bound / raw_scan, 2),
        "rebuild_round_trips": writes.round_trips,
        "rebuild_items_written": writes.items_written,
        "rebuild_estimated_wcu": round(writes.estimated_write_units),
        "stream_records_per_s": round(streams),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 events only")
    parser.add_argument(
        "--events", type=int, nargs="+", help="sizes to run (default 10,000 100,000)"
    )
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    args = parser.parse_args()
    sizes = args.events or ([10_000] if args.quick else [10_000, 100_000])
    rows = []
    for size in sizes:
        if args.endpoint:
            rows.append(run(args.endpoint, size))
        else:
            with DynamoDBLocal() as server:
                rows.append(run(server.endpoint_url, size))
    # One column per size, one line per measure.
    width = max(len(name) for name in rows[0])
    for name in rows[0]:
        cells = (
            f"{row[name]:>12.2f}"
            if isinstance(row[name], float)
            else f"{row[name]:>12,}"
            for row in rows
        )
        print(f"{name:<{width}}", *cells)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
