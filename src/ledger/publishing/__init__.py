"""Publishing integration events to Amazon EventBridge from the events stream.

* :mod:`ledger.publishing.events` — integration events (versioned pydantic
  models with a stable ``detail-type``, ``source`` and dedupe ``id``) and
  the :class:`Publication` that maps domain events to them;
* :mod:`ledger.publishing.schema_files` — their JSON Schema files;
* :mod:`ledger.publishing.publisher` — the :class:`Publisher` (PutEvents in
  batches, retries, dead letters; at least once) and its Lambda handler;
* :mod:`ledger.publishing.deadletters` — what could not be published;
* :mod:`ledger.publishing.schema` — the publisher's table.
"""

from __future__ import annotations

from ledger.publishing.deadletters import DeadLetter
from ledger.publishing.events import (
    IntegrationEvent,
    Publication,
    event_id,
    translates,
)
from ledger.publishing.publisher import Publisher, PublishReport, lambda_handler

__all__ = [
    "DeadLetter",
    "IntegrationEvent",
    "Publication",
    "PublishReport",
    "Publisher",
    "event_id",
    "lambda_handler",
    "translates",
]
