"""Benchmark projections: rebuild throughput beside raw reads of the same data.

Seeds N Order events straight into the events and notifications tables (the
application recorder, 98 events per transaction), projects them once
incrementally-free (seeding only), then in the same run measures:

* raw Scan of the events table (items/s) and raw reading of the application
  sequence (select_notifications, items/s): what any rebuild must read;
* rebuild (events/s) of OrderProjector into a new table version;
* stream-batch handling (records/s) of 1,000-record Lambda-shaped batches.

    python benchmarks/bench_projections.py [--quick] [--endpoint URL]

Target: rebuild >= 50% of the raw read throughput.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.local import DynamoDBLocal
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
    params: dict[str, Any] = {"TableName": app.recorder.events_table_name}
    count, started = 0, time.perf_counter()
    while True:
        response = connection.call("scan", **params)
        count += len(response["Items"])
        if "LastEvaluatedKey" not in response:
            return count / (time.perf_counter() - started)
        params["ExclusiveStartKey"] = response["LastEvaluatedKey"]


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
    seed(app, events)
    raw_scan = scan_rate(app)
    raw_sequence = sequence_rate(app)
    view = open_view(OrderProjector, env)
    result = rebuild(app, OrderProjector, view)
    streams = stream_rate(app, env, min(events, 5000))
    app.close()
    return {
        "events": events,
        "scan_items_per_s": round(raw_scan),
        "sequence_items_per_s": round(raw_sequence),
        "rebuild_events_per_s": round(result.events_per_second),
        "rebuild_vs_scan": round(result.events_per_second / raw_scan, 3),
        "rebuild_vs_sequence": round(result.events_per_second / raw_sequence, 3),
        "stream_records_per_s": round(streams),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 events only")
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    if args.endpoint:
        rows = [run(args.endpoint, n) for n in sizes]
    else:
        with DynamoDBLocal() as server:
            rows = [run(server.endpoint_url, n) for n in sizes]
    header = list(rows[0])
    print(" | ".join(f"{h:>20}" for h in header))
    for row in rows:
        print(" | ".join(f"{row[h]!s:>20}" for h in header))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
