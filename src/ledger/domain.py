"""Aggregates whose events and snapshots are frozen pydantic v2 models.

This module plugs pydantic into `eventsourcing`'s own aggregate machinery
rather than replacing it: :class:`Aggregate` is an
:class:`eventsourcing.domain.BaseAggregate`, its events are
:class:`~eventsourcing.domain.CanMutateAggregate` classes, so ``Application``,
``Repository``, ``trigger_event`` and snapshots work unchanged.

Events are storage formats. Each event (and snapshot) class carries a
``class_version``; when a class changes shape its version goes up and it gains
a static method ``upcast_vN_vN+1(state)`` that rewrites the stored state of
version N, in place, into the shape of version N+1 (`eventsourcing`'s naming
convention). A missing step in that chain is reported when the class is
defined, not when the first old event is read in production. The chain is
applied in exactly one place: :class:`ledger.persistence.PydanticMapper`.

Every event also has ``metadata`` (:mod:`ledger.metadata`: correlation id,
causation id, headers), taken from the context in force when it is created.
It is not one of the event's fields: it is not in ``model_dump``, plays no
part in equality and never reaches an upcaster; the mapper stores it beside
the fields. An event class marked :class:`~ledger.metadata.Reply` takes the
chain of its aggregate's latest :class:`~ledger.metadata.Request` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, Self, cast
from uuid import UUID, uuid4

from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    CanSnapshotAggregate,
    EventSourcingError,
    OriginatorIDError,
    OriginatorVersionError,
    TAggregate,
)
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import AwareDatetime, BaseModel, ConfigDict, PrivateAttr

from ledger.metadata import (
    RESTORED_METADATA,
    EventMetadata,
    Reply,
    Request,
    consequence_of,
    current_metadata,
    event_id,
    metadata,
)

__all__ = [
    "RESTORED_WITHOUT_METADATA",
    "Aggregate",
    "AggregateState",
    "DomainEvent",
    "SchemaVersionError",
    "Snapshot",
    "SnapshotStateError",
    "Upcaster",
    "project_aggregate",
    "upcasters",
]

Upcaster = Callable[[dict[str, Any]], None]
"""Rewrites the stored state of one class version, in place, into the next."""

# Attributes every eventsourcing aggregate has; a snapshot stores them apart
# from the aggregate's own state.
_BASE_AGGREGATE_ATTRIBUTES = frozenset(
    {"_id", "_version", "_created_on", "_modified_on", "_pending_events"}
)

_REPLY_METADATA: Final = "_reply_metadata"
"""The aggregate attribute holding the metadata its next reply carries (the
consequence of its latest request); a snapshot keeps it as its metadata."""


class SchemaVersionError(EventSourcingError, TypeError):
    """A class's ``class_version`` or its chain of upcasters is wrong."""


class SnapshotStateError(EventSourcingError, TypeError):
    """A snapshot class's state model does not match its aggregate."""


def upcasters(cls: type[object]) -> list[Upcaster]:
    """Return the upcasters of ``cls`` in order: v1 to v2 first, and so on.

    Raises :class:`SchemaVersionError` when ``class_version`` is not a positive
    integer or a step of the chain is missing.
    """
    class_version = getattr(cls, "class_version", 1)
    if type(class_version) is not int or class_version < 1:
        msg = (
            f"{cls.__qualname__}.class_version must be an int >= 1, "
            f"got {class_version!r}"
        )
        raise SchemaVersionError(msg)
    chain: list[Upcaster] = []
    for version in range(1, class_version):
        name = f"upcast_v{version}_v{version + 1}"
        upcaster = getattr(cls, name, None)
        if not callable(upcaster):
            msg = (
                f"{cls.__qualname__} has class_version {class_version} but no "
                f"static method {name}(state) to upcast stored version {version}"
            )
            raise SchemaVersionError(msg)
        chain.append(upcaster)
    return chain


