"""Benchmark publishing integration events beside raw PutEvents, in one run.

Seeds Orders (each placed with one item, confirmed and shipped: 4 domain
events, 3 of them published) into an events table with a DynamoDB stream,
on a DynamoDB Local of its own, and publishes them to a bus on a local
EventBridge (moto's server, ``moto[server]``, in a process of its own; the
bus has no rule, so this measures PutEvents, not deliveries). Three
contenders, in turn, ``--rounds`` times (the order reversed every other
round):

* ``poller``: ``StreamPoller(publisher, app).poll()`` from the stream's
  start (a fresh publisher table each round): reading the stream,
  decoding, translating, PutEvents, checkpoints;
* ``publisher``: ``Publisher.process`` on the same records read beforehand,
  in Lambda-sized batches of 100 (decoding, translating, PutEvents);
* ``raw``: boto3 ``put_events`` of the same entries, made beforehand, in
  requests of 10: the fewest calls that publish them.

Also a raw read of the whole stream (GetRecords, 1,000 per page), the
poller's own share. Prints a table; writes ``results/publish.json``.

    python -m benchmarks.bench_publish [--orders 2000] [--rounds 3] [--quick]

(As a module from the repository root, so the example domain imports.)

Wall times on a shared machine vary between runs: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb.local import DynamoDBLocal
from ledger.feeds import StreamSource, feed_records
from ledger.projections.streams import StreamPoller, decode_record
from ledger.publishing import Publisher
from ledger.publishing.publisher import MAX_ENTRIES_PER_REQUEST
from projections.integration import OrderEvents

RESULTS = Path(__file__).parent / "results"
LAMBDA_BATCH = 100
"""Records per ``Publisher.process`` call, as the template's mapping sends them."""
ORDERS_PER_SAVE = 25
"""Seeded orders saved together (4 events each: 100, a stream save's limit)."""


