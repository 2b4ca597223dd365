"""The services story: an order confirmed in Orders, received by Warehouse and Payments.

Run it from a checkout with ``python -m aggregates.services_demo --local``
(starts DynamoDB Local for it) or without ``--local`` against
``DYNAMODB_ENDPOINT_URL``. EventBridge and SQS are always moto's server
(a development dependency), started on a free port: the story makes a bus,
one rule and queue per service (:mod:`aggregates.services`), and tables
under a fresh prefix of its own, one prefix per service. Orders' publisher
reads its events table's stream; each service's :class:`~ledger.inbox.SqsRunner`
receives from its queue. Then Orders publishes the order's events again
(same ids): each service receives them again, and nothing changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import boto3
from rich.console import Console

from aggregates.application import Orders
from aggregates.payments import Payments
from aggregates.services import (
    PAYMENTS,
    WAREHOUSE,
    event_pattern,
    payments_inbox,
    service_env,
    warehouse_inbox,
)
from aggregates.warehouse import Warehouse
from ledger.inbox import Inbox, SqsRunner
from ledger.projections.streams import StreamPoller
from ledger.publishing import Publisher
from projections.integration import OrderEvents

__all__ = ["main", "run_story"]

DEADLINE = 30.0
"""Seconds to wait for DynamoDB Local's stream to show a write."""


def _client(service: str, endpoint: str) -> Any:
    # The stubs type each service by its literal name; this function takes any.
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the local servers' placeholder
    )


def _queue_for(inbox: Inbox, bus: str, endpoint: str) -> str:
    """Make ``inbox``'s queue and the rule feeding it; return the queue's URL."""
    events, sqs = _client("events", endpoint), _client("sqs", endpoint)
    url: str = sqs.create_queue(QueueName=f"{bus}-{inbox.name.lower()}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    rule = f"{inbox.name.lower()}-inbox"
    events.put_rule(
        Name=rule, EventBusName=bus, EventPattern=json.dumps(event_pattern(inbox))
    )
    events.put_targets(
        Rule=rule, EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
    )
    return url


def _publish(publisher: Publisher, poller: StreamPoller, count: int) -> None:
    """Publish what Orders saved until ``count`` events in all were accepted."""
    deadline = time.monotonic() + DEADLINE
    while publisher.report.accepted < count:
        if time.monotonic() > deadline:
            msg = f"the stream showed {publisher.report.accepted}/{count} events"
            raise TimeoutError(msg)
        poller.poll()
        time.sleep(0.1)


def run_story(env: Mapping[str, str], events_endpoint: str, console: Console) -> None:
    """Tell the story on the DynamoDB of ``env`` and moto at ``events_endpoint``."""
    prefix = f"services{uuid.uuid4().hex[:8]}_"
    settings = {
        **env,
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_TABLE_PREFIX": prefix,
        "DYNAMODB_EVENTS_STREAM": "yes",  # the publisher reads Orders' stream
    }
    bus = f"{prefix}bus"
    _client("events", events_endpoint).create_event_bus(Name=bus)
    orders = Orders(env=settings)
    publisher = Publisher(
        OrderEvents(),
        orders,
        env={
            **settings,
            "PUBLISHER_EVENT_BUS": bus,
            "EVENTBRIDGE_ENDPOINT_URL": events_endpoint,
        },
    )
    poller = StreamPoller(publisher, orders)
    warehouse_env = service_env(WAREHOUSE, f"{prefix}warehouse-", settings)
    payments_env = service_env(PAYMENTS, f"{prefix}payments-", settings)
    warehouse = Warehouse(env=warehouse_env)
    payments = Payments(env=payments_env)
    sqs = _client("sqs", events_endpoint)
    runners = [
        SqsRunner(
            inbox,
            _queue_for(inbox, bus, events_endpoint),
            sqs_client=sqs,
            wait_seconds=1,
        )
        for inbox in (
            warehouse_inbox(warehouse, env=warehouse_env),
            payments_inbox(payments, env=payments_env),
        )
    ]

    def receive() -> None:
        for runner in runners:
            report = runner.poll_once()
            console.print(
                f"  {runner.inbox.name}: received {report.received}, "
                f"done and deleted {report.deleted}"
            )

    def show(order_id: uuid.UUID) -> None:
        reservation = warehouse.get_reservation(order_id)
        inventory = warehouse.get_inventory("apple")
        payment = payments.get_payment(order_id)
        console.print(
            f"  Warehouse: reservation "
            f"{None if reservation is None else reservation.status.value}, "
            f"{None if inventory is None else inventory.on_hand} apples on hand"
        )
        console.print(
            f"  Payments: payment "
            f"{None if payment is None else payment.status.value} "
            f"({None if payment is None else payment.amount}), "
            f"{0 if payment is None else payment.version} event(s)"
        )

    warehouse.stock("apple", 10)
    console.print("[bold]1. Orders: an order of 2 apples placed and confirmed[/bold]")
    order_id = orders.place_order(
        uuid.uuid4(),
        [{"product_id": "apple", "quantity": 2, "price": Decimal("1.50")}],
        "EUR",
    )
    orders.confirm(order_id)
    _publish(publisher, poller, 3)
    console.print(
        "  published OrderPlaced.v1, OrderConfirmed.v1 and .v2; each rule "
        "routes only OrderConfirmed.v2"
    )
    receive()
    show(order_id)

    console.print("[bold]2. Orders publishes the order's events again[/bold]")
    publisher.republish(order_id)
    receive()
    show(order_id)

    console.print("[bold]3. Each service's tables[/bold]")
    dynamodb = _client("dynamodb", settings["DYNAMODB_ENDPOINT_URL"])
    names = [
        name
        for page in dynamodb.get_paginator("list_tables").paginate()
        for name in page["TableNames"]
        if name.startswith(prefix)
    ]
    for service in ("warehouse-", "payments-"):
        owned = sorted(n for n in names if n.startswith(f"{prefix}{service}"))
        console.print(f"  {', '.join(owned)}")
    for application in (orders, warehouse, payments):
        application.close()


def main(argv: list[str] | None = None) -> None:
    """Tell the story: ``--local`` starts DynamoDB Local for it and stops it after."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--local",
        action="store_true",
        help="start DynamoDB Local on a free port for the story; stop it after",
    )
    arguments = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request lines
    console = Console(highlight=False, soft_wrap=True)
    env = {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        **os.environ,
    }
    # moto is a development dependency: the story needs a checkout's venv.
    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        events_endpoint = f"http://{host}:{port}"
        if arguments.local:
            from ledger.dynamodb.local import DynamoDBLocal  # noqa: PLC0415

            with DynamoDBLocal() as server:
                env["DYNAMODB_ENDPOINT_URL"] = server.endpoint_url
                run_story(env, events_endpoint, console)
        else:
            run_story(env, events_endpoint, console)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
