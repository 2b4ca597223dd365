"""A projection made after the stream's 24 hours is built from the index alone.

DynamoDB Streams keeps records 24 hours, and allows two readers per shard:
the indexer is the one reader, and everything else reads its index. So a
projection created after the stream has dropped every record of the
history must get all of it from the index: no Scan of the events table, no
call to DynamoDB Streams; so must a rebuild of an existing one. The expiry
is injected with ``TrimmedStreams`` (tests/indexed_support.py), since
DynamoDB Local never expires records.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from aggregates.application import Orders
from aggregates.order import OrderStatus
from ledger.dynamodb import (
    DynamoDBIndexedApplicationRecorder,
    connection_of,
    measure,
)
from ledger.dynamodb.client import DynamoDBConnection
from ledger.indexer import Indexer
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.sequence import SequenceFeed
from projections.orders import OrderProjector, get_order_summary
from tests.indexed_support import TrimmedStreams, index_until, stored
from tests.test_projections_core import ITEM

DEADLINE = 30.0
"""Seconds to wait for the indexer to hold what was saved."""


class CountedStreams:
    """The real DynamoDB Streams client, each API call it makes noted in ``calls``."""

    def __init__(self, client: Any, calls: list[str]) -> None:
        self.client = client
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.client, name)
        if not callable(found):
            return found

        def noted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return found(*args, **kwargs)

        return noted


@pytest.fixture
def stream_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every DynamoDB Streams call made by any ledger connection in the test."""
    calls: list[str] = []
    made = DynamoDBConnection.streams_client

    def counted(connection: DynamoDBConnection, **options: Any) -> Any:
        return CountedStreams(made(connection, **options), calls)

    monkeypatch.setattr(DynamoDBConnection, "streams_client", counted)
    return calls


@contextmanager
def scans_by(*users: object) -> Iterator[list[tuple[str, int | None]]]:
    """Note each Scan the users' DynamoDB connections send: (table, ``Limit``)."""
    scans: list[tuple[str, int | None]] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "Scan":
            scans.append((params["TableName"], params.get("Limit")))

    clients = [connection_of(user).client.meta.events for user in users]
    for events in clients:
        events.register("provide-client-params.dynamodb", note)
    try:
        yield scans
    finally:
        for events in clients:
            events.unregister("provide-client-params.dynamodb", note)


@pytest.fixture
def env(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The Orders application's environment, in ``indexed`` ordering."""
    indexed = {"DYNAMODB_ORDERING": "indexed", "DYNAMODB_EVENTS_STREAM": "yes"}
    for key, value in indexed.items():
        monkeypatch.setenv(key, value)
    return dynamodb_env | indexed


@pytest.fixture
def orders(env: dict[str, str]) -> Iterator[Orders]:
    app = Orders(env=env)
    yield app
    app.close()


def place_and_confirm(orders: Orders, count: int) -> tuple[list[uuid.UUID], list[Any]]:
    """Place ``count`` orders of one line, confirm every other one.

    Returns the order ids and their events (as keys ``wait_indexed`` takes).
    """
    placed: list[uuid.UUID] = []
    saved: list[StoredEvent] = []
    for number in range(count):
        order_id = orders.place_order(uuid.uuid4(), [ITEM])
        saved += [stored(order_id, 1), stored(order_id, 2)]
        if number % 2 == 0:
            orders.confirm(order_id)
            saved.append(stored(order_id, 3))
        placed.append(order_id)
    return placed, saved


def indexed_past_the_streams_retention(
    orders: Orders,
) -> tuple[list[uuid.UUID], int]:
    """Index a history, part of it saved while the indexer was away past 24 hours.

    Every record of the stream is then expired: the indexer re-indexes what
    it missed from the events table. Returns the orders and the index's head.
    """
    recorder = orders.recorder
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    streams = TrimmedStreams(recorder.connection.streams_client())
    before, saved_before = place_and_confirm(orders, 12)
    index_until(Indexer(recorder), recorder, saved_before, timeout=DEADLINE)
    offline, saved_offline = place_and_confirm(orders, 12)
    back = Indexer(recorder, streams_client=streams)
    streams.trim(back.stream_arn, keep=0)
    index_until(back, recorder, saved_offline, timeout=DEADLINE)
    head = recorder.max_notification_id()
    assert head == len(saved_before) + len(saved_offline)
    return before + offline, head


def test_a_projection_made_after_the_streams_retention_is_built_from_the_index(
    orders: Orders, env: dict[str, str], stream_calls: list[str]
) -> None:
    placed, head = indexed_past_the_streams_retention(orders)
    streamed_before = len(stream_calls)
    view = open_view(OrderProjector, env)
    feed = SequenceFeed(OrderProjector(view, event_loader(orders)), orders)

    with (
        measure(orders) as reads,
        measure(view) as writes,
        scans_by(orders, view) as scans,
    ):
        deadline = time.monotonic() + DEADLINE
        while feed.poll() and time.monotonic() < deadline:
            pass

    assert feed.position == head
    summaries = [get_order_summary(view, order_id) for order_id in placed]
    assert [s.status if s else None for s in summaries] == [
        OrderStatus.CONFIRMED,
        OrderStatus.CREATED,
    ] * (len(placed) // 2)
    assert all(s is not None and s.lines["apple"].quantity == 2 for s in summaries)
    # The history came from the index: Queries of the notifications table.
    assert reads.calls["Query"] >= 1
    assert "Scan" not in reads.calls
    # The one Scan allowed: of the new view's own table, of one item at most
    # (does this version hold anything yet? see ``recorded_one_position``).
    assert all(table == view.table_name and limit == 1 for table, limit in scans)
    assert writes.calls["Scan"] <= 1
    assert stream_calls[streamed_before:] == []


def test_a_rebuild_after_the_streams_retention_reads_the_index_not_the_events_table(
    orders: Orders, env: dict[str, str], stream_calls: list[str]
) -> None:
    placed, head = indexed_past_the_streams_retention(orders)
    streamed_before = len(stream_calls)
    view = open_view(OrderProjector, env)

    with scans_by(orders, view) as scans:
        result = rebuild(orders, OrderProjector, view)

    assert result.events == head
    summaries = [get_order_summary(view, order_id) for order_id in placed]
    assert all(s is not None and s.lines["apple"].quantity == 2 for s in summaries)
    assert [
        table for table, _ in scans if table == orders.recorder.events_table_name
    ] == []
    assert stream_calls[streamed_before:] == []
