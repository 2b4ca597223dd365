"""The Lambda entry points of the indexed ordering, called as Lambda calls them.

Each handler gets a dict event (a schedule's, or an SNS wake-up's) and a
context with ``get_remaining_time_in_millis``; the events table's stream
has one reader, the indexer, and the rest follow its index.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from eventsourcing.persistence import OperationalError

from aggregates import fulfilment_lambda
from aggregates.application import Orders
from aggregates.inventory import ReservationStatus
from aggregates.order import OrderStatus
from ledger import index_consumers
from ledger.index_consumers import (
    STOP_MARGIN_MS,
    indexer_handler,
    projection_handler,
    publication_handler,
)
from ledger.indexer import Indexer
from ledger.projections.dynamodb import open_view
from ledger.publishing import Publisher
from projections.integration import OrderEvents
from projections.orders import OrderProjector, get_order_summary
from tests.faults import SERVER_ERROR, FaultProxy
from tests.test_projections_core import ITEM
from tests.test_publisher import Bus, local_eventbridge
from tests.test_saga_fulfilment import FIG, INDEXED, TEA, Shop, open_shop

DEADLINE = 30.0
"""Seconds a test waits for DynamoDB Local's stream to show what was saved."""


class LambdaContext:
    """What a handler reads of Lambda's context: the time its invocation has left."""

    def __init__(self, milliseconds: float) -> None:
        self.ends = time.monotonic() + milliseconds / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends - time.monotonic()) * 1000))


def with_time_to_work(seconds: float) -> LambdaContext:
    """A context whose invocation may start work for ``seconds`` more."""
    return LambdaContext(STOP_MARGIN_MS + seconds * 1000)


SCHEDULED: dict[str, Any] = {
    "source": "aws.scheduler",
    "detail-type": "Scheduled Event",
    "detail": {},
}
"""What an EventBridge Scheduler invocation's event looks like."""


def wake_up(events_table: str, head: int) -> dict[str, Any]:
    """An SNS wake-up as Lambda delivers it."""
    message = {"events_table": events_table, "head": head}
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "Sns": {
                    "Message": json.dumps(message),
                    "MessageAttributes": {
                        "events_table": {"Type": "String", "Value": events_table}
                    },
                },
            }
        ]
    }


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    """A local SNS, SQS and EventBridge (moto's server) for this module."""
    with local_eventbridge() as endpoint:
        yield endpoint


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the local server's placeholder
    )


@dataclass
class Topic:
    """The wake-up topic, with a queue subscribed to see what was sent."""

    arn: str
    queue_url: str
    endpoint: str

    def received(self) -> list[dict[str, Any]]:
        """Take every wake-up the queue holds now: message and attributes."""
        sqs = _client("sqs", self.endpoint)
        taken = []
        while True:
            messages = sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10
            ).get("Messages", [])
            if not messages:
                return taken
            for message in messages:
                taken.append(json.loads(message["Body"]))
                sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )


@pytest.fixture
def topic(aws_endpoint: str) -> Topic:
    sns, sqs = _client("sns", aws_endpoint), _client("sqs", aws_endpoint)
    name = f"index-{uuid.uuid4().hex[:12]}"
    arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    return Topic(arn, queue_url, aws_endpoint)


