"""Parked sagas: the dead letters of a saga application's steps.

A step whose command keeps failing parks its saga (see :mod:`ledger.sagas`,
"Failing steps"): its letter, and one per later step of the saga waiting
behind it, are kept in ``{prefix}{application}_parked``, stored as the
publisher's dead letters are (:mod:`ledger.publishing.deadletters`), until a
redrive sends them or a drop gives them up. Everything here is re-exported
by :mod:`ledger.sagas`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from ledger.dynamodb.tables import ensure_table
from ledger.publishing import schema as letters_schema
from ledger.publishing.deadletters import (
    DeadLetter,
    dead_letter_item,
    dead_letter_of,
    delete_dead_letter,
    read_dead_letters,
    store_dead_letter,
)

if TYPE_CHECKING:
    from ledger.dynamodb.client import DynamoDBConnection
    from ledger.sagas import Saga

__all__ = ["PARKED_TABLE", "WAITING", "ParkedSaga", "ParkedSteps"]

PARKED_TABLE: Final = "parked"
"""The kind of a saga application's dead-letter table: ``{prefix}{name}_parked``."""
WAITING: Final = "waiting"
"""The ``error`` of a dead letter whose step never failed: it waits behind an
earlier step of its saga that was parked."""


@dataclass(frozen=True)
class ParkedSaga:
    """A saga whose step kept failing: the step, why, and the steps waiting behind."""

    saga_id: str
    version: int
    """The parked step's version in its saga."""
    step: str
    """The parked step's class name (``ReserveStock``)."""
    error: str
    """The error's type and where it was raised (never its message)."""
    attempts: int
    """Attempts at sending it, redrives included."""
    parked_at: str
    """When it was (last) parked, ISO 8601 in UTC."""
    waiting: list[int] = field(default_factory=list)
    """Versions of the saga's later steps waiting behind it, in order."""


class ParkedSteps:
    """A saga application's dead letters: its parked steps, and those waiting.

    Stored as the publisher's dead letters are (the same table layout, item
    and functions: :mod:`ledger.publishing.deadletters`), in
    ``{prefix}{application}_parked``, one item per step: ``aggregate_id``
    the saga, ``version`` the step's, ``detail_type`` the step's class
    name, ``topic`` its topic, ``error`` the error's type and place
    (:data:`WAITING` for a step that never failed) and ``attempts``. Keys
    sort a saga's letters by version: its first is the parked step.
    Checking a saga costs one strongly consistent Query (0.5 read units
    while it has no letters).
    """

    def __init__(
        self, connection: DynamoDBConnection, table_name: str, *, create: bool
    ) -> None:
        self.connection = connection
        self.table_name = table_name
        if create:
            ensure_table(connection, letters_schema.table_definition(table_name))

    def of_saga(self, saga_id: object) -> list[DeadLetter]:
        """Return a saga's letters, by version (none: it is not parked)."""
        items = self.connection.items(
            "query",
            TableName=self.table_name,
            KeyConditionExpression="#kind = :kind AND begins_with(#key, :saga)",
            ExpressionAttributeNames={
                "#kind": letters_schema.KIND,
                "#key": letters_schema.KEY,
            },
            ExpressionAttributeValues={
                ":kind": {"S": letters_schema.DEAD_LETTER},
                ":saga": {"S": f"{saga_id}#"},
            },
            ConsistentRead=True,
        )
        return [dead_letter_of(item) for item in items]

    def every(self) -> list[DeadLetter]:
        """Return every letter, by saga, then version (one Query per 1 MB)."""
        return read_dead_letters(self.connection, self.table_name)

    def saga_ids(self) -> set[str]:
        """Return the ids of the sagas that have letters (parked, or waiting).

        One strongly consistent Query per 1 MB of letters, reading their
        saga ids only (0.5 read units while there are none).
        """
        items = self.connection.items(
            "query",
            TableName=self.table_name,
            KeyConditionExpression="#kind = :kind",
            ProjectionExpression="#saga",
            ExpressionAttributeNames={
                "#kind": letters_schema.KIND,
                "#saga": letters_schema.AGGREGATE_ID,
            },
            ExpressionAttributeValues={":kind": {"S": letters_schema.DEAD_LETTER}},
            ConsistentRead=True,
        )
        return {item[letters_schema.AGGREGATE_ID]["S"] for item in items}

    def park(self, step: Saga.Step, error: str, attempts: int) -> DeadLetter:
        """Store (or replace) the letter of a step that kept failing."""
        letter = _letter_of(step, error, attempts)
        store_dead_letter(self.connection, self.table_name, letter)
        return letter

    def wait(self, step: Saga.Step, behind: DeadLetter) -> bool:
        """Store a step as waiting behind a letter; False if that letter is gone.

        One transaction: the letter ``behind`` must still exist, so a step
        never waits behind a letter a redrive has finished with (it would
        wait for nothing, unsent).
        """
        waiting = _letter_of(step, WAITING, 0)
        try:
            self.connection.call(
                "transact_write_items",
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self.table_name,
                            "Key": {
                                letters_schema.KIND: {"S": letters_schema.DEAD_LETTER},
                                letters_schema.KEY: {"S": behind.key},
                            },
                            "ConditionExpression": "attribute_exists(#key)",
                            "ExpressionAttributeNames": {"#key": letters_schema.KEY},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table_name,
                            "Item": dead_letter_item(waiting),
                        }
                    },
                ],
            )
        except IntegrityError:
            return False
        return True

    def delete(self, letter: DeadLetter) -> None:
        """Delete a letter (its step was sent, or given up on)."""
        delete_dead_letter(self.connection, self.table_name, letter)


def _letter_of(step: Saga.Step, error: str, attempts: int) -> DeadLetter:
    return DeadLetter(
        aggregate_id=str(step.originator_id),
        version=step.originator_version,
        detail_type=type(step).__name__,
        event_id="",
        topic=get_topic(type(step)),
        error=error,
        attempts=attempts,
    )
