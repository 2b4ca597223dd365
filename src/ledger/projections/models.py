"""Read models: the base class, and what a projector records of its own progress.

Every read model is a :class:`ReadModel`. Beside a projector's own models,
a view fed per aggregate (the stream feed) holds an :class:`AggregatePosition`
per aggregate (how far it is applied); a view fed by a total order (the
application sequence or the index) keeps only its tracking position. Either
holds a :class:`ParkedEvent` per aggregate that waits behind a dead letter.
:class:`Outcome` says what became of one event offered to a projector.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ledger.projections import schema

TYPE_SEPARATOR = "#"
"""Separates a read model's type name from its key in a storage key."""
_RESERVED_TYPE_NAMES = {schema.TRACKING_PREFIX.removesuffix(TYPE_SEPARATOR)}
"""Type names a projector's own read models cannot take: the views' tracking
items (``Tracking#{application}``), then ledger's own models (added below)."""


class ReadModel(BaseModel):
    """Base of read models: immutable pydantic models stored under a key.

    ``key_field`` names the field that identifies an instance; it is stored
    under ``{type_name}#{value}``.

    ``type_name`` names the kind of read model in storage. It defaults to the
    class name, and is not inherited (a subclass is stored under its own).
    Set it on a read model whose stored data must outlive a rename of its
    class, and never change it: a class renamed *without* it reads nothing
    stored under its old name (the items stay, orphaned, until a rebuild
    writes the read model afresh). Setting it to the current class name keeps
    the keys already stored. Two read-model classes of one type name written
    through one view are refused at the second one's first use
    (:meth:`ledger.projections.views.ReadModelView.claim`).
    """

    model_config = ConfigDict(frozen=True)

    key_field: ClassVar[str] = "id"
    type_name: ClassVar[str] = "ReadModel"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" not in cls.__dict__:
            cls.type_name = cls.__name__
        name = cls.type_name
        if not isinstance(name, str) or not name or TYPE_SEPARATOR in name:
            raise TypeError(
                f"Read model {cls.__qualname__} has type_name {name!r}: a type "
                f"name is a non-empty string without {TYPE_SEPARATOR!r} (it "
                "prefixes the storage keys). Set type_name to such a string."
            )
        if name in _RESERVED_TYPE_NAMES:
            raise TypeError(
                f"Read model {cls.__qualname__} has the type name {name!r}, "
                "which ledger uses for its own items (tracking, aggregate "
                "positions, dead letters): its instances would overwrite them. "
                f"Set type_name on {cls.__qualname__} to another name."
            )

    @classmethod
    def storage_key(cls, key: object) -> str:
        """Return the key an instance with this identity is stored under."""
        return f"{cls.type_name}{TYPE_SEPARATOR}{key}"

    @classmethod
    def key_of(cls, storage_key: str) -> str | None:
        """Return the identity part of ``storage_key``, or None if not of this type."""
        prefix = cls.storage_key("")
        return storage_key[len(prefix) :] if storage_key.startswith(prefix) else None

    def own_key(self) -> str:
        """Return the key this instance is stored under."""
        return self.storage_key(getattr(self, self.key_field))


class AggregatePosition(ReadModel):
    """How far a projection has applied one aggregate, and whether it waits.

    Kept by views fed per aggregate (the stream feed, a rebuild from a Scan,
    and views built so before they kept one position: see
    :meth:`~ledger.projections.views.ReadModelView.keeps_one_position`).
    """

    key_field: ClassVar[str] = "aggregate_id"
    type_name: ClassVar[str] = "AggregatePosition"

    aggregate_id: str
    version: int = 0
    """The last version of the aggregate applied."""
    parked_version: int | None = None
    """The version parked as a dead letter, which later versions wait behind."""


class ParkedEvent(ReadModel):
    """A dead letter: an event whose handler kept failing, and why.

    Views store these apart from other read models (the dead letters, listed
    by :meth:`ledger.projections.views.ReadModelView.parked_events`).
    """

    key_field: ClassVar[str] = "aggregate_id"
    type_name: ClassVar[str] = "ParkedEvent"

    aggregate_id: str
    version: int
    position: int | None
    """Position in the application sequence, when known."""
    topic: str
    error: str
    attempts: int
    parked_at: datetime
    passed_version: int | None = None
    """Parked by a feed of a total order: the last version of the aggregate
    the feed has gone past (the parked one, or a later one that waits behind
    it). A redrive applies the aggregate's events up to it and leaves the
    later ones to the feed. None: parked by a feed that keeps a position per
    aggregate (:class:`AggregatePosition`)."""


_RESERVED_TYPE_NAMES.update((AggregatePosition.type_name, ParkedEvent.type_name))


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


__all__ = [
    "TYPE_SEPARATOR",
    "AggregatePosition",
    "GapError",
    "Outcome",
    "ParkedEvent",
    "ReadModel",
]
