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
      decision is committed once, or not at all.
    * *dispatching*: each decided step is an event of the saga
      (:class:`Saga.Step`), so the saga application's own sequence is its
      outbox. The application follows itself and, for each step, calls the
      target application with an idempotency key derived from the step (the
      saga's id and the step's version: :func:`step_key`), then commits the
      tracking. A crash after the call and before that commit redelivers the
      step, and the key makes the second call store nothing.

    Why decide first and call afterwards, rather than call inside the
    policy: two deciders may run at once for one saga (the stream feed
    processes leaders concurrently; the timeout poller fires while an event
    is processed). Had each called out before committing, the loser of the
    saga's version race would already have acted, say releasing the stock of
    an order the winner ships. Deciding first lets the saga's version
    condition pick one decision; only committed steps are ever sent.

:class:`TimeoutPoller`
    Fires due timeouts. A timeout is part of its saga
    (:meth:`Saga.schedule` records :class:`Saga.TimeoutScheduled` with the
    due time), saved with the decision that schedules it. The poller reads
    the saga application's sequence for the three timeout events only, keeps
    the pending ones in memory, and fires the due ones with
    :meth:`SagaApplication.fire_timeout`, which records
    :class:`Saga.TimeoutFired` and the saga's reaction in one conditional
    write: a timeout fires once, however many pollers, and never after it was
    cancelled. No index is needed: its durable position is a low-water mark
    (the position before the oldest timeout still pending), kept in the saga
    application's tracking table, so a restarted poller re-reads only the
    events since then.

Feeds. The saga application keeps a gap-free sequence of its own
(``DYNAMODB_ORDERING=sequence``, set for it whatever the leaders use): the
dispatcher and the timeout poller read it. Its leaders may use either
ordering:

* ``sequence``: :class:`SagaRunner` pulls each leader's notification log and
  the saga's own, a poll at a time (``eventsourcing``'s ``System`` and
  ``SingleThreadedRunner`` work too, with the saga following itself);
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
import logging
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, TypeVar

from eventsourcing.application import (
    AggregateNotFoundError,
    LocalNotificationLog,
    NotificationLog,
    ProcessingEvent,
)
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    ProgrammingError,
    Tracking,
)
from eventsourcing.system import ProcessApplication
from eventsourcing.utils import Environment, EnvType, get_topic
from pydantic import AwareDatetime

from ledger.domain import Aggregate
from ledger.dynamodb.factory import DynamoDBFactory
from ledger.metadata import caused_by
from ledger.persistence import PydanticMapper
from ledger.projections.streams import run_polls

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from eventsourcing.application import Application

