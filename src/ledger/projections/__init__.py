"""Projections: read models kept up to date from an application's events.

A :class:`Projector` declares a handler per event type and writes pydantic
:class:`ReadModel` s through a view (:class:`DynamoDBView`, or
:class:`InMemoryView` in unit tests). Feed it from the application sequence
(``eventsourcing``'s ``ProjectionRunner``) or from DynamoDB Streams
(:mod:`ledger.projections.streams`); rebuild it blue/green with
:func:`ledger.projections.rebuild.rebuild`.
"""

from __future__ import annotations

from ledger.projections.dynamodb import DynamoDBView
from ledger.projections.models import (
    AggregatePosition,
    GapError,
    Outcome,
    ParkedEvent,
    ReadModel,
)
from ledger.projections.projector import Projector, event_loader, handles
from ledger.projections.session import Session
from ledger.projections.views import (
    ActiveVersionChangedError,
    ConcurrentChangeError,
    InMemoryView,
    OnePositionViewError,
    ReadModelView,
)

__all__ = [
    "ActiveVersionChangedError",
    "AggregatePosition",
    "ConcurrentChangeError",
    "DynamoDBView",
    "GapError",
    "InMemoryView",
    "OnePositionViewError",
    "Outcome",
    "ParkedEvent",
    "Projector",
    "ReadModel",
    "ReadModelView",
    "Session",
    "event_loader",
    "handles",
]