def stage(what: str, started: float) -> None:
    """Say on stderr which stage finished, and when."""
    elapsed = time.perf_counter() - started
    print(f"[{elapsed:6.1f} s] {what}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def local_eventbridge() -> Iterator[str]:
    """Run moto's server in a process of its own; yield its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - moto's own server, fixed argv
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("moto's server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - a local server's placeholder
    )


def seed(app: Orders, count: int) -> None:
    """Store ``count`` orders, placed, confirmed and shipped, 25 per save."""
    for start in range(0, count, ORDERS_PER_SAVE):
        batch = []
        for n in range(start, min(count, start + ORDERS_PER_SAVE)):
            order = Order.place(
                uuid.uuid4(),
                [{"product_id": "tea", "quantity": 1, "price": Decimal("4.50")}],
            )
            order.confirm()
            order.ship(f"ZZ{n:08d}")
            batch.append(order)
        app.save(*batch)


def read_stream(poller: StreamPoller) -> list[dict[str, Any]]:
    """Every record of the events table's stream, as GetRecords returns them."""
    records: list[dict[str, Any]] = []
    for shard in poller._shards():  # the poller's own order: parents first
        iterator = poller.client.get_shard_iterator(
            StreamArn=poller.stream_arn,
            ShardId=shard["ShardId"],
            ShardIteratorType="TRIM_HORIZON",
        )["ShardIterator"]
        while iterator:
            page = poller.client.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break
            records.extend(page["Records"])
            iterator = page.get("NextShardIterator")
    return records


class Bench:
    """The application, the bus and what every contender publishes."""

    def __init__(self, env: dict[str, str], orders: int) -> None:
        self.env = env
        self.app = Orders(env=env)
        self.expected_records = orders * 4
        self.expected_entries = orders * 3
        self.rounds_made = 0

    def publisher(self, name: str) -> Publisher:
        """A publisher with a table of its own (so its poller starts afresh)."""
        publication = type(name, (OrderEvents,), {"name": name})
        return Publisher(publication(), self.app, env=self.env)

    def poller_run(self) -> tuple[float, dict[str, Any]]:
        self.rounds_made += 1
        publisher = self.publisher(f"OrderEventsBench{self.rounds_made}")
        poller = StreamPoller(publisher, self.app, batch_size=1000)
        started = time.perf_counter()
        while publisher.report.records < self.expected_records:
            poller.poll()
        elapsed = time.perf_counter() - started
        return elapsed, vars(publisher.report)

    def publisher_run(
        self, publisher: Publisher, records: list[dict[str, Any]]
    ) -> tuple[float, dict[str, Any]]:
        before = dict(vars(publisher.report))
        started = time.perf_counter()
        source = StreamSource.of(publisher.application)
        for start in range(0, len(records), LAMBDA_BATCH):
            batch = records[start : start + LAMBDA_BATCH]
            failed = feed_records(publisher, batch, source)
            assert not failed, failed
        elapsed = time.perf_counter() - started
        after = vars(publisher.report)
        return elapsed, {k: after[k] - before[k] for k in after}

    def raw_run(
        self, events: Any, entries: list[dict[str, Any]]
    ) -> tuple[float, dict[str, Any]]:
        requests = 0
        started = time.perf_counter()
        for start in range(0, len(entries), MAX_ENTRIES_PER_REQUEST):
            response = events.put_events(
                Entries=entries[start : start + MAX_ENTRIES_PER_REQUEST]
            )
            assert response["FailedEntryCount"] == 0
            requests += 1
        elapsed = time.perf_counter() - started
        return elapsed, {"requests": requests, "accepted": len(entries)}


def entries_of(publisher: Publisher, records: list[dict[str, Any]]) -> list[dict]:
    """The PutEvents entries the publisher makes of these records."""
    events = (decode_record(record, publisher.mapper) for record in records)
    return [entry for event in events for entry in publisher.entries_for(event)]


def run(orders: int, rounds: int, started: float) -> dict[str, Any]:
    with DynamoDBLocal() as dynamodb, local_eventbridge() as eventbridge:
        bus = f"bench-{uuid.uuid4().hex[:8]}"
        events = client("events", eventbridge)
        events.create_event_bus(Name=bus)
        env = {
            "PERSISTENCE_MODULE": "ledger.dynamodb",
            "DYNAMODB_ENDPOINT_URL": dynamodb.endpoint_url,
            "DYNAMODB_ORDERING": "stream",
            "DYNAMODB_EVENTS_STREAM": "yes",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "EVENTBRIDGE_ENDPOINT_URL": eventbridge,
            "PUBLISHER_EVENT_BUS": bus,
        }
        bench = Bench(env, orders)
        seed(bench.app, orders)
        stage(f"seeded {orders:,} orders ({orders * 4:,} events)", started)

        lambda_publisher = bench.publisher("OrderEventsLambda")
        poller = StreamPoller(lambda_publisher, bench.app)
        read_times = []
        records: list[dict[str, Any]] = []
        while len(records) < bench.expected_records:  # the stream may lag the saves
            time.sleep(0.5)
            records = read_stream(poller)
        entries = entries_of(lambda_publisher, records)
        assert len(entries) == bench.expected_entries, len(entries)

        samples: dict[str, list[float]] = {"poller": [], "publisher": [], "raw": []}
        counts: dict[str, dict[str, Any]] = {}
        contenders: dict[str, Callable[[], tuple[float, dict[str, Any]]]] = {
            "poller": bench.poller_run,
            "publisher": lambda: bench.publisher_run(lambda_publisher, records),
            "raw": lambda: bench.raw_run(events, entries),
        }
        for round_number in range(rounds):
            read_started = time.perf_counter()
            read_stream(poller)
            read_times.append(time.perf_counter() - read_started)
            order = list(contenders)
            if round_number % 2:
                order.reverse()
            for name in order:
                elapsed, count = contenders[name]()
                samples[name].append(elapsed)
                counts[name] = count
            stage(f"round {round_number + 1} of {rounds}", started)

    published = bench.expected_entries
    best_raw = min(samples["raw"])
    rows = []
    for name, times in samples.items():
        best = min(times)
        rows.append(
            {
                "contender": name,
                "events_per_s": round(published / best),
                "median_events_per_s": round(published / statistics.median(times)),
                "vs_raw": round(best_raw / best, 2),
                "requests": counts[name].get("requests"),
                "entries_per_request": round(published / counts[name]["requests"], 2),
                "seconds": [round(t, 3) for t in times],
            }
        )
    return {
        "orders": orders,
        "events": bench.expected_records,
        "published": published,
        "rounds": rounds,
        "lambda_batch": LAMBDA_BATCH,
        "raw_stream_read_records_per_s": round(
            bench.expected_records / min(read_times)
        ),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['orders']:,} orders: {result['events']:,} events on the stream, "
        f"{result['published']:,} published; best of {result['rounds']} rounds\n"
    )
    print(
        "| contender | events/s | median events/s | vs raw | PutEvents "
        "| entries/request |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in result["rows"]:
        print(
            f"| {row['contender']} | {row['events_per_s']:,} | "
            f"{row['median_events_per_s']:,} | {row['vs_raw']} | "
            f"{row['requests']:,} | {row['entries_per_request']} |"
        )
    print(
        f"\nraw stream read (GetRecords, 1,000 per page): "
        f"{result['raw_stream_read_records_per_s']:,} records/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 orders, 2 rounds")
    args = parser.parse_args()
    orders, rounds = (500, 2) if args.quick else (args.orders, args.rounds)
    started = time.perf_counter()
    result = run(orders, rounds, started)
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "publish.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
