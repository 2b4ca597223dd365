"""The inbox on SQS: each message applied once, poison parked, FIFO groups in order.

Deliveries are Lambda SQS events (the shape Lambda passes the handler) or,
for the long-poll runner, a real queue on moto's server. The application is
the example Orders on DynamoDB Local; a crash between a command and the
delete is a ``Crash`` (a ``BaseException``, as a killed process: nothing
catches it) raised just after the command returned. Store failures go
through ``tests/faults.py``'s proxy.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, ClassVar

import boto3
import pytest
from faults import CUT, FaultProxy
from hypothesis import given
from hypothesis import strategies as st

from aggregates.application import Orders
from aggregates.inbox_example import PlaceOrder, orders_inbox
from ledger.inbox import (
    Envelope,
    Inbox,
    Outcome,
    SqsRunner,
    handle_sqs_event,
    lambda_handler,
)
from ledger.inbox.messages import envelopes_of
from tests.test_publisher import local_eventbridge

DEADLINE = 30.0
PRICE = "1.50"


class Crash(BaseException):
    """The process dies: raised after a command, before the delivery is deleted."""


class CrashingOrders(Orders):
    """Orders that crash right after placing chosen customers' orders.

    Also records every answer of ``place_order`` (the order's id), per
    customer (each message in these tests is a customer's only order).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_after: set[uuid.UUID] = set()
        """Customers whose next order placed crashes once it is saved."""
        self.answers: dict[uuid.UUID, list[uuid.UUID]] = {}

    def place_order(
        self, customer_id: uuid.UUID, *args: Any, **kwargs: Any
    ) -> uuid.UUID:  # type: ignore[override]
        order_id = super().place_order(customer_id, *args, **kwargs)
        self.answers.setdefault(customer_id, []).append(order_id)
        if customer_id in self.crash_after:
            self.crash_after.discard(customer_id)
            raise Crash(str(customer_id))
        return order_id


def place_body(customer_id: uuid.UUID, quantity: Any = 1) -> str:
    return json.dumps(
        {
            "customer_id": str(customer_id),
            "product_id": "apple",
            "quantity": quantity,
            "price": PRICE,
        }
    )


def record(
    message_id: str, body: str, message_type: str, group_id: str = ""
) -> dict[str, Any]:
    """One record of a Lambda SQS event."""
    attributes = {"ApproximateReceiveCount": "1"}
    if group_id:
        attributes["MessageGroupId"] = group_id
    return {
        "messageId": message_id,
        "receiptHandle": uuid.uuid4().hex,  # new at every delivery
        "body": body,
        "attributes": attributes,
        "messageAttributes": {
            "type": {"stringValue": message_type, "dataType": "String"}
        },
        "eventSource": "aws:sqs",
    }


def failures(response: dict[str, list[dict[str, str]]]) -> list[str]:
    return [each["itemIdentifier"] for each in response["batchItemFailures"]]


def events_of(orders: Orders, order_id: uuid.UUID) -> int:
    return len(orders.recorder.select_events(order_id))


@pytest.fixture(scope="module")
def shared_orders(new_dynamodb_env: Callable[[], dict[str, str]]) -> Iterator[Any]:
    """One CrashingOrders and its inbox for every example of a hypothesis test."""
    env = {**new_dynamodb_env(), "DYNAMODB_EVENTS_STREAM": "no"}
    orders = CrashingOrders(env=env)
    yield orders, orders_inbox(orders, env=env, retry_delays=())
    orders.close()


@pytest.fixture
def crashing(dynamodb_env: dict[str, str]) -> Iterator[CrashingOrders]:
    orders = CrashingOrders(env=dynamodb_env)
    yield orders
    orders.close()


# --- each message applied once ------------------------------------------------------

deliveries = st.lists(
    st.tuples(st.integers(1, 5), st.lists(st.booleans(), min_size=5, max_size=5)),
    min_size=1,
    max_size=4,
).flatmap(
    lambda messages: st.tuples(
        st.just(messages),
        st.permutations(
            [
                (index, crash)
                for index, (times, crashes) in enumerate(messages)
                for crash in crashes[:times]
            ]
        ),
        st.integers(1, 10),
    )
)


@given(deliveries)
def test_each_message_is_applied_once_however_often_and_in_whatever_order_delivered(
    shared_orders: tuple[CrashingOrders, Inbox],
    drawn: tuple[list[tuple[int, list[bool]]], list[tuple[int, bool]], int],
) -> None:
    orders, inbox = shared_orders
    messages, order, batch_size = drawn
    ids = [str(uuid.uuid4()) for _ in messages]
    customers = [uuid.uuid4() for _ in messages]
    bodies = [place_body(customer) for customer in customers]
    queue = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    while queue:
        batch = queue.pop(0)
        orders.crash_after = {customers[index] for index, crash in batch if crash}
        event = {
            "Records": [
                record(ids[index], bodies[index], "PlaceOrder") for index, _ in batch
            ]
        }
        try:
            response = handle_sqs_event(event, inbox)
        except Crash:
            # Lambda delivers the whole batch again; this time nothing crashes.
            queue.append([(index, False) for index, _ in batch])
            continue
        assert failures(response) == []

    for customer in customers:
        answers = set(orders.answers[customer])
        assert len(answers) == 1, "each delivery answers with the first order"
        (order_id,) = answers
        assert events_of(orders, order_id) == 2  # placed, and its one line


def test_the_runner_deletes_only_after_the_command_and_a_crash_applies_nothing_twice(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=())
    with local_eventbridge() as endpoint:
        sqs = boto3.client(
            "sqs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - the local server's placeholder
        )
        queue_url = sqs.create_queue(QueueName="orders-in")["QueueUrl"]
        customers = [uuid.uuid4() for _ in range(3)]
        for customer in customers:
            sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=place_body(customer),
                MessageAttributes={
                    "type": {"StringValue": "PlaceOrder", "DataType": "String"}
                },
            )
        runner = SqsRunner(
            inbox, queue_url, sqs_client=sqs, wait_seconds=0, visibility_timeout=1
        )
        crashing.crash_after = {customers[1]}
        with pytest.raises(Crash):
            runner.poll_once()  # the first applied, the second applied then crash

        deadline = time.monotonic() + DEADLINE
        while len(crashing.answers) < 3 or _visible(sqs, queue_url):
            assert time.monotonic() < deadline, "the messages never came back"
            runner.poll_once()

    for customer in customers:
        answers = crashing.answers[customer]
        assert len(set(answers)) == 1
        assert events_of(crashing, answers[0]) == 2
    assert len(crashing.answers[customers[0]]) == 2  # it was delivered again


def test_twin_runners_handed_one_message_at_once_apply_it_once_across_a_crash(
    dynamodb_env: dict[str, str],
) -> None:
    """Two processes receive the same message at the same moment, then again.

    Each runner has its own application and inbox on the same tables. Both
    run the command at once; the key rides each save's transaction, so one
    save commits and the other finds the key taken and answers like the
    first. Then the message comes back to a runner that crashes after the
    command, and once more: still one order, with one line.
    """
    twins = [CrashingOrders(env=dynamodb_env) for _ in range(2)]
    inboxes = [orders_inbox(each, env=dynamodb_env, retry_delays=()) for each in twins]
    customer = uuid.uuid4()
    body = place_body(customer)
    message_id = str(uuid.uuid4())
    start = threading.Barrier(2)
    responses: list[dict[str, Any]] = []

    def deliver(inbox: Inbox) -> None:
        start.wait(timeout=DEADLINE)
        responses.append(
            handle_sqs_event(
                {"Records": [record(message_id, body, "PlaceOrder")]}, inbox
            )
        )

    threads = [threading.Thread(target=deliver, args=(each,)) for each in inboxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    twins[0].crash_after = {customer}
    with pytest.raises(Crash):
        handle_sqs_event(
            {"Records": [record(message_id, body, "PlaceOrder")]}, inboxes[0]
        )
    responses.append(
        handle_sqs_event(
            {"Records": [record(message_id, body, "PlaceOrder")]}, inboxes[1]
        )
    )

    try:
        assert [failures(each) for each in responses] == [[], [], []]
        answers = {*twins[0].answers[customer], *twins[1].answers[customer]}
        assert len(answers) == 1, "every delivery answers with the one order"
        (order_id,) = answers
        assert events_of(twins[0], order_id) == 2  # placed, and its one line
        events_table = twins[0].recorder.events_table_name
        stored = twins[0].recorder.connection.call(
            "scan", TableName=events_table, Select="COUNT", ConsistentRead=True
        )
        assert stored["Count"] == 2, "no second order was saved"
    finally:
        for each in twins:
            each.close()


def _visible(sqs: Any, queue_url: str) -> bool:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
        ],
    )["Attributes"]
    return any(int(value) for value in attributes.values())


