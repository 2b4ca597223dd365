"""Rebuilding a read model blue/green, its status, and dropping old versions.

(Over 400 lines as one concept: the life of a table version, from the start
of its rebuild through catch-up and switch to its drop.)

A rebuild builds the read model afresh into a NEW table version while readers
and runners keep using the active one, catches up, then switches the
``active`` pointer in one conditional write; runners notice at their next
commit (each commit checks the pointer) and move over. The old version is
kept until :func:`drop_version`.

Source (:mod:`ledger.projections.history`): the application sequence when the
application keeps one (``DYNAMODB_ORDERING=sequence``), else the events table
by a parallel Scan (``stream``). Either way each aggregate's events arrive in
version order; with the Scan, aggregates interleave in any order.

Writes (:mod:`ledger.projections.epochs`): events are applied in memory a
window at a time and each read-model item the window changed is written once
per *flush* (not once per event), in transactions of up to 99 items that each
check the run still owns the rebuild; the flush then commits the checkpoint.
Items carry their flush's epoch and before-image, so a crash at any point
then a resume gives the same read model, and a run that was taken over cannot
write. Memory is bounded by the window (``flush_bytes`` of changed items as
JSON, ``flush_items``, ``flush_events``) and the cache
(``cache_bytes``), not by the read model. The next window is applied while
the previous flush is written.

Catching up after the switch: from the sequence, events after the rebuild's
position; from the Scan (no global position), every aggregate the old
version had applied further than the new one is brought up to date from the
events table; later events reach the new version through the live feed.

A version rebuilt from the sequence keeps one position (its tracking), no
position per aggregate: the sequence feed goes on from it. A version rebuilt
from a Scan keeps a position per aggregate, which the stream feed needs.

Each flush, once committed, is logged (at DEBUG) on
``ledger.projections.rebuild`` with the events parked in it (at ERROR), which
are recorded to the projector's ``metrics`` (:mod:`ledger.projections.metrics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    ProgrammingError,
    Tracking,
)

from ledger.dynamodb.client import (
    Outage,
    TableNotFoundError,
    TransactionConflictError,
)
from ledger.feeds import Batch, IndexSource, Progress, Raced, Runner
from ledger.projections import schema
from ledger.projections.dynamodb import DynamoDBView
from ledger.projections.epochs import (
    DEFAULT_CACHE_BYTES,
    EpochWriter,
    FlushWrite,
    RebuildSession,
)
from ledger.projections.history import (
    DEFAULT_PAGE_SIZE,
    History,
    Page,
    ScanHistory,
    SequenceHistory,
    history_of,
)
from ledger.projections.metrics import parked_in, report_parked
from ledger.projections.models import AggregatePosition
from ledger.projections.projector import Projector, event_loader
from ledger.projections.sequence import ProjectorConsumer
from ledger.projections.session import Session
from ledger.projections.views import ConcurrentChangeError

DEFAULT_FLUSH_BYTES = 48 * 1024 * 1024
"""JSON of changed read-model items a rebuild holds before it flushes them
(bounds memory; a read model smaller than this is written once in all)."""
DEFAULT_FLUSH_ITEMS = 200_000
"""Changed read-model items a rebuild holds before it flushes them."""
DEFAULT_FLUSH_EVENTS = 1_000_000
"""Events applied before a rebuild flushes even if few items changed (bounds
the work a crash repeats)."""
_MAX_CATCH_UP_ATTEMPTS = 20
DEFAULT_OUTAGE_PATIENCE = 600.0
"""Seconds a rebuild waits in all for DynamoDB to come back before it gives up."""
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildProgress:
    """How far a rebuild is: for a progress bar."""

    table_version: int
    events_done: int
    """Events applied by this run (a resumed run counts from where it resumed)."""
    position: int
    """The last position of the application sequence applied; reading the
    events table, the events applied by this run."""
    head: int | None
    """The last position of the application sequence when the run looked;
    reading the events table, its approximate item count."""
    events_per_second: float


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild did."""

    table_version: int
    events: int
    """Events applied by the run that finished (after an outage, the resumed run)."""
    seconds: float
    """Wall time of the whole call, waits during outages included."""
    switched: bool
    items_written: int = 0
    """Read-model items this run wrote (its flushes, undoing and tombstones)."""
    flushes: int = 0

    @property
    def events_per_second(self) -> float:
        """Throughput of this run."""
        return self.events / self.seconds if self.seconds else 0.0


