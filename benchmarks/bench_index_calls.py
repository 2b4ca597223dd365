"""Benchmark DynamoDB Local's CPU per call of the indexer, call kind by call kind.

The indexer of the ``indexed`` ordering runs beside the writers; on one
machine it shares DynamoDB Local (one JVM) with them, so what its calls cost
that JVM is taken from the writers. This script fills an indexed Orders
application's events table (``--stream`` 1-event saves, so its stream holds
as many records), indexes it, then issues each call kind of an indexer round
in a loop (``--warmup`` calls unmeasured, while the JVM compiles the path, then
``--calls`` measured) and charges each with the JVM's CPU (utime + stime of
``/proc/<pid>/stat``) over the loop:

* ``DescribeStream``, ``GetShardIterator`` (after the checkpoint), ``GetRecords``
  at the shard's end (empty) and of a page of ``--page`` new records;
* ``GetItem`` of the head and of the checkpoints (strongly consistent);
* ``TransactWriteItems`` as a round commits ``--page`` events (their batch
  items, and two updates as of the head and the checkpoints, on keys of
  their own so the index is not changed);
* ``PutItem`` of one event, the raw baseline's call, for scale;

then whole rounds (``--page`` saves, then one :meth:`Indexer.poll`, measured)
and idle rounds (nothing new). Figures are per call and, with the calls of a
round under steady writes, per round and per event indexed.

    python benchmarks/bench_index_calls.py [--stream 20000] [--page 450]

CPU is counted in clock ticks (10 ms): a figure is good to about
10 ms / ``--calls``. Wall times on a shared machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_indexed import (
    cpu_seconds,
    load_average,
    open_app,
    placed_event,
    plain_client,
    raw_item,
)
from bench_scaleout import print_table

from ledger.dynamodb import DynamoDBIndexedApplicationRecorder, schema
from ledger.dynamodb.batches import BatchEntry
from ledger.dynamodb.local import DynamoDBLocal
from ledger.dynamodb.recorders import NOT_EXISTS
from ledger.index_rounds import _batch_items
from ledger.indexer import _CHECKPOINTS_KEY, Indexer

RESULTS = Path(__file__).parent / "results"
WRITERS = 8
SCRATCH_PAGE = "-99"
"""A page of the notifications table no reader reads: the measured
transactions' two updates go there, not to the head and checkpoints."""


def fill(client: Any, table: str, item: Callable[[], dict[str, Any]], n: int) -> None:
    """Put ``n`` items from ``WRITERS`` threads (each a stream record)."""

    def put(_: int) -> None:
        client.put_item(TableName=table, Item=item())

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(put, range(n)))


def per_call(
    pid: int, call: Callable[[], Any], calls: int, warmup: int
) -> tuple[float, float]:
    """Return the server's CPU ms and the wall ms per call, after a warm-up."""
    for _ in range(warmup):
        call()
    cpu_before = cpu_seconds(pid) or 0.0
    began = time.perf_counter()
    for _ in range(calls):
        call()
    wall = (time.perf_counter() - began) / calls * 1e3
    return ((cpu_seconds(pid) or 0.0) - cpu_before) / calls * 1e3, wall


