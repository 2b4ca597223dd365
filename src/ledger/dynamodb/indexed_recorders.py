"""The ``indexed`` ordering: saves as ``stream``, the sequence appended by an indexer.

(Over 400 lines as one concept: saving, waiting for the index, and finding a
damaged batch's events all rest on one invariant, stated here once: the
indexer indexes every event of the events table exactly once.)

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

Event items hold no position, yet a batch of the index that cannot be read
is gone past as in ``sequence`` ordering (``ledger projections skip-batch``):
:meth:`DynamoDBIndexedApplicationRecorder.notifications_from_events` finds
its events as those of the events table in no readable batch.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

from eventsourcing.persistence import (
    DataError,
    Notification,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)

from ledger.dynamodb import index_coverage, schema
from ledger.dynamodb.batches import (
    BatchEntry,
    CorruptNotificationBatchError,
    read_batch_item,
)
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


_NOT_READ: Final = -1
"""A revision of the indexer's checkpoints not read yet (see ``_WaitProgress``)."""
_READ_FAILED: Final = -2
"""A revision of the indexer's checkpoints whose read failed (DynamoDB
unavailable, say): whether the indexer moved is unknown."""


class _WaitProgress:
    """How far a ``wait_indexed`` read the index, for the error if it times out."""

    __slots__ = ("cut", "head", "lowest", "revision", "unreadable")

    def __init__(self, head: int) -> None:
        self.head = head
        """The head the wait read first (0: the index was empty)."""
        self.lowest = head + 1
        """Every position from here to the head first read has been read back."""
        self.cut = False
        """Whether the deadline stopped the read back before it was done."""
        self.unreadable: list[CorruptNotificationBatchError] = []
        """Batches gone past on the way back (damaged or missing)."""
        self.revision: int | None = _NOT_READ
        """The indexer's checkpoints' revision when the wait began to take
        time (None: no round committed; ``_READ_FAILED``: its read failed),
        to tell a stopped indexer from one behind."""


def _indexer_unknown(why: str) -> str:
    """Say that whether the indexer committed while a wait waited is unknown."""
    return (
        f"Whether the indexer's checkpoints moved while it waited is unknown: "
        f"{why}. Is an indexer running (`ledger index run`)? `ledger index "
        "status` shows its lag."
    )


class _SavePlace(NamedTuple):
    """An event's place in a save of several events (its save marks)."""

    save_id: str
    place: int
    size: int


class _Unindexed(NamedTuple):
    """An event of the events table found in no readable batch."""

    topic: str
    save: _SavePlace | None


class _IndexedVersions:
    """Which versions of each aggregate the index holds, as ranges of versions.

    The index holds each aggregate's events in version order, so an
    aggregate's versions read from it make one range, or a few (one more
    past each batch that cannot be read): far less memory than a set of
    every event of a large index.
    """

    __slots__ = ("_ranges",)

    def __init__(self) -> None:
        self._ranges: dict[str, list[int]] = {}
        """Per aggregate id: first and last version of each range, flat."""

    def add(self, aggregate_id: str, version: int) -> None:
        """Note that the index holds ``version`` of ``aggregate_id``."""
        ranges = self._ranges.get(aggregate_id)
        if ranges is None:
            self._ranges[aggregate_id] = [version, version]
        elif ranges[-1] + 1 == version:
            ranges[-1] = version
        else:
            ranges += (version, version)

    def holds(self, aggregate_id: str, version: int) -> bool:
        """Return whether the index holds ``version`` of ``aggregate_id``."""
        ranges = self._ranges.get(aggregate_id, ())
        return any(
            ranges[i] <= version <= ranges[i + 1] for i in range(0, len(ranges), 2)
        )


_Unit = str | tuple[str, int]
"""A save's id, or the key of an event saved alone."""
_FIRST: Final = 0
"""A unit's rank: it must come first (see ``_units``)."""
_ANYWHERE: Final = 1
_LAST: Final = 2