def rebuild(
    application: Any,
    projector_class: type[Projector],
    view: DynamoDBView,
    *,
    progress: Callable[[RebuildProgress], None] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    switch: bool = True,
    flush_bytes: int = DEFAULT_FLUSH_BYTES,
    flush_items: int = DEFAULT_FLUSH_ITEMS,
    flush_events: int = DEFAULT_FLUSH_EVENTS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    history: History | None = None,
    outage_patience: float = DEFAULT_OUTAGE_PATIENCE,
    on_unavailable: Callable[[Exception, float], None] | None = None,
) -> RebuildResult:
    """Build a projection's read model afresh from history, then switch readers.

    Resumes the rebuild in progress if there is one (after a crash), else
    starts a new table version. ``switch=False`` leaves the new version built
    but inactive (:func:`switch_version`, or running the rebuild again,
    switches it later and catches up). ``history`` overrides where events
    are read from (default: :func:`history_of`; resuming, the history the
    rebuild began with).

    While DynamoDB is unavailable (``OperationalError`` after the client's
    retries) the run stops, waits (doubling up to 30 s) and resumes as it
    would after a crash, for at most ``outage_patience`` seconds of waiting
    in all; then the error is raised (run it again to resume).
    ``on_unavailable(error, wait)`` is told each time.
    """
    attempt = partial(
        _rebuild_once,
        application,
        projector_class,
        view,
        progress=progress,
        page_size=page_size,
        switch=switch,
        flush_bytes=flush_bytes,
        flush_items=flush_items,
        flush_events=flush_events,
        cache_bytes=cache_bytes,
        history=history,
    )
    started = time.monotonic()
    outage = Outage(
        f"rebuilding {view.base_name}",
        1.0,
        patience=outage_patience,
        on_unavailable=on_unavailable,
    )
    while True:
        try:
            result = attempt()
        except OperationalError as error:
            wait = outage.failed(error)
            if wait is None:
                raise
            time.sleep(wait)
            continue
        # Events and items count what the last (resumed) run did.
        return dataclasses.replace(result, seconds=time.monotonic() - started)


def _rebuild_once(
    application: Any,
    projector_class: type[Projector],
    view: DynamoDBView,
    *,
    progress: Callable[[RebuildProgress], None] | None,
    page_size: int,
    switch: bool,
    flush_bytes: int,
    flush_items: int,
    flush_events: int,
    cache_bytes: int,
    history: History | None,
) -> RebuildResult:
    """Run or resume a rebuild until done, or until an error stops it."""
    target = _start_or_resume(view)
    target_view = view.at_version(target)
    target_view.create_version_table(target)
    owner = _take_over(view, target)
    projector = projector_class(target_view, event_loader(application))
    control = view.get_control(schema.REBUILD) or {}
    source = history or _history_to_resume(application, control, page_size)
    sequenced = getattr(application.recorder, "ordering", "sequence") == "sequence"
    # A Scan of a sequence application covers the sequence up to its head.
    head = None
    if sequenced and source.kind != "sequence":
        head = _sequence_head(view, application, control)
    started = time.monotonic()
    if schema.SWITCHED_FROM in control:
        # A run that switched readers stopped before catching up: finish that.
        _catch_up_and_end(
            application,
            projector,
            view,
            owner,
            old=int(control[schema.SWITCHED_FROM]["N"]),
            position=_committed_position(control, source, head),
            page_size=page_size,
        )
        return RebuildResult(target, 0, time.monotonic() - started, switched=True)
    committed = int(control.get(schema.EPOCH, {"N": "0"})["N"])
    checkpoint_text = control.get(schema.CHECKPOINT, {}).get("S")
    checkpoint = None if checkpoint_text is None else json.loads(checkpoint_text)
    writer = EpochWriter(target_view, owner)
    session = RebuildSession(target_view, set(), cache_bytes)
    if source.kind == "sequence":
        # Built in the sequence's total order: the version keeps one position,
        # recorded with every flush's tracking.
        target_view.keep_one_position(application.name)
        session.total_order = True
    writer.restore(committed, session)
    run = _Run(
        application,
        source,
        writer,
        session,
        committed,
        projector=projector,
        sequence_head=head,
    )
    if checkpoint is not None and source.kind == "sequence":
        run.position = int(checkpoint["position"])  # resumed: nothing may be left

    with ThreadPoolExecutor(max_workers=1) as flusher:
        for page in source.pages(checkpoint):
            for event, position in page.events:
                projector.apply_or_park(session, event, position)
            run.applied(page)
            session.stage()
            if (
                session.staged_bytes >= flush_bytes
                or len(session.staged) >= flush_items
                or run.window_events >= flush_events
            ):
                run.flush(flusher)
            if progress is not None:
                elapsed = time.monotonic() - started
                progress(
                    RebuildProgress(
                        target,
                        run.events,
                        run.position,
                        run.head,
                        run.events / elapsed if elapsed else 0,
                    )
                )
        run.flush(flusher, last=True)
        run.wait()
    writer.remove_tombstones()
    if switch:
        _catch_up_and_end(
            application,
            projector,
            view,
            owner,
            old=_switch(view, target, owner),
            position=run.position if source.kind == "sequence" else head,
            page_size=page_size,
        )
    return RebuildResult(
        target,
        run.events,
        time.monotonic() - started,
        switch,
        writer.items_written,
        run.flushes,
    )