def project_aggregate(
    aggregate: TAggregate | None, domain_events: Iterable[Any]
) -> TAggregate | None:
    """Replay events onto an aggregate (None before the first): each event's ``mutate``.

    ``eventsourcing``'s own projector of the same name does the same after
    asserting that each event is a ``CanMutateProtocol``: a runtime protocol
    check that costs more than decoding the event (about 11 microseconds an
    event on Python 3.11 here). Without it, an event without ``mutate``
    still fails, with an ``AttributeError`` naming the method.
    """
    for domain_event in domain_events:
        aggregate = domain_event.mutate(aggregate)
    return aggregate


class DomainEvent(BaseModel):
    """Base class for immutable, versioned domain events (and snapshots).

    Subclasses declare their fields as pydantic annotations. ``class_version``
    is a class variable (not a field), so a subclass may simply write
    ``class_version = 2`` beside its ``upcast_v1_v2`` static method.

    ``metadata`` is taken by the event's metadata: a field of that name would
    hide it (pydantic warns). A subclass that defines ``model_post_init`` must
    call the base's, which takes the metadata.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    class_version: ClassVar[int] = 1
    """Version of this class's stored shape; bump it with an upcaster."""

    originator_id: UUID
    """ID of the aggregate the event belongs to."""
    originator_version: int
    """Position of the event in its aggregate's sequence."""
    timestamp: AwareDatetime
    """When the event occurred; always timezone-aware."""

    # A private attribute, so not a field: never dumped, validated or upcast.
    # None: the event is the first of its own chain (the property fills it in).
    _metadata: EventMetadata | None = PrivateAttr(default=None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Check the upcaster chain as soon as a subclass is defined."""
        super().__pydantic_init_subclass__(**kwargs)
        upcasters(cls)
        _drop_inherited_post_init_wrapper(cls)

    def model_post_init(self, context: Any, /) -> None:
        """Take the metadata a mapper restores, else the context's in force now."""
        if isinstance(context, dict) and RESTORED_METADATA in context:
            stored = context[RESTORED_METADATA]
            if stored is not None:
                # Stored: what differs from the default, which the property gives.
                self._metadata = EventMetadata.model_validate(
                    {"correlation_id": event_id(self), **stored}
                )
        else:
            self._metadata = current_metadata()

    @property
    def metadata(self) -> EventMetadata:
        """How the event came about: correlation id, causation id, headers.

        An event created outside any context (or stored without metadata)
        is the first of its own chain: its own id as correlation id, no
        causation id, no headers.
        """
        if self._metadata is None:
            self._metadata = EventMetadata(correlation_id=event_id(self))
        return self._metadata

    def __eq__(self, other: object) -> bool:
        """Events are equal when their types and fields are; metadata is ignored.

        Metadata says how an event came about, not what happened: the same
        event recorded under another request is the same event.
        """
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        """Hash what equality compares: the type and the fields."""
        return hash((type(self), tuple(self.__dict__.values())))


RESTORED_WITHOUT_METADATA: Final[dict[str, None]] = {RESTORED_METADATA: None}
"""The validation context of an event read from storage without metadata
(most are): one shared dict, never changed, rather than one per event read."""

_init_private_and_post_init = DomainEvent.model_post_init
"""``DomainEvent.model_post_init`` as pydantic wraps it: its private
attributes initialised first, then the method as written."""
_object_setattr = object.__setattr__


def _post_init(self: DomainEvent, context: Any, /) -> None:
    """``DomainEvent.model_post_init``, quicker for an event made or read plainly.

    pydantic initialises private attributes before a model's own
    ``model_post_init`` by looking up each one's default through several
    functions, for every event made or read; an event read without metadata
    gets the one private attribute's default here directly, and an event
    made by code (no validation context) the context's metadata, as
    ``DomainEvent.model_post_init`` would give it (``__pydantic_private__``
    is where pydantic keeps an instance's private values). An event class
    with private attributes of its own goes pydantic's way (see
    ``_drop_inherited_post_init_wrapper``), as does any event whose private
    attributes are already set up.
    """
    if getattr(self, "__pydantic_private__", None) is None:
        if context is RESTORED_WITHOUT_METADATA:
            _object_setattr(self, "__pydantic_private__", {"_metadata": None})
            return
        if context is None:  # made by code: the context's metadata, as below
            _object_setattr(
                self, "__pydantic_private__", {"_metadata": current_metadata()}
            )
            return
    _init_private_and_post_init(self, context)


DomainEvent.model_post_init = _post_init  # type: ignore[method-assign]


def given_metadata(event: DomainEvent) -> EventMetadata | None:
    """Return the metadata an event was given, or None: the default, its own chain.

    For the mapper, which stores nothing for the default: reading
    ``event.metadata`` would make the default's model for every event saved.
    Read from where pydantic keeps private values: ``event._metadata`` goes
    through ``BaseModel.__getattr__``, a Python call, for every event saved.
    """
    private = event.__pydantic_private__
    if private is None:  # not set up (a model_construct'ed event, say)
        return event._metadata
    metadata_given: EventMetadata | None = private.get("_metadata")
    return metadata_given


def _drop_inherited_post_init_wrapper(cls: type[BaseModel]) -> None:
    """Let a subclass call its base's ``model_post_init`` directly.

    pydantic wraps the ``model_post_init`` of every class of a model with
    private attributes (``_metadata``) in a function that first initialises
    them, even when the class inherits it from a base already so wrapped:
    an event class three levels down then runs three wrappers for each event
    made or read. A class that defines its own ``model_post_init`` keeps
    pydantic's wrapper.
    """
    wrapper = cls.__dict__.get("model_post_init")
    inherited = next(
        (
            c.__dict__["model_post_init"]
            for c in cls.__mro__[1:]
            if "model_post_init" in c.__dict__
        ),
        None,
    )
    if inherited is not None and getattr(wrapper, "__wrapped__", None) is inherited:
        cls.model_post_init = inherited  # type: ignore[method-assign,assignment]
    if cls.model_post_init is _post_init and cls.__private_attributes__.keys() != {
        "_metadata"
    }:
        # Private attributes of its own: pydantic sets them all up first.
        cls.model_post_init = _init_private_and_post_init  # type: ignore[method-assign,assignment]


class Aggregate(BaseAggregate[UUID]):
    """Base class for aggregates whose events are :class:`DomainEvent` models.

    Define events as nested classes of ``Aggregate.Event`` (and one of
    ``Aggregate.Created``) with an ``apply(self, aggregate)`` method that
    evolves the state; command methods validate, then call
    ``self.trigger_event(self.SomethingHappened, ...)``.
    """

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        """Return a new random aggregate ID."""
        return uuid4()

    def trigger_event(
        self, event_class: type[CanMutateAggregate[UUID]], **kwargs: Any
    ) -> None:
        """Record an event; a :class:`~ledger.metadata.Reply` continues its request.

        A reply takes the correlation id and headers of the aggregate's
        latest request, and that request's id as causation id, whatever the
        context in force (whose headers it keeps under the request's).
        """
        chain: EventMetadata | None = (
            self.__dict__.get(_REPLY_METADATA)
            if issubclass(event_class, Reply)
            else None
        )
        if chain is None:
            super().trigger_event(event_class, **kwargs)
            return
        with metadata(
            correlation_id=chain.correlation_id,
            causation_id=chain.causation_id,
            headers=chain.headers,
        ):
            super().trigger_event(event_class, **kwargs)

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        """Base class for this aggregate's events."""

        _mutates_in_place: ClassVar[bool] = True
        """Whether the ``mutate`` after this class's is ``CanMutateAggregate``'s
        (set for each subclass): :meth:`mutate` then does its work itself."""

        @classmethod
        def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
            """Note whether ``mutate`` may skip ``CanMutateAggregate``'s call."""
            super().__pydantic_init_subclass__(**kwargs)
            following = super().mutate
            cls._mutates_in_place = following is CanMutateAggregate.mutate

        def mutate(self, aggregate: TAggregate | None) -> TAggregate | None:
            """Evolve the aggregate; a request also sets what its reply will carry.

            What ``CanMutateAggregate.mutate`` does (the event must be the
            aggregate's and its next version; ``apply``, then the version and
            ``modified_on``), done here for each event replayed rather than
            through a call of it: that call, and its comparison of UUIDs (two
            Python calls), cost every event. An event that creates its
            aggregate, and a class with a ``mutate`` of its own past this
            one, go the base's way.
            """
            if aggregate is None or not self._mutates_in_place:
                mutated = super().mutate(aggregate)
            else:
                # The same object on a load (the repository's id): no
                # comparison of UUIDs in Python.
                if self.originator_id is not aggregate.id and (
                    self.originator_id != aggregate.id
                ):
                    raise OriginatorIDError(self.originator_id, aggregate.id)
                next_version = aggregate.version + 1
                if self.originator_version != next_version:
                    raise OriginatorVersionError(self.originator_version, next_version)
                self.apply(aggregate)
                aggregate.version = self.originator_version
                aggregate.modified_on = self.timestamp
                mutated = aggregate
            if isinstance(self, Request) and mutated is not None:
                setattr(mutated, _REPLY_METADATA, consequence_of(self))
            return mutated

    class Created(Event, CanInitAggregate[UUID]):
        """Base class for the event that starts an aggregate's life."""

        originator_topic: str
        """Topic of the aggregate class to construct (read back, it must name
        an aggregate class already imported: see PydanticMapper)."""

        _creates_in_place: ClassVar[bool] = True
        """Whether the ``mutate`` after this class's is ledger's
        ``Aggregate.Event.mutate`` followed by ``CanInitAggregate.mutate``
        (set for each subclass): :meth:`mutate` then does their work itself."""

        @classmethod
        def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
            """Note whether ``mutate`` may skip ``CanInitAggregate``'s call."""
            super().__pydantic_init_subclass__(**kwargs)
            cls._creates_in_place = (
                super().mutate is Aggregate.Event.mutate
                and super(Aggregate.Event, cls).mutate is CanInitAggregate.mutate
            )

        def mutate(self, aggregate: TAggregate | None) -> TAggregate | None:
            """Construct the aggregate this event starts, as eventsourcing does.

            What ``CanInitAggregate.mutate`` does (a new instance of the
            topic's class, its base attributes set by ``__base_init__``, its
            ``__init__`` called, then ``apply``), for an aggregate class that
            keeps eventsourcing's ``__base_init__`` and has no ``__init__``
            of its own (most: state is set by ``apply``): without matching
            the event's fields to those two methods' parameters, a dict and
            two comprehensions on every aggregate created or loaded. Any
            other class, and an event class with a ``mutate`` of its own past
            this one, go eventsourcing's way.
            """
            if aggregate is not None or not self._creates_in_place:
                return super().mutate(aggregate)
            aggregate_class: type[TAggregate] = resolve_topic(self.originator_topic)
            if not _initialised_plainly(aggregate_class):
                return super().mutate(aggregate)
            created = aggregate_class.__new__(aggregate_class)
            created.__base_init__(
                self.originator_id, self.originator_version, self.timestamp
            )
            self.apply(created)
            if isinstance(self, Request):
                setattr(created, _REPLY_METADATA, consequence_of(self))
            return created


_PLAIN_INIT: dict[type[Any], bool] = {}
"""Per aggregate class: whether it keeps ``BaseAggregate.__base_init__`` and
``object.__init__`` (see ``Aggregate.Created.mutate``)."""


def _initialised_plainly(aggregate_class: type[Any]) -> bool:
    """Return whether ``CanInitAggregate.mutate`` would only call ``__base_init__``."""
    plain = _PLAIN_INIT.get(aggregate_class)
    if plain is None:
        plain = (
            aggregate_class.__base_init__ is BaseAggregate.__base_init__
            and aggregate_class.__init__ is object.__init__
        )
        _PLAIN_INIT[aggregate_class] = plain
    return plain


class AggregateState(BaseModel):
    """Base class for the typed state a :class:`Snapshot` stores.

    A subclass names the aggregate attributes to keep, with their types, so a
    snapshot round-trips Decimal, datetime, UUID, enums and nested models as
    exactly as events do.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


class Snapshot(DomainEvent, CanSnapshotAggregate[UUID]):
    """Base class for an aggregate's snapshot: its state at one version.

    A subclass must narrow ``state`` to its own :class:`AggregateState` model.
    Like events, snapshots carry a ``class_version`` of their own and are
    upcast by the mapper; the aggregate class's version plays no part.
    """

    topic: str
    """Topic of the aggregate class the snapshot restores."""
    created_on: AwareDatetime
    """When the aggregate was created."""
    modified_on: AwareDatetime
    """When the aggregate was last changed, as of this snapshot."""
    state: AggregateState
    """The aggregate's own attributes."""

    def model_post_init(self, context: Any, /) -> None:
        """Take only the metadata a mapper restores, never the context's.

        A snapshot records no event of the domain: its metadata is what its
        aggregate's next :class:`~ledger.metadata.Reply` will carry, if any.
        """
        if isinstance(context, dict) and context.get(RESTORED_METADATA):
            super().model_post_init(context)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Require a concrete state model, so no attribute is silently dropped."""
        super().__pydantic_init_subclass__(**kwargs)
        state_type = cls.model_fields["state"].annotation
        if state_type is AggregateState or not (
            isinstance(state_type, type) and issubclass(state_type, AggregateState)
        ):
            msg = (
                f"{cls.__qualname__} must annotate 'state' with its own "
                f"AggregateState subclass, got {state_type!r}"
            )
            raise SnapshotStateError(msg)

    @classmethod
    def state_type(cls) -> type[AggregateState]:
        """Return the state model this snapshot class stores."""
        return cast("type[AggregateState]", cls.model_fields["state"].annotation)

    @classmethod
    def take(cls, aggregate: Any) -> Self:
        """Return a snapshot of ``aggregate`` as it is now."""
        state_type = cls.state_type()
        unsaved = (
            set(vars(aggregate))
            - _BASE_AGGREGATE_ATTRIBUTES
            - {_REPLY_METADATA}
            - set(state_type.model_fields)
        )
        if unsaved:
            msg = (
                f"{cls.__qualname__} would lose attributes {sorted(unsaved)} of "
                f"{type(aggregate).__qualname__}: add them to "
                f"{state_type.__qualname__} (and bump class_version)"
            )
            raise SnapshotStateError(msg)
        snapshot = cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=cls.create_timestamp(),
            topic=get_topic(type(aggregate)),
            created_on=aggregate.created_on,
            modified_on=aggregate.modified_on,
            # Validating from attributes copies containers, so later commands
            # on the aggregate cannot change a snapshot already taken.
            state=state_type.model_validate(aggregate, from_attributes=True),
        )
        # The mapper stores it beside the state, as it does an event's.
        snapshot._metadata = getattr(aggregate, _REPLY_METADATA, None)
        return snapshot

    def mutate(self, _: None) -> BaseAggregate[UUID]:
        """Reconstruct the aggregate this snapshot was taken of."""
        # A stored snapshot's topic has passed PydanticMapper's allow-list
        # (an aggregate class already imported): resolving it imports nothing.
        aggregate_class = cast("type[BaseAggregate[UUID]]", resolve_topic(self.topic))
        aggregate = object.__new__(aggregate_class)
        aggregate.__base_init__(
            originator_id=self.originator_id,
            originator_version=self.originator_version,
            timestamp=self.created_on,
        )
        aggregate.modified_on = self.modified_on
        # A deep copy: the aggregate mutates its containers, the snapshot must not.
        state = self.state.model_copy(deep=True)
        for name in type(state).model_fields:
            setattr(aggregate, name, getattr(state, name))
        # Only a request's consequence has a cause; the property's default has none.
        if self._metadata is not None and self._metadata.causation_id is not None:
            setattr(aggregate, _REPLY_METADATA, self._metadata)
        return aggregate