def _index_order(
    events: Mapping[tuple[str, int], _Unindexed], table_name: str
) -> list[tuple[str, int]]:
    """Return the keys of a batch's events in an order the index could have had.

    ``events``: the events of a run of positions that cannot be read. The
    indexer appends each aggregate's versions in ascending order and each
    save of several events whole, contiguous and in its own order; the run
    may hold only part of a save, whose other events are then before it (the
    part goes first) or after it (last). So the events are ordered in units
    (a save's events in the run, or one event), each unit after the units
    holding earlier versions of its aggregates; where that leaves a choice,
    by the aggregate id and version of the unit's first event, so the order
    is the same on every run whatever order the Scan returned. Raises
    ``DataError`` when the events allow no such order.
    """
    units, rank = _units(events, table_name)
    unit_of = {key: unit for unit, keys in units.items() for key in keys}
    waits = dict.fromkeys(units, 0)
    followers: dict[_Unit, list[_Unit]] = defaultdict(list)
    for before, after in itertools.pairwise(sorted(events)):
        if before[0] != after[0]:
            continue  # another aggregate
        if unit_of[before] != unit_of[after]:
            waits[unit_of[after]] += 1
            followers[unit_of[before]].append(unit_of[after])
        else:
            keys = units[unit_of[before]]
            if keys.index(before) > keys.index(after):
                raise _unorderable(
                    table_name, f"save {unit_of[before]} holds {after} before {before}"
                )
    ready = [(rank[unit], units[unit][0], unit) for unit in units if not waits[unit]]
    heapq.heapify(ready)
    order: list[_Unit] = []
    while ready:
        *_, unit = heapq.heappop(ready)
        order.append(unit)
        for follower in followers[unit]:
            waits[follower] -= 1
            if not waits[follower]:
                heapq.heappush(ready, (rank[follower], units[follower][0], follower))
    if len(order) < len(units):
        raise _unorderable(table_name, "their saves and versions make a cycle")
    if any(rank[unit] == _FIRST for unit in order[1:]) or any(
        rank[unit] == _LAST for unit in order[:-1]
    ):
        raise _unorderable(table_name, "saves cut by the run are not at its ends")
    return [key for unit in order for key in units[unit]]


def _units(
    events: Mapping[tuple[str, int], _Unindexed], table_name: str
) -> tuple[dict[_Unit, list[tuple[str, int]]], dict[_Unit, int]]:
    """Return the events' units, each in its order, and where each must go.

    Where: ``_FIRST`` (a save whose first events are before the run),
    ``_LAST`` (one whose last are after it) or ``_ANYWHERE``.
    """
    places: dict[tuple[str, int], _SavePlace] = {}
    units: dict[_Unit, list[tuple[str, int]]] = {}
    for key in sorted(events):
        save = events[key].save
        if save is not None:
            places[key] = save
        units.setdefault(key if save is None else save.save_id, []).append(key)
    rank: dict[_Unit, int] = {}
    for unit, keys in units.items():
        rank[unit] = _ANYWHERE
        if keys[0] not in places:
            continue
        keys.sort(key=lambda key: places[key].place)
        held = [places[key].place for key in keys]
        if held != list(range(held[0], held[0] + len(held))):
            raise _unorderable(table_name, f"save {unit} has events {held} here")
        starts_before = held[0] > 0
        ends_after = held[-1] < places[keys[0]].size - 1
        if starts_before and ends_after and len(units) > 1:
            raise _unorderable(table_name, f"save {unit} is cut at both ends")
        if starts_before:
            rank[unit] = _FIRST
        elif ends_after:
            rank[unit] = _LAST
    return units, rank