def _history_to_resume(
    application: Any, control: dict[str, Any], page_size: int
) -> History:
    """Return the history a rebuild reads when none is given: the one it began with.

    A rebuild begun from the events table of a sequence application (``--source
    scan``) goes on from the Scan's checkpoint; a new one reads
    :func:`history_of` the application.
    """
    checkpoint = json.loads(control.get(schema.CHECKPOINT, {}).get("S", "{}"))
    if "segments" in checkpoint:
        return ScanHistory(application)
    if "position" in checkpoint:
        return SequenceHistory(application, page_size)
    return history_of(application, page_size=page_size)


def _sequence_head(
    view: DynamoDBView, application: Any, control: dict[str, Any]
) -> int:
    """Return the sequence's last position when this rebuild started.

    Stored on the ``rebuild`` control item (``control``, as read) by the
    first run, so a resumed run uses the same one: every event at or below it
    was in the events table before the rebuild read anything, so a rebuild
    that read the whole table has applied them all.
    """
    if schema.SEQUENCE_HEAD in control:
        return int(control[schema.SEQUENCE_HEAD]["N"])
    head = IndexSource(application).head()
    try:
        view.control.record_sequence_head(head)
    except IntegrityError:  # a run starting at the same moment stored its own
        stored = view.get_control(schema.REBUILD) or {}
        return int(stored[schema.SEQUENCE_HEAD]["N"])
    return head


def _committed_position(
    control: dict[str, Any], source: History, head: int | None
) -> int | None:
    """Return the sequence position a finished build applied (None: no sequence)."""
    if source.kind == "sequence":
        checkpoint = json.loads(control.get(schema.CHECKPOINT, {}).get("S", "{}"))
        return int(checkpoint.get("position", 0))
    return head


def _catch_up_and_end(
    application: Any,
    projector: Projector,
    view: DynamoDBView,
    owner: str,
    *,
    old: int,
    position: int | None,
    page_size: int,
) -> None:
    """Apply what the build did not see, now readers use it; end the rebuild.

    From the application sequence when there is one (the new version's
    tracking holds ``position``, where the build got to); otherwise aggregate
    by aggregate against the old version ``old``.
    """
    if position is not None:
        _catch_up_after_switch(application, projector, page_size)
    else:
        _catch_up_aggregates(projector, view.at_version(old))
    _end_rebuild(view, owner)


