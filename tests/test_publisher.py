"""The publisher: integration events from the events stream to an EventBridge bus.

Against a real local EventBridge: moto's server (``moto[server]``, a dev
dependency) on 127.0.0.1, which implements PutEvents, buses, rules and SQS
targets. Each test makes its own bus with a rule forwarding ``ledger.orders``
events to an SQS queue and reads what was published back from the queue:
a round trip through EventBridge's API, not a mock. moto never refuses an
entry for a transient reason, so those failures are injected by wrapping the
publisher's client (:class:`RefusingClient`); whole-request failures go
through ``tests/faults.py``'s TCP proxy.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from eventsourcing.persistence import OperationalError, ProgrammingError
from eventsourcing.utils import register_topic
from faults import LOSE_RESPONSE, FaultProxy
from moto.server import ThreadedMotoServer

from aggregates.application import Orders
from aggregates.order import Order
from ledger.projections.streams import StreamPoller, stream_arn_of
from ledger.publishing import Publisher, event_id
from ledger.publishing import publisher as publishing_publisher
from ledger.publishing.publisher import (
    MAX_ENTRIES_PER_REQUEST,
    MAX_REQUEST_BYTES,
    _batches,
    _Entry,
    entry_size,
    lambda_handler,
)
from ledger.publishing.schema_files import schema_path, stale_files
from projections.integration import (
    SOURCE,
    OrderConfirmedV1,
    OrderConfirmedV2,
    OrderEvents,
    OrderLineV2,
    OrderPlacedV1,
)
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import store_an_undecodable_event, stream_records

SCHEMAS = Path(__file__).parent.parent / "schemas" / "integration"
DEADLINE = 30.0
NO_WAITING = (0.0, 0.0, 0.0)
"""Retry delays for tests: four attempts, no sleeping."""


# --- the local EventBridge ----------------------------------------------------------


@contextmanager
def local_eventbridge() -> Iterator[str]:
    """Run moto's server on a free loopback port (EventBridge, SQS and the rest)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def eventbridge_endpoint() -> Iterator[str]:
    """The endpoint of a local EventBridge for this module's tests."""
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
class Bus:
    """An event bus of the test's own, whose rule forwards Order events to a queue."""

    name: str
    endpoint: str
    queue_url: str = ""

    def create(self) -> Bus:
        events, sqs = _client("events", self.endpoint), _client("sqs", self.endpoint)
        events.create_event_bus(Name=self.name)
        self.queue_url = sqs.create_queue(QueueName=self.name)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        events.put_rule(
            Name="orders-to-queue",
            EventBusName=self.name,
            EventPattern=json.dumps({"source": [SOURCE]}),
        )
        events.put_targets(
            Rule="orders-to-queue",
            EventBusName=self.name,
            Targets=[{"Id": "queue", "Arn": queue_arn}],
        )
        return self

    def received(self) -> list[dict[str, Any]]:
        """Take every EventBridge event the queue holds now."""
        sqs = _client("sqs", self.endpoint)
        taken: list[dict[str, Any]] = []
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
def bus(eventbridge_endpoint: str) -> Bus:
    return Bus(f"bus-{uuid.uuid4().hex[:12]}", eventbridge_endpoint).create()


@pytest.fixture
def publisher_env(
    dynamodb_env: dict[str, str], bus: Bus, eventbridge_endpoint: str
) -> dict[str, str]:
    return {
        **dynamodb_env,
        "PUBLISHER_EVENT_BUS": bus.name,
        "EVENTBRIDGE_ENDPOINT_URL": eventbridge_endpoint,
    }


@pytest.fixture
def make_publisher(
    orders: Orders, publisher_env: dict[str, str]
) -> Callable[..., Publisher]:
    def make(**env: str) -> Publisher:
        return Publisher(
            OrderEvents(),
            orders,
            env={**publisher_env, **env},
            retry_delays=NO_WAITING,
        )

    return make


