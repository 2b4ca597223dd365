"""The recorders every ordering shares: events by aggregate, and tracking.

(Over 400 lines as one concept: storing and reading an aggregate's events,
with the size checks and the recognition of a retried put's own write, which
both orderings share.)

An application's recorders depend on ``DYNAMODB_ORDERING`` (see
:class:`~ledger.dynamodb.factory.DynamoDBFactory`): ``sequence`` keeps a
gap-free application sequence (:mod:`.sequence_recorders`), ``stream`` keeps
none and leaves ordering to the events table's DynamoDB stream
(:mod:`.stream_recorders`). Both build on the classes here.

Costs, per call (``n`` events of at most 1 KB each; see :mod:`.schema`):

* ``DynamoDBAggregateRecorder.insert_events`` (snapshots, and events in
  ``stream`` ordering): one event is one conditional ``PutItem`` (1 round trip,
  1 WCU); several are one ``TransactWriteItems`` (1 round trip, 2 WCU per
  event), at most 100 events per save.
* ``DynamoDBApplicationRecorder.insert_events`` (``sequence`` ordering): one
  ``TransactWriteItems`` with the events, the save's notification batch and
  the sequence update (1 round trip when this process holds the latest
  position, which it learns from its own saves and from the failed condition
  otherwise; 2 WCU per event plus 2 per KB of the batch plus 2 for the
  sequence item), at most 98 events per save.
* Process recorders add the tracking update to the same transaction (2 WCU);
  in ``stream`` ordering a save of one event with tracking is therefore a
  transaction of 2 actions (1 round trip, 4 WCU).
* ``select_events``: one strongly consistent ``Query`` per 1 MB of events.
* ``select_notifications`` (``sequence`` ordering): one ``GetItem`` of the
  sequence item plus one ``Query`` (per 1 MB, and per notifications page
  crossed) whose key range reaches only the batches holding the ``limit``
  positions wanted and at most one batch's worth past them; with ``topics``,
  one more such ``Query`` per range twice as wide until ``limit`` are found.
  In ``stream`` ordering it raises ``SequenceDisabledError``.
* ``insert_tracking``, ``max_tracking_id``: one ``UpdateItem`` / ``GetItem``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    DataError,
    IntegrityError,
    ProgrammingError,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)

from ledger.dynamodb import schema
from ledger.dynamodb.client import (
    CONDITION_FAILED,
    THROTTLED_REASONS,
    TRANSACTION_CONFLICT,
    DynamoDBConnection,
    TransactionCancelledError,
    TransactionConflictError,
    was_retried,
)
from ledger.dynamodb.idempotency import IdempotencyKeys, SavedOutcome
from ledger.dynamodb.limits import (
    MAX_ITEM_BYTES,
    check_item_size,
    check_transaction,
    item_size,
)
from ledger.dynamodb.tables import ensure_table

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        QueryInputTypeDef,
        TransactWriteItemTypeDef,
        UpdateTypeDef,
    )

    Item: TypeAlias = dict[str, AttributeValueTypeDef]
    """An item (or key) as ledger writes and reads it: attribute values in
    DynamoDB's wire form (``{"N": "1"}``)."""

OriginatorIDType = Literal["uuid", "text"]
Ordering = Literal["sequence", "stream", "indexed"]
"""How an application's saves are ordered: by a gap-free application sequence
(``sequence``) or only per aggregate, as the events table's stream delivers
them (``stream``), or saved as ``stream`` and appended to the sequence later by
an indexer (``indexed``). Application recorders say which as their ``ordering``."""

logger = logging.getLogger("ledger.dynamodb")
"""Structured records (``extra=``): aggregate ids, versions, positions; never
event state or credentials."""

NOT_EXISTS: Final = "attribute_not_exists(#key)"
"""Condition on every put: no item has this key yet (nothing is overwritten)."""
EVENT_NOT_EXISTS: Final = f"attribute_not_exists({schema.VERSION})"
"""``NOT_EXISTS`` for an event's put, naming the key attribute in place.

Neither of the events table's key attributes is a DynamoDB reserved word, so
event puts and queries name them directly: an ``ExpressionAttributeNames``
map costs botocore about 15 to 25 microseconds a call to validate and
serialise, on every save and every load."""
_EVENT_ITEM_NAMES_BYTES: Final = sum(
    len(name.encode())
    for name in (
        schema.AGGREGATE_ID,
        schema.VERSION,
        schema.TOPIC,
        schema.STATE,
        schema.POSITION,
    )
)
"""The bytes of an event item's attribute names (its position's included)."""
MAX_SAVE_ATTEMPTS: Final = 200
"""Attempts at a save that loses only a race: a transaction cancelled by
another writer of the same items, or the race for the sequence item."""


