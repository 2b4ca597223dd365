"""Benchmark the inbox beside the same commands called directly, in one run.

On a DynamoDB Local of its own, ``--messages`` orders are placed (one line
each) by four contenders, in turn, ``--rounds`` times (the order reversed
every other round), each on new customers:

* ``direct``: ``Orders.place_order(...)`` without a key: the command alone;
* ``direct keyed``: ``place_order(..., idempotency_key=...)``: the command
  with the key the inbox would give it;
* ``inbox``: ``handle_sqs_event`` of Lambda SQS events of 10 ``PlaceOrder``
  messages each (decoding, validation, routing, the keyed command);
* ``inbox again``: the same events delivered a second time (every message
  a repeat: answered from its key, nothing stored).

DynamoDB round trips are counted by ``ledger.dynamodb.measure``; SQS calls
are not part of it (Lambda receives and deletes; the long-poll runner adds
one ReceiveMessage and one DeleteMessageBatch per 10 messages). Target: the
inbox adds at most one round trip per message to the direct command.
Prints a table and the load average; writes ``results/inbox.json``.

    python -m benchmarks.bench_inbox [--messages 1000] [--rounds 3] [--quick]

(As a module from the repository root, so the example domain imports.)
Wall times on a shared machine vary between runs: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from aggregates.application import Orders
from aggregates.inbox_example import orders_inbox
from ledger.dynamodb import measure
from ledger.dynamodb.local import DynamoDBLocal
from ledger.inbox import Inbox, handle_sqs_event

RESULTS = Path(__file__).parent / "results"
BATCH = 10
"""Messages per Lambda SQS event (the event source mapping's default batch)."""
PRICE = "2.50"
TARGET_EXTRA_ROUND_TRIPS = 1.0
"""The inbox may add at most this many round trips per message."""


def load_average() -> list[float]:
    """Return the 1, 5 and 15-minute load averages: how shared the machine was."""
    return [round(value, 2) for value in os.getloadavg()]


def stage(what: str, started: float) -> None:
    """Say on stderr which stage finished, and when."""
    elapsed = time.perf_counter() - started
    print(f"[{elapsed:6.1f} s] {what}", file=sys.stderr, flush=True)


def item() -> dict[str, Any]:
    return {"product_id": "tea", "quantity": 1, "price": Decimal(PRICE)}


def events_of(count: int) -> list[dict[str, Any]]:
    """Lambda SQS events of ``count`` PlaceOrder messages, 10 per event."""
    records = [
        {
            "messageId": str(uuid.uuid4()),
            "receiptHandle": uuid.uuid4().hex,
            "body": json.dumps(
                {
                    "customer_id": str(uuid.uuid4()),
                    "product_id": "tea",
                    "quantity": 1,
                    "price": PRICE,
                }
            ),
            "attributes": {},
            "messageAttributes": {
                "type": {"stringValue": "PlaceOrder", "dataType": "String"}
            },
            "eventSource": "aws:sqs",
        }
        for _ in range(count)
    ]
    return [{"Records": records[i : i + BATCH]} for i in range(0, count, BATCH)]


class Bench:
    """The contenders, each placing ``messages`` new orders per run."""

    def __init__(self, orders: Orders, inbox: Inbox, messages: int) -> None:
        self.orders = orders
        self.inbox = inbox
        self.messages = messages
        self._last_events: list[dict[str, Any]] = []

    def direct(self) -> None:
        for _ in range(self.messages):
            self.orders.place_order(uuid.uuid4(), [item()])

    def direct_keyed(self) -> None:
        for _ in range(self.messages):
            self.orders.place_order(
                uuid.uuid4(), [item()], idempotency_key=f"sqs:{uuid.uuid4()}"
            )

    def through_inbox(self) -> None:
        self._last_events = events_of(self.messages)
        for event in self._last_events:
            failed = handle_sqs_event(event, self.inbox)["batchItemFailures"]
            assert not failed, failed

    def inbox_again(self) -> None:
        for event in self._last_events:
            failed = handle_sqs_event(event, self.inbox)["batchItemFailures"]
            assert not failed, failed


def run(messages: int, rounds: int, started: float) -> dict[str, Any]:
    load_before = load_average()
    with DynamoDBLocal() as dynamodb:
        env = {
            "PERSISTENCE_MODULE": "ledger.dynamodb",
            "DYNAMODB_ENDPOINT_URL": dynamodb.endpoint_url,
            # DynamoDB Local slows every write once streams hold records.
            "DYNAMODB_EVENTS_STREAM": "no",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
        }
        orders = Orders(env=env)
        inbox = orders_inbox(orders, env=env)
        bench = Bench(orders, inbox, messages)
        orders.place_order(uuid.uuid4(), [item()], idempotency_key="warm")
        stage("tables made", started)

        contenders: dict[str, Callable[[], None]] = {
            "direct": bench.direct,
            "direct keyed": bench.direct_keyed,
            "inbox": bench.through_inbox,
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        samples["inbox again"] = []
        trips: dict[str, list[int]] = {name: [] for name in samples}
        for round_number in range(rounds):
            order = list(contenders)
            if round_number % 2:
                order.reverse()
            for name in order:
                with measure(orders) as meter:
                    began = time.perf_counter()
                    contenders[name]()
                    samples[name].append(time.perf_counter() - began)
                trips[name].append(meter.round_trips)
            with measure(orders) as meter:  # right after "inbox" or before it
                began = time.perf_counter()
                bench.inbox_again()
                samples["inbox again"].append(time.perf_counter() - began)
            trips["inbox again"].append(meter.round_trips)
            stage(f"round {round_number + 1} of {rounds}", started)
        orders.close()
    load_after = load_average()

    rows = []
    direct_trips = min(trips["direct"]) / messages
    for name, times in samples.items():
        per_message = min(trips[name]) / messages
        rows.append(
            {
                "contender": name,
                "messages_per_s": round(messages / min(times)),
                "median_messages_per_s": round(messages / statistics.median(times)),
                "round_trips_per_message": round(per_message, 3),
                "extra_round_trips_per_message": round(per_message - direct_trips, 3),
                "seconds": [round(t, 3) for t in times],
            }
        )
    inbox_extra = next(r for r in rows if r["contender"] == "inbox")[
        "extra_round_trips_per_message"
    ]
    return {
        "messages": messages,
        "rounds": rounds,
        "batch": BATCH,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": rows,
        "target_extra_round_trips_per_message": TARGET_EXTRA_ROUND_TRIPS,
        "target_met": inbox_extra <= TARGET_EXTRA_ROUND_TRIPS,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['messages']:,} messages per contender, best of "
        f"{result['rounds']} rounds; load average before "
        f"{result['load_average_before']}, after {result['load_average_after']}\n"
    )
    print(
        "| contender | messages/s | median messages/s | round trips/message "
        "| vs direct |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in result["rows"]:
        print(
            f"| {row['contender']} | {row['messages_per_s']:,} | "
            f"{row['median_messages_per_s']:,} | {row['round_trips_per_message']} | "
            f"{row['extra_round_trips_per_message']:+} |"
        )
    verdict = "met" if result["target_met"] else "NOT met"
    print(
        f"\ntarget: the inbox adds at most "
        f"{result['target_extra_round_trips_per_message']:g} round trip per "
        f"message: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 messages, 2 rounds")
    args = parser.parse_args()
    messages, rounds = (200, 2) if args.quick else (args.messages, args.rounds)
    started = time.perf_counter()
    result = run(messages, rounds, started)
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inbox.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
