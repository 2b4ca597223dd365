"""The indexer of the ``indexed`` ordering: the events stream, appended to the sequence.

(Over 400 lines as one concept: reading the shards, regrouping their
records into whole saves and writing them in one transaction are the steps
of one round, and share its state and checkpoints item. The re-index from
the events table is :mod:`ledger.reindexing`; what both use,
:mod:`ledger.index_rounds`. It sits above ``ledger.dynamodb``, beside the
projections, since it reads the stream with the stream feed's poller.)

The indexer is the one reader of the events table's DynamoDB stream. Each
round (:meth:`Indexer.poll`) it reads every shard after its checkpoint
(a child only after its parent: checkpointed to its end, or read to its end
in the same round, so that a save a shard split put in both is read whole),
and appends what it read to the notifications table in the ``sequence``
ordering's format (:mod:`.batches`), in ONE ``TransactWriteItems``:

* batch items of at most 98 events, positions contiguous from the head;
* the head (sequence) item, updated on condition that it still holds the last
  position read (as a ``sequence`` save's update is);
* the shard checkpoints (one item), on condition that its revision is the one
  read.

So the append and the checkpoints commit together or not at all: a crash
between them cannot happen, a record at or below its shard's checkpoint is a
redelivery and is dropped, and of two indexers racing only one commits a
round; the other re-reads the checkpoints and drops what was indexed.

A save of several events (its items carry ``schema.SAVE_ID``, ``SAVE_INDEX``,
``SAVE_SIZE``) is appended whole and contiguous, in its own order: until all
its records have been read (they may sit in other shards, or come later), it
and everything after it in its shard are held back, that shard's checkpoint
staying before it, and a child shard read in the same round as its parent is
held back whole while anything of its parent is. Each aggregate's events are
appended in version order (sorted within a round). Checked, and refused
with :class:`IndexOrderError`: versions of an aggregate not consecutive
within a round, and a first version in a round that does not follow the last
this indexer appended for that aggregate (remembered for the last 100,000
aggregates, and forgotten when another indexer has written meanwhile). Not
checked: an aggregate's first event ever (whether earlier versions exist
unindexed is not read).

Falling behind: when an iterator after a checkpoint is refused as trimmed
(past the stream's 24 hours), when a checkpointed shard has left the stream
before the indexer recorded reading it to its end (its records expired, and
its child's start would never be refused), or on a first run whose stream may not hold
every event in the table (it is older than 23 hours, or younger than the
table), the indexer re-indexes from the events table (see :meth:`Indexer.reindex`
and :mod:`ledger.reindexing`), then goes on from the stream's TRIM_HORIZON,
dropping the records of events the index holds already; a pass of the
re-index that began more than the stream's retention before that return is
followed by another pass. A shard without a checkpoint is read from its
TRIM_HORIZON, which is never refused: when one is listed and no round has
found every such shard empty for the stream's retention (the indexer was
stopped), records may have expired unread, and the indexer re-indexes too.

Past one core: with ``readers=N`` (``ledger index run --readers N``) the
shards are read by N reader processes (:mod:`ledger.index_readers`), each
given some of a round's shards; this process, the committer, keeps the
rest of the round as above (checkpoints, parents first, regrouping, version
checks, encoding, the transaction), so what is appended is the same. A
reader that dies or stalls loses and repeats nothing: the committer reads
its shards again with another, in the same round. An error raised in a
reader (DynamoDB Streams unavailable) is raised by the round, which
commits nothing, as in process.

Costs per round: a GetItem of the head and one of the checkpoints, a
DescribeStream, per shard a GetShardIterator and a GetRecords per 1,000
records (each shard's first page, then more of full pages while the round
holds less than one transaction takes: :data:`ROUND_RECORDS` records, half
its 4 MB of states; so a catch-up pays these calls once per 9,604 events,
not per 1,000), and when anything is new one transaction (2 WCU per KB of batch
items, plus the head and checkpoints items). Until its first commit, a
Scan of one item, a DescribeTable and a DescribeStream more (the first-run
check above). An idle indexer writes the checkpoints item once an hour (one
transaction). A round of a re-index: see :mod:`ledger.reindexing`.
"""

from __future__ import annotations

import functools
import gc
import heapq
import itertools
import threading
import time
import types
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Self

import botocore.exceptions
import botocore.utils
from eventsourcing.persistence import DataError, ProgrammingError

from ledger.dynamodb import schema
from ledger.dynamodb.batches import BatchEntry
from ledger.dynamodb.client import (
    MAX_OUTAGE_WAIT,
    TransactionCancelledError,
    TransactionConflictError,
)
from ledger.dynamodb.indexed_recorders import DynamoDBIndexedApplicationRecorder
from ledger.dynamodb.limits import (
    MAX_TRANSACTION_ACTIONS,
    MAX_TRANSACTION_BYTES,
)
from ledger.dynamodb.recorders import NOT_EXISTS
from ledger.index_rounds import (
    _MAX_BATCHES,
    BATCH_EVENTS,
    IndexOrderError,
    IndexRound,
    _batch_items,
    _commit_items,
    _Encoded,
    _Record,
    _record,
    _Round,
    logger,
)
from ledger.projections.metrics import (
    COUNT,
    INDEX_LAG_RECORDS,
    INDEX_OLDEST_UNINDEXED_AGE,
    INDEX_RECORDS_APPENDED,
    MILLISECONDS,
    NO_METRICS,
    Metrics,
)
from ledger.projections.streams import StreamPoller
from ledger.reindexing import RETENTION, Reindexing

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

    from ledger.dynamodb.recorders import Item
    from ledger.index_readers import ReaderPool, Work

