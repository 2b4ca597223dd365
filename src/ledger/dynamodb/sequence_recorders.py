"""The ``sequence`` ordering: events and a gap-free application sequence.

(Over 400 lines as one concept: writing, reading and subscribing to the one
sequence share its invariants, stated here once.)

Selected by ``DYNAMODB_ORDERING=sequence`` (the default). Every save commits
its events together with a notification batch and the sequence item (see
:mod:`.schema`), so notification logs, ``select_notifications`` and
subscriptions work as ``eventsourcing`` expects. Costs are listed in
:mod:`.recorders`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    DataError,
    ListenNotifySubscription,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
)

from ledger.dynamodb import schema
from ledger.dynamodb.batches import (
    FORMAT,
    BatchEntry,
    CorruptNotificationBatchError,
    batch_item,
    read_batch_item,
)
from ledger.dynamodb.client import (
    DynamoDBConnection,
    Outage,
    TransactionConflictError,
)
from ledger.dynamodb.limits import MAX_TRANSACTION_ACTIONS
from ledger.dynamodb.recorders import (
    MAX_SAVE_ATTEMPTS,
    NOT_EXISTS,
    DynamoDBAggregateRecorder,
    DynamoDBTrackingRecorder,
    Ordering,
    OriginatorIDType,
    _backoff,
    encode_id,
    logger,
)
from ledger.dynamodb.tables import ensure_table

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import (
        KeysAndAttributesTypeDef,
        TransactWriteItemTypeDef,
    )

    from ledger.dynamodb.recorders import Item

_BATCH_KEY_NAME = {"#key": schema.POSITION}
_SEQUENCE_KEY: Item = {
    schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
    schema.POSITION: {"N": "0"},
}
_MAX_BATCH_GET_KEYS = 100
BATCH_REACH: Final = MAX_TRANSACTION_ACTIONS - 1
"""How far past a position the batch holding it may end. A batch holds at most
``MAX_TRANSACTION_ACTIONS - 2`` events (its save also writes the batch and the
sequence item), so the batch holding ``p`` ends by ``p + 97``; readers look
up to ``p + BATCH_REACH``, a margin of two."""
_READ_AHEAD_KEPT: Final = 4
"""Answers to batch Queries a recorder keeps for its next reads: room for a few
readers paging through the sequence at once. Each holds at most one
notifications page's positions and DynamoDB's 1 MB of an answer, plus the
batches of it decoded so far."""


class _ReadBatch:
    """A batch item as a Query returned it, decoded when first wanted."""

    __slots__ = ("_decoded", "item", "last")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.last = int(item[schema.POSITION]["N"])
        self._decoded: tuple[int, list[BatchEntry]] | None = None

    def decoded(self, table_name: str) -> tuple[int, list[BatchEntry]]:
        """Return the first position and events, or raise (every time) if corrupt."""
        if self._decoded is None:
            self._decoded = read_batch_item(self.item, table_name)
        return self._decoded


class _ReadAhead(NamedTuple):
    """One Query answer: every batch item ending from ``low`` to ``high``, in order.

    All on one notifications page.
    """

    low: int
    high: int
    batches: tuple[_ReadBatch, ...]


class _Bounds(NamedTuple):
    """How far one ``select_notifications`` call reads, and by which page size."""

    high: int
    """The highest position wanted."""
    last: int
    """The last committed position, as read for (or before) this call."""
    stop: int | None
    """The caller's ``stop``."""
    page_size: int
    """The page size every position up to ``last`` is filed by: taken once per
    call, with ``last``, so that one read never mixes two sizes."""


