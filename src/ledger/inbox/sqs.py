"""SQS sources of an inbox: a Lambda handler, and a long-poll runner for elsewhere.

Both read each SQS message into envelopes (:func:`~ledger.inbox.messages.envelopes_of`:
raw messages, EventBridge events through an SQS target, S3 notifications,
Step Functions tasks) and hand the batch to :meth:`Inbox.handle_batch`, which
keeps FIFO groups in order. Lambda deletes the messages not reported in
``batchItemFailures`` (configure the event source mapping with
``ReportBatchItemFailures``); the runner deletes them itself. A crash
between a command and the delete (the whole batch comes back) applies
nothing twice: each command is keyed by its message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger.inbox.inbox import Inbox
from ledger.inbox.messages import Envelope, envelopes_of

__all__ = [
    "MAX_MESSAGES_PER_RECEIVE",
    "SqsRunner",
    "envelopes_of_record",
    "handle_sqs_event",
    "lambda_handler",
]

logger = logging.getLogger(__name__)

MAX_MESSAGES_PER_RECEIVE: Final = 10
"""ReceiveMessage returns at most 10 messages."""

BatchResponse = dict[str, list[dict[str, str]]]


def _string_attributes(attributes: Mapping[str, Any], value_key: str) -> dict[str, str]:
    return {
        name: str(value[value_key])
        for name, value in attributes.items()
        if isinstance(value, Mapping) and value.get(value_key) is not None
    }


def envelopes_of_record(record: Mapping[str, Any]) -> list[Envelope]:
    """Read one record of a Lambda SQS event into its envelopes."""
    return envelopes_of(
        str(record["messageId"]),
        str(record.get("body", "")),
        group_id=str(record.get("attributes", {}).get("MessageGroupId", "")),
        attributes=_string_attributes(
            record.get("messageAttributes") or {}, "stringValue"
        ),
    )


def envelopes_of_message(message: Mapping[str, Any]) -> list[Envelope]:
    """Read one message of a ReceiveMessage answer into its envelopes."""
    return envelopes_of(
        str(message["MessageId"]),
        str(message.get("Body", "")),
        group_id=str(message.get("Attributes", {}).get("MessageGroupId", "")),
        attributes=_string_attributes(
            message.get("MessageAttributes") or {}, "StringValue"
        ),
    )


def handle_sqs_event(event: Mapping[str, Any], inbox: Inbox) -> BatchResponse:
    """Handle a Lambda SQS event; return its partial batch response."""
    batch = [envelopes_of_record(record) for record in event.get("Records", [])]
    failed = inbox.handle_batch(batch)
    return {"batchItemFailures": [{"itemIdentifier": each} for each in failed]}


def lambda_handler(
    make_inbox: Callable[[], Inbox],
) -> Callable[[Mapping[str, Any], Any], BatchResponse]:
    """Return a Lambda handler for an SQS event source mapping.

    ``make_inbox`` is called at the first invocation (it makes the
    application and registers the handlers); the inbox is kept.
    """
    made: list[Inbox] = []

    def handler(event: Mapping[str, Any], context: Any) -> BatchResponse:
        del context
        if not made:
            made.append(make_inbox())
        return handle_sqs_event(event, made[0])

    return handler


@dataclass
class PollReport:
    """What one receive did."""

    received: int = 0
    deleted: int = 0
    failed: int = 0


class SqsRunner:
    """Runs an inbox on an SQS queue outside Lambda: receive, handle, delete.

    Each round long-polls for up to ``wait_seconds`` and at most 10
    messages, handles them in order (:meth:`Inbox.handle_batch`) and
    deletes those done in one ``DeleteMessageBatch``. Messages not done are
    left: SQS delivers them again after their visibility timeout (and a
    FIFO group waits for them). A crash anywhere before the delete is the
    same as that: no command is applied twice.
    """

    def __init__(
        self,
        inbox: Inbox,
        queue_url: str,
        *,
        sqs_client: Any = None,
        wait_seconds: int = 20,
        visibility_timeout: int | None = None,
    ) -> None:
        self.inbox = inbox
        self.queue_url = queue_url
        if sqs_client is None:
            import boto3  # noqa: PLC0415 - boto3's own resolution of the endpoint

            sqs_client = boto3.client("sqs", region_name=inbox.connection.region_name)
        self.client = sqs_client
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        """Seconds a received message stays hidden (None: the queue's own)."""

    def poll_once(self) -> PollReport:
        """Receive, handle and delete one batch; return what it did."""
        request: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": MAX_MESSAGES_PER_RECEIVE,
            "WaitTimeSeconds": self.wait_seconds,
            "MessageAttributeNames": ["All"],
            "MessageSystemAttributeNames": ["MessageGroupId"],
        }
        if self.visibility_timeout is not None:
            request["VisibilityTimeout"] = self.visibility_timeout
        messages: Sequence[Mapping[str, Any]] = self.client.receive_message(
            **request
        ).get("Messages", [])
        report = PollReport(received=len(messages))
        if not messages:
            return report
        batch = [envelopes_of_message(message) for message in messages]
        failed = set(self.inbox.handle_batch(batch))
        done = [m for m in messages if m["MessageId"] not in failed]
        report.failed = len(messages) - len(done)
        if done:
            answer = self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]}
                    for index, m in enumerate(done)
                ],
            )
            # A delete that failed only means a redelivery: the key makes it
            # harmless.
            report.deleted = len(answer.get("Successful", []))
        return report

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set (a round ends within ``wait_seconds``)."""
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:
                logger.exception("inbox poll failed", extra={"queue": self.queue_url})
                stop.wait(1.0)
