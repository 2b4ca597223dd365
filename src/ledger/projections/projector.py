"""Projectors: one handler per event type, writing pydantic read models.

(Over 600 lines as one concept: applying one event for every feed:
dispatch, retries, parking, filling gaps, and commits that fit. Reading a
gap in version order is :mod:`ledger.projections.gaps`.)

A projector is an ``eventsourcing`` :class:`~eventsourcing.projection.Projection`
whose view is a :class:`~ledger.projections.views.ReadModelView`. Handlers read
and write read models through a :class:`~ledger.projections.session.Session`
(a unit of work); the session's writes and the feed's checkpoint are
committed together, so an event applied twice changes nothing. Fed by a
total order (the application sequence or the index: a session with
``total_order``), the checkpoint is the tracking position alone: the commit
refuses an event at or below it, and the order has no gaps. Fed per
aggregate (the stream feed), it is also the aggregate's last applied version
(an :class:`~ledger.projections.models.AggregatePosition` item per
aggregate), which tells duplicates and gaps.

Failure policy: a handler that raises is retried with exponential backoff
(``retry_delays``); an event that still fails is *parked* (a dead letter with
its error, position and attempts) and its aggregate waits: its later events
are not applied until the parked one is redriven. Other aggregates go on. On
a total order the dead letter also records the last version the feed went
past (``passed_version``), so a redrive applies exactly those.
Parking, listing and redriving live in :mod:`ledger.projections.deadletters`.
An event whose own writes cannot fit in one commit is parked too. Missing
earlier events of an aggregate (a gap) are read from the events table and
applied first, in as many commits as they need; a missing version that
cannot be read is read again after ``retry_delays``, then parked
(:class:`GapError`), never skipped.

Observability: retries and, once committed, parked events and commit sizes
are logged on ``ledger.projections.projector`` and recorded to ``metrics``
(:mod:`ledger.projections.metrics`).

Handlers must be deterministic and have no side effects besides the session:
they may run again when a commit is retried. A read model fed by several
aggregates must not depend on the order between aggregates (keep maps or
sums, not lists in arrival order): the stream feed applies aggregates in any
interleaving.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, ClassVar

from eventsourcing.persistence import OperationalError, PersistenceError, Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from ledger.dynamodb.client import Outage
from ledger.dynamodb.recorders import TrackingAfter
from ledger.projections import deadletters
from ledger.projections.dispatch import Handler, handlers_of, handles
from ledger.projections.gaps import gap_reason, in_version_order, leading_run
from ledger.projections.history import Undecodable
from ledger.projections.metrics import NO_METRICS, CommitReport, Metrics, report_retry
from ledger.projections.models import AggregatePosition, GapError, Outcome, ParkedEvent
from ledger.projections.session import MAX_COMMIT_ATTEMPTS, Savepoint, Session
from ledger.projections.views import (
    ActiveVersionChangedError,
    ConcurrentChangeError,
    ReadModelView,
)

EventLoader = Callable[[str, int, int], Sequence[Any]]
"""Reads an aggregate's events after one version up to another (inclusive)."""

_MAX_CACHED_ITEMS = 10_000
"""Items a live projector keeps cached between events (reads it can skip)."""
logger = logging.getLogger(__name__)


