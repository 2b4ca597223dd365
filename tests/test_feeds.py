"""The reader interface: one runner, any consumer, over a real application sequence.

A consumer here is a small class (what a user writes for a new kind of
consumer): it collects what it is handed and keeps its position in a real
tracking table. The runner must hand it every event once and in order,
keep its position across runners, read again after a race, stop at an
unreadable batch, record its lag, wait for a position, and ride out
DynamoDB being unavailable within a deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError
from eventsourcing.utils import get_topic
from faults import CUT, FaultProxy

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.dynamodb.factory import DynamoDBFactory
from ledger.feeds import (
    Batch,
    IndexSource,
    Progress,
    Runner,
    TrackingCheckpoint,
    drain_handler,
)
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.metrics import MemoryMetrics
from ledger.projections.sequence import SequenceFeed
from projections.orders import OrderProjector, get_order_summary
from tests.test_corrupt_batches import change_inside_batch, three_orders
from tests.test_projections_core import ITEM


class Collector:
    """A consumer that keeps what it is handed; its position in a tracking table."""

    atomic = False

    def __init__(
        self, recorder: Any, name: str = "collector", topics: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.topics = topics
        self.checkpoint = TrackingCheckpoint(recorder, name)
        self.seen: list[int] = []
        self.events: list[Any] = []

    def process(self, batch: Batch) -> Progress:
        for item in batch.items:
            self.seen.append(item.position)
            self.events.append(item.event)
        return Progress(len(batch.items), batch.checkpoint)


class StopsShortAt(Collector):
    """Handles positions before ``limit`` only (as a publisher whose bus failed)."""

    def __init__(self, recorder: Any, limit: int) -> None:
        super().__init__(recorder)
        self.limit = limit

    def process(self, batch: Batch) -> Progress:
        done = [item for item in batch.items if item.position < self.limit]
        self.seen.extend(item.position for item in done)
        if len(done) == len(batch.items):
            return Progress(len(done), batch.checkpoint)
        return Progress(len(done), self.limit - 1)


@pytest.fixture
def tracking(dynamodb_env: dict[str, str]) -> Iterator[Any]:
    """A real tracking table beside the Orders application's tables."""
    from eventsourcing.utils import Environment  # noqa: PLC0415

    factory = DynamoDBFactory(Environment("feeds_test", dynamodb_env))
    yield factory.tracking_recorder()
    factory.close()


def place(orders: Orders, count: int) -> list[uuid.UUID]:
    """Place ``count`` orders of one line: two events each, one batch each."""
    return [orders.place_order(uuid.uuid4(), [ITEM]) for _ in range(count)]


def runner_of(orders: Orders, consumer: Any, page_size: int = 3, **kw: Any) -> Runner:
    return Runner(IndexSource(orders, page_size=page_size), consumer, **kw)


def test_a_runner_hands_every_event_once_in_order_and_keeps_the_position(
    orders, tracking
):
    place(orders, 4)
    first = Collector(tracking)

    assert runner_of(orders, first).poll() == 8
    again = Collector(tracking)  # a new process: it starts from the checkpoint
    handled = runner_of(orders, again).poll()
    place(orders, 1)
    later = runner_of(orders, again).poll()

    assert first.seen == list(range(1, 9))
    assert handled == 0
    assert later == 2
    assert again.seen == [9, 10]
    assert again.checkpoint.load() == 10
    assert [type(e).__name__ for e in first.events[:2]] == ["OrderPlaced", "ItemAdded"]


def test_a_consumer_of_some_topics_gets_only_those_and_moves_past_the_rest(
    orders, tracking
):
    place(orders, 3)
    placed = Collector(tracking, "placed", topics=(get_topic(Order.OrderPlaced),))

    runner_of(orders, placed, page_size=2).poll()

    assert placed.seen == [1, 3, 5]
    # The last position holds an event of another topic: the checkpoint is past it.
    assert placed.checkpoint.load() == 6