__all__ = [
    "BATCH_EVENTS",
    "RETENTION",
    "ROUND_RECORDS",
    "IndexOrderError",
    "IndexRound",
    "IndexStatus",
    "Indexer",
    "freeze_start_up",
]

_VERSIONS_KEPT: Final = 100_000
_CHECKPOINTS_KEY: Item = schema.index_checkpoints_key()


READER_TIMEOUT: Final = 120.0
"""Seconds a reader process may go without answering, beyond what a call
under way may take through its streams client's retries (506 s with the
connection's defaults: :func:`ledger.index_readers.call_budget`), before it
is killed and another given its reads. So a reader waiting out DynamoDB
Streams is not taken for stalled: its call raises first, and the round with it."""

ROUND_RECORDS: Final = _MAX_BATCHES * BATCH_EVENTS
"""The records a round reads at most (``batch_size``'s default; per shard):
what one transaction holds, 98 batch items of 98 events."""
_PAGE_RECORDS: Final = 1000  # the most one GetRecords call returns
_ROUND_STATE_BYTES: Final = MAX_TRANSACTION_BYTES // 2
"""Event bytes (state and topic) after which a round reads no more pages:
half a transaction, so that states that do not compress still fit one."""


class _RoundBudget:
    """What a round has read so far, against what one transaction holds."""

    __slots__ = ("bytes", "bytes_limit", "records", "records_limit")

    def __init__(
        self, records_limit: int | None = None, bytes_limit: int | None = None
    ) -> None:
        self.records = 0
        self.bytes = 0
        self.records_limit = ROUND_RECORDS if records_limit is None else records_limit
        self.bytes_limit = _ROUND_STATE_BYTES if bytes_limit is None else bytes_limit

    def spend(self, records: list[_Record]) -> None:
        """Count a page's new records."""
        self.records += len(records)
        self.bytes += sum(
            len(r.entry.state or b"") + len(r.entry.topic) for r in records if r.entry
        )

    def left(self) -> bool:
        """Whether another page may be read (each shard reads one regardless)."""
        return self.records < self.records_limit and self.bytes < self.bytes_limit

    def share(self, readers: int) -> tuple[int, int]:
        """Return what is left, split between ``readers``: (records, bytes) each."""
        return (
            max(0, self.records_limit - self.records) // readers,
            max(0, self.bytes_limit - self.bytes) // readers,
        )


class _TrimmedError(Exception):
    """An iterator after a shard's checkpoint was refused as trimmed."""


class _StoppedError(Exception):
    """A round of :meth:`Indexer.run` needed a reader after a stop was asked."""


@dataclass(frozen=True)
class IndexStatus:
    """How far the index is behind the events table's stream."""

    head: int
    """The last position in the sequence (0: none yet)."""
    behind: int
    """Records in the stream after the checkpoints (counted up to a cap)."""
    oldest_age: float | None
    """Seconds since the oldest of those records was written (None: none)."""
    shards: int
    """Shards in the stream now."""
    reindexing: bool = False
    """Whether a re-index from the events table is under way."""
    trimmed: bool = False
    """Whether a checkpoint is past the stream's retention (a re-index is due)."""
    reindex_pass: int = 0
    """Which pass of the re-index is under way, or was the last (0: none, or
    every shard the stream lists has had a stream checkpoint since). A pass
    that began more than the stream's retention before the indexer could
    tell the stream held what the index lacks is followed by another."""


