"""The example as services: Orders publishes to a bus; Warehouse and Payments receive.

End to end on local servers: Orders on DynamoDB Local, its publisher
reading the events table's stream (a ``StreamPoller``) and sending to an
EventBridge bus on moto's server; one rule per service, made from
:func:`aggregates.services.event_pattern`, targets that service's SQS
queue on the same server (moto's EventBridge delivers to SQS targets, so no
delivery is played by hand); each service's inbox handles what its queue
holds, as its Lambda would (``handle_sqs_event`` on the received messages).
A redelivery is the queue's own: the message is received with a visibility
timeout of 0 and not deleted, so the next receive returns it again, under
the same message id.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from rich.console import Console

from aggregates.application import Orders
from aggregates.fulfilment import OrderFulfilment
from aggregates.inventory import Inventory, Reservation, ReservationStatus
from aggregates.order import OrderStatus
from aggregates.payment import Payment, PaymentStatus
from aggregates.payments import Payments
from aggregates.services import (
    PAYMENTS,
    WAREHOUSE,
    event_pattern,
    make_payments_inbox,
    payments_inbox,
    service_env,
    warehouse_inbox,
)
from aggregates.services_demo import run_story
from aggregates.warehouse import Warehouse
from ledger.inbox import Inbox, handle_sqs_event
from ledger.projections.streams import StreamPoller
from ledger.publishing import Publisher, event_id
from ledger.sagas import SagaRunner
from projections.integration import SOURCE, OrderConfirmedV2, OrderEvents, OrderLineV2
from tests.test_publisher import local_eventbridge

DEADLINE = 30.0
STOCK = 10
NO_WAITING = (0.0, 0.0, 0.0)


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the local server's placeholder
    )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's server (EventBridge and SQS) for this module's tests."""
    with local_eventbridge() as endpoint:
        yield endpoint