class _Run:
    """One rebuild run's window, flushes and counters."""

    def __init__(
        self,
        application: Any,
        source: History,
        writer: EpochWriter,
        session: RebuildSession,
        committed: int,
        *,
        projector: Projector,
        sequence_head: int | None = None,
    ) -> None:
        self.projector = projector
        self.sequence_head = sequence_head
        """The sequence's last position when the rebuild started (sequence
        applications): a Scan that read everything has applied up to it."""
        self.application = application
        self.source = source
        self.writer = writer
        self.session = session
        self.committed = committed
        self.events = 0
        self.window_events = 0
        self.flushes = 0
        self.position = 0
        self.head: int | None = None
        self.last_page: Page | None = None
        self.in_flight: Future[None] | None = None

    def applied(self, page: Page) -> None:
        self.events += len(page.events)
        self.window_events += len(page.events)
        self.last_page = page
        if self.source.kind == "sequence":
            self.position = int(page.checkpoint["position"])
        else:
            self.position = self.events
        self.head = page.head

    def wait(self) -> None:
        """Wait for the flush in flight; raise what it raised."""
        if self.in_flight is not None:
            in_flight, self.in_flight = self.in_flight, None
            in_flight.result()

    def flush(self, flusher: ThreadPoolExecutor, *, last: bool = False) -> None:
        """Hand the window to the flusher, once the previous flush committed.

        ``last``: the history is read to its end; a Scan of a sequence
        application then records the sequence position it covers.
        """
        page = self.last_page
        scan_done = last and self.source.kind != "sequence"
        if page is None or (
            self.window_events == 0
            and not self.session.writes
            and not self.session.staged
            and not (scan_done and self.sequence_head)
        ):
            return
        self.wait()
        self.session.evict()
        writes = self.session.freeze()
        self.committed += 1
        tracking = None
        if self.source.kind == "sequence":
            tracking = Tracking(self.application.name, int(page.checkpoint["position"]))
        elif scan_done and self.sequence_head:
            tracking = Tracking(self.application.name, self.sequence_head)
        self.in_flight = flusher.submit(
            self._flush, writes, self.committed, page.checkpoint, tracking
        )
        self.window_events = 0
        self.flushes += 1

    def _flush(
        self,
        writes: list[FlushWrite],
        epoch: int,
        checkpoint: dict[str, Any],
        tracking: Tracking | None,
    ) -> None:
        """Write and commit a flush (in the flusher's thread), then report it."""
        self.writer.flush(writes, epoch, checkpoint, tracking)
        projector = self.projector
        logger.debug(
            "%s rebuild committed flush %d: %d items",
            projector.name,
            epoch,
            len(writes),
            extra={"projection": projector.name, "epoch": epoch, "items": len(writes)},
        )
        report_parked(projector, logger, parked_in((w.key, w.body) for w in writes))
        projector.metrics.flush()


def _start_or_resume(view: DynamoDBView) -> int:
    view.create_table()
    in_progress = view.get_control(schema.REBUILD)
    if in_progress is not None:
        return int(in_progress[schema.TABLE_VERSION]["N"])
    target = max([view.active_version(), *view.existing_versions()]) + 1
    try:
        view.control.start_rebuild(target)
    except IntegrityError:
        # Another rebuild started at the same moment: join it.
        return _start_or_resume(view)
    return target


def _take_over(view: DynamoDBView, target: int) -> str:
    """Make this run the one owner of the rebuild of ``target``; return its token.

    A run that crashed, or was left behind, can no longer commit to it.
    """
    owner = uuid.uuid4().hex
    view.control.take_over_rebuild(target, owner)
    return owner


