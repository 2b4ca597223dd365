"""Read models: the base class, and what a projector records of its own progress.

Every read model is a :class:`ReadModel`. Beside a projector's own models,
each view holds an :class:`AggregatePosition` per aggregate (how far it is
applied) and a :class:`ParkedEvent` per aggregate that waits behind a dead
letter. :class:`Outcome` says what became of one event offered to a projector.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


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


__all__ = [
    "AggregatePosition",
    "GapError",
    "Outcome",
    "ParkedEvent",
    "ReadModel",
]