def encode_id(originator_id: UUID | str) -> str:
    """Return an aggregate id as stored: its canonical text form."""
    return str(originator_id)


def _put_size(action: TransactWriteItemTypeDef) -> int:
    """Return the size of the item a transaction action puts (0 for others)."""
    if "Put" not in action:
        return 0
    # ledger puts items in wire form only (the stubs also allow Python values).
    return item_size(cast("Mapping[str, AttributeValueTypeDef]", action["Put"]["Item"]))


def _backoff(attempt: int) -> None:
    """Sleep with full jitter before retrying a transaction conflict."""
    time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))  # noqa: S311


class DynamoDBRecorder:
    """Base of ledger's recorders: a connection and the originator id type."""

    def __init__(
        self,
        connection: DynamoDBConnection,
        *,
        originator_id_type: OriginatorIDType = "uuid",
    ) -> None:
        self.connection = connection
        self.originator_id_type = originator_id_type

    def _check_id(self, originator_id: UUID | str) -> None:
        """Refuse, before writing, an id that could not be read back as stored."""
        if self.originator_id_type != "uuid" or isinstance(originator_id, UUID):
            return
        try:
            UUID(str(originator_id))
        except ValueError:
            raise DataError(
                f"Aggregate id {originator_id!r} is not a UUID, but "
                "ORIGINATOR_ID_TYPE is 'uuid': it could not be read back. Use "
                "UUIDs, or set ORIGINATOR_ID_TYPE=text. Nothing was written."
            ) from None

    def _decode_id(self, originator_id: str) -> UUID | str:
        return (
            UUID(originator_id) if self.originator_id_type == "uuid" else originator_id
        )


