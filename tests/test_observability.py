"""Projections report what they do: structured logs and metrics, never event state."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from aggregates.application import Orders
from aggregates.order import Order
from ledger.projections import Session, event_loader, handles
from ledger.projections.metrics import (
    LEDGER_METRICS,
    EmbeddedMetrics,
    MemoryMetrics,
    NoMetrics,
    metrics_from_env,
)
from ledger.projections.sequence import SequenceFeed
from ledger.projections.streams import StreamPoller, lambda_handler, process_records
from projections.orders import OrderProjector
from tests.test_faults_feeds import LambdaContext, lambda_records
from tests.test_projections_core import ITEM, FlakyOrderProjector
from tests.test_projections_dynamodb import place_some_orders, stream_records

CARD_NUMBER = "4111-1111-1111-1111"
"""Event data that must never reach a log record or a metric line."""


class ParkingOrderViews(FlakyOrderProjector):
    """The deployed projection's name, with a handler that fails on fig items."""

    name = "OrderViews"


class CardProjector(OrderProjector):
    """A handler whose error message quotes the event's data, as bugs do."""

    retry_delays = (0.0, 0.0)

    @handles(Order.ItemAdded)
    def item_added(self, event: Any, models: Session) -> None:
        msg = f"card {event.product_id} declined"
        raise ValueError(msg)


def embedded_metric_documents(text: str) -> list[dict[str, Any]]:
    """The CloudWatch embedded-metric-format lines printed, parsed."""
    return [json.loads(line) for line in text.splitlines() if '"_aws"' in line]


def values_of(documents: list[dict[str, Any]], name: str) -> list[float]:
    found: list[float] = []
    for document in documents:
        value = document.get(name)
        if value is not None:
            found.extend(value if isinstance(value, list) else [value])
    return found


def fields(caplog: pytest.LogCaptureFixture, message_part: str) -> list[dict]:
    return [
        vars(record) for record in caplog.records if message_part in record.getMessage()
    ]


def test_a_parked_event_is_one_events_parked_line_the_deployed_alarm_reads(
    orders, dynamodb_env, capsys
):
    poisoned = orders.place_order(uuid.uuid4(), [ITEM])
    orders.add_item(poisoned, "fig", 1, Decimal(1))
    handler = lambda_handler(ParkingOrderViews, Orders, dynamodb_env)

    response = handler({"Records": lambda_records(orders)}, LambdaContext(60))

    assert response == {"batchItemFailures": []}
    documents = embedded_metric_documents(capsys.readouterr().out)
    [document] = [d for d in documents if "EventsParked" in d]
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "ledger"
    assert directive["Dimensions"] == [["Projection"]]
    assert {"Name": "EventsParked", "Unit": "Count"} in directive["Metrics"]
    assert document["Projection"] == "OrderViews"
    assert document["EventsParked"] == 1
    assert isinstance(document["_aws"]["Timestamp"], int)


def test_a_secret_in_a_handlers_error_reaches_no_log_record_and_no_metric_line(
    orders, dynamodb_env, caplog, capsys
):
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    orders.add_item(order_id, CARD_NUMBER, 1, Decimal(1))
    handler = lambda_handler(CardProjector, Orders, dynamodb_env)

    with caplog.at_level(logging.DEBUG, logger="ledger"):
        handler({"Records": lambda_records(orders)}, LambdaContext(60))

    [parked] = fields(caplog, "parked version")
    assert parked["levelno"] == logging.ERROR
    assert (parked["projection"], parked["aggregate_id"], parked["version"]) == (
        "CardProjector",
        str(order_id),
        2,
    )
    assert parked["error"].startswith("ValueError at test_observability.py:")
    assert len(fields(caplog, "retrying")) == 2
    printed = capsys.readouterr().out
    assert values_of(embedded_metric_documents(printed), "HandlerRetries") == [1, 1]
    assert CARD_NUMBER not in printed
    for record in caplog.records:
        assert CARD_NUMBER not in record.getMessage()
        assert CARD_NUMBER not in str(vars(record))


def test_the_lambda_handler_logs_a_batch_summary_and_emits_its_iterator_age(
    orders, dynamodb_env, caplog, capsys
):
    place_some_orders(orders, 2)
    written = time.time() - 120
    records = lambda_records(orders)
    for record in records:
        record["dynamodb"]["ApproximateCreationDateTime"] = written
    handler = lambda_handler(OrderProjector, Orders, dynamodb_env)

    with caplog.at_level(logging.INFO, logger="ledger.projections"):
        handler({"Records": records}, LambdaContext(60))

    [summary] = fields(caplog, "stream batch")
    assert summary["name"] == "ledger.projections.streams"
    assert summary["projection"] == "OrderViews"
    counts = ("records", "applied", "parked", "failed")
    assert tuple(summary[f] for f in counts) == (len(records), len(records), 0, 0)
    assert 120_000 <= summary["iterator_age_ms"] < 180_000
    documents = embedded_metric_documents(capsys.readouterr().out)
    [age] = values_of(documents, "IteratorAgeMilliseconds")
    assert 120_000 <= age < 180_000
    assert values_of(documents, "StreamBatchRecords") == [len(records)]
    assert sum(values_of(documents, "EventsApplied")) == len(records)
    assert all(
        d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Projection"]]
        for d in documents
    )