__all__ = [
    "SAGA_NAMESPACE",
    "Saga",
    "SagaApplication",
    "SagaRunner",
    "TimeoutPoller",
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


class SagaApplication(ProcessApplication[uuid.UUID]):
    """A process application that keeps sagas, decides, and sends their steps.

    Subclasses implement :meth:`react` (upstream event to saga decision) and
    register a :meth:`dispatch` handler per step class, which calls the
    target application with the given idempotency key. A handler decides
    what a refused command means (a shipment refused because the customer
    cancelled meanwhile is no error: the cancellation is an upstream event
    the saga will react to); any exception it raises leaves the step
    unprocessed, to be sent again.
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

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        ordering = getattr(self.recorder, "ordering", "sequence")
        if ordering != "sequence":
            raise ProgrammingError(
                f"{self.name} has {DynamoDBFactory.DYNAMODB_ORDERING}={ordering}, "
                "but a saga application reads its own sequence (its steps are "
                "sent, and its timeouts fired, from it): leave "
                f"{self.name.upper()}_{DynamoDBFactory.DYNAMODB_ORDERING} unset "
                "or 'sequence'. Its leaders may use either ordering."
            )
        self.processed = 0
        """Events this instance processed (upstream events and its own steps)."""
        self._step_topics = self.step_topics()

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """Give the saga application a sequence of its own, whatever its leaders use."""
        environment = super().construct_env(name, env)
        environment.setdefault(
            f"{name.upper()}_{DynamoDBFactory.DYNAMODB_ORDERING}", "sequence"
        )
        return environment

    def process_event(
        self, domain_event: DomainEventProtocol[uuid.UUID], tracking: Tracking
    ) -> None:
        """Process one event exactly once (its effects and tracking in one commit)."""
        super().process_event(domain_event, tracking)
        self.processed += 1

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
                self.dispatch(domain_event, step_key(domain_event))
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


class SagaRunner:
    """Feeds a saga application from application sequences, a poll at a time.

    Follows each leader's notification log and the saga application's own
    (its steps, to send them). With no leaders it only sends steps: the
    dispatcher beside stream followers. Several runners may run at once:
    each event is processed once (tracking is conditional), and a runner
    that loses a race reads again.
    """

    def __init__(
        self, saga_application: SagaApplication, leaders: Iterable[Application[Any]]
    ) -> None:
        self.application = saga_application
        self.leaders = [*leaders, saga_application]
        for leader in self.leaders:
            saga_application.follow(leader.name, leader.notification_log)

    def poll(self) -> int:
        """Process every event available now, from every leader; return how many.

        Goes round the leaders until a round finds nothing, so steps decided
        in this poll are sent in it too.
        """
        app = self.application
        before = app.processed
        while True:
            start = app.processed
            for leader in self.leaders:
                self._pull(leader.name)
            if app.processed == start:
                return app.processed - before

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll until ``stop`` is set, waiting ``interval`` when idle.

        Rides out DynamoDB being unavailable, as every ledger feed does.
        """
        run_polls(self.poll, stop, interval=interval)

    def _pull(self, leader_name: str) -> None:
        for attempt in range(MAX_DECISION_ATTEMPTS):
            try:
                self.application.pull_and_process(leader_name)
            except IntegrityError:
                # Another decider saved a saga (or another runner processed
                # the event) meanwhile: read from the tracking again.
                _backoff(attempt)
                continue
            return
        raise IntegrityError(
            f"{self.application.name} lost {MAX_DECISION_ATTEMPTS} races in a row "
            f"processing {leader_name}'s events; poll again later."
        )


class TimeoutPoller:
    """Fires a saga application's due timeouts, reading its sequence.

    Each :meth:`poll` reads the timeout events appended since the last one
    (one page read per ``page_size`` of them: two round trips each), then
    fires those due. Run one poller per saga application on a schedule (a
    loop here, an EventBridge schedule invoking a Lambda in AWS): more are
    safe, since a timeout fires once, but each reads the same events.
    Timeouts fire at the first poll after they are due: their lateness is at
    most the poll interval plus the time to read.
    """

    def __init__(
        self, saga_application: SagaApplication, *, page_size: int = 500
    ) -> None:
        self.application = saga_application
        self.page_size = page_size
        self.topics = saga_application.timeout_topics()
        if not self.topics:
            raise ProgrammingError(
                f"{type(saga_application).__name__}.saga_classes names no saga "
                "class: the poller would find no timeouts."
            )
        self.tracking_name = f"{saga_application.name}/timeouts"
        """The key of the low-water mark in the saga application's tracking table."""
        self.pending: dict[
            tuple[uuid.UUID, str], tuple[Saga.TimeoutScheduled, int]
        ] = {}
        """Timeouts scheduled and not yet fired or cancelled: (saga id, name)
        to the event that scheduled it and its position."""
        self._read_up_to: int | None = None
        self._mark: int | None = None

    def poll(self, now: datetime | None = None) -> int:
        """Read new timeout events, fire those due at ``now``; return how many fired."""
        now = now or datetime.now(UTC)
        self._read()
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
        self._save_mark()
        return fired

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set (rides out outages)."""

        def poll_then_wait() -> int:
            self.poll()
            return 0  # always wait: timeouts come due with time, not events

        run_polls(poll_then_wait, stop, interval=interval)

    def _read(self) -> None:
        app = self.application
        if self._read_up_to is None:
            self._mark = app.recorder.max_tracking_id(self.tracking_name) or 0
            self._read_up_to = self._mark
        # The sequence commits in order: everything up to the head is readable.
        head = app.recorder.max_notification_id() or 0
        while self._read_up_to < head:
            notifications: Sequence[Any] = app.recorder.select_notifications(
                start=self._read_up_to + 1,
                limit=self.page_size,
                stop=head,
                topics=self.topics,
            )
            for notification in notifications:
                event: Any = app.mapper.to_domain_event(notification)
                key = (event.originator_id, event.name)
                if isinstance(event, Saga.TimeoutScheduled):
                    self.pending[key] = (event, notification.id)
                else:
                    self.pending.pop(key, None)
            if len(notifications) < self.page_size:
                self._read_up_to = head
            else:
                self._read_up_to = notifications[-1].id

    def _save_mark(self) -> None:
        """Keep the position before the oldest pending timeout (all read if none)."""
        assert self._read_up_to is not None  # noqa: S101 - set by _read
        mark = min(
            (position - 1 for _, position in self.pending.values()),
            default=self._read_up_to,
        )
        if self._mark is not None and mark <= self._mark:
            return
        # IntegrityError: another poller moved it at least as far.
        with contextlib.suppress(IntegrityError):
            self.application.recorder.insert_tracking(
                Tracking(self.tracking_name, mark)
            )
        self._mark = mark


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
