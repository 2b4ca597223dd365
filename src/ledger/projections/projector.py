"""Projectors: one handler per event type, writing pydantic read models.

A projector is an ``eventsourcing`` :class:`~eventsourcing.projection.Projection`
whose view is a :class:`~ledger.projections.views.ReadModelView`. Handlers read
and write read models through a :class:`Session` (a unit of work); the
session's writes, the aggregate's last applied version and the tracking
position are committed together, so an event applied twice changes nothing.

Failure policy: a handler that raises is retried with exponential backoff
(``retry_delays``); an event that still fails is *parked* (a dead letter with
its error, position and attempts) and its aggregate waits: its later events
are not applied until the parked one is redriven. Other aggregates go on.

Handlers must be deterministic and have no side effects besides the session:
they may run again when a commit is retried. A read model fed by several
aggregates must not depend on the order between aggregates (keep maps or
sums, not lists in arrival order): the stream feed applies aggregates in any
interleaving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from typing import Any, ClassVar, TypeVar, cast

from eventsourcing.persistence import PersistenceError, Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic
from pydantic import BaseModel, ConfigDict

from ledger.projections.views import (
    PARKED_PREFIX,
    ActiveVersionChangedError,
    ConcurrentChangeError,
    ItemWrite,
    ReadModelView,
    StoredItem,
)

TModel = TypeVar("TModel", bound="ReadModel")
Handler = Callable[[Any, Any, "Session"], None]
EventLoader = Callable[[str, int, int], Sequence[Any]]
"""Reads an aggregate's events after one version up to another (inclusive)."""

_MAX_COMMIT_ATTEMPTS = 20
"""Attempts at one event whose commit keeps meeting concurrent writers."""
_MAX_CACHED_ITEMS = 10_000
"""Items a live projector keeps cached between events (reads it can skip)."""


class ReadModel(BaseModel):
    """Base of read models: immutable pydantic models stored under a key.

    ``key_field`` names the field that identifies an instance; it is stored
    under ``{ClassName}#{value}``.
    """

    model_config = ConfigDict(frozen=True)

    key_field: ClassVar[str] = "id"

    @classmethod
    def storage_key(cls, key: object) -> str:
        """Return the key an instance with this identity is stored under."""
        return f"{cls.__name__}#{key}"

    def own_key(self) -> str:
        """Return the key this instance is stored under."""
        return self.storage_key(getattr(self, self.key_field))


class AggregatePosition(ReadModel):
    """How far a projection has applied one aggregate, and whether it waits."""

    key_field: ClassVar[str] = "aggregate_id"

    aggregate_id: str
    version: int = 0
    """The last version of the aggregate applied."""
    parked_version: int | None = None
    """The version parked as a dead letter, which later versions wait behind."""


class ParkedEvent(ReadModel):
    """A dead letter: an event whose handler kept failing, and why."""

    key_field: ClassVar[str] = "aggregate_id"

    aggregate_id: str
    version: int
    position: int | None
    """Position in the application sequence, when known."""
    topic: str
    error: str
    attempts: int
    parked_at: datetime


