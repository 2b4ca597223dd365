"""Stored data never chooses what code is imported.

Every topic read from DynamoDB (an event's own topic, the aggregate topic of a
Created event, a snapshot's topic; pydantic and plain ``eventsourcing``
dataclass events alike) must name a class of a module the process has already
imported, or a registered topic. Each test stores an item through an
application, alters it in DynamoDB as an attacker with write access to the
table would, and reads it back: the module it names sits on ``sys.path`` and
leaves a marker file if it is ever imported.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as DataclassAggregate
from eventsourcing.persistence import Mapper
from eventsourcing.utils import Environment, TopicError, get_topic

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import DynamoDBFactory, schema
from ledger.dynamodb.client import DynamoDBConnection
from ledger.persistence import PydanticMapper
from ledger.snapshots import EveryNEvents

ITEM = {"product_id": "apple", "quantity": 1, "price": Decimal("0.50")}

PLANTED_MODULE = """
from pathlib import Path

Path({marker!r}).write_text("imported")


class Thing:
    '''Any class at all: importing this module is already the harm.'''
"""


@dataclass(frozen=True)
class Planted:
    """A module on ``sys.path`` that no one has imported, and its marker file."""

    module: str
    marker: Path

    @property
    def topic(self) -> str:
        return f"{self.module}:Thing"

    def assert_not_imported(self) -> None:
        assert not self.marker.exists()
        assert self.module not in sys.modules


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Planted]:
    module = f"planted_{uuid4().hex}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(PLANTED_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Planted(module, marker)
    sys.modules.pop(module, None)


def test_the_planted_module_leaves_its_marker_when_imported(planted: Planted) -> None:
    planted.assert_not_imported()

    importlib.import_module(planted.module)

    assert planted.marker.read_text() == "imported"


# --- altering stored items ---------------------------------------------------------


def key(aggregate_id: UUID, version: int) -> dict[str, Any]:
    return {
        schema.AGGREGATE_ID: {"S": str(aggregate_id)},
        schema.VERSION: {"N": str(version)},
    }


def tamper(
    connection: DynamoDBConnection,
    table: str,
    aggregate_id: UUID,
    version: int,
    *,
    topic: str | None = None,
    state: Callable[[dict[str, Any]], None] | None = None,
    new_id: UUID | None = None,
) -> None:
    """Rewrite a stored item's topic or state, in place or as a copy under new_id.

    ``state`` edits the decoded JSON state in place.
    """
    item = connection.call(
        "get_item", TableName=table, Key=key(aggregate_id, version), ConsistentRead=True
    )["Item"]
    if topic is not None:
        item[schema.TOPIC] = {"S": topic}
    if state is not None:
        decoded = json.loads(item[schema.STATE]["B"])
        state(decoded)
        item[schema.STATE] = {"B": json.dumps(decoded).encode()}
    if new_id is not None:
        item[schema.AGGREGATE_ID] = {"S": str(new_id)}
        item.pop(schema.POSITION, None)
    connection.call("put_item", TableName=table, Item=item)


def setter(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.update({name: value})


def events_table(app: Application[UUID]) -> tuple[DynamoDBConnection, str]:
    recorder: Any = app.recorder
    return recorder.connection, recorder.events_table_name


def snapshots_table(app: Application[UUID]) -> tuple[DynamoDBConnection, str]:
    assert app.snapshots is not None
    recorder: Any = app.snapshots.recorder
    return recorder.connection, recorder.events_table_name


# --- pydantic events and snapshots (the Orders application) -------------------------


def test_a_stored_event_topic_naming_a_module_not_imported_imports_nothing(
    orders: Orders, planted: Planted
) -> None:
    order_id = orders.place_order(uuid4(), [ITEM])
    tamper(*events_table(orders), order_id, 2, topic=planted.topic)

    with pytest.raises(TopicError, match=f"'{planted.module}', which this process"):
        orders.repository.get(order_id)

    planted.assert_not_imported()


def test_a_created_events_originator_topic_naming_a_module_not_imported_imports_nothing(
    orders: Orders, planted: Planted
) -> None:
    order_id = orders.place_order(uuid4(), [ITEM])
    copy_id = uuid4()
    tamper(
        *events_table(orders),
        order_id,
        1,
        state=setter("originator_topic", planted.topic),
        new_id=copy_id,
    )

    with pytest.raises(
        TopicError,
        match=rf"topic 'aggregates.order:Order.OrderPlaced', originator_id '?{copy_id}"
        rf".*: its originator_topic '{planted.topic}' names module '{planted.module}', "
        r"which this process has not imported.*Import the module",
    ):
        orders.repository.get(copy_id)

    planted.assert_not_imported()
    assert orders.repository.get(order_id).lines  # the original still loads


def test_a_created_events_originator_topic_must_name_an_aggregate_class(
    orders: Orders,
) -> None:
    order_id = orders.place_order(uuid4(), [ITEM])
    copy_id = uuid4()
    tamper(
        *events_table(orders),
        order_id,
        1,
        state=setter("originator_topic", "collections:OrderedDict"),
        new_id=copy_id,
    )

    with pytest.raises(TopicError, match=r"OrderedDict.*not an aggregate class"):
        orders.repository.get(copy_id)


@pytest.fixture
def snapshotting_orders(dynamodb_env: dict[str, str]) -> Iterator[Orders]:
    app = Orders(env=dynamodb_env, snapshot_strategies={Order: EveryNEvents(1)})
    yield app
    app.close()


def test_a_snapshots_topic_naming_a_module_not_imported_imports_nothing(
    snapshotting_orders: Orders, planted: Planted
) -> None:
    order_id = snapshotting_orders.place_order(uuid4(), [ITEM])
    healthy_id = snapshotting_orders.place_order(uuid4(), [ITEM])
    tamper(
        *snapshots_table(snapshotting_orders),
        order_id,
        2,
        state=setter("topic", planted.topic),
    )

    with pytest.raises(
        TopicError,
        match=rf"its topic '{planted.topic}' names module '{planted.module}', "
        r"which this process has not imported",
    ):
        snapshotting_orders.repository.get(order_id)

    planted.assert_not_imported()
    healthy = snapshotting_orders.repository.get(healthy_id)
    assert (healthy.version, len(healthy.lines)) == (2, 1)


# --- plain eventsourcing dataclass events, with no MAPPER_TOPIC ----------------------


class Note(DataclassAggregate):
    def __init__(self, text: str) -> None:
        self.text = text


class Notes(Application[UUID]):
    """A plain eventsourcing application: its env names no mapper."""


@pytest.fixture
def notes(dynamodb_env: dict[str, str]) -> Iterator[Notes]:
    app = Notes(env={**dynamodb_env, "IS_SNAPSHOTTING_ENABLED": "y"})
    yield app
    app.close()


def saved_note(app: Notes) -> UUID:
    note = Note("hello")
    app.save(note)
    return note.id


def test_on_dynamodb_the_default_mapper_checks_stored_topics(notes: Notes) -> None:
    assert type(notes.mapper) is PydanticMapper


def test_a_dataclass_events_topic_naming_a_module_not_imported_imports_nothing(
    notes: Notes, planted: Planted
) -> None:
    note_id = saved_note(notes)
    healthy_id = saved_note(notes)
    tamper(*events_table(notes), note_id, 1, topic=planted.topic)

    with pytest.raises(TopicError, match=f"'{planted.module}', which this process"):
        notes.repository.get(note_id)

    planted.assert_not_imported()
    assert notes.repository.get(healthy_id).text == "hello"


def test_a_dataclass_created_events_originator_topic_imports_nothing(
    notes: Notes, planted: Planted
) -> None:
    note_id = saved_note(notes)
    tamper(
        *events_table(notes),
        note_id,
        1,
        state=setter("originator_topic", planted.topic),
    )

    with pytest.raises(TopicError, match=rf"originator_topic '{planted.topic}'"):
        notes.repository.get(note_id)

    planted.assert_not_imported()


def test_a_dataclass_snapshots_topic_imports_nothing(
    notes: Notes, planted: Planted
) -> None:
    note_id = saved_note(notes)
    healthy_id = saved_note(notes)
    notes.take_snapshot(note_id)
    notes.take_snapshot(healthy_id)
    tamper(*snapshots_table(notes), note_id, 1, state=setter("topic", planted.topic))

    with pytest.raises(TopicError, match=rf"its topic '{planted.topic}'"):
        notes.repository.get(note_id)

    planted.assert_not_imported()
    assert notes.repository.get(healthy_id).text == "hello"


# --- the factory makes only mappers that check stored topics ------------------------


def test_a_mapper_topic_naming_a_mapper_that_does_not_check_topics_is_refused(
    dynamodb_endpoint: str,
) -> None:
    env = {
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "MAPPER_TOPIC": get_topic(Mapper),
    }
    factory = DynamoDBFactory(Environment("app", env))

    try:
        with pytest.raises(OSError, match=r"MAPPER_TOPIC.*does not check stored"):
            factory.mapper()
    finally:
        factory.close()