# --- poison messages ----------------------------------------------------------------


def test_a_poison_message_is_parked_without_its_secrets_and_its_neighbours_go_on(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=())
    card_number = "4111-1111-1111-1111"
    first, last = uuid.uuid4(), uuid.uuid4()
    event = {
        "Records": [
            record("m1", place_body(first), "PlaceOrder"),
            record("m2", place_body(uuid.uuid4(), quantity=card_number), "PlaceOrder"),
            record("m3", json.dumps({"card": card_number}), "NoSuchType"),
            record("m4", place_body(last), "PlaceOrder"),
        ]
    }

    response = handle_sqs_event(event, inbox)

    assert failures(response) == []  # parked messages are done: deleted
    assert set(crashing.answers) == {first, last}
    letters = {letter.key: letter for letter in inbox.dead_letters()}
    assert sorted(letters) == ["sqs:m2", "sqs:m3"]
    assert letters["sqs:m2"].reason == (
        "ValidationError of PlaceOrder: quantity: int_parsing"
    )
    assert letters["sqs:m3"].reason.startswith("no handler for type 'NoSuchType'")
    for letter in letters.values():
        assert card_number not in repr(letter)
        assert letter.body is None


def test_a_command_refused_by_the_domain_is_parked_with_its_error_type(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=())
    body = json.dumps(
        {
            "customer_id": str(uuid.uuid4()),
            "product_id": "apple",
            "quantity": 1,
            "price": PRICE,
            "currency": "dollars",
        }
    )

    response = handle_sqs_event({"Records": [record("m1", body, "PlaceOrder")]}, inbox)

    assert failures(response) == []
    (letter,) = inbox.dead_letters()
    assert letter.reason.startswith("OrderError at order.py:")
    assert "dollars" not in letter.reason