@dataclass
class Service:
    """A receiving service: its application, its inbox and the queue its rule feeds."""

    name: str
    application: Any
    inbox: Inbox
    queue_url: str
    sqs: Any

    def waiting(self) -> int:
        """Messages in the queue now (visible ones)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    def receive(self, count: int) -> list[dict[str, Any]]:
        """Receive ``count`` messages, leaving them in the queue (not deleted).

        The visibility timeout of 0 makes each one visible again at once:
        the next receive delivers it again, as SQS does after a crash
        before the delete.
        """
        taken: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + DEADLINE
        while len(taken) < count:
            assert time.monotonic() < deadline, f"{self.name}: {len(taken)}/{count}"
            for message in self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                MessageAttributeNames=["All"],
            ).get("Messages", []):
                taken[message["MessageId"]] = message
        return sorted(taken.values(), key=lambda message: message["MessageId"])

    def handle(self, messages: list[dict[str, Any]]) -> list[str]:
        """Hand the messages to the inbox as a Lambda SQS event; return the failures."""
        event = {
            "Records": [
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": {},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                }
                for message in messages
            ]
        }
        response = handle_sqs_event(event, self.inbox)
        return [each["itemIdentifier"] for each in response["batchItemFailures"]]


@dataclass
class System:
    """Orders, its publisher and bus, and the two receiving services."""

    orders: Orders
    publisher: Publisher
    poller: StreamPoller
    events: Any
    bus: str
    warehouse: Service
    payments: Service

    def publish_until(self, done: Callable[[], bool]) -> None:
        """Publish what Orders saved until ``done`` (the stream may lag a write)."""
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert time.monotonic() < deadline, f"not done within {DEADLINE}s"
            self.poller.poll()
            time.sleep(0.1)

    def confirmed_order(self, quantity: int, price: str = "1.50") -> uuid.UUID:
        item = {"product_id": "apple", "quantity": quantity, "price": Decimal(price)}
        order_id = self.orders.place_order(uuid.uuid4(), [item], "EUR")
        self.orders.confirm(order_id)
        return order_id


def _service(
    name: str,
    application: Any,
    inbox: Inbox,
    endpoint: str,
    bus: str,
) -> Service:
    events, sqs = _client("events", endpoint), _client("sqs", endpoint)
    queue_url = sqs.create_queue(QueueName=f"{bus}-{name.lower()}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    rule = f"{name.lower()}-inbox"
    events.put_rule(
        Name=rule, EventBusName=bus, EventPattern=json.dumps(event_pattern(inbox))
    )
    events.put_targets(
        Rule=rule, EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}]
    )
    return Service(name, application, inbox, queue_url, sqs)


@pytest.fixture
def system(
    streamed: None,
    dynamodb_env: dict[str, str],
    table_prefix: str,
    moto_endpoint: str,
) -> Iterator[System]:
    del streamed  # Orders' events table has its stream: the publisher reads it
    bus = f"bus-{uuid.uuid4().hex[:12]}"
    events = _client("events", moto_endpoint)
    events.create_event_bus(Name=bus)
    orders = Orders(env=dynamodb_env)
    publisher = Publisher(
        OrderEvents(),
        orders,
        env={
            **dynamodb_env,
            "PUBLISHER_EVENT_BUS": bus,
            "EVENTBRIDGE_ENDPOINT_URL": moto_endpoint,
        },
        retry_delays=NO_WAITING,
    )
    warehouse_env = service_env(WAREHOUSE, f"{table_prefix}warehouse-", dynamodb_env)
    payments_env = service_env(PAYMENTS, f"{table_prefix}payments-", dynamodb_env)
    warehouse = Warehouse(env=warehouse_env)
    payments = Payments(env=payments_env)
    warehouse.stock("apple", STOCK)
    made = System(
        orders=orders,
        publisher=publisher,
        poller=StreamPoller(publisher, orders),
        events=events,
        bus=bus,
        warehouse=_service(
            WAREHOUSE,
            warehouse,
            warehouse_inbox(warehouse, env=warehouse_env, retry_delays=()),
            moto_endpoint,
            bus,
        ),
        payments=_service(
            PAYMENTS,
            payments,
            payments_inbox(payments, env=payments_env, retry_delays=()),
            moto_endpoint,
            bus,
        ),
    )
    yield made
    for application in (orders, warehouse, payments):
        application.close()


def confirmed_key(order_id: uuid.UUID) -> str:
    """The inbox key of an order's OrderConfirmed.v2 (the event's own id).

    The order was placed with one item (versions 1 and 2), then confirmed.
    """
    return f"event:{SOURCE}:{event_id(SOURCE, 'OrderConfirmed.v2', order_id, 3)}"


def test_each_rule_matches_only_the_event_types_its_service_handles(
    system: System,
) -> None:
    assert event_pattern(system.warehouse.inbox) == {
        "source": [SOURCE],
        "detail-type": ["OrderConfirmed.v2"],
    }
    assert event_pattern(system.payments.inbox) == {
        "source": [SOURCE],
        "detail-type": ["OrderConfirmed.v2"],
    }


def test_an_order_confirmed_ends_as_one_reservation_and_one_payment_despite_redelivery(
    system: System,
) -> None:
    order_id = system.confirmed_order(quantity=2)
    services = (system.warehouse, system.payments)

    # Orders publishes OrderPlaced.v1, OrderConfirmed.v1 and .v2; the rules
    # route only the .v2 to each queue.
    system.publish_until(
        lambda: (
            system.publisher.report.accepted == 3
            and all(service.waiting() == 1 for service in services)
        )
    )
    for service in services:
        first = service.receive(1)
        again = service.receive(1)  # not deleted: the queue delivers it again
        assert [m["MessageId"] for m in again] == [m["MessageId"] for m in first]
        body = json.loads(first[0]["Body"])
        assert body["detail-type"] == "OrderConfirmed.v2"
        assert f"event:{SOURCE}:{body['detail']['id']}" == confirmed_key(order_id)

        assert service.handle(first) == []
        assert service.handle(again) == []
        assert service.handle(first + again) == []  # both in one batch, too

    warehouse: Warehouse = system.warehouse.application
    reservation = warehouse.get_reservation(order_id)
    assert reservation is not None
    assert reservation.status is ReservationStatus.RESERVED
    assert len(warehouse.recorder.select_events(Reservation.id_for(order_id))) == 1
    inventory = warehouse.get_inventory("apple")
    assert inventory is not None
    assert inventory.on_hand == STOCK - 2  # held once
    assert len(warehouse.recorder.select_events(Inventory.id_for("apple"))) == 2

    payments: Payments = system.payments.application
    payment = payments.get_payment(order_id)
    assert payment is not None
    assert (payment.amount, payment.currency) == (Decimal("3.00"), "EUR")
    assert payment.status is PaymentStatus.REQUESTED
    assert len(payments.recorder.select_events(Payment.id_for(order_id))) == 1

    # Each was applied under the event's own id, in that service's store.
    for service in services:
        assert service.application.first_outcome(confirmed_key(order_id)) is not None
        assert service.inbox.dead_letters() == []


def test_a_poison_event_is_parked_by_the_service_refusing_it_while_the_other_goes_on(
    system: System,
) -> None:
    """A faulty producer's OrderConfirmed.v2 whose total is not its lines' sum.

    It matches the schema file, so both queues receive it: Warehouse (which
    reads only the lines) reserves it; Payments refuses it for good and
    parks it in its own inbox's dead letters, and goes on with its
    neighbour in the same batch, a genuine order.
    """
    genuine = system.confirmed_order(quantity=1)
    poison_order = uuid.uuid4()
    poison = OrderConfirmedV2(
        id=uuid.uuid4(),
        aggregate_version=2,
        occurred_at=datetime.now(UTC),
        order_id=poison_order,
        customer_id=uuid.uuid4(),
        currency="EUR",
        lines=[
            OrderLineV2(
                product_id="apple",
                quantity=1,
                unit_price=Decimal("1.50"),
                subtotal=Decimal("1.50"),
            )
        ],
        total=Decimal("0.01"),
    )
    answer = system.events.put_events(
        Entries=[
            {
                "EventBusName": system.bus,
                "Source": SOURCE,
                "DetailType": "OrderConfirmed.v2",
                "Detail": poison.model_dump_json(),
            }
        ]
    )
    assert answer["FailedEntryCount"] == 0
    services = (system.warehouse, system.payments)
    system.publish_until(lambda: all(service.waiting() == 2 for service in services))

    for service in services:
        assert service.handle(service.receive(2)) == []  # parked counts as done

    warehouse: Warehouse = system.warehouse.application
    payments: Payments = system.payments.application
    assert system.warehouse.inbox.dead_letters() == []
    for order_id in (genuine, poison_order):
        reservation = warehouse.get_reservation(order_id)
        assert reservation is not None
        assert reservation.status is ReservationStatus.RESERVED

    assert payments.get_payment(genuine) is not None
    assert payments.get_payment(poison_order) is None
    (letter,) = system.payments.inbox.dead_letters()
    assert letter.key == f"event:{SOURCE}:{poison.id}"
    assert letter.message_type == "OrderConfirmed.v2"
    assert letter.reason == "ValidationError of OrderToCharge: (message): value_error"
    assert letter.body is None  # no payload kept: it may hold customer data


def test_each_service_keeps_its_own_tables(
    system: System, dynamodb_env: dict[str, str], table_prefix: str
) -> None:
    order_id = system.confirmed_order(quantity=1)
    system.publish_until(
        lambda: all(s.waiting() == 1 for s in (system.warehouse, system.payments))
    )
    for service in (system.warehouse, system.payments):
        assert service.handle(service.receive(1)) == []
    assert system.warehouse.application.get_reservation(order_id) is not None

    dynamodb = _client("dynamodb", dynamodb_env["DYNAMODB_ENDPOINT_URL"])
    names = [
        name
        for page in dynamodb.get_paginator("list_tables").paginate()
        for name in page["TableNames"]
        if name.startswith(table_prefix)
    ]
    warehouse_prefix = f"{table_prefix}warehouse-"
    payments_prefix = f"{table_prefix}payments-"

    def under(prefix: str) -> set[str]:
        return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}

    assert under(warehouse_prefix) == {
        "Warehouse_events",
        "Warehouse_idempotency",
        "Warehouse_inbox",
        "Warehouse_notifications",
    }
    assert under(payments_prefix) == {
        "Payments_events",
        "Payments_idempotency",
        "Payments_inbox",
        "Payments_notifications",
    }
    orders_tables = {
        name.removeprefix(table_prefix)
        for name in names
        if not name.startswith((warehouse_prefix, payments_prefix))
    }
    # Orders makes some of its tables at their first use: all are its own.
    assert {"Orders_events", "OrderEvents_publishing"} <= orders_tables
    assert all(name.startswith(("Orders_", "OrderEvents_")) for name in orders_tables)
    assert system.warehouse.inbox.table_name == f"{warehouse_prefix}Warehouse_inbox"
    assert system.payments.inbox.table_name == f"{payments_prefix}Payments_inbox"


# --- the fulfilment saga beside the bus ---------------------------------------------


@pytest.fixture
def saga(system: System, dynamodb_env: dict[str, str]) -> Iterator[SagaRunner]:
    """The fulfilment saga, in-process, given the services' own applications."""
    fulfilment = OrderFulfilment(env=dynamodb_env)
    warehouse, payments = system.warehouse.application, system.payments.application
    fulfilment.connect(system.orders, warehouse, payments)
    yield SagaRunner(fulfilment, [system.orders, warehouse, payments])
    fulfilment.close()


