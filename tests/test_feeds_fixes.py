"""A feed whose consumer stops short is not caught up: it waits, doubling, then reads.

A consumer stops short when its own writes fail (a publisher whose bus or
dead-letter table is unavailable, a projector whose commit is refused): it
applies nothing past the failure and reports where it stopped. The loop
every feed runs (``ledger.feeds.Polling``) must then wait as for an outage
(doubling waits, capped) and read again from the checkpoint, rather than
take the poll for one that found nothing, and must say what failed. Faults
go through ``tests/faults.py``'s proxy.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError
from eventsourcing.utils import Environment
from faults import SERVER_ERROR, FaultProxy

from aggregates.application import Orders
from ledger.dynamodb.client import Outage
from ledger.dynamodb.factory import DynamoDBFactory
from ledger.feeds import (
    Batch,
    IndexSource,
    Progress,
    Runner,
    StoppedShortError,
    StreamPoller,
    TrackingCheckpoint,
    keep_polling,
)
from ledger.projections import streams
from projections.orders import get_order_summary
from tests.test_feeds import Collector, place, tracking
from tests.test_feeds_stream import ShardsInMemory, stream_holds
from tests.test_projections_core import ITEM

__all__ = ["tracking"]  # the fixture, used here by name

DEADLINE = 60.0


@pytest.fixture
def proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as started:
        yield started


class Mirror(Collector):
    """Copies each position it is handed into a tracking table of its own, then
    counts it done; its writes go through the fault proxy.

    Like a publisher whose bus is unavailable, it stops at the first write
    that fails and reports the position before it (its checkpoint stays there).
    """

    def __init__(self, recorder: Any, sink: Any) -> None:
        super().__init__(recorder, name="mirror")
        self.sink = TrackingCheckpoint(sink, "mirrored")
        self.failures = 0

    def process(self, batch: Batch) -> Progress:
        done = batch.after
        for applied, item in enumerate(batch.items):
            try:
                self.sink.save(item.position, done)
            except OperationalError:
                self.failures += 1
                return Progress(applied, done)
            self.seen.append(item.position)
            done = item.position
        return Progress(len(batch.items), batch.checkpoint)


def through(proxy: FaultProxy, env: dict[str, str]) -> DynamoDBFactory:
    """A factory calling DynamoDB through ``proxy``, one attempt per call."""
    proxied = {
        **env,
        "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
        "DYNAMODB_MAX_ATTEMPTS": "1",
    }
    return DynamoDBFactory(Environment("mirror_test", proxied))


def test_a_runners_drain_waits_out_a_consumer_stopped_short_by_an_outage(
    orders, tracking, proxy, dynamodb_env
):
    place(orders, 2)
    factory = through(proxy, dynamodb_env)
    consumer = Mirror(tracking, factory.tracking_recorder())
    runner = Runner(IndexSource(orders), consumer, interval=0.1)
    proxy.outage(1.0)  # only the consumer's own writes go through the proxy

    handled = runner.drain(deadline=time.monotonic() + DEADLINE)

    factory.close()
    assert consumer.failures >= 1
    # Not "caught up" at the poll that applied nothing: it waited, read again.
    assert handled == 4
    assert consumer.seen == [1, 2, 3, 4]
    assert consumer.checkpoint.load() == 4


def test_a_runners_drain_raises_at_its_deadline_while_its_consumer_stops_short(
    orders, tracking, proxy, dynamodb_env
):
    place(orders, 1)
    factory = through(proxy, dynamodb_env)
    consumer = Mirror(tracking, factory.tracking_recorder())
    runner = Runner(IndexSource(orders), consumer, interval=0.1)
    proxy.down()

    with pytest.raises(StoppedShortError, match=r"mirror stopped short.* as far as 0"):
        runner.drain(deadline=time.monotonic() + 0.5)

    proxy.up()
    factory.close()
    assert consumer.seen == []
    assert consumer.checkpoint.load() == 0


class FailsRecords:
    """A stream consumer that fails every record: a bug, not an outage."""

    name = "failing"

    def __init__(self, connection: Any) -> None:
        self.shard_checkpoints = ShardsInMemory(connection)
        self.calls = 0

    def process(self, batch: Batch) -> Progress:
        self.calls += 1
        return Progress(0, batch.after)  # short of its first record


def test_a_stream_feed_says_its_consumer_failed_records_not_that_dynamodb_is_down(
    streamed, orders, caplog
):
    orders.place_order(uuid.uuid4(), [ITEM])
    stream_holds(orders, 2)
    poller = StreamPoller(FailsRecords(orders.factory.connection), orders)
    poller.interval = 0.05
    caplog.set_level(logging.WARNING)

    with pytest.raises(StoppedShortError):
        poller.drain(deadline=time.monotonic() + 0.5)

    said = [record.getMessage() for record in caplog.records]
    assert said
    assert not [line for line in said if "DynamoDB unavailable" in line]
    assert all("the consumer failed records of shard" in line for line in said)


class CountedWaits(threading.Event):
    """A stop event whose waits return at once, counted; set after ``limit`` waits."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


