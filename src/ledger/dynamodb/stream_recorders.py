"""The ``stream`` ordering: events only, no application sequence.

Selected by ``DYNAMODB_ORDERING=stream``. A save writes its events and
nothing else: no notification batch, no sequence item for every writer to
race on. One event is one conditional ``PutItem`` (1 round trip, 1 WCU per
KB); several events, of one aggregate or several, are one
``TransactWriteItems`` of their puts (1 round trip, 2 WCU per KB each, at most
100 events). Writers of different aggregates never meet, so throughput grows
with the table's partitions.

What is given up is the application sequence: ``select_notifications``,
``max_notification_id`` and ``subscribe`` raise :class:`SequenceDisabledError`.
Events are ordered per aggregate (by version) only, which is the order the
events table's DynamoDB stream delivers them in: projections read that stream
(:mod:`ledger.projections.streams`) and are rebuilt from the events table.

Process applications track per upstream *aggregate*, since the stream has
no global position: see :func:`aggregate_tracking`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    Notification,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
)

from ledger.dynamodb import schema
from ledger.dynamodb.client import DynamoDBConnection
from ledger.dynamodb.recorders import (
    DynamoDBAggregateRecorder,
    DynamoDBTrackingRecorder,
    Ordering,
    OriginatorIDType,
    encode_id,
)

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef


class SequenceDisabledError(ProgrammingError):
    """The application sequence was asked for, and ``DYNAMODB_ORDERING=stream``."""


def aggregate_tracking(
    upstream_application: str, originator_id: UUID | str, originator_version: int
) -> Tracking:
    """Return the tracking of one processed upstream event, in ``stream`` ordering.

    The stream feed has no global position, so a process recorder in
    ``stream`` ordering tracks each upstream aggregate on its own: the
    tracking's ``application_name`` is ``"{upstream application}#{aggregate
    id}"`` and its ``notification_id`` is the aggregate's version. Versions
    only go forward, so a repeated delivery is refused (``IntegrityError``),
    and ``max_tracking_id("{application}#{aggregate id}")`` returns the last
    version of that aggregate processed.
    """
    return Tracking(
        application_name=(
            f"{upstream_application}{schema.TRACKING_KEY_SEPARATOR}"
            f"{encode_id(originator_id)}"
        ),
        notification_id=originator_version,
    )


class DynamoDBStreamApplicationRecorder(DynamoDBAggregateRecorder, ApplicationRecorder):
    """Stores an application's events with no application sequence.

    Writing, optimistic locking, DynamoDB's limits and the checks before
    sending are the aggregate recorder's: one event is one conditional
    ``PutItem``, several are one transaction of their puts, a version that
    exists already is an ``IntegrityError`` naming the aggregate, and nothing
    of a failed save is written. ``insert_events`` returns ``None``: there are
    no notification ids. Only the events table is created; it has a DynamoDB
    stream unless ``DYNAMODB_EVENTS_STREAM=no``.
    """

    ordering: ClassVar[Ordering] = "stream"

    def __init__(
        self,
        connection: DynamoDBConnection,
        events_table_name: str,
        *,
        originator_id_type: OriginatorIDType = "uuid",
        with_stream: bool = True,
    ) -> None:
        super().__init__(
            connection,
            events_table_name,
            originator_id_type=originator_id_type,
            with_stream=with_stream,
        )

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Raise :class:`SequenceDisabledError`: there is no application sequence."""
        self._sequence_disabled("select_notifications()")

    def max_notification_id(self) -> int | None:
        """Raise :class:`SequenceDisabledError`: there is no application sequence."""
        self._sequence_disabled("max_notification_id()")

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Raise :class:`SequenceDisabledError`: there is no application sequence."""
        self._sequence_disabled("subscribe()")

    def _sequence_disabled(self, what: str) -> NoReturn:
        raise SequenceDisabledError(
            f"{what} reads the application sequence, which is off for the events "
            f"in {self.events_table_name!r}: DYNAMODB_ORDERING=stream. Feed "
            "projections from the events table's DynamoDB stream instead "
            "(ledger.projections.streams: the Lambda handler or StreamPoller; "
            "`ledger projections run NAME --feed stream`), and rebuild them from "
            "the events table (`ledger projections rebuild`). An application "
            "whose readers need notification ids (notification logs, "
            "subscriptions, eventsourcing's process applications) needs "
            "DYNAMODB_ORDERING=sequence (the default)."
        )


class DynamoDBStreamProcessRecorder(
    DynamoDBTrackingRecorder, DynamoDBStreamApplicationRecorder, ProcessRecorder
):
    """Stores events and per-aggregate tracking, all or nothing, with no sequence.

    A save with tracking is one transaction of the events' puts and the
    tracking update (so at most 99 events). The tracking is per upstream
    aggregate (:func:`aggregate_tracking`): its update is refused unless the
    version is past the one recorded, so a repeated delivery raises
    ``IntegrityError`` and writes nothing, events included. A save with
    tracking and no events writes the tracking alone (one ``UpdateItem``).
    """

    ordering: ClassVar[Ordering] = "stream"

    def __init__(
        self,
        connection: DynamoDBConnection,
        events_table_name: str,
        tracking_table_name: str,
        *,
        originator_id_type: OriginatorIDType = "uuid",
        with_stream: bool = True,
    ) -> None:
        DynamoDBStreamApplicationRecorder.__init__(
            self,
            connection,
            events_table_name,
            originator_id_type=originator_id_type,
            with_stream=with_stream,
        )
        self.tracking_table_name = tracking_table_name

    def create_table(self) -> None:
        """Create the events and tracking tables if they do not exist."""
        DynamoDBStreamApplicationRecorder.create_table(self)
        DynamoDBTrackingRecorder.create_table(self)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write events, tracking and an idempotency key, all or nothing.

        ``tracking`` and ``idempotency_key`` are keywords, both optional.
        """
        tracking: Tracking | None = kwargs.get("tracking")
        key: str | None = kwargs.get("idempotency_key")
        fingerprint: str | None = kwargs.get("idempotency_fingerprint")
        if tracking is None:
            self._write(
                stored_events, idempotency_key=key, idempotency_fingerprint=fingerprint
            )
        elif not stored_events:
            self.insert_tracking(tracking)
        else:
            tracking_update: TransactWriteItemTypeDef = {
                "Update": self._tracking_update(tracking)
            }
            self._write(
                stored_events,
                [tracking_update],
                idempotency_key=key,
                idempotency_fingerprint=fingerprint,
            )
        return None