def switch_version(
    view: DynamoDBView,
    version: int,
    application: Any = None,
    projector_class: type[Projector] | None = None,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> None:
    """Make ``version`` the one readers use.

    For the version a rebuild in progress builds (``rebuild(...,
    switch=False)``, or a run that stopped): this finishes that rebuild as
    ``rebuild(application, projector_class, view)`` does (builds what is
    left, switches, applies what the build did not see, restarts the local
    stream feed), so it needs ``application`` and ``projector_class`` and
    refuses without them. Any other version (back to an older one, say):
    one conditional transaction; the projection's feed then goes on from
    where that version stands.
    """
    in_progress = view.get_control(schema.REBUILD)
    if (
        in_progress is not None
        and int(in_progress[schema.TABLE_VERSION]["N"]) == version
    ):
        if application is None or projector_class is None:
            raise ProgrammingError(
                f"Table version {version} of {view.base_name} is being rebuilt: "
                "switching to it must also finish the build, apply the events "
                "it did not see and restart the stream feed. Run the rebuild "
                "again (`ledger projections rebuild NAME`), or pass the "
                "application and projector class to switch_version."
            )
        rebuild(application, projector_class, view, page_size=page_size)
        return
    view.control.switch_active(version)
    view.follow_active()


def _switch(view: DynamoDBView, version: int, owner: str) -> int:
    """Make ``version`` active if this run still owns its rebuild; return the old.

    The ``rebuild`` control item stays, marked with the version switched
    from, until the catch-up is done (:func:`_end_rebuild`): a run that
    stops in between is resumed by catching up. A run that was taken over
    cannot switch.
    """
    try:
        active = view.control.switch_to_rebuilt(version, owner)
    except TransactionConflictError as error:
        raise ConcurrentChangeError(
            f"Another run took over the rebuild of {view.base_name} v{version}, "
            "or readers were switched meanwhile; this one does not switch."
        ) from error
    view.follow_active()
    return active


def _end_rebuild(view: DynamoDBView, owner: str) -> None:
    """Remove the ``rebuild`` control item, if this run still owns it.

    Also forgets the local stream poller's shard checkpoints: it then starts
    again from the oldest record the stream keeps, which the new version
    absorbs (it skips what it has applied), and a checkpoint the stream had
    trimmed away (the error says: rebuild) stops being in the way.
    """
    view.control.clear_shard_checkpoints()
    with contextlib.suppress(IntegrityError):  # taken over: the owner ends it
        view.control.end_rebuild(owner)


def _catch_up_after_switch(
    application: Any, projector: Projector, page_size: int
) -> None:
    """Apply events committed while switching, unless a live runner already did.

    A :class:`~ledger.feeds.Runner` of the projector's consumer. It goes on
    from the new version's tracking position: the position the build reached
    (committed with its last flush), or further on if a live runner has
    moved the version on since. Polls until a poll finds nothing, so what
    arrives meanwhile is applied too. Other writers may now write the
    version, so each commit checks what it read: once one is refused, a live
    runner is ahead of this pass and owns the version, and the pass ends.
    An unreadable batch stops it with the error (the rebuild stays switched
    and unfinished: run it again once the batch is skipped).
    """
    consumer = _CatchUp(projector, application.name)
    runner = Runner(IndexSource(application, page_size=page_size), consumer)
    while runner.poll() and not consumer.raced:
        pass
    if runner.blocked is not None:
        raise runner.blocked


class _CatchUp:
    """The projector's consumer, noting a commit refused (another writer is ahead)."""

    atomic = True
    topics: tuple[str, ...] = ()

    def __init__(self, projector: Projector, application_name: str) -> None:
        self.consumer = ProjectorConsumer(projector, application_name)
        self.name = self.consumer.name
        self.metrics = self.consumer.metrics
        self.checkpoint = self.consumer.checkpoint
        self.raced = False

    def process(self, batch: Batch) -> Progress:
        """Apply a page as the feed does; remember a refused commit."""
        try:
            return self.consumer.process(batch)
        except Raced:
            self.raced = True
            raise


def _catch_up_aggregates(projector: Projector, old: DynamoDBView) -> None:
    """Bring every aggregate the old version had applied further up to date.

    A Scan has no global position to catch up from: the live feed may have
    applied, into the old version, events the Scan did not see. After the
    switch the live feed writes into the new version only, so comparing each
    aggregate's position in the two versions (one Scan of each) finds every
    aggregate behind; each is brought up to date from the events table,
    checking revisions as any live writer does.
    """
    view: Any = projector.view
    rebuilt = _aggregate_positions(view)
    for aggregate_id, version in _aggregate_positions(old).items():
        if version > rebuilt.get(aggregate_id, 0):
            _catch_up_aggregate(projector, aggregate_id, version)


def _aggregate_positions(view: DynamoDBView) -> dict[str, int]:
    """Return the last version applied of every aggregate in a table version."""
    prefix = AggregatePosition.storage_key("")
    found = view.connection.items(
        "scan",
        TableName=view.table_name,
        ConsistentRead=True,
        FilterExpression="begins_with(#k, :p)",
        ExpressionAttributeNames={"#k": schema.KEY},
        ExpressionAttributeValues={":p": {"S": prefix}},
    )
    positions: dict[str, int] = {}
    for item in found:
        if schema.BODY in item:
            at = AggregatePosition.model_validate_json(item[schema.BODY]["S"])
            positions[at.aggregate_id] = at.version
    return positions


def _catch_up_aggregate(projector: Projector, aggregate_id: str, version: int) -> None:
    assert projector.load_events is not None  # noqa: S101 - set by rebuild()
    for _ in range(_MAX_CATCH_UP_ATTEMPTS):
        session = Session(projector.view)
        current = session.get(AggregatePosition, aggregate_id)
        applied = 0 if current is None else current.version
        if applied >= version:
            return
        events = projector.load_events(aggregate_id, applied, 2**62)
        try:
            # In as many commits as the events' writes need.
            projector.apply_batch(session, [(event, None) for event in events])
        except ConcurrentChangeError:
            continue  # the live feed got there first: look again
        return
    raise ConcurrentChangeError(
        f"Catching up aggregate {aggregate_id} after a rebuild kept meeting "
        "concurrent writers; run the rebuild's catch-up again."
    )


def drop_version(view: DynamoDBView, version: int) -> bool:
    """Delete an old table version; refuse one still needed.

    Refused: the active version, the one being rebuilt, and the one a
    rebuild switched readers from while its catch-up (which reads it) is
    not done.
    """
    in_progress = view.get_control(schema.REBUILD) or {}
    building = int(in_progress[schema.TABLE_VERSION]["N"]) if in_progress else None
    if version in (view.active_version(), building):
        raise ProgrammingError(
            f"Table version {version} of {view.base_name} is active or being "
            "rebuilt, so it cannot be dropped. Switch to another version first."
        )
    if schema.SWITCHED_FROM in in_progress and version == int(
        in_progress[schema.SWITCHED_FROM]["N"]
    ):
        raise ProgrammingError(
            f"Table version {version} of {view.base_name} is what the rebuild "
            f"of v{building} switched readers from, and that rebuild's catch-up, "
            "which reads it, is not done. Run the rebuild again to finish it "
            f"(`ledger projections rebuild NAME`), then drop v{version}."
        )
    return view.delete_version(version)  # and its dead letters


@dataclass(frozen=True)
class ProjectionStatus:
    """Where a projection is: versions, position, lag and dead letters."""

    name: str
    active_version: int
    versions: list[int]
    rebuilding_version: int | None
    position: int | None
    """The application sequence position the active version has applied."""
    head: int | None
    """The application sequence's last position."""
    parked: int
    backlog: int | None = None
    """Fed by the stream (``stream`` ordering): records after the local
    poller's checkpoints, counted up to 10,000; None if it never ran here."""

    @property
    def lag(self) -> int | None:
        """Events behind the sequence, or the stream backlog; None: unknown."""
        if self.head is None:
            return self.backlog
        return self.head - (self.position or 0)


def status(view: DynamoDBView, application: Any = None) -> ProjectionStatus:
    """Return a projection's status; with ``application``, its position and lag."""
    view.follow_active()
    in_progress = view.get_control(schema.REBUILD)
    position = head = None
    backlog = None
    ordering = None
    if application is not None:
        ordering = getattr(application.recorder, "ordering", "sequence")
    if ordering in ("sequence", "indexed"):  # both have the application sequence
        position = view.max_tracking_id(application.name)
        head = application.recorder.max_notification_id()
    elif ordering == "stream":
        backlog = _stream_backlog(view, application)
    try:
        parked = len(view.parked_items())
    except TableNotFoundError:
        parked = 0
    return ProjectionStatus(
        name=view.base_name,
        active_version=view.table_version,
        versions=view.existing_versions(),
        rebuilding_version=(
            None if in_progress is None else int(in_progress[schema.TABLE_VERSION]["N"])
        ),
        position=position,
        head=head,
        parked=parked,
        backlog=backlog,
    )


def _stream_backlog(view: DynamoDBView, application: Any) -> int | None:
    """Return the stream records the local poller has not applied, if it ran."""
    from ledger.projections.streams import (  # noqa: PLC0415 - stream-only
        StreamPoller,
        ViewCheckpoints,
    )

    try:
        poller = StreamPoller(ViewCheckpoints(view), application)
    except ProgrammingError:  # the events table has no stream
        return None
    return poller.backlog()