def test_a_consumer_that_stops_short_is_handed_the_rest_at_the_next_poll(
    orders, tracking
):
    place(orders, 3)
    consumer = StopsShortAt(tracking, limit=4)
    runner = runner_of(orders, consumer, page_size=2)

    assert runner.poll() == 3  # positions 1-3; position 4 was not done
    assert consumer.checkpoint.load() == 3
    consumer.limit = 100
    assert runner.poll() == 3
    assert consumer.seen == [1, 2, 3, 4, 5, 6]


def test_a_runner_that_raced_reads_from_the_checkpoint_again(orders, tracking):
    place(orders, 2)
    mine, theirs = Collector(tracking), Collector(tracking)
    runner = runner_of(orders, mine, page_size=2)
    assert runner.position == 0  # read before the other runner moves it
    runner_of(orders, theirs, page_size=2).poll()

    assert runner.poll() == 0  # handed a page, but its save was refused ...
    assert mine.seen == [1, 2]  # (at least once: not atomic)
    assert runner.position == 4  # ... so it read the checkpoint again
    place(orders, 1)
    assert runner.poll() == 2
    assert mine.seen == [1, 2, 5, 6]


def feed_of(orders: Orders, dynamodb_env: dict[str, str]) -> SequenceFeed:
    view = open_view(OrderProjector, dynamodb_env)
    return SequenceFeed(OrderProjector(view, event_loader(orders)), orders)


def test_a_runner_behind_another_never_commits_a_page_over_part_of_it_done(
    orders, dynamodb_env
):
    """Two runners of one projection: a page lands only over the position it follows.

    Only forward would let the runner whose page ends later apply again the
    events the other committed (its reads see the other's writes, so no
    revision check stops it).
    """
    ahead, behind = feed_of(orders, dynamodb_env), feed_of(orders, dynamodb_env)
    order_id = orders.place_order(uuid.uuid4(), [ITEM])  # positions 1-2
    assert ahead.poll() == 2
    assert behind.poll() == 0  # it holds position 2
    orders.add_item(order_id, "apple", 1, Decimal("1.50"))  # position 3
    assert ahead.poll() == 1
    orders.add_item(order_id, "apple", 1, Decimal("1.50"))  # position 4

    assert behind.poll() == 0  # its page 3-4 was refused: 3 was applied
    assert behind.poll() == 1  # from the checkpoint: 4 only

    summary = get_order_summary(ahead.projector.view, order_id)
    assert summary is not None
    assert summary.lines["apple"].quantity == 4  # 2 placed + 1 + 1


def test_a_running_feed_goes_on_after_an_operator_skips_the_batch(orders, dynamodb_env):
    three_orders(orders)  # batches 1-2, 3-4, 5-6
    change_inside_batch(orders, 4, b'"quantity":2', b'"quantity":7')
    running = feed_of(orders, dynamodb_env)  # `projections run`, or a warm Lambda
    assert running.poll() == 2
    assert running.blocked is not None

    operator = feed_of(orders, dynamodb_env)  # `ledger projections skip-batch`
    assert operator.skip_batch(3) == 2

    assert running.poll() == 2  # positions 5-6: it read the checkpoint again
    assert running.blocked is None


def test_a_crash_between_the_effects_and_the_checkpoint_hands_them_over_again(
    orders, tracking, dynamodb_endpoint, dynamodb_env
):
    """At least once for consumers that are not atomic: said, and shown."""
    place(orders, 2)
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "1",
        }
        from eventsourcing.utils import Environment  # noqa: PLC0415

        factory = DynamoDBFactory(Environment("feeds_test", env))
        crashing = Collector(factory.tracking_recorder())
        # The checkpoint's save is cut: the events were handed over, not saved.
        proxy.on("UpdateItem", fault=CUT)
        runner = runner_of(orders, crashing, page_size=10)
        with pytest.raises(OperationalError):
            runner.poll()
        factory.close()

    after = Collector(tracking)
    runner_of(orders, after, page_size=10).poll()

    assert crashing.seen == [1, 2, 3, 4]
    assert after.seen == [1, 2, 3, 4]  # handed over again: the save was lost