class PlaceLater(PlaceOrder):
    """A message type the first version of the inbox did not route."""

    message_type: ClassVar[str] = "PlaceLater"


def test_a_parked_message_with_its_body_kept_is_redriven_once_fixed(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=(), store_bodies=True)
    customer = uuid.uuid4()
    handle_sqs_event(
        {"Records": [record("m1", place_body(customer), "PlaceLater")]}, inbox
    )
    assert [letter.key for letter in inbox.dead_letters()] == ["sqs:m1"]
    assert inbox.redrive() == {"sqs:m1": "parked"}  # still no such type

    later = orders_inbox(crashing, env=dynamodb_env, retry_delays=(), store_bodies=True)
    later.route(PlaceLater, later.routes["PlaceOrder"].handler)  # the fix
    assert later.redrive() == {"sqs:m1": "applied"}
    assert later.dead_letters() == []
    assert later.redrive() == {}
    assert len(crashing.answers[customer]) == 1


def test_a_dead_letter_without_its_body_is_not_redriven_and_can_be_purged(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=())
    handle_sqs_event({"Records": [record("m1", "{}", "PlaceOrder")]}, inbox)

    assert inbox.redrive() == {"sqs:m1": "no body"}
    assert inbox.purge() == ["sqs:m1"]
    assert inbox.dead_letters() == []


# --- transient failures -------------------------------------------------------------


@pytest.fixture
def proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture
def orders_via_proxy(
    dynamodb_env: dict[str, str], proxy: FaultProxy
) -> Iterator[CrashingOrders]:
    env = {
        **dynamodb_env,
        "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
        "DYNAMODB_MAX_ATTEMPTS": "1",
    }
    orders = CrashingOrders(env=env)
    orders.place_order(uuid.uuid4(), [], idempotency_key="warm")  # tables made
    yield orders
    orders.close()


def is_save(operation: str, index: int, body: bytes) -> bool:
    return operation in {"PutItem", "TransactWriteItems"} and b"_idempotency" in body


