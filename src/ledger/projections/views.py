"""Where read models are stored: the view contract and an in-memory view.

A view stores read-model items (JSON bodies with revisions) and the
projection's tracking, and commits a unit of work's writes and its tracking
together, all or nothing. Every write names the revision it read, so two
writers of one item never lose an update, and tracking only moves forward, so
an event applied twice changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from eventsourcing.persistence import (
    IntegrityError,
    ProgrammingError,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.popo import POPOTrackingRecorder

from ledger.projections import schema
from ledger.projections.models import ParkedEvent, ReadModel

TModel = TypeVar("TModel", bound=ReadModel)


class ConcurrentChangeError(IntegrityError):
    """A commit found an item at another revision, or tracking already past it.

    Nothing was written. Reload what was read and apply the events again; the
    projector does this itself.
    """


class OnePositionViewError(ProgrammingError):
    """A feed per aggregate (the stream feed) met a view that keeps one position.

    Nothing was applied. Such a view is fed by the application sequence and
    keeps no position per aggregate, which the stream feed relies on to tell
    duplicates from gaps.
    """


class ActiveVersionChangedError(IntegrityError):
    """The view's table version stopped being the active one (a rebuild switched).

    Nothing was written. Open the view again to write into the active version.
    """


@dataclass(frozen=True)
class StoredItem:
    """A read-model item as stored: its JSON body and its revision."""

    body: str
    revision: int


@dataclass(frozen=True)
class ItemWrite:
    """One write of a commit: a new body (``None`` deletes) and the revision read."""

    key: str
    body: str | None
    expected_revision: int
    """The revision read before writing; 0 means the item must not exist."""


class ReadModelView(TrackingRecorder, ABC):
    """Stores read models and tracking; commits them together.

    ``max_actions`` is how many item writes (plus one for tracking) a single
    commit may hold, and ``max_bytes`` how many bytes of keys and bodies.

    The view is the one place that knows where dead letters
    (:class:`~ledger.projections.models.ParkedEvent`) are kept: a view may
    store them apart (:func:`parked_aggregate` tells their keys), and lists
    them with :meth:`parked_events`.
    """

    max_actions: int = 98
    max_bytes: int = 4 * 1024 * 1024 - 64 * 1024
    """DynamoDB's 4 MB per transaction, less room for the item attributes
    besides key and body, the tracking and the version check."""
    max_item_bytes: int = 400 * 1024 - 1024
    """How many bytes of key and body one read-model item may hold: DynamoDB's
    400 KB per item, less room for the other attributes. Every view keeps to
    it, so an item that would not fit in DynamoDB fails in tests too."""
    _claimed_types: dict[str, type[ReadModel]]
    """Read-model classes used with this view, by type name (see :meth:`claim`)."""
    _one_position: dict[str, bool]
    """Per application: True if this view keeps one position for it (see
    :meth:`keeps_one_position`), as decided."""

    @abstractmethod
    def load(self, key: str) -> StoredItem | None:
        """Return the item stored under ``key`` (strongly consistent), or None."""

    def load_many(self, keys: Sequence[str]) -> dict[str, StoredItem | None]:
        """Return the items stored under ``keys`` (strongly consistent; None: absent).

        Here one :meth:`load` per key; a view that can read several items in
        one request (DynamoDB's BatchGetItem) does.
        """
        return {key: self.load(key) for key in keys}

    @abstractmethod
    def load_all(self) -> dict[str, StoredItem]:
        """Return every item of this view, parked events included (for rebuilds)."""

    @abstractmethod
    def commit(self, writes: Sequence[ItemWrite], tracking: Tracking | None) -> None:
        """Write items and tracking atomically, or raise ``ConcurrentChangeError``."""

    def parked_items(self) -> list[StoredItem]:
        """Return the stored parked events of this view (their JSON bodies)."""
        return [
            item
            for key, item in self.load_all().items()
            if parked_aggregate(key) is not None
        ]

    def parked_events(self) -> list[ParkedEvent]:
        """Return the parked events of this view, oldest first."""
        events = [
            ParkedEvent.model_validate_json(item.body) for item in self.parked_items()
        ]
        return sorted(events, key=lambda parked: parked.parked_at)

    def read(self, model_type: type[TModel], key: object) -> TModel | None:
        """Return the read model of this type and key as stored now, or None.

        For queries: it follows the active version first (a rebuild may have
        switched readers; one GetItem of the pointer on DynamoDB), then reads
        the item (one strongly consistent GetItem, 1 RCU per 4 KB).
        """
        self.follow_active()
        self.claim(model_type)
        stored = self.load(model_type.storage_key(key))
        return None if stored is None else model_type.model_validate_json(stored.body)

    def follow_active(self) -> None:
        """Read and write the version readers use now (after a rebuild's switch).

        Part of every view, so feeds and readers call it after
        ``ActiveVersionChangedError`` or before a query. Here it does nothing
        (a view with one version, like :class:`InMemoryView`, has nothing to
        follow); :class:`~ledger.projections.dynamodb.DynamoDBView` resolves
        the active table version again.
        """

    def claim(self, model_type: type[ReadModel]) -> None:
        """Refuse ``model_type`` if another class of its type name used this view.

        Two classes of one ``type_name`` would read and overwrite each
        other's items. A dict look-up per use; the first use records it.
        """
        try:
            claimed = self._claimed_types
        except AttributeError:
            claimed = self._claimed_types = {}
        holder = claimed.setdefault(model_type.type_name, model_type)
        if holder is not model_type:
            raise ProgrammingError(
                f"Read models {holder.__module__}.{holder.__qualname__} and "
                f"{model_type.__module__}.{model_type.__qualname__} both have "
                f"the type name {model_type.type_name!r} in one view: they would "
                "share stored items. Give one of them another type_name (after "
                "renaming a class, keep only the new class and set its "
                "type_name to the old name)."
            )

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record a position with no read-model change (events with no handler)."""
        self.commit((), tracking)

    # One position or one per aggregate -------------------------------------------

    def keeps_one_position(self, application_name: str) -> bool:
        """Return True if this view keeps one position for an application's sequence.

        Fed by a total order (the application sequence, or the index), the
        tracking position committed with the effects is all a projector
        needs: an event at or below it is refused at commit, and the order
        has no gaps. Such a view keeps no
        :class:`~ledger.projections.models.AggregatePosition` items. It is
        decided once per view (and table version): a view whose tracking
        says so (every commit of such a view records it), or a new one (no
        tracking, nothing stored), keeps one position; a view built before,
        or by a feed per aggregate (the stream feed), keeps one position per
        aggregate as it always did, until a rebuild from the sequence makes
        a new version that keeps one.
        """
        try:
            decided = self._one_position
        except AttributeError:
            decided = self._one_position = {}
        if application_name not in decided:
            decided[application_name] = self.recorded_one_position(application_name)
        return decided[application_name]

    def keep_one_position(self, application_name: str) -> None:
        """Make this view keep one position for an application (a new version).

        Its commits of that application's tracking record it from now on.
        """
        self.keeps_one_position(application_name)
        self._one_position[application_name] = True

    def forget_positioning(self) -> None:
        """Decide again, at the next use, how this view keeps positions."""
        self._one_position = {}

    def recorded_one_position(self, application_name: str) -> bool:
        """Return True if the stored view keeps one position, or is new.

        Here False (one position per aggregate, correct on every feed);
        :class:`InMemoryView` and the DynamoDB view read what they stored.
        """
        return False

    def tracked_one_position(self, application_name: str) -> bool:
        """Return True if the stored tracking of an application records one position.

        Unlike :meth:`recorded_one_position`, a new view (nothing stored)
        answers False. Here False; :class:`InMemoryView` and the DynamoDB
        view read what they stored.
        """
        return False

    def refuse_feed_per_aggregate(self, application_name: str) -> None:
        """Refuse to be fed per aggregate (the stream feed) if one position is kept.

        A view that keeps one position for an application's sequence
        (:meth:`keeps_one_position`) holds no
        :class:`~ledger.projections.models.AggregatePosition` items: a feed
        per aggregate would take every aggregate's earlier events as missing,
        read them from the events table and apply them a second time. Raises
        :class:`OnePositionViewError` before anything is applied.

        Decided once per view and table version, as :meth:`keeps_one_position`
        is (the same answer, cached alike; :meth:`forget_positioning` asks
        again): from that answer if this process made it, else from the
        stored tracking alone (:meth:`tracked_one_position`, one GetItem on
        DynamoDB). So a new view fed per aggregate first is decided to keep
        one position per aggregate, and its commits never record one.
        """
        try:
            decided = self._one_position
        except AttributeError:
            decided = self._one_position = {}
        if application_name not in decided:
            decided[application_name] = self.tracked_one_position(application_name)
        if decided[application_name]:
            raise OnePositionViewError(
                f"{self.version_description()} keeps one position for "
                f"{application_name!r}, not one per aggregate: it is fed by the "
                "application sequence (DYNAMODB_ORDERING sequence or indexed), so "
                "the stream feed would apply aggregates' earlier events a second "
                "time. Nothing was applied. Keep feeding it with the sequence feed "
                "(`ledger projections run NAME` follows DYNAMODB_ORDERING), or, to "
                "feed it from the stream, rebuild a new version from the events "
                "table (`ledger projections rebuild NAME --source scan`) and feed "
                "that one."
            )

    def version_description(self) -> str:
        """Return how errors name this view (and its table version)."""
        return f"View {type(self).__name__}"

    def records_one_position(self, tracking: Tracking) -> bool:
        """Return True if committing ``tracking`` records that one position is kept."""
        try:
            return self._one_position.get(tracking.application_name, False)
        except AttributeError:
            return False


class InMemoryView(POPOTrackingRecorder, ReadModelView):
    """A view in a dict, for unit tests and ``eventsourcing.popo`` applications."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, StoredItem] = {}
        self.one_position_recorded: set[str] = set()
        """Applications whose tracking records that one position is kept."""

    def load(self, key: str) -> StoredItem | None:
        """Return the item stored under ``key``, or None."""
        with self._database_lock:
            return self.items.get(key)

    def load_all(self) -> dict[str, StoredItem]:
        """Return a copy of every item."""
        with self._database_lock:
            return dict(self.items)

    def commit(self, writes: Sequence[ItemWrite], tracking: Tracking | None) -> None:
        """Check every revision and the tracking, then write all or nothing."""
        with self._database_lock:
            for write in writes:
                current = self.items.get(write.key)
                revision = 0 if current is None else current.revision
                if revision != write.expected_revision:
                    raise ConcurrentChangeError(
                        f"Item {write.key} is at revision {revision}, not "
                        f"{write.expected_revision}: another writer changed it. "
                        "Nothing was written; reload and apply again."
                    )
            if tracking is not None:
                try:
                    self._assert_tracking_uniqueness(tracking)
                except IntegrityError as error:
                    raise ConcurrentChangeError(str(error)) from error
            for write in writes:
                if write.body is None:
                    self.items.pop(write.key, None)
                else:
                    self.items[write.key] = StoredItem(
                        write.body, write.expected_revision + 1
                    )
            if tracking is not None:
                self._insert_tracking(tracking)
                if self.records_one_position(tracking):
                    self.one_position_recorded.add(tracking.application_name)

    def recorded_one_position(self, application_name: str) -> bool:
        """Return True if the tracking says so, or the view holds nothing yet."""
        with self._database_lock:
            if application_name in self.one_position_recorded:
                return True
            return self._max_tracking_ids[application_name] is None and not self.items

    def tracked_one_position(self, application_name: str) -> bool:
        """Return True if the application's tracking records one position."""
        with self._database_lock:
            return application_name in self.one_position_recorded


def parked_aggregate(key: str) -> str | None:
    """Return the aggregate whose dead letter is stored under ``key``, or None.

    None: ``key`` is not a parked event's (:class:`ParkedEvent`'s type name).
    """
    return ParkedEvent.key_of(key)


def tracking_key(application_name: str) -> str:
    """Return the key of an application's tracking item in a version table."""
    return f"{schema.TRACKING_PREFIX}{application_name}"