def test_a_runner_stops_at_an_unreadable_batch_and_goes_no_further(orders, tracking):
    three_orders(orders)
    change_inside_batch(orders, 4, b'"quantity":2', b'"quantity":7')
    consumer = Collector(tracking)
    runner = runner_of(orders, consumer, page_size=10)

    runner.poll()
    runner.poll()

    assert consumer.seen == [1, 2]
    assert consumer.checkpoint.load() == 2
    assert isinstance(runner.blocked, CorruptNotificationBatchError)
    assert runner.blocked.last_position == 4


def test_a_runner_records_its_consumers_lag_behind_the_head(orders, tracking):
    place(orders, 3)
    metrics = MemoryMetrics()

    runner_of(orders, Collector(tracking), page_size=4, metrics=metrics).poll()

    assert metrics.values("Lag") == [2, 0]
    assert [m.projection for m in metrics.measurements] == ["collector"] * 2


def test_wait_returns_once_a_started_runner_has_handled_a_position(orders, tracking):
    consumer = Collector(tracking)
    with runner_of(orders, consumer, interval=0.05) as runner:
        place(orders, 2)
        runner.wait(orders.recorder.max_notification_id(), timeout=30)
        assert consumer.seen == [1, 2, 3, 4]
        with pytest.raises(TimeoutError, match="is at position 4, not yet 5"):
            runner.wait(5, timeout=0.2)


def test_drain_rides_out_an_outage_while_its_deadline_allows(
    orders, tracking, dynamodb_endpoint, dynamodb_env
):
    place(orders, 2)
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "1",
        }
        proxied = Orders(env=env)
        consumer = Collector(tracking)
        runner = Runner(IndexSource(proxied), consumer, interval=0.2)
        proxy.outage(1.5)
        started = time.monotonic()
        handled = runner.drain(deadline=time.monotonic() + 60)
        took = time.monotonic() - started
        proxied.close()

    assert handled == 4
    assert consumer.seen == [1, 2, 3, 4]
    assert took >= 1.0  # it waited for DynamoDB, then went on


def test_drain_without_time_left_raises_what_made_dynamodb_unavailable(
    orders, tracking, dynamodb_endpoint, dynamodb_env
):
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "1",
        }
        proxied = Orders(env=env)
        runner = Runner(IndexSource(proxied), Collector(tracking), interval=0.2)
        proxy.outage(30)
        with pytest.raises(OperationalError):
            runner.drain(deadline=time.monotonic() + 0.5)
        proxy.up()
        proxied.close()


class LambdaContext:
    def __init__(self, milliseconds: float) -> None:
        self.milliseconds = milliseconds

    def get_remaining_time_in_millis(self) -> float:
        return self.milliseconds


def test_a_drain_handler_makes_its_runner_once_and_drains_to_the_tail(orders, tracking):
    place(orders, 2)
    made: list[Collector] = []

    def make() -> Runner:
        made.append(Collector(tracking))
        return runner_of(orders, made[-1])

    handler = drain_handler(make, margin_ms=1_000)
    first = handler({}, LambdaContext(30_000))
    place(orders, 1)
    second = handler({}, LambdaContext(30_000))
    out_of_time = handler({}, LambdaContext(500))

    assert first == {"applied": 4, "position": 4, "blocked": 0}
    assert second == {"applied": 2, "position": 6, "blocked": 0}
    assert out_of_time == {"applied": 0, "position": 6, "blocked": 0}
    assert len(made) == 1


def test_two_started_runners_racing_hand_each_position_to_one_consumer_save(
    orders, tracking
):
    """Each position's checkpoint is saved once however runners race."""
    place(orders, 10)
    consumers = [Collector(tracking), Collector(tracking)]
    go = threading.Event()
    threads = [
        threading.Thread(
            target=lambda c=c: (go.wait(), runner_of(orders, c, page_size=2).drain())
        )
        for c in consumers
    ]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(60)

    assert TrackingCheckpoint(tracking, "collector").load() == 20
    # Not atomic: a page both read may be handed to both (at least once), but
    # together they saw every position, and each saw its own in order.
    assert set(consumers[0].seen) | set(consumers[1].seen) == set(range(1, 21))
    for consumer in consumers:
        assert consumer.seen == sorted(consumer.seen)