class Outcome(Enum):
    """What became of one event offered to a projector."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    """Already applied: nothing changed."""
    WAITING = "waiting"
    """Its aggregate waits behind a parked event: apply it at redrive."""
    PARKED = "parked"


class GapError(LookupError):
    """An event came before earlier events of its aggregate and none could be read."""


def handles(*event_classes: type[Any]) -> Callable[[Handler], Handler]:
    """Declare a projector method as the handler of these event classes."""

    def decorate(method: Handler) -> Handler:
        method.__dict__.setdefault("_handles", []).extend(event_classes)
        return method

    return decorate


class Session:
    """A unit of work over a view: reads (cached), writes, and tracking to commit.

    Reads see the session's own writes. ``complete`` says the cache holds the
    whole view (a rebuild that is the table's only writer), so a miss means
    "absent" without a read.
    """

    def __init__(self, view: ReadModelView, *, complete: bool = False) -> None:
        self.view = view
        self.complete = complete
        self.loaded: dict[str, StoredItem | None] = {}
        self.models: dict[str, ReadModel | None] = {}
        self.writes: dict[str, ReadModel | None] = {}
        self.tracking: Tracking | None = None
        self._bodies: dict[str, tuple[ReadModel, str]] = {}
        """JSON of written models, kept while the model under the key is the same."""

    def load_everything(self) -> None:
        """Cache the whole view in memory; then misses need no reads."""
        self.loaded = dict(self.view.load_all())
        self.models = {}
        self.complete = True

    def _stored(self, key: str) -> StoredItem | None:
        if key not in self.loaded:
            self.loaded[key] = None if self.complete else self.view.load(key)
        return self.loaded[key]

    def get(self, model_type: type[TModel], key: object) -> TModel | None:
        """Return the read model of this type and key, or None."""
        storage_key = model_type.storage_key(key)
        if storage_key in self.writes:
            return cast("TModel | None", self.writes[storage_key])
        if storage_key not in self.models:
            stored = self._stored(storage_key)
            self.models[storage_key] = (
                None if stored is None else model_type.model_validate_json(stored.body)
            )
        return cast("TModel | None", self.models[storage_key])

    def put(self, model: ReadModel) -> None:
        """Store a read model (replacing the one under its key)."""
        self.writes[model.own_key()] = model

    def delete(self, model_type: type[ReadModel], key: object) -> None:
        """Remove the read model of this type and key, if there is one."""
        self.writes[model_type.storage_key(key)] = None

    def pending_actions(self) -> int:
        """Return how many actions committing now would take."""
        return len(self.writes) + (self.tracking is not None)

    def pending_bytes(self) -> int:
        """Return the bytes of keys and bodies committing now would write."""
        return sum(
            len(key) + (0 if model is None else len(self._body(key, model)))
            for key, model in self.writes.items()
        )

    def is_over(self) -> bool:
        """Return True if committing now would overfill one of the view's commits."""
        return (
            self.pending_actions() > self.view.max_actions
            or self.pending_bytes() > self.view.max_bytes
        )

    def fit(
        self, change: Callable[[Session], object], flush: Callable[[], None] | None
    ) -> None:
        """Make ``change``; if that overfills one commit, ``flush`` first.

        ``flush`` commits what was pending before (None: nothing is). If
        ``change`` raises, the session is left as it was before it.
        """
        savepoint = self.savepoint()
        self._all_or_nothing(change)
        if flush is not None and self.is_over():
            self.restore(savepoint)
            flush()
            self._all_or_nothing(change)

    def _all_or_nothing(self, change: Callable[[Session], object]) -> None:
        savepoint = self.savepoint()
        try:
            change(self)
        except Exception:
            self.restore(savepoint)
            raise

    def _body(self, key: str, model: ReadModel) -> str:
        cached = self._bodies.get(key)
        if cached is not None and cached[0] is model:
            return cached[1]
        body = model.model_dump_json()
        self._bodies[key] = (model, body)
        return body

    def savepoint(self) -> tuple[dict[str, ReadModel | None], Tracking | None]:
        """Return the session's pending state, to restore after a failed handler."""
        return dict(self.writes), self.tracking

    def restore(
        self, savepoint: tuple[dict[str, ReadModel | None], Tracking | None]
    ) -> None:
        """Undo everything done since ``savepoint``."""
        self.writes, self.tracking = dict(savepoint[0]), savepoint[1]

    def commit(self) -> None:
        """Write the pending writes and tracking in one commit, then clear them."""
        writes: list[ItemWrite] = []
        for key, model in self.writes.items():
            stored = self._stored(key)
            revision = 0 if stored is None else stored.revision
            if model is None and stored is None:
                continue
            body = None if model is None else self._body(key, model)
            writes.append(ItemWrite(key, body, revision))
        if not writes and self.tracking is None:
            return
        self.view.commit(writes, self.tracking)
        for write in writes:
            self.loaded[write.key] = (
                None
                if write.body is None
                else StoredItem(write.body, write.expected_revision + 1)
            )
            self.models[write.key] = self.writes[write.key]
        self.writes.clear()
        self._bodies.clear()
        self.tracking = None

    def forget(self) -> None:
        """Drop the cache and pending work (after another writer got in first)."""
        self.loaded.clear()
        self.models.clear()
        self.writes.clear()
        self._bodies.clear()
        self.tracking = None
        self.complete = False


class Projector(Projection[ReadModelView]):
    """Base of projectors: handlers per event type, retries, parking.

    Subclass, set ``name`` (its tables are named after it) and decorate
    methods with :func:`handles`. Events without a handler are tracked and
    otherwise ignored.
    """

    retry_delays: ClassVar[tuple[float, ...]] = (0.05, 0.2, 1.0)
    """Seconds to wait before each retry of a failing handler; then it is parked."""
    handlers: ClassVar[dict[type[Any], Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type[Any], Handler] = {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                for event_class in getattr(attribute, "_handles", ()):
                    handlers[event_class] = attribute
        cls.handlers = handlers

    def __init__(
        self, view: ReadModelView, load_events: EventLoader | None = None
    ) -> None:
        """Project into ``view``; ``load_events`` reads missed events (gaps)."""
        super().__init__(view)
        self.load_events = load_events
        self.session = Session(view)

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
        if len(self.session.loaded) > _MAX_CACHED_ITEMS:
            self.session.forget()
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            self.apply(self.session, domain_event, tracking.notification_id)
            self.session.tracking = tracking
            try:
                self.session.commit()
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
            f"{_MAX_COMMIT_ATTEMPTS} times; is another runner of projection "
            f"{self.name!r} writing the same items? Run one runner per projection."
        )

    def _follow_active_version(self, tracking: Tracking) -> None:
        """Move to the version a rebuild switched to, if it is not behind us."""
        self.session.forget()
        follow = getattr(self.view, "follow_active", None)
        if follow is not None:
            follow()
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
        so an aggregate's events are always applied in version order.
        """
        aggregate_id = str(event.originator_id)
        version: int = event.originator_version
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
        if version > current.version + 1 and not self._fill_gap(
            session, current, version
        ):
            return Outcome.WAITING
        return self._handle(session, event, position, current)

    def _fill_gap(
        self, session: Session, current: AggregatePosition, version: int
    ) -> bool:
        """Apply the aggregate's events before ``version`` that were not applied.

        Returns False if one of them did not apply (parked, or waiting).
        """
        if self.load_events is None:
            raise GapError(
                f"Event {version} of aggregate {current.aggregate_id} arrived after "
                f"version {current.version} with no way to read the events "
                "between: give the projector load_events (see "
                "ledger.projections.event_loader)."
            )
        missing = self.load_events(current.aggregate_id, current.version, version - 1)
        return all(
            self.apply(session, event, None) is Outcome.APPLIED for event in missing
        )

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
                        self._park(
                            session,
                            current,
                            version=event.originator_version,
                            topic=get_topic(type(event)),
                            position=position,
                            error=f"{type(error).__name__}: {error}",
                            attempts=attempts,
                        )
                        return Outcome.PARKED
                    time.sleep(delay)
        if current.parked_version is not None:
            session.delete(ParkedEvent, current.aggregate_id)
        session.put(
            AggregatePosition(
                aggregate_id=current.aggregate_id, version=event.originator_version
            )
        )
        return Outcome.APPLIED

    @staticmethod
    def _park(
        session: Session,
        current: AggregatePosition,
        *,
        version: int,
        topic: str,
        position: int | None,
        error: str,
        attempts: int,
    ) -> None:
        earlier = session.get(ParkedEvent, current.aggregate_id)
        if earlier is not None and earlier.version == version:
            attempts += earlier.attempts
            position = earlier.position if position is None else position
        session.put(
            ParkedEvent(
                aggregate_id=current.aggregate_id,
                version=version,
                position=position,
                topic=topic,
                error=error,
                attempts=attempts,
                parked_at=datetime.now(UTC),
            )
        )
        session.put(current.model_copy(update={"parked_version": version}))

    def park_record(
        self,
        session: Session,
        aggregate_id: str,
        version: int,
        *,
        topic: str,
        error: str,
        position: int | None = None,
    ) -> Outcome:
        """Park an event that could not even be decoded (not committed).

        For a feed that cannot hand the record back to its source, as Lambda
        can: its aggregate waits behind it like behind any parked event, and a
        redrive after the fix (an upcaster, a registered topic) reads it from
        the events table and applies it. Earlier missing events of the
        aggregate are applied first (``load_events``).
        """
        current = session.get(AggregatePosition, aggregate_id) or AggregatePosition(
            aggregate_id=aggregate_id
        )
        if version <= current.version:
            return Outcome.DUPLICATE
        if current.parked_version is not None:
            session.put(current)  # checked at commit, as in apply()
            return Outcome.WAITING
        if version > current.version + 1:
            if not self._fill_gap(session, current, version):
                return Outcome.WAITING
            current = session.get(AggregatePosition, aggregate_id) or current
        self._park(
            session,
            current,
            version=version,
            topic=topic,
            position=position,
            error=error,
            attempts=1,
        )
        return Outcome.PARKED

    # Dead letters -----------------------------------------------------------------

    def parked(self) -> list[ParkedEvent]:
        """Return the parked events of this projector's view, oldest first."""
        events = [
            ParkedEvent.model_validate_json(item.body)
            for item in self.view.parked_items()
        ]
        return sorted(events, key=lambda parked: parked.parked_at)

    def redrive(self, aggregate_id: str | None = None) -> dict[str, Outcome]:
        """Apply parked events again (all, or one aggregate's), then what waited.

        Call after fixing the handler. Returns each aggregate's outcome:
        ``APPLIED`` when it caught up, ``PARKED`` when its event failed again.
        """
        if self.load_events is None:
            raise GapError(
                "Redrive reads the parked events from the events table: give the "
                "projector load_events (see ledger.projections.event_loader)."
            )
        targets = (
            [aggregate_id] if aggregate_id else [p.aggregate_id for p in self.parked()]
        )
        outcomes: dict[str, Outcome] = {}
        for target in targets:
            outcomes[target] = self._redrive_one(target)
        return outcomes

    def _redrive_one(self, aggregate_id: str) -> Outcome:
        assert self.load_events is not None  # noqa: S101 - checked by redrive()
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            session = Session(self.view)
            current = session.get(AggregatePosition, aggregate_id)
            if current is None or current.parked_version is None:
                return Outcome.APPLIED
            outcome = Outcome.APPLIED
            try:
                events = self.load_events(aggregate_id, current.version, 2**62)
            except PersistenceError:
                raise
            except Exception as error:  # noqa: BLE001 - still cannot be decoded
                parked = session.get(ParkedEvent, aggregate_id)
                self._park(
                    session,
                    current,
                    version=current.parked_version,
                    topic=parked.topic if parked else "",
                    position=None,
                    error=f"{type(error).__name__}: {error}",
                    attempts=1,
                )
                events, outcome = [], Outcome.PARKED
            for event in events:
                outcome = self.apply(session, event, None, redriving=True)
                if outcome is not Outcome.APPLIED:
                    break
            try:
                session.commit()
            except ConcurrentChangeError:
                continue
            return outcome
        raise ConcurrentChangeError(
            f"Redrive of aggregate {aggregate_id} kept meeting concurrent writers; "
            "stop the projection's runners and redrive again."
        )

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
            session.commit()
            if on_commit is not None:
                on_commit(uncommitted)
            uncommitted = 0

        for event, tracking in events:
            change = partial(self._apply_tracked, event=event, tracking=tracking)
            session.fit(change, flush if uncommitted else None)
            uncommitted += 1
            total += 1
        session.commit()
        if on_commit is not None and uncommitted:
            on_commit(uncommitted)
        return total

    def _apply_tracked(
        self, session: Session, *, event: Any, tracking: Tracking | None
    ) -> None:
        """Apply one event and make its position the session's tracking."""
        if tracking is None:
            self.apply(session, event, None)
        else:
            self.apply(session, event, tracking.notification_id)
            session.tracking = tracking


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
    "PARKED_PREFIX",
    "AggregatePosition",
    "EventLoader",
    "GapError",
    "Outcome",
    "ParkedEvent",
    "Projector",
    "ReadModel",
    "Session",
    "event_loader",
    "handles",
]
