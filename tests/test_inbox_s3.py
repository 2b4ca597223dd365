"""Orders imported from CSV files written to S3: each row placed once.

S3 (moto's server) notifies an SQS queue of each object written; the
inbox's runner reads the queue and the example inbox places one order per
row, keyed by the object's identity and the row's number
(:func:`aggregates.inbox_example.row_key`). moto's notifications carry no
``sequencer`` (S3's always do): the keys here are made without one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from aggregates.inbox_example import orders_inbox
from ledger.dynamodb import schema as store_schema
from ledger.inbox import SqsRunner
from ledger.inbox.messages import envelopes_of
from tests.test_inbox_sqs import Crash, CrashingOrders
from tests.test_publisher import local_eventbridge

DEADLINE = 30.0
BUCKET = "order-files"


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any, str]]:
    """moto's S3 and SQS, with the bucket notifying a queue of objects created."""
    with local_eventbridge() as endpoint:
        made = {
            name: boto3.client(
                name,
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="local",
                aws_secret_access_key="local",  # noqa: S106 - a placeholder
            )
            for name in ("s3", "sqs")
        }
        s3, sqs = made["s3"], made["sqs"]
        queue_url = sqs.create_queue(QueueName="order-files")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )
        yield s3, sqs, queue_url


@pytest.fixture
def crashing(dynamodb_env: dict[str, str]) -> Iterator[CrashingOrders]:
    orders = CrashingOrders(env=dynamodb_env)
    yield orders
    orders.close()


def csv_of(customers: list[uuid.UUID]) -> bytes:
    rows = ["customer_id,product_id,quantity,price,currency"]
    rows += [
        f"{customer},apple,{n},1.50,EUR" for n, customer in enumerate(customers, 1)
    ]
    return ("\n".join(rows) + "\n").encode()


def orders_stored(orders: CrashingOrders) -> int:
    """How many orders the events table holds."""
    items = orders.factory.connection.items(
        "scan", TableName=orders.recorder.events_table_name
    )
    return len({item[store_schema.AGGREGATE_ID]["S"] for item in items})


def drain(runner: SqsRunner, sqs: Any, queue_url: str) -> None:
    """Poll until the queue holds no message, visible or not."""
    deadline = time.monotonic() + DEADLINE
    while True:
        runner.poll_once()
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        if not any(int(value) for value in attributes.values()):
            return
        assert time.monotonic() < deadline, f"the queue never emptied: {attributes}"


def test_a_csv_import_rerun_after_a_crash_halfway_places_no_order_twice(
    aws: tuple[Any, Any, str], crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    s3, sqs, queue_url = aws
    inbox = orders_inbox(crashing, s3_client=s3, env=dynamodb_env, retry_delays=())
    runner = SqsRunner(
        inbox, queue_url, sqs_client=sqs, wait_seconds=0, visibility_timeout=1
    )
    customers = [uuid.uuid4() for _ in range(4)]
    crashing.crash_after = {customers[1]}  # dies after placing the second row
    s3.put_object(Bucket=BUCKET, Key="orders/monday.csv", Body=csv_of(customers))

    with pytest.raises(Crash):
        runner.poll_once()
    assert set(crashing.answers) == set(customers[:2])
    drain(runner, sqs, queue_url)

    assert orders_stored(crashing) == 4
    for customer in customers:
        assert len(set(crashing.answers[customer])) == 1
    order = crashing.get_order(crashing.answers[customers[3]][0])
    assert (order.currency, order.lines["apple"].quantity) == ("EUR", 4)


def test_importing_the_same_file_again_places_no_order_again(
    aws: tuple[Any, Any, str], crashing: CrashingOrders, dynamodb_env: dict[str, str]
) -> None:
    s3, sqs, queue_url = aws
    inbox = orders_inbox(crashing, s3_client=s3, env=dynamodb_env, retry_delays=())
    runner = SqsRunner(inbox, queue_url, sqs_client=sqs, wait_seconds=0)
    customers = [uuid.uuid4() for _ in range(3)]
    s3.put_object(Bucket=BUCKET, Key="orders/tuesday.csv", Body=csv_of(customers))
    drain(runner, sqs, queue_url)

    s3.put_object(Bucket=BUCKET, Key="orders/tuesday.csv", Body=csv_of(customers))
    drain(runner, sqs, queue_url)

    assert orders_stored(crashing) == 3
    for customer in customers:
        assert len(crashing.answers[customer]) == 2  # placed, then answered again
        assert len(set(crashing.answers[customer])) == 1
    assert inbox.dead_letters() == []


def test_an_s3_notification_is_keyed_by_the_object_and_its_sequencer() -> None:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": BUCKET},
            "object": {
                "key": "orders/a+file.csv",
                "eTag": "abc",
                "versionId": "v7",
                "sequencer": "0055AED6DCD90281E5",
                "size": 10,
            },
        },
    }

    (envelope,) = envelopes_of("m1", json.dumps({"Records": [record]}))

    assert envelope.key == f"s3:{BUCKET}/orders/a file.csv@v7#0055AED6DCD90281E5"
    assert envelope.body["object_key"] == "orders/a file.csv"
    assert envelopes_of("m2", json.dumps({"Event": "s3:TestEvent"})) == []
