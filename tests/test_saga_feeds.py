"""The saga application's feeds as consumers run by ``ledger.feeds.Runner``.

A feed per leader decides on its events (a page per commit), one sends the
saga application's own steps, one fires its timeouts. What the runner gives
them: their lag behind each index's head as a metric (dimension
``SagaApplication``, in Lambda too), ``wait`` for a position, a drain that
starts no page after its deadline and rides out DynamoDB being unavailable,
and two runners at once deciding each event once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregates import fulfilment_lambda
from aggregates.fulfilment import OrderFulfilment
from aggregates.order import Order, OrderStatus
from ledger.dynamodb import measure
from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.feeds import IndexSource, Raced, Runner
from ledger.index_consumers import STOP_MARGIN_MS, follow_leaders
from ledger.projections.metrics import LAG, SAGA_DIMENSION, MemoryMetrics
from ledger.sagas import (
    PARKED_TABLE,
    LowWaterMark,
    ProcessConsumer,
    SagaRunner,
    TimeoutPoller,
)
from tests import test_saga_fulfilment as fulfilment_tests
from tests.faults import FaultProxy
from tests.test_corrupt_batches import DAMAGE, damage_batch
from tests.test_saga_fulfilment import (
    LATER,
    TEA,
    Shop,
    events_of,
    open_shop,
)
from tests.test_saga_pages import confirmed, requests_by_table

SAGA = OrderFulfilment.name
WAIT = 30.0
"""Seconds a test waits for a runner's thread to reach a position."""
STOCK = 1000


# The fulfilment tests' fixture: every application on one ordering, then the other.
shop_env = fulfilment_tests.shop_env


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[Shop]:
    made = open_shop(shop_env, {TEA: STOCK})
    yield made
    made.close()


class LambdaContext:
    """What a handler reads of Lambda's context: the time its invocation has left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def get_remaining_time_in_millis(self) -> float:
        return (
            STOP_MARGIN_MS + (self.seconds - (time.monotonic() - self.started)) * 1000
        )


def leaders(shop: Shop) -> list[Any]:
    return [shop.orders, shop.warehouse, shop.payments]


def runner_of(shop: Shop, **kwargs: Any) -> SagaRunner:
    """A saga runner of the shop's saga application, with the shop's indexers."""
    return SagaRunner(
        shop.fulfilment, leaders(shop), indexers=shop.runner.indexers, **kwargs
    )


def feed_of(runner: SagaRunner, name: str) -> Runner:
    [found] = [r for r in runner.runners if r.consumer.name == f"{SAGA}/{name}"]
    return found


def reserved_once(shop: Shop, order_ids: list[uuid.UUID]) -> bool:
    sagas = [shop.fulfilment.fulfilment(order_id) for order_id in order_ids]
    return all(
        saga is not None
        and events_of(shop.fulfilment, saga.id).count("ReserveStock") == 1
        for saga in sagas
    )


# What each feed commits ---------------------------------------------------------


def test_a_leader_feed_commits_a_page_of_decisions_in_one_transaction(shop):
    order_ids = confirmed(shop, 10)
    orders_feed = feed_of(runner_of(shop), "Orders")

    with measure(shop.fulfilment) as meter:
        orders_feed.poll()

    assert meter.calls["TransactWriteItems"] == 1  # not one per order
    assert meter.calls["UpdateItem"] == 0  # the tracking is in it
    assert reserved_once(shop, order_ids)
    head = shop.orders.recorder.max_notification_id()
    assert shop.fulfilment.recorder.max_tracking_id(shop.orders.name) == head
    assert orders_feed.position == head


def test_the_step_feed_sends_a_page_of_steps_then_moves_one_position(shop):
    order_ids = confirmed(shop, 10)
    runner = runner_of(shop)
    feed_of(runner, "Orders").poll()
    shop.index()  # an indexed saga application's steps, in its own sequence
    parked = shop.fulfilment.parked_steps.table_name
    tracking_table = shop.fulfilment.recorder.tracking_table_name

    with requests_by_table(shop.fulfilment) as (_, calls):
        sent = feed_of(runner, "steps").poll()

    assert sent == 10
    assert calls.count(("Query", parked)) == 1  # not one per step
    assert calls.count(("UpdateItem", tracking_table)) == 1  # one position
    assert parked.endswith(PARKED_TABLE)
    assert all(shop.warehouse.get_reservation(o) is not None for o in order_ids)
    assert shop.fulfilment.recorder.max_tracking_id(SAGA) == (
        shop.fulfilment.recorder.max_notification_id()
    )


def test_the_timeout_mark_stays_before_the_oldest_pending_timeout(shop):
    first, second = shop.place({TEA: 1}), shop.place({TEA: 1})
    shop.run()
    poller = TimeoutPoller(shop.fulfilment)
    poller.poll()  # both pending
    positions = sorted(position for _, position in poller.pending.values())
    recorder = shop.fulfilment.recorder
    assert recorder.max_tracking_id(poller.tracking_name) == positions[0] - 1

    shop.answer(first, approved=True)
    shop.run()  # the first's timeout is cancelled
    poller.poll()
    assert recorder.max_tracking_id(poller.tracking_name) == positions[1] - 1

    read = recorder.max_notification_id()
    assert poller.poll(datetime.now(UTC) + LATER) == 1  # the second's fires
    assert recorder.max_tracking_id(poller.tracking_name) == read  # none pending
    assert shop.saga(second).fired == {"payment"}


def test_loading_the_timeout_mark_starts_the_pending_timeouts_from_it(shop):
    shop.place({TEA: 1})
    shop.run()
    poller = TimeoutPoller(shop.fulfilment)
    poller.poll()
    [(_, position)] = poller.pending.values()
    mark = LowWaterMark(shop.fulfilment.recorder, poller.tracking_name, poller.pending)

    assert mark.load() == position - 1
    assert poller.pending == {}  # to be read again from the mark
    assert mark.save(position + 10, position - 1)  # nothing pending: all read
    assert mark.load() == position + 10
    assert mark.save(position, position + 10)  # never back: no race either
    assert mark.load() == position + 10


def test_a_feed_stopped_at_an_unreadable_batch_raises_once_the_others_went_on(
    dynamodb_env,
):
    shop = open_shop(dynamodb_env, {TEA: STOCK})
    first = shop.place({TEA: 1})
    runner = runner_of(shop)
    runner.poll()
    second = shop.place({TEA: 1})
    head = shop.orders.recorder.max_notification_id()
    damage_batch(shop.orders, head, **DAMAGE["truncated bytes"])
    shop.answer(first, approved=True)

    with pytest.raises(CorruptNotificationBatchError):
        runner.poll()

    assert set(runner.blocked) == {f"{SAGA}/Orders"}
    assert feed_of(runner, "Orders").position < head  # nothing skipped
    assert shop.fulfilment.fulfilment(second) is None
    # The payment's feed and the steps went on: the first order shipped.
    assert shop.orders.get_order(first).status is OrderStatus.SHIPPED
    shop.close()


# What the runner gives them ------------------------------------------------------


def test_every_saga_feed_records_its_lag_behind_its_index_head(shop):
    metrics = MemoryMetrics()
    runner = runner_of(shop, metrics=metrics)
    poller = TimeoutPoller(shop.fulfilment, metrics=metrics)
    shop.place({TEA: 1})
    shop.index()

    runner.poll()
    poller.poll()

    lags: dict[str, list[float]] = {}
    for measurement in metrics.measurements:
        if measurement.name == LAG:
            lags.setdefault(measurement.projection, []).append(measurement.value)
    names = {f"{SAGA}/{name}" for name in ("Orders", "Warehouse", "steps", "timeouts")}
    assert names <= set(lags)
    assert {name: lags[name][-1] for name in names} == dict.fromkeys(names, 0)


def embedded_lags(output: str) -> dict[str, float]:
    """Each saga feed's last Lag in the embedded-metric-format lines of ``output``."""
    lags = {}
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        [directive] = document["_aws"]["CloudWatchMetrics"]
        if LAG in document and directive["Dimensions"] == [[SAGA_DIMENSION]]:
            assert directive["Namespace"] == "ledger"
            value = document[LAG]
            lags[document[SAGA_DIMENSION]] = (
                value[-1] if isinstance(value, list) else value
            )
    return lags


