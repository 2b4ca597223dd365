"""Process managers (sagas): long-running processes across applications.

(Over 400 lines as one concept: the saga aggregate, the application that
decides then sends its steps, and the timeout poller share one invariant:
only a decision that won the saga's version check is ever sent.)

A saga reacts to other applications' events, decides commands to send them,
schedules timeouts and, when something fails, compensates. Three parts:

:class:`Saga`
    The state of one saga (one order, say) as an event-sourced aggregate: the
    facts it learned, the steps (commands) it decided, its timeouts and, once
    something failed, why. Deciding is pure: methods record events and touch
    nothing outside the aggregate.

:class:`SagaApplication`
    An ``eventsourcing`` process application that keeps the sagas. Its policy
    does two different things with two different guarantees:

    * *deciding*: an upstream event (an order confirmed, stock reserved) is
      handed to :meth:`SagaApplication.react`, which loads the saga and lets
      it decide; the saga's new events are saved **in one transaction with
      the tracking** of the upstream event (``DynamoDBProcessRecorder``). A
      decision is committed once, or not at all. Pulled from a leader's
      sequence, a page of events is decided, then committed at once: every
      decision of the page and its last position (see :class:`ProcessConsumer`
      and :meth:`SagaApplication.pull_and_process`).
    * *dispatching*: each decided step is an event of the saga
      (:class:`Saga.Step`), so the saga application's own sequence is its
      outbox. The application follows itself and, for each step, calls the
      target application with an idempotency key derived from the step (the
      saga's id and the step's version: :func:`step_key`), then commits the
      tracking (once per page of steps read from the sequence). A crash after
      the call and before that commit redelivers the step, and the key makes
      the second call store nothing.

    Why decide first and call afterwards, rather than call inside the
    policy: two deciders may run at once for one saga (the stream feed
    processes leaders concurrently; the timeout poller fires while an event
    is processed). Had each called out before committing, the loser of the
    saga's version race would already have acted, say releasing the stock of
    an order the winner ships. Deciding first lets the saga's version
    condition pick one decision; only committed steps are ever sent.

:class:`TimeoutPoller` (a runner of a :class:`TimeoutFirer`)
    Fires due timeouts. A timeout is part of its saga
    (:meth:`Saga.schedule` records :class:`Saga.TimeoutScheduled` with the
    due time), saved with the decision that schedules it. The poller reads
    the saga application's sequence for the three timeout events only, keeps
    the pending ones in memory, and fires the due ones with
    :meth:`SagaApplication.fire_timeout`, which records
    :class:`Saga.TimeoutFired` and the saga's reaction in one conditional
    write: a timeout fires once, however many pollers, and never after it was
    cancelled. No index is needed: its durable position is a low-water mark
    (the position before the oldest timeout still pending: a
    :class:`LowWaterMark`), kept in the saga application's tracking table, so
    a restarted poller re-reads only the events since then.

Failing steps. A step whose command raises is sent again after each of
:attr:`SagaApplication.step_retry_delays`; if it still fails, its saga is
*parked*: a dead letter (:class:`ParkedSteps`, stored as the publisher's
dead letters are) holds the step with its error's type and place, never the
error's message, and the step's tracking is committed, so other sagas go on.
The parked saga's later steps are not sent: each is stored as a dead letter
waiting behind it, so a saga's steps are never sent out of order.
:meth:`SagaApplication.redrive` (``ledger sagas dlq redrive``) sends them,
in order, after the fix; :meth:`SagaApplication.drop` gives up on them.
Neither a conflict (``IntegrityError``: the feed reads again) nor the store
failing (any other ``PersistenceError`` but ``DataError``: every saga would
fail alike) parks a saga: they stop the poll, as before. Nor does a failure
of a step a twin already applied (:meth:`SagaApplication.step_applied`).

Feeds. The saga application keeps a gap-free sequence of its own: the
dispatcher and the timeout poller read it. ``DYNAMODB_ORDERING=sequence`` is
set for it whatever its leaders use; ``{NAME}_DYNAMODB_ORDERING=indexed``
(its events table then needs its stream) makes its saves touch no hot item:
an indexer appends its sequence. :class:`SagaRunner` runs that indexer in
process by default, or ``ledger index run`` does, beside it. Its leaders may
use any ordering:

* ``sequence`` or ``indexed``: each leader's sequence, and the saga's own,
  is read by a consumer run by a :class:`~ledger.feeds.Runner` over an
  :class:`~ledger.feeds.IndexSource`: a :class:`ProcessConsumer` per leader
  (deciding), a :class:`StepDispatcher` (sending steps) and a
  :class:`TimeoutFirer`. :class:`SagaRunner` and :class:`TimeoutPoller` make
  and poll those runners in process, ``ledger.index_consumers.follow_leaders``
  drains them in Lambda; each runner records its feed's ``Lag`` behind the
  head (dimension ``SagaApplication``, value ``{saga}/{leader}``,
  ``{saga}/steps`` or ``{saga}/timeouts``). ``eventsourcing``'s ``System``
  and ``SingleThreadedRunner`` work too on ``sequence``, with the saga
  following itself (:meth:`SagaApplication.pull_and_process`). An indexed
  leader's index is kept by its own indexer (``ledger index run``, or one
  given to the runner);
* ``stream``: one :class:`~ledger.projections.followers.StreamFollower` per
  leader (in Lambda, or a ``StreamPoller``), tracking each upstream
  aggregate, plus a :class:`SagaRunner` with no leaders for the saga's own
  steps (or a ``StreamFollower(saga_app, saga_app)`` on its own stream).

Either way a saga sees each upstream event once, in version order within an
aggregate and in any order across aggregates, and its decisions must hold
under any such interleaving.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, TypeVar

from eventsourcing.application import (
    AggregateNotFoundError,
    LocalNotificationLog,
    NotificationLog,
    ProcessingEvent,
    Repository,
)
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    Notification,
    PersistenceError,
    ProgrammingError,
    Tracking,
)
from eventsourcing.system import ProcessApplication
from eventsourcing.utils import Environment, EnvType, get_topic
from pydantic import AwareDatetime

from ledger.domain import Aggregate
from ledger.dynamodb import connection_of
from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.dynamodb.factory import DynamoDBFactory
from ledger.dynamodb.indexed_recorders import DynamoDBIndexedApplicationRecorder
from ledger.dynamodb.limits import MAX_TRANSACTION_ACTIONS, TransactionTooLargeError
from ledger.dynamodb.recorders import TrackingAfter
from ledger.feeds import (
    Batch,
    Checkpoint,
    IndexSource,
    Progress,
    Raced,
    Runner,
    TrackingCheckpoint,
)
from ledger.indexer import Indexer
from ledger.metadata import caused_by
from ledger.persistence import PydanticMapper
from ledger.projections.deadletters import error_summary
from ledger.projections.metrics import (
    COUNT,
    LEDGER_METRICS,
    NO_METRICS,
    SAGA_DIMENSION,
    SAGA_STEP_RETRIES,
    SAGAS_PARKED,
    EmbeddedMetrics,
    Metrics,
    NoMetrics,
)
from ledger.projections.projector import following
from ledger.projections.streams import run_polls
from ledger.saga_parking import PARKED_TABLE, WAITING, ParkedSaga, ParkedSteps

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from eventsourcing.application import Application
    from eventsourcing.domain import MutableOrImmutableAggregate

    from ledger.publishing.deadletters import DeadLetter


__all__ = [
    "PARKED_TABLE",
    "SAGA_NAMESPACE",
    "WAITING",
    "LowWaterMark",
    "ParkedSaga",
    "ParkedSteps",
    "ProcessConsumer",
    "Saga",
    "SagaApplication",
    "SagaRunner",
    "StepDispatcher",
    "TimeoutFirer",
    "TimeoutPoller",
    "metrics_in_lambda",
    "step_key",
]

logger = logging.getLogger(__name__)

SAGA_NAMESPACE: Final = uuid.UUID("5f0c2d1e-8a4b-5c3d-9e7f-1a2b3c4d5e6f")
"""The UUID namespace of saga ids (:meth:`Saga.id_for`). Never change it:
every saga stored so far is found by an id derived from it."""

MAX_DECISION_ATTEMPTS: Final = 20
"""Attempts at a decision that loses the saga's version race (another
decider saved the saga meanwhile): reload, decide again."""

TSaga = TypeVar("TSaga", bound="Saga")


def step_key(step: Saga.Step) -> str:
    """Return the idempotency key of a decided step: the saga and the step's version.

    The same on every delivery of the step (its version is fixed once the
    decision is committed), different for every step of every saga.
    """
    return f"saga/{step.originator_id}/{step.originator_version}"


class Saga(Aggregate):
    """Base of a saga's state: facts learned, steps decided, timeouts, failure.

    A subclass adds its own ``Started`` event (a subclass of
    :class:`Saga.Started` with the fields it starts from), one
    :class:`Saga.Step` subclass per command it can send, and :meth:`advance`,
    which decides what to do next from the state. The helpers here are
    idempotent: noting a fact twice, deciding a step twice, scheduling or
    cancelling a timeout twice records nothing the second time, so a
    subclass can call :meth:`advance` after every change and let it decide
    again from scratch.
    """

    saga_type: ClassVar[str | None] = None
    """The name saga ids are derived from (None: the class's name). Set it
    before renaming a saga class, so stored sagas keep their ids."""

    if TYPE_CHECKING:  # eventsourcing would make class annotations fields
        correlation_id: str
        facts: set[str]
        decided: dict[str, int]
        timeouts: dict[str, datetime]
        fired: set[str]
        failure: str | None

    class Started(Aggregate.Created):
        """The saga began, for one correlation id (an order id, say)."""

        correlation_id: str

        # Any: a saga's own Started narrows the aggregate's type.
        def apply(self, aggregate: Any) -> None:
            """Start with nothing learned, decided or scheduled."""
            aggregate.correlation_id = self.correlation_id
            aggregate.facts = set()
            aggregate.decided = {}
            aggregate.timeouts = {}
            aggregate.fired = set()
            aggregate.failure = None

    class Noted(Aggregate.Event):
        """The saga learned a fact (from an upstream event)."""

        fact: str

        def apply(self, aggregate: Saga) -> None:
            """Remember the fact."""
            aggregate.facts.add(self.fact)

    class Step(Aggregate.Event):
        """Base of the commands a saga decides to send: its outbox.

        Each subclass is one kind of command, decided at most once per saga;
        its fields are the command's arguments. The saga application sends
        it after the decision is committed, with :func:`step_key` as the
        idempotency key.
        """

        def apply(self, aggregate: Saga) -> None:
            """Remember that this step was decided, and at which version."""
            aggregate.decided[type(self).__name__] = self.originator_version

    class Failed(Aggregate.Event):
        """Something failed: from now on the saga compensates."""

        reason: str

        def apply(self, aggregate: Saga) -> None:
            """Remember why."""
            aggregate.failure = self.reason

    class TimeoutScheduled(Aggregate.Event):
        """A timeout was set: it fires at ``due_at`` unless cancelled first."""

        name: str
        due_at: AwareDatetime

        def apply(self, aggregate: Saga) -> None:
            """Add the timeout to the pending ones."""
            aggregate.timeouts[self.name] = self.due_at

    class TimeoutCancelled(Aggregate.Event):
        """A pending timeout was cancelled: it will never fire."""

        name: str

        def apply(self, aggregate: Saga) -> None:
            """Drop the timeout."""
            del aggregate.timeouts[self.name]

    class TimeoutFired(Aggregate.Event):
        """A pending timeout fired (its due time had come)."""

        name: str

        def apply(self, aggregate: Saga) -> None:
            """Move the timeout from pending to fired."""
            del aggregate.timeouts[self.name]
            aggregate.fired.add(self.name)

    @classmethod
    def id_for(cls, correlation_id: object) -> uuid.UUID:
        """Return the id of this class's saga for a correlation id (a UUIDv5)."""
        return uuid.uuid5(
            SAGA_NAMESPACE, f"{cls.saga_type or cls.__name__}/{correlation_id}"
        )

    @classmethod
    def _begin(
        cls, event_class: type[Saga.Started], correlation_id: object, **fields: Any
    ) -> Self:
        """Start the saga of ``correlation_id`` with the given ``Started`` event."""
        return cls._create(
            event_class,
            id=cls.id_for(correlation_id),
            correlation_id=str(correlation_id),
            **fields,
        )

    @property
    def compensating(self) -> bool:
        """Whether something failed, so the saga undoes what it did."""
        return self.failure is not None

    def note(self, fact: str) -> bool:
        """Record a fact; False if it was known."""
        if fact in self.facts:
            return False
        self.trigger_event(self.Noted, fact=fact)
        return True

    def decide(self, step: type[Saga.Step], **arguments: Any) -> bool:
        """Decide a step (a command to send); False if it was decided before."""
        if step.__name__ in self.decided:
            return False
        self.trigger_event(step, **arguments)
        return True

    def has_decided(self, step: type[Saga.Step]) -> bool:
        """Whether the step was decided (it is sent, or will be)."""
        return step.__name__ in self.decided

    def fail(self, reason: str) -> bool:
        """Start compensating, for ``reason``; False if the saga had failed already."""
        if self.failure is not None:
            return False
        self.trigger_event(self.Failed, reason=reason)
        return True

    def schedule(self, name: str, due_at: datetime) -> bool:
        """Set a timeout; False if one of that name is pending or has fired."""
        if name in self.timeouts or name in self.fired:
            return False
        self.trigger_event(self.TimeoutScheduled, name=name, due_at=due_at)
        return True

    def cancel_timeout(self, name: str) -> bool:
        """Cancel a pending timeout; False if none of that name is pending."""
        if name not in self.timeouts:
            return False
        self.trigger_event(self.TimeoutCancelled, name=name)
        return True

    def fire(self, name: str, now: datetime) -> bool:
        """Fire a pending timeout that is due, then react; False if it is not.

        Records :class:`TimeoutFired`, calls :meth:`on_timeout`, then
        :meth:`advance`.
        """
        due_at = self.timeouts.get(name)
        if due_at is None or due_at > now:
            return False
        self.trigger_event(self.TimeoutFired, name=name)
        self.on_timeout(name)
        self.advance(now)
        return True

    def on_timeout(self, name: str) -> None:
        """React to a timeout that fired (a subclass's; nothing by default)."""

    def advance(self, now: datetime) -> None:
        """Decide the next steps from the state, as of ``now`` (a subclass's).

        ``now`` is when the saga learned what it reacts to (the upstream
        event's time, or the time a timeout fired): timeouts scheduled here
        count from it. Nothing by default.
        """


class _PageRepository(Repository[uuid.UUID]):
    """A saga application's repository, which serves a page's undecided sagas.

    While a page of upstream events is decided (``SagaApplication``'s
    ``pull_and_process``), the sagas its earlier events changed are not saved
    yet: the page is committed once, at its end. A later event of the page
    that reads one of them gets it as changed (a copy, so that what the page
    will commit is never changed by a later decision), and decides as if each
    event had been committed alone: a saga begun earlier in the page is
    found, a fact noted earlier is known. Only the thread deciding the page
    is served so: any other reader (a timeout fired meanwhile) reads what is
    stored.
    """

    def __init__(self, base: Repository[uuid.UUID]) -> None:
        super().__init__(
            base.event_store,
            snapshot_store=base.snapshot_store,
            fastforward=base.fastforward,
            fastforward_skipping=base.fastforward_skipping,
            deepcopy_from_cache=base.deepcopy_from_cache,
        )
        self.cache = base.cache
        self._deciding = threading.local()

    def serve(
        self, pending: dict[uuid.UUID, MutableOrImmutableAggregate[uuid.UUID]] | None
    ) -> None:
        """Serve these aggregates to this thread's reads (None: stop)."""
        self._deciding.pending = pending

    def get(self, aggregate_id: uuid.UUID, **kwargs: Any) -> Any:
        """Return the aggregate: this thread's pending one, else as stored."""
        pending = getattr(self._deciding, "pending", None)
        if pending and kwargs.get("version") is None and aggregate_id in pending:
            return copy.deepcopy(pending[aggregate_id])
        return super().get(aggregate_id, **kwargs)


@dataclass
class _Page:
    """Upstream events decided, not yet committed: their sagas' new events."""

    jobs: list[tuple[DomainEventProtocol[uuid.UUID], Tracking]] = field(
        default_factory=list
    )
    decided: ProcessingEvent[uuid.UUID] = field(default_factory=ProcessingEvent)

    def add(
        self,
        domain_event: DomainEventProtocol[uuid.UUID],
        tracking: Tracking,
        decided: ProcessingEvent[uuid.UUID],
    ) -> None:
        """Add an event's decision; the page's tracking becomes the event's."""
        self.jobs.append((domain_event, tracking))
        self.decided.tracking = following(self.decided.tracking, tracking)
        self.decided.events.extend(decided.events)
        self.decided.aggregates.update(decided.aggregates)
        self.decided.saved_kwargs.update(decided.saved_kwargs)


class SagaApplication(ProcessApplication[uuid.UUID]):
    """A process application that keeps sagas, decides, and sends their steps.

    Subclasses implement :meth:`react` (upstream event to saga decision) and
    register a :meth:`dispatch` handler per step class, which calls the
    target application with the given idempotency key. A handler decides
    what a refused command means (a shipment refused because the customer
    cancelled meanwhile is no error: the cancellation is an upstream event
    the saga will react to); an exception it raises is retried, then parks
    the saga (see the module's "Failing steps").

    ``LEDGER_METRICS`` (``emf`` or ``none``; may be prefixed with the
    application's upper-cased name) sends :data:`SAGAS_PARKED` and
    :data:`SAGA_STEP_RETRIES` to CloudWatch in embedded metric format on
    stdout, dimension ``SagaApplication``; default: the class's
    :attr:`metrics`. Parks and retries are logged on ``ledger.sagas`` too.
    ``CREATE_TABLE=no`` leaves the dead-letter table to be made elsewhere.
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}
    pull_section_size = 100
    saga_classes: ClassVar[tuple[type[Saga], ...]] = ()
    """The saga classes this application keeps: their steps are read from its
    sequence to be sent, their timeout events by the :class:`TimeoutPoller`.
    (An aggregate class redefines every event class it has, its inherited
    ones included, as its own: ``Fulfilment.TimeoutScheduled`` is stored
    under its own topic, not ``Saga.TimeoutScheduled``'s.)"""
    upstream_topics: ClassVar[tuple[str, ...]] = ()
    """Topics of the upstream events :meth:`react` handles, read from the
    leaders' sequences (empty: every event). Its own sequence is read for
    steps only. (Stream followers are given every record of a leader.)"""
    step_retry_delays: ClassVar[tuple[float, ...]] = (0.1, 0.5, 2.0)
    """Seconds to wait before each new attempt at a step whose command
    failed; after the last, its saga is parked. The default makes 4 attempts
    in about 2.6 s, during which this runner sends nothing else."""
    metrics: Metrics = NO_METRICS
    """Where parks and step retries are counted (see ``LEDGER_METRICS``)."""

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        ordering = getattr(self.recorder, "ordering", "sequence")
        if ordering not in ("sequence", "indexed"):
            raise ProgrammingError(
                f"{self.name} has {DynamoDBFactory.DYNAMODB_ORDERING}={ordering}, "
                "but a saga application reads its own sequence (its steps are "
                "sent, and its timeouts fired, from it): set "
                f"{self.name.upper()}_{DynamoDBFactory.DYNAMODB_ORDERING} to "
                "'indexed' (an indexer appends the sequence), or leave it unset "
                "for 'sequence'. Its leaders may use any ordering."
            )
        self.processed = 0
        """Events this instance processed (upstream events and its own steps)."""
        self._parked_now: set[str] | None = None
        """While a page is processed, once a step asked: the sagas with letters."""
        self._in_page = False
        self._step_topics = self.step_topics()
        factory: Any = self.factory
        self.parked_steps = ParkedSteps(
            connection_of(self),
            factory.table_name(PARKED_TABLE),
            create=factory.env_create_table(),
        )
        """This application's dead letters (parked sagas and their waiting steps)."""
        choice = (self.env.get(LEDGER_METRICS) or "").strip().lower()
        if choice == "emf":
            self.metrics = EmbeddedMetrics(dimension=SAGA_DIMENSION)
        elif choice == "none":
            self.metrics = NO_METRICS
        elif choice:
            raise OSError(f"Invalid {LEDGER_METRICS} {choice!r}: use 'emf' or 'none'.")

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """Give the saga application a sequence of its own, whatever its leaders use.

        ``sequence`` unless its own (prefixed) ``DYNAMODB_ORDERING`` says
        ``indexed``: an unprefixed ``indexed`` is its leaders', and the saga
        application's events table may have no stream for an indexer.
        """
        environment = super().construct_env(name, env)
        environment.setdefault(
            f"{name.upper()}_{DynamoDBFactory.DYNAMODB_ORDERING}", "sequence"
        )
        return environment

    def construct_repository(self) -> Repository[uuid.UUID]:
        """Make the repository that serves a page's undecided sagas to its decider."""
        return _PageRepository(super().construct_repository())

    def process_event(
        self, domain_event: DomainEventProtocol[uuid.UUID], tracking: Tracking
    ) -> None:
        """Process one event exactly once (its effects and tracking in one commit)."""
        super().process_event(domain_event, tracking)
        self.processed += 1

    def pull_and_process(
        self, leader_name: str, start: int | None = None, stop: int | None = None
    ) -> None:
        """Process a leader's new events a page at a time, one commit per page.

        A page is a section of the leader's log (:attr:`pull_section_size`
        notifications read at once). Its events are decided one by one, in
        order, then committed together: every saga event decided for the
        page and one tracking position, the page's last, in one transaction
        (1 round trip and 2 WCU for the tracking per page, not per event).
        When the events would pass a transaction's 100 actions, the page is
        committed in as few parts as fit, each with its own last position, an
        event's decision never split. A later event of the page reads the
        sagas earlier ones changed as changed (:class:`_PageRepository`).

        If a part's commit is refused (another decider saved one of its
        sagas meanwhile, another runner committed the page, or it is over 4
        MB), nothing of it was written: its events are decided again, each
        committed alone as :meth:`process_event` does, and a conflict then
        raises ``IntegrityError`` as before. Exactly once either way: a
        decision is committed with the position of the event it answers, or
        not at all. Steps read from its own sequence are sent in order, then
        the page's position is committed once: a crash before that commit
        sends the page's steps again, under the same keys (so their targets
        store nothing twice), as a crash before each step's commit did.
        """
        if start is None:
            start = self.recorder.max_tracking_id(leader_name)
        for notifications in self.pull_notifications(
            leader_name, start=start, stop=stop, inclusive_of_start=False
        ):
            jobs = self.convert_notifications(
                leader_name, self.filter_received_notifications(notifications)
            )
            with self.processing_lock:
                self._process_page(jobs)

    def _process_page(
        self, jobs: Sequence[tuple[DomainEventProtocol[uuid.UUID], Tracking]]
    ) -> None:
        repository = self.repository
        assert isinstance(repository, _PageRepository)  # noqa: S101 - ours
        # Events one commit holds beside its tracking: an indexed save is the
        # events and the tracking; a sequenced one adds its batch and head items.
        capacity = MAX_TRANSACTION_ACTIONS - (
            1 if getattr(self.recorder, "ordering", "") == "indexed" else 3
        )
        page = _Page()
        self._in_page, self._parked_now = True, None
        try:
            for domain_event, tracking in jobs:
                decided = self._decide(domain_event, tracking, page, repository)
                if page.jobs and (
                    len(page.decided.events) + len(decided.events) > capacity
                ):
                    self._commit_page(page)
                    page = _Page()
                    # Decide again, from what is stored: the first decision
                    # read sagas as the page left them, which its commit may
                    # not have kept (refused, then decided one by one).
                    decided = self._decide(domain_event, tracking, page, repository)
                page.add(domain_event, tracking, decided)
            self._commit_page(page)
        finally:
            self._in_page, self._parked_now = False, None

    def _send_steps(
        self, steps: Sequence[tuple[DomainEventProtocol[uuid.UUID], Tracking]]
    ) -> None:
        """Send a page of steps in order (:class:`StepDispatcher`'s batch)."""
        self._in_page, self._parked_now = True, None
        try:
            for step, tracking in steps:
                self.policy(step, ProcessingEvent[uuid.UUID](tracking))
                self.processed += 1
        finally:
            self._in_page, self._parked_now = False, None

    def _decide(
        self,
        domain_event: DomainEventProtocol[uuid.UUID],
        tracking: Tracking,
        page: _Page,
        repository: _PageRepository,
    ) -> ProcessingEvent[uuid.UUID]:
        """Let the policy decide an event, reading the page's sagas as it left them."""
        decided = ProcessingEvent[uuid.UUID](tracking)
        repository.serve(page.decided.aggregates)
        try:
            self.policy(domain_event, decided)
        finally:
            repository.serve(None)
        return decided

    def _commit_page(self, page: _Page) -> None:
        """Commit a page's decisions and last position; one per commit if refused."""
        if not page.jobs:
            return
        try:
            self._commit(page.decided, len(page.jobs))
        except (IntegrityError, TransactionTooLargeError):
            if len(page.jobs) == 1 or not page.decided.events:
                raise  # nothing to split: as one event's commit would
            logger.info(
                "%s: a page of %d events was refused; deciding them one per commit",
                self.name,
                len(page.jobs),
                extra={"saga_application": self.name, "events": len(page.jobs)},
            )
            for domain_event, tracking in page.jobs:
                decided = ProcessingEvent[uuid.UUID](tracking)
                self.policy(domain_event, decided)
                self._commit(decided, 1)

    def _commit(self, decided: ProcessingEvent[uuid.UUID], events: int) -> None:
        """Record decisions with their tracking, as ``process_event`` does."""
        recordings = self._record(decided)
        self._take_snapshots(decided)
        self.notify(decided.events)
        self._notify(recordings)
        self.processed += events

    def pull_notifications(
        self,
        leader_name: str,
        start: int | None,
        stop: int | None = None,
        *,
        inclusive_of_start: bool = True,
    ) -> Iterator[Sequence[Notification]]:
        """Read a leader's sequence for the events this application needs.

        From its own sequence, only steps (what it has to send); from a
        leader's, :attr:`upstream_topics`.
        """
        topics = self._step_topics if leader_name == self.name else self.upstream_topics
        return self.readers[leader_name].select(
            start=start,
            stop=stop,
            topics=topics,
            inclusive_of_start=inclusive_of_start,
        )

    def follow(self, name: str, log: NotificationLog) -> None:
        """Follow a leader's log, read in sections of ``pull_section_size``."""
        if isinstance(log, LocalNotificationLog) and (
            log.section_size < self.pull_section_size
        ):
            log = LocalNotificationLog(
                log.recorder, section_size=self.pull_section_size
            )
        super().follow(name, log)

    @classmethod
    def step_topics(cls) -> list[str]:
        """Return the topics of the steps of this application's sagas."""
        return [
            get_topic(step)
            for saga_class in cls.saga_classes
            for step in _nested_events(saga_class, Saga.Step)
            if step.__name__ != "Step"
        ]

    @classmethod
    def timeout_topics(cls) -> list[str]:
        """Return the topics of the timeout events of this application's sagas."""
        return [
            get_topic(event)
            for saga_class in cls.saga_classes
            for base in (
                Saga.TimeoutScheduled,
                Saga.TimeoutCancelled,
                Saga.TimeoutFired,
            )
            for event in _nested_events(saga_class, base)
        ]

    def policy(
        self,
        domain_event: DomainEventProtocol[uuid.UUID],
        processing_event: ProcessingEvent[uuid.UUID],
    ) -> None:
        """Send a step of this application's sagas, or let a saga react to an event.

        Either way in the event's context (:func:`ledger.metadata.caused_by`):
        what is recorded continues its correlation, caused by it.
        """
        with caused_by(domain_event):
            if isinstance(domain_event, Saga.Step):
                self._send(domain_event, processing_event.tracking)
                return
            saga = self.react(domain_event)
        if saga is not None:
            processing_event.collect_events(saga)

    def react(self, domain_event: Any) -> Saga | None:
        """Return the saga an upstream event concerns, having let it decide.

        None when the event concerns no saga (or no saga yet). Must be pure
        apart from reading: what it returns is saved with the tracking.
        """
        return None

    def dispatch(self, step: Saga.Step, idempotency_key: str) -> None:
        """Send a decided step to its target application, under ``idempotency_key``.

        Subclasses override it (a ``singledispatchmethod`` with a handler per
        step class, say); this one refuses every step.
        """
        raise ProgrammingError(
            f"{type(self).__name__} has no dispatch handler for step "
            f"{type(step).__qualname__}: register one with @dispatch.register."
        )

    def step_applied(self, step: Saga.Step, idempotency_key: str) -> bool:
        """Return whether a step's target already applied it under its key.

        Asked when sending a step failed, before it is retried or its saga
        parked: a step sent before (a crash lost its tracking) whose target
        refuses the twin is done, not failed. Override it to ask the target
        (``target.first_outcome(idempotency_key) is not None`` for an
        :class:`~ledger.commands.IdempotentApplication`); this one knows no
        target and says False. (Without it, a twin's failure is still
        recognised once the step's tracking is committed by whoever sent it
        first.)
        """
        return False

    # Failing steps ---------------------------------------------------------------

    def parked_sagas(self) -> list[ParkedSaga]:
        """Return the parked sagas, by saga id, each with the steps waiting behind."""
        sagas: dict[str, ParkedSaga] = {}
        for letter in self.parked_steps.every():
            found = sagas.get(letter.aggregate_id)
            if found is None:
                sagas[letter.aggregate_id] = ParkedSaga(
                    saga_id=letter.aggregate_id,
                    version=letter.version,
                    step=letter.detail_type,
                    error=letter.error,
                    attempts=letter.attempts,
                    parked_at=letter.dead_lettered_at,
                )
            else:
                found.waiting.append(letter.version)
        return list(sagas.values())

    def redrive(self, saga_id: object | None = None) -> dict[str, str]:
        """Send parked sagas' steps again, in order (every saga, or one).

        Call after fixing the cause. Each saga's parked step, then each step
        waiting behind it, is read from the events table and sent under its
        own key (so a step its target applied before stores nothing again),
        with the same retries; each letter is deleted once its step is sent.
        Returns each saga's outcome: ``resumed`` (every letter done; its
        later steps are sent as usual), ``parked`` (a step failed again: it
        is the saga's parked step now), ``not parked``.
        """
        targets = (
            [str(saga_id)]
            if saga_id is not None
            else [parked.saga_id for parked in self.parked_sagas()]
        )
        outcomes: dict[str, str] = {}
        try:
            for target in targets:
                outcome = outcomes[target] = self._redrive_one(target)
                logger.log(
                    logging.WARNING if outcome == "parked" else logging.INFO,
                    "%s redrove saga %s: %s",
                    self.name,
                    target,
                    outcome,
                    extra={"saga_application": self.name, "saga_id": target},
                )
        finally:
            self.metrics.flush()
        return outcomes

    def drop(self, saga_id: object) -> int:
        """Give up on a parked saga's steps; return how many letters were deleted.

        The parked step and those waiting behind it are never sent; the
        saga's later steps are sent as usual. Its state is left as it is.
        """
        dropped = 0
        while letters := self.parked_steps.of_saga(saga_id):
            for letter in letters:
                self.parked_steps.delete(letter)
                dropped += 1
        if dropped:
            logger.warning(
                "%s dropped saga %s's %d parked steps",
                self.name,
                saga_id,
                dropped,
                extra={"saga_application": self.name, "saga_id": str(saga_id)},
            )
        return dropped

    def _send(self, step: Saga.Step, tracking: Tracking | None) -> None:
        """Send a step, unless its saga is parked (then it waits); park on failure."""
        while True:
            letters = self._letters_of(step.originator_id)
            version = step.originator_version
            if any(letter.version == version for letter in letters):
                return  # delivered again: it is parked, or waits, already
            earlier = [letter for letter in letters if letter.version < version]
            if not earlier:
                break
            if self.parked_steps.wait(step, behind=earlier[-1]):
                self._note_parked(step)
                logger.info(
                    "%s: step %s of saga %s waits behind version %d "
                    "(the saga parked at version %d)",
                    self.name,
                    type(step).__name__,
                    step.originator_id,
                    earlier[-1].version,
                    earlier[0].version,
                    extra=self._about(step),
                )
                return
            # What it would wait behind was redriven or dropped meanwhile.
            self._parked_now = None
        failure = self._send_with_retries(step, tracking)
        if failure is not None:
            error, attempts = failure
            self._report_parked(
                self.parked_steps.park(step, error_summary(error), attempts)
            )
            self._note_parked(step)

    def _letters_of(self, saga_id: uuid.UUID) -> list[DeadLetter]:
        """Return a saga's letters; in a page, no Query for a saga with none.

        A page reads which sagas have letters once, at its first step, and
        adds those it parks. That set cannot miss a saga parked meanwhile:
        a saga is parked only when one of its steps fails, and its steps are
        sent in order from one sequence, by this runner (which notes it) or a
        twin sending the same step (which a Query per step could miss just
        as well). Redrives and drops only remove letters: a saga the set
        names is read again, and waiting is conditional on the letter.
        """
        if self._in_page:
            if self._parked_now is None:
                self._parked_now = self.parked_steps.saga_ids()
            if str(saga_id) not in self._parked_now:
                return []
        return self.parked_steps.of_saga(saga_id)

    def _note_parked(self, step: Saga.Step) -> None:
        if self._parked_now is not None:
            self._parked_now.add(str(step.originator_id))

    def _send_with_retries(
        self, step: Saga.Step, tracking: Tracking | None
    ) -> tuple[Exception, int] | None:
        """Dispatch a step, retrying; return the last error and attempts if it failed.

        Raises what is not the saga's fault (see the module's "Failing steps").
        """
        key = step_key(step)
        for attempt, delay in enumerate((*self.step_retry_delays, None), start=1):
            try:
                self.dispatch(step, key)
            except IntegrityError:
                raise  # a conflict: the feed reads again, and a twin finds its tracking
            except Exception as error:
                if self._applied_by_a_twin(step, key, tracking):
                    return None
                if isinstance(error, PersistenceError) and not isinstance(
                    error, DataError
                ):
                    raise  # the store failing: every saga would; nothing to park
                if delay is None:
                    return error, attempt
                self._report_retry(step, attempt, error, delay)
                time.sleep(delay)
            else:
                return None
        return None  # pragma: no cover - the loop returns at its last attempt

    def _applied_by_a_twin(
        self, step: Saga.Step, key: str, tracking: Tracking | None
    ) -> bool:
        """Whether another delivery of this step already applied it."""
        if tracking is not None and self.recorder.has_tracking_id(
            tracking.application_name, tracking.notification_id
        ):
            applied = True  # another runner sent it and committed its tracking
        else:
            applied = self.step_applied(step, key)
        if applied:
            logger.info(
                "%s: step %s of saga %s failed, but a twin applied it: done",
                self.name,
                type(step).__name__,
                step.originator_id,
                extra=self._about(step),
            )
        return applied

    def _redrive_one(self, saga_id: str) -> str:
        outcome = "not parked"
        while letters := self.parked_steps.of_saga(saga_id):
            for letter in letters:
                step = self._stored_step(letter)
                with caused_by(step):
                    failure = self._send_with_retries(step, None)
                if failure is not None:
                    error, attempts = failure
                    summary = error_summary(error, " on redrive")
                    attempts += letter.attempts
                    self._report_parked(self.parked_steps.park(step, summary, attempts))
                    return "parked"
                self.parked_steps.delete(letter)
                outcome = "resumed"
        return outcome

    def _stored_step(self, letter: DeadLetter) -> Saga.Step:
        """Read a letter's step from the events table."""
        saga_id = uuid.UUID(letter.aggregate_id)
        found = list(
            self.repository.event_store.get(
                saga_id, gt=letter.version - 1, lte=letter.version
            )
        )
        if not found or not isinstance(found[0], Saga.Step):
            raise ProgrammingError(
                f"Saga {saga_id} has no step at version {letter.version}, but a "
                f"dead letter names one ({letter.detail_type}): was the saga "
                f"application's events table replaced? Drop the saga's letters "
                "(ledger sagas dlq drop) once you know what it had to send."
            )
        return found[0]

    def _about(self, step: Saga.Step) -> dict[str, Any]:
        return {
            "saga_application": self.name,
            "saga_id": str(step.originator_id),
            "version": step.originator_version,
            "step": type(step).__name__,
        }

    def _report_retry(
        self, step: Saga.Step, attempt: int, error: Exception, delay: float
    ) -> None:
        summary = error_summary(error)
        logger.warning(
            "%s: step %s of saga %s failed (attempt %d): %s; retrying in %.2fs",
            self.name,
            type(step).__name__,
            step.originator_id,
            attempt,
            summary,
            delay,
            extra={**self._about(step), "attempt": attempt, "error": summary},
        )
        self.metrics.record(SAGA_STEP_RETRIES, 1, COUNT, self.name)
        self.metrics.flush()

    def _report_parked(self, letter: DeadLetter) -> None:
        logger.error(
            "%s parked saga %s at step %s (version %d) after %d attempts: %s",
            self.name,
            letter.aggregate_id,
            letter.detail_type,
            letter.version,
            letter.attempts,
            letter.error,
            extra={
                "saga_application": self.name,
                "saga_id": letter.aggregate_id,
                "version": letter.version,
                "step": letter.detail_type,
                "attempts": letter.attempts,
                "error": letter.error,
            },
        )
        self.metrics.record(SAGAS_PARKED, 1, COUNT, self.name)
        self.metrics.flush()

    def saga(self, saga_class: type[TSaga], correlation_id: object) -> TSaga | None:
        """Return the saga of a correlation id as it is now, or None if none began."""
        try:
            found: TSaga = self.repository.get(saga_class.id_for(correlation_id))
        except AggregateNotFoundError:
            return None
        return found

    def fire_timeout(
        self,
        saga_id: uuid.UUID,
        name: str,
        now: datetime | None = None,
        *,
        scheduled_by: Saga.TimeoutScheduled | None = None,
    ) -> bool:
        """Fire a saga's timeout if it is pending and due; False if it is not.

        The firing and the saga's reaction are one conditional save; a save
        that loses the race with another decision reloads the saga and tries
        again, so a timeout cancelled meanwhile does not fire. Steps decided
        are sent by this application's dispatcher, not here. Given the event
        that scheduled the timeout, what is recorded is caused by it.
        """
        now = now or datetime.now(UTC)
        for attempt in range(MAX_DECISION_ATTEMPTS):
            try:
                saga: Saga = self.repository.get(saga_id)
            except AggregateNotFoundError:
                return False
            with caused_by(scheduled_by) if scheduled_by else contextlib.nullcontext():
                if not saga.fire(name, now):
                    return False
            try:
                self.save(saga)
            except IntegrityError:
                _backoff(attempt)
                continue
            return True
        raise IntegrityError(
            f"Timeout {name!r} of saga {saga_id} lost the race with other "
            f"decisions {MAX_DECISION_ATTEMPTS} times; the poller will try again."
        )


# The feeds: each a consumer of an application sequence, run by a Runner -----------


class ProcessConsumer:
    """Lets a saga application decide on a leader's events: one commit per page.

    Atomic: a batch (a page of the leader's sequence, :attr:`upstream_topics`
    only) is decided in order, then committed with the tracking of its last
    event, in as few parts as fit a transaction, one event per commit if a
    part is refused: the page logic :meth:`SagaApplication.pull_and_process`
    runs too. A conflict it
    cannot commit past (another decider saved a saga, another runner
    committed the page) is :class:`~ledger.feeds.Raced`: what was committed
    stays, and the runner reads again from the tracking.
    """

    atomic = True

    def __init__(
        self,
        saga_application: SagaApplication,
        leader_name: str,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        """Decide on ``leader_name``'s events, tracked under its name."""
        self.application = saga_application
        self.leader_name = leader_name
        self.name = f"{saga_application.name}/{leader_name}"
        self.topics: Sequence[str] = saga_application.upstream_topics
        self.checkpoint: Checkpoint = TrackingCheckpoint(
            saga_application.recorder, leader_name
        )
        self.metrics = metrics if metrics is not None else saga_application.metrics
        self.races = 0
        """Batches refused because another writer got in first."""

    def process(self, batch: Batch) -> Progress:
        """Decide the batch's events, then commit them and the last one's position."""
        app = self.application
        notifications = [item.notification for item in batch.items]
        jobs = app.convert_notifications(
            self.leader_name, app.filter_received_notifications(notifications)
        )
        # Each commit lands only over the position its first event follows:
        # never over part of the page another runner committed.
        chained: list[tuple[Any, Tracking]] = []
        after = batch.after
        for domain_event, tracking in jobs:
            position = tracking.notification_id
            chained.append(
                (domain_event, TrackingAfter(self.leader_name, position, after))
            )
            after = position
        try:
            with app.processing_lock:
                if chained:
                    app._process_page(chained)
                elif batch.checkpoint > batch.after:
                    # Nothing of its topics up to the head: move past them, so
                    # the position (and the lag it shows) is where it stands.
                    app.recorder.insert_tracking(
                        TrackingAfter(self.leader_name, batch.checkpoint, batch.after)
                    )
        except IntegrityError:
            self.races += 1
            raise Raced from None
        return Progress(len(jobs), batch.checkpoint)


class StepDispatcher:
    """Sends the steps a saga application decided, from its own sequence.

    Not atomic: each step of a batch is sent (under :func:`step_key`, with
    the retries and parking of the module's "Failing steps"), then the runner
    moves the tracking under the application's name past the batch. A crash
    in between sends the batch's steps again under the same keys: their
    targets store nothing twice. A step whose command conflicts
    (``IntegrityError``) stops the batch: :class:`~ledger.feeds.Raced`.
    """

    atomic = False

    def __init__(
        self, saga_application: SagaApplication, *, metrics: Metrics | None = None
    ) -> None:
        """Send ``saga_application``'s steps, tracked under its name."""
        self.application = saga_application
        self.name = f"{saga_application.name}/steps"
        self.topics: Sequence[str] = saga_application.step_topics()
        self.checkpoint: Checkpoint = TrackingCheckpoint(
            saga_application.recorder, saga_application.name
        )
        self.metrics = metrics if metrics is not None else saga_application.metrics
        self.races = 0
        """Batches stopped by a conflict."""

    def process(self, batch: Batch) -> Progress:
        """Send the batch's steps, in order."""
        app = self.application
        steps = app.convert_notifications(
            app.name, [item.notification for item in batch.items]
        )
        try:
            with app.processing_lock:
                app._send_steps(steps)
        except IntegrityError:
            self.races += 1
            raise Raced from None
        return Progress(len(steps), batch.checkpoint)


_Pending = dict[tuple[uuid.UUID, str], tuple["Saga.TimeoutScheduled", int]]


class LowWaterMark:
    """The timeout firer's checkpoint: the position before its oldest pending timeout.

    Kept in the saga application's tracking table. :meth:`load` empties the
    pending timeouts, to be read again from the mark on; :meth:`save` keeps
    ``min(position, oldest pending - 1)``. A save refused because another
    firer moved the mark at least as far is no race: both read the same
    events, and this one's pending timeouts stay as they are.
    """

    def __init__(self, recorder: Any, name: str, pending: _Pending) -> None:
        """Keep the mark named ``name``, below the timeouts in ``pending``."""
        self.recorder = recorder
        self.name = name
        self.pending = pending
        self.mark: int | None = None
        """The mark as last loaded or saved."""

    def load(self) -> int:
        """Return the mark, and start the pending timeouts from it (none yet)."""
        self.pending.clear()
        self.mark = int(self.recorder.max_tracking_id(self.name) or 0)
        return self.mark

    def save(self, position: int, expected: int) -> bool:
        """Move the mark up to ``position``, not past an oldest pending timeout."""
        del expected  # the condition is "only forward"
        mark = min(
            (scheduled_at - 1 for _, scheduled_at in self.pending.values()),
            default=position,
        )
        mark = min(mark, position)
        if self.mark is not None and mark <= self.mark:
            return True
        # IntegrityError: another firer moved it at least as far.
        with contextlib.suppress(IntegrityError):
            self.recorder.insert_tracking(Tracking(self.name, mark))
        self.mark = mark
        return True


class TimeoutFirer:
    """Fires a saga application's due timeouts, read from its own sequence.

    Not atomic: a batch (the timeout events only) adds the timeouts scheduled
    to :attr:`pending` and drops those cancelled or fired; :meth:`tick` fires
    the due ones with :meth:`SagaApplication.fire_timeout` (a timeout fires
    once, however many firers, never after it was cancelled) and moves the
    checkpoint, a :class:`LowWaterMark`, so a restarted firer reads only
    from before its oldest pending timeout.
    """

    atomic = False

    def __init__(
        self, saga_application: SagaApplication, *, metrics: Metrics | None = None
    ) -> None:
        """Fire ``saga_application``'s timeouts."""
        self.application = saga_application
        self.name = f"{saga_application.name}/timeouts"
        self.topics: Sequence[str] = saga_application.timeout_topics()
        if not self.topics:
            raise ProgrammingError(
                f"{type(saga_application).__name__}.saga_classes names no saga "
                "class: the poller would find no timeouts."
            )
        self.pending: _Pending = {}
        """Timeouts scheduled and not yet fired or cancelled: (saga id, name)
        to the event that scheduled it and its position."""
        self.mark = LowWaterMark(saga_application.recorder, self.name, self.pending)
        """The checkpoint, read back by :meth:`tick` after firing."""
        self.checkpoint: Checkpoint = self.mark
        self.metrics = metrics if metrics is not None else saga_application.metrics
        self.fired = 0
        """Timeouts this firer fired."""
        self._read_up_to = 0

    def process(self, batch: Batch) -> Progress:
        """Note the timeouts the batch schedules, cancels or fires."""
        mapper = self.application.mapper
        for item in batch.items:
            event: Any = mapper.to_domain_event(item.notification)
            key = (event.originator_id, event.name)
            if isinstance(event, Saga.TimeoutScheduled):
                self.pending[key] = (event, item.position)
            else:
                self.pending.pop(key, None)
        self._read_up_to = batch.checkpoint
        return Progress(len(batch.items), batch.checkpoint)

    def tick(self, now: datetime) -> int:
        """Fire the timeouts due at ``now``; return how many fired."""
        fired = 0
        due = sorted(
            (scheduled.due_at, key, scheduled)
            for key, (scheduled, _) in self.pending.items()
            if scheduled.due_at <= now
        )
        for _, (saga_id, name), scheduled in due:
            try:
                if self.application.fire_timeout(
                    saga_id, name, now, scheduled_by=scheduled
                ):
                    fired += 1
            except IntegrityError:
                # Its saga kept changing meanwhile: still pending, the next
                # poll tries again.
                logger.warning(
                    "timeout not fired: its saga kept changing; trying next poll",
                    extra={"saga_id": str(saga_id), "timeout": name},
                )
                continue
            del self.pending[saga_id, name]
        if self.mark.mark is not None:
            # What fired no longer holds the mark back.
            self.mark.save(self._read_up_to, self._read_up_to)
        self.fired += fired
        return fired


def metrics_in_lambda(saga_application: SagaApplication) -> Metrics:
    """Return where a saga application's feeds report in Lambda.

    ``LEDGER_METRICS`` as the application reads it; unset, its class's
    :attr:`SagaApplication.metrics`, or else CloudWatch's embedded metric
    format on stdout (dimension ``SagaApplication``), as a projector's do.
    """
    if saga_application.env.get(LEDGER_METRICS) is None and isinstance(
        saga_application.metrics, NoMetrics
    ):
        return EmbeddedMetrics(dimension=SAGA_DIMENSION)
    return saga_application.metrics


class SagaRunner:
    """Feeds a saga application from application sequences: a Runner per feed.

    A :class:`ProcessConsumer` per leader (deciding on its events) and a
    :class:`StepDispatcher` (sending the saga application's own steps), each
    run by a :class:`~ledger.feeds.Runner` over an
    :class:`~ledger.feeds.IndexSource` read a page of
    :attr:`SagaApplication.pull_section_size` at a time. With no leaders it
    only sends steps: the dispatcher beside stream followers. Several
    runners may run at once: each event is processed once (tracking is
    conditional), and a runner that loses a race reads again.

    ``indexers`` (:class:`~ledger.indexer.Indexer`) are run here, a round
    each before each round of pulls, so an indexed application's sequence
    holds what was saved before. By default: the saga application's own
    indexer when it is indexed, so a step is sent in the poll that decided
    it (none when it keeps a ``sequence``). Pass ``()`` when ``ledger index
    run`` indexes it elsewhere (its steps are then sent at the first poll
    after they are indexed), or every application's indexer to run the
    whole system in one process. Several indexers of one table are safe:
    one commits each round.

    Each runner records its consumer's ``Lag`` through ``metrics`` (default:
    the saga application's :attr:`SagaApplication.metrics`), its consumer's
    name (``{saga}/{leader}``, ``{saga}/steps``) as the value of the
    ``SagaApplication`` dimension.
    """

    def __init__(
        self,
        saga_application: SagaApplication,
        leaders: Iterable[Application[Any]],
        *,
        indexers: Iterable[Indexer] | None = None,
        metrics: Metrics | None = None,
        page_size: int | None = None,
    ) -> None:
        self.application = saga_application
        self.leaders = [*leaders, saga_application]
        for leader in self.leaders:
            # For eventsourcing's pull_and_process, which reads these logs.
            saga_application.follow(leader.name, leader.notification_log)
        if indexers is None:
            recorder = saga_application.recorder
            indexers = (
                [Indexer(recorder)]
                if isinstance(recorder, DynamoDBIndexedApplicationRecorder)
                else []
            )
        self.indexers = list(indexers)
        """The indexers this runner runs before each round of pulls."""
        page = page_size or saga_application.pull_section_size
        self.consumers: list[ProcessConsumer | StepDispatcher] = [
            *(
                ProcessConsumer(saga_application, leader.name, metrics=metrics)
                for leader in self.leaders[:-1]
            ),
            StepDispatcher(saga_application, metrics=metrics),
        ]
        self.runners = [
            Runner(IndexSource(leader, page_size=page), consumer)
            for leader, consumer in zip(self.leaders, self.consumers, strict=True)
        ]
        """One per leader, then the step dispatcher's."""

    @property
    def blocked(self) -> dict[str, CorruptNotificationBatchError]:
        """The feeds stopped at an unreadable batch, by consumer name."""
        return {
            runner.consumer.name: runner.blocked
            for runner in self.runners
            if runner.blocked is not None
        }

    def poll(self) -> int:
        """Process every event available now, from every leader; return how many.

        Goes round the indexers and the leaders until a round indexes and
        processes nothing, so steps decided in this poll are sent in it too
        (on an indexed saga application, if its stream shows them by the
        next round, as DynamoDB Local's does at once; else at the next poll).
        A round in which a feed lost a race to another decider is gone round
        again; after :data:`MAX_DECISION_ATTEMPTS` such rounds in a row,
        ``IntegrityError``. A feed stopped at an unreadable notification batch
        raises its :class:`~ledger.dynamodb.batches.CorruptNotificationBatchError`
        once the other feeds did their work.
        """
        app = self.application
        before, races = app.processed, 0
        while True:
            start, raced = app.processed, self._races()
            indexed = sum(indexer.poll() for indexer in self.indexers)
            for runner in self.runners:
                runner.poll()
            if self._races() > raced:
                races += 1
                if races == MAX_DECISION_ATTEMPTS:
                    raise IntegrityError(
                        f"{app.name} lost {MAX_DECISION_ATTEMPTS} races in a row "
                        "deciding on its leaders' events; poll again later."
                    )
                _backoff(races)
                continue
            races = 0
            if app.processed == start and not indexed:
                self._raise_if_blocked()
                return app.processed - before

    def drain(self, deadline: float | None, *, max_races: int = 3) -> int:
        """Drain every feed in turn until a round processes nothing; return how many.

        For a Lambda invocation: no feed starts a page after ``deadline``
        (``time.monotonic()``), and each rides out DynamoDB being unavailable
        until then. After ``max_races`` rounds in which a feed lost a race to
        another decider (another invocation, the timeout firer) it stops: the
        other goes on, and the next invocation reads again. A feed stopped at
        an unreadable batch raises as :meth:`poll` does.
        """
        app = self.application
        before, races = app.processed, 0
        while deadline is None or time.monotonic() < deadline:
            start, raced = app.processed, self._races()
            indexed = sum(indexer.poll() for indexer in self.indexers)
            for runner in self.runners:
                runner.drain(deadline)
            if self._races() > raced:
                races += 1
                if races == max_races:
                    logger.info(
                        "other deciders kept committing first; stopping",
                        extra={"saga_application": app.name, "conflicts": races},
                    )
                    break
                continue
            if app.processed == start and not indexed:
                break
        self._raise_if_blocked()
        return app.processed - before

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll until ``stop`` is set, waiting ``interval`` when idle.

        Rides out DynamoDB being unavailable, as every ledger feed does.
        """
        run_polls(self.poll, stop, interval=interval)

    def _races(self) -> int:
        return sum(consumer.races for consumer in self.consumers)

    def _raise_if_blocked(self) -> None:
        """Raise what stops a feed at an unreadable batch, once the others went on.

        A saga feed cannot skip events, so its failure must be seen (in
        Lambda: the function's errors alarm), not only logged.
        """
        for error in self.blocked.values():
            raise error


class TimeoutPoller:
    """Fires a saga application's due timeouts: a Runner of a :class:`TimeoutFirer`.

    Each :meth:`poll` reads the timeout events appended since the last one
    (one page read per ``page_size`` of them), then fires those due. Run
    one poller per saga application on a schedule (a loop here, an
    EventBridge schedule invoking a Lambda in AWS): more are safe, since a
    timeout fires once, but each reads the same events. Timeouts fire at
    the first poll after they are due: their lateness is at most the poll
    interval plus the time to read. On an indexed saga application it reads
    what the index holds: a timeout is seen once its scheduling is indexed
    (by a :class:`SagaRunner`, or ``ledger index run``). Its runner records
    ``Lag`` (dimension value ``{saga}/timeouts``) through ``metrics``
    (default: the application's).
    """

    def __init__(
        self,
        saga_application: SagaApplication,
        *,
        page_size: int = 500,
        metrics: Metrics | None = None,
    ) -> None:
        self.application = saga_application
        self.page_size = page_size
        self.firer = TimeoutFirer(saga_application, metrics=metrics)
        self.runner = Runner(
            IndexSource(saga_application, page_size=page_size), self.firer
        )

    @property
    def topics(self) -> Sequence[str]:
        """The timeout events' topics, the only ones read."""
        return self.firer.topics

    @property
    def tracking_name(self) -> str:
        """The key of the low-water mark in the saga application's tracking table."""
        return self.firer.mark.name

    @property
    def pending(self) -> _Pending:
        """The timeouts read and still pending (see :attr:`TimeoutFirer.pending`)."""
        return self.firer.pending

    def poll(self, now: datetime | None = None) -> int:
        """Read new timeout events, fire those due at ``now``; return how many fired."""
        before = self.firer.fired
        self.runner.poll(now=now)
        return self.firer.fired - before

    def drain(self, deadline: float | None) -> int:
        """Poll as a Lambda invocation does, riding out outages until ``deadline``.

        Returns how many timeouts fired.
        """
        before = self.firer.fired
        self.runner.drain(deadline)
        return self.firer.fired - before

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set (rides out outages)."""
        self.runner.interval = interval
        self.runner.run(stop)


def _nested_events(saga_class: type[Saga], base: type[Any]) -> list[type[Any]]:
    """Return the event classes of a saga class that subclass ``base``."""
    return [
        value
        for name in dir(saga_class)
        if isinstance(value := getattr(saga_class, name), type)
        and issubclass(value, base)
    ]


def _backoff(attempt: int) -> None:
    """Sleep a little, with jitter, before deciding again after losing a race."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # noqa: S311 - jitter