def commits(app: Any, placed: Any, events: int, count: int) -> list[list[Any]]:
    """Return ``count`` transactions as a round commits ``events`` events."""
    recorder = app.recorder
    table = recorder.notifications_table_name
    transactions = []
    for number in range(count):
        head = 10_000_000 + number * (events + 1000)
        entries = [
            BatchEntry(str(uuid.uuid4()), 1, placed.topic, placed.state)
            for _ in range(events)
        ]
        actions: list[Any] = [
            {
                "Put": {
                    "TableName": table,
                    "Item": item,
                    "ConditionExpression": NOT_EXISTS,
                    "ExpressionAttributeNames": {"#key": schema.POSITION},
                }
            }
            for item in _batch_items(
                head, entries, recorder.page_size_to_write(), recorder.batch_format
            )
        ]
        actions += [
            {
                "Update": {
                    "TableName": table,
                    "Key": {
                        schema.PAGE: {"N": SCRATCH_PAGE},
                        schema.POSITION: {"N": str(position)},
                    },
                    "UpdateExpression": "SET #v = :v",
                    "ExpressionAttributeNames": {"#v": "v"},
                    "ExpressionAttributeValues": {":v": {"N": str(head + events)}},
                }
            }
            for position in (1, 2)
        ]
        transactions.append(actions)
    return transactions


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fill, index, then measure each call kind and whole rounds."""
    with DynamoDBLocal() as local:
        pid = local.pid
        assert pid is not None
        app = open_app(local.endpoint_url, "calls_", "indexed", create=True)
        recorder = app.recorder
        assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
        client = plain_client(local.endpoint_url)
        table = recorder.events_table_name
        placed = placed_event(app)

        def event_item() -> dict[str, Any]:
            return raw_item(str(uuid.uuid4()), placed)

        fill(client, table, event_item, args.stream)
        indexer = Indexer(recorder)
        indexer.catch_up(timeout=3600)
        streams = recorder.connection.streams_client()
        arn = indexer.stream_arn
        [shard] = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        shard_id = shard["ShardId"]
        checkpoint = indexer._read_state().checkpoints[shard_id]

        def iterator_after(number: str) -> str:
            return str(
                streams.get_shard_iterator(
                    StreamArn=arn,
                    ShardId=shard_id,
                    ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                    SequenceNumber=number,
                )["ShardIterator"]
            )

        fill(client, table, event_item, args.page)
        page_iterator = iterator_after(checkpoint)
        records = streams.get_records(ShardIterator=page_iterator)["Records"]
        page = len(records)
        # After the page's last record: nothing follows until the PutItems below.
        at_end = iterator_after(records[-1]["dynamodb"]["SequenceNumber"])
        transactions = commits(app, placed, args.page, args.calls + args.warmup)
        kinds: list[tuple[str, float, Callable[[], Any]]] = [
            (
                "DescribeStream",
                1,
                lambda: streams.describe_stream(StreamArn=arn),
            ),
            (
                "GetShardIterator (after the checkpoint)",
                1,
                lambda: iterator_after(checkpoint),
            ),
            (
                "GetRecords, at the shard's end (empty)",
                0,
                lambda: streams.get_records(ShardIterator=at_end),
            ),
            (
                f"GetRecords, a page of {page} records",
                1,
                lambda: streams.get_records(ShardIterator=page_iterator),
            ),
            (
                "GetItem of the head (consistent)",
                1,
                recorder.max_notification_id,
            ),
            (
                "GetItem of the checkpoints (consistent)",
                1,
                lambda: client.get_item(
                    TableName=recorder.notifications_table_name,
                    Key=_CHECKPOINTS_KEY,
                    ConsistentRead=True,
                ),
            ),
            (
                f"TransactWriteItems of {args.page} events "
                f"({len(transactions[0])} actions)",
                1,
                lambda: client.transact_write_items(TransactItems=transactions.pop()),
            ),
            (
                "PutItem of one event (the raw baseline's call)",
                0,
                lambda: client.put_item(TableName=table, Item=event_item()),
            ),
        ]
        rows: list[dict[str, Any]] = []
        for name, in_round, call in kinds:
            server_ms, wall_ms = per_call(pid, call, args.calls, args.warmup)
            rows.append(
                {
                    "call": name,
                    "server_cpu_ms": round(server_ms, 3),
                    "per_round": in_round,
                    "server_cpu_ms_per_round": round(server_ms * in_round, 3),
                    "wall_ms": round(wall_ms, 2),
                }
            )
            print(f"  {name}: {server_ms:.3f} ms", file=sys.stderr, flush=True)
        indexer.catch_up(timeout=3600)
        busy = idle = 0.0
        for _ in range(args.rounds):
            fill(client, table, event_item, args.page)
            before = cpu_seconds(pid) or 0.0
            indexer.poll()
            busy += (cpu_seconds(pid) or 0.0) - before
        for _ in range(args.rounds):
            before = cpu_seconds(pid) or 0.0
            indexer.poll()
            idle += (cpu_seconds(pid) or 0.0) - before
        app.close()
    round_ms = busy / args.rounds * 1e3
    return {
        "stream_records": args.stream,
        "page": page,
        "calls": rows,
        "sum_of_a_round_ms": round(sum(r["server_cpu_ms_per_round"] for r in rows), 3),
        "round_ms": round(round_ms, 3),
        "round_ms_per_event": round(round_ms / args.page, 4),
        "idle_round_ms": round(idle / args.rounds * 1e3, 3),
    }


def main() -> None:
    """Measure and print; write ``results/index_calls.json``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", type=int, default=20_000, help="records first")
    parser.add_argument("--page", type=int, default=450, help="records per round")
    parser.add_argument("--calls", type=int, default=200, help="measured per kind")
    parser.add_argument("--warmup", type=int, default=150, help="unmeasured per kind")
    parser.add_argument("--rounds", type=int, default=20, help="whole rounds")
    parser.add_argument("--output", default="index_calls.json", help="under results/")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_index_calls.py " + " ".join(sys.argv[1:]),
        "load_before": load_average(),
    }
    results |= run(args)
    results["load_after"] = load_average()
    print(
        f"\nload average before: {results['load_before']}, "
        f"after: {results['load_after']}"
    )
    print_table(
        f"DynamoDB Local's CPU per call of the indexer (stream of "
        f"{results['stream_records']:,} records; {args.warmup} calls of warm-up, "
        f"{args.calls} measured)",
        [
            ("call", "call"),
            ("server CPU ms/call", "server_cpu_ms"),
            ("calls/round", "per_round"),
            ("server CPU ms/round", "server_cpu_ms_per_round"),
            ("wall ms/call", "wall_ms"),
        ],
        results["calls"],
    )
    print(
        f"\nSum over a round's calls: {results['sum_of_a_round_ms']} ms. Whole "
        f"rounds of {args.page} saves: {results['round_ms']} ms "
        f"({results['round_ms_per_event']} ms an event); idle rounds: "
        f"{results['idle_round_ms']} ms."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / args.output
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