@pytest.fixture
def lambda_shop(dynamodb_env: dict[str, str], monkeypatch) -> Iterator[Shop]:
    shop = open_shop(dynamodb_env, {TEA: STOCK})
    for app in (shop.orders, shop.warehouse, shop.payments):
        app.recorder.idempotency.create_table()  # made at a first key otherwise
    fulfilment_lambda.reset()
    monkeypatch.setenv("CREATE_TABLE", "no")
    monkeypatch.delenv("LEDGER_METRICS", raising=False)
    yield shop
    fulfilment_lambda.reset()
    shop.close()


def test_the_saga_functions_write_each_feed_s_lag_on_their_log(lambda_shop, capsys):
    shop = lambda_shop
    order_id = shop.place({TEA: 1})
    capsys.readouterr()

    fulfilment_lambda.follow_index({}, LambdaContext(10))
    fulfilment_lambda.follow_index({}, LambdaContext(10))  # the steps' replies
    fulfilment_lambda.fire_timeouts({}, LambdaContext(10))

    lags = embedded_lags(capsys.readouterr().out)
    assert shop.payments.get_payment(order_id) is not None
    expected = {f"{SAGA}/{n}" for n in ("Orders", "Warehouse", "steps", "timeouts")}
    assert expected <= set(lags)
    assert all(lags[name] == 0 for name in expected)


def test_a_leader_feed_s_runner_waits_for_a_position_read_your_writes(shop):
    orders_feed = feed_of(runner_of(shop), "Orders")
    order_id = shop.place({TEA: 1})
    shop.index()

    with orders_feed:  # in a thread
        orders_feed.wait(shop.orders.recorder.max_notification_id(), WAIT)

        assert shop.fulfilment.fulfilment(order_id) is not None


