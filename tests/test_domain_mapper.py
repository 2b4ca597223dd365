"""PydanticMapper: exact round trips, upcasting, and eventsourcing's settings."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from enum import StrEnum
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate as DataclassAggregate
from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    MapperDeserialisationError,
    StoredEvent,
    UUIDAsHex,
)
from eventsourcing.utils import Environment, TopicError, get_topic
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, ConfigDict

from aggregates.order import Order
from aggregates.strategies import order_histories
from ledger.domain import Aggregate
from ledger.dynamodb import DynamoDBFactory
from ledger.persistence import PydanticMapper, StoredVersionTooNewError
from ledger.testing import aware_datetimes, replay

MAPPER_TOPIC = get_topic(PydanticMapper)


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    cost: Decimal
    made: AwareDatetime


class Crate(Aggregate):
    class Packed(Aggregate.Event):
        amount: Decimal
        at: AwareDatetime
        ref: UUID
        colour: Colour
        parts: tuple[Part, ...]
        note: str | None


def mapper() -> PydanticMapper:
    return PydanticMapper(transcoder=JSONTranscoder())


exact_decimals = st.decimals(allow_nan=False, allow_infinity=False)


packed_events = st.builds(
    Crate.Packed,
    originator_id=st.uuids(),
    originator_version=st.integers(min_value=1, max_value=2**31),
    timestamp=aware_datetimes(),
    amount=exact_decimals,
    at=aware_datetimes(),
    ref=st.uuids(),
    colour=st.sampled_from(Colour),
    parts=st.lists(
        st.builds(Part, sku=st.text(), cost=exact_decimals, made=aware_datetimes()),
        max_size=3,
    ).map(tuple),
    note=st.none() | st.text(),
)


@given(packed_events)
def test_round_trip_is_exact_for_decimal_datetime_uuid_enum_and_nested_models(event):
    restored = mapper().to_domain_event(mapper().to_stored_event(event))

    assert restored == event
    assert str(restored.amount) == str(event.amount)  # exponent kept: 1.10 stays 1.10
    assert restored.at.utcoffset() == event.at.utcoffset()
    assert [str(p.cost) for p in restored.parts] == [str(p.cost) for p in event.parts]
    assert restored.colour is event.colour


@settings(max_examples=50)
@given(order_histories())
def test_every_order_event_and_snapshot_round_trips(events):
    order = replay(events)
    snapshot = Order.Snapshot.take(order)

    for item in [*events, snapshot]:
        assert mapper().to_domain_event(mapper().to_stored_event(item)) == item


def test_stored_state_leaves_out_what_the_stored_event_holds():
    order = Order.place(
        uuid4(), [{"product_id": "a", "quantity": 1, "price": Decimal("1.10")}]
    )
    _, added = order.collect_events()

    stored = mapper().to_stored_event(added)

    assert json.loads(stored.state) == {
        "timestamp": added.timestamp.isoformat().replace("+00:00", "Z"),
        "product_id": "a",
        "quantity": 1,
        "price": "1.10",
    }


def test_stored_state_carries_class_version_only_above_one():
    order = Order.place(
        uuid4(), [{"product_id": "a", "quantity": 1, "price": Decimal(1)}]
    )
    placed, added = order.collect_events()

    assert json.loads(mapper().to_stored_event(placed).state)["class_version"] == 2
    assert "class_version" not in json.loads(mapper().to_stored_event(added).state)


def stored_order_placed(state: dict[str, object]) -> StoredEvent:
    return StoredEvent(
        originator_id=uuid4(),
        originator_version=1,
        topic=get_topic(Order.OrderPlaced),
        state=json.dumps(state).encode(),
    )


V1_STATE = {
    "timestamp": "2023-05-01T09:00:00Z",
    "originator_topic": "aggregates.order:Order",
    "customer_id": "6d9a3f8e-2c1b-4e5f-9a7d-3b2c1d0e9f8a",
}


def test_a_stored_v1_order_placed_is_upcast_to_usd():
    placed = mapper().to_domain_event(stored_order_placed(V1_STATE))

    assert placed.currency == "USD"


def test_a_stored_version_newer_than_the_code_is_rejected_clearly():
    stored = stored_order_placed({**V1_STATE, "currency": "EUR", "class_version": 3})

    with pytest.raises(
        StoredVersionTooNewError, match=r"class_version 3 is newer than"
    ):
        mapper().to_domain_event(stored)


def test_a_corrupt_stored_state_raises_mapper_deserialisation_error():
    stored = StoredEvent(uuid4(), 1, get_topic(Order.OrderPlaced), b"{not json")

    with pytest.raises(MapperDeserialisationError, match=r"Order\.OrderPlaced"):
        mapper().to_domain_event(stored)


class Ledgers(Application[UUID]):
    """A plain eventsourcing application: only its env chooses the mapper."""


def test_the_mapper_is_selected_by_the_mapper_topic_env_key():
    app = Ledgers(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo", "MAPPER_TOPIC": MAPPER_TOPIC}
    )
    order = Order.place(
        uuid4(), [{"product_id": "a", "quantity": 2, "price": Decimal("9.99")}]
    )

    app.save(order)

    assert isinstance(app.mapper, PydanticMapper)
    assert app.repository.get(order.id) == order


def test_events_round_trip_under_cipher_and_compressor():
    app = Ledgers(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.popo",
            "MAPPER_TOPIC": MAPPER_TOPIC,
            "CIPHER_KEY": AESCipher.create_key(16),
            "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        }
    )
    order = Order.place(
        uuid4(), [{"product_id": "secret-sku", "quantity": 1, "price": Decimal(5)}]
    )

    app.save(order)

    stored = app.recorder.select_events(order.id)
    assert all(b"secret-sku" not in s.state for s in stored)
    assert app.repository.get(order.id) == order


class Note(DataclassAggregate):
    def __init__(self, text: str) -> None:
        self.text = text


def test_dataclass_events_still_go_through_eventsourcings_transcoder():
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    note = Note("hello")
    (created,) = note.collect_events()
    pydantic_mapper = PydanticMapper(transcoder=transcoder)

    restored = pydantic_mapper.to_domain_event(pydantic_mapper.to_stored_event(created))

    assert restored.text == "hello"
    assert restored.timestamp == created.timestamp


def test_a_stored_topic_of_a_module_not_imported_imports_nothing() -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    assert "this" not in sys.modules  # importing it prints the Zen of Python
    stored = StoredEvent(uuid4(), 1, "this:Happened", b"{}")

    with pytest.raises(TopicError, match="has not imported"):
        mapper.to_domain_event(stored)

    assert "this" not in sys.modules


def test_a_stored_topic_naming_something_other_than_a_class_is_refused() -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    stored = StoredEvent(uuid4(), 1, "os:system", b"{}")

    with pytest.raises(TopicError, match="not an event class"):
        mapper.to_domain_event(stored)


EVENTS_MODULE = """
from ledger.domain import DomainEvent


class Happened(DomainEvent):
    what: str
"""


def test_topic_modules_are_imported_so_their_stored_topics_resolve(
    tmp_path, monkeypatch, dynamodb_endpoint
) -> None:
    name = f"events_{uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(EVENTS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    state = b'{"what": "it", "timestamp": "2026-11-29T00:00:00+00:00"}'
    stored = StoredEvent(uuid4(), 1, f"{name}:Happened", state)
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    with pytest.raises(TopicError, match="has not imported"):
        mapper.to_domain_event(stored)

    DynamoDBFactory(
        Environment(
            "app", {"DYNAMODB_ENDPOINT_URL": dynamodb_endpoint, "TOPIC_MODULES": name}
        )
    )

    assert mapper.to_domain_event(stored).what == "it"


def test_a_topic_module_that_cannot_be_imported_is_named(dynamodb_endpoint) -> None:
    env = {"DYNAMODB_ENDPOINT_URL": dynamodb_endpoint, "TOPIC_MODULES": "no_such_mod"}

    with pytest.raises(OSError, match="TOPIC_MODULES names module 'no_such_mod'"):
        DynamoDBFactory(Environment("app", env))
