"""Benchmark ledger's DynamoDB store against raw boto3 making the same calls.

For each case, ledger's recorder and a plain boto3 client (no ledger code)
make the same DynamoDB requests against the same server, alternately, in the
same run; neither asks for consumed capacity in timed calls (ledger's client
asks only inside ``measure``), and each case's costs are counted in a few
more calls after the timed ones. Round trips and capacity units are
deterministic; wall time on a shared machine is not, so compare ledger with
the baseline beside it, not with numbers from another run.

    python benchmarks/bench_store.py [--repeat 30] [--endpoint URL] [--json PATH]

Without --endpoint it starts DynamoDB Local on a free loopback port.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from ledger.dynamodb import (
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    measure,
    schema,
)
from ledger.dynamodb.local import DynamoDBLocal

STATE = b'{"product_id":"sku-1","quantity":2,"price":"9.99"}'
COUNTED = 5
"""Calls per case made after the timed ones, untimed, to count their cost:
ledger under ``measure`` and raw boto3 asking for consumed capacity (neither
does while timed)."""
TOPIC = "aggregates.order:Order.ItemAdded"


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def both(
    ledger_call: Callable[[], Any],
    raw_call: Callable[[], Any],
    ledger_times: list[float],
    raw_times: list[float],
) -> None:
    """Time one call of each side, taking turns at going first."""
    if len(ledger_times) % 2:
        raw_times.append(timed(raw_call))
        ledger_times.append(timed(ledger_call))
    else:
        ledger_times.append(timed(ledger_call))
        raw_times.append(timed(raw_call))


def pack_batch(aggregate_id: str, versions: range) -> bytes:
    """The batch layout of ledger.dynamodb.batches, packed by hand."""
    id_bytes, topic = aggregate_id.encode(), TOPIC.encode()
    entry = b"".join(
        struct.pack(">H", len(id_bytes))
        + id_bytes
        + struct.pack(">q", v)
        + struct.pack(">H", len(topic))
        + topic
        + struct.pack(">I", len(STATE))
        + STATE
        for v in versions
    )
    return b"\x01" + entry


class RawStore:
    """The same DynamoDB calls as ledger's recorder, written directly in boto3.

    Plain: capacity is asked for (``ReturnConsumedCapacity``) only while
    ``counting``, in calls that are not timed.
    """

    def __init__(
        self, client: Any, events_table: str, notifications_table: str
    ) -> None:
        self.counting = False
        self.client = client
        self.events_table = events_table
        self.notifications_table = notifications_table
        self.last_position = 0
        self.units = {"read": 0.0, "write": 0.0, "round_trips": 0}

    def append(self, aggregate_id: str, versions: range) -> None:
        first = self.last_position + 1
        last = self.last_position + len(versions)
        actions: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.events_table,
                    "Item": {
                        "aggregate_id": {"S": aggregate_id},
                        "version": {"N": str(v)},
                        "topic": {"S": TOPIC},
                        "state": {"B": STATE},
                        "position": {"N": str(first + i)},
                    },
                    "ConditionExpression": "attribute_not_exists(#key)",
                    "ExpressionAttributeNames": {"#key": "version"},
                }
            }
            for i, v in enumerate(versions)
        ]
        actions.append(
            {
                "Put": {
                    "TableName": self.notifications_table,
                    "Item": {
                        "page": {"N": str(last // schema.PAGE_SIZE)},
                        "position": {"N": str(last)},
                        "first_position": {"N": str(first)},
                        "events": {"B": pack_batch(aggregate_id, versions)},
                    },
                    "ConditionExpression": "attribute_not_exists(#key)",
                    "ExpressionAttributeNames": {"#key": "position"},
                }
            }
        )
        expected = self.last_position
        condition = "attribute_not_exists(#last)" if expected == 0 else "#last = :e"
        values: dict[str, Any] = {":new": {"N": str(last)}}
        if expected:
            values[":e"] = {"N": str(expected)}
        actions.append(
            {
                "Update": {
                    "TableName": self.notifications_table,
                    "Key": {"page": {"N": "-1"}, "position": {"N": "0"}},
                    "UpdateExpression": "SET #last = :new",
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": {"#last": "last_position"},
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
        response = self.client.transact_write_items(
            TransactItems=actions, **self._capacity()
        )
        self.last_position = last
        self._count(response)

    def load(self, aggregate_id: str) -> list[tuple[int, str, bytes]]:
        params: dict[str, Any] = {
            "TableName": self.events_table,
            "KeyConditionExpression": "#a = :a",
            "ExpressionAttributeNames": {"#a": "aggregate_id"},
            "ExpressionAttributeValues": {":a": {"S": aggregate_id}},
            "ConsistentRead": True,
            **self._capacity(),
        }
        rows = []
        while True:
            response = self.client.query(**params)
            self._count(response)
            rows.extend(
                (int(i["version"]["N"]), i["topic"]["S"], i["state"]["B"])
                for i in response["Items"]
            )
            if "LastEvaluatedKey" not in response:
                return rows
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _capacity(self) -> dict[str, str]:
        return {"ReturnConsumedCapacity": "TOTAL"} if self.counting else {}

    def _count(self, response: dict[str, Any]) -> None:
        self.units["round_trips"] += 1
        capacity = response.get("ConsumedCapacity")
        entries = capacity if isinstance(capacity, list) else [capacity or {}]
        for entry in entries:
            self.units["read"] += float(entry.get("ReadCapacityUnits", 0) or 0)
            self.units["write"] += float(entry.get("WriteCapacityUnits", 0) or 0)
            if "ReadCapacityUnits" not in entry and "WriteCapacityUnits" not in entry:
                kind = "write" if "TransactWrite" in str(entry) else "read"
                self.units[kind] += float(entry.get("CapacityUnits", 0) or 0)


def run(endpoint: str, repeat: int) -> list[dict[str, Any]]:
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    factory = DynamoDBFactory(
        Environment(
            "bench",
            {"DYNAMODB_ENDPOINT_URL": endpoint, "DYNAMODB_TABLE_PREFIX": prefix},
        )
    )
    recorder = factory.application_recorder()
    assert isinstance(recorder, DynamoDBApplicationRecorder)
    # The baseline writes its own tables of the same shape, so neither side's
    # sequence position disturbs the other.
    raw_factory = DynamoDBFactory(
        Environment(
            "bench",
            {
                "DYNAMODB_ENDPOINT_URL": endpoint,
                "DYNAMODB_TABLE_PREFIX": "raw" + prefix,
            },
        )
    )
    raw_recorder = raw_factory.application_recorder()
    assert isinstance(raw_recorder, DynamoDBApplicationRecorder)
    # The environment's credentials, as ledger's factory takes them (DynamoDB
    # Local keeps one database per access key); placeholders without any.
    session = boto3.session.Session()
    placeholder = "local" if session.get_credentials() is None else None
    client = session.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=placeholder,
        aws_secret_access_key=placeholder,
    )
    raw = RawStore(
        client, raw_recorder.events_table_name, raw_recorder.notifications_table_name
    )
    results = []

    # Warm both sides up (connections, table partitions, code paths).
    for _ in range(5):
        recorder.insert_events([StoredEvent(uuid.uuid4(), 1, TOPIC, STATE)])
        raw.append(str(uuid.uuid4()), range(1, 2))

    for count in (1, 10, 50):
        ledger_times: list[float] = []
        raw_times: list[float] = []
        with ExitStack() as counting:
            for index in range(repeat + COUNTED):
                if index == repeat:  # the timed calls are done: count the rest
                    meter = counting.enter_context(measure(recorder))
                    raw.counting = True
                    raw.units = {"read": 0.0, "write": 0.0, "round_trips": 0}
                aggregate_id = uuid.uuid4()
                events = [
                    StoredEvent(aggregate_id, v, TOPIC, STATE)
                    for v in range(1, count + 1)
                ]
                raw_id = str(uuid.uuid4())
                ledger_call = lambda e=events: recorder.insert_events(e)  # noqa: E731
                raw_call = lambda r=raw_id, n=count: raw.append(r, range(1, n + 1))  # noqa: E731
                both(ledger_call, raw_call, ledger_times, raw_times)
        del ledger_times[repeat:], raw_times[repeat:]
        results.append(
            row(f"append {count} events", ledger_times, raw_times, meter, raw)
        )
        raw.units = {"read": 0.0, "write": 0.0, "round_trips": 0}
        raw.counting = False

    for length in (10, 100, 1000):
        aggregate_id = uuid.uuid4()
        raw_id = str(uuid.uuid4())
        for start in range(1, length + 1, 50):
            versions = range(start, min(start + 50, length + 1))
            recorder.insert_events(
                [StoredEvent(aggregate_id, v, TOPIC, STATE) for v in versions]
            )
            raw.append(raw_id, versions)
        raw.units = {"read": 0.0, "write": 0.0, "round_trips": 0}
        ledger_times, raw_times = [], []
        with ExitStack() as counting:
            for index in range(repeat + COUNTED):
                if index == repeat:  # the timed calls are done: count the rest
                    meter = counting.enter_context(measure(recorder))
                    raw.counting = True
                    raw.units = {"read": 0.0, "write": 0.0, "round_trips": 0}
                both(
                    lambda a=aggregate_id: recorder.select_events(a),
                    lambda r=raw_id: raw.load(r),
                    ledger_times,
                    raw_times,
                )
        del ledger_times[repeat:], raw_times[repeat:]
        results.append(
            row(f"load {length} events", ledger_times, raw_times, meter, raw)
        )
        raw.units = {"read": 0.0, "write": 0.0, "round_trips": 0}
        raw.counting = False
    factory.close()
    raw_factory.close()
    return results


def row(
    case: str,
    ledger_times: list[float],
    raw_times: list[float],
    meter: Any,
    raw: RawStore,
) -> dict[str, Any]:
    """One case: medians of the timed calls, costs per call of the counted ones."""
    repeat = COUNTED
    ledger_ms = statistics.median(ledger_times)
    raw_ms = statistics.median(raw_times)
    return {
        "case": case,
        "ledger_median_ms": round(ledger_ms, 2),
        "raw_boto3_median_ms": round(raw_ms, 2),
        "ratio": round(ledger_ms / raw_ms, 2),
        "ledger_round_trips": meter.round_trips / repeat,
        "raw_round_trips": raw.units["round_trips"] / repeat,
        "ledger_rcu": meter.read_units / repeat,
        "ledger_wcu": meter.write_units / repeat,
        "ledger_estimated_rcu": meter.estimated_read_units / repeat,
        "ledger_estimated_wcu": meter.estimated_write_units / repeat,
        "raw_rcu": raw.units["read"] / repeat,
        "raw_wcu": raw.units["write"] / repeat,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'case':<18} {'ledger ms':>9} {'boto3 ms':>9} {'ratio':>6} "
        f"{'trips':>6} {'RCU':>7} {'WCU':>7} {'est RCU':>8} {'est WCU':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['case']:<18} {r['ledger_median_ms']:>9.2f} "
            f"{r['raw_boto3_median_ms']:>9.2f} {r['ratio']:>6.2f} "
            f"{r['ledger_round_trips']:>6.1f} {r['ledger_rcu']:>7.1f} "
            f"{r['ledger_wcu']:>7.1f} {r['ledger_estimated_rcu']:>8.1f} "
            f"{r['ledger_estimated_wcu']:>8.1f}"
        )
    print(
        "\nms: median wall time per call; ratio: ledger / raw boto3 (same calls, "
        "same run); trips, RCU, WCU: per call, as DynamoDB reported them; "
        "est: ledger's own estimate from item sizes."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="calls per case (30)")
    parser.add_argument(
        "--endpoint", help="DynamoDB endpoint (default: start DynamoDB Local)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "store.json",
        help="where to write the results (benchmarks/results/store.json)",
    )
    args = parser.parse_args()
    if args.endpoint:
        results = run(args.endpoint, args.repeat)
    else:
        with DynamoDBLocal() as server:
            results = run(server.endpoint_url, args.repeat)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
