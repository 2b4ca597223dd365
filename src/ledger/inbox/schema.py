"""The storage schema of an inbox: one table, its keys and attributes.

An inbox named ``I`` owns one table, ``{prefix}I_inbox``, holding two kinds
of item under partition key ``kind`` (S) and sort key ``key`` (S), the
message's idempotency key (:mod:`ledger.inbox.messages`):

``kind = "dead_letter"``
    A message refused for good: it failed validation, named a type no
    handler takes, or its command was refused by the domain. It holds the
    message's ids, type, the reason (the error's type and place, or the
    fields that failed validation: never an error message, which may quote
    the data) and a SHA-256 of the body; the body itself only when the
    inbox was made with ``store_bodies`` (then a redrive can handle it
    again).

``kind = "task"``
    A Step Functions task's outcome, stored before it is reported, so a
    task delivered again reports the same outcome (or nothing, once
    reported).

The applications' idempotency keys are not here: they live in each
application's own idempotency table, written in the command's save.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import CreateTableInputTypeDef

KIND: Final = "kind"
"""Partition key (S): ``dead_letter`` or ``task``."""
KEY: Final = "key"
"""Sort key (S): the message's idempotency key."""

DEAD_LETTER: Final = "dead_letter"
"""``kind`` of a dead letter."""
TASK: Final = "task"
"""``kind`` of a Step Functions task's outcome."""

MESSAGE_TYPE: Final = "message_type"
"""(S) the type the message was routed by (empty if none could be read)."""
SOURCE: Final = "source"
"""(S) where it came from: ``sqs``, ``eventbridge``, ``s3`` or ``stepfunctions``."""
EVENT_SOURCE: Final = "event_source"
"""(S) an EventBridge event's ``source`` (empty for other messages): a
redrive checks the event against that source's schema file again."""
MESSAGE_ID: Final = "message_id"
"""(S) the SQS message id of the delivery that was refused."""
GROUP_ID: Final = "group_id"
"""(S) the SQS FIFO message group (empty for a standard queue)."""
REASON: Final = "reason"
"""(S) why it was refused: the error's type and place, or the fields that
failed validation and how (never the error's message nor the input)."""
BODY_SHA256: Final = "body_sha256"
"""(S) SHA-256 of the message body as received, to match it with a copy."""
BODY: Final = "body"
"""(S) the decoded payload as JSON; present only with ``store_bodies``."""
DEAD_LETTERED_AT: Final = "dead_lettered_at"
"""(S) when it was (last) stored, ISO 8601 in UTC."""

OUTCOME: Final = "outcome"
"""(S) on a task: ``success`` or ``failure``."""
OUTPUT: Final = "output"
"""(S) on a successful task: the JSON output reported."""
ERROR: Final = "error"
"""(S) on a failed task: the error name reported (the exception's type)."""
CAUSE: Final = "cause"
"""(S) on a failed task: the cause reported (the refusal's reason)."""
REPORTED: Final = "reported"
"""(BOOL) on a task: True once Step Functions took (or had closed) the report."""


def table_definition(name: str) -> CreateTableInputTypeDef:
    """Return the CreateTable request of an inbox's table (on demand)."""
    return {
        "TableName": name,
        "AttributeDefinitions": [
            {"AttributeName": KIND, "AttributeType": "S"},
            {"AttributeName": KEY, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": KIND, "KeyType": "HASH"},
            {"AttributeName": KEY, "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
