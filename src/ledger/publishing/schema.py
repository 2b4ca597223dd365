"""The storage schema of a publisher: one table, its keys and attributes.

A publication named ``P`` (its ``name``) owns one table,
``{prefix}P_publishing``, holding two kinds of item under partition key
``kind`` (S) and sort key ``key`` (S):

``kind = "shard"``, ``key`` = a stream shard id
    The local poller's checkpoint in that shard: the last record whose
    entries were all accepted by EventBridge or dead-lettered. (In Lambda
    the event source mapping keeps the position; these items stay unused.)

``kind = "cursor"``, ``key`` = the application's name
    The index-following mode's position
    (:class:`~ledger.publishing.publisher.IndexCursor`, moved by the
    publisher's runner: :meth:`Publisher.follow_index`, the Lambda handler):
    the last position of the application sequence whose entries were all
    accepted or dead-lettered. Moved only on condition that it still holds
    the position read, so of two followers racing one moves it.

``kind = "dead_letter"``, ``key`` = ``{aggregate id}#{version}#{detail-type}``
    (the version in 10 digits, so keys sort by it). An integration event
    that could not be published (EventBridge kept refusing its entry, or it
    exceeds PutEvents' size limit), or a domain event that could not be
    decoded or translated (detail-type ``-``: none was made). Listed in key
    order, so an aggregate's dead letters sort by version. A redrive reads
    the domain event from the events table again, translates it with the
    code then deployed and publishes it.

Dead letters hold ids, the error's type and place and counts, never event
data: the event stays in the events table, where a redrive reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import CreateTableInputTypeDef

KIND: Final = "kind"
"""Partition key (S): ``shard``, ``cursor`` or ``dead_letter``."""
KEY: Final = "key"
"""Sort key (S): the shard id, the application's name, or the dead letter's key
(see the module)."""

SHARD: Final = "shard"
"""``kind`` of a shard checkpoint."""
CURSOR: Final = "cursor"
"""``kind`` of the index-following mode's position in the sequence."""
DEAD_LETTER: Final = "dead_letter"
"""``kind`` of a dead letter."""
NO_DETAIL_TYPE: Final = "-"
"""A dead letter's detail-type when no integration event was made."""

SEQUENCE_NUMBER: Final = "sequence_number"
"""(S) on a checkpoint: the last record done in the shard. On a dead letter:
the stream record it came from (from the index: the sequence position;
empty for a redrive's)."""

POSITION: Final = "position"
"""(N) on a cursor: the last position of the sequence done (see the module)."""

AGGREGATE_ID: Final = "aggregate_id"
"""(S) on a dead letter: the aggregate whose event it is."""
VERSION: Final = "version"
"""(N) on a dead letter: the event's version in its aggregate."""
TOPIC: Final = "topic"
"""(S) on a dead letter: the stored event's topic (its class)."""
DETAIL_TYPE: Final = "detail_type"
"""(S) on a dead letter: the integration event's detail-type, or ``-``."""
EVENT_ID: Final = "event_id"
"""(S) on a dead letter: the integration event's id (consumers dedupe on
it), empty when none was made."""
ERROR: Final = "error"
"""(S) on a dead letter: PutEvents' error code for the entry, or an
exception's type and where it was raised (never its message)."""
ATTEMPTS: Final = "attempts"
"""(N) on a dead letter: PutEvents attempts made for the entry (0: none)."""
DEAD_LETTERED_AT: Final = "dead_lettered_at"
"""(S) on a dead letter: when it was (last) stored, ISO 8601 in UTC."""


def dead_letter_key(aggregate_id: str, version: int, detail_type: str) -> str:
    """Return a dead letter's sort key: by aggregate, then version, then type."""
    return f"{aggregate_id}#{version:010d}#{detail_type}"


def table_definition(name: str) -> CreateTableInputTypeDef:
    """Return the CreateTable request of a publisher's table (on demand)."""
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