def poll_until(poller: StreamPoller, done: Callable[[], bool]) -> None:
    """Poll the stream until ``done`` (DynamoDB Local's stream may lag a write)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        poller.poll()
        if done():
            return
        assert time.monotonic() < deadline, f"not done within {DEADLINE}s"
        time.sleep(0.1)


def a_life_of_orders(orders: Orders) -> dict[str, uuid.UUID]:
    """Three orders: one shipped, one cancelled, one placed with two items."""
    shipped = orders.place_order(uuid.uuid4(), [ITEM], "EUR")
    orders.confirm(shipped)
    orders.ship(shipped, "ZZ000001")
    cancelled = orders.place_order(uuid.uuid4(), [ITEM])
    orders.cancel(cancelled, "changed my mind")
    placed = orders.place_order(uuid.uuid4(), [ITEM])
    orders.add_item(placed, "pear", 1, Decimal("0.80"))
    return {"shipped": shipped, "cancelled": cancelled, "placed": placed}


EXPECTED = {
    # order: [(detail-type, version)] — items added are not published
    "shipped": [
        ("OrderPlaced.v1", 1),
        ("OrderConfirmed.v1", 3),
        ("OrderConfirmed.v2", 3),
        ("OrderShipped.v1", 4),
    ],
    "cancelled": [("OrderPlaced.v1", 1), ("OrderCancelled.v1", 3)],
    "placed": [("OrderPlaced.v1", 1)],
}
PUBLISHED = sum(len(published) for published in EXPECTED.values())
"""Integration events published of :func:`a_life_of_orders`."""


def expected_ids(order_ids: dict[str, uuid.UUID]) -> set[str]:
    return {
        str(event_id(SOURCE, detail_type, order_ids[name], version))
        for name, published in EXPECTED.items()
        for detail_type, version in published
    }


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [event["detail"]["id"] for event in events]


# --- integration events and their schemas -----------------------------------------


def test_an_integration_event_id_is_derived_from_what_it_is_about_and_never_changes():
    order_id = uuid.UUID("7f1e0b8c-3a52-4d7e-9f0a-2b6c1d4e5f60")

    assert event_id(SOURCE, "OrderPlaced.v1", order_id, 1) == uuid.UUID(
        "d6bc52fb-473f-50ec-bfcb-c6ca57509e4f"
    )
    assert event_id(SOURCE, "OrderPlaced.v1", order_id, 1) != event_id(
        SOURCE, "OrderPlaced.v2", order_id, 1
    )


def test_the_committed_schema_files_are_what_the_models_produce():
    assert stale_files(OrderEvents, SCHEMAS) == [], (
        "schema files differ from the models: a released integration event must "
        "not change (make a new version); for a new one, run python -m "
        "ledger.publishing.schema_files projections.integration:OrderEvents "
        "schemas/integration"
    )


def test_every_schema_file_names_its_source_and_detail_type():
    for event_class in OrderEvents.events:
        document = json.loads(schema_path(SCHEMAS, event_class).read_text())

        assert document["x-eventbridge-source"] == SOURCE
        assert document["x-eventbridge-detail-type"] == event_class.detail_type
        assert "id" in document["required"]


def test_a_translated_event_keeps_its_domain_events_identity(orders):
    order_id = orders.place_order(uuid.uuid4(), [ITEM], "EUR")
    [placed] = [
        orders.mapper.to_domain_event(stored)
        for stored in orders.recorder.select_events(order_id, lte=1)
    ]

    [integration] = OrderEvents().translate(placed)

    assert isinstance(integration, OrderPlacedV1)
    assert integration.id == event_id(SOURCE, "OrderPlaced.v1", order_id, 1)
    assert (integration.order_id, integration.currency) == (order_id, "EUR")
    assert integration.occurred_at == placed.timestamp


def confirmed_order(orders: Orders) -> tuple[uuid.UUID, Any]:
    """Confirm an order of two lines; return its id and its OrderConfirmed."""
    order_id = orders.place_order(uuid.uuid4(), [ITEM], "EUR")
    orders.add_item(order_id, "fig", 3, Decimal("0.35"))
    orders.confirm(order_id)
    [confirmed] = [
        orders.mapper.to_domain_event(stored)
        for stored in orders.recorder.select_events(order_id, gt=3, lte=4)
    ]
    return order_id, confirmed


def test_an_order_confirmed_is_published_as_v1_and_as_v2_with_its_lines_and_total(
    orders,
):
    order_id, confirmed = confirmed_order(orders)
    order = orders.get_order(order_id)

    v1, v2 = OrderEvents(orders).translate(confirmed)

    assert v1 == OrderConfirmedV1.of(confirmed, order_id=order_id)
    assert isinstance(v2, OrderConfirmedV2)
    assert v2.id == event_id(SOURCE, "OrderConfirmed.v2", order_id, 4)
    assert (v2.customer_id, v2.currency, v2.total) == (
        order.customer_id,
        "EUR",
        order.total,
    )
    assert v2.lines == [
        OrderLineV2(
            product_id=line.product_id,
            quantity=line.quantity,
            unit_price=line.price,
            subtotal=line.subtotal,
        )
        for line in order.lines.values()
    ]
    assert [line.product_id for line in v2.lines] == [ITEM["product_id"], "fig"]
    assert v2.total == sum(line.subtotal for line in v2.lines)


def test_a_publication_without_its_application_says_how_to_give_it(orders):
    _, confirmed = confirmed_order(orders)

    with pytest.raises(ProgrammingError, match=r"OrderEvents\(application\)"):
        OrderEvents().translate(confirmed)


# --- publishing -----------------------------------------------------------------


def test_saved_events_are_published_once_each_with_stable_ids(
    streamed, orders, make_publisher, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher()
    poller = StreamPoller(publisher, orders)
    published: list[dict[str, Any]] = []

    poll_until(
        poller, lambda: len(published.extend(bus.received()) or published) >= PUBLISHED
    )
    poller.poll()  # again: the checkpoints hold
    published.extend(bus.received())

    assert sorted(ids(published)) == sorted(expected_ids(order_ids))
    assert {(e["source"], e["detail-type"]) for e in published} == {
        (SOURCE, t)
        for t in (
            "OrderPlaced.v1",
            "OrderConfirmed.v1",
            "OrderConfirmed.v2",
            "OrderShipped.v1",
            "OrderCancelled.v1",
        )
    }
    assert publisher.dead_letters() == []


def test_each_published_detail_is_valid_by_its_schema_file(
    streamed, orders, make_publisher, bus
):
    a_life_of_orders(orders)
    poller = StreamPoller(make_publisher(), orders)
    published: list[dict[str, Any]] = []

    poll_until(
        poller, lambda: len(published.extend(bus.received()) or published) >= PUBLISHED
    )

    schemas = {c.detail_type: schema_path(SCHEMAS, c) for c in OrderEvents.events}
    for event in published:
        schema = json.loads(schemas[event["detail-type"]].read_text())
        jsonschema.validate(event["detail"], schema)
    [v2] = [e["detail"] for e in published if e["detail-type"] == "OrderConfirmed.v2"]
    order = orders.get_order(uuid.UUID(v2["order_id"]))
    assert (v2["customer_id"], v2["currency"], Decimal(v2["total"])) == (
        str(order.customer_id),
        order.currency,
        order.total,
    )
    assert [
        (line["product_id"], line["quantity"], Decimal(line["unit_price"]))
        for line in v2["lines"]
    ] == [(line.product_id, line.quantity, line.price) for line in order.lines.values()]


def test_a_missing_bus_publishes_nothing_then_everything_once_it_exists(
    streamed, orders, make_publisher, eventbridge_endpoint
):
    order_ids = a_life_of_orders(orders)
    later = Bus(f"bus-{uuid.uuid4().hex[:12]}", eventbridge_endpoint)
    publisher = make_publisher(PUBLISHER_EVENT_BUS=later.name)
    poller = StreamPoller(publisher, orders)

    poll_until(poller, lambda: publisher.report.failed_records >= 6)
    assert publisher.report.accepted == 0
    assert publisher.dead_letters() == []
    later.create()
    published: list[dict[str, Any]] = []
    poll_until(
        poller,
        lambda: len(published.extend(later.received()) or published) >= PUBLISHED,
    )

    assert sorted(ids(published)) == sorted(expected_ids(order_ids))


class RefusingClient:
    """An EventBridge client that refuses chosen entries, as a PutEvents response can.

    Entries ``refuse(entry)`` names an error code for are answered with it
    (``FailedEntryCount``, ``ErrorCode``); the others go to the real bus.
    """

    def __init__(self, client: Any, refuse: Callable[[dict[str, Any]], str | None]):
        self.client = client
        self.refuse = refuse
        self.refused: list[tuple[str, str]] = []
        """(detail id, error code) of each refusal."""

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        verdicts = [self.refuse(entry) for entry in Entries]
        kept = [e for e, verdict in zip(Entries, verdicts, strict=True) if not verdict]
        answered = iter(self.client.put_events(Entries=kept)["Entries"] if kept else [])
        results = []
        for entry, verdict in zip(Entries, verdicts, strict=True):
            if verdict:
                self.refused.append((json.loads(entry["Detail"])["id"], verdict))
                results.append({"ErrorCode": verdict, "ErrorMessage": "injected"})
            else:
                results.append(next(answered))
        failed = sum(1 for verdict in verdicts if verdict)
        return {"FailedEntryCount": failed, "Entries": results}


def test_entries_the_response_reports_failed_are_sent_again_and_arrive_once(
    streamed, orders, make_publisher, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher()
    first_tries: set[str] = set()

    def throttle_each_confirmation_and_cancellation_once(
        entry: dict[str, Any],
    ) -> str | None:
        detail_id = json.loads(entry["Detail"])["id"]
        if entry["DetailType"] == "OrderPlaced.v1" or detail_id in first_tries:
            return None
        first_tries.add(detail_id)
        return "ThrottlingException"

    client = RefusingClient(
        publisher.client, throttle_each_confirmation_and_cancellation_once
    )
    publisher.client = client
    published: list[dict[str, Any]] = []

    poll_until(
        StreamPoller(publisher, orders),
        lambda: len(published.extend(bus.received()) or published) >= PUBLISHED,
    )

    assert len(client.refused) == 4  # two confirmations (v1, v2), a cancellation
    assert sorted(ids(published)) == sorted(expected_ids(order_ids))
    assert publisher.report.entry_retries == 4
    assert publisher.dead_letters() == []


def test_entries_that_keep_failing_are_dead_lettered_then_redriven(
    streamed, orders, make_publisher, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher()
    shipped = str(order_ids["shipped"])
    publisher.client = RefusingClient(
        publisher.client,
        lambda entry: "InternalFailure" if shipped in entry["Detail"] else None,
    )
    published: list[dict[str, Any]] = []
    poller = StreamPoller(publisher, orders)

    poll_until(poller, lambda: len(publisher.dead_letters()) == 4)
    published.extend(bus.received())
    letters = publisher.dead_letters()

    assert len(published) == 3  # the other orders' events went on
    assert [(d.aggregate_id, d.version, d.detail_type) for d in letters] == [
        (shipped, 1, "OrderPlaced.v1"),
        (shipped, 3, "OrderConfirmed.v1"),
        (shipped, 3, "OrderConfirmed.v2"),
        (shipped, 4, "OrderShipped.v1"),
    ]
    assert {d.error for d in letters} == {"InternalFailure"}
    assert {d.attempts for d in letters} == {len(NO_WAITING) + 1}
    assert {d.event_id for d in letters} <= expected_ids(order_ids)

    publisher.client = publisher.client.client  # EventBridge recovered
    outcomes = publisher.redrive()
    published.extend(bus.received())

    assert set(outcomes.values()) == {"published"}
    assert publisher.dead_letters() == []
    assert sorted(ids(published)) == sorted(expected_ids(order_ids))


def test_an_entry_refused_for_good_is_dead_lettered_at_once(
    streamed, orders, make_publisher, bus
):
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    publisher = make_publisher()
    publisher.client = RefusingClient(publisher.client, lambda _: "MalformedDetail")

    poll_until(StreamPoller(publisher, orders), lambda: bool(publisher.dead_letters()))

    [letter] = publisher.dead_letters()
    assert (letter.aggregate_id, letter.error, letter.attempts) == (
        str(order_id),
        "MalformedDetail",
        1,
    )
    assert bus.received() == []


def test_an_entry_over_256_kb_is_dead_lettered_without_sending(
    streamed, orders, make_publisher, bus
):
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    orders.confirm(order_id)
    orders.ship(order_id, "Z" * (MAX_REQUEST_BYTES + 1))  # a tracking number, say
    publisher = make_publisher()
    published: list[dict[str, Any]] = []

    poll_until(StreamPoller(publisher, orders), lambda: bool(publisher.dead_letters()))
    published.extend(bus.received())

    [letter] = publisher.dead_letters()
    assert (letter.detail_type, letter.error, letter.attempts) == (
        "OrderShipped.v1",
        "EntryTooLarge",
        0,
    )
    assert sorted(e["detail-type"] for e in published) == [
        "OrderConfirmed.v1",
        "OrderConfirmed.v2",
        "OrderPlaced.v1",
    ]


def test_a_crash_after_put_events_before_the_checkpoint_republishes_with_same_ids(
    streamed, orders, make_publisher, bus, monkeypatch
):
    order_ids = a_life_of_orders(orders)
    crashing = make_publisher()

    def crash(*_: Any) -> None:
        raise RuntimeError("the process died before its checkpoint")

    monkeypatch.setattr(crashing.shard_checkpoints, "save_checkpoint", crash)
    deadline = time.monotonic() + DEADLINE
    first: list[dict[str, Any]] = []
    while len(first) < PUBLISHED:
        assert time.monotonic() < deadline
        with pytest.raises(RuntimeError):
            StreamPoller(crashing, orders).poll()
        first.extend(bus.received())

    second: list[dict[str, Any]] = []
    poll_until(
        StreamPoller(make_publisher(), orders),  # the restarted process
        lambda: len(second.extend(bus.received()) or second) >= PUBLISHED,
    )

    assert set(ids(first)) == set(ids(second)) == expected_ids(order_ids)


def test_a_lost_answer_to_put_events_is_retried_and_the_duplicate_has_the_same_id(
    streamed, orders, make_publisher, bus, eventbridge_endpoint
):
    order_ids = a_life_of_orders(orders)
    with FaultProxy(eventbridge_endpoint) as proxy:
        proxy.on("PutEvents", fault=LOSE_RESPONSE)
        publisher = make_publisher(EVENTBRIDGE_ENDPOINT_URL=proxy.endpoint_url)
        published: list[dict[str, Any]] = []

        poll_until(
            StreamPoller(publisher, orders),
            lambda: (
                len(set(ids(published.extend(bus.received()) or published)))
                >= PUBLISHED
            ),
        )

        assert ("PutEvents", LOSE_RESPONSE) in proxy.requests
    assert set(ids(published)) == expected_ids(order_ids)
    assert len(published) > len(set(ids(published)))  # delivered twice: at least once


def test_while_eventbridge_is_down_nothing_is_checkpointed_and_nothing_lost(
    streamed, orders, make_publisher, bus, eventbridge_endpoint
):
    order_ids = a_life_of_orders(orders)
    with FaultProxy(eventbridge_endpoint) as proxy:
        publisher = make_publisher(
            EVENTBRIDGE_ENDPOINT_URL=proxy.endpoint_url, EVENTBRIDGE_MAX_ATTEMPTS="2"
        )
        poller = StreamPoller(publisher, orders)
        proxy.down()

        poll_until(poller, lambda: publisher.report.failed_records >= 6)
        shards = [s["ShardId"] for s in poller._shards()]
        assert all(
            publisher.shard_checkpoints.checkpoint(shard) is None for shard in shards
        )
        proxy.up()
        published: list[dict[str, Any]] = []
        poll_until(
            poller,
            lambda: len(published.extend(bus.received()) or published) >= PUBLISHED,
        )

    assert sorted(ids(published)) == sorted(expected_ids(order_ids))


def test_an_undecodable_record_is_dead_lettered_and_redriven_after_the_fix(
    streamed, orders, make_publisher, bus
):
    _, stuck, _, renamed = store_an_undecodable_event(orders)
    publisher = make_publisher()
    published: list[dict[str, Any]] = []

    poll_until(
        StreamPoller(publisher, orders),
        lambda: (
            len(published.extend(bus.received()) or published) >= 3
            and len(publisher.dead_letters()) == 2
        ),
    )

    # Its confirmation too: OrderConfirmed.v2 reads the order, whose history
    # has the undecodable event.
    letter, confirmation = publisher.dead_letters()
    assert (letter.aggregate_id, letter.version, letter.detail_type) == (
        str(stuck),
        3,
        "-",
    )
    assert letter.topic == renamed
    assert letter.error.startswith("TopicError")
    assert (confirmation.version, confirmation.detail_type) == (4, "-")
    assert confirmation.error.startswith("TopicError")
    assert "OrderConfirmed.v1" in [e["detail-type"] for e in published]
    redriven = {letter.key: "failed", confirmation.key: "failed"}
    assert publisher.redrive() == redriven  # not fixed yet

    register_topic(renamed, Order.ItemAdded)  # the fix: the class is known again
    assert publisher.redrive() == dict.fromkeys(redriven, "published")
    assert publisher.dead_letters() == []
    assert {
        e["detail-type"]
        for e in bus.received()
        if str(stuck) in e["detail"]["order_id"]
    } == {"OrderConfirmed.v1", "OrderConfirmed.v2"}


# --- in AWS Lambda ------------------------------------------------------------------


@pytest.fixture
def lambda_records(streamed, orders) -> tuple[dict[str, uuid.UUID], list[dict]]:
    order_ids = a_life_of_orders(orders)
    arn = stream_arn_of(orders)
    return order_ids, [{**r, "eventSourceARN": arn} for r in stream_records(orders)]


def test_the_lambda_handler_publishes_a_batch_and_reports_no_failures(
    lambda_records, publisher_env, bus, monkeypatch
):
    order_ids, records = lambda_records
    monkeypatch.setattr(Publisher, "retry_delays", NO_WAITING)
    handler = lambda_handler(OrderEvents, Orders, publisher_env)

    assert handler({"Records": records}, None) == {"batchItemFailures": []}
    assert sorted(ids(bus.received())) == sorted(expected_ids(order_ids))


def test_the_lambda_handler_reports_every_record_it_could_not_publish(
    lambda_records, publisher_env, monkeypatch
):
    _, records = lambda_records
    monkeypatch.setattr(Publisher, "retry_delays", NO_WAITING)
    env = {**publisher_env, "PUBLISHER_EVENT_BUS": "no-such-bus"}
    handler = lambda_handler(OrderEvents, Orders, env)

    response = handler({"Records": records}, None)

    published = {
        r["dynamodb"]["SequenceNumber"]
        for r in records
        if r["dynamodb"]["NewImage"]["topic"]["S"].split(":")[-1]
        in {
            "Order.OrderPlaced",
            "Order.OrderConfirmed",
            "Order.OrderShipped",
            "Order.OrderCancelled",
        }
    }
    # Every record from the first not published on: Lambda redelivers from there.
    numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
    first = next(i for i, number in enumerate(numbers) if number in published)
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == numbers[
        first:
    ]


# --- batching -----------------------------------------------------------------------


def _entry(detail_bytes: int) -> _Entry:
    request = {"Source": "s", "DetailType": "d", "Detail": "x" * detail_bytes}
    return _Entry(
        OrderConfirmedV1.model_construct(), request, entry_size(request), None
    )  # type: ignore[arg-type]


def test_an_entrys_size_counts_time_source_detail_type_detail_and_resources():
    entry = {
        "Time": "2026-01-01T00:00:00Z",
        "Source": "ledger.orders",
        "DetailType": "OrderPlaced.v1",
        "Detail": '{"é":1}',
        "Resources": ["arn:x"],
        "EventBusName": "not counted",
    }

    assert entry_size(entry) == 14 + 13 + 14 + 8 + 5  # "é" is 2 bytes


def test_requests_hold_at_most_ten_entries_and_256_kb():
    small = [_entry(10) for _ in range(25)]
    large = [_entry(100 * 1024) for _ in range(5)]

    assert [len(b) for b in _batches(small)] == [10, 10, 5]
    assert [len(b) for b in _batches(large)] == [2, 2, 1]
    for batch in _batches(small + large):
        assert len(batch) <= MAX_ENTRIES_PER_REQUEST
        assert sum(e.size for e in batch) <= MAX_REQUEST_BYTES


def test_a_record_whose_dead_letter_cannot_be_stored_is_read_again(
    streamed, orders, make_publisher, bus, monkeypatch
):
    healthy, stuck, _, renamed = store_an_undecodable_event(orders)
    publisher = make_publisher()
    poller = StreamPoller(publisher, orders)

    def unavailable(*_: Any) -> None:
        raise OperationalError("DynamoDB is unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(publishing_publisher, "store_dead_letter", unavailable)
        poll_until(poller, lambda: publisher.report.failed_records >= 1)
        assert publisher.dead_letters() == []
    poll_until(poller, lambda: len(publisher.dead_letters()) == 2)

    letter, _confirmation = publisher.dead_letters()
    assert (letter.aggregate_id, letter.version, letter.topic) == (
        str(stuck),
        3,
        renamed,
    )
    published = bus.received()
    assert str(event_id(SOURCE, "OrderPlaced.v1", healthy, 1)) in ids(published)


def test_republishing_an_aggregate_sends_its_events_again_with_the_same_ids(
    orders, make_publisher, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher()
    shipped = order_ids["shipped"]

    report = publisher.republish(shipped)
    again = publisher.republish(str(shipped), after=3)

    assert (report.records, report.accepted, report.failed_records) == (4, 4, 0)
    assert (again.records, again.accepted) == (1, 1)
    published = ids(bus.received())
    assert sorted(published) == sorted(
        [str(event_id(SOURCE, t, shipped, v)) for t, v in EXPECTED["shipped"]]
        + [str(event_id(SOURCE, "OrderShipped.v1", shipped, 4))]
    )