class Projector(Projection[ReadModelView]):
    """Base of projectors: handlers per event type, retries, parking.

    Subclass, set ``name`` (its tables are named after it) and decorate
    methods with :func:`handles`. Events without a handler are tracked and
    otherwise ignored.
    """

    outage_patience: ClassVar[float] = 120.0
    """Seconds the sequence feed waits for DynamoDB to come back before it
    gives up on an event (the runner then stops, and resumes when restarted).
    Stopping a runner waits for this too, at worst, during an outage."""
    retry_delays: ClassVar[tuple[float, ...]] = (0.05, 0.2, 1.0)
    """Seconds to wait before each retry of a failing handler; then it is parked."""
    metrics: Metrics = NO_METRICS
    """Where this projector's metrics go (a class attribute, or ``metrics=``)."""
    handlers: ClassVar[dict[type[Any], Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.handlers = handlers_of(cls)

    def __init__(
        self,
        view: ReadModelView,
        load_events: EventLoader | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        """Project into ``view``; ``load_events`` reads missed events (gaps)."""
        super().__init__(view)
        self.load_events = load_events
        self.session = Session(view)
        if metrics is not None:
            self.metrics = metrics

    def commit(self, session: Session) -> None:
        """Commit a session's writes, then log and record what it wrote."""
        report = CommitReport.of(session)
        session.commit()
        report.report(self, logger)

    def handler_for(self, event_class: type[Any]) -> Handler | None:
        """Return the handler of an event class (or of its nearest base)."""
        for klass in event_class.__mro__:
            handler = self.handlers.get(klass)
            if handler is not None:
                return handler
        return None

    # The sequence feed (eventsourcing's ProjectionRunner calls this) ------------

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Apply one event of the application sequence and record its position.

        Exactly once: the position is committed with the writes, and an event
        at or below the recorded position is skipped.
        """
        try:
            self._process_event(domain_event, tracking)
        finally:
            self.metrics.flush()

    def _process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if len(self.session.loaded) > _MAX_CACHED_ITEMS:
            self.session.forget()
        # Decided once per view version (read again after a rebuild's switch).
        self.session.total_order = self.view.keeps_one_position(
            tracking.application_name
        )
        for _ in range(MAX_COMMIT_ATTEMPTS):
            try:
                self._apply_and_commit(domain_event, tracking)
            except ActiveVersionChangedError:
                self._follow_active_version(tracking)
            except ConcurrentChangeError:
                self.session.forget()
                recorded = self.view.max_tracking_id(tracking.application_name)
                if recorded is not None and tracking.notification_id <= recorded:
                    return
            else:
                return
        raise ConcurrentChangeError(
            f"Event at position {tracking.notification_id} met concurrent writers "
            f"{MAX_COMMIT_ATTEMPTS} times; is another runner of projection "
            f"{self.name!r} writing the same items? Run one runner per projection."
        )

    def _apply_and_commit(self, domain_event: Any, tracking: Tracking) -> None:
        """Apply an event and commit it, waiting out DynamoDB being unavailable.

        While reads or the commit fail with ``OperationalError`` (an outage,
        throttling past the client's retries), wait (doubling up to 30 s)
        and apply again, for at most ``outage_patience`` seconds in all.
        Conflicts are the caller's to handle.
        """
        outage = Outage(
            f"applying an event to {self.name}", 0.2, patience=self.outage_patience
        )
        while True:
            try:
                self.apply(self.session, domain_event, tracking.notification_id)
                self.session.tracking = tracking
                self.commit(self.session)
            except OperationalError as error:
                self.session.forget()
                wait = outage.failed(error)
                if wait is None:
                    raise
                time.sleep(wait)
            else:
                return

    def _follow_active_version(self, tracking: Tracking) -> None:
        """Move to the version a rebuild switched to, if it is not behind us."""
        self.session.forget()
        self.view.follow_active()
        recorded = self.view.max_tracking_id(tracking.application_name) or 0
        if recorded + 1 < tracking.notification_id:
            raise ActiveVersionChangedError(
                f"Readers switched to a version of projection {self.name!r} at "
                f"position {recorded}, behind this runner ({tracking.notification_id}"
                "). Restart the runner: it resumes from the active version's position."
            )

    # Applying one event ---------------------------------------------------------

    def apply(
        self,
        session: Session,
        event: Any,
        position: int | None,
        *,
        redriving: bool = False,
    ) -> Outcome:
        """Apply one event to the session (not committed): handle, retry or park.

        Reads missing earlier events of the aggregate first (``load_events``),
        so an aggregate's events are always applied in version order. If the
        session held nothing pending, and they do not fit in one commit with
        the event, the session is committed part way (each part with its
        aggregate's position), and what is left stays pending.
        """

        def step(may_split: bool) -> Outcome:
            current = self._position_for(
                session,
                str(event.originator_id),
                event.originator_version,
                redriving=redriving,
                may_split=may_split,
            )
            if isinstance(current, Outcome):
                return current
            return self._fitting(
                session,
                may_split,
                lambda s: self._handle(s, event, position, current),
            )

        return self.in_parts(session, step)

    def in_parts(self, session: Session, step: Callable[[bool], Outcome]) -> Outcome:
        """Run ``step(may_split)``, which may commit ``session`` part way if told True.

        True only if the session may be split (:attr:`Session.splittable`) and
        holds nothing pending: its parts then commit only this step's work.
        A part that meets another writer starts the step again from what is
        committed.
        """
        if not session.splittable or session.pending_actions():
            return step(False)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            try:
                return step(True)
            except ConcurrentChangeError:
                session.forget()
        raise ConcurrentChangeError(
            f"Applying events of projection {self.name!r} in several commits met "
            f"concurrent writers {MAX_COMMIT_ATTEMPTS} times; is another runner "
            "writing the same items? Run one runner per projection."
        )

    def _fitting(
        self, session: Session, may_split: bool, change: Callable[[Session], Outcome]
    ) -> Outcome:
        """Make ``change``; if ``may_split`` and it overfills a commit, commit first."""
        outcomes: list[Outcome] = []
        flush = None
        if may_split and session.pending_actions():
            flush = partial(self.commit, session)
        session.fit(lambda s: outcomes.append(change(s)), flush)
        return outcomes[-1]

    def _position_for(
        self,
        session: Session,
        aggregate_id: str,
        version: int,
        *,
        redriving: bool = False,
        may_split: bool = False,
    ) -> AggregatePosition | Outcome:
        """Return the aggregate's position if ``version`` can be applied next.

        Otherwise return why not: ``DUPLICATE`` (already applied) or
        ``WAITING`` (behind a parked event, or behind a missing earlier event
        that did not apply or could not be read). Missing earlier events are
        applied first (committed in parts if ``may_split``), and the position
        returned is the one after them. ``redriving`` lets the parked version
        itself through.
        """
        if session.total_order:
            return self._position_in_total_order(
                session, aggregate_id, version, redriving=redriving
            )
        current = session.get(AggregatePosition, aggregate_id) or AggregatePosition(
            aggregate_id=aggregate_id
        )
        if version <= current.version:
            return Outcome.DUPLICATE
        if current.parked_version is not None and not (
            redriving and version == current.parked_version
        ):
            # Rewritten unchanged so the commit checks its revision: if a
            # redrive (maybe in another process) released the aggregate since
            # it was read, the commit fails and the event is applied afresh
            # instead of being passed over as waiting.
            session.put(current)
            return Outcome.WAITING
        if version > current.version + 1:
            if not self._fill_gap(session, current, version, may_split=may_split):
                return Outcome.WAITING
            current = session.get(AggregatePosition, aggregate_id) or current
        return current

    @staticmethod
    def _position_in_total_order(
        session: Session, aggregate_id: str, version: int, *, redriving: bool
    ) -> AggregatePosition | Outcome:
        """Return where an aggregate stands on a total order, or ``WAITING``.

        In a total order an aggregate's events come in version order with
        none missing, and the tracking refuses an event applied before: the
        version before this one is the last applied, unless the aggregate
        is parked. Nothing is read but the dead letters (once per session).
        """
        parked = session.parked_event(aggregate_id)
        if parked is None:
            return AggregatePosition(aggregate_id=aggregate_id, version=version - 1)
        if redriving and version == parked.version:
            return AggregatePosition(
                aggregate_id=aggregate_id,
                version=version - 1,
                parked_version=parked.version,
            )
        # Recorded even when unchanged, so the commit checks the dead letter's
        # revision: a redrive (maybe in another process) that released the
        # aggregate meanwhile makes the commit fail, and the event is applied
        # afresh instead of being passed over as waiting.
        passed = max(parked.passed_version or parked.version, version)
        session.put(parked.model_copy(update={"passed_version": passed}))
        return Outcome.WAITING

    def _fill_gap(
        self,
        session: Session,
        current: AggregatePosition,
        version: int,
        *,
        may_split: bool,
    ) -> bool:
        """Apply the aggregate's events before ``version`` that were not applied.

        Returns False if one of them did not apply (parked, or waiting), or
        could not be read: then the first version missing is parked (after
        ``retry_delays``), never skipped.
        """
        if self.load_events is None:
            raise GapError(
                f"Event {version} of aggregate {current.aggregate_id} arrived after "
                f"version {current.version} with no way to read the events "
                "between: give the projector load_events (see "
                "ledger.projections.event_loader)."
            )
        readable, gap, attempts = self._read_gap(
            current.aggregate_id, current.version, version - 1
        )
        for event in readable:
            outcome = self._fitting(
                session,
                may_split,
                partial(self.apply, event=event, position=None),
            )
            if outcome is not Outcome.APPLIED:
                return False
        if gap is not None:
            self._fitting(
                session,
                may_split,
                partial(self._park_gap, error=gap, attempts=attempts, current=current),
            )
            return False
        return True

    def _read_gap(
        self, aggregate_id: str, after: int, up_to: int
    ) -> tuple[Sequence[Any], GapError | None, int]:
        """Read versions ``after``+1 to ``up_to``, retrying while some are missing.

        Returns the events read in order, and, if some stayed missing, the
        error and the attempts made (the events are then those before the
        first missing version).
        """
        assert self.load_events is not None  # noqa: S101 - checked by the caller
        delays = (*self.retry_delays, None)
        for attempt, delay in enumerate(delays, start=1):
            events = self.load_events(aggregate_id, after, up_to)
            try:
                return in_version_order(aggregate_id, events, after, up_to), None, 1
            except GapError as error:
                if delay is None:
                    return leading_run(events, after), error, attempt
                logger.warning(
                    "%s could not read every version of aggregate %s after %d up "
                    "to %d (attempt %d); reading again in %.2fs",
                    self.name,
                    aggregate_id,
                    after,
                    up_to,
                    attempt,
                    delay,
                    extra={
                        "projection": self.name,
                        "aggregate_id": aggregate_id,
                        "after": after,
                        "up_to": up_to,
                        "attempt": attempt,
                        "retry_in": delay,
                    },
                )
                time.sleep(delay)
        raise AssertionError  # pragma: no cover - the last delay returns

    def _park_gap(
        self,
        session: Session,
        *,
        error: GapError,
        attempts: int,
        current: AggregatePosition,
    ) -> Outcome:
        """Park the first version of a gap that could not be read (not committed)."""
        at = session.get(AggregatePosition, current.aggregate_id) or current
        missing = at.version + 1
        deadletters.park(
            session,
            at,
            version=missing,
            topic="",
            position=None,
            error=deadletters.error_summary(error, gap_reason(missing)),
            attempts=attempts,
        )
        return Outcome.PARKED

    def load_in_order(
        self, aggregate_id: str, after: int, up_to: int | None = None
    ) -> Sequence[Any]:
        """Read an aggregate's events after a version, exactly in version order.

        Up to ``up_to`` (None: all, and at least version ``after`` + 1).
        Raises :class:`GapError` if a version is missing (never skips one).
        """
        if self.load_events is None:
            raise GapError(
                f"Projection {self.name!r} cannot read the events of aggregate "
                f"{aggregate_id}: give the projector load_events (see "
                "ledger.projections.event_loader)."
            )
        events = self.load_events(
            aggregate_id, after, 2**62 if up_to is None else up_to
        )
        return in_version_order(aggregate_id, events, after, up_to)

    def _handle(
        self,
        session: Session,
        event: Any,
        position: int | None,
        current: AggregatePosition,
    ) -> Outcome:
        handler = self.handler_for(type(event))
        attempts = 0
        if handler is not None:
            savepoint = session.savepoint()
            delays = (*self.retry_delays, None)
            for delay in delays:
                attempts += 1
                try:
                    handler(self, event, session)
                    break
                except PersistenceError:
                    # DynamoDB failing (throttling past retries, a missing
                    # table) is not this event's fault: do not park healthy
                    # events; let the runner or Lambda retry the batch.
                    session.restore(savepoint)
                    raise
                except Exception as error:  # noqa: BLE001 - any handler bug parks
                    session.restore(savepoint)
                    if delay is None:
                        deadletters.park(
                            session,
                            current,
                            version=event.originator_version,
                            topic=get_topic(type(event)),
                            position=position,
                            error=deadletters.error_summary(error),
                            attempts=attempts,
                        )
                        return Outcome.PARKED
                    report_retry(
                        self,
                        logger,
                        event,
                        attempt=attempts,
                        error=error,
                        delay=delay,
                    )
                    time.sleep(delay)
            too_large = self._too_large(session, savepoint, current, handler)
            if too_large is not None:
                session.restore(savepoint)
                deadletters.park(
                    session,
                    current,
                    version=event.originator_version,
                    topic=get_topic(type(event)),
                    position=position,
                    error=too_large,
                    attempts=attempts,
                )
                return Outcome.PARKED
        if current.parked_version is not None:
            session.delete(ParkedEvent, current.aggregate_id)
        if not session.total_order:
            session.put(
                AggregatePosition(
                    aggregate_id=current.aggregate_id,
                    version=event.originator_version,
                )
            )
        session.applied += 1
        return Outcome.APPLIED

    def _too_large(
        self,
        session: Session,
        savepoint: Savepoint,
        current: AggregatePosition,
        handler: Handler,
    ) -> str | None:
        """Say why one event's writes cannot fit in any commit (None: they can).

        An item over the view's ``max_item_bytes`` fits in none. Its commit
        holds what its handler wrote, its aggregate's position, the dead
        letter it clears and the tracking. Only the key and the counts go in
        the reason, never the data.
        """
        sizes = session.sizes_written_since(savepoint)
        largest = max(sizes, key=sizes.__getitem__, default=None)
        if largest is not None and sizes[largest] > self.view.max_item_bytes:
            return (
                f"ItemTooLargeError in {getattr(handler, '__name__', 'handler')}: "
                f"read-model item {largest} would be {sizes[largest]:,} bytes with "
                f"its key; one item holds at most {self.view.max_item_bytes:,} "
                "(DynamoDB's 400 KB per item). Split the read model into smaller "
                "items (one per entry rather than one growing map), then redrive."
            )
        keys, size = set(sizes), sum(sizes.values())
        if not session.total_order:
            keys.add(AggregatePosition.storage_key(current.aggregate_id))
        if current.parked_version is not None:
            keys.add(ParkedEvent.storage_key(current.aggregate_id))
        items = len(keys) + 1
        if items <= self.view.max_actions and size <= self.view.max_bytes:
            return None
        return (
            f"TransactionTooLargeError in {getattr(handler, '__name__', 'handler')}: "
            f"one event needs a commit of {items} items ({size:,} bytes) with its "
            f"position and tracking; one commit holds {self.view.max_actions} "
            f"items and {self.view.max_bytes:,} bytes. Make the handler write "
            "fewer or smaller read models per event, then redrive."
        )

    # Dead letters (defined in ledger.projections.deadletters) -------------------

    park_record = deadletters.park_record
    parked = deadletters.parked
    redrive = deadletters.redrive

    # Batches (rebuilds, stream batches) ---------------------------------------------

    def apply_batch(
        self,
        session: Session,
        events: Iterable[tuple[Any, Tracking | None]],
        on_commit: Callable[[int], None] | None = None,
    ) -> int:
        """Apply events in order, committing whenever a commit is full.

        Each commit carries the tracking of the last event in it, so a crash
        loses no work already committed and repeats none; a commit is full at
        the view's ``max_actions`` items or ``max_bytes`` bytes. Calls
        ``on_commit(events in that commit)``. Returns the events applied.
        """
        uncommitted = 0
        total = 0

        def flush() -> None:
            nonlocal uncommitted
            self.commit(session)
            if on_commit is not None:
                on_commit(uncommitted)
            uncommitted = 0

        for event, tracking in events:
            change = partial(self._apply_tracked, event=event, tracking=tracking)
            session.fit(change, flush if uncommitted else None)
            uncommitted += 1
            total += 1
        self.commit(session)
        if on_commit is not None and uncommitted:
            on_commit(uncommitted)
        return total

    def _apply_tracked(
        self, session: Session, *, event: Any, tracking: Tracking | None
    ) -> None:
        """Apply one event and make its position the session's tracking.

        An event that could not be decoded (:class:`Undecodable`) is parked.
        """
        position = None if tracking is None else tracking.notification_id
        self.apply_or_park(session, event, position)
        if tracking is not None:
            session.tracking = following(session.tracking, tracking)

    def apply_or_park(
        self, session: Session, event: Any, position: int | None
    ) -> Outcome:
        """Apply a decoded event, or park one that could not be decoded.

        ``event`` is a domain event or an :class:`Undecodable` (as feeds and
        histories hand them over); not committed.
        """
        if isinstance(event, Undecodable):
            return self.park_record(
                session,
                event.aggregate_id,
                event.version,
                topic=event.topic,
                error=event.error,
                position=position,
            )
        return self.apply(session, event, position)


def event_loader(application: Any) -> EventLoader:
    """Return an :data:`EventLoader` reading an application's events table.

    One strongly consistent Query (per 1 MB) of the aggregate's events.
    """

    def load(aggregate_id: str, after: int, up_to: int) -> Sequence[Any]:
        originator_id: Any = aggregate_id
        recorder = application.recorder
        if getattr(recorder, "originator_id_type", "uuid") == "uuid" or not hasattr(
            recorder, "originator_id_type"
        ):
            from uuid import UUID  # noqa: PLC0415 - only ids of uuid stores

            originator_id = UUID(aggregate_id)
        stored = recorder.select_events(originator_id, gt=after, lte=up_to)
        return [application.mapper.to_domain_event(s) for s in stored]

    return load


__all__ = [
    "EventLoader",
    "Projector",
    "event_loader",
    "handles",
]


def following(uncommitted: Tracking | None, tracking: Tracking) -> Tracking:
    """Return the tracking a commit records after ``tracking``'s event.

    A commit holding several events of a page records the last one's
    position over the position its first one follows: a
    :class:`~ledger.dynamodb.recorders.TrackingAfter` keeps the ``after`` of
    the commit's first tracking (``uncommitted``: the session's, None after
    each commit).
    """
    if isinstance(uncommitted, TrackingAfter) and isinstance(tracking, TrackingAfter):
        return dataclasses.replace(tracking, after=uncommitted.after)
    return tracking
