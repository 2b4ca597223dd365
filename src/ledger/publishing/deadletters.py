"""A publisher's dead letters: integration events it could not publish.

Nothing a publisher reads from the stream is dropped: each integration event
is accepted by EventBridge or stored here (and a domain event that cannot be
decoded or translated is stored here too) before the stream position moves
past it. A dead letter holds where the event is and why it failed, never the
event's data (see :mod:`ledger.publishing.schema`); a redrive
(:meth:`ledger.publishing.publisher.Publisher.redrive`) reads the event from
the events table again and publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ledger.dynamodb.client import DynamoDBConnection
from ledger.publishing import schema

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DeadLetter",
    "dead_letter_item",
    "dead_letter_of",
    "delete_dead_letter",
    "purge_dead_letters",
    "read_dead_letters",
    "store_dead_letter",
]


@dataclass(frozen=True)
class DeadLetter:
    """One integration event (or undecodable domain event) not published."""

    aggregate_id: str
    version: int
    detail_type: str
    """The integration event's detail-type; ``-`` when none was made (the
    domain event could not be decoded or translated)."""
    event_id: str
    """The integration event's id (empty when none was made)."""
    topic: str
    """The stored domain event's topic."""
    error: str
    """PutEvents' error code, or an exception's type and place (no message)."""
    attempts: int
    """PutEvents attempts made for the entry (0: never sent)."""
    sequence_number: str = ""
    """The stream record it came from (empty for a redrive's)."""
    dead_lettered_at: str = ""
    """When it was stored (ISO 8601, UTC); set by :func:`store_dead_letter`."""

    @property
    def key(self) -> str:
        """The item's sort key in the publisher's table."""
        return schema.dead_letter_key(self.aggregate_id, self.version, self.detail_type)


def store_dead_letter(
    connection: DynamoDBConnection, table_name: str, letter: DeadLetter
) -> None:
    """Store (or replace, with its new error and attempts) a dead letter."""
    connection.call("put_item", TableName=table_name, Item=dead_letter_item(letter))


def dead_letter_item(letter: DeadLetter) -> dict[str, Any]:
    """Return the item that stores a dead letter, stamped with the time now."""
    return {
        schema.KIND: {"S": schema.DEAD_LETTER},
        schema.KEY: {"S": letter.key},
        schema.AGGREGATE_ID: {"S": letter.aggregate_id},
        schema.VERSION: {"N": str(letter.version)},
        schema.DETAIL_TYPE: {"S": letter.detail_type},
        schema.EVENT_ID: {"S": letter.event_id},
        schema.TOPIC: {"S": letter.topic},
        schema.ERROR: {"S": letter.error},
        schema.ATTEMPTS: {"N": str(letter.attempts)},
        schema.SEQUENCE_NUMBER: {"S": letter.sequence_number},
        schema.DEAD_LETTERED_AT: {"S": datetime.now(UTC).isoformat()},
    }


def read_dead_letters(
    connection: DynamoDBConnection, table_name: str, limit: int | None = None
) -> list[DeadLetter]:
    """Return dead letters by aggregate, then version (one Query per 1 MB)."""
    letters: list[DeadLetter] = []
    items = connection.items(
        "query",
        TableName=table_name,
        KeyConditionExpression="#kind = :kind",
        ExpressionAttributeNames={"#kind": schema.KIND},
        ExpressionAttributeValues={":kind": {"S": schema.DEAD_LETTER}},
        ConsistentRead=True,
    )
    for item in items:
        letters.append(dead_letter_of(item))
        if limit is not None and len(letters) >= limit:
            break
    return letters


def delete_dead_letter(
    connection: DynamoDBConnection, table_name: str, letter: DeadLetter
) -> None:
    """Delete a dead letter (after its event was published)."""
    connection.call(
        "delete_item",
        TableName=table_name,
        Key={
            schema.KIND: {"S": schema.DEAD_LETTER},
            schema.KEY: {"S": letter.key},
        },
    )


def purge_dead_letters(
    connection: DynamoDBConnection, table_name: str, keys: Iterable[str] | None = None
) -> list[str]:
    """Delete dead letters (all, or those of ``keys``); return the keys deleted.

    Their events are never published (unless republished by hand). A key
    with no dead letter is skipped. One Query, then one DeleteItem per letter.
    """
    letters = {
        letter.key: letter for letter in read_dead_letters(connection, table_name)
    }
    chosen = list(letters) if keys is None else [key for key in keys if key in letters]
    for key in chosen:
        delete_dead_letter(connection, table_name, letters[key])
    return chosen


def dead_letter_of(item: Mapping[str, Any]) -> DeadLetter:
    """Return the dead letter a stored item holds."""
    return DeadLetter(
        aggregate_id=item[schema.AGGREGATE_ID]["S"],
        version=int(item[schema.VERSION]["N"]),
        detail_type=item[schema.DETAIL_TYPE]["S"],
        event_id=item[schema.EVENT_ID]["S"],
        topic=item[schema.TOPIC]["S"],
        error=item[schema.ERROR]["S"],
        attempts=int(item[schema.ATTEMPTS]["N"]),
        sequence_number=item[schema.SEQUENCE_NUMBER]["S"],
        dead_lettered_at=item[schema.DEAD_LETTERED_AT]["S"],
    )
