"""The scale-out benchmark's raw baseline: plain boto3, on the tables it made."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.bench_scaleout import RawTable, create_raw_table, raw_client
from ledger.dynamodb import schema


def item(aggregate_id: str, version: int) -> dict[str, Any]:
    return {
        schema.AGGREGATE_ID: {"S": aggregate_id},
        schema.VERSION: {"N": str(version)},
        schema.TOPIC: {"S": "aggregates.order:Order.ItemAdded"},
        schema.STATE: {"B": b"{}"},
    }


def sent_params(client: Any) -> list[dict[str, Any]]:
    """Record the params of every call the client makes (botocore's own hook)."""
    sent: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(dict(params))

    client.meta.events.register("provide-client-params.dynamodb", record)
    return sent


def test_raw_baseline_finds_its_table_with_the_environments_credentials(
    dynamodb_endpoint: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DynamoDB Local keeps one database per access key: the raw client must
    # use the key the table was made with.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "benchmarker")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    name = f"{table_prefix}raw_events"
    create_raw_table(dynamodb_endpoint, name)
    raw = RawTable(raw_client(dynamodb_endpoint), name)

    raw.put(item("a", 1))

    assert [i[schema.VERSION]["N"] for i in raw.load("a")] == ["1"]


def test_raw_baseline_sends_plain_calls(
    dynamodb_endpoint: str, table_prefix: str
) -> None:
    name = f"{table_prefix}raw_events"
    create_raw_table(dynamodb_endpoint, name)
    client = raw_client(dynamodb_endpoint)
    sent = sent_params(client)
    raw = RawTable(client, name)

    raw.put(item("a", 1))
    raw.put_all([item("a", 2), item("a", 3)])
    raw.load("a")

    extras = {"ReturnConsumedCapacity", "ExpressionAttributeNames"}
    actions = [a["Put"] for p in sent for a in p.get("TransactItems", [])]
    assert [sorted(extras & p.keys()) for p in [*sent, *actions]] == [[]] * 5
    assert (raw.round_trips, raw.items_written, raw.estimated_write_units) == (3, 0, 0)
