"""Integration events: the versioned public contract of a domain's events.

Domain events are a storage format, free to change through ``class_version``
and upcasters. Other systems should not depend on them. An *integration
event* is what they get instead: a frozen pydantic model with a
``detail-type`` that names its schema version (``OrderPlaced.v1``), a
``source`` (``ledger.orders``) and a documented JSON Schema (see
:mod:`ledger.publishing.schema_files`). A released integration event never
changes shape; a change is a new class (``OrderPlacedV2``, detail-type
``OrderPlaced.v2``) that a :class:`Publication` publishes beside the old one
until every consumer has moved.

Every integration event carries an ``id`` derived from its detail-type, the
aggregate and the version the domain event has there (:func:`event_id`), so
publishing the same domain event again (after a crash, a redelivered stream
record, a redrive) sends the same id: consumers dedupe on it. (EventBridge's
own envelope ``id`` is new at every PutEvents and is no use for that.)

A translator that needs more than its domain event (an order's lines and
total when it is confirmed) reads the aggregate as that event left it
(:meth:`Publication.aggregate_at`): the same on every publication, since
stored events never change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, Self

from eventsourcing.persistence import ProgrammingError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "ID_NAMESPACE",
    "IntegrationEvent",
    "Publication",
    "Translator",
    "event_id",
    "translates",
]

ID_NAMESPACE: Final = uuid.UUID("0b6e3f4e-6c1d-5a8f-9b1e-7d2f4c3a5e61")
"""The UUID namespace of integration event ids (:func:`event_id`). Never
change it: every id published so far derives from it."""


def event_id(
    source: str, detail_type: str, aggregate_id: object, version: int
) -> uuid.UUID:
    """Return the id of the integration event of one domain event.

    A name-based UUID (version 5) of the source, the detail-type, the
    aggregate id and the domain event's version: the same on every
    publication of that event, different for each detail-type made from it.
    """
    return uuid.uuid5(ID_NAMESPACE, f"{source}|{detail_type}|{aggregate_id}|{version}")


class IntegrationEvent(BaseModel):
    """Base of integration events: the ``detail`` of one EventBridge event.

    Subclasses set ``source`` and ``detail_type`` (class variables, not
    fields) and declare their fields; :meth:`of` fills the common ones from
    the domain event.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: ClassVar[str]
    """EventBridge ``Source``: the publishing domain (``ledger.orders``)."""
    detail_type: ClassVar[str]
    """EventBridge ``DetailType``: the event's name and schema version
    (``OrderPlaced.v1``). Rules select a version by it."""

    id: uuid.UUID = Field(
        description=(
            "Dedupe on this: the same for every delivery of this event, "
            "derived from source, detail-type, aggregate id and version."
        )
    )
    aggregate_version: int = Field(
        ge=1,
        description=(
            "The aggregate's version this event made. Deliveries are not in "
            "order: a consumer keeping state per aggregate ignores versions "
            "at or below the last it applied."
        ),
    )
    occurred_at: AwareDatetime = Field(
        description="When the domain event happened (its timestamp)."
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("source", "detail_type"):
            value = cls.__dict__.get(name)
            if value is not None and not (isinstance(value, str) and value):
                msg = f"{cls.__qualname__}.{name} must be a non-empty str"
                raise TypeError(msg)

    @classmethod
    def of(cls, domain_event: Any, **fields: Any) -> Self:
        """Make this integration event of ``domain_event``: id, version, time."""
        version = int(domain_event.originator_version)
        return cls(
            id=event_id(
                cls.source, cls.detail_type, domain_event.originator_id, version
            ),
            aggregate_version=version,
            occurred_at=domain_event.timestamp,
            **fields,
        )


Translator = Callable[[Any, Any], IntegrationEvent | Sequence[IntegrationEvent] | None]
"""A publication's method: a domain event to its integration event(s)."""


def translates(*event_classes: type[Any]) -> Callable[[Translator], Translator]:
    """Declare a publication method as the translator of these domain event classes."""

    def decorate(method: Translator) -> Translator:
        method.__dict__.setdefault("_translates", []).extend(event_classes)
        return method

    return decorate


class Publication:
    """Which domain events are published, as which integration events.

    Subclass, set ``name`` (its publisher's table is named after it) and
    ``events`` (the integration event classes it publishes, whose schemas
    are exported), and decorate methods with :func:`translates`. A
    translator returns one integration event, several (a new version beside
    the old), or None (not published). Domain events without a translator
    are not published. Translators must be deterministic: a re-publication
    must send the same detail.
    """

    name: ClassVar[str] = ""
    """Names the publisher's table (``{prefix}{name}_publishing``) and its logs."""
    events: ClassVar[tuple[type[IntegrationEvent], ...]] = ()
    """Every integration event class this publication sends."""
    translators: ClassVar[dict[type[Any], Translator]] = {}

    def __init__(self, application: Any = None) -> None:
        self.application = application
        """The application whose events are translated, for
        :meth:`aggregate_at` (a :class:`~ledger.publishing.Publisher` gives
        it its own if None)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        translators: dict[type[Any], Translator] = {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                for event_class in getattr(attribute, "_translates", ()):
                    translators[event_class] = attribute
        cls.translators = translators

    def translator_for(self, event_class: type[Any]) -> Translator | None:
        """Return the translator of a domain event class (or of its nearest base)."""
        for klass in event_class.__mro__:
            translator = self.translators.get(klass)
            if translator is not None:
                return translator
        return None

    def aggregate_at(self, domain_event: Any) -> Any:
        """Return the aggregate as ``domain_event`` left it (at its version).

        Read from the store, so the same on every publication: one strongly
        consistent Query of the aggregate's events up to that version (fewer
        reads from a snapshot, if the application keeps them). If it cannot
        be read or decoded, the record is dead-lettered whole (every
        version made of it) and redriven after the fix.
        """
        if self.application is None:
            raise ProgrammingError(
                f"{type(self).__qualname__} reads aggregates to translate "
                f"{type(domain_event).__qualname__}: give it the application, "
                f"{type(self).__qualname__}(application) (a Publisher gives it "
                "its own)."
            )
        return self.application.repository.get(
            domain_event.originator_id, version=domain_event.originator_version
        )

    def translate(self, domain_event: Any) -> list[IntegrationEvent]:
        """Return the integration events to publish for one domain event."""
        translator = self.translator_for(type(domain_event))
        if translator is None:
            return []
        made = translator(self, domain_event)
        if made is None:
            return []
        if isinstance(made, IntegrationEvent):
            made = [made]
        unknown = [type(e).__qualname__ for e in made if type(e) not in self.events]
        if unknown:
            msg = (
                f"{type(self).__qualname__} made {', '.join(unknown)}, which its "
                "'events' do not list: add the class there (and export its schema)."
            )
            raise TypeError(msg)
        return list(made)