def test_a_store_failure_is_retried_with_the_same_key_and_applied_once(
    orders_via_proxy: CrashingOrders, proxy: FaultProxy, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(orders_via_proxy, env=dynamodb_env, retry_delays=(0.0, 0.0))
    rule = proxy.on(is_save, fault=CUT, times=2)
    customer = uuid.uuid4()
    body = place_body(customer)

    response = handle_sqs_event({"Records": [record("m1", body, "PlaceOrder")]}, inbox)

    assert rule.fired == 2
    assert failures(response) == []
    (order_id,) = set(orders_via_proxy.answers[customer])
    assert events_of(orders_via_proxy, order_id) == 2


def test_a_store_failure_outlasting_the_retries_reports_the_message_failed(
    orders_via_proxy: CrashingOrders, proxy: FaultProxy, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(orders_via_proxy, env=dynamodb_env, retry_delays=(0.0,))
    proxy.on(is_save, fault=CUT, times=2)
    customer = uuid.uuid4()
    event = {
        "Records": [
            record("m1", place_body(customer), "PlaceOrder"),
            record("m2", place_body(uuid.uuid4()), "PlaceOrder"),
        ]
    }

    assert failures(handle_sqs_event(event, inbox)) == ["m1"]
    assert inbox.dead_letters() == []  # not parked: it comes back
    assert failures(handle_sqs_event(event, inbox)) == []
    assert len(set(orders_via_proxy.answers[customer])) == 1


# --- FIFO ---------------------------------------------------------------------------


def add_body(order_id: uuid.UUID, product_id: str) -> str:
    return json.dumps(
        {
            "order_id": str(order_id),
            "product_id": product_id,
            "quantity": 1,
            "price": PRICE,
        }
    )


def test_a_fifo_group_keeps_its_order_when_one_of_its_messages_fails(
    orders_via_proxy: CrashingOrders, proxy: FaultProxy, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(orders_via_proxy, env=dynamodb_env, retry_delays=())
    first = orders_via_proxy.place_order(uuid.uuid4(), [], idempotency_key="first")
    second = orders_via_proxy.place_order(uuid.uuid4(), [], idempotency_key="second")
    group_a, group_b = str(first), str(second)
    batch = [
        record("a1", add_body(first, "p1"), "AddItem", group_a),
        record("b1", add_body(second, "p1"), "AddItem", group_b),
        record("a2", add_body(first, "p2"), "AddItem", group_a),
        record("b2", add_body(second, "p2"), "AddItem", group_b),
        record("a3", add_body(first, "p3"), "AddItem", group_a),
    ]
    proxy.on(is_save, fault=CUT)  # a1's save fails

    response = handle_sqs_event({"Records": batch}, inbox)

    assert failures(response) == ["a1", "a2", "a3"]
    assert list(orders_via_proxy.get_order(first).lines) == []
    assert list(orders_via_proxy.get_order(second).lines) == ["p1", "p2"]
    # SQS delivers the group again from a1, in order.
    again = [each for each in batch if each["messageId"].startswith("a")]
    assert failures(handle_sqs_event({"Records": again}, inbox)) == []
    assert list(orders_via_proxy.get_order(first).lines) == ["p1", "p2", "p3"]


def test_a_parked_message_does_not_hold_up_its_fifo_group(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=())
    order_id = crashing.place_order(uuid.uuid4(), [], idempotency_key="order")
    group = str(order_id)
    batch = [
        record("a1", add_body(order_id, "p1"), "AddItem", group),
        record("a2", "not json", "AddItem", group),
        record("a3", add_body(order_id, "p3"), "AddItem", group),
    ]

    assert failures(handle_sqs_event({"Records": batch}, inbox)) == []
    assert list(crashing.get_order(order_id).lines) == ["p1", "p3"]
    assert [letter.key for letter in inbox.dead_letters()] == ["sqs:a2"]


# --- keys -----------------------------------------------------------------------------


def test_an_eventbridge_event_is_keyed_by_its_integration_event_id() -> None:
    detail = {"id": str(uuid.uuid4()), "order_id": str(uuid.uuid4())}
    first, second = (
        json.dumps(
            {
                "id": str(uuid.uuid4()),  # EventBridge's own: new at every PutEvents
                "source": "ledger.orders",
                "detail-type": "OrderPlaced.v1",
                "detail": detail,
            }
        )
        for _ in range(2)
    )

    (one,) = envelopes_of("message-1", first)
    (two,) = envelopes_of("message-2", second)

    assert one.key == two.key == f"event:ledger.orders:{detail['id']}"
    assert (one.type, one.body) == ("OrderPlaced.v1", detail)


def test_a_long_key_is_shortened_to_its_hash() -> None:
    (envelope,) = envelopes_of("x" * 2000, "{}", attributes={"type": "T"})
    assert envelope.key.startswith("sqs:sha256:")
    assert len(envelope.key) == len("sqs:sha256:") + 64


def test_an_applied_message_is_an_outcome_of_applied(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    inbox = orders_inbox(crashing, env=dynamodb_env, retry_delays=())
    customer = uuid.uuid4()
    (envelope,) = envelopes_of(
        "m1", place_body(customer), attributes={"type": "PlaceOrder"}
    )
    assert isinstance(envelope, Envelope)
    assert inbox.handle(envelope) is Outcome.APPLIED
    assert inbox.handle(envelope) is Outcome.APPLIED
    (order_id,) = set(crashing.answers[customer])
    assert crashing.get_order(order_id).total == Decimal(PRICE)


def test_the_lambda_handler_makes_its_inbox_once_and_answers_a_partial_batch(
    crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    made: list[Inbox] = []

    def make() -> Inbox:
        made.append(orders_inbox(crashing, env=dynamodb_env, retry_delays=()))
        return made[-1]

    handler = lambda_handler(make)
    customer = uuid.uuid4()
    event = {"Records": [record("m1", place_body(customer), "PlaceOrder")]}

    assert handler(event, None) == {"batchItemFailures": []}
    assert handler(event, None) == {"batchItemFailures": []}
    assert len(made) == 1
    assert len(set(crashing.answers[customer])) == 1
