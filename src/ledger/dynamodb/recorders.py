"""``eventsourcing`` recorders that store events in DynamoDB.

Costs, per call (``n`` events of at most 1 KB each; see :mod:`.schema`):

* ``DynamoDBAggregateRecorder.insert_events``: one event is one conditional
  ``PutItem`` (1 round trip, 1 WCU); several are one ``TransactWriteItems``
  (1 round trip, 2 WCU per event).
* ``DynamoDBApplicationRecorder.insert_events``: one ``TransactWriteItems`` with
  the events, the save's notification batch and the sequence update
  (1 round trip when this process holds the latest position, which it learns
  from its own saves and from the failed condition otherwise; 2 WCU per event
  plus 2 per KB of the batch plus 2 for the sequence item).
* ``select_events``: one strongly consistent ``Query`` per 1 MB of events.
* ``select_notifications``: one ``GetItem`` of the sequence item plus one
  ``Query`` per 1 MB of notification batches.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from ledger.dynamodb import schema
from ledger.dynamodb.batches import BatchEntry, decode_batch, encode_batch
from ledger.dynamodb.client import (
    CONDITION_FAILED,
    THROTTLED_REASONS,
    TRANSACTION_CONFLICT,
    DynamoDBConnection,
    TransactionCancelledError,
    TransactionConflictError,
)
from ledger.dynamodb.limits import (
    MAX_ITEM_BYTES,
    MAX_TRANSACTION_ACTIONS,
    check_item_size,
    check_transaction,
    item_size,
)
from ledger.dynamodb.tables import ensure_table

OriginatorIDType = Literal["uuid", "text"]

logger = logging.getLogger("ledger.dynamodb")
"""Structured records (``extra=``): aggregate ids, versions, positions; never
event state or credentials."""

_NOT_EXISTS = "attribute_not_exists(#key)"
"""Condition on every put: no item has this key yet (nothing is overwritten)."""
_EVENT_KEY_NAME = {"#key": schema.VERSION}
_BATCH_KEY_NAME = {"#key": schema.POSITION}
_SEQUENCE_KEY = {
    schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
    schema.POSITION: {"N": "0"},
}
_MAX_SEQUENCE_ATTEMPTS = 200
"""Attempts at a save that loses only the race for the sequence item."""
_MAX_BATCH_GET_KEYS = 100


def _encode_id(originator_id: UUID | str) -> str:
    return str(originator_id)


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

    def _decode_id(self, originator_id: str) -> UUID | str:
        return (
            UUID(originator_id) if self.originator_id_type == "uuid" else originator_id
        )


class DynamoDBAggregateRecorder(DynamoDBRecorder, AggregateRecorder):
    """Stores one item per event, keyed by aggregate id and version.

    Used for snapshots, and for events of applications that need no
    application sequence.
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

    def create_table(self) -> None:
        """Create the events table if it does not exist, and wait until active."""
        ensure_table(
            self.connection,
            schema.stream_table_definition(
                self.events_table_name, with_stream=self.with_stream
            ),
        )

    # Writing -----------------------------------------------------------------

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write events atomically; raise ``IntegrityError`` if any version exists."""
        if not stored_events:
            return None
        self._check_unique(stored_events)
        items = [self._event_item(event) for event in stored_events]
        if len(items) == 1:
            self._put_one(items[0], stored_events[0])
        else:
            actions = [self._put_action(item) for item in items]
            self._transact(actions, stored_events)
        return None

    @staticmethod
    def _check_unique(stored_events: Sequence[StoredEvent]) -> None:
        # DynamoDB Local does not always reject one item twice in a transaction,
        # and AWS rejects it as a validation error, not a conflict: check here.
        keys = {(str(e.originator_id), e.originator_version) for e in stored_events}
        if len(keys) < len(stored_events):
            raise IntegrityError(
                "The events to save repeat an aggregate version; each "
                "(aggregate id, version) can be stored once. Nothing was written."
            )

    def _event_item(
        self, event: StoredEvent, position: int | None = None
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            schema.AGGREGATE_ID: {"S": _encode_id(event.originator_id)},
            schema.VERSION: {"N": str(event.originator_version)},
            schema.TOPIC: {"S": event.topic},
            schema.STATE: {"B": event.state},
        }
        if position is not None:
            item[schema.POSITION] = {"N": str(position)}
        check_item_size(
            item_size(item),
            f"Event {event.topic} of aggregate {event.originator_id} "
            f"at version {event.originator_version}",
        )
        return item

    def _put_action(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.events_table_name,
                "Item": item,
                "ConditionExpression": _NOT_EXISTS,
                "ExpressionAttributeNames": _EVENT_KEY_NAME,
            }
        }

    def _put_one(self, item: dict[str, Any], event: StoredEvent) -> None:
        try:
            self.connection.call(
                "put_item",
                TableName=self.events_table_name,
                Item=item,
                ConditionExpression=_NOT_EXISTS,
                ExpressionAttributeNames=_EVENT_KEY_NAME,
            )
        except IntegrityError as error:
            raise self._conflict([event]) from error

    def _transact(
        self,
        actions: list[dict[str, Any]],
        stored_events: Sequence[StoredEvent],
        race_indices: frozenset[int] = frozenset(),
    ) -> TransactionConflictError | None:
        """Run one transaction, retrying transient cancellations.

        Returns the conflict if the only failed conditions were those of the
        actions at ``race_indices`` (the application sequence: the caller
        retries at the position it learns); raises ``IntegrityError`` for any
        other failed condition.
        """
        check_transaction(
            len(actions),
            sum(item_size(next(iter(a.values())).get("Item", {})) for a in actions),
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
                if failed and failed <= race_indices:
                    return error
                raise self._conflict(stored_events, error) from error
            except TransactionCancelledError as error:
                codes = {r["Code"] for r in error.reasons}
                retryable = TRANSACTION_CONFLICT in codes or codes & THROTTLED_REASONS
                attempt += 1
                if not retryable or attempt >= _MAX_SEQUENCE_ATTEMPTS:
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
        names = {"#a": schema.AGGREGATE_ID}
        values: dict[str, Any] = {":a": {"S": _encode_id(originator_id)}}
        condition = "#a = :a"
        if gt is not None and lte is not None:
            if gt >= lte:
                return []
            condition += " AND #v BETWEEN :lo AND :hi"
            values[":lo"] = {"N": str(gt + 1)}
            values[":hi"] = {"N": str(lte)}
        elif gt is not None:
            condition += " AND #v > :lo"
            values[":lo"] = {"N": str(gt)}
        elif lte is not None:
            condition += " AND #v <= :hi"
            values[":hi"] = {"N": str(lte)}
        if gt is not None or lte is not None:
            names["#v"] = schema.VERSION
        params: dict[str, Any] = {
            "TableName": self.events_table_name,
            "KeyConditionExpression": condition,
            # No projection: DynamoDB charges for whole items anyway, and whole
            # items let the meter estimate read units exactly.
            # (#v is named only when a version condition uses it.)
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
            "ScanIndexForward": not desc,
        }
        if isinstance(originator_id, str) and self.originator_id_type == "uuid":
            originator_id = UUID(originator_id)
        events: list[StoredEvent] = []
        while True:
            if limit is not None:
                params["Limit"] = limit - len(events)
            response = self.connection.call("query", **params)
            events.extend(
                StoredEvent(
                    originator_id=originator_id,
                    originator_version=int(item[schema.VERSION]["N"]),
                    topic=item[schema.TOPIC]["S"],
                    state=item[schema.STATE]["B"],
                )
                for item in response["Items"]
            )
            last_key = response.get("LastEvaluatedKey")
            if last_key is None or (limit is not None and len(events) >= limit):
                return events
            params["ExclusiveStartKey"] = last_key


class DynamoDBApplicationRecorder(DynamoDBAggregateRecorder, ApplicationRecorder):
    """Stores events and a gap-free, totally ordered application sequence.

    Each save is one transaction: the events (conditional puts), a
    notification batch item with their positions, and the sequence item
    updated from the expected last position to the new one. Two saves can
    never take the same positions, a failed save takes none, and position
    ``n + 1`` commits only after ``n``. Readers read the sequence item first
    and then only positions up to it, so they never see ``n + 1`` before ``n``.

    Saves from one process are serialised by a lock (they would serialise on
    the sequence item anyway); saves from several processes race on the
    sequence item's condition, and the loser retries at once with the
    position DynamoDB returns to it. That one item is the sequence's ceiling:
    measured in ``benchmarks/``; projections fed by DynamoDB Streams do not
    need the sequence at all.
    """

    def __init__(
        self,
        connection: DynamoDBConnection,
        events_table_name: str,
        notifications_table_name: str,
        *,
        originator_id_type: OriginatorIDType = "uuid",
        poll_interval: float = 0.1,
        with_stream: bool = True,
    ) -> None:
        super().__init__(
            connection,
            events_table_name,
            originator_id_type=originator_id_type,
            with_stream=with_stream,
        )
        self.notifications_table_name = notifications_table_name
        self.poll_interval = poll_interval
        self._write_lock = threading.Lock()
        self._last_position = 0
        """The last committed position this recorder knows of (a guess: checked)."""
        self._listeners: set[threading.Event] = set()

    def create_table(self) -> None:
        """Create the events and notifications tables if they do not exist."""
        super().create_table()
        ensure_table(
            self.connection,
            schema.notifications_table_definition(self.notifications_table_name),
        )

    # Writing -----------------------------------------------------------------

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write events and their notifications atomically; return the positions."""
        tracking: Tracking | None = kwargs.get("tracking")
        if not stored_events:
            if tracking is not None:
                self._insert_tracking_only(tracking)
            return None
        self._check_unique(stored_events)
        with self._write_lock:
            for _ in range(_MAX_SEQUENCE_ATTEMPTS):
                expected = self._last_position
                actions = self._save_actions(stored_events, expected, tracking)
                batch_index = len(stored_events)
                sequence_index = batch_index + 1
                conflict = self._transact(
                    actions,
                    stored_events,
                    race_indices=frozenset({batch_index, sequence_index}),
                )
                if conflict is None:
                    self._last_position = expected + len(stored_events)
                    break
                self._last_position = self._position_from(conflict, sequence_index)
                logger.info(
                    "lost the race for the application sequence, retrying",
                    extra={"expected": expected, "position": self._last_position},
                )
            else:
                raise OperationalError(
                    f"{self._describe_save(stored_events)}: lost the race for the "
                    f"application sequence {_MAX_SEQUENCE_ATTEMPTS} times. Other "
                    "writers are saving faster than this one can; try again."
                )
        self._notify_listeners()
        logger.debug(
            "saved",
            extra={
                "aggregates": sorted({str(e.originator_id) for e in stored_events}),
                "last_version": stored_events[-1].originator_version,
                "positions": [expected + 1, expected + len(stored_events)],
            },
        )
        return list(range(expected + 1, expected + len(stored_events) + 1))

    def _insert_tracking_only(self, tracking: Tracking) -> None:
        raise NotImplementedError  # pragma: no cover - only process recorders track

    def _tracking_action(self, tracking: Tracking) -> dict[str, Any] | None:
        return None

    def _save_actions(
        self,
        stored_events: Sequence[StoredEvent],
        expected: int,
        tracking: Tracking | None,
    ) -> list[dict[str, Any]]:
        first = expected + 1
        last = expected + len(stored_events)
        actions = [
            self._put_action(self._event_item(event, first + offset))
            for offset, event in enumerate(stored_events)
        ]
        actions.append(
            {
                "Put": {
                    "TableName": self.notifications_table_name,
                    "Item": self._batch_item(stored_events, first, last),
                    "ConditionExpression": _NOT_EXISTS,
                    "ExpressionAttributeNames": _BATCH_KEY_NAME,
                }
            }
        )
        actions.append(self._sequence_action(expected, last))
        tracking_action = self._tracking_action(tracking) if tracking else None
        if tracking_action is not None:
            actions.append(tracking_action)
        return actions

    @staticmethod
    def _batch_item(
        stored_events: Sequence[StoredEvent], first: int, last: int
    ) -> dict[str, Any]:
        def events(*, inline: bool) -> bytes:
            return encode_batch(
                BatchEntry(
                    _encode_id(e.originator_id),
                    e.originator_version,
                    e.topic,
                    e.state if inline else None,
                )
                for e in stored_events
            )

        item: dict[str, Any] = {
            schema.PAGE: {"N": str(schema.page_of(last))},
            schema.POSITION: {"N": str(last)},
            schema.FIRST_POSITION: {"N": str(first)},
            schema.EVENTS: {"B": events(inline=True)},
        }
        if item_size(item) > MAX_ITEM_BYTES:
            # Too big to copy the states: keep pointers; readers fetch the states
            # from the events table. Keeps DynamoDB's own limits the only limits.
            item[schema.EVENTS] = {"B": events(inline=False)}
        return item

    def _sequence_action(self, expected: int, last: int) -> dict[str, Any]:
        values: dict[str, Any] = {":new": {"N": str(last)}}
        if expected == 0:
            condition = "attribute_not_exists(#last)"
        else:
            condition = "#last = :expected"
            values[":expected"] = {"N": str(expected)}
        return {
            "Update": {
                "TableName": self.notifications_table_name,
                "Key": _SEQUENCE_KEY,
                "UpdateExpression": "SET #last = :new",
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#last": schema.LAST_POSITION},
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _position_from(
        self, conflict: TransactionConflictError, sequence_index: int
    ) -> int:
        """Return the sequence position DynamoDB returned with a lost race."""
        reasons = conflict.reasons
        reason = reasons[sequence_index] if len(reasons) > sequence_index else {}
        item = reason.get("Item")
        if item and schema.LAST_POSITION in item:
            return int(item[schema.LAST_POSITION]["N"])
        return self.max_notification_id() or 0

    # Reading -----------------------------------------------------------------

    def max_notification_id(self) -> int | None:
        """Return the last committed position (strongly consistent), or None."""
        response = self.connection.call(
            "get_item",
            TableName=self.notifications_table_name,
            Key=_SEQUENCE_KEY,
            ConsistentRead=True,
        )
        item = response.get("Item")
        if item is None:
            return None
        return int(item[schema.LAST_POSITION]["N"])

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return notifications from ``start`` up to ``stop``, at most ``limit``."""
        last = self.max_notification_id()
        if last is None or limit <= 0:
            return []
        low = 1 if start is None else (start if inclusive_of_start else start + 1)
        low = max(low, 1)
        high = last if stop is None else min(stop, last)
        if low > high:
            return []  # nothing new: an idle poll costs the GetItem only
        notifications: list[Notification] = []
        pointers: list[int] = []
        page = schema.page_of(low)
        # A batch is filed under the page of its LAST position, so the batch
        # holding ``high`` may end, and be filed, up to one save further on.
        last_page = schema.page_of(min(last, high + MAX_TRANSACTION_ACTIONS))
        while page <= last_page and len(notifications) < limit:
            params: dict[str, Any] = {
                "TableName": self.notifications_table_name,
                "KeyConditionExpression": "#p = :p AND #pos >= :low",
                "ExpressionAttributeNames": {
                    "#p": schema.PAGE,
                    "#pos": schema.POSITION,
                },
                "ExpressionAttributeValues": {
                    ":p": {"N": str(page)},
                    ":low": {"N": str(low)},
                },
                "ConsistentRead": True,
                "Limit": limit,
            }
            done = False
            while not done:
                response = self.connection.call("query", **params)
                for batch in response["Items"]:
                    done = self._collect(
                        batch,
                        (low, high, limit),
                        topics,
                        notifications,
                        pointers,
                    )
                    if done:
                        break
                last_key = response.get("LastEvaluatedKey")
                if last_key is None:
                    break
                params["ExclusiveStartKey"] = last_key
            if done:
                break
            page += 1
        if pointers:
            self._fill_states(notifications, pointers)
        return notifications

    def _collect(
        self,
        batch: dict[str, Any],
        bounds: tuple[int, int, int],
        topics: Sequence[str],
        notifications: list[Notification],
        pointers: list[int],
    ) -> bool:
        """Append a batch's wanted notifications; return True when done.

        ``bounds`` is (lowest position, highest position, most notifications).
        """
        low, high, limit = bounds
        position = int(batch[schema.FIRST_POSITION]["N"])
        for aggregate_id, version, topic, state in decode_batch(
            batch[schema.EVENTS]["B"]
        ):
            if position > high:
                return True
            if position >= low and (not topics or topic in topics):
                if state is None:
                    pointers.append(len(notifications))
                notifications.append(
                    Notification(
                        id=position,
                        originator_id=self._decode_id(aggregate_id),
                        originator_version=version,
                        topic=topic,
                        state=b"" if state is None else state,
                    )
                )
                if len(notifications) >= limit:
                    return True
            position += 1
        return False

    def _fill_states(
        self, notifications: list[Notification], pointers: list[int]
    ) -> None:
        """Fetch the states of notifications stored as pointers (big batches)."""
        for offset in range(0, len(pointers), _MAX_BATCH_GET_KEYS):
            chunk = pointers[offset : offset + _MAX_BATCH_GET_KEYS]
            wanted = {
                (
                    _encode_id(notifications[i].originator_id),
                    notifications[i].originator_version,
                ): i
                for i in chunk
            }
            keys = [
                {schema.AGGREGATE_ID: {"S": a}, schema.VERSION: {"N": str(v)}}
                for a, v in wanted
            ]
            request: dict[str, Any] = {
                self.events_table_name: {"Keys": keys, "ConsistentRead": True}
            }
            attempt = 0
            while request:
                response = self.connection.call("batch_get_item", RequestItems=request)
                for item in response["Responses"].get(self.events_table_name, []):
                    key = (
                        item[schema.AGGREGATE_ID]["S"],
                        int(item[schema.VERSION]["N"]),
                    )
                    index = wanted[key]
                    old = notifications[index]
                    notifications[index] = Notification(
                        id=old.id,
                        originator_id=old.originator_id,
                        originator_version=old.originator_version,
                        topic=old.topic,
                        state=item[schema.STATE]["B"],
                    )
                request = response.get("UnprocessedKeys") or {}
                if request:
                    attempt += 1
                    _backoff(attempt)

    # Subscribing ---------------------------------------------------------------

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Iterate notifications after ``gt``, blocking for new ones (polls)."""
        return DynamoDBSubscription(recorder=self, gt=gt, topics=topics)

    def listen(self, event: threading.Event) -> None:
        """Have ``event`` set whenever this recorder commits a save."""
        self._listeners.add(event)

    def unlisten(self, event: threading.Event) -> None:
        """Stop setting ``event`` on saves."""
        self._listeners.discard(event)

    def _notify_listeners(self) -> None:
        for listener in list(self._listeners):
            listener.set()


class DynamoDBSubscription(ListenNotifySubscription[DynamoDBApplicationRecorder]):
    """A blocking subscription to a DynamoDB application sequence.

    DynamoDB cannot push: the subscription polls every ``poll_interval``
    seconds, and is woken at once by saves made through the same recorder.
    """

    def __init__(
        self,
        recorder: DynamoDBApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._poll_interval = recorder.poll_interval
        recorder.listen(self._has_been_notified)

    def _loop_on_pull(self) -> None:
        # As the base class's loop, but waking on a timer too: saves made by
        # other processes notify nobody here.
        try:
            self._pull()
            while not self._has_been_stopped:
                self._has_been_notified.wait(timeout=self._poll_interval)
                self._pull()
        except BaseException as error:  # noqa: BLE001 - re-raised by __next__
            if self._thread_error is None:
                self._thread_error = error
            self.stop()

    def stop(self) -> None:
        """Stop the subscription."""
        super().stop()
        self._recorder.unlisten(self._has_been_notified)


class DynamoDBTrackingRecorder(DynamoDBRecorder, TrackingRecorder):
    """Records, per upstream application, the last notification id processed."""

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

    def _tracking_update(self, tracking: Tracking) -> dict[str, Any]:
        return {
            "TableName": self.tracking_table_name,
            "Key": {schema.APPLICATION_NAME: {"S": tracking.application_name}},
            "UpdateExpression": "SET #n = :n",
            # Only forward: a position at or below the recorded one is a replay.
            "ConditionExpression": "attribute_not_exists(#n) OR #n < :n",
            "ExpressionAttributeNames": {"#n": schema.NOTIFICATION_ID},
            "ExpressionAttributeValues": {":n": {"N": str(tracking.notification_id)}},
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


class DynamoDBProcessRecorder(
    DynamoDBTrackingRecorder, DynamoDBApplicationRecorder, ProcessRecorder
):
    """An application recorder that also records tracking, in the same transaction."""

    def __init__(
        self,
        connection: DynamoDBConnection,
        events_table_name: str,
        notifications_table_name: str,
        tracking_table_name: str,
        *,
        originator_id_type: OriginatorIDType = "uuid",
        poll_interval: float = 0.1,
        with_stream: bool = True,
    ) -> None:
        DynamoDBApplicationRecorder.__init__(
            self,
            connection,
            events_table_name,
            notifications_table_name,
            originator_id_type=originator_id_type,
            poll_interval=poll_interval,
            with_stream=with_stream,
        )
        self.tracking_table_name = tracking_table_name

    def create_table(self) -> None:
        """Create the events, notifications and tracking tables if missing."""
        DynamoDBApplicationRecorder.create_table(self)
        DynamoDBTrackingRecorder.create_table(self)

    def _insert_tracking_only(self, tracking: Tracking) -> None:
        self.insert_tracking(tracking)

    def _tracking_action(self, tracking: Tracking) -> dict[str, Any] | None:
        return {"Update": self._tracking_update(tracking)}
