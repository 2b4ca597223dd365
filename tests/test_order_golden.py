"""Stored events of every schema version, kept in tests/golden, load with today's code.

Each golden file holds one event (or snapshot) exactly as stored: its topic and
its state bytes (UTF-8 JSON text), with what it must load as. Files at a
class's current version were written by that code; ``order_placed_v1.json``
was written by hand in the v1 shape, as its ``about`` says. A file with a
``metadata`` key stored its event's metadata (``"_meta"`` in the state);
the files without one were stored before events had metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, StoredEvent
from eventsourcing.utils import resolve_topic

from aggregates.order import Order
from ledger.metadata import event_id
from ledger.persistence import PydanticMapper

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.json"), key=lambda path: path.name)
# Older versions are upcast on reading, so only current ones are written again.
CURRENT_FILES = [
    path
    for path in FILES
    if (golden := json.loads(path.read_text()))["class_version"]
    == resolve_topic(golden["topic"]).class_version
]
MAPPER = PydanticMapper(transcoder=JSONTranscoder())
STORED_TYPES = [
    Order.OrderPlaced,
    Order.ItemAdded,
    Order.ItemRemoved,
    Order.OrderConfirmed,
    Order.OrderShipped,
    Order.OrderCancelled,
    Order.Snapshot,
]


def load(path: Path) -> tuple[dict, StoredEvent]:
    golden = json.loads(path.read_text())
    stored = StoredEvent(
        originator_id=UUID(golden["originator_id"]),
        originator_version=golden["originator_version"],
        topic=golden["topic"],
        state=golden["state"].encode(),
    )
    return golden, stored


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_golden_stored_event_loads_through_todays_code(path):
    golden, stored = load(path)

    event = MAPPER.to_domain_event(stored)

    assert event.model_dump(mode="json") == golden["loads_as"]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_golden_stored_event_loads_with_its_stored_metadata_or_none(path):
    golden, stored = load(path)
    first_of_its_chain = {
        "correlation_id": event_id(stored),
        "causation_id": None,
        "headers": {},
    }

    event = MAPPER.to_domain_event(stored)

    assert event.metadata.model_dump() == golden.get("metadata", first_of_its_chain)


def test_a_golden_file_keeps_stored_metadata():
    assert any("metadata" in json.loads(path.read_text()) for path in FILES)


@pytest.mark.parametrize("path", CURRENT_FILES, ids=lambda path: path.stem)
def test_golden_at_the_current_version_is_still_written_byte_for_byte(path):
    _, stored = load(path)

    assert MAPPER.to_stored_event(MAPPER.to_domain_event(stored)) == stored


@pytest.mark.parametrize("stored_type", STORED_TYPES, ids=lambda t: t.__qualname__)
def test_every_schema_version_of_every_stored_type_has_a_golden_file(stored_type):
    goldens = [json.loads(path.read_text()) for path in FILES]
    versions = {
        golden["class_version"]
        for golden in goldens
        if resolve_topic(golden["topic"]) is stored_type
    }

    assert versions == set(range(1, stored_type.class_version + 1))