class _Checkpoints:
    """The round's checkpoints, as :class:`StreamPoller`'s helpers read them."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.numbers: dict[str, str] = {}

    def checkpoint(self, shard_id: str) -> str | None:
        return self.numbers.get(shard_id)

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        raise NotImplementedError  # written only with the round's append


class Indexer(Reindexing, StreamPoller):
    """Appends the events table's stream to the notifications table, exactly once.

    Use in process (:meth:`poll` for one round, :meth:`catch_up`), as a
    long-running poller (:meth:`run`), or through ``ledger index run``.
    ``after_write`` is called after each committed round (with the positions
    appended), before anything else. One indexer per thread: it keeps the
    round's state on itself (several indexers may race; one commits each round).

    ``readers``: reader processes that read the shards (0, the default: this
    process reads them), started by the first round and ended by
    :meth:`close` (and by :meth:`stop` and leaving a ``with`` block): close
    an indexer with readers that is used without those. Each makes its own
    streams client with ``reader_client`` (default: the recorder's
    connection's settings, as ``streams_client`` is made by default; a
    ``streams_client`` given is not used by the readers). A reader that
    answers nothing for ``reader_timeout`` seconds more than a call of its
    client may take through its retries is killed and replaced (see
    :data:`READER_TIMEOUT`); a round waits no longer than its
    :attr:`round_deadline`, if set. Readers are forked (``fork``): POSIX only.
    """

    def __init__(
        self,
        recorder: DynamoDBIndexedApplicationRecorder,
        *,
        batch_size: int = ROUND_RECORDS,
        streams_client: Any = None,
        after_write: Callable[[range], None] | None = None,
        metrics: Metrics = NO_METRICS,
        alarm: Callable[[IndexRound], None] | None = None,
        alarm_age_ms: float = 60_000.0,
        scan_segments: int = 1,
        clock: Callable[[], float] = time.time,
        readers: int = 0,
        reader_timeout: float = READER_TIMEOUT,
        reader_client: Callable[[], Any] | None = None,
    ) -> None:
        if not isinstance(recorder, DynamoDBIndexedApplicationRecorder):
            raise ProgrammingError(
                f"The indexer appends the sequence of DYNAMODB_ORDERING=indexed "
                f"applications; {type(recorder).__name__} is not one: set "
                "DYNAMODB_ORDERING=indexed."
            )
        if batch_size < MAX_TRANSACTION_ACTIONS:
            # A save (up to 100 events) must fit one round's read of a shard.
            raise ProgrammingError(
                f"batch_size {batch_size} is below {MAX_TRANSACTION_ACTIONS}, the "
                "most events one save may write: give the indexer a larger one."
            )
        if readers < 0:
            raise ProgrammingError(
                f"readers {readers} is below 0: give the number of reader "
                "processes (0: read the shards in this process)."
            )
        self.recorder = recorder
        self.checkpoints = _Checkpoints(recorder.connection)
        # StreamPoller reads only ``application.recorder``.
        super().__init__(
            self.checkpoints,
            types.SimpleNamespace(recorder=recorder),
            batch_size=batch_size,
            streams_client=streams_client
            or recorder.connection.streams_client(timestamp_parser=_utc_time),
        )
        self.after_write = after_write
        self.metrics = metrics
        self.alarm = alarm
        self.alarm_age_ms = alarm_age_ms
        self.scan_segments = scan_segments
        self.clock = clock
        self.readers = readers
        """Reader processes that read the shards (0: this process reads them)."""
        self.reader_timeout = reader_timeout
        self.round_deadline: float | None = None
        """When (``time.monotonic()``) a round stops waiting for its readers
        (None, the default: never). Past it, the readers still reading are
        killed, nothing of the round is committed, and the round raises
        :class:`~ledger.index_readers.IndexDeadlineError` (an
        ``OperationalError``). Set before each round by the Lambda indexer,
        which must end its readers before the invocation's timeout; without
        readers, not used (a call under way in this process cannot be ended)."""
        self.reader_client = reader_client or functools.partial(
            recorder.connection.streams_client, timestamp_parser=_utc_time
        )
        """Makes a reader process's streams client (run in that process)."""
        self._pool: ReaderPool | None = None
        self._stopping: threading.Event | None = None
        """The stop event of the :meth:`run` under way: once set, no reader starts."""
        self._runner: threading.Thread | None = None
        """The thread of the last :meth:`start` (it may outlive :meth:`stop`)."""
        self._indexed: dict[str, int] | None = None
        """Per aggregate, the last version in the index (read in full for a
        re-index and the stream records after it; None: not read)."""
        self._held: list[_Record] | None = None
        self._last_versions: OrderedDict[str, int] = OrderedDict()
        self._revision_written: int | None = None
        self._resume: dict[str, tuple[str | None, str]] = {}
        """Per shard: its checkpoint, and the iterator after an empty read from it."""
        self._encoded: _Encoded | None = None
        """The batch items the round's fitting encoded: the head, page size
        and batch format, the events in the order encoded, and the items
        (written as they are when the round appends the same events in the
        same order, after the same head, in the same layout)."""

    # A round -----------------------------------------------------------------

    def poll(self) -> int:
        """Run one round; return how many records (stream or table) it consumed.

        A round of a re-index (see :meth:`reindex`) scans one page of the
        events table; one that starts a re-index counts as one.
        """
        began = self.clock()  # before the listing: see Reindexing._stream_marks
        shards = self._shards()
        state = self._read_state()
        if state.revision != self._revision_written:
            # Another indexer wrote: forget what this one knew of the index.
            self._last_versions.clear()
            self._indexed = None
            self._held = None
        if state.scan is not None:
            return self._reindex_round(state)
        listed = {shard["ShardId"]: shard for shard in shards}
        if self._another_pass_due(state, listed):
            self._start_reindex(
                state,
                self._another_pass_reason(state, listed),
                reindex_pass=state.reindex_pass + 1,
            )
            return 1
        holds_since = None
        if state.revision is None:
            holds_since = self._stream_holds_since(began)
            if holds_since is None:
                self._start_reindex(state, "the stream may not hold every event saved")
                return 1
        self.checkpoints.numbers = dict(state.checkpoints)
        ended = {s for s in listed if self._read_to_its_end(listed[s])}
        gone = sorted(
            shard_id
            for shard_id in state.checkpoints
            if shard_id not in listed and shard_id not in (state.ended_shards or ())
        )
        if gone:
            # DynamoDB Streams lists a closed shard until its records expire: a
            # shard gone before the indexer recorded reading it to its end may
            # have taken records the index lacks (its children, read from
            # their start, are never refused as trimmed).
            self._start_reindex(
                state,
                f"shard {gone[0]} left the stream before the indexer recorded "
                "reading it to its end",
            )
            return 1
        try:
            parents = self._read_shards(shards, state)
        except _TrimmedError as trimmed:
            self._start_reindex(state, str(trimmed))
            return 1
        # Records the index holds already are passed over before saves are
        # cut: a save trimmed from one shard only must not hold back another.
        read = self._not_indexed(state, state.read)
        taken = self._fitting(read, state.head, parents)
        consumed = {record for unit in taken for record in unit}
        new_checkpoints = {
            shard_id: number
            for shard_id, number in state.checkpoints.items()
            if shard_id in listed
        }
        for shard_id, records in read.items():
            done = [r for r in records if r in consumed]
            if done:
                new_checkpoints[shard_id] = done[-1].text
            if len(done) == len(records) and shard_id in state.ended:
                new_checkpoints[shard_id] = state.ended[shard_id]
        everything = [r for records in state.read.values() for r in records]
        committing = new_checkpoints != state.checkpoints
        stream_marks = self._stream_marks(
            state,
            listed,
            new_checkpoints,
            began,
            committing=committing,
            holds_since=holds_since,
        )
        if not committing and not stream_marks:
            self._report(IndexRound(0, len(everything), _oldest_age_ms(everything)))
            return 0
        events = _in_version_order([r for unit in taken for r in unit if r.entry])
        self._check_versions(events)
        ended |= {
            shard_id
            for shard_id, number in new_checkpoints.items()
            if shard_id in state.ended and number == state.ended[shard_id]
        }
        marks = {
            schema.ENDED_SHARDS: {"SS": sorted(ended)} if ended else None,
            **stream_marks,
        }
        self._write(state, events, new_checkpoints, marks)
        self._report(
            IndexRound(len(events), len(everything), _oldest_age_ms(everything))
        )
        return len(consumed)

    def _read_shards(
        self, shards: Sequence[Mapping[str, Any]], state: _Round
    ) -> dict[str, str]:
        """Read every shard after its checkpoint, parents first, into ``state.read``.

        A child is read once its parent is checkpointed to its end, or was
        read to its end in this round, after it: then a save whose records a
        split put in both is read whole, and regrouped. Returns those children
        read with their parent, to their parent. Shards are read in waves:
        every shard free to be read, then the children of those read to
        their end, and so on (:meth:`_read_wave`: in process, or by the
        reader processes).
        """
        listed = {shard["ShardId"]: shard for shard in shards}
        parents: dict[str, str] = {}
        budget = _RoundBudget()
        waiting = list(shards)  # parents before their children
        while waiting:
            wave: list[Mapping[str, Any]] = []
            later: list[Mapping[str, Any]] = []
            pending: set[str] = set()
            for shard in waiting:
                shard_id = shard["ShardId"]
                parent = listed.get(shard.get("ParentShardId") or "")
                if self._read_to_its_end(shard):
                    continue
                if (
                    parent is None
                    or self._read_to_its_end(parent)
                    or parent["ShardId"] in state.ended
                ):
                    wave.append(shard)
                elif parent["ShardId"] in pending:
                    later.append(shard)  # its parent may end in this round
                else:
                    continue  # parents first: the child waits for its parent's end
                pending.add(shard_id)
            if not wave:
                break
            state.read.update(self._read_wave(wave, state, budget))
            for shard in wave:
                parent_id = shard.get("ParentShardId")
                if parent_id in state.read:
                    parents[shard["ShardId"]] = parent_id
            waiting = later
        return parents

    def _read_wave(
        self,
        wave: Sequence[Mapping[str, Any]],
        state: _Round,
        budget: _RoundBudget,
    ) -> dict[str, list[_Record]]:
        """Read each shard of ``wave`` after its checkpoint; return their records.

        In this process one after the other, or with ``readers`` by the
        reader processes at once, each given some of the shards and a share
        of what the round's ``budget`` has left (:mod:`ledger.index_readers`).
        """
        if not self.readers:
            return {
                shard["ShardId"]: self._read_shard(shard, state, budget)
                for shard in wave
            }
        pool = self._reader_pool()
        work: list[Work] = [[] for _ in range(pool.count)]
        for index, shard in enumerate(wave):
            shard_id = shard["ShardId"]
            work[index % pool.count].append(
                (shard, state.checkpoints.get(shard_id), self._resumed(shard_id, state))
            )
        fetched = pool.fetch(
            work, state.checkpoints, budget.share(min(pool.count, len(wave)))
        )
        read = {}
        for shard in wave:
            records, iterator = fetched[shard["ShardId"]]
            budget.spend(records)
            self._after_read(shard, state, records, iterator)
            read[shard["ShardId"]] = records
        return read

    def _reader_pool(self) -> ReaderPool:
        if self._pool is None:
            self._refuse_after_stop()
            from ledger.index_readers import ReaderPool  # noqa: PLC0415 - it imports this module

            self._pool = ReaderPool(
                self,
                self.readers,
                timeout=self.reader_timeout,
                make_client=self.reader_client,
            )
        return self._pool

    def _refuse_after_stop(self) -> None:
        """Raise :class:`_StoppedError` if the run under way was asked to stop."""
        if self._stopping is not None and self._stopping.is_set():
            raise _StoppedError

    def close(self) -> None:
        """End the reader processes, if any (a later round starts them again).

        By the thread that runs the rounds (or once it has ended): the
        readers are not safe across threads.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def run(
        self,
        stop: threading.Event,
        interval: float | None = None,
        *,
        max_backoff: float = MAX_OUTAGE_WAIT,
        on_unavailable: Callable[[Exception, float], None] | None = None,
    ) -> None:
        """Run rounds until ``stop`` is set (see ``Polling.run``), then end the readers.

        Once ``stop`` is set no reader is started: a round under way that
        would need one (another reader's death) ends there, committing
        nothing, and the run with it.
        """
        self._stopping = stop
        try:
            super().run(
                stop, interval, max_backoff=max_backoff, on_unavailable=on_unavailable
            )
        except _StoppedError:
            pass  # asked to stop: the round committed nothing
        finally:
            self._stopping = None
            self.close()  # by the thread that used the readers

    def start(self) -> Self:
        """Run rounds in a daemon thread until :meth:`stop` (see ``Polling.start``).

        Refused while the thread of an earlier start still ends its round
        (it outlived :meth:`stop`'s timeout): both would use its readers.
        """
        if self._runner is not None and self._runner.is_alive():
            raise RuntimeError(
                f"The indexer of {self.recorder.events_table_name!r} is still "
                "ending the round under way when it was last stopped: wait for "
                "it (stop again with a longer timeout), then start it."
            )
        super().start()
        self._runner = self._thread
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread :meth:`start` began, then end the reader processes.

        A thread that outlives ``timeout`` (a round under way) ends its
        readers itself once the round ends, and starts no new one meanwhile.
        A later stop waits up to its ``timeout`` for that thread too, and
        ends the readers only once it has ended: never under its round.
        """
        # The thread of the last start, even one an earlier stop gave up on
        # (``Polling.stop`` forgets it): only once it has ended are its
        # readers this caller's to close.
        runner, given_up = self._runner, self._thread is None
        try:
            super().stop(timeout)
        finally:
            if given_up and runner is not None:
                runner.join(timeout)
            if runner is None or not runner.is_alive():
                self.close()

    def _report(self, done: IndexRound) -> None:
        dimension = self.recorder.events_table_name
        self.metrics.record(INDEX_RECORDS_APPENDED, done.appended, COUNT, dimension)
        self.metrics.record(INDEX_LAG_RECORDS, done.lag_records, COUNT, dimension)
        if done.oldest_age_ms is not None:
            self.metrics.record(
                INDEX_OLDEST_UNINDEXED_AGE, done.oldest_age_ms, MILLISECONDS, dimension
            )
        self.metrics.flush()
        if (
            self.alarm is not None
            and done.oldest_age_ms is not None
            and done.oldest_age_ms > self.alarm_age_ms
        ):
            self.alarm(done)

    def catch_up(self, timeout: float = 30.0) -> int:
        """Run rounds until one consumes nothing; return the records consumed."""
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            consumed = self.poll()
            total += consumed
            if not consumed:
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"The indexer of {self.recorder.events_table_name!r} was still "
                    f"consuming records after {timeout} s ({total} so far)."
                )

    def _read_state(self) -> _Round:
        head = self.recorder.max_notification_id() or 0
        item = self.recorder.connection.call(
            "get_item",
            TableName=self.recorder.notifications_table_name,
            Key=_CHECKPOINTS_KEY,
            ConsistentRead=True,
        ).get("Item")
        if item is None:
            return _Round(head, {}, None)
        numbers = {
            shard_id: value["S"]
            for shard_id, value in item[schema.SHARD_CHECKPOINTS]["M"].items()
        }
        state = _Round(head, numbers, int(item[schema.REVISION]["N"]))
        if schema.REINDEX_SCAN in item:
            state.scan = {
                segment: value.get("M")
                for segment, value in item[schema.REINDEX_SCAN]["M"].items()
            }
            state.segments = int(item[schema.REINDEX_SEGMENTS]["N"])
            state.held = [key["M"] for key in item[schema.REINDEX_HELD]["L"]]
        if schema.REINDEXED_AT in item:
            state.reindexed_at = float(item[schema.REINDEXED_AT]["N"])
        if schema.REINDEX_STARTED in item:
            state.reindex_started = float(item[schema.REINDEX_STARTED]["N"])
            state.reindex_pass = int(item[schema.REINDEX_PASS]["N"])
        if schema.REINDEX_CAUGHT_UP in item:
            state.reindex_caught_up = float(item[schema.REINDEX_CAUGHT_UP]["N"])
        if schema.ENDED_SHARDS in item:
            state.ended_shards = set(item[schema.ENDED_SHARDS]["SS"])
        return state

    def _read_shard(
        self, shard: Mapping[str, Any], state: _Round, budget: _RoundBudget
    ) -> list[_Record]:
        """Return a shard's records after its checkpoint, read in this process."""
        shard_id: str = shard["ShardId"]
        records, iterator = self._fetch_shard(
            shard,
            state.checkpoints.get(shard_id),
            self._resumed(shard_id, state),
            budget,
        )
        self._after_read(shard, state, records, iterator)
        return records

    def _resumed(self, shard_id: str, state: _Round) -> str | None:
        """Return where an empty read of a shard stopped, if at the same checkpoint."""
        # A shard may hold empty stretches before later records: go on from
        # where an empty read stopped, if the checkpoint has not moved since.
        resume = self._resume.pop(shard_id, None)
        if resume is not None and resume[0] == state.checkpoints.get(shard_id):
            return resume[1]
        return None

    def _after_read(
        self,
        shard: Mapping[str, Any],
        state: _Round,
        records: list[_Record],
        iterator: str | None,
    ) -> None:
        """Keep where an empty read stopped; note a closed shard read to its end."""
        shard_id: str = shard["ShardId"]
        if iterator is not None and not records:
            self._resume[shard_id] = (state.checkpoints.get(shard_id), iterator)
        if iterator is None:
            ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
            if ending is not None:
                state.ended[shard_id] = ending

    def _fetch_shard(
        self,
        shard: Mapping[str, Any],
        checkpoint: str | None,
        iterator: str | None,
        budget: _RoundBudget,
    ) -> tuple[list[_Record], str | None]:
        """Return a shard's records after ``checkpoint`` (up to ``batch_size``).

        And the iterator after them (None: the shard is closed and read to
        its end). Reads from ``iterator`` if given, else from just after the
        checkpoint (``self.checkpoints`` holds it). One page of GetRecords
        (up to 1,000 records) always; more while the pages are full and the
        round's ``budget`` is not spent, so that a round catching up a
        backlog reads about what one transaction holds and pays its other
        calls once for it. Redelivered records (at or below the checkpoint,
        or twice in what was read) are dropped and the rest put in sequence
        order. What a reader process runs (:mod:`ledger.index_readers`).
        """
        shard_id: str = shard["ShardId"]
        after = int(checkpoint or -1)
        if iterator is None:
            iterator = self._iterator(shard_id)
        seen: dict[int, _Record] = {}
        read = 0
        closed = (
            shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber") is not None
        )
        # A closed shard is read to its end whatever the round's budget: its
        # children (and a save split across it and them) wait for that end.
        while (
            iterator
            and read < self.batch_size
            and (not read or closed or budget.left())
        ):
            limit = min(_PAGE_RECORDS, self.batch_size - read)
            response = self._get_records(shard_id, iterator, limit)
            page = response.get("Records", [])
            read += len(page)
            new = []
            for raw in page:
                record = _record(shard_id, raw)
                if record.number > after and record.number not in seen:
                    seen[record.number] = record
                    new.append(record)
            budget.spend(new)
            iterator = response.get("NextShardIterator")
            if not page or (len(page) < limit and not closed):
                # A short page of an open shard is as far as it holds now: the
                # next round goes on from here, with more (under steady writes,
                # reading on would fetch a few records a call). A closed shard
                # is read to its end, which may come on a later, empty page:
                # its children wait for it.
                break
        return [seen[number] for number in sorted(seen)], iterator

    def _iterator(self, shard_id: str) -> str | None:
        try:
            return super()._iterator(shard_id)
        except ProgrammingError as error:
            cause = error.__cause__
            code = (
                cause.response.get("Error", {}).get("Code")
                if isinstance(cause, botocore.exceptions.ClientError)
                else None
            )
            if code != "TrimmedDataAccessException":
                raise
            raise _TrimmedError(
                f"record {self.checkpoints.checkpoint(shard_id)} of stream shard "
                f"{shard_id}, where the index stopped, is past the stream's "
                "24-hour retention"
            ) from error

    # Fitting one transaction -------------------------------------------------

    def _fitting(
        self,
        read: dict[str, list[_Record]],
        head: int,
        parents: Mapping[str, str] | None = None,
    ) -> list[list[_Record]]:
        """Return the units to append: as many as fit one transaction."""
        cap: int | None = None
        self._encoded = None
        while True:
            units = _units(read, cap, parents)
            events = [r.entry for unit in units for r in unit if r.entry]
            page_size = self.recorder.page_size_to_write()
            batch_format = self.recorder.batch_format
            items = _commit_items(head, events, page_size, batch_format)
            layout = (head, page_size, batch_format)
            if items is not None:
                self._encoded = (layout, events, items)
                return units
            if cap == 1:
                raise DataError(
                    "The next record of each shard of the stream of "
                    f"{self.recorder.events_table_name!r} do not fit one "
                    "transaction of the indexer: nothing was indexed."
                )
            # Too much for one transaction: take fewer records of each shard.
            longest = max(len(records) for records in read.values())
            cap = max(1, (longest if cap is None else cap) // 2)

    def _check_versions(self, events: list[BatchEntry]) -> None:
        # The round's own versions over those remembered (up to 100,000: not
        # copied each round).
        remembered = self._last_versions
        last: dict[str, int] = {}
        for entry in events:
            previous = last.get(entry.aggregate_id)
            if previous is None:
                previous = remembered.get(entry.aggregate_id)
            if previous is not None and entry.version != previous + 1:
                relation = "not below it" if entry.version <= previous else "not next"
                raise IndexOrderError(
                    f"Aggregate {entry.aggregate_id} version {entry.version} reached "
                    f"the indexer of {self.recorder.events_table_name!r} after "
                    f"version {previous}, which is {relation}: its events would be "
                    "indexed out of order, so nothing was indexed. Check what "
                    "writes to the events table (only ledger's recorders should), "
                    "then run the indexer again."
                )
            last[entry.aggregate_id] = entry.version

    def _write(
        self,
        state: _Round,
        events: list[BatchEntry],
        checkpoints: dict[str, str],
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Append ``events`` and write the checkpoints item; False if raced.

        ``extra``: more attributes of the checkpoints item to set (None
        values: to remove), in the same transaction.
        """
        # The head was read this round, with the table's page size (a table
        # not written yet gets schema.PAGE_SIZE, recorded by this write).
        page_size = self.recorder.page_size_to_write()
        layout = (state.head, page_size, self.recorder.batch_format)
        encoded, self._encoded = self._encoded, None
        if encoded is not None and encoded[0] == layout and encoded[1] == events:
            items = encoded[2]  # as fitted
        else:
            items = _batch_items(
                state.head, events, page_size, self.recorder.batch_format
            )
        table = self.recorder.notifications_table_name
        actions: list[TransactWriteItemTypeDef] = [
            {
                "Put": {
                    "TableName": table,
                    "Item": item,
                    "ConditionExpression": NOT_EXISTS,
                    "ExpressionAttributeNames": {"#key": schema.POSITION},
                }
            }
            for item in items
        ]
        last = state.head + len(events)
        if events:
            actions.append(self.recorder._sequence_action(state.head, last, page_size))
        actions.append(self._checkpoints_action(state.revision, checkpoints, extra))
        try:
            self.recorder.connection.call("transact_write_items", TransactItems=actions)
        except (TransactionConflictError, TransactionCancelledError):
            # Another indexer committed first: the next round re-reads.
            logger.info("another indexer advanced the index first; re-reading")
            self._revision_written = None
            return False
        self._revision_written = (state.revision or 0) + 1
        # Each aggregate's last version appended (events are in version order
        # per aggregate), remembered as the most recent: one dict operation
        # per aggregate, not per event.
        latest = {entry.aggregate_id: entry.version for entry in events}
        if self._indexed is not None:
            self._indexed.update(latest)
        remembered = self._last_versions
        for aggregate_id, version in latest.items():
            if aggregate_id in remembered:
                remembered.move_to_end(aggregate_id)
            remembered[aggregate_id] = version
        while len(remembered) > _VERSIONS_KEPT:
            remembered.popitem(last=False)
        logger.debug(
            "indexed",
            extra={"positions": [state.head + 1, last], "events": len(events)},
        )
        self.recorder._notify_listeners()
        if self.after_write is not None:
            self.after_write(range(state.head + 1, last + 1))
        return True

    def _checkpoints_action(
        self,
        revision: int | None,
        checkpoints: dict[str, str],
        extra: Mapping[str, Any] | None = None,
    ) -> TransactWriteItemTypeDef:
        values: Item = {
            ":cp": {"M": {s: {"S": n} for s, n in checkpoints.items()}},
            ":next": {"N": str((revision or 0) + 1)},
        }
        names = {"#cp": schema.SHARD_CHECKPOINTS, "#rev": schema.REVISION}
        sets = ["#cp = :cp", "#rev = :next"]
        removes = []
        for index, (name, value) in enumerate((extra or {}).items()):
            names[f"#x{index}"] = name
            if value is None:
                removes.append(f"#x{index}")
            else:
                sets.append(f"#x{index} = :x{index}")
                values[f":x{index}"] = value
        update = "SET " + ", ".join(sets)
        if removes:
            update += " REMOVE " + ", ".join(removes)
        if revision is None:
            condition = "attribute_not_exists(#rev)"
        else:
            condition = "#rev = :rev"
            values[":rev"] = {"N": str(revision)}
        return {
            "Update": {
                "TableName": self.recorder.notifications_table_name,
                "Key": _CHECKPOINTS_KEY,
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    # Status ------------------------------------------------------------------

    def status(self, cap: int = 10_000) -> IndexStatus:
        """Return the head, and the records (and oldest age) not indexed yet.

        Bounded: a GetItem of the head and one of the checkpoints, a
        DescribeStream, per shard a GetShardIterator, and at most
        ``cap // 1000`` GetRecords plus one per shard: ``behind`` counts up
        to ``cap``, or what those reads returned (pages can be short). While
        a re-index runs, ``behind`` counts the stream from its start.
        """
        shards = self._shards()
        state = self._read_state()
        self.checkpoints.numbers = dict(state.checkpoints)
        behind = 0
        oldest: float | None = None
        trimmed = False
        reads_left = max(1, cap // 1000) + len(shards)
        for shard in shards:
            if self._read_to_its_end(shard):
                continue
            try:
                iterator = self._iterator(shard["ShardId"])
            except _TrimmedError:
                trimmed = True
                continue
            while iterator and behind < cap and reads_left > 0:
                reads_left -= 1
                response = self._get_records(
                    shard["ShardId"], iterator, min(1000, cap - behind)
                )
                page = response.get("Records", [])
                if not page:
                    break
                created = page[0]["dynamodb"].get("ApproximateCreationDateTime")
                if created is not None and oldest is None:
                    oldest = created.timestamp()
                elif created is not None and oldest is not None:
                    oldest = min(oldest, created.timestamp())
                behind += len(page)
                iterator = response.get("NextShardIterator")
        age = None if oldest is None else max(0.0, time.time() - oldest)
        return IndexStatus(
            state.head,
            min(behind, cap),
            age,
            len(shards),
            reindexing=state.scan is not None,
            trimmed=trimmed,
            reindex_pass=state.reindex_pass,
        )


@functools.cache  # once per process
def freeze_start_up() -> None:
    """Leave what the process made so far out of the garbage collector's passes.

    For a process that runs the indexer and little else (``ledger index
    run``, the indexer's Lambda function), once the indexer is made. Every
    GetRecords answer of 1,000 records is parsed into some 20,000 dicts
    (JSON's, then the answer's), which outlive the collector's young passes
    and start full ones; each full pass walks every object the process
    holds (about 100,000 once boto3, botocore's models and the application
    are loaded): about a quarter of the indexer's CPU catching up, 9 to 14
    µs an event (``benchmarks/profile_indexer.py``, stage ``gc``; 2 to 3
    with ``--gc-freeze``). Frozen
    (``gc.freeze``), those are no longer walked; they are still freed when
    no longer referenced, only cycles among them are never collected. Only
    the first call in a process freezes.
    """
    gc.collect()
    gc.freeze()


def paced(poll: Callable[[], int], round_interval: float) -> Callable[[], int]:
    """Return ``poll``, made to last at least ``round_interval`` s when it indexed.

    For a loop of rounds (``ledger index run``; the Lambda handler paces its
    own). Under steady writes a round started right after another finds only
    the records saved meanwhile, and pays a ``DescribeStream``, a
    ``GetRecords`` per shard and a transaction for a handful of events.
    Waiting out the rest of the interval lets the next round gather more:
    larger commits, fewer write units and less CPU per event, for at most
    ``round_interval`` more lag. A round that found nothing returns at once
    (the loop then waits its idle interval).
    """

    def paced_poll() -> int:
        started = time.monotonic()
        consumed = poll()
        if consumed:
            time.sleep(max(0.0, round_interval - (time.monotonic() - started)))
        return consumed

    return paced_poll


def _utc_time(value: Any) -> datetime:
    """Return a timestamp of a Streams answer as an aware datetime in UTC.

    botocore's own parser gives the local time zone (dateutil's ``tzlocal``),
    whose offset look-ups call ``localtime`` for every record read, in the
    parse and again when the indexer takes the epoch seconds: a sixth of the
    CPU of parsing a GetRecords answer. The instant is the same.
    """
    if isinstance(value, int | float):  # epoch seconds: how the API sends them
        return datetime.fromtimestamp(value, UTC)
    return botocore.utils.parse_timestamp(value)


def _oldest_age_ms(records: list[_Record]) -> float | None:
    created = [r.created for r in records if r.created is not None]
    return None if not created else max(0.0, time.time() - min(created)) * 1000


def _units(
    read: dict[str, list[_Record]],
    cap: int | None,
    parents: Mapping[str, str] | None = None,
) -> list[list[_Record]]:
    """Return what may be appended, as units; each shard's part is a prefix of it.

    A unit is one record, or the records of one whole save in its own order.
    Each shard is cut at its first record of a save not wholly read (and at
    ``cap`` records); then, until nothing changes, every save with a record
    past a cut is cut out too, with what follows it in each of its shards,
    and a child shard (``parents``: child to parent, both read, the parent
    first) is cut whole while its parent is cut at all, since the child's
    records come after all of the parent's. So what remains of each shard is
    a prefix of it (its checkpoint can move to the prefix's end) and holds
    only whole saves, a save split by a shard split included. Units come in
    shard order, a save where its first record read comes, but after the
    units holding its aggregates' earlier versions (see ``_in_aggregate_order``).
    """
    members: dict[str, list[_Record]] = defaultdict(list)
    for records in read.values():
        for record in records:
            if record.save is not None:
                members[record.save[0]].append(record)
    cut = _cuts(read, members, cap, parents or {})
    units: list[list[_Record]] = []
    emitted: set[str] = set()
    for shard_id, records in read.items():
        for record in records[: cut[shard_id]]:
            if record.save is None:
                units.append([record])
            elif record.save[0] not in emitted:
                emitted.add(record.save[0])
                save = members[record.save[0]]
                units.append(sorted(save, key=lambda r: r.save[1] if r.save else 0))
    return _in_aggregate_order(units)


def _in_aggregate_order(units: list[list[_Record]]) -> list[list[_Record]]:
    """Return ``units``, each after those holding earlier versions of its aggregates.

    A save with records in several shards comes where its first record read
    comes, maybe before an earlier event of another of its aggregates, read
    from another shard: sorting versions then would split the save around
    it. So a unit waits for those; otherwise units keep their order (units
    in a cycle, which whole saves read in shard order cannot make, are left
    at the end in it, for the version check to refuse).
    """
    holder = {
        (r.entry.aggregate_id, r.entry.version): index
        for index, unit in enumerate(units)
        for r in unit
        if r.entry is not None
    }
    waits = [0] * len(units)
    followers: dict[int, list[int]] = defaultdict(list)
    for (aggregate, version), index in holder.items():
        earlier = holder.get((aggregate, version - 1))
        if earlier is not None and earlier != index:
            waits[index] += 1
            followers[earlier].append(index)
    if not followers:
        return units  # no unit waits for another: the order stands
    ready = [index for index, count in enumerate(waits) if not count]
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)  # the earliest unit free to go
        order.append(index)
        for follower in followers[index]:
            waits[follower] -= 1
            if not waits[follower]:
                heapq.heappush(ready, follower)
    placed = set(order)
    order += [index for index in range(len(units)) if index not in placed]
    return [units[index] for index in order]


def _cuts(
    read: dict[str, list[_Record]],
    members: dict[str, list[_Record]],
    cap: int | None,
    parents: Mapping[str, str],
) -> dict[str, int]:
    """Return, per shard, how many of its records may be appended (see ``_units``)."""
    place = {r: index for records in read.values() for index, r in enumerate(records)}
    cut = {shard_id: len(records) for shard_id, records in read.items()}
    if cap is not None:
        cut = {shard_id: min(cap, end) for shard_id, end in cut.items()}
    for shard_id, records in read.items():
        for index, record in enumerate(records[: cut[shard_id]]):
            if record.save and len(members[record.save[0]]) < record.save[2]:
                cut[shard_id] = index  # not wholly read: held back, with what follows
                break
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if cut[child] and cut[parent] < len(read[parent]):
                cut[child] = 0  # the parent's held records come first
                changed = True
        for shard_id, records in read.items():
            for record in records[: cut[shard_id]]:
                if record.save is None:
                    continue  # a unit of its own: nothing to cut with it
                save = members[record.save[0]]
                if any(place[m] >= cut[m.shard_id] for m in save):
                    for member in save:
                        cut[member.shard_id] = min(cut[member.shard_id], place[member])
                    changed = True
                    break
    return cut


def _in_version_order(records: list[_Record]) -> list[BatchEntry]:
    """Return the records' events with each aggregate's in version order.

    Each aggregate keeps the positions its events had; only which of its
    events takes which position changes.
    """
    entries = [r.entry for r in records if r.entry is not None]
    slots: dict[str, list[int]] = defaultdict(list)
    for index, entry in enumerate(entries):
        slots[entry.aggregate_id].append(index)
    ordered = list(entries)
    if len(slots) == len(entries):
        return ordered  # one event per aggregate: nothing to order or check
    for indices in slots.values():
        if len(indices) == 1:
            continue
        versions = sorted((entries[i] for i in indices), key=lambda e: e.version)
        for index, entry in zip(indices, versions, strict=True):
            ordered[index] = entry
    for indices in slots.values():
        for before, after in itertools.pairwise(indices):
            if ordered[after].version != ordered[before].version + 1:
                raise IndexOrderError(
                    f"Aggregate {ordered[after].aggregate_id} has versions "
                    f"{ordered[before].version} then {ordered[after].version} in "
                    "one round of the indexer: not consecutive (a repeat or a "
                    "gap), so nothing was indexed. Check what writes to the "
                    "events table, then run the indexer again."
                )
    return ordered


# --- AWS Lambda --------------------------------------------------------------------


def lambda_handler(event: Any, context: Any) -> dict[str, int]:
    """Index ``LEDGER_APP``'s events stream for the invocation's time (Lambda).

    The indexer function of ``deploy/template.yaml``, invoked every minute
    by a schedule; wake-ups go to ``LEDGER_INDEX_TOPIC_ARN``; with
    ``LEDGER_INDEX_READERS`` it reads the shards in that many reader
    processes, ended before each invocation returns. See
    :func:`ledger.index_consumers.indexer_handler`.
    """
    from ledger.index_consumers import indexer_from_env  # noqa: PLC0415

    return indexer_from_env()(event, context)
