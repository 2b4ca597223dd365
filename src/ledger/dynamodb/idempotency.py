"""Idempotency keys: a command retried with the same key is applied once.

A caller that may send a command twice (a lost answer, a redelivered
message, a user pressing twice) gives its save a key. The key is stored in
the save's own transaction, as an item of the application's idempotency
table written only if absent, holding what the save stored (its events'
aggregate ids and versions, and positions in ``sequence`` ordering). So:

* the first save with a key stores its events and the key, all or nothing;
* a later save with the same key stores nothing and raises
  :class:`RepeatedSaveError` carrying the first save's :class:`SavedOutcome`
  (applications catch it: see :mod:`ledger.commands`);
* a save whose answer was lost raises ``AmbiguousWriteError``: retrying it
  with the same key either finds the key (it was applied) or applies it.

A save may also store a fingerprint of the command it belongs to (its name
and arguments, see :mod:`ledger.commands`), returned with the outcome so a
key reused for another command can be refused.

Keys expire after ``ttl_seconds`` (DynamoDB's TTL deletes them some time
later; an expired key that still exists counts as absent). A key lives
through the whole second its ``expires_at`` names and is expired from the
next one on: reads (:func:`expired`) and the put's condition both compare
with :func:`expiry_cutoff` of the time from one clock
(``IdempotencyKeys.clock``), so they never disagree.

Cost: the key's put in the save's transaction (2 WCU per KB), which also
makes a 1-event save in ``stream`` ordering a transaction of 2 actions
instead of one ``PutItem``; and one strongly consistent ``GetItem`` to read
an outcome.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from eventsourcing.persistence import DataError, IntegrityError, StoredEvent

from ledger.dynamodb import schema
from ledger.dynamodb.attributes import from_attributes, to_attributes
from ledger.dynamodb.client import DynamoDBConnection
from ledger.dynamodb.tables import ensure_table

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        TransactWriteItemTypeDef,
    )

DEFAULT_TTL_SECONDS: Final = 24 * 60 * 60
"""How long a key is remembered by default: a day."""
MAX_KEY_LENGTH: Final = 1024
"""Longest key accepted (DynamoDB allows 2,048 bytes for a partition key)."""


def expiry_cutoff(now: float) -> int:
    """Return the least ``expires_at`` of a key still live at time ``now``.

    Keys are stored with whole seconds: a key lives through the second its
    ``expires_at`` names. The put's condition compares with this same value.
    """
    return math.floor(now)


def expired(expires_at: int, now: float) -> bool:
    """Return True if a key stored with ``expires_at`` is free again at ``now``."""
    return expires_at < expiry_cutoff(now)


@dataclass(frozen=True)
class SavedOutcome:
    """What the first save with an idempotency key stored."""

    key: str
    events: tuple[tuple[str, int], ...]
    """(aggregate id, version) of each event stored, in order."""
    positions: tuple[int, ...] | None
    """Their positions in the application sequence (``sequence`` ordering)."""
    fingerprint: str | None = None
    """The command the save belonged to (None: saved without one, or before
    fingerprints were stored)."""

    @property
    def aggregate_ids(self) -> list[str]:
        """The ids of the aggregates saved, each once, in order of first event."""
        return list(dict.fromkeys(aggregate_id for aggregate_id, _ in self.events))


class RepeatedSaveError(IntegrityError):
    """A save's idempotency key was used before: nothing was written.

    ``first`` is what the first save with the key stored.
    """

    def __init__(self, message: str, first: SavedOutcome) -> None:
        super().__init__(message)
        self.first = first


class IdempotencyKeys:
    """The idempotency table of one application."""

    def __init__(
        self,
        connection: DynamoDBConnection,
        table_name: str,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        *,
        create_table: bool = True,
    ) -> None:
        self.connection = connection
        self.table_name = table_name
        self.ttl_seconds = ttl_seconds
        self.may_create_table = create_table
        self.clock: Callable[[], float] = time.time
        """The time (Unix seconds) against which keys expire; tests set it."""
        """Create the table at the first use of a key (``CREATE_TABLE``):
        applications that never use keys have no such table."""
        self._ready = False

    def _ensure(self) -> None:
        if not self._ready:
            if self.may_create_table:
                self.create_table()
            self._ready = True

    def create_table(self) -> None:
        """Create the table if it does not exist, with TTL on ``expires_at``."""
        ensure_table(
            self.connection, schema.idempotency_table_definition(self.table_name)
        )
        described = self.connection.call(
            "describe_time_to_live", TableName=self.table_name
        )
        status = described.get("TimeToLiveDescription", {}).get("TimeToLiveStatus")
        if status in (None, "DISABLED"):
            try:
                self.connection.call(
                    "update_time_to_live",
                    TableName=self.table_name,
                    TimeToLiveSpecification={
                        "Enabled": True,
                        "AttributeName": schema.EXPIRES_AT,
                    },
                )
            except DataError as error:
                # Another process (a Lambda cold start) enabled it first.
                if "already enabled" not in str(error).lower():
                    raise

    @staticmethod
    def check(key: str) -> None:
        """Refuse a key DynamoDB could not store, saying what a key may be."""
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"Invalid idempotency key {key!r}: use a non-empty string of at "
                f"most {MAX_KEY_LENGTH} characters (a UUID, or the id of the "
                "request or message that carries the command)."
            )

    def put_action(
        self,
        key: str,
        stored_events: Sequence[StoredEvent],
        positions: Sequence[int] | None = None,
        fingerprint: str | None = None,
    ) -> TransactWriteItemTypeDef:
        """Return the transaction action that stores the key, only if it is free.

        ``fingerprint`` (optional) is stored with it: the command it belongs to.
        """
        self._ensure()
        outcome = {
            "events": [
                [str(e.originator_id), e.originator_version] for e in stored_events
            ],
            "positions": None if positions is None else list(positions),
        }
        cutoff = expiry_cutoff(self.clock())
        # By hand, not ``to_attributes``: this map is built in every keyed save.
        item: dict[str, AttributeValueTypeDef] = {
            schema.IDEMPOTENCY_KEY: {"S": key},
            schema.OUTCOME: {"S": json.dumps(outcome)},
            schema.EXPIRES_AT: {"N": str(cutoff + self.ttl_seconds)},
        }
        if fingerprint is not None:
            item[schema.FINGERPRINT] = {"S": fingerprint}
        return {
            "Put": {
                "TableName": self.table_name,
                "Item": item,
                # Free: never used, or expired (as ``expired`` says: same cutoff).
                "ConditionExpression": "attribute_not_exists(#k) OR #e < :now",
                "ExpressionAttributeNames": {
                    "#k": schema.IDEMPOTENCY_KEY,
                    "#e": schema.EXPIRES_AT,
                },
                "ExpressionAttributeValues": {":now": {"N": str(cutoff)}},
            }
        }

    def read(self, key: str) -> SavedOutcome | None:
        """Return what the save with this key stored, or None (unused, expired)."""
        return self._read(key, live_only=True)

    def repeated(self, key: str) -> RepeatedSaveError:
        """Return the error for a save whose key was used, with the first outcome.

        The outcome is read whether or not the key has expired since: the
        put was refused because the key was live, and the first save's
        outcome is the answer even if a second boundary passed in between.
        """
        first = self._read(key, live_only=False)
        if first is None:  # deleted (by TTL) between the write and this read
            first = SavedOutcome(key=key, events=(), positions=None)
        return RepeatedSaveError(
            f"Idempotency key {key!r} was used by an earlier save: nothing was "
            "written this time (the command was applied once, before).",
            first,
        )

    def _read(self, key: str, *, live_only: bool) -> SavedOutcome | None:
        self._ensure()
        response = self.connection.call(
            "get_item",
            TableName=self.table_name,
            Key=to_attributes({schema.IDEMPOTENCY_KEY: key}),
            ConsistentRead=True,
        )
        if "Item" not in response:
            return None
        item = from_attributes(response["Item"])
        if live_only and expired(int(item[schema.EXPIRES_AT]), self.clock()):
            return None
        outcome = json.loads(item[schema.OUTCOME])
        positions = outcome.get("positions")
        return SavedOutcome(
            key=key,
            events=tuple((str(a), int(v)) for a, v in outcome["events"]),
            positions=None if positions is None else tuple(positions),
            fingerprint=item.get(schema.FINGERPRINT),
        )