def _unorderable(table_name: str, reason: str) -> DataError:
    return DataError(
        f"The events of {table_name!r} in no readable batch cannot be put in an "
        f"order the index could have given them ({reason}), so nothing was "
        "applied. Check what writes to the events table (only ledger's "
        "recorders should), or rebuild the projection from the events table "
        "(ledger projections rebuild NAME --source scan)."
    )


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
    skip_wait_timeout: float = 60.0
    """Seconds :meth:`notifications_from_events` (``skip-batch``) waits for the
    indexer to index events saved while it reads, before it gives up."""
    skip_clock_margin: float = 5.0
    """Seconds by which DynamoDB's clock (the stream records' times) may be
    ahead of this machine's, or a record late to show in the stream:
    :meth:`notifications_from_events` waits at least this long after its
    Scan for the indexer to have indexed every event saved before it."""

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

    def notifications_from_events(
        self, low: int, high: int, *, timeout: float | None = None
    ) -> list[Notification]:
        """Return the notifications of positions ``low`` to ``high``, batch unread.

        For going past a batch that cannot be read (``ledger projections
        skip-batch``). Event items hold no position here, but the indexer
        indexes every event of the events table exactly once: the batch's
        events are those of the events table that are in no readable batch,
        once every event saved before they were looked for is indexed. So
        this reads the head, every batch up to it, and Scans the events
        table for the events found in none. Then it waits until the indexer
        has indexed every event saved before the Scan ended (see
        :mod:`ledger.dynamodb.index_coverage`; at least
        :attr:`skip_clock_margin` seconds), polling every second for up to
        ``timeout`` seconds (default :attr:`skip_wait_timeout`), then raises
        :class:`IndexWaitTimeoutError` (is an indexer running? a re-index
        under way cannot pass a damaged batch). A ``timeout`` below
        :attr:`skip_clock_margin` could never be met: it is refused with
        ``ValueError`` before anything is read. It reads the head again,
        and drops the events the indexer appended after the first head
        read: what remains is exactly the unreadable positions' events.
        Positions of readable batches within ``low`` to ``high`` (past a
        missing batch) come from those batches. The unreadable positions
        may begin before ``low`` (a skip cut short after some of its
        commits, resumed): their events are ordered whole, and those from
        ``low`` on returned.

        The unreadable positions get their events in an order the index
        could have given them (see :func:`_index_order`): each aggregate's
        versions ascending, each save of several events contiguous and in
        its own order; where that leaves a choice, by aggregate id, then
        version. Nothing is written.

        Cost: a Scan of the whole events table (its size in read units,
        returning keys, topics and save marks only), a read of the whole
        index (a Query per notifications page: the notifications table's
        size in read units), a BatchGetItem per 100 of the unreadable
        positions' events for their states; while waiting, per poll, a
        GetItem of the indexer's checkpoints, a DescribeStream and per shard
        a GetShardIterator and a GetRecords or a few; then a GetItem of the
        head and a Query of what was appended. Raises ``DataError`` when
        other positions cannot be read either, when the events in no
        readable batch are fewer than the unreadable positions (events
        lost) or more (events the index lacks), when they cannot be put
        in an order the index could have had, or when a shard the indexer
        checkpointed left the stream before it recorded reading the shard to
        its end (records the index lacks may be gone with it). Nothing is
        applied then.
        """
        wait = self.skip_wait_timeout if timeout is None else timeout
        table = self.notifications_table_name
        if wait < self.skip_clock_margin:
            # Refused, not raised to the margin: a caller's timeout bounds
            # its time (a Lambda's), and a wait of the margin alone leaves
            # the indexer no time to catch up, failing after the Scan.
            raise ValueError(
                f"A timeout of {wait} s cannot go past a batch of {table!r}: "
                f"skip-batch waits at least {self.skip_clock_margin} s after "
                "its Scan of the events table (skip_clock_margin: how far "
                "DynamoDB's clock may be ahead of this machine's) for the "
                "indexer to index what was saved before it, so it would always "
                "fail, after reading both tables whole. Nothing was read. Give "
                f"a timeout of at least {self.skip_clock_margin} s, and more "
                "to leave the indexer time to catch up (the default, "
                f"skip_wait_timeout, is {self.skip_wait_timeout} s)."
            )
        head, page_size = self._read_head() or (0, self.page_size_to_write())
        if not 1 <= low <= high <= head:
            raise ProgrammingError(
                f"Positions {low} to {high} of {table!r} are not all committed: "
                f"its head is at position {head}."
            )
        indexed, inside, gaps = self._read_index(head, page_size, low, high)
        lacking = self._only_gap(gaps, low, high)
        unindexed = self._unindexed(indexed)
        # Every event the Scan found was saved before it ended.
        scanned = time.time()
        self._drop_indexed_since(unindexed, lacking, head, scanned, wait)
        wanted = len(lacking)
        if len(unindexed) < wanted:
            raise DataError(
                f"Positions {lacking[0]} to {lacking[-1]} of {table!r} cannot be "
                f"read, and only {len(unindexed)} event(s) of "
                f"{self.events_table_name!r} are in no readable batch, for "
                f"{wanted} positions: the events table lacks events the index "
                "holds (items deleted, or the table restored from an older "
                "backup). Nothing was applied. Restore the missing event items "
                "(point-in-time recovery) and run skip-batch again, or rebuild the "
                "projection from what the events table holds (ledger projections "
                "rebuild NAME --source scan)."
            )
        if len(unindexed) > wanted:
            where = f"positions {lacking[0]} to {lacking[-1]}" if lacking else "none"
            raise DataError(
                f"{len(unindexed)} event(s) of {self.events_table_name!r} are in "
                f"no readable batch of {table!r}, though the indexer has indexed "
                "every event saved before they were looked for, and the positions "
                f"that cannot be read hold {wanted} ({where}): the index lacks "
                "events of the events table (written by something other than "
                "ledger's recorders?), so the batch's cannot be told from them. "
                "Nothing was applied. Rebuild the projection from the events "
                "table (ledger projections rebuild NAME --source scan)."
            )
        # The whole run's order (deterministic; the run begins at ``low``).
        ordered = _index_order(unindexed, self.events_table_name)
        notifications: list[Notification] = []
        pointers: list[int] = []
        for position in range(low, high + 1):
            if position in inside:
                entry = inside[position]
            else:
                key = ordered[position - lacking[0]]
                entry = BatchEntry(*key, unindexed[key].topic, None)
            if entry.state is None:
                pointers.append(len(notifications))
            notifications.append(
                Notification(
                    id=position,
                    originator_id=self._decode_id(entry.aggregate_id),
                    originator_version=entry.version,
                    topic=entry.topic,
                    state=b"" if entry.state is None else entry.state,
                )
            )
        self._fill_states(notifications, pointers)
        return notifications

    def _read_index(
        self, head: int, page_size: int, low: int, high: int
    ) -> tuple[_IndexedVersions, dict[int, BatchEntry], list[tuple[int, int]]]:
        """Read every batch up to ``head``.

        Returns the versions they hold, the events they hold from ``low`` to
        ``high`` by position, and the runs of positions no readable batch
        holds (each damaged batch's, or a missing one's).
        """
        indexed = _IndexedVersions()
        inside: dict[int, BatchEntry] = {}
        covered = 0  # every position up to here is in a batch read, or in ``gaps``
        gaps: list[tuple[int, int]] = []
        for item in self._batch_items(1, head, page_size):
            try:
                first, entries = read_batch_item(item, self.notifications_table_name)
            except CorruptNotificationBatchError:
                # Its key is its last position, readable or not: it ends a gap.
                last = int(item[schema.POSITION]["N"])
                if last > covered:
                    gaps.append((covered + 1, last))
                    covered = last
                continue
            if first > covered + 1:
                gaps.append((covered + 1, first - 1))
            covered = max(covered, first + len(entries) - 1)
            for position, entry in enumerate(entries, first):
                indexed.add(entry.aggregate_id, entry.version)
                if low <= position <= high:
                    inside[position] = entry
        if covered < head:
            gaps.append((covered + 1, head))
        return indexed, inside, gaps

    def _only_gap(self, gaps: list[tuple[int, int]], low: int, high: int) -> range:
        """Return the positions no readable batch holds: one range ending in low..high.

        Raises ``DataError`` for unreadable positions elsewhere, or for two
        ranges: the events found in no batch could then belong to either;
        and for a range beginning before ``low``: the projection stands
        inside it, having applied some of its positions (read before the
        batch was damaged, a page ending inside a batch, or a skip cut
        short), in an order this cannot know, so which events are left is
        unknown.
        """
        inside = [a for a, b in gaps if a < low <= b]
        if inside:
            raise DataError(
                f"The projection stands inside the unreadable positions "
                f"{inside[0]} to {high} of {self.notifications_table_name!r}: it "
                f"applied positions {inside[0]} to {low - 1} before (read before "
                "the batch was damaged, or a skip-batch cut short), in an order "
                "that cannot be known now, so the events left to apply cannot be "
                "told; nothing was applied. Restore the batch (a backup of the "
                "notifications table), or rebuild the projection from the events "
                "table (ledger projections rebuild NAME --source scan)."
            )
        elsewhere = [(a, b) for a, b in gaps if b < low or b > high] or gaps[1:]
        if elsewhere:
            shown = ", ".join(f"{a} to {b}" for a, b in elsewhere[:5])
            raise DataError(
                f"Positions {shown} of {self.notifications_table_name!r} cannot be "
                f"read either (a batch damaged or missing), besides those from "
                f"{low} to {high}: the events in no readable batch cannot be told "
                "apart between them, so nothing was applied. Restore those batches "
                "(a backup of the notifications table), or rebuild the projection "
                "from the events table (ledger projections rebuild NAME --source "
                "scan)."
            )
        return range(gaps[0][0], gaps[0][1] + 1) if gaps else range(0)

    def _unindexed(
        self, indexed: _IndexedVersions
    ) -> dict[tuple[str, int], _Unindexed]:
        """Scan the events table for the events ``indexed`` does not hold."""
        found: dict[tuple[str, int], _Unindexed] = {}
        for item in self.connection.items(
            "scan",
            TableName=self.events_table_name,
            ProjectionExpression="#a, #v, #t, #s, #i, #n",
            ExpressionAttributeNames={
                "#a": schema.AGGREGATE_ID,
                "#v": schema.VERSION,
                "#t": schema.TOPIC,
                "#s": schema.SAVE_ID,
                "#i": schema.SAVE_INDEX,
                "#n": schema.SAVE_SIZE,
            },
            ConsistentRead=True,
        ):
            aggregate_id = item[schema.AGGREGATE_ID]["S"]
            version = int(item[schema.VERSION]["N"])
            if indexed.holds(aggregate_id, version):
                continue
            save = None
            if schema.SAVE_ID in item:
                save = _SavePlace(
                    item[schema.SAVE_ID]["S"],
                    int(item[schema.SAVE_INDEX]["N"]),
                    int(item[schema.SAVE_SIZE]["N"]),
                )
            found[aggregate_id, version] = _Unindexed(item[schema.TOPIC]["S"], save)
        return found

    def _drop_indexed_since(
        self,
        unindexed: dict[tuple[str, int], _Unindexed],
        lacking: range,
        head: int,
        scanned: float,
        timeout: float,
    ) -> None:
        """Drop from ``unindexed`` what the index appends after ``head``.

        First waits until the indexer has indexed every event saved before
        ``scanned`` (epoch seconds: when the Scan ended), at least
        :attr:`skip_clock_margin` seconds after it; then reads the head again.
        Raises :class:`IndexWaitTimeoutError` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        # An event the Scan saw was saved before it ended: its stream record
        # is at or before then, by DynamoDB's clock (ahead of this one by less
        # than the margin), and shows in the stream within the margin.
        moment = scanned + self.skip_clock_margin
        coverage = index_coverage.IndexCoverage(self)
        began: int | None = None
        while True:
            remaining = deadline - time.monotonic()
            time.sleep(max(0.0, min(moment - time.time(), remaining)))
            covered = coverage.since(moment)
            if covered.pending is None and time.time() >= moment:
                break
            began = covered.revision if began is None else began
            if time.monotonic() >= deadline:
                where = (
                    f"positions {lacking[0]} to {lacking[-1]}"
                    if lacking
                    else "no position"
                )
                moved = (
                    "the indexer looks stopped (it committed no round meanwhile)"
                    if covered.revision == began
                    else "the indexer committed rounds meanwhile"
                )
                raise IndexWaitTimeoutError(
                    f"{len(unindexed)} event(s) of {self.events_table_name!r} are "
                    f"in no readable batch of {self.notifications_table_name!r}, "
                    f"for {where} that cannot be read; which are the batch's is "
                    "known once every event saved before the events table was "
                    f"scanned is indexed, and after {timeout} s "
                    f"{covered.pending or 'the wait ran out'}; {moved}. Nothing "
                    "was applied. Is an indexer running (`ledger index run`; "
                    "`ledger index status` shows its lag)? Run skip-batch again "
                    "once it has caught up."
                )
            pause = max(self.poll_interval, index_coverage.POLL_INTERVAL)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        # The indexer commits its checkpoints with what it appends: a head
        # read after them holds every event saved before the Scan ended.
        latest = self._read_head()
        if latest is not None and latest[0] > head:
            for item in self._batch_items(head + 1, latest[0], latest[1]):
                _, entries = read_batch_item(item, self.notifications_table_name)
                for entry in entries:
                    unindexed.pop((entry.aggregate_id, entry.version), None)

    def wait_indexed(
        self, saved: Iterable[Any], timeout: float = 10.0
    ) -> dict[tuple[str, int], int]:
        """Wait until the index holds saved events; return their positions.

        ``saved``: the application's recordings (``app.save(...)`` returns
        them), or stored or domain events: anything with ``originator_id`` and
        ``originator_version``, or a ``domain_event`` that has them. Returns
        ``{(aggregate id, version): position}``. Reads the head H, then looks
        for the events at or before H by reading the index backwards from H
        (every event is indexed once: one not found at or before H is after
        it), a page at a time, down to a position the index had reached
        before they were saved: for events this recorder saved, the head it
        knew before the save (it reads the head once before its first save);
        for others, position 1, though recent events are found in the first
        page or two; that read, below the head's page and any floor known,
        ends at ``timeout`` (``timeout=0`` looks once: it reads back to its
        end, and does not wait). A batch that cannot
        be read, or a missing one, is gone past on the way back: the events
        may be found elsewhere. Then it reads on from H, only what is new,
        every ``poll_interval`` seconds. Raises :class:`IndexWaitTimeoutError`
        after ``timeout`` seconds, naming what is missing, how far it read
        the index (and whether the timeout cut the read back: the events may
        then be indexed below where it stopped), and whether the indexer's
        checkpoints moved while it waited (an indexer behind, or none
        running); to tell, it reads their revision (one GetItem) when the
        wait begins to take time (its first pause, or a read back past the
        head's page) and again when it gives up (a failed read of it is
        told in that error, as "unknown", not raised). If it went past an
        unreadable batch on the way back, it raises
        ``CorruptNotificationBatchError`` naming that batch instead: what is
        missing may be in it.
        """
        missing: dict[tuple[str, int], int] = {}
        """Per event waited for, a position the index had reached before its
        save (0: not known)."""
        for thing in saved:
            event = getattr(thing, "domain_event", thing)
            key = (encode_id(event.originator_id), event.originator_version)
            missing[key] = self._floors.get(key, 0)
        found: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout
        scanned = 0
        progress = _WaitProgress(0)
        if missing:
            head_read = self._read_head()
            if head_read is not None:
                scanned = head_read[0]
                progress = _WaitProgress(scanned)
                # timeout=0 looks once: the whole read back, then no wait.
                cut = deadline if timeout > 0 else None
                self._find_indexed(
                    missing, found, *head_read, deadline=cut, progress=progress
                )
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
                    if missing.pop(key, None) is not None:
                        found[key] = notification.id
                scanned = page[-1].id
            remaining = deadline - time.monotonic()
            if missing and remaining <= 0:
                raise self._wait_timed_out(missing, timeout, head, scanned, progress)
            if missing:
                if progress.revision == _NOT_READ:
                    progress.revision = self._revision_at_start()
                time.sleep(min(self.poll_interval, remaining))
        return found

    def _wait_timed_out(
        self,
        missing: Mapping[tuple[str, int], int],
        timeout: float,
        head: int,
        scanned: int,
        progress: _WaitProgress,
    ) -> PersistenceError:
        """Return the error of a wait that ran out: what it knows, and what to do."""
        shown = ", ".join(f"{a} v{v}" for a, v in sorted(missing)[:5])
        lacks = (
            f"After {timeout} s the index of {self.events_table_name!r} "
            f"(head at position {head}) still lacks {len(missing)} saved "
            f"event(s): {shown}."
        )
        if progress.unreadable:
            # They may be in a batch gone past, as well as not indexed yet.
            gone = progress.unreadable[0]
            return CorruptNotificationBatchError(
                gone.table_name,
                gone.last_position,
                f"{gone.reason.rstrip('.')}. {lacks} They may be in it",
            )
        then = (
            "Wait again with a longer timeout, or with timeout=0 to read the "
            "index back to its start without waiting."
            if progress.cut
            else "Wait again once the indexer has caught up."
        )
        return IndexWaitTimeoutError(
            f"{lacks} {self._read_back_told(progress)}, and "
            + (
                f"it read on from position {progress.head + 1} to {scanned}. "
                if scanned > progress.head
                else f"nothing was appended after position {progress.head}. "
            )
            + f"{self._indexer_told(progress.revision)} {then}"
        )

    @staticmethod
    def _read_back_told(progress: _WaitProgress) -> str:
        """Say how far a wait read the index back from the head it read first."""
        first, lowest = progress.head, progress.lowest
        if first == 0:
            return "The index was empty when the wait began"
        if lowest > first:
            return (
                f"Each was saved after the index reached position {first}, "
                "the head when the wait began"
            )
        if progress.cut:
            return (
                f"The timeout stopped its read of the index back from position "
                f"{first} at position {lowest}: they may be indexed below it"
            )
        if lowest > 1:
            return (
                f"It read the index back from position {first} to {lowest}, "
                "below which none can be (each was saved after the index had "
                f"reached position {lowest - 1})"
            )
        return f"It read the whole index back from position {first}"

    def _indexer_told(self, began: int | None) -> str:
        """Say whether the indexer committed while a wait waited (``began``: then)."""
        if began == _NOT_READ:  # no wait: nothing to compare
            return (
                "Is an indexer running (`ledger index run`)? `ledger index "
                "status` shows its lag."
            )
        try:
            now = self._index_revision()
        except OperationalError as error:
            # Said, not raised: the timeout is what the caller must hear.
            return _indexer_unknown(f"reading them failed ({error})")
        if now is None:
            return (
                "No indexer has committed a round yet: is one running "
                "(`ledger index run`)?"
            )
        if began == _READ_FAILED:
            return _indexer_unknown(
                f"reading them when it began to wait failed (revision {now} now)"
            )
        if now == began:
            return (
                f"The indexer's checkpoints did not move while it waited "
                f"(revision {now}): is an indexer running (`ledger index run`)? "
                "`ledger index status` shows its lag."
            )
        moved = f"revision {now}" if began is None else f"revision {began} to {now}"
        return (
            f"The indexer's checkpoints moved while it waited ({moved}): an "
            "indexer is running, behind these saves; `ledger index status` "
            "shows its lag."
        )

    def _revision_at_start(self) -> int | None:
        """Return the revision a wait compares with when it ends (see ``_READ_FAILED``).

        A failed read is no reason to stop waiting: only what a timeout
        says needs it.
        """
        try:
            return self._index_revision()
        except OperationalError:
            return _READ_FAILED

    def _index_revision(self) -> int | None:
        """Return the revision of the indexer's checkpoints (None: no round yet).

        One GetItem of the checkpoints item (its read units are the whole
        item's, though only the revision is returned).
        """
        item = self.connection.call(
            "get_item",
            TableName=self.notifications_table_name,
            Key=schema.index_checkpoints_key(),
            ProjectionExpression="#r",
            ExpressionAttributeNames={"#r": schema.REVISION},
            ConsistentRead=True,
        ).get("Item")
        return int(item[schema.REVISION]["N"]) if item else None

    def _cut_at(self, deadline: float | None, progress: _WaitProgress) -> bool:
        """Return whether a read back past its bound stops: ``deadline`` has passed.

        Reads the indexer's revision first, once: the wait takes time from here.
        """
        if deadline is None:
            return False
        if progress.revision == _NOT_READ:
            progress.revision = self._revision_at_start()
        progress.cut = time.monotonic() >= deadline
        return progress.cut

    def _find_indexed(
        self,
        missing: dict[tuple[str, int], int],
        found: dict[tuple[str, int], int],
        head: int,
        page_size: int,
        *,
        deadline: float | None,
        progress: _WaitProgress,
    ) -> None:
        """Move from ``missing`` to ``found`` the events indexed at or before ``head``.

        Reads batches backwards from ``head``, until every event still
        missing has a floor at or above the positions read (it is after
        ``head``), or until ``deadline`` (None: none) once past the head's
        page and the floors known. A batch that cannot be read, or a missing
        one, is gone past: the events sought may be elsewhere. Notes in
        ``progress`` how far it read, whether the deadline cut it, and what
        was gone past (reported only if an event is still missing when the
        wait ends); and, before reading past the head's page and the floors,
        the indexer's revision, as the wait then begins to take time.
        """
        unreadable = progress.unreadable
        floor = min(missing.values())
        if floor >= head:
            return
        # Read whatever the time: the head's page, and down to the floors
        # known (what was appended since these saves). Only the read below,
        # for events saved elsewhere, down to position 1, is cut short.
        known = [f for f in missing.values() if f > 0]
        bound = min([schema.page_of(head, page_size) * page_size, *known])
        for item in self._batch_items(1, head, page_size, newest_first=True):
            lowest = progress.lowest
            if lowest <= bound and self._cut_at(deadline, progress):
                return
            try:
                first, entries = read_batch_item(item, self.notifications_table_name)
            except CorruptNotificationBatchError as damaged:
                # Its positions end at its key; where they begin shows when
                # the next batch down is read (as a run no batch holds).
                unreadable.append(damaged)
                continue
            last = first + len(entries) - 1
            if last != lowest - 1 and not self._ends_at(unreadable, lowest - 1):
                unreadable.append(self._missing_batch(last + 1, lowest - 1))
            progress.lowest = first
            hit = False
            for position, entry in enumerate(entries, first):
                key = (entry.aggregate_id, entry.version)
                if key in missing:
                    del missing[key]
                    found[key] = position
                    hit = True
            if not missing:
                return
            if hit:
                floor = min(missing.values())
            if floor >= first - 1:
                return
        lowest = progress.lowest
        if lowest > 1 and not self._ends_at(unreadable, lowest - 1):
            unreadable.append(self._missing_batch(1, lowest - 1))

    @staticmethod
    def _ends_at(unreadable: list[CorruptNotificationBatchError], last: int) -> bool:
        """Whether the last batch gone past is a damaged one ending at ``last``."""
        return bool(unreadable) and unreadable[-1].last_position == last


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
