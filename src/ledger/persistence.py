"""Mapping pydantic events and snapshots to and from `eventsourcing` stored events.

:class:`PydanticMapper` is an :class:`eventsourcing.persistence.Mapper`, so an
application selects it the usual ways: the ``MAPPER_TOPIC`` environment key
(``MAPPER_TOPIC=ledger.persistence:PydanticMapper``) or an ``env`` class
attribute on the application. It applies the compressor and cipher an
application configures (``COMPRESSOR_TOPIC``, ``CIPHER_KEY``) exactly as
`eventsourcing`'s mapper does.

Stored state is the JSON of the event's fields minus the two that the stored
event already holds (``originator_id``, ``originator_version``), plus
``"class_version"`` when it is above 1 — `eventsourcing`'s convention, so an
absent key means version 1. JSON encoding and decoding run in pydantic-core
(Rust): Decimal is written as its string (exact, exponent kept), datetimes as
ISO 8601 with their UTC offset, UUIDs as strings, enums as their values.

An event's metadata (:mod:`ledger.metadata`) is stored in the same JSON
object under the reserved key ``"_meta"``, beside the fields (no pydantic
field can be named with a leading underscore), and only what differs from an
event with none: ``correlation_id`` unless it is the event's own id,
``causation_id`` unless None, ``headers`` unless empty; no key at all when
nothing differs. So events written outside any context, and every event
stored before ledger had metadata, have no key and cost no byte; reading
one gives it the metadata of the first event of its own chain. The key is
removed before upcasting: upcasters never see it.

Events that are not pydantic models (plain `eventsourcing` dataclass events)
are passed to the base mapper and its transcoder (``TRANSCODER_TOPIC``), so an
application may mix both.

Stored data never chooses what code is imported: every topic a stored event
holds (its own, a created event's ``originator_topic``, a snapshot's
``topic``) must name a class of a module already imported, or a registered
topic (:func:`resolve_stored_topic`), for pydantic and dataclass events alike.
The check is made here rather than by a validator on those fields because
every stored event passes through the mapper, whatever its kind and however
its class declares the field, while events made by code do not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Final, cast

import pydantic_core
from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanSnapshotAggregate,
    DomainEventProtocol,
)
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import TopicError, get_topic, resolve_topic
from pydantic import BaseModel

from ledger.domain import (
    RESTORED_WITHOUT_METADATA,
    DomainEvent,
    given_metadata,
    upcasters,
)
from ledger.eventsourcing_internals import is_registered_topic
from ledger.metadata import RESTORED_METADATA, EventMetadata, event_id

__all__ = [
    "CLASS_VERSION",
    "METADATA",
    "PydanticMapper",
    "StoredVersionTooNewError",
    "resolve_stored_topic",
]

CLASS_VERSION: Final = "class_version"
"""Key of the stored state that holds the class version, when above 1."""
METADATA: Final = "_meta"
"""Key of the stored state that holds the event's metadata, when it has any
beyond the default: an object of ``correlation_id``, ``causation_id`` and
``headers``, each present only when not the default."""

# The stored event holds these itself; repeating them in the state would only
# make every item bigger (DynamoDB charges by size).
_ENVELOPE_FIELDS: Final = {"originator_id", "originator_version"}


class StoredVersionTooNewError(MapperDeserialisationError):
    """A stored event was written by a newer version of its class than this code."""


class PydanticMapper(Mapper[Any]):
    """Converts pydantic domain events and snapshots to stored events and back.

    Reading upcasts the stored state through the class's
    ``upcast_vN_vN+1`` chain before validation; this is the only place
    upcasting happens, for events and snapshots alike.
    """

    def __init__(
        self,
        transcoder: Transcoder,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        """Construct the mapper as eventsourcing's (see ``Mapper``)."""
        super().__init__(transcoder, compressor, cipher)
        self._readers: dict[str, _Reader] = {}
        """How to read each stored topic seen so far, once it passed the
        allow-list: a load of n events resolves and inspects its few event
        classes once each, not n times."""
        self._aggregate_topics: set[str] = set()
        """Aggregate topics (a Created event's ``originator_topic``, a
        snapshot's ``topic``) that passed the allow-list: every load of an
        aggregate reads one, so each is checked once, not on every load."""

    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        """Serialise ``domain_event`` into a stored event."""
        if not isinstance(domain_event, BaseModel):
            return super().to_stored_event(domain_event)
        event_class = type(domain_event)
        state = event_class.__pydantic_serializer__.to_python(
            domain_event, mode="json", exclude=_ENVELOPE_FIELDS
        )
        class_version = getattr(event_class, "class_version", 1)
        if class_version > 1:
            state[CLASS_VERSION] = class_version
        stored_metadata = _stored_metadata(domain_event)
        if stored_metadata:
            state[METADATA] = stored_metadata
        stored_state: bytes = pydantic_core.to_json(state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(event_class),
            state=stored_state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        """Deserialise ``stored_event``, upcasting its state to the current class.

        Every topic the stored event holds must name a class this process
        already knows (:func:`resolve_stored_topic`): its own, and the
        aggregate topic in the state of an event that creates an aggregate
        (``originator_topic``) or of a snapshot (``topic``), which must name
        an aggregate class. Reading data never imports code.
        """
        return self.event_from_parts(
            stored_event.originator_id,
            stored_event.originator_version,
            stored_event.topic,
            stored_event.state,
        )

    def event_from_parts(
        self, originator_id: Any, originator_version: int, topic: str, state: bytes
    ) -> DomainEventProtocol[Any]:
        """Deserialise a stored event given as its four parts, as ``to_domain_event``.

        For a recorder that reads the parts itself (ledger's): a load of n
        events then makes no ``StoredEvent`` for them, a frozen dataclass
        that costs more to build than the event's JSON costs to parse.
        """
        reader = self._readers.get(topic)
        if reader is None:
            reader = _Reader.of(resolve_stored_topic(topic))
            self._readers[topic] = reader
        model = reader.model
        if model is not None:
            # Here, not in a method of its own: it runs for every event read.
            try:
                if self.cipher is None and self.compressor is None:
                    fields = pydantic_core.from_json(state)
                    if type(fields) is not dict:
                        fields = _json_object(fields)
                else:
                    fields = self._decode_state(state)
                stored_metadata = fields.pop(METADATA, None)
                if reader.upcasts or CLASS_VERSION in fields:
                    self._upcast(model, fields)
                fields["originator_id"] = originator_id
                fields["originator_version"] = originator_version
                event: DomainEventProtocol[Any] = (
                    model.__pydantic_validator__.validate_python(
                        fields,
                        context=RESTORED_WITHOUT_METADATA
                        if stored_metadata is None
                        else {RESTORED_METADATA: _restored_metadata(stored_metadata)},
                    )
                )
            except Exception as error:
                stored = StoredEvent(originator_id, originator_version, topic, state)
                if isinstance(error, StoredVersionTooNewError):
                    msg = f"{_describe(stored)}: {error}"
                    raise StoredVersionTooNewError(msg) from None
                msg = f"Failed to deserialise {_describe(stored)}: {error}"
                raise MapperDeserialisationError(msg) from error
        else:
            event = super().to_domain_event(
                StoredEvent(originator_id, originator_version, topic, state)
            )
        if reader.aggregate_topic is not None:
            aggregate_topic = getattr(event, reader.aggregate_topic, None)
            if aggregate_topic not in self._aggregate_topics:
                _check_aggregate_topic(
                    event,
                    StoredEvent(originator_id, originator_version, topic, state),
                    reader.aggregate_topic,
                )
                self._aggregate_topics.add(cast("str", aggregate_topic))
        return event

    def _decode_state(self, stored_state: bytes) -> dict[str, Any]:
        if self.cipher:
            stored_state = self.cipher.decrypt(stored_state)
        if self.compressor:
            stored_state = self.compressor.decompress(stored_state)
        return _json_object(pydantic_core.from_json(stored_state))

    @staticmethod
    def _upcast(event_class: type[BaseModel], state: dict[str, Any]) -> None:
        stored_version = state.pop(CLASS_VERSION, 1)
        class_version = getattr(event_class, "class_version", 1)
        if stored_version > class_version:
            msg = (
                f"stored class_version {stored_version} is newer than "
                f"{event_class.__qualname__}.class_version {class_version}; "
                "deploy the code that wrote it before reading it"
            )
            raise StoredVersionTooNewError(msg)
        if stored_version < class_version:
            for upcast in upcasters(event_class)[stored_version - 1 :]:
                upcast(state)


@dataclass(frozen=True)
class _Reader:
    """How the mapper reads the stored events of one topic."""

    model: type[BaseModel] | None
    """The pydantic event class, or None: eventsourcing's mapper reads it."""
    aggregate_topic: str | None
    """The field holding an aggregate topic to check (a Created event's
    ``originator_topic``, a snapshot's ``topic``), or None."""
    upcasts: bool = False
    """Whether the class is past version 1 (so a stored state without a
    version is upcast from version 1)."""

    @classmethod
    def of(cls, event_class: type[Any]) -> _Reader:
        """Return how to read events of a class the allow-list let through."""
        if issubclass(event_class, CanInitAggregate):
            aggregate_topic: str | None = "originator_topic"
        elif issubclass(event_class, CanSnapshotAggregate):
            aggregate_topic = "topic"
        else:
            aggregate_topic = None
        model = event_class if issubclass(event_class, BaseModel) else None
        upcasts = getattr(event_class, CLASS_VERSION, 1) > 1
        return cls(model, aggregate_topic, upcasts)


def _json_object(state: Any) -> dict[str, Any]:
    """Return a stored state's JSON if it is an object; raise TypeError if not."""
    if not isinstance(state, dict):
        msg = f"stored state is a JSON {type(state).__name__}, not an object"
        raise TypeError(msg)
    return state


def _stored_metadata(event: BaseModel) -> dict[str, Any]:
    """Return what of the event's metadata differs from the default (maybe {})."""
    if isinstance(event, DomainEvent):
        metadata = given_metadata(event)
        if metadata is None:  # the default: nothing differs
            return {}
    else:
        metadata = getattr(event, "metadata", None)
    if not isinstance(metadata, EventMetadata):
        return {}
    stored: dict[str, Any] = {}
    if metadata.correlation_id != event_id(event):
        stored["correlation_id"] = metadata.correlation_id
    if metadata.causation_id is not None:
        stored["causation_id"] = metadata.causation_id
    if metadata.headers:
        stored["headers"] = dict(metadata.headers)
    return stored


def _restored_metadata(stored: object) -> dict[str, Any] | None:
    """Return the metadata stored with an event (None when it has none)."""
    if stored is not None and not isinstance(stored, dict):
        msg = f"stored {METADATA!r} is a JSON {type(stored).__name__}, not an object"
        raise TypeError(msg)
    return stored


def resolve_stored_topic(topic: str) -> type[Any]:
    """Return the event class a stored event's topic names, if already known.

    A topic comes from stored data, which a reader must not trust to choose
    code: it resolves only to a class of a module already imported (an
    application imports its event classes' modules) or a topic registered
    with ``eventsourcing.utils.register_topic`` (a renamed class). Anything
    else raises ``TopicError`` and imports nothing.
    """
    return _resolve_known(topic, f"Stored topic {topic!r}", "event class")


def _resolve_aggregate_class(topic: str, subject: str) -> type[BaseAggregate[Any]]:
    """Resolve ``topic`` as :func:`resolve_stored_topic` does, to an aggregate class."""
    found = _resolve_known(topic, subject, "aggregate class")
    if not issubclass(found, BaseAggregate):
        raise TopicError(
            f"{subject} names {found!r}, not an aggregate class (a subclass of "
            "eventsourcing's BaseAggregate)."
        )
    return found


def _resolve_known(topic: str, subject: str, kind: str) -> type[Any]:
    """Resolve ``topic`` to a class without importing anything.

    ``subject`` starts an error's message, ``kind`` names the class expected.
    """
    module_name = topic.partition(":")[0]
    if module_name not in sys.modules and not is_registered_topic(topic):
        raise TopicError(
            f"{subject} names module {module_name!r}, which this process has "
            "not imported, and ledger does not import code named by stored "
            f"data. Import the module that defines the {kind} before reading "
            "(or register_topic a renamed class)."
        )
    found = resolve_topic(topic)
    if not isinstance(found, type):
        raise TopicError(
            f"{subject} names {type(found).__name__} {found!r}, not an {kind}."
        )
    return found


def _check_aggregate_topic(
    event: DomainEventProtocol[Any], stored_event: StoredEvent, name: str
) -> None:
    """Check the aggregate topic a Created event or a snapshot holds in its state.

    ``eventsourcing`` resolves it (``CanInitAggregate.mutate``,
    ``Snapshot.mutate``) without a check of its own, for pydantic and
    dataclass events alike: so it passes the allow-list here, before the
    event leaves the mapper. ``name``: the field that holds it.
    """
    topic = getattr(event, name, None)
    subject = f"Reading the {_describe(stored_event)}: its {name} {topic!r}"
    if not isinstance(topic, str):
        raise TopicError(f"{subject} is not a topic (module:qualname).")
    _resolve_aggregate_class(topic, subject)


def _describe(stored_event: StoredEvent) -> str:
    return (
        f"stored event with topic {stored_event.topic!r}, originator_id "
        f"{stored_event.originator_id!s} and originator_version "
        f"{stored_event.originator_version}"
    )
