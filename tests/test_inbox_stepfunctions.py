"""Step Functions tasks through the inbox: the command applied once, reported once.

A ``.waitForTaskToken`` state sends the task to SQS with its token; the
inbox runs the command and reports ``SendTaskSuccess`` (the handler's
answer) or ``SendTaskFailure`` (a refusal). moto's server answers those
calls but ignores them (it accepts any token, any number of times), so
what was reported is read off the wire: a fault proxy in front of moto
records each report's body. Real Step Functions refuses a report on a
token it no longer waits on (``TaskTimedOut``); the proxy plays that
answer where a test needs it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from faults import CUT, REFUSE, FaultProxy

from aggregates.inbox_example import orders_inbox
from ledger.inbox import Inbox, Outcome
from ledger.inbox.messages import envelopes_of
from tests.test_inbox_sqs import CrashingOrders
from tests.test_publisher import local_eventbridge

REPORTS = {"SendTaskSuccess", "SendTaskFailure"}


class Reports:
    """Every report that reached the (local) Step Functions, in order."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        proxy.on(self._record, fault=CUT, times=None)

    def _record(self, operation: str, index: int, body: bytes) -> bool:
        if operation in REPORTS:
            self.sent.append((operation, json.loads(body)))
        return False  # never faulted: only watched


@pytest.fixture
def stepfunctions() -> Iterator[tuple[Any, FaultProxy]]:
    """A Step Functions client to moto's server, through a fault proxy."""
    with local_eventbridge() as endpoint, FaultProxy(endpoint) as proxy:
        client = boto3.client(
            "stepfunctions",
            endpoint_url=proxy.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - a placeholder
        )
        yield client, proxy


@pytest.fixture
def dynamodb_proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture
def orders(
    dynamodb_env: dict[str, str], dynamodb_proxy: FaultProxy
) -> Iterator[CrashingOrders]:
    env = {
        **dynamodb_env,
        "DYNAMODB_ENDPOINT_URL": dynamodb_proxy.endpoint_url,
        "DYNAMODB_MAX_ATTEMPTS": "1",
    }
    made = CrashingOrders(env=env)
    yield made
    made.close()


def inbox_of(
    orders: CrashingOrders, client: Any, dynamodb_env: dict[str, str]
) -> Inbox:
    return orders_inbox(
        orders, env=dynamodb_env, retry_delays=(), stepfunctions_client=client
    )


def task(customer: uuid.UUID, currency: str = "EUR") -> str:
    return json.dumps(
        {
            "taskToken": f"token-{uuid.uuid4()}",
            "type": "PlaceOrder",
            "execution": "arn:aws:states:us-east-1:123456789012:execution:shop:run-1",
            "state": f"Place {customer}",
            "input": {
                "customer_id": str(customer),
                "product_id": "apple",
                "quantity": 1,
                "price": "1.50",
                "currency": currency,
            },
        }
    )


def test_a_task_delivered_twice_is_applied_once_and_reported_once(
    orders: CrashingOrders,
    stepfunctions: tuple[Any, FaultProxy],
    dynamodb_env: dict[str, str],
) -> None:
    client, proxy = stepfunctions
    reports = Reports(proxy)
    inbox = inbox_of(orders, client, dynamodb_env)
    customer = uuid.uuid4()
    (delivery,) = envelopes_of("m1", task(customer))

    assert inbox.handle(delivery) is Outcome.APPLIED
    assert inbox.handle(delivery) is Outcome.APPLIED

    (order_id,) = orders.answers[customer]  # the command ran once
    assert reports.sent == [
        (
            "SendTaskSuccess",
            {
                "taskToken": delivery.task_token,
                "output": json.dumps({"order_id": str(order_id)}),
            },
        )
    ]


def test_a_task_whose_report_was_not_recorded_reports_the_same_outcome_again(
    orders: CrashingOrders,
    stepfunctions: tuple[Any, FaultProxy],
    dynamodb_proxy: FaultProxy,
    dynamodb_env: dict[str, str],
) -> None:
    client, proxy = stepfunctions
    reports = Reports(proxy)
    inbox = inbox_of(orders, client, dynamodb_env)
    (delivery,) = envelopes_of("m1", task(uuid.uuid4()))
    dynamodb_proxy.on(
        lambda operation, index, body: operation == "UpdateItem", fault=CUT
    )  # reported, but the mark is lost

    assert inbox.handle(delivery) is Outcome.RETRY
    # Step Functions took the first report: it refuses a second on that token.
    closed = proxy.on("SendTaskSuccess", fault=REFUSE("TaskTimedOut"))
    assert inbox.handle(delivery) is Outcome.APPLIED
    assert inbox.handle(delivery) is Outcome.APPLIED

    assert closed.fired == 1
    (first, second) = reports.sent
    assert first == second  # the stored outcome, not a new run of the command


def test_a_task_refused_by_the_domain_reports_its_failure_once(
    orders: CrashingOrders,
    stepfunctions: tuple[Any, FaultProxy],
    dynamodb_env: dict[str, str],
) -> None:
    client, proxy = stepfunctions
    reports = Reports(proxy)
    inbox = inbox_of(orders, client, dynamodb_env)
    (delivery,) = envelopes_of("m1", task(uuid.uuid4(), currency="euros"))

    assert inbox.handle(delivery) is Outcome.APPLIED
    assert inbox.handle(delivery) is Outcome.APPLIED

    ((operation, body),) = reports.sent
    assert operation == "SendTaskFailure"
    assert body["error"] == "OrderError"
    assert body["cause"].startswith("OrderError at order.py:")
    assert "euros" not in body["cause"]
    assert inbox.dead_letters() == []  # the state machine has it, not the inbox


def test_a_task_is_keyed_by_its_execution_and_state_not_its_token() -> None:
    customer = uuid.uuid4()
    (first,) = envelopes_of("m1", task(customer))
    (retried,) = envelopes_of("m2", task(customer))  # the state's retry: new token

    assert first.task_token != retried.task_token
    assert first.key == retried.key