def test_the_stream_poller_reports_the_age_of_the_records_dynamodb_dated(
    streamed, orders, view
):
    place_some_orders(orders, 1)
    metrics = MemoryMetrics()
    projector = OrderProjector(view, event_loader(orders), metrics=metrics)

    StreamPoller(projector, orders).poll()

    [age] = metrics.values("IteratorAgeMilliseconds")
    assert 0 <= age < 600_000
    assert metrics.flushes >= 1


def test_a_commit_logs_its_items_and_bytes_at_debug(orders, view, caplog):
    place_some_orders(orders, 1)
    metrics = MemoryMetrics()
    projector = OrderProjector(view, event_loader(orders), metrics=metrics)

    with caplog.at_level(logging.DEBUG, logger="ledger.projections.projector"):
        process_records(projector, stream_records(orders), orders.mapper)

    [commit] = fields(caplog, "committed")
    assert commit["levelno"] == logging.DEBUG
    assert commit["items"] > 1
    assert commit["bytes"] > 100
    assert metrics.values("CommitItems") == [commit["items"]]


def test_a_redrive_logs_each_aggregates_outcome(orders, view, caplog):
    poisoned = orders.place_order(uuid.uuid4(), [ITEM])
    orders.add_item(poisoned, "fig", 1, Decimal(1))
    metrics = MemoryMetrics()
    projector = FlakyOrderProjector(view, event_loader(orders), metrics=metrics)
    process_records(projector, stream_records(orders), orders.mapper)
    assert metrics.total("EventsParked") == 1
    projector.broken = False

    with caplog.at_level(logging.INFO, logger="ledger.projections"):
        projector.redrive()

    [redriven] = fields(caplog, "redrove")
    assert redriven["name"] == "ledger.projections.deadletters"
    assert (redriven["aggregate_id"], redriven["outcome"]) == (str(poisoned), "applied")
    assert metrics.total("EventsParked") == 1


def test_the_sequence_feed_records_how_far_behind_the_sequence_it_is(orders, view):
    place_some_orders(orders, 2)
    head = orders.recorder.max_notification_id()
    metrics = MemoryMetrics()
    feed = SequenceFeed(
        OrderProjector(view, event_loader(orders), metrics=metrics),
        orders,
        page_size=3,
    )

    feed.poll()  # to the head as of the poll, a page of 3 positions at a time

    assert metrics.values("Lag") == [max(0, head - p) for p in range(3, head + 3, 3)]


def test_ledger_metrics_chooses_the_lambda_handlers_metrics(monkeypatch):
    monkeypatch.delenv(LEDGER_METRICS, raising=False)

    assert isinstance(metrics_from_env(OrderProjector), EmbeddedMetrics)
    assert isinstance(
        metrics_from_env(OrderProjector, {"LEDGER_METRICS": "none"}), NoMetrics
    )
    prefixed = {"ORDERVIEWS_LEDGER_METRICS": "none", "LEDGER_METRICS": "emf"}
    assert isinstance(metrics_from_env(OrderProjector, prefixed), NoMetrics)
    with pytest.raises(OSError, match="use 'emf' or 'none'"):
        metrics_from_env(OrderProjector, {"LEDGER_METRICS": "statsd"})


def test_a_projector_class_that_sets_its_metrics_keeps_them_in_lambda(monkeypatch):
    monkeypatch.delenv(LEDGER_METRICS, raising=False)
    own = MemoryMetrics()

    class Measured(OrderProjector):
        metrics = own

    assert metrics_from_env(Measured) is own


def test_over_a_hundred_values_of_a_metric_continue_on_another_line():
    out = io.StringIO()
    metrics = EmbeddedMetrics(out)
    for _ in range(150):
        metrics.record("CommitItems", 2, "Count", "OrderViews")
    metrics.record("EventsParked", 1, "Count", "OrderViews")

    metrics.flush()
    metrics.flush()  # nothing more to write

    documents = embedded_metric_documents(out.getvalue())
    assert [len(d["CommitItems"]) for d in documents] == [100, 50]
    assert sum(values_of(documents, "CommitItems")) == 300
    assert values_of(documents, "EventsParked") == [1]
    assert ["EventsParked" in d for d in documents] == [True, False]