def _page_end(position: int, page_size: int) -> int:
    """Return the last position a batch on the page of ``position`` may end at."""
    return (schema.page_of(position, page_size) + 1) * page_size - 1


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
    measured in ``benchmarks/``. Applications whose readers do not need the
    sequence (projections fed by DynamoDB Streams) can drop it with
    ``DYNAMODB_ORDERING=stream``.
    """

    ordering: ClassVar[Ordering] = "sequence"
    batch_format: int = FORMAT
    """The layout of the notification batches this recorder (and an indexer
    appending for it) writes, one of ``batches.WRITTEN_FORMATS``: set it to 2
    while a reader of the table is a ledger older than format 3."""

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
        self._committed_seen = 0
        """The highest last position seen committed: every position up to it is
        readable for good (a batch ends there)."""
        self._page_size: int | None = None
        """The table's page size, from its sequence item (None: not read yet,
        or the table has none yet)."""
        self._listeners: set[threading.Event] = set()
        self._read_ahead: tuple[_ReadAhead, ...] = ()
        """The last Query answers of batches, newest first (see ``_batches``)."""
        self._read_ahead_lock = threading.Lock()

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
        idempotency_key: str | None = kwargs.get("idempotency_key")
        fingerprint: str | None = kwargs.get("idempotency_fingerprint")
        if not stored_events:
            if tracking is not None:
                self._insert_tracking_only(tracking)
            return None
        self._check_unique(stored_events)
        with self._write_lock:
            for _ in range(MAX_SAVE_ATTEMPTS):
                expected = self._last_position
                actions = self._save_actions(stored_events, expected, tracking)
                positions = range(expected + 1, expected + len(stored_events) + 1)
                actions.extend(
                    self._key_action(
                        idempotency_key, stored_events, positions, fingerprint
                    )
                )
                batch_index = len(stored_events)
                sequence_index = batch_index + 1
                conflict = self._transact(
                    actions,
                    stored_events,
                    race_indices=frozenset({batch_index, sequence_index}),
                    key=(
                        (len(actions) - 1, idempotency_key) if idempotency_key else None
                    ),
                )
                if conflict is None:
                    # The batch was filed by this size, and the table holds it.
                    self._page_size = self.page_size_to_write()
                    self._last_position = expected + len(stored_events)
                    self._committed_seen = max(
                        self._committed_seen, self._last_position
                    )
                    break
                self._last_position = self._position_from(conflict, sequence_index)
                logger.info(
                    "lost the race for the application sequence, retrying",
                    extra={"expected": expected, "position": self._last_position},
                )
            else:
                raise OperationalError(
                    f"{self._describe_save(stored_events)}: lost the race for the "
                    f"application sequence {MAX_SAVE_ATTEMPTS} times. Other "
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

    def _tracking_action(self, tracking: Tracking) -> TransactWriteItemTypeDef | None:
        return None

    def _save_actions(
        self,
        stored_events: Sequence[StoredEvent],
        expected: int,
        tracking: Tracking | None,
    ) -> list[TransactWriteItemTypeDef]:
        first = expected + 1
        last = expected + len(stored_events)
        page_size = self.page_size_to_write()
        actions = [
            self._put_action(self._event_item(event, first + offset))
            for offset, event in enumerate(stored_events)
        ]
        entries = [
            BatchEntry(
                encode_id(e.originator_id), e.originator_version, e.topic, e.state
            )
            for e in stored_events
        ]
        actions.append(
            {
                "Put": {
                    "TableName": self.notifications_table_name,
                    "Item": batch_item(first, entries, page_size, self.batch_format),
                    "ConditionExpression": NOT_EXISTS,
                    "ExpressionAttributeNames": _BATCH_KEY_NAME,
                }
            }
        )
        actions.append(self._sequence_action(expected, last, page_size))
        tracking_action = self._tracking_action(tracking) if tracking else None
        if tracking_action is not None:
            actions.append(tracking_action)
        return actions

    def _sequence_action(
        self, expected: int, last: int, page_size: int
    ) -> TransactWriteItemTypeDef:
        """Update the sequence item from ``expected`` to ``last``, if it holds them.

        The first write (``expected`` 0) records ``page_size``; later ones
        are conditional on it, so batches filed by another page size than
        the table's never commit (the writer re-reads it and retries).
        """
        values: Item = {":new": {"N": str(last)}, ":size": {"N": str(page_size)}}
        update = "SET #last = :new"
        if expected == 0:
            condition = "attribute_not_exists(#last)"
            update += ", #size = :size"
        else:
            condition = "#last = :expected AND "
            if page_size == schema.LEGACY_PAGE_SIZE:
                # Tables written before the size was recorded have none.
                condition += "(attribute_not_exists(#size) OR #size = :size)"
            else:
                condition += "#size = :size"
            values[":expected"] = {"N": str(expected)}
        return {
            "Update": {
                "TableName": self.notifications_table_name,
                "Key": _SEQUENCE_KEY,
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {
                    "#last": schema.LAST_POSITION,
                    "#size": schema.POSITIONS_PER_PAGE,
                },
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    @property
    def page_size(self) -> int:
        """Positions per page of the notifications table, as its sequence item says.

        Taken from the sequence item whenever that is read anyway (each
        ``max_notification_id``, a lost race), so it costs no request of its
        own, except here when nothing has read the item yet. A table not
        written yet has none: its first write records ``schema.PAGE_SIZE``,
        which is returned until then.
        """
        if self._page_size is None:
            self.max_notification_id()
        return self.page_size_to_write()

    def page_size_to_write(self) -> int:
        """Return the page size a write files its batches by, without reading.

        The table's, once read; before that ``schema.PAGE_SIZE``, which the
        write's condition on the sequence item checks (a first write records
        it; any other fails on a table written already, and the writer learns
        the table's size from the item returned).
        """
        return self._page_size or schema.PAGE_SIZE

    def _learn_page_size(self, sequence_item: Item) -> int:
        """Take the table's page size from its sequence item; return it.

        A table's page size only ever goes down (``ledger index repage``
        moves pages of 100,000 positions onto smaller ones, never back), so
        a larger size than one already learned is a stale answer (read
        before the switch, handled after another thread learned the new
        size) and is ignored.
        """
        value = sequence_item.get(schema.POSITIONS_PER_PAGE)
        if value is None:
            return self._keep_smaller(schema.LEGACY_PAGE_SIZE)
        try:
            size = int(value["N"])
        except (KeyError, TypeError, ValueError):
            size = 0
        if size < 1:
            raise DataError(
                f"The sequence item of {self.notifications_table_name!r} holds "
                f"{schema.POSITIONS_PER_PAGE} = {value!r}, not a positive whole "
                "number, so its notification batches cannot be found. Restore it "
                "(its batch items' keys say the size: page = position // size)."
            )
        return self._keep_smaller(size)

    def _keep_smaller(self, size: int) -> int:
        if self._page_size is None or size < self._page_size:
            self._page_size = size
        return self._page_size

    def _position_from(
        self, conflict: TransactionConflictError, sequence_index: int
    ) -> int:
        """Return the sequence position DynamoDB returned with a lost race."""
        reasons = conflict.reasons
        reason = reasons[sequence_index] if len(reasons) > sequence_index else {}
        item = reason.get("Item")
        if item and schema.LAST_POSITION in item:
            self._learn_page_size(item)
            return int(item[schema.LAST_POSITION]["N"])
        return self.max_notification_id() or 0

    # Reading -----------------------------------------------------------------

    def max_notification_id(self) -> int | None:
        """Return the last committed position (strongly consistent), or None."""
        head = self._read_head()
        return None if head is None else head[0]

    def _read_head(self) -> tuple[int, int] | None:
        """Return the last committed position and the page size, from one read.

        None: nothing written yet. The two come from the same sequence item,
        so the size is the one every position up to that last is filed by,
        whatever another thread of this recorder learns meanwhile.
        """
        response = self.connection.call(
            "get_item",
            TableName=self.notifications_table_name,
            Key=_SEQUENCE_KEY,
            ConsistentRead=True,
        )
        item = response.get("Item")
        if item is None:
            return None
        size = self._learn_page_size(item)
        last = int(item[schema.LAST_POSITION]["N"])
        self._committed_seen = max(self._committed_seen, last)
        return last, size

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return notifications from ``start`` up to ``stop``, at most ``limit``.

        Reads the sequence item first, so it never returns position ``n + 1``
        before ``n`` is readable, unless every position wanted is at or below
        a last position this recorder already saw committed. Batches are read
        by one Query per notifications page, which reads on to the end of
        the page (at most ``limit`` positions further, never past ``stop``)
        and is kept for the next call: a reader paging through history makes
        about one request per page of the table (see ``_batches``).

        A batch item that cannot be read, or is missing, raises
        :class:`CorruptNotificationBatchError` when it holds the first
        position wanted; otherwise the notifications before it are returned.
        """
        if limit <= 0:
            return []
        low = 1 if start is None else (start if inclusive_of_start else start + 1)
        low = max(low, 1)
        wanted = low + limit - 1 if stop is None else min(stop, low + limit - 1)
        if topics or wanted > self._committed_seen:
            head = self._read_head()
            if head is None:
                return []
            last, page_size = head
        else:
            # Taken once: the whole read files by this size, even if another
            # thread learns a new one meanwhile (``ledger index repage``).
            last, page_size = self._committed_seen, self.page_size
        high = last if stop is None else min(stop, last)
        if low > high:
            return []  # nothing new: an idle poll costs the GetItem only
        bounds = _Bounds(high, last, stop, page_size)
        read_ahead = bool(self._read_ahead)
        try:
            return self._read(low, bounds, limit, topics, read_ahead)
        except CorruptNotificationBatchError:
            if not read_ahead:
                raise
            # The batches read ahead by an earlier call may predate a repair
            # of the table (a batch restored): read them again to be sure.
            self._forget_read_ahead()
            return self._read(low, bounds, limit, topics, False)

    def _read(
        self,
        low: int,
        bounds: _Bounds,
        limit: int,
        topics: Sequence[str],
        read_ahead: bool,
    ) -> list[Notification]:
        """Return the notifications ``select_notifications`` asked for.

        ``read_ahead``: whether batches read ahead by earlier calls may be
        used.
        """
        high = bounds.high
        notifications: list[Notification] = []
        pointers: list[int] = []
        ids: dict[str, UUID | str] = {}
        found = (notifications, pointers, ids)
        wanted_topics = frozenset(topics)
        covered = low - 1  # the batches read so far hold every position to here
        try:
            for batch in self._batches(low, bounds, limit, read_ahead):
                first, entries = batch.decoded(self.notifications_table_name)
                if first > covered + 1:
                    raise self._missing_batch(covered + 1, first - 1)
                covered = first + len(entries) - 1
                if self._collect(
                    (first, entries), (low, high, limit), wanted_topics, found
                ):
                    break
                if covered >= high:
                    break
            else:
                # Every position up to ``last`` is in a committed batch, so
                # running out of batches before ``high`` means one is missing.
                raise self._missing_batch(covered + 1, high)
        except CorruptNotificationBatchError:
            if not notifications:
                raise
            # Return what precedes the damaged batch: the next read starts
            # there and reports it.
        if notifications:
            self._returned(notifications[-1].id)
        if pointers:
            self._fill_states(notifications, pointers)
        return notifications

    def _batches(
        self,
        low: int,
        bounds: _Bounds,
        span: int,
        read_ahead: bool,
    ) -> Iterator[_ReadBatch]:
        """Yield, in order, the batches holding positions ``low`` to ``high``.

        Reads in windows of ``span`` positions, each one bounded Query per
        notifications page for the batches ending from the window's first
        position to where the batch holding its last position may end
        (``BATCH_REACH`` further). So a reader that stops within the first
        window (no topics filter: it wants ``span`` positions) has read the
        batches it returns from, plus what the last page's Query reads ahead
        at no extra round trip: on to the end of that page, at most ``span``
        positions past the window, never past ``stop`` or the last committed
        position. That answer is kept (``_READ_AHEAD_KEPT`` of them), so the
        next call of a reader paging through the sequence starts from it: one
        Query per page of the table, not two per call. A reader that goes on
        (topics filtered some out) gets the next window, twice as wide,
        starting after the last batch yielded: none is read twice.

        Batches that are committed never change, so a batch read ahead is
        as good as one read now (``select_notifications`` reads again if one
        turns out damaged or missing: the table may have been repaired).
        """
        high, last, stop, size = bounds
        while low <= high:
            window_high = min(high, low + span - 1)
            upper = min(last, window_high + BATCH_REACH)
            reach = (
                window_high + span if stop is None else min(stop, window_high + span)
            )
            through = min(last, max(upper, min(_page_end(upper, size), reach)))
            end = low - 1
            start = low  # every batch ending before ``start`` has been yielded
            while start <= upper:
                held = self._read_ahead_holding(start) if read_ahead else None
                batches: Iterable[_ReadBatch]
                if held is not None:
                    batches = (b for b in held.batches if b.last >= start)
                    next_start = held.high + 1
                else:
                    # Every page up to the one holding ``upper`` whole (from
                    # ``start``), that one up to ``through``: only the page's
                    # own positions, since a table moved onto smaller pages
                    # keeps other batches under the same page number.
                    page_high = min(through, _page_end(start, size))
                    batches = self._query_batches(start, page_high, span, size)
                    next_start = page_high + 1
                for batch in batches:
                    end = batch.last
                    yield batch
                start = next_start
            # The batch holding window_high ends by ``upper``, so every position
            # up to ``end`` (at least window_high) has been yielded.
            low = max(end, window_high) + 1
            span *= 2

    def _query_batches(
        self, low: int, high: int, span: int, page_size: int
    ) -> Iterator[_ReadBatch]:
        """Yield the batches ending from ``low`` to ``high`` (a page of ``page_size``).

        Each answer is kept for the next reads (``_READ_AHEAD_KEPT``).
        """
        params: dict[str, Any] = {
            "TableName": self.notifications_table_name,
            "KeyConditionExpression": "#p = :p AND #pos BETWEEN :low AND :up",
            "ExpressionAttributeNames": {"#p": schema.PAGE, "#pos": schema.POSITION},
            "ExpressionAttributeValues": {
                ":p": {"N": str(schema.page_of(low, page_size))},
                ":low": {"N": str(low)},
                ":up": {"N": str(high)},
            },
            "ConsistentRead": True,
            # Each batch holds at least one position of the window, until the
            # window is covered: the first answer covers it (unless DynamoDB
            # cuts it at 1 MB), and the caller asks for more only if it must.
            "Limit": span,
        }
        while True:
            response = self.connection.call("query", **params)
            batches = tuple(_ReadBatch(item) for item in response["Items"])
            last_key = response.get("LastEvaluatedKey")
            covered = high if last_key is None else int(last_key[schema.POSITION]["N"])
            self._keep_read_ahead(_ReadAhead(low, covered, batches))
            yield from batches
            if last_key is None:
                return
            params["ExclusiveStartKey"] = last_key
            low = covered + 1

    def _read_ahead_holding(self, position: int) -> _ReadAhead | None:
        """Return a kept Query answer that holds every batch ending at ``position``."""
        for ahead in self._read_ahead:
            if ahead.low <= position <= ahead.high:
                return ahead
        return None

    def _keep_read_ahead(self, ahead: _ReadAhead) -> None:
        with self._read_ahead_lock:
            self._read_ahead = (ahead, *self._read_ahead[: _READ_AHEAD_KEPT - 1])

    def _forget_read_ahead(self) -> None:
        with self._read_ahead_lock:
            self._read_ahead = ()

    def _returned(self, position: int) -> None:
        """Drop the batches kept that end at or before a position just returned.

        Only what no call has returned yet is served from what was read
        ahead: a reader that asks again for positions it was given reads the
        table again (and finds a batch damaged since, as it would have).
        """
        with self._read_ahead_lock:
            self._read_ahead = tuple(
                _ReadAhead(
                    max(ahead.low, position + 1),
                    ahead.high,
                    tuple(b for b in ahead.batches if b.last > position),
                )
                for ahead in self._read_ahead
                if ahead.high > position
            )

    def _missing_batch(self, low: int, high: int) -> CorruptNotificationBatchError:
        """Say that no batch item holds positions ``low`` to ``high``, committed."""
        return CorruptNotificationBatchError(
            self.notifications_table_name,
            high,
            f"no batch item holds positions {low} to {high}: it is missing",
        )

    def _collect(
        self,
        batch: tuple[int, Sequence[BatchEntry]],
        bounds: tuple[int, int, int],
        topics: frozenset[str],
        found: tuple[list[Notification], list[int], dict[str, UUID | str]],
    ) -> bool:
        """Append a batch's wanted notifications; return True when done.

        ``batch`` is (first position, events); ``bounds`` is (lowest position,
        highest position, most notifications); ``found`` is (the
        notifications, the indices of those whose state is still to fetch,
        the aggregate ids decoded so far in this read).
        """
        first, entries = batch
        low, high, limit = bounds
        notifications, pointers, ids = found
        begin = max(low - first, 0)
        end = min(high - first + 1, len(entries))
        if not topics:
            # Every event is wanted: stop at the limit without a check per event.
            end = min(end, begin + limit - len(notifications))
        append = notifications.append
        for position, (aggregate_id, version, topic, state) in zip(
            range(first + begin, first + end), entries[begin:end], strict=True
        ):
            if topics and topic not in topics:
                continue
            # An aggregate's events come together: its id is decoded once.
            originator_id = ids.get(aggregate_id)
            if originator_id is None:
                try:
                    originator_id = self._decode_id(aggregate_id)
                except ValueError as error:
                    raise CorruptNotificationBatchError(
                        self.notifications_table_name,
                        first + len(entries) - 1,
                        f"position {position}: {error}",
                    ) from error
                ids[aggregate_id] = originator_id
            if state is None:
                pointers.append(len(notifications))
            # Positional (the dataclass's field order: originator_id,
            # originator_version, topic, state, id): a quarter faster than
            # keywords. Not filled in through __dict__ (a third faster alone):
            # that gives each its own dict, which the garbage collector then
            # scans, and a long read in a large process came out slower.
            append(
                Notification(
                    originator_id,
                    version,
                    topic,
                    b"" if state is None else state,
                    position,
                )
            )
            if topics and len(notifications) >= limit:
                return True
        return len(notifications) >= limit

    def batch_end(self, position: int) -> int | None:
        """Return the last position of the batch holding ``position``, if committed.

        Reads only the batch's key, so it works on a batch that cannot be read.
        If ``position`` is committed but no batch item holds it or ends after
        it within reach (the item is missing), returns the furthest a batch
        holding it may end: ``position + BATCH_REACH``, at most the last
        committed position.
        """
        upper = position + BATCH_REACH
        for batch in self._batch_items(
            position, upper, self.page_size, keys_only=True, limit=1
        ):
            return int(batch[schema.POSITION]["N"])
        last = self.max_notification_id() or 0
        return min(last, upper) if position <= last else None

    def _batch_items(
        self,
        low: int,
        high: int,
        page_size: int,
        *,
        newest_first: bool = False,
        keys_only: bool = False,
        limit: int | None = None,
    ) -> Iterator[Item]:
        """Yield the batch items ending from ``low`` to ``high``, in position order.

        One Query (per 1 MB, or per ``limit`` items) per notifications page
        of ``page_size`` positions, each asking only for the positions that
        page holds (a table moved onto smaller pages keeps other batches
        under the same page numbers). ``newest_first``: pages and items in
        descending order. ``keys_only``: each item's position alone, so a
        batch that cannot be read is found as well as any.
        """
        pages = range(
            schema.page_of(low, page_size), schema.page_of(high, page_size) + 1
        )
        for page in reversed(pages) if newest_first else pages:
            params: dict[str, Any] = {
                "TableName": self.notifications_table_name,
                "KeyConditionExpression": "#p = :p AND #pos BETWEEN :low AND :up",
                "ExpressionAttributeNames": {
                    "#p": schema.PAGE,
                    "#pos": schema.POSITION,
                },
                "ExpressionAttributeValues": {
                    ":p": {"N": str(page)},
                    ":low": {"N": str(max(low, page * page_size))},
                    ":up": {"N": str(min(high, (page + 1) * page_size - 1))},
                },
                "ConsistentRead": True,
            }
            if newest_first:  # ascending is DynamoDB's default
                params["ScanIndexForward"] = False
            if keys_only:
                params["ProjectionExpression"] = "#pos"
            if limit is not None:
                params["Limit"] = limit
            yield from self.connection.items("query", **params)

    def notifications_from_events(self, low: int, high: int) -> list[Notification]:
        """Return the notifications of positions ``low`` to ``high`` from the events.

        For going past a batch item that cannot be read: each event item
        holds its position. A Scan of the whole events table (its read units
        are the table's size), filtered on position; in position order.
        """
        items = self.connection.items(
            "scan",
            TableName=self.events_table_name,
            FilterExpression="#pos BETWEEN :low AND :high",
            ExpressionAttributeNames={"#pos": schema.POSITION},
            ExpressionAttributeValues={
                ":low": {"N": str(low)},
                ":high": {"N": str(high)},
            },
            ConsistentRead=True,
        )
        found = [
            Notification(
                id=int(item[schema.POSITION]["N"]),
                originator_id=self._decode_id(item[schema.AGGREGATE_ID]["S"]),
                originator_version=int(item[schema.VERSION]["N"]),
                topic=item[schema.TOPIC]["S"],
                state=item[schema.STATE]["B"],
            )
            for item in items
        ]
        return sorted(found, key=lambda notification: notification.id)

    def _fill_states(
        self, notifications: list[Notification], pointers: list[int]
    ) -> None:
        """Fetch the states of notifications stored as pointers (big batches)."""
        for offset in range(0, len(pointers), _MAX_BATCH_GET_KEYS):
            chunk = pointers[offset : offset + _MAX_BATCH_GET_KEYS]
            wanted = {
                (
                    encode_id(notifications[i].originator_id),
                    notifications[i].originator_version,
                ): i
                for i in chunk
            }
            keys = [
                {schema.AGGREGATE_ID: {"S": a}, schema.VERSION: {"N": str(v)}}
                for a, v in wanted
            ]
            request: dict[str, KeysAndAttributesTypeDef] = {
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
        # Set before the base class starts the pulling thread, which reads it.
        self._poll_interval = recorder.poll_interval
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        recorder.listen(self._has_been_notified)

    def _loop_on_pull(self) -> None:
        # As the base class's loop, but waking on a timer too (saves made by
        # other processes notify nobody here), and riding out DynamoDB being
        # unavailable: it waits, backing off, and reads again from where it was.
        outage = Outage("reading the sequence", 2 * self._poll_interval)
        try:
            while not self._has_been_stopped:
                try:
                    self._pull()
                except OperationalError as error:
                    self._has_been_notified.wait(timeout=outage.failed(error))
                    continue
                outage.recovered()
                self._has_been_notified.wait(timeout=self._poll_interval)
        except BaseException as error:  # noqa: BLE001 - re-raised by __next__
            if self._thread_error is None:
                self._thread_error = error
            self.stop()

    def stop(self) -> None:
        """Stop the subscription."""
        super().stop()
        self._recorder.unlisten(self._has_been_notified)


class SequenceProcessRecorder(
    DynamoDBTrackingRecorder, DynamoDBApplicationRecorder, ProcessRecorder
):
    """The constructor and tables of a process recorder with an application sequence.

    The base of the ``sequence`` and ``indexed`` orderings' process recorders:
    each is its ordering's application recorder plus a tracking table. The
    application recorder is whichever comes after ``DynamoDBTrackingRecorder``
    in a subclass's MRO (``DynamoDBApplicationRecorder``, or a subclass of it
    that the subclass lists after this class).
    """

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
        # Past the tracking recorder's constructor (it takes other arguments)
        # to the application recorder's, which sets up the connection and
        # id type that the tracking recorder's would.
        super(DynamoDBTrackingRecorder, self).__init__(
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
        super(DynamoDBTrackingRecorder, self).create_table()
        DynamoDBTrackingRecorder.create_table(self)


class DynamoDBProcessRecorder(SequenceProcessRecorder):
    """An application recorder that also records tracking, in the same transaction."""

    ordering: ClassVar[Ordering] = "sequence"

    def _insert_tracking_only(self, tracking: Tracking) -> None:
        self.insert_tracking(tracking)

    def _tracking_action(self, tracking: Tracking) -> TransactWriteItemTypeDef | None:
        return {"Update": self._tracking_update(tracking)}