def received_by_both(system: System) -> None:
    """Publish Orders' events and let each service handle what its queue got."""
    services = (system.warehouse, system.payments)
    system.publish_until(lambda: all(service.waiting() == 1 for service in services))
    for service in services:
        assert service.handle(service.receive(1)) == []


def charge(payments: Payments, order_id: uuid.UUID) -> None:
    """Play the gateway: it charges the order's payment."""
    payments.settle(order_id, approved=True, idempotency_key=f"gateway/{order_id}")


def test_the_saga_ships_an_order_whose_stock_and_payment_came_over_the_bus(
    system: System, saga: SagaRunner
) -> None:
    order_id = system.confirmed_order(quantity=2)
    received_by_both(system)
    warehouse: Warehouse = system.warehouse.application
    payments: Payments = system.payments.application

    saga.poll()  # its reserve and request find what the inboxes did
    charge(payments, order_id)
    saga.poll()

    assert system.orders.get_order(order_id).status is OrderStatus.SHIPPED
    inventory = warehouse.get_inventory("apple")
    assert inventory is not None
    assert inventory.on_hand == STOCK - 2
    assert len(warehouse.recorder.select_events(Reservation.id_for(order_id))) == 1
    payment = payments.get_payment(order_id)
    assert payment is not None
    assert payment.status is PaymentStatus.CHARGED
    assert len(payments.recorder.select_events(Payment.id_for(order_id))) == 2


