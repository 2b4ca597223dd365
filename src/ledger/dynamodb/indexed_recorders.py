"""The ``indexed`` ordering: saves as ``stream``, the sequence appended by an indexer.

Selected by ``DYNAMODB_ORDERING=indexed``. A save writes its events only,
exactly as in ``stream`` ordering: one event is one conditional ``PutItem``
(1 round trip, 1 WCU per KB); several are one transaction of their puts, each
event item then carrying three small attributes (``schema.SAVE_ID``,
``SAVE_INDEX``, ``SAVE_SIZE``) by which the indexer knows the save is whole.
Writers of different aggregates never meet. Once, before its first save, a
recorder that has not read the index's head yet reads it (one GetItem of the
head item, 1 RCU), so that :meth:`~DynamoDBIndexedApplicationRecorder.wait_indexed`
knows where to start looking for its saves.

The application sequence is then written by the indexer
(:class:`ledger.indexer.Indexer`), the one reader of the events
table's DynamoDB stream, in the ``sequence`` ordering's own format. So every
reader of the sequence (``select_notifications``, ``max_notification_id``,
``subscribe``, notification logs, process applications, ``SequenceFeed``)
works unchanged, behind the saves by about the indexer's poll interval. A save
returns no notification ids: positions are assigned later, by the indexer.
:meth:`DynamoDBIndexedApplicationRecorder.wait_indexed` waits for them.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from eventsourcing.persistence import (
    Notification,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)

from ledger.dynamodb import schema
from ledger.dynamodb.client import DynamoDBConnection
from ledger.dynamodb.limits import MAX_ITEM_BYTES, check_item_size, item_size
from ledger.dynamodb.recorders import (
    Ordering,
    OriginatorIDType,
    encode_id,
    logger,
)
from ledger.dynamodb.sequence_recorders import (
    DynamoDBApplicationRecorder,
    SequenceProcessRecorder,
)

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

    from ledger.dynamodb.recorders import Item

_FLOORS_KEPT: Final = 100_000
"""Saved events whose sequence floor (see ``wait_indexed``) is remembered."""
_PAGE: Final = 1000

_MARKED_ITEM_OVERHEAD: Final = 256
"""More than a marked event item's attribute names, numbers and save id take
(about 120 bytes): a bound, so that only items that may be near DynamoDB's
400 KB are sized exactly."""


class IndexWaitTimeoutError(OperationalError, TimeoutError):
    """The index did not cover saved events within the time allowed."""


class DynamoDBIndexedApplicationRecorder(DynamoDBApplicationRecorder):
    """Stores events as the ``stream`` ordering does; reads the indexer's sequence.

    Writing is the aggregate recorder's (one event: one conditional
    ``PutItem``; several: one transaction of their puts, 100 at most), a
    version that exists already is an ``IntegrityError``, and nothing of a
    failed save is written. ``insert_events`` returns ``None``: positions are
    assigned later by the indexer. Reading the sequence is the ``sequence``
    ordering's recorder's, unchanged. The events table must have its stream
    (the indexer reads it); the notifications table is created with it.
    """

    ordering: ClassVar[Ordering] = "indexed"

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
            notifications_table_name,
            originator_id_type=originator_id_type,
            poll_interval=poll_interval,
            with_stream=with_stream,
        )
        self._floors: OrderedDict[tuple[str, int], int] = OrderedDict()
        """Per saved event, a position the index had reached before its save."""
        self._head_known = False
        """Whether this recorder has read the index's head (see ``_floor``)."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write events (and an idempotency key) all or nothing; return ``None``.

        No notification ids: the indexer assigns positions after the save.
        """
        self._write_marked(stored_events, (), kwargs)
        return None

    def _write_marked(
        self,
        stored_events: Sequence[StoredEvent],
        other_actions: Sequence[TransactWriteItemTypeDef],
        kwargs: dict[str, Any],
    ) -> None:
        floor = self._floor() if stored_events else 0
        self._write(
            stored_events,
            other_actions,
            idempotency_key=kwargs.get("idempotency_key"),
            idempotency_fingerprint=kwargs.get("idempotency_fingerprint"),
        )
        for event in stored_events:
            self._floors[encode_id(event.originator_id), event.originator_version] = (
                floor
            )
        while len(self._floors) > _FLOORS_KEPT:
            self._floors.popitem(last=False)

    def _floor(self) -> int:
        """Return a position the index has reached: this save's will be above it.

        The indexer appends an event only after reading its save from the
        stream, so every position committed before the save is below the
        save's. The last head this recorder saw is such a position, known
        without a read; a recorder that has seen none (a cold start) reads it
        once, one GetItem before its first save, so that ``wait_indexed``
        starts there instead of at position 1: the event can have been
        indexed by the time the wait begins, so a head read then would be no
        floor, and nothing short of the whole index would show it is not
        below that head.
        """
        if not self._head_known and self._committed_seen == 0:
            try:
                self.max_notification_id()
            except PersistenceError as error:
                # The save does not need the head, only a later wait: it goes
                # on, and that wait reads from the start, as it always could.
                # Tried once per recorder: a role that may not read the
                # notifications table, or a throttled one, costs no save more.
                self._head_known = True
                logger.warning(
                    "could not read the index head before a save; a wait for "
                    "it will read the index from its start",
                    extra={"error": type(error).__name__},
                )
                return 0
        self._head_known = True
        return self._committed_seen

    def _event_items(self, stored_events: Sequence[StoredEvent]) -> list[Item]:
        """Return a save's event items; several are marked as one save of n."""
        items = super()._event_items(stored_events)
        if len(items) > 1:
            save_id = uuid.uuid4().hex
            for index, (event, item) in enumerate(
                zip(stored_events, items, strict=True)
            ):
                item[schema.SAVE_ID] = {"S": save_id}
                item[schema.SAVE_INDEX] = {"N": str(index)}
                item[schema.SAVE_SIZE] = {"N": str(len(items))}
                # The marks came after the item was sized: check again, the
                # same way, what they may have taken over the limit.
                bound = (
                    4 * (len(item[schema.AGGREGATE_ID]["S"]) + len(event.topic))
                    + len(event.state)
                    + _MARKED_ITEM_OVERHEAD
                )
                if bound > MAX_ITEM_BYTES:
                    check_item_size(
                        item_size(item),
                        f"Event {event.topic} of aggregate {event.originator_id} "
                        f"at version {event.originator_version} with its save marks",
                    )
        return items

    def notifications_from_events(self, low: int, high: int) -> list[Notification]:
        """Refuse: an indexed application's event items hold no position.

        The sequence ordering writes each event's position on its item, so a
        damaged batch can be applied from the events table; here positions
        are the indexer's, held only in its batches. Returning nothing would
        let ``skip-batch`` move a projection past events it never applied.
        """
        raise ProgrammingError(
            f"Positions {low} to {high} of {self.notifications_table_name} cannot "
            "be read from the events table: in indexed ordering, event items hold "
            "no position. Rebuild the projection from the events table instead "
            "(ledger projections rebuild NAME --source scan)."
        )

    def wait_indexed(
        self, saved: Iterable[Any], timeout: float = 10.0
    ) -> dict[tuple[str, int], int]:
        """Wait until the index holds saved events; return their positions.

        ``saved``: the application's recordings (``app.save(...)`` returns
        them), or stored or domain events: anything with ``originator_id`` and
        ``originator_version``, or a ``domain_event`` that has them. Returns
        ``{(aggregate id, version): position}``. Reads the head, then the
        sequence from a position the index had reached before the events were
        saved (by this recorder, which reads the head once before its first
        save: so even a new recorder's first wait reads one GetItem and the
        pages from there, about two round trips whatever the index's size;
        for events saved elsewhere, from the start), then only what is new,
        every ``poll_interval`` seconds. Raises :class:`IndexWaitTimeoutError`,
        naming what is missing, after ``timeout`` seconds: is an indexer
        running (``ledger index run``)?
        """
        missing: set[tuple[str, int]] = set()
        for thing in saved:
            event = getattr(thing, "domain_event", thing)
            missing.add((encode_id(event.originator_id), event.originator_version))
        found: dict[tuple[str, int], int] = {}
        scanned = min((self._floors.get(key, 0) for key in missing), default=0)
        deadline = time.monotonic() + timeout
        while missing:
            head = self.max_notification_id() or 0
            while missing and scanned < head:
                page = self.select_notifications(scanned + 1, _PAGE, stop=head)
                if not page:
                    break
                for notification in page:
                    key = (
                        encode_id(notification.originator_id),
                        notification.originator_version,
                    )
                    if key in missing:
                        missing.discard(key)
                        found[key] = notification.id
                scanned = page[-1].id
            remaining = deadline - time.monotonic()
            if missing and remaining <= 0:
                shown = ", ".join(f"{a} v{v}" for a, v in sorted(missing)[:5])
                raise IndexWaitTimeoutError(
                    f"After {timeout} s the index of {self.events_table_name!r} "
                    f"(head at position {head}) still lacks {len(missing)} saved "
                    f"event(s): {shown}. Is an indexer running (`ledger index "
                    "run`)? See `ledger index status` for its lag."
                )
            if missing:
                time.sleep(min(self.poll_interval, remaining))
        return found


class DynamoDBIndexedProcessRecorder(
    SequenceProcessRecorder, DynamoDBIndexedApplicationRecorder
):
    """Stores events and tracking all or nothing, as ``stream`` ordering does.

    Tracking is per upstream application, by notification id, as in
    ``sequence`` ordering (an indexed process application reads its upstream
    applications' sequences, indexed or not), and goes in its save's own
    transaction, as in ``stream`` ordering (so at most 99 events with it): the
    events and the upstream position commit together, or neither, so a
    repeated delivery raises ``IntegrityError`` and writes nothing, events
    included. Leaving the tracking to the indexer instead would make a save
    and its tracking two commits (a crash between them processes an upstream
    event twice), and the save's own position does not exist yet to wait
    for. A save of tracking alone is one ``UpdateItem``. Returns ``None``, as
    the application recorder does.
    """

    ordering: ClassVar[Ordering] = "indexed"

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write events, tracking and an idempotency key, all or nothing."""
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is None:
            self._write_marked(stored_events, (), kwargs)
        elif not stored_events:
            self.insert_tracking(tracking)
        else:
            self._write_marked(
                stored_events, [{"Update": self._tracking_update(tracking)}], kwargs
            )
        return None
