"""The indexer's re-index from the events table, when the stream lost records.

(Just over 400 lines as one concept: the Scan rounds, the saves held back,
the version map and the return to the stream serve the one re-index, and
share its state on the checkpoints item.)

When an iterator after a checkpoint is refused as trimmed (past the
stream's 24 hours), or on a first run whose stream may not hold every event
in the table (it is older than 23 hours, or younger than the table), the
indexer (:class:`ledger.indexer.Indexer`, of which :class:`Reindexing` is a
part) re-indexes from the events table: each round scans one page and
appends what the index lacks, with the Scan's position, in one transaction;
saves not wholly scanned are held back (their keys kept on the checkpoints
item); what the index holds is known by each aggregate's last indexed
version (the version map). Then the indexer goes on from the stream's
TRIM_HORIZON, dropping the records of events the index holds already.

That return needs the stream to hold every record written since the pass
began (a save into a range the Scan had passed is only there), and DynamoDB
Streams keeps a record 24 hours. So when the pass began is kept on the
checkpoints item, and if the indexer would go back to the stream more than
24 hours (less 10 minutes for clocks) after it, it runs another pass
instead, which appends only what the index lacks; passes follow until one
ends within the stream's retention. Back on the stream, a loss in a shard
with a checkpoint shows as a trimmed refusal, and a shard read to its end
has nothing left to lose; but a shard without a checkpoint is read from its
TRIM_HORIZON, which is never refused. So the pass is remembered until every
shard the stream lists has a checkpoint (see :meth:`Reindexing._stream_marks`).

Such shards come in steady running too (a child shard empty when its parent
ended, any shard read while empty), and an indexer stopped for a day while
records came into one and expired would read it empty. So, at all times,
a round that reads every shard without a checkpoint to its tip and finds
nothing keeps its start (``reindex_caught_up``): records written to those
shards before it were read. An indexer about to read the stream while a
listed shard has no checkpoint, more than 24 hours (less 10 minutes) after
that, or after the pass began, re-indexes: the same resumable pass, which
appends only what the index lacks. A running indexer moves the time on with
each commit, or hourly when idle, so it never does.

Costs of a round of a re-index: a strongly consistent Scan page (up to 500
items) and one transaction; the first round of each process reads the whole
sequence once. On the stream, a round that commits nothing writes the
checkpoints item once an hour (one transaction) to keep the time above;
nothing more is written while rounds commit.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from eventsourcing.persistence import DataError

from ledger.dynamodb import schema
from ledger.dynamodb.batches import BatchEntry
from ledger.dynamodb.indexed_recorders import DynamoDBIndexedApplicationRecorder
from ledger.dynamodb.recorders import encode_id
from ledger.index_rounds import (
    _MAX_BATCHES,
    IndexOrderError,
    IndexRound,
    _aggregate,
    _commit_items,
    _Encoded,
    _Record,
    _record,
    _Round,
    _version,
    logger,
)
from ledger.projections.streams import INSERT

if TYPE_CHECKING:  # the stubs are a development dependency only
    from ledger.dynamodb.recorders import Item

RETENTION: Final = 24 * 3600.0
"""Seconds DynamoDB Streams keeps a record."""
_YOUNG_STREAM: Final = RETENTION - 3600.0  # a stream younger holds all it had
_STREAM_WITH_TABLE: Final = 60.0  # a stream made this soon after its table
_CLOCK_MARGIN: Final = 300.0  # between this host's clock and DynamoDB's
_SCAN_LIMIT: Final = 500
_HELD_MAX: Final = 5_000  # keys of held events: well within one item's 400 KB
_CAUGHT_UP_REFRESH: Final = 3600.0  # idle: a write an hour keeps the 24 h moving


class Reindexing:
    """The re-index part of :class:`ledger.indexer.Indexer`.

    Scan pages, held saves, the version map, and going back to the stream
    after them.
    """

    # Set by the indexer this is a part of (and its StreamPoller).
    recorder: DynamoDBIndexedApplicationRecorder
    scan_segments: int
    clock: Callable[[], float]
    """Epoch seconds now (``time.time``; tests make hours pass with another)."""
    client: Any
    stream_arn: str
    _indexed: dict[str, int] | None
    _held: list[_Record] | None
    _encoded: _Encoded | None

    if TYPE_CHECKING:  # the indexer's rounds, which a re-index runs through

        def poll(self) -> int: ...

        def _shards(self) -> list[dict[str, Any]]: ...

        def _read_state(self) -> _Round: ...

        def _report(self, done: IndexRound) -> None: ...

        def _write(
            self,
            state: _Round,
            events: list[BatchEntry],
            checkpoints: dict[str, str],
            extra: Mapping[str, Any] | None = None,
        ) -> bool: ...

    # Re-indexing from the events table ---------------------------------------

    def reindex(
        self,
        timeout: float = 3600.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Re-index from the events table now, to its end; return events appended.

        For ``ledger index reindex``; the indexer starts one itself when the
        stream lost records it had not indexed. A re-index under way (after a
        crash, say) is resumed rather than restarted. ``progress`` is called
        after each round with the rounds run and the events appended so far.
        """
        state = self._read_state()
        if state.scan is None:
            self._start_reindex(state, "asked for")
        head = self.recorder.max_notification_id() or 0
        deadline = time.monotonic() + timeout
        rounds = 0
        while (state := self._read_state()).scan is not None or (
            self._another_pass_due(state, _by_id(self._shards()))
        ):
            self.poll()
            rounds += 1
            if progress is not None:
                progress(rounds, (self.recorder.max_notification_id() or 0) - head)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"The re-index of {self.recorder.events_table_name!r} was "
                    f"still scanning after {timeout} s; run it again to resume."
                )
        return (self.recorder.max_notification_id() or 0) - head

    def _start_reindex(self, state: _Round, reason: str, reindex_pass: int = 1) -> None:
        """Begin a pass of a re-index: the Scan at its start, checkpoints cleared.

        The stream is read again from its TRIM_HORIZON once the Scan is done;
        when the pass began is kept until then (see :meth:`_another_pass_due`).
        """
        logger.warning(
            "re-indexing %s from the events table (pass %d): %s",
            self.recorder.events_table_name,
            reindex_pass,
            reason,
            extra={
                "reason": reason,
                "segments": self.scan_segments,
                "pass": reindex_pass,
            },
        )
        scan = {str(segment): {"NULL": True} for segment in range(self.scan_segments)}
        self._write(
            state,
            [],
            {},
            {
                schema.REINDEX_SCAN: {"M": scan},
                schema.REINDEX_SEGMENTS: {"N": str(self.scan_segments)},
                schema.REINDEX_HELD: {"L": []},
                schema.REINDEX_STARTED: {"N": str(self.clock())},
                schema.REINDEX_PASS: {"N": str(reindex_pass)},
                schema.REINDEX_CAUGHT_UP: None,
            },
        )
        self._held = []

    def _another_pass_due(
        self, state: _Round, listed: Mapping[str, Mapping[str, Any]]
    ) -> bool:
        """Whether a shard without a checkpoint may have lost records unread.

        ``listed``: the shards DescribeStream lists now, by id.

        Such a shard is read from its TRIM_HORIZON, which DynamoDB Streams
        never refuses, so the indexer needs every record written to it since
        it was last known to hold nothing unread: since a pass of a re-index
        began (a save the Scan had passed already is only in the stream), or
        since a round last read every such shard to its tip and found
        nothing (see :meth:`_stream_marks`). DynamoDB Streams keeps a record
        24 hours: once that much (less a margin for the clocks of the hosts
        that wrote the time and that check it) has gone by, while a listed
        shard has no checkpoint (but one :func:`_covered` by an ancestor's),
        those records may be gone: the events table is scanned (appending
        only what the index lacks), until a pass ends within the retention.
        (Such a shard that left the listing left its children without a
        checkpoint too: they wait for it, or are read from their start.)
        On a first run (no time yet) the stream's age decides instead (see
        :meth:`_stream_holds_since`).
        """
        return bool(lapsed_unguarded(state, listed, self.clock()))

    def _another_pass_reason(
        self, state: _Round, listed: Mapping[str, Mapping[str, Any]]
    ) -> str:
        """Say why :meth:`_another_pass_due` called for a pass."""
        shard_id = _unguarded(listed, state.checkpoints)[0]
        if state.reindex_pass:
            return (
                f"pass {state.reindex_pass} began (or the shards without a "
                "checkpoint were last found empty) more than the stream's "
                "retention ago: saves made since may be gone from the stream, "
                "so the events table is scanned again"
            )
        return (
            f"shard {shard_id} has no checkpoint (it is read from its oldest "
            "record, which is never refused) and the shards without one were "
            "last found empty more than the stream's retention ago: records "
            "may have come and expired unread, so the events table is scanned"
        )

    def _stream_marks(
        self,
        state: _Round,
        listed: Mapping[str, Mapping[str, Any]],
        checkpoints: Mapping[str, str],
        began: float,
        *,
        committing: bool,
        holds_since: float | None = None,
    ) -> dict[str, Any]:
        """Return the marks of the stream's state a round on it sets or removes.

        ``listed``: the shards this round's DescribeStream listed, by id;
        ``checkpoints``: those the round commits; ``began``: the clock before
        that listing; ``holds_since``: on a first run, since when the stream
        holds every record (see :meth:`_stream_holds_since`).

        A loss in a shard with a checkpoint shows as a trimmed refusal (or,
        the shard gone unfinished, as a re-index), and a shard read to its
        end has nothing left to lose; a shard without a checkpoint (a sibling
        or child holding a save back, a child waiting for its parent, an
        empty shard) is read from its TRIM_HORIZON, which is never refused.
        So the pass is kept until every listed shard has a checkpoint. (A
        shard no longer listed aged out 24 hours after its last record, by
        when the clock has called for another pass; a shard made since holds
        only records written since.)

        At all times, when a round read each shard without a checkpoint to
        its tip and found nothing (but those :func:`_covered` by an
        ancestor's checkpoint; vacuously, when every shard has one), no
        record of them written before ``began`` is unread: one trimmed by
        then was written 24 hours before it, so before the stream had to
        hold records from (the round began within the time
        :meth:`_another_pass_due` allows). (A shard listed only later was
        made after ``began``.) So the 24 hours count from ``began``
        (``reindex_caught_up``), written with the round's commit, or by a
        round committing nothing once it is an hour newer than the one
        stored: a running indexer never re-indexes for it. The first commit
        writes ``holds_since`` if no such round came yet. An empty page is
        taken for a shard's tip, as the indexer's reads of open shards take
        a short page.
        """
        marks: dict[str, Any] = {}
        if state.reindex_started is not None and all(s in checkpoints for s in listed):
            marks = {schema.REINDEX_STARTED: None, schema.REINDEX_PASS: None}
        if all(state.read.get(s) == [] for s in _unguarded(listed, checkpoints)):
            caught_up = began
        elif state.revision is None and holds_since is not None:
            caught_up = holds_since
        else:
            return marks  # a shard not read this round, or read and held back
        since = _stream_needed_since(state)
        if (
            committing
            or marks
            or (
                state.revision is not None
                and (since is None or began >= since + _CAUGHT_UP_REFRESH)
            )
        ):
            marks[schema.REINDEX_CAUGHT_UP] = {"N": str(caught_up)}
        return marks

    def _stream_holds_since(self, began: float) -> float | None:
        """On a first run, since when the stream holds every record (None: it may not).

        It may not when the table holds an event and the stream is old
        enough to have trimmed records, or was enabled after the table was
        made. Else it holds every record since it was enabled, or, the
        table holding no event yet, since ``began`` (the clock before this
        check). (A Scan of one item, a DescribeTable and a DescribeStream.)
        """
        connection = self.recorder.connection
        table_name = self.recorder.events_table_name
        if not connection.call("scan", TableName=table_name, Limit=1).get("Items"):
            return began
        table = connection.call("describe_table", TableName=table_name)["Table"]
        description = self.client.describe_stream(StreamArn=self.stream_arn)[
            "StreamDescription"
        ]
        created = description.get("CreationRequestDateTime")
        if created is None or (
            time.time() - created.timestamp() > _YOUNG_STREAM
            or created.timestamp()
            > table["CreationDateTime"].timestamp() + _STREAM_WITH_TABLE
        ):
            return None
        return float(created.timestamp())

    def _reindex_round(self, state: _Round) -> int:
        """Scan one page of the events table and append what is not indexed.

        The page's events not in the index yet (by each aggregate's last
        indexed version) are appended with the Scan's new LastEvaluatedKey in
        one transaction, so a crash resumes where the last commit left off.
        A save not wholly scanned yet is held back (its keys kept on the
        checkpoints item), with what follows it of its aggregates.
        """
        indexed = self._indexed_versions(state)
        held = self._held_records(state)
        scan = dict(state.scan or {})
        scanned: list[_Record] = []
        if scan:  # else: the Scan is done, and only deferred events are left
            segment = min(scan, key=int)
            params: dict[str, Any] = {
                "TableName": self.recorder.events_table_name,
                "Limit": _SCAN_LIMIT,
                "ConsistentRead": True,
            }
            if state.segments > 1:
                params.update(Segment=int(segment), TotalSegments=state.segments)
            if scan[segment] is not None:
                params["ExclusiveStartKey"] = scan[segment]
            page = self.recorder.connection.call("scan", **params)
            scanned = [_scanned(item) for item in page.get("Items", [])]
            following = page.get("LastEvaluatedKey")
            if following is None:
                scan.pop(segment)
            else:
                scan[segment] = following
        fresh = [
            r
            for r in scanned
            if r.entry is not None
            and r.entry.version > indexed.get(r.entry.aggregate_id, 0)
        ]
        units, incomplete = _released(held + fresh)
        taken, deferred = self._fitting_units(state.head, units)
        events = [r.entry for unit in taken for r in unit if r.entry is not None]
        self._check_reindexed(events, indexed)
        still_held = [r for unit in deferred for r in unit] + incomplete
        extra: dict[str, Any]
        if scan or deferred:
            if len(still_held) > _HELD_MAX:
                raise DataError(
                    f"The re-index of {self.recorder.events_table_name!r} holds "
                    f"back {len(still_held)} events of saves not wholly found "
                    "in the events table: check what writes to it."
                )
            extra = {
                schema.REINDEX_SCAN: {"M": {k: _key(v) for k, v in scan.items()}},
                schema.REINDEX_HELD: {"L": [{"M": _event_key(r)} for r in still_held]},
            }
        else:
            # Saves still incomplete at the end were written during the
            # re-index (another of their events was saved after the Scan
            # passed it): the stream, read next, holds them whole.
            extra = {
                schema.REINDEX_SCAN: None,
                schema.REINDEX_SEGMENTS: None,
                schema.REINDEX_HELD: None,
                schema.REINDEXED_AT: {"N": str(self.clock())},
            }
            still_held = []
        if self._write(state, events, {}, extra):
            self._held = still_held
        self._report(IndexRound(len(events), 0, None, reindexing=True))
        return max(1, len(scanned), len(events))

    def _fitting_units(
        self, head: int, units: list[list[_Record]]
    ) -> tuple[list[list[_Record]], list[list[_Record]]]:
        """Split units into those one transaction takes, and those deferred.

        A prefix is taken, so each aggregate's events stay in version order.
        """
        taken = list(units)
        page_size = self.recorder.page_size_to_write()
        batch_format = self.recorder.batch_format
        self._encoded = None
        while taken:
            events = [r.entry for unit in taken for r in unit if r.entry is not None]
            items = _commit_items(head, events, page_size, batch_format, _MAX_BATCHES)
            if items is not None:
                # Written as fitted (see Indexer._write): encoded once.
                self._encoded = ((head, page_size, batch_format), events, items)
                break
            taken = taken[: len(taken) // 2] if len(taken) > 1 else []
        if not taken and units:
            raise DataError(
                f"A save of {sum(1 for r in units[0] if r.entry)} events found by "
                f"the re-index of {self.recorder.events_table_name!r} does not "
                "fit one transaction of the indexer: nothing was indexed."
            )
        return taken, units[len(taken) :]

    def _check_reindexed(
        self, events: list[BatchEntry], indexed: dict[str, int]
    ) -> None:
        last = dict(indexed)
        for entry in events:
            previous = last.get(entry.aggregate_id)
            if previous is not None and entry.version != previous + 1:
                raise IndexOrderError(
                    f"Aggregate {entry.aggregate_id} version {entry.version} was "
                    f"found by the re-index of {self.recorder.events_table_name!r} "
                    f"after version {previous}: not next, so nothing was indexed. "
                    "Check what writes to the events table, then run it again."
                )
            last[entry.aggregate_id] = entry.version

    def _indexed_versions(self, state: _Round) -> dict[str, int]:
        """Return each aggregate's last version in the index, read once.

        Reads the whole sequence (a Query per page; RCUs as for reading the
        index once) and keeps one entry per aggregate in memory: about 150
        bytes each, so 1 GB for some 7 million aggregates.
        """
        if self._indexed is None:
            indexed: dict[str, int] = {}
            start = 1
            while start <= state.head:
                page = self.recorder.select_notifications(start, 1000, stop=state.head)
                if not page:
                    break
                for notification in page:
                    indexed[encode_id(notification.originator_id)] = (
                        notification.originator_version
                    )
                start = page[-1].id + 1
            self._indexed = indexed
        return self._indexed

    def _held_records(self, state: _Round) -> list[_Record]:
        """Return the events held back, re-read by their keys after a restart."""
        if self._held is not None:
            return list(self._held)
        found: dict[tuple[str, int], _Record] = {}
        keys = list(state.held)
        table = self.recorder.events_table_name
        while keys:
            chunk, keys = keys[:100], keys[100:]
            request: dict[str, Any] = {table: {"Keys": chunk, "ConsistentRead": True}}
            while request:
                response = self.recorder.connection.call(
                    "batch_get_item", RequestItems=request
                )
                for item in response.get("Responses", {}).get(table, []):
                    record = _scanned(item)
                    if record.entry is not None:
                        key = (record.entry.aggregate_id, record.entry.version)
                        found[key] = record
                request = response.get("UnprocessedKeys") or {}
        ordered = [
            found[key[schema.AGGREGATE_ID]["S"], int(key[schema.VERSION]["N"])]
            for key in state.held
        ]
        self._held = ordered
        return list(ordered)

    # Back on the stream ------------------------------------------------------

    def _not_indexed(
        self, state: _Round, read: dict[str, list[_Record]]
    ) -> dict[str, list[_Record]]:
        """Return what a round read, the records of events indexed already passed over.

        Such a record (of an event a re-index appended) is kept in its place
        as one of no new event: its shard's checkpoint moves past it, and,
        being of no save any more, it holds nothing back. So a save whose
        part in one shard was trimmed while another shard still holds the
        rest is not taken for one not wholly read, which would hold back
        that shard's later records until DynamoDB trims them too. Only
        records written before the last re-index finished (plus a margin
        for clocks) can be indexed already; for them the index's versions
        are read once.
        """
        if state.reindexed_at is None:
            return read
        until = state.reindexed_at + _CLOCK_MARGIN
        events = [r for records in read.values() for r in records if r.entry]
        if all(r.created is not None and r.created > until for r in events):
            if events:
                self._indexed = None  # past the re-index: free the memory
            return read
        indexed = self._indexed_versions(state)
        return {
            shard_id: [
                r
                if r.entry is None
                or r.entry.version > indexed.get(r.entry.aggregate_id, 0)
                else dataclasses.replace(r, entry=None, save=None)
                for r in records
            ]
            for shard_id, records in read.items()
        }


def _stream_needed_since(state: _Round) -> float | None:
    """Since when shards without a checkpoint must keep their records (None: unknown).

    Unknown before a first commit, or in an item written before the time was
    kept at all times, until a round writes it.
    """
    known = [
        moment
        for moment in (state.reindex_started, state.reindex_caught_up)
        if moment is not None
    ]
    return max(known) if known else None


def lapsed_unguarded(
    state: _Round, listed: Mapping[str, Mapping[str, Any]], now: float
) -> list[str]:
    """Return the listed shards without a checkpoint that may have lost records unread.

    Empty unless the stream's retention (less the clocks' margin) has gone
    by at ``now`` (epoch seconds) since :func:`_stream_needed_since`: see
    :meth:`Reindexing._another_pass_due`, and skip-batch's check of the
    same (:mod:`ledger.dynamodb.index_coverage`).
    """
    since = _stream_needed_since(state)
    if state.scan is not None or since is None:
        return []
    if now <= since + RETENTION - 2 * _CLOCK_MARGIN:
        return []
    return _unguarded(listed, state.checkpoints)


def _by_id(shards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {shard["ShardId"]: shard for shard in shards}


def _unguarded(
    listed: Mapping[str, Mapping[str, Any]], checkpoints: Mapping[str, str]
) -> list[str]:
    """Return the listed shards without a checkpoint, bar those :func:`_covered`.

    Each is read from its TRIM_HORIZON, so a loss of its records is never
    refused as trimmed.
    """
    return [
        shard_id
        for shard_id in listed
        if shard_id not in checkpoints and not _covered(shard_id, listed, checkpoints)
    ]


def _covered(
    shard_id: str,
    listed: Mapping[str, Mapping[str, Any]],
    checkpoints: Mapping[str, str],
) -> bool:
    """Whether an ancestor's checkpoint covers a shard that has none.

    It does when the nearest listed ancestor with a checkpoint is not read
    to its end: the shard's records are younger than that ancestor's unread
    ones (a child's come after its parent's), so a loss of them shows as a
    trimmed refusal of the ancestor's checkpoint, or the ancestor leaving
    the stream unfinished, as in steady running. (A child waiting for such
    a parent, with a backlog to read, holds back no second pass.)
    """
    seen = {shard_id}
    while True:
        parent_id = listed[shard_id].get("ParentShardId")
        if parent_id is None or parent_id not in listed or parent_id in seen:
            return False
        number = checkpoints.get(parent_id)
        if number is not None:
            ending = (
                listed[parent_id]
                .get("SequenceNumberRange", {})
                .get("EndingSequenceNumber")
            )
            return ending is None or int(number) < int(ending)
        seen.add(parent_id)
        shard_id = parent_id


def _scanned(item: Mapping[str, Any]) -> _Record:
    """Return an events table item as a record of the re-index."""
    raw = {"eventName": INSERT, "dynamodb": {"NewImage": item, "SequenceNumber": "0"}}
    return _record("events table", raw)


def _event_key(record: _Record) -> Item:
    return {
        schema.AGGREGATE_ID: {"S": _aggregate(record)},
        schema.VERSION: {"N": str(_version(record))},
    }


def _key(value: Item | None) -> Any:
    return {"NULL": True} if value is None else {"M": value}


def _released(pending: list[_Record]) -> tuple[list[list[_Record]], list[_Record]]:
    """Split scanned events into units to append now, and events held back.

    A unit is a single event, or a whole save in its own order. Each
    aggregate's events go in version order: an aggregate's next event waits
    while its event before is held (a save of which some events are not
    scanned yet).
    """
    queues: dict[str, list[_Record]] = defaultdict(list)
    members: dict[str, list[_Record]] = defaultdict(list)
    for record in pending:
        queues[_aggregate(record)].append(record)
        if record.save is not None:
            members[record.save[0]].append(record)
    for queue in queues.values():
        queue.sort(key=_version)
    units: list[list[_Record]] = []
    progress = True
    while progress:
        progress = False
        for queue in queues.values():
            if not queue:
                continue
            first = queue[0]
            if first.save is None:
                units.append([queue.pop(0)])
                progress = True
                continue
            save = sorted(
                members[first.save[0]], key=lambda r: r.save[1] if r.save else 0
            )
            if len(save) < first.save[2] or not _at_fronts(save, queues):
                continue
            for record in save:
                queues[_aggregate(record)].remove(record)
            units.append(save)
            progress = True
    return units, [r for queue in queues.values() for r in queue]


def _at_fronts(save: list[_Record], queues: dict[str, list[_Record]]) -> bool:
    """Whether each aggregate's events of a save are the first of its queue."""
    mine: dict[str, list[_Record]] = defaultdict(list)
    for record in save:
        mine[_aggregate(record)].append(record)
    return all(
        queues[aggregate][: len(records)] == sorted(records, key=_version)
        for aggregate, records in mine.items()
    )