class DynamoDBAggregateRecorder(DynamoDBRecorder, AggregateRecorder):
    """Stores one item per event, keyed by aggregate id and version.

    Used for snapshots, and (as the base of the ``stream`` ordering's
    recorders) for events of applications that keep no application sequence.
    """

    def __init__(
        self,
        connection: DynamoDBConnection,
        events_table_name: str,
        *,
        originator_id_type: OriginatorIDType = "uuid",
        with_stream: bool = False,
    ) -> None:
        super().__init__(connection, originator_id_type=originator_id_type)
        self.events_table_name = events_table_name
        self.with_stream = with_stream
        self.idempotency: IdempotencyKeys | None = None
        """The application's idempotency keys (set by the factory on
        application and process recorders); None: saves take no keys."""

    def create_table(self) -> None:
        """Create the events table if it does not exist, and wait until active."""
        ensure_table(
            self.connection,
            schema.stream_table_definition(
                self.events_table_name, with_stream=self.with_stream
            ),
        )

    def saved_outcome(self, idempotency_key: str) -> SavedOutcome | None:
        """Return what the save with this idempotency key stored, or None."""
        return self._keys().read(idempotency_key)

    def _keys(self) -> IdempotencyKeys:
        if self.idempotency is None:
            raise ProgrammingError(
                f"The recorder of {self.events_table_name} takes no idempotency "
                "keys: they are for application and process recorders made by "
                "ledger's factory (PERSISTENCE_MODULE=ledger.dynamodb)."
            )
        return self.idempotency

    def _key_action(
        self,
        idempotency_key: str | None,
        stored_events: Sequence[StoredEvent],
        positions: Sequence[int] | None = None,
        fingerprint: str | None = None,
    ) -> list[TransactWriteItemTypeDef]:
        """Return the action storing an idempotency key (none without a key)."""
        if idempotency_key is None:
            return []
        keys = self._keys()
        keys.check(idempotency_key)
        return [keys.put_action(idempotency_key, stored_events, positions, fingerprint)]

    # Writing -----------------------------------------------------------------

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write events atomically; raise ``IntegrityError`` if any version exists.

        ``idempotency_key=`` (keyword): store the key in the same transaction;
        :class:`RepeatedSaveError` if it was used before (nothing written).
        ``idempotency_fingerprint=`` (keyword): the command, stored with the key.
        """
        self._write(
            stored_events,
            idempotency_key=kwargs.get("idempotency_key"),
            idempotency_fingerprint=kwargs.get("idempotency_fingerprint"),
        )
        return None

    def _write(
        self,
        stored_events: Sequence[StoredEvent],
        other_actions: Sequence[TransactWriteItemTypeDef] = (),
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> None:
        """Write events, and any other actions, all or nothing, in one request.

        One event alone is one conditional ``PutItem``; anything more is one
        transaction, the events' puts first, then ``other_actions``, then the
        idempotency key's put (raising :class:`RepeatedSaveError` if the key
        was used before).
        """
        if len(stored_events) == 1 and not other_actions and idempotency_key is None:
            # Most saves: one event, one PutItem, straight there without the
            # checks only a transaction needs (each a call on every save).
            self._put_one(self._event_items(stored_events)[0], stored_events[0])
            return
        if not stored_events and not other_actions:
            return
        self._check_unique(stored_events)
        items = self._event_items(stored_events)
        key_actions = self._key_action(
            idempotency_key, stored_events, fingerprint=idempotency_fingerprint
        )
        actions = [
            *(self._put_action(item) for item in items),
            *other_actions,
            *key_actions,
        ]
        key = (len(actions) - 1, idempotency_key) if idempotency_key else None
        self._transact(actions, stored_events, key=key)

    @staticmethod
    def _check_unique(stored_events: Sequence[StoredEvent]) -> None:
        # DynamoDB Local does not always reject one item twice in a transaction,
        # and AWS rejects it as a validation error, not a conflict: check here.
        if len(stored_events) < 2:  # one event repeats nothing (most saves)
            return
        keys = {(str(e.originator_id), e.originator_version) for e in stored_events}
        if len(keys) < len(stored_events):
            raise IntegrityError(
                "The events to save repeat an aggregate version; each "
                "(aggregate id, version) can be stored once. Nothing was written."
            )

    def _event_items(self, stored_events: Sequence[StoredEvent]) -> list[Item]:
        """Return the items of one save's events (orderings may mark them)."""
        return [self._event_item(event) for event in stored_events]

    def _event_item(self, event: StoredEvent, position: int | None = None) -> Item:
        # Written by hand, not with boto3's TypeSerializer: for ten event
        # items, 18 microseconds here against its 74, on every save.
        originator_id = event.originator_id
        if not isinstance(originator_id, UUID):  # a UUID is always readable back
            self._check_id(originator_id)
        aggregate_id = str(originator_id)  # encode_id, without its call
        version = str(event.originator_version)
        item: Item = {
            schema.AGGREGATE_ID: {"S": aggregate_id},
            schema.VERSION: {"N": version},
            schema.TOPIC: {"S": event.topic},
            schema.STATE: {"B": event.state},
        }
        numbers = len(version) + 1  # a number's size is at most its length + 1
        if position is not None:
            item[schema.POSITION] = {"N": str(position)}
            numbers += len(item[schema.POSITION]["N"]) + 1
        # Sized exactly only when a bound of its size (at most 4 bytes of
        # UTF-8 a character) passes the limit: every save would pay for
        # sizing each item, and few come near it.
        bound = 4 * (len(aggregate_id) + len(event.topic)) + len(event.state)
        if bound + numbers + _EVENT_ITEM_NAMES_BYTES <= MAX_ITEM_BYTES:
            return item
        size = item_size(item)
        if size > MAX_ITEM_BYTES:  # described only then: formatting costs every save
            check_item_size(
                size,
                f"Event {event.topic} of aggregate {event.originator_id} "
                f"at version {event.originator_version}",
            )
        return item

    def _put_action(self, item: Item) -> TransactWriteItemTypeDef:
        return {
            "Put": {
                "TableName": self.events_table_name,
                "Item": item,
                "ConditionExpression": EVENT_NOT_EXISTS,
            }
        }

    def _put_one(self, item: Item, event: StoredEvent) -> None:
        try:
            self.connection.call(
                "put_item",
                TableName=self.events_table_name,
                Item=item,
                ConditionExpression=EVENT_NOT_EXISTS,
            )
        except IntegrityError as error:
            if was_retried(error) and self._is_stored(item):
                # botocore retried a put whose first answer was lost, and that
                # first attempt had been applied: the event is ours, saved once.
                logger.info(
                    "an earlier attempt of this save had been applied",
                    extra={
                        "aggregate": item[schema.AGGREGATE_ID]["S"],
                        "version": event.originator_version,
                    },
                )
                return
            raise self._conflict([event]) from error

    def _is_stored(self, item: Item) -> bool:
        """Return True if exactly this event item is in the table already.

        An event's state holds its timestamp and data, so another writer's
        event at the same version is never byte for byte the same.
        """
        response = self.connection.call(
            "get_item",
            TableName=self.events_table_name,
            Key={k: item[k] for k in (schema.AGGREGATE_ID, schema.VERSION)},
            ConsistentRead=True,
        )
        stored = response.get("Item") or {}
        return all(
            stored.get(name) == item[name] for name in (schema.TOPIC, schema.STATE)
        )

    def _transact(
        self,
        actions: list[TransactWriteItemTypeDef],
        stored_events: Sequence[StoredEvent],
        race_indices: frozenset[int] = frozenset(),
        key: tuple[int, str] | None = None,
    ) -> TransactionConflictError | None:
        """Run one transaction, retrying transient cancellations.

        Returns the conflict if the only failed conditions were those of the
        actions at ``race_indices`` (the application sequence: the caller
        retries at the position it learns); raises :class:`RepeatedSaveError`
        if the idempotency key's put (``key``: its index and the key) failed,
        and ``IntegrityError`` for any other failed condition.
        """
        check_transaction(
            len(actions),
            sum(_put_size(action) for action in actions),
            self._describe_save(stored_events),
        )
        attempt = 0
        while True:
            try:
                self.connection.call("transact_write_items", TransactItems=actions)
            except TransactionConflictError as error:
                failed = {
                    i
                    for i, r in enumerate(error.reasons)
                    if r["Code"] == CONDITION_FAILED
                }
                if key is not None and key[0] in failed:
                    raise self._keys().repeated(key[1]) from error
                if failed and failed <= race_indices:
                    return error
                raise self._conflict(stored_events, error) from error
            except TransactionCancelledError as error:
                codes = {r["Code"] for r in error.reasons}
                retryable = TRANSACTION_CONFLICT in codes or codes & THROTTLED_REASONS
                attempt += 1
                if not retryable or attempt >= MAX_SAVE_ATTEMPTS:
                    raise
                logger.info(
                    "transaction cancelled, retrying",
                    extra={"reasons": sorted(codes), "attempt": attempt},
                )
                _backoff(attempt)
            else:
                return None

    @staticmethod
    def _describe_save(stored_events: Sequence[StoredEvent]) -> str:
        ids = sorted({str(e.originator_id) for e in stored_events})
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        return f"Saving {len(stored_events)} events of aggregate(s) {shown}"

    @staticmethod
    def _conflict(
        stored_events: Sequence[StoredEvent],
        error: TransactionConflictError | None = None,
    ) -> IntegrityError:
        """Return the error for a failed condition, naming what conflicted."""
        if error is None:
            conflicted = list(stored_events)
        else:
            conflicted = [
                e
                for e, r in zip(stored_events, error.reasons, strict=False)
                if r.get("Code") == CONDITION_FAILED
            ]
        if not conflicted:
            return IntegrityError(
                "The tracking position of this save was already recorded: the "
                "upstream event was processed before. Nothing was written."
            )
        first = conflicted[0]
        return IntegrityError(
            f"Aggregate {first.originator_id} already has version "
            f"{first.originator_version}: another writer saved it first. Nothing "
            "was written: reload the aggregate and retry the command."
        )

    # Reading -----------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Read an aggregate's events (strongly consistent), paginating as needed."""
        parts = self.select_event_parts(
            originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )
        if isinstance(originator_id, str) and self.originator_id_type == "uuid":
            originator_id = UUID(originator_id)
        return [
            StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=state,
            )
            for version, topic, state in parts
        ]

    def select_event_parts(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[tuple[int, str, bytes]]:
        """Read an aggregate's events as ``select_events`` does, as parts.

        Each event is its ``(version, topic, state)``, for a mapper that
        reads them without a ``StoredEvent`` (see
        :meth:`ledger.persistence.PydanticMapper.event_from_parts`).
        """
        values: Item = {":a": {"S": encode_id(originator_id)}}
        # The key attributes are named in place (see EVENT_NOT_EXISTS).
        condition = f"{schema.AGGREGATE_ID} = :a"
        if gt is not None and lte is not None:
            if gt >= lte:
                return []
            condition += f" AND {schema.VERSION} BETWEEN :lo AND :hi"
            values[":lo"] = {"N": str(gt + 1)}
            values[":hi"] = {"N": str(lte)}
        elif gt is not None:
            condition += f" AND {schema.VERSION} > :lo"
            values[":lo"] = {"N": str(gt)}
        elif lte is not None:
            condition += f" AND {schema.VERSION} <= :hi"
            values[":hi"] = {"N": str(lte)}
        params: QueryInputTypeDef = {
            "TableName": self.events_table_name,
            "KeyConditionExpression": condition,
            # No projection: DynamoDB charges for whole items anyway, and whole
            # items let the meter estimate read units exactly.
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        if desc:  # ascending is DynamoDB's default: sent only when not wanted
            params["ScanIndexForward"] = False
        events: list[tuple[int, str, bytes]] = []
        while True:
            if limit is not None:
                params["Limit"] = limit - len(events)
            response = self.connection.call("query", **params)
            # Read by hand, not with boto3's TypeDeserializer: for ten event
            # items, 9.6 microseconds here against its 42 (it makes a Decimal
            # of each version and a Binary of each state, to be undone).
            events.extend(
                (
                    int(item[schema.VERSION]["N"]),
                    item[schema.TOPIC]["S"],
                    item[schema.STATE]["B"],
                )
                for item in response["Items"]
            )
            last_key = response.get("LastEvaluatedKey")
            if last_key is None or (limit is not None and len(events) >= limit):
                return events
            params["ExclusiveStartKey"] = last_key


@dataclass(frozen=True)
class TrackingAfter(Tracking):
    """A position to record only over ``after``, the one recorded before it.

    For a consumer of a total order that commits a page at a time: its
    commit holds the tracking of the page's last event, and must not land
    over part of the page committed by another runner (only forward would
    let a runner whose page ends later apply those events again).
    """

    after: int = 0
    """The position the commit's first event follows: what must be recorded."""


def tracking_condition(tracking: Tracking) -> tuple[str, dict[str, Any]]:
    """Return the condition on a tracking item's ``#n`` (and its values).

    A :class:`TrackingAfter` is recorded only over its ``after``; any other
    tracking only forward (a position at or below the recorded one is a
    replay, as eventsourcing's process applications expect).
    """
    after = getattr(tracking, "after", None)
    if after is None:
        return "attribute_not_exists(#n) OR #n < :n", {}
    values = {":after": {"N": str(after)}}
    if after == 0:
        return "attribute_not_exists(#n) OR #n = :after", values
    return "#n = :after", values


class DynamoDBTrackingRecorder(DynamoDBRecorder, TrackingRecorder):
    """Records, per upstream application, the last notification id processed.

    The key is the ``Tracking``'s ``application_name`` as given; the
    ``stream`` ordering's process recorder tracks per upstream aggregate by
    giving ``"{application}#{aggregate id}"`` and the aggregate's version (see
    :func:`ledger.dynamodb.stream_recorders.aggregate_tracking`).
    """

    def __init__(
        self,
        connection: DynamoDBConnection,
        tracking_table_name: str,
        *,
        originator_id_type: OriginatorIDType = "uuid",
    ) -> None:
        super().__init__(connection, originator_id_type=originator_id_type)
        self.tracking_table_name = tracking_table_name

    def create_table(self) -> None:
        """Create the tracking table if it does not exist."""
        ensure_table(
            self.connection,
            schema.tracking_table_definition(self.tracking_table_name),
        )

    def _tracking_update(self, tracking: Tracking) -> UpdateTypeDef:
        condition, values = tracking_condition(tracking)
        return {
            "TableName": self.tracking_table_name,
            "Key": {schema.APPLICATION_NAME: {"S": tracking.application_name}},
            "UpdateExpression": "SET #n = :n",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#n": schema.NOTIFICATION_ID},
            "ExpressionAttributeValues": {
                ":n": {"N": str(tracking.notification_id)},
                **values,
            },
        }

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record a position; ``IntegrityError`` if it is not past the recorded one."""
        try:
            self.connection.call("update_item", **self._tracking_update(tracking))
        except IntegrityError as error:
            raise IntegrityError(
                f"Notification {tracking.notification_id} of application "
                f"{tracking.application_name!r} is not after the position already "
                "recorded: it was processed before. Nothing was written."
            ) from error

    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the last position recorded for an upstream application."""
        response = self.connection.call(
            "get_item",
            TableName=self.tracking_table_name,
            Key={schema.APPLICATION_NAME: {"S": application_name}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return None if item is None else int(item[schema.NOTIFICATION_ID]["N"])