def test_a_drain_starts_no_page_after_its_deadline_and_the_next_goes_on(shop):
    order_ids = confirmed(shop, 3)

    assert follow_leaders(shop.fulfilment, leaders(shop), time.monotonic()) == 0
    assert shop.fulfilment.recorder.max_tracking_id(shop.orders.name) is None

    assert follow_leaders(shop.fulfilment, leaders(shop), time.monotonic() + WAIT) >= 3
    assert reserved_once(shop, order_ids)


class GoesDownWhileDeciding(OrderFulfilment):
    """Takes DynamoDB away (``proxy``'s outage) the first time it decides."""

    name = "OrderFulfilment"  # the same application
    proxy: FaultProxy | None = None

    def react(self, domain_event: Any) -> Any:
        proxy, type(self).proxy = type(self).proxy, None
        if proxy is not None:
            proxy.outage(2.0)
        return super().react(domain_event)


def test_a_drain_rides_out_dynamodb_being_unavailable_until_its_deadline(
    shop_env, dynamodb_endpoint
):
    shop = open_shop(shop_env, {TEA: STOCK})
    order_ids = confirmed(shop, 3)
    with FaultProxy(dynamodb_endpoint) as proxy:
        shop.env = {
            **shop.env,
            "ORDERFULFILMENT_DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "ORDERFULFILMENT_DYNAMODB_MAX_ATTEMPTS": "2",
        }
        GoesDownWhileDeciding.proxy = proxy
        shop = shop.restarted(GoesDownWhileDeciding)

        follow_leaders(shop.fulfilment, leaders(shop), time.monotonic() + WAIT)

        assert GoesDownWhileDeciding.proxy is None  # it went down
        assert proxy.refused > 0  # and the saga met the outage
        assert reserved_once(shop, order_ids)
        shop.close()


def test_two_runners_at_once_decide_each_event_once(shop):
    order_ids = confirmed(shop, 30)
    twin = OrderFulfilment(env=shop.env)
    twin.connect(shop.orders, shop.warehouse, shop.payments)
    feeds = [
        feed_of(SagaRunner(app, leaders(shop), indexers=()), "Orders")
        for app in (shop.fulfilment, twin)
    ]
    head = shop.orders.recorder.max_notification_id()
    go = threading.Barrier(2)

    def run(feed: Runner) -> None:
        go.wait()
        feed.wait(head, WAIT)

    threads = [threading.Thread(target=run, args=(feed,)) for feed in feeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    assert all(feed.position == head for feed in feeds)
    assert reserved_once(shop, order_ids)
    shop.run()  # the steps, once
    for order_id in order_ids:
        assert shop.orders.get_order(order_id).status is not OrderStatus.CANCELLED
    twin.close()


class CountingFulfilment(OrderFulfilment):
    """Notes each OrderConfirmed it decides on: one note per decision committed."""

    name = OrderFulfilment.name

    def react(self, domain_event: Any) -> Any:
        saga = super().react(domain_event)
        if isinstance(domain_event, Order.OrderConfirmed):
            saga = saga or self.fulfilment(domain_event.originator_id)
            seen = [f for f in saga.facts if f.startswith("confirmed#")]
            saga.note(f"confirmed#{len(seen)}")
        return saga


def test_deciders_whose_pages_end_apart_decide_an_event_once(dynamodb_env):
    """A page's decisions land only over the position the page follows.

    Only forward would let the decider whose page ends later decide again
    the events the other committed (it reads the sagas as the other left
    them, so no saga version stops it).
    """
    shop = open_shop(dynamodb_env, {TEA: 1000}).restarted(CountingFulfilment)
    first = shop.place({TEA: 1})
    mine = shop.fulfilment
    theirs = CountingFulfilment(env=shop.env)
    theirs.connect(shop.orders, shop.warehouse, shop.payments)
    theirs.follow("Orders", shop.orders.notification_log)
    topics = mine.upstream_topics
    # One reads while the head is at the first order, the other a moment later.
    [early] = list(IndexSource(shop.orders).batches(0, topics))
    shop.place({TEA: 1})
    [late] = list(IndexSource(shop.orders).batches(0, topics))
    assert late.checkpoint > early.checkpoint

    ProcessConsumer(mine, "Orders").process(early)
    with pytest.raises(Raced):
        ProcessConsumer(theirs, "Orders").process(late)

    saga = mine.fulfilment(first)
    assert saga is not None
    assert sorted(f for f in saga.facts if f.startswith("confirmed#")) == [
        "confirmed#0"
    ]
    assert mine.recorder.max_tracking_id("Orders") == early.checkpoint
    theirs.close()
    shop.close()


def test_a_leader_feed_moves_past_positions_holding_none_of_its_topics(shop):
    """Its position (and the lag it shows) is where it stands, not at its last match."""
    shop.place({TEA: 1})  # confirmed: the decider's topic
    shop.place({TEA: 1}, confirm=False)  # placed only: none of its topics
    runner = runner_of(shop)
    feed = feed_of(runner, "Orders")

    runner.poll()  # indexes first, on the indexed ordering

    head = shop.orders.recorder.max_notification_id()
    assert head == 5  # 3 events of the first order, 2 of the second
    assert shop.fulfilment.recorder.max_tracking_id("Orders") == head
    assert feed.lag == 0