def test_an_order_out_of_stock_charged_at_confirmation_is_refunded_by_the_saga(
    system: System, saga: SagaRunner
) -> None:
    """Payments asks at confirmation, before the stock is known: the saga undoes it."""
    order_id = system.confirmed_order(quantity=STOCK + 1)
    received_by_both(system)
    warehouse: Warehouse = system.warehouse.application
    payments: Payments = system.payments.application
    reservation = warehouse.get_reservation(order_id)
    assert reservation is not None
    assert reservation.status is ReservationStatus.OUT_OF_STOCK

    saga.poll()
    charge(payments, order_id)  # the gateway answers the request all the same
    saga.poll()

    order = system.orders.get_order(order_id)
    assert order.status is OrderStatus.CANCELLED
    assert order.cancel_reason == "out of stock: apple (1 short)"
    payment = payments.get_payment(order_id)
    assert payment is not None
    assert payment.status is PaymentStatus.REFUNDED


def test_a_cancellation_not_routed_to_warehouse_is_released_by_the_saga(
    system: System, saga: SagaRunner
) -> None:
    """The bus carries no OrderCancelled to Warehouse: the saga gives the stock back."""
    order_id = system.confirmed_order(quantity=2)
    received_by_both(system)
    system.orders.cancel(order_id, "changed my mind")

    saga.poll()

    warehouse: Warehouse = system.warehouse.application
    inventory = warehouse.get_inventory("apple")
    assert inventory is not None
    assert inventory.on_hand == STOCK
    reservation = warehouse.get_reservation(order_id)
    assert reservation is not None
    assert reservation.status is ReservationStatus.RELEASED
    assert system.orders.get_order(order_id).status is OrderStatus.CANCELLED


def test_a_services_dead_letters_are_listed_by_the_cli_under_its_own_prefix(
    ledger: Callable[..., Any], dynamodb_env: dict[str, str], table_prefix: str
) -> None:
    prefix = f"{table_prefix}payments-"
    inbox = make_payments_inbox(service_env(PAYMENTS, prefix, dynamodb_env))
    detail = {"id": str(uuid.uuid4()), "order_id": "not an id"}
    body = json.dumps(
        {"source": SOURCE, "detail-type": "OrderConfirmed.v2", "detail": detail}
    )
    event = {"Records": [{"messageId": "m1", "body": body, "attributes": {}}]}
    assert handle_sqs_event(event, inbox) == {"batchItemFailures": []}

    listed = ledger(
        "inbox",
        "dead-letters",
        "list",
        "--inbox=aggregates.services:make_payments_inbox",
        "--json",
        PAYMENTS_DYNAMODB_TABLE_PREFIX=prefix,
    )

    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)
    assert letter["key"] == f"event:{SOURCE}:{detail['id']}"
    assert "not an id" not in listed.stdout


def test_the_services_story_tells_of_one_reservation_and_one_payment_published_twice(
    dynamodb_env: dict[str, str], moto_endpoint: str
) -> None:
    output = io.StringIO()

    run_story(dynamodb_env, moto_endpoint, Console(file=output, width=400))

    told = output.getvalue()
    assert told.count("Warehouse: received 1, done and deleted 1") == 2
    assert told.count("Payments: received 1, done and deleted 1") == 2
    assert told.count("reservation reserved, 8 apples on hand") == 2
    assert told.count("payment requested (3.00), 1 event(s)") == 2
    assert "warehouse-Warehouse_inbox" in told
    assert "payments-Payments_inbox" in told