@pytest.fixture
def indexed_env(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment of a stack's functions: every application indexed."""
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    return {**dynamodb_env, **INDEXED}


@pytest.fixture
def indexed_orders(indexed_env: dict[str, str]) -> Iterator[Orders]:
    app = Orders(env=indexed_env)
    yield app
    app.close()


def place_orders(orders: Orders, count: int) -> list[uuid.UUID]:
    """Place and confirm ``count`` orders: three events each."""
    placed = []
    for _ in range(count):
        order_id = orders.place_order(uuid.uuid4(), [ITEM], "EUR")
        orders.confirm(order_id)
        placed.append(order_id)
    return placed


def index_everything(orders: Orders, events: int) -> None:
    """Index until the head holds ``events`` (the stream may lag a write)."""
    indexer = Indexer(orders.recorder)  # type: ignore[arg-type]
    deadline = time.monotonic() + DEADLINE
    while (orders.recorder.max_notification_id() or 0) < events:
        assert time.monotonic() < deadline, "the stream did not show the saves"
        indexer.poll()


# --- the indexer --------------------------------------------------------------------


def test_the_indexer_handler_indexes_for_its_time_and_wakes_once_per_commit(
    indexed_orders, indexed_env, topic, aws_endpoint
):
    place_orders(indexed_orders, 4)  # 12 events
    handler = indexer_handler(
        Orders,
        {
            **indexed_env,
            "LEDGER_INDEX_TOPIC_ARN": topic.arn,
            "SNS_ENDPOINT_URL": aws_endpoint,
        },
        idle_wait=0.05,
    )
    # Until the stream shows every save: one invocation may index part of them.
    deadline = time.monotonic() + DEADLINE
    results = []
    while not results or results[-1]["head"] < 12:
        assert time.monotonic() < deadline, results
        results.append(handler(SCHEDULED, with_time_to_work(1.0)))

    wake_ups = topic.received()
    commits_announced = [json.loads(m["Message"])["head"] for m in wake_ups]
    events_table = indexed_orders.recorder.events_table_name
    assert sum(r["consumed"] for r in results) == 12
    # One message per commit at most, never one per event; the last tells the head.
    assert 1 <= len(wake_ups) <= sum(r["wake_ups"] for r in results) < 12
    assert max(commits_announced) == 12  # a standard queue keeps no order
    assert {m["MessageAttributes"]["events_table"]["Value"] for m in wake_ups} == {
        events_table
    }


def test_the_indexer_handler_sends_no_wake_up_when_nothing_was_indexed(
    indexed_orders, indexed_env, topic, aws_endpoint
):
    handler = indexer_handler(
        Orders,
        {
            **indexed_env,
            "LEDGER_INDEX_TOPIC_ARN": topic.arn,
            "SNS_ENDPOINT_URL": aws_endpoint,
        },
        idle_wait=0.05,
        round_interval=0.05,
    )

    handler(SCHEDULED, with_time_to_work(1.0))  # made at the first invocation
    result = handler(SCHEDULED, with_time_to_work(0.3))

    assert result["consumed"] == 0
    assert result["rounds"] >= 2  # it waited and polled again while time was left
    assert topic.received() == []


def test_the_indexer_handler_starts_a_round_at_most_every_round_interval(
    indexed_orders, indexed_env
):
    handler = indexer_handler(Orders, indexed_env, idle_wait=0.0, round_interval=0.25)
    handler(SCHEDULED, with_time_to_work(1.0))  # made at the first invocation

    result = handler(SCHEDULED, with_time_to_work(1.0))

    # DescribeStream, one a round, is limited to 10 a second (four indexers)
    assert 2 <= result["rounds"] <= 1.0 / 0.25 + 1


def test_the_indexer_handler_starts_no_round_without_time_left(
    indexed_orders, indexed_env
):
    place_orders(indexed_orders, 1)
    handler = indexer_handler(Orders, indexed_env)

    result = handler(SCHEDULED, LambdaContext(STOP_MARGIN_MS - 1))

    assert result == {"consumed": 0, "rounds": 0, "wake_ups": 0, "head": 0}


def test_the_indexer_handler_waits_out_dynamodb_being_unavailable_while_time_allows(
    indexed_orders, indexed_env, dynamodb_endpoint
):
    place_orders(indexed_orders, 1)
    with FaultProxy(dynamodb_endpoint) as proxy:
        # Both attempts of the first round's DescribeStream fail: the round
        # raises OperationalError, and the handler waits and polls again.
        outage = proxy.on("DescribeStream", fault=SERVER_ERROR, times=2)
        env = {
            **indexed_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "2",
        }
        handler = indexer_handler(Orders, env, idle_wait=0.05, round_interval=0.05)
        deadline = time.monotonic() + DEADLINE
        results = [handler(SCHEDULED, with_time_to_work(1.0))]
        while results[-1]["head"] < 3:
            assert time.monotonic() < deadline
            results.append(handler(SCHEDULED, with_time_to_work(1.0)))

    assert outage.fired == 2
    assert sum(r["consumed"] for r in results) == 3


def test_ledger_indexer_lambda_handler_indexes_the_application_ledger_app_names(
    indexed_orders, monkeypatch
):
    from ledger.indexer import lambda_handler  # noqa: PLC0415

    place_orders(indexed_orders, 1)
    monkeypatch.setenv("LEDGER_APP", "aggregates.application:Orders")
    monkeypatch.delenv("LEDGER_INDEX_TOPIC_ARN", raising=False)
    index_consumers.reset()
    try:
        deadline = time.monotonic() + DEADLINE
        while lambda_handler(SCHEDULED, with_time_to_work(0.2))["head"] < 3:
            assert time.monotonic() < deadline
    finally:
        index_consumers.reset()


# --- the projection -----------------------------------------------------------------


def test_the_projection_handler_applies_the_index_to_its_end(
    indexed_orders, indexed_env
):
    placed = place_orders(indexed_orders, 3)
    index_everything(indexed_orders, 9)
    handler = projection_handler(OrderProjector, Orders, indexed_env)
    table = indexed_orders.recorder.events_table_name

    first = handler(wake_up(table, 9), with_time_to_work(30))
    again = handler(SCHEDULED, with_time_to_work(30))

    view = open_view(OrderProjector, indexed_env)
    assert first == {"applied": 9, "position": 9, "blocked": 0}
    assert again == {"applied": 0, "position": 9, "blocked": 0}
    for order_id in placed:
        summary = get_order_summary(view, order_id)
        assert summary is not None
        assert summary.status is OrderStatus.CONFIRMED


def test_the_projection_handler_stops_at_its_deadline_and_the_next_goes_on(
    indexed_orders, indexed_env
):
    place_orders(indexed_orders, 3)
    index_everything(indexed_orders, 9)
    handler = projection_handler(OrderProjector, Orders, indexed_env)

    out_of_time = handler(SCHEDULED, LambdaContext(STOP_MARGIN_MS - 1))
    with_time = handler(SCHEDULED, with_time_to_work(30))

    assert out_of_time == {"applied": 0, "position": 0, "blocked": 0}
    assert with_time["position"] == 9


def test_two_projection_invocations_at_once_apply_each_event_once(
    indexed_orders, indexed_env
):
    place_orders(indexed_orders, 3)
    index_everything(indexed_orders, 9)
    first = projection_handler(OrderProjector, Orders, indexed_env)
    second = projection_handler(OrderProjector, Orders, indexed_env)

    # The second instance read the same position, and commits after the first.
    results = [first(SCHEDULED, with_time_to_work(30))]
    results.append(second(SCHEDULED, with_time_to_work(30)))

    assert sum(r["applied"] for r in results) == 9
    assert {r["position"] for r in results} == {9}


# --- the publisher ------------------------------------------------------------------


@pytest.fixture
def bus(aws_endpoint: str, indexed_env: dict[str, str]) -> Bus:
    return Bus(f"bus-{uuid.uuid4().hex[:12]}", aws_endpoint).create()


@pytest.fixture
def publisher_env(
    indexed_env: dict[str, str], bus: Bus, aws_endpoint: str
) -> dict[str, str]:
    return {
        **indexed_env,
        "PUBLISHER_EVENT_BUS": bus.name,
        "EVENTBRIDGE_ENDPOINT_URL": aws_endpoint,
    }


def test_the_publication_handler_publishes_the_index_once_and_keeps_a_cursor(
    indexed_orders, publisher_env, bus
):
    placed = place_orders(indexed_orders, 2)
    index_everything(indexed_orders, 6)
    handler = publication_handler(OrderEvents, Orders, publisher_env)

    first = handler(SCHEDULED, with_time_to_work(30))
    again = handler(SCHEDULED, with_time_to_work(30))

    received = bus.received()
    assert first == {"published": 6, "position": 6}
    assert again == {"published": 0, "position": 6}
    # placed, confirmed as v1 and v2, per order; each once
    assert sorted(
        (e["detail"]["order_id"], e["detail-type"]) for e in received
    ) == sorted(
        (str(order_id), kind)
        for order_id in placed
        for kind in ("OrderPlaced.v1", "OrderConfirmed.v1", "OrderConfirmed.v2")
    )


def test_the_index_cursor_stays_before_what_eventbridge_did_not_take(
    indexed_orders, publisher_env, bus
):
    place_orders(indexed_orders, 1)
    index_everything(indexed_orders, 3)
    missing_bus = {**publisher_env, "PUBLISHER_EVENT_BUS": "no-such-bus"}
    refused = Publisher(OrderEvents(), indexed_orders, env=missing_bus)

    assert refused.follow_index() == 0
    assert refused.position() == 0
    published = Publisher(OrderEvents(), indexed_orders, env=publisher_env)
    assert published.follow_index() == 3
    assert len(bus.received()) == 3


def test_a_publication_invocation_that_left_events_unpublished_fails(
    indexed_orders, publisher_env, bus
):
    place_orders(indexed_orders, 1)
    index_everything(indexed_orders, 3)
    missing_bus = {**publisher_env, "PUBLISHER_EVENT_BUS": "no-such-bus"}
    handler = publication_handler(OrderEvents, Orders, missing_bus)

    began = time.monotonic()
    with pytest.raises(OperationalError, match="the cursor stays at 0"):
        handler(SCHEDULED, with_time_to_work(30))

    # At once, not after waiting and sending again for the invocation's time
    # (1 + 2 + 4 + 8 s of waits fit in it): wake-ups start one a second.
    assert time.monotonic() - began < 10
    fixed = publication_handler(OrderEvents, Orders, publisher_env)
    assert fixed(SCHEDULED, with_time_to_work(30)) == {"published": 3, "position": 3}
    assert len(bus.received()) == 3


def test_an_undecodable_event_is_dead_lettered_and_the_cursor_goes_past_it(
    indexed_orders, publisher_env, bus
):
    from tests.test_projections_dynamodb import (  # noqa: PLC0415
        store_an_undecodable_event,
    )

    _, stuck, _, _ = store_an_undecodable_event(indexed_orders)
    place_orders(indexed_orders, 1)
    saved = indexed_orders.recorder.connection.call(
        "scan", TableName=indexed_orders.recorder.events_table_name, Select="COUNT"
    )["Count"]
    index_everything(indexed_orders, saved)
    publisher = Publisher(OrderEvents(), indexed_orders, env=publisher_env)

    assert publisher.follow_index() == saved
    assert publisher.position() == saved
    undecodable = [
        letter for letter in publisher.dead_letters() if letter.detail_type == "-"
    ]
    assert (undecodable[0].aggregate_id, undecodable[0].version) == (str(stuck), 3)


def test_a_publisher_that_lost_the_cursor_race_stops(
    indexed_orders, publisher_env, bus
):
    place_orders(indexed_orders, 2)
    index_everything(indexed_orders, 6)
    slow = Publisher(OrderEvents(), indexed_orders, env=publisher_env).runner(
        page_size=2
    )
    fast = Publisher(OrderEvents(), indexed_orders, env=publisher_env)
    assert slow.position == 0  # read before fast moved the cursor

    assert fast.follow_index(page_size=2) == 6
    assert slow.poll() == 0  # its first cursor move is refused
    assert slow.position == 6  # it reads the cursor again
    # What the slow one sent again carries the same ids: consumers drop it.
    received = bus.received()
    assert len({e["detail"]["id"] for e in received}) == 6
    assert len(received) == 6 + 1  # the first page: an order placed, an item


# --- the saga -----------------------------------------------------------------------


@pytest.fixture
def indexed_shop(indexed_env: dict[str, str], monkeypatch) -> Iterator[Shop]:
    shop = open_shop(indexed_env)
    for app in (shop.orders, shop.warehouse, shop.payments):
        app.recorder.idempotency.create_table()  # made at a first key otherwise
    fulfilment_lambda.reset()
    monkeypatch.setenv("CREATE_TABLE", "no")
    yield shop
    fulfilment_lambda.reset()
    shop.close()


def test_the_saga_follows_every_index_to_a_shipped_and_a_refused_order(
    indexed_shop,
):
    shop = indexed_shop
    assert shop.fulfilment.recorder.ordering == "indexed"
    shipped = shop.place({TEA: 1})
    refused = shop.place({FIG: 1})

    def until(done: Any) -> None:
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert time.monotonic() < deadline
            shop.index()  # the indexer functions' work
            fulfilment_lambda.follow_index(SCHEDULED, with_time_to_work(30))

    until(lambda: shop.payments.get_payment(shipped) is not None)
    until(lambda: shop.payments.get_payment(refused) is not None)
    shop.answer(shipped, approved=True)
    shop.answer(refused, approved=False)
    until(lambda: shop.saga(shipped).outcome == "shipped")
    until(lambda: shop.saga(refused).outcome == "cancelled")

    assert shop.orders.get_order(shipped).status is OrderStatus.SHIPPED
    assert shop.orders.get_order(refused).status is OrderStatus.CANCELLED
    assert shop.warehouse.get_reservation(refused).status is (
        ReservationStatus.RELEASED
    )