def counting_waits(monkeypatch: pytest.MonkeyPatch, limit: int) -> CountedWaits:
    """Make the next ``run_polls`` wait on a :class:`CountedWaits` (no sleeping)."""
    waits = CountedWaits(limit)
    run_polls = streams.run_polls

    def counted(poll: Callable[[], int], stop: threading.Event, **kw: Any) -> None:
        del stop
        run_polls(poll, waits, **kw)

    monkeypatch.setattr(streams, "run_polls", counted)
    return waits


def test_projections_run_on_the_stream_waits_longer_each_time_records_fail(
    streamed, dynamodb_env, proxy, monkeypatch
):
    writer = Orders(env=dynamodb_env)
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    stream_holds(writer, 2)
    monkeypatch.setenv("DYNAMODB_ENDPOINT_URL", proxy.endpoint_url)
    monkeypatch.setenv("DYNAMODB_MAX_ATTEMPTS", "1")
    # Only the projector's commits are refused: every poll fails its records.
    proxy.on("TransactWriteItems", fault=SERVER_ERROR, times=None)
    waits = counting_waits(monkeypatch, limit=5)
    from ledger.cli.projections import projections_run  # noqa: PLC0415

    projections_run("OrderViews", feed="stream", once=False)

    assert waits.waits == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert get_order_summary(open_view_of(dynamodb_env), order_id) is None
    writer.close()


def open_view_of(env: dict[str, str]) -> Any:
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415
    from projections.orders import OrderProjector  # noqa: PLC0415

    return open_view(OrderProjector, env)


class OvershootingWaits(threading.Event):
    """A stop event whose waits last ``extra`` s longer than asked (a busy host)."""

    def __init__(self, extra: float) -> None:
        super().__init__()
        self.extra = extra

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep((timeout or 0.0) + self.extra)
        return self.is_set()


def test_keep_polling_ending_at_its_deadline_after_a_short_poll_raises_it():
    polls = []

    def stops_short() -> int:
        polls.append(time.monotonic())
        raise StoppedShortError("the consumer stopped short", found=2)

    outage = Outage("polling", 0.05)
    # The first wait (0.05 s) fits before the deadline; it ends after it.
    with pytest.raises(StoppedShortError) as raised:
        keep_polling(
            stops_short,
            outage,
            stop=OvershootingWaits(0.3),
            deadline=time.monotonic() + 0.2,
        )

    assert len(polls) == 1
    assert raised.value.found == 2


def test_projections_run_counts_what_a_poll_applied_before_records_failed(
    streamed, dynamodb_env, proxy, monkeypatch, capsys
):
    writer = Orders(env=dynamodb_env)
    for _ in range(40):  # more than one commit of the projector's in one poll
        writer.place_order(uuid.uuid4(), [ITEM])
    stream_holds(writer, 80)
    monkeypatch.setenv("DYNAMODB_ENDPOINT_URL", proxy.endpoint_url)
    monkeypatch.setenv("DYNAMODB_MAX_ATTEMPTS", "1")
    # The projector's first commit goes through; every later one is refused.
    refused = proxy.on("TransactWriteItems", fault=SERVER_ERROR, nth=2, times=None)
    counting_waits(monkeypatch, limit=3)
    from ledger.cli.projections import projections_run  # noqa: PLC0415

    projections_run("OrderViews", feed="stream", once=False)

    assert refused.fired >= 3
    said = capsys.readouterr().out
    processed = re.search(r"stopped; processed (\d+) events from the stream", said)
    assert processed is not None, said
    # What the first commit applied, counted though each poll then stopped short.
    assert int(processed.group(1)) >= 1
    assert len(list(open_view_of(dynamodb_env).stored_items())) >= 1
    writer.close()
