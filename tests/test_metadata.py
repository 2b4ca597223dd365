"""Event metadata: set from a context, carried by policies, stored beside the state."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import (
    JSONTranscoder,
    MapperDeserialisationError,
    StoredEvent,
    Tracking,
)
from eventsourcing.utils import get_topic
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from aggregates.application import Orders
from aggregates.order import Order, OrderStatus
from aggregates.payment import Payment
from aggregates.payments import Payments
from ledger.domain import Aggregate, AggregateState
from ledger.domain import Snapshot as BaseSnapshot
from ledger.metadata import (
    EventMetadata,
    Reply,
    Request,
    caused_by,
    consequence_of,
    current_metadata,
    event_id,
    metadata,
)
from ledger.persistence import METADATA, PydanticMapper
from ledger.projections import InMemoryView, Projector, ReadModel, Session, handles
from tests.test_saga_fulfilment import TEA as TEA_ID
from tests.test_saga_fulfilment import open_shop

TEA = {"product_id": "tea", "quantity": 1, "price": Decimal("4.50")}
MAPPER = PydanticMapper(transcoder=JSONTranscoder())


def placed_order(**place: Any) -> Order.OrderPlaced:
    (placed,) = Order.place(uuid4(), **place).collect_events()
    return placed


def stored_state(event: Any) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(MAPPER.to_stored_event(event).state)
    return state


# Set from a context -------------------------------------------------------------------


def test_events_created_in_a_context_carry_its_correlation_id_and_headers():
    with metadata(correlation_id="request-1", headers={"user": "ada"}):
        order = Order.place(uuid4(), [TEA])

    placed, added = order.collect_events()
    assert placed.metadata == added.metadata
    assert added.metadata == EventMetadata(
        correlation_id="request-1", causation_id=None, headers={"user": "ada"}
    )


def test_an_event_created_outside_any_context_is_the_first_of_its_own_chain():
    placed = placed_order()

    assert placed.metadata == EventMetadata(
        correlation_id=f"{placed.originator_id}/1", causation_id=None, headers={}
    )
    assert event_id(placed) == f"{placed.originator_id}/1"


def test_a_context_without_a_correlation_id_starts_one_its_events_share():
    with metadata(headers={"user": "ada"}) as first:
        one = placed_order()
        two = placed_order()
    with metadata() as second:
        three = placed_order()

    assert one.metadata.correlation_id == two.metadata.correlation_id
    assert one.metadata.correlation_id == first.correlation_id
    assert UUID(first.correlation_id)
    assert three.metadata.correlation_id == second.correlation_id
    assert second.correlation_id != first.correlation_id


def test_nested_contexts_inherit_what_they_do_not_set_and_merge_headers():
    with metadata(correlation_id="outer", headers={"user": "ada", "via": "web"}):
        with metadata(causation_id="cause/1", headers={"via": "batch"}):
            inner = placed_order()
        outer = placed_order()
    after = placed_order()

    assert inner.metadata == EventMetadata(
        correlation_id="outer",
        causation_id="cause/1",
        headers={"user": "ada", "via": "batch"},
    )
    assert outer.metadata.headers == {"user": "ada", "via": "web"}
    assert outer.metadata.causation_id is None
    assert current_metadata() is None
    assert after.metadata.correlation_id == event_id(after)


def test_a_context_is_left_even_when_its_block_raises():
    with pytest.raises(RuntimeError), metadata(correlation_id="failed"):
        raise RuntimeError

    assert current_metadata() is None


def test_metadata_is_no_field_and_plays_no_part_in_equality():
    with metadata(correlation_id="request-1", headers={"user": "ada"}):
        placed = placed_order()
    same = Order.OrderPlaced.model_validate(placed.model_dump())

    assert "metadata" not in placed.model_dump()
    assert same.metadata != placed.metadata
    assert same == placed
    assert hash(same) == hash(placed)


def test_metadata_is_immutable():
    with metadata(headers={"user": "ada"}):
        placed = placed_order()

    with pytest.raises(ValidationError, match="frozen"):
        placed.metadata.correlation_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        placed.metadata.headers["user"] = "eve"
    assert placed.metadata.headers == {"user": "ada"}


def test_a_snapshot_takes_no_metadata_from_the_context():
    order = Order.place(uuid4())
    with metadata(headers={"user": "ada"}):
        snapshot = Order.Snapshot.take(order)

    assert snapshot.metadata.headers == {}
    assert METADATA not in stored_state(snapshot)


# caused_by ----------------------------------------------------------------------------


def test_caused_by_continues_the_events_chain():
    with metadata(correlation_id="request-1", headers={"user": "ada"}):
        cause = placed_order()

    with caused_by(cause, headers={"service": "billing"}) as made:
        effect = placed_order()

    assert effect.metadata == made
    assert effect.metadata == EventMetadata(
        correlation_id="request-1",
        causation_id=event_id(cause),
        headers={"user": "ada", "service": "billing"},
    )


def test_caused_by_an_event_first_of_its_chain_correlates_with_that_event():
    cause = placed_order()

    with caused_by(cause):
        effect = placed_order()

    assert effect.metadata.correlation_id == event_id(cause)
    assert effect.metadata.causation_id == event_id(cause)


# A reply continues its request's chain ------------------------------------------------


def requested_payment(**context: Any) -> Payment:
    """A payment requested inside ``metadata(**context)``, its events collected."""
    with metadata(**context):
        payment = Payment.request(uuid4(), Decimal("9.00"), "EUR")
    payment.collect_events()
    return payment


def test_a_reply_outside_any_context_continues_its_requests_chain():
    with metadata(correlation_id="checkout-1", headers={"user": "ada"}):
        payment = Payment.request(uuid4(), Decimal("9.00"), "EUR")
    [requested] = payment.collect_events()

    payment.settle(approved=True)

    [charged] = payment.collect_events()
    assert charged.metadata == consequence_of(requested)
    assert charged.metadata == EventMetadata(
        correlation_id="checkout-1",
        causation_id=event_id(requested),
        headers={"user": "ada"},
    )


def test_a_reply_in_another_context_keeps_its_requests_chain_and_adds_headers():
    payment = requested_payment(correlation_id="checkout-2", headers={"user": "ada"})

    with metadata(correlation_id="webhook-9", headers={"user": "eve", "via": "hook"}):
        payment.settle(approved=False)

    [declined] = payment.collect_events()
    assert declined.metadata == EventMetadata(
        correlation_id="checkout-2",
        causation_id=f"{payment.id}/1",
        headers={"user": "ada", "via": "hook"},
    )


def test_an_event_that_is_no_reply_takes_the_context_as_before():
    payment = requested_payment(correlation_id="checkout-3")
    payment.settle(approved=True)
    payment.collect_events()

    with metadata(correlation_id="operator-1"):
        payment.refund()

    [refunded] = payment.collect_events()
    assert refunded.metadata == EventMetadata(correlation_id="operator-1")


class QuoteState(AggregateState):
    product_id: str
    price: Decimal | None


class Quote(Aggregate):
    """Asks a supplier for a price; the supplier answers later."""

    class Asked(Aggregate.Created, Request):
        product_id: str

        def apply(self, aggregate: Quote) -> None:
            aggregate.product_id = self.product_id
            aggregate.price = None

    class Answered(Aggregate.Event, Reply):
        price: Decimal

        def apply(self, aggregate: Quote) -> None:
            aggregate.price = self.price

    class Noted(Aggregate.Event):
        """Neither a request nor a reply."""

    class Snapshot(BaseSnapshot):
        state: QuoteState

    @classmethod
    def ask(cls, product_id: str) -> Quote:
        return cls._create(cls.Asked, product_id=product_id)

    def answer(self, price: Decimal) -> None:
        self.trigger_event(self.Answered, price=price)


def test_a_reply_on_an_aggregate_restored_from_a_snapshot_continues_its_request():
    with metadata(correlation_id="checkout-4", headers={"user": "ada"}):
        quote = Quote.ask("tea")
    [asked] = quote.collect_events()
    quote.trigger_event(Quote.Noted)  # the request is not the latest event
    quote.collect_events()
    stored = MAPPER.to_stored_event(Quote.Snapshot.take(quote))

    restored = MAPPER.to_domain_event(stored).mutate(None)
    restored.answer(Decimal("4.50"))

    [answered] = restored.collect_events()
    assert answered.metadata == EventMetadata(
        correlation_id="checkout-4",
        causation_id=event_id(asked),
        headers={"user": "ada"},
    )


def test_a_snapshot_of_an_aggregate_without_a_request_stores_no_metadata():
    order = Order.place(uuid4(), [TEA])
    order.collect_events()

    restored = MAPPER.to_domain_event(
        MAPPER.to_stored_event(Order.Snapshot.take(order))
    ).mutate(None)

    assert METADATA not in stored_state(Order.Snapshot.take(order))
    assert "_reply_metadata" not in vars(restored)


def test_a_reply_loaded_from_dynamodb_continues_its_request(dynamodb_env):
    payments = Payments(env=dynamodb_env)
    order_id = uuid4()
    with metadata(correlation_id="checkout-5", headers={"user": "ada"}):
        payments.request(order_id, Decimal("9.00"), "EUR")

    payments.settle(order_id, approved=True, idempotency_key=f"gateway/{order_id}")

    requested, charged = payments.repository.event_store.get(Payment.id_for(order_id))
    payments.close()
    assert charged.metadata == EventMetadata(
        correlation_id="checkout-5",
        causation_id=event_id(requested),
        headers={"user": "ada"},
    )


def causes(event: Any, by_id: dict[str, Any]) -> list[Any]:
    """Return ``event`` and its causes, back to one caused by no event."""
    chain = [event]
    while chain[-1].metadata.causation_id is not None:
        chain.append(by_id[chain[-1].metadata.causation_id])
    return chain


def test_every_event_of_a_shipped_orders_story_continues_the_orders_chain(
    dynamodb_env,
):
    shop = open_shop(dynamodb_env)
    with metadata(correlation_id="checkout-6", headers={"user": "ada"}):
        order_id = shop.place({TEA_ID: 2})  # placed, then confirmed
    shop.run()
    shop.answer(order_id, approved=True)  # the gateway's webhook: no context
    shop.run()

    order_events = list(shop.orders.repository.event_store.get(order_id))
    story = [
        *order_events,
        *shop.fulfilment.repository.event_store.get(shop.saga(order_id).id),
        *shop.warehouse.repository.event_store.get(
            shop.warehouse.get_reservation(order_id).id
        ),
        *shop.payments.repository.event_store.get(Payment.id_for(order_id)),
    ]
    shop.close()
    by_id = {event_id(event): event for event in story}
    shipped = order_events[-1]
    assert shop.orders.get_order(order_id).status is OrderStatus.SHIPPED
    assert {event.metadata.correlation_id for event in story} == {"checkout-6"}
    assert {tuple(event.metadata.headers.items()) for event in story} == {
        (("user", "ada"),)
    }
    for event in story:  # each chain ends at one of the order's own events
        assert causes(event, by_id)[-1] in order_events[:3]
    assert [type(event).__name__ for event in causes(shipped, by_id)] == [
        "OrderShipped",
        "ShipOrder",
        "Charged",
        "Requested",
        "RequestPayment",
        "StockReserved",
        "ReserveStock",
        "OrderConfirmed",
    ]


# Stored beside the state --------------------------------------------------------------


def test_only_metadata_beyond_the_default_is_stored_under_its_own_key():
    outside = placed_order()
    with metadata(correlation_id="request-1"):
        correlated = placed_order()
    with caused_by(correlated, headers={"user": "ada"}):
        caused = placed_order()

    assert METADATA not in stored_state(outside)
    assert stored_state(correlated)[METADATA] == {"correlation_id": "request-1"}
    assert stored_state(caused)[METADATA] == {
        "correlation_id": "request-1",
        "causation_id": event_id(correlated),
        "headers": {"user": "ada"},
    }
    assert set(stored_state(caused)) - {METADATA} == set(stored_state(outside))


texts = st.text(min_size=1, max_size=40)


@given(
    correlation_id=texts,
    causation_id=st.none() | texts,
    headers=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
)
def test_any_metadata_round_trips_through_the_mapper(
    correlation_id, causation_id, headers
):
    with metadata(
        correlation_id=correlation_id, causation_id=causation_id, headers=headers
    ):
        placed = placed_order()

    restored = MAPPER.to_domain_event(MAPPER.to_stored_event(placed))

    assert restored.metadata == placed.metadata
    assert list(restored.metadata.headers) == list(headers)


def test_an_event_stored_before_metadata_existed_loads_first_of_its_own_chain():
    state = b'{"timestamp":"2025-03-14T09:01:00Z","reason":"changed mind"}'
    stored = StoredEvent(uuid4(), 4, get_topic(Order.OrderCancelled), state)

    event = MAPPER.to_domain_event(stored)

    assert event.metadata == EventMetadata(
        correlation_id=f"{stored.originator_id}/4", causation_id=None, headers={}
    )


def test_reading_an_event_never_takes_the_readers_context():
    stored = MAPPER.to_stored_event(placed_order())

    with metadata(correlation_id="reader", headers={"user": "eve"}):
        event = MAPPER.to_domain_event(stored)

    assert event.metadata.correlation_id == event_id(event)
    assert event.metadata.headers == {}


def test_malformed_stored_metadata_is_a_deserialisation_error():
    state = b'{"timestamp":"2025-03-14T09:01:00Z","reason":"r","_meta":["x"]}'
    stored = StoredEvent(uuid4(), 4, get_topic(Order.OrderCancelled), state)

    with pytest.raises(MapperDeserialisationError, match="not an object"):
        MAPPER.to_domain_event(stored)


class Parcel(Aggregate):
    class Weighed(Aggregate.Event):
        """Version 2 weighs in grams; version 1 weighed in kilograms."""

        class_version = 2
        grams: int
        states_upcast: ClassVar[list[dict[str, Any]]] = []

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            Parcel.Weighed.states_upcast.append(dict(state))
            state["grams"] = state.pop("kilograms") * 1000


def test_metadata_never_reaches_an_upcaster():
    meta = b'{"correlation_id":"request-1","headers":{"user":"ada"}}'
    state = b'{"timestamp":"2025-03-14T09:01:00Z","kilograms":2,"_meta":' + meta + b"}"
    stored = StoredEvent(uuid4(), 2, get_topic(Parcel.Weighed), state)

    weighed = MAPPER.to_domain_event(stored)

    assert Parcel.Weighed.states_upcast == [
        {"timestamp": "2025-03-14T09:01:00Z", "kilograms": 2}
    ]
    assert weighed.grams == 2000
    assert weighed.metadata.headers == {"user": "ada"}


# On DynamoDB, through a policy, to projectors and the CLI ---------------------------


def test_metadata_set_by_a_context_is_stored_and_read_back_on_dynamodb(orders):
    with metadata(correlation_id="request-1", headers={"user": "ada"}):
        order_id = orders.place_order(uuid4(), [TEA])
    orders.confirm(order_id)

    placed, added, confirmed = [
        orders.mapper.to_domain_event(stored)
        for stored in orders.recorder.select_events(order_id)
    ]

    assert placed.metadata == added.metadata
    assert added.metadata == EventMetadata(
        correlation_id="request-1", headers={"user": "ada"}
    )
    assert confirmed.metadata.correlation_id == event_id(confirmed)
    assert confirmed.metadata.headers == {}


def reorder_when_cancelled(app: Orders, event: Any) -> None:
    """A policy: a cancelled order is placed again, as a new order, for review."""
    if isinstance(event, Order.OrderCancelled):
        cancelled = app.get_order(event.originator_id)
        with caused_by(event, headers={"policy": "reorder"}):
            app.place_order(cancelled.customer_id, [TEA])


def test_caused_by_chains_correlation_and_causation_across_aggregates(orders):
    with metadata(correlation_id="request-1", headers={"user": "ada"}):
        first = orders.place_order(uuid4(), [TEA])
        orders.cancel(first, "wrong address")
    last = orders.recorder.max_notification_id()
    history = [
        orders.mapper.to_domain_event(notification)
        for notification in orders.recorder.select_notifications(start=1, limit=last)
    ]

    for event in history:
        reorder_when_cancelled(orders, event)

    cancelled = history[-1]
    reordered = [
        orders.mapper.to_domain_event(notification)
        for notification in orders.recorder.select_notifications(
            start=last + 1, limit=10
        )
    ]
    assert [type(event) for event in reordered] == [Order.OrderPlaced, Order.ItemAdded]
    assert reordered[0].originator_id != first
    assert event_id(cancelled) == f"{first}/3"
    for event in reordered:
        assert event.metadata == EventMetadata(
            correlation_id="request-1",
            causation_id=event_id(cancelled),
            headers={"user": "ada", "policy": "reorder"},
        )


class ConfirmedBy(ReadModel):
    """Who confirmed an order, and in which request."""

    key_field: ClassVar[str] = "order_id"

    order_id: UUID
    user: str | None
    correlation_id: str


class AuditProjector(Projector):
    name = "Audit"

    @handles(Order.OrderConfirmed)
    def confirmed(self, event: Any, models: Session) -> None:
        models.put(
            ConfirmedBy(
                order_id=event.originator_id,
                user=event.metadata.headers.get("user"),
                correlation_id=event.metadata.correlation_id,
            )
        )


def test_a_projector_handler_sees_each_events_metadata(orders):
    order_id = orders.place_order(uuid4(), [TEA])
    with metadata(correlation_id="request-2", headers={"user": "ada"}):
        orders.confirm(order_id)
    projector = AuditProjector(InMemoryView())

    for notification in orders.recorder.select_notifications(start=1, limit=100):
        event = orders.mapper.to_domain_event(notification)
        projector.process_event(event, Tracking(orders.name, notification.id))

    assert Session(projector.view).get(ConfirmedBy, order_id) == ConfirmedBy(
        order_id=order_id, user="ada", correlation_id="request-2"
    )


@pytest.fixture
def caused_order(dynamodb_env: dict[str, str]) -> tuple[uuid.UUID, Any]:
    """An order placed by user ada as caused by another order's event."""
    orders = Orders()
    with metadata(correlation_id="request-3", headers={"user": "ada"}):
        cause = placed_order()
    with caused_by(cause):
        order_id = orders.place_order(uuid4(), [TEA])
    orders.close()
    return order_id, cause


def test_events_show_prints_each_events_metadata(ledger, caused_order):
    order_id, cause = caused_order

    done = ledger("events", "show", str(order_id))

    assert done.returncode == 0, done.stderr
    for column in ("correlation", "causation", "headers"):
        assert column in done.stdout
    assert "request-3" in done.stdout
    assert event_id(cause) in done.stdout
    assert "user=ada" in done.stdout


def test_events_show_json_has_each_events_metadata(ledger, caused_order):
    order_id, cause = caused_order

    done = ledger("events", "show", str(order_id), "--json")

    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert [event["metadata"] for event in shown["events"]] == 2 * [
        {
            "correlation_id": "request-3",
            "causation_id": event_id(cause),
            "headers": {"user": "ada"},
        }
    ]
