"""Handlers are found by the annotation of their event parameter, or by name."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Tracking

from aggregates.application import Orders
from aggregates.order import Order
from ledger.projections import InMemoryView, Projector, ReadModel, Session, handles
from ledger.projections.dispatch import handlers_of
from tests.test_projections_core import ITEM


class Seen(ReadModel):
    id: str
    events: tuple[str, ...] = ()


def note(models: Session, event: Any, by: str) -> None:
    seen = models.get(Seen, "all") or Seen(id="all")
    models.put(Seen(id="all", events=(*seen.events, f"{by}:{type(event).__name__}")))


class Annotated(Projector):
    name = "Annotated"

    @handles
    def placed(self, event: Order.OrderPlaced, models: Session) -> None:
        note(models, event, "placed")

    @handles
    def closed(
        self, event: Order.OrderConfirmed | Order.OrderCancelled, models: Session
    ) -> None:
        note(models, event, "closed")

    @handles(Order.ItemAdded)
    def added(self, event: Any, models: Session) -> None:
        note(models, event, "added")


class Refined(Annotated):
    name = "Refined"

    @handles
    def confirmed_only(self, event: Order.OrderConfirmed, models: Session) -> None:
        note(models, event, "refined")


def seen_after_an_order_is_placed_and_confirmed(projector_class: type[Projector]):
    orders = Orders(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    order_id = orders.place_order(uuid4(), [ITEM])
    orders.confirm(order_id)
    view = InMemoryView()
    for notification in orders.recorder.select_notifications(start=1, limit=10):
        projector_class(view).process_event(
            orders.mapper.to_domain_event(notification),
            Tracking(orders.name, notification.id),
        )
    seen = Session(view).get(Seen, "all")
    return seen.events if seen else ()


def test_handlers_are_found_by_the_annotation_of_their_event_parameter():
    assert seen_after_an_order_is_placed_and_confirmed(Annotated) == (
        "placed:OrderPlaced",
        "added:ItemAdded",
        "closed:OrderConfirmed",
    )


def test_a_union_annotation_handles_each_of_its_classes():
    found = handlers_of(Annotated)

    assert found[Order.OrderConfirmed] is found[Order.OrderCancelled]


def test_a_subclass_replaces_the_handler_of_a_class_and_keeps_the_others():
    assert seen_after_an_order_is_placed_and_confirmed(Refined) == (
        "placed:OrderPlaced",
        "added:ItemAdded",
        "refined:OrderConfirmed",
    )


def test_a_handler_annotated_with_no_event_class_is_refused_at_class_definition():
    with pytest.raises(TypeError, match="annotate its event parameter"):

        class Untyped(Projector):
            name = "Untyped"

            @handles
            def anything(self, event: Any, models: Session) -> None:
                pass


def test_an_annotation_that_cannot_be_resolved_says_what_to_do():
    with pytest.raises(
        TypeError, match=r"cannot be resolved .* @handles\(EventClass\)"
    ):

        class Unresolved(Projector):
            name = "Unresolved"

            @handles
            def anything(self, event: NotImported, models: Session) -> None:  # noqa: F821
                pass


def test_handles_with_no_classes_is_refused():
    with pytest.raises(TypeError, match="names no event class"):
        handles()


NOT_AN_EVENT = r"'str'>, which is not a domain event class"


def test_a_handler_annotated_with_a_class_that_is_not_an_event_is_refused():
    with pytest.raises(TypeError, match=NOT_AN_EVENT):

        class ByAnnotation(Projector):
            name = "ByAnnotation"

            @handles
            def text(self, event: str, models: Session) -> None:
                pass


def test_a_handler_named_for_a_class_that_is_not_an_event_is_refused():
    with pytest.raises(TypeError, match=NOT_AN_EVENT):

        class ByName(Projector):
            name = "ByName"

            @handles(str)
            def text(self, event: Any, models: Session) -> None:
                pass


def test_two_handlers_of_one_event_class_in_one_projector_are_refused():
    with pytest.raises(
        TypeError, match=r"Twice\.first and Twice\.second both handle .*OrderPlaced"
    ):

        class Twice(Projector):
            name = "Twice"

            @handles
            def first(self, event: Order.OrderPlaced, models: Session) -> None:
                pass

            @handles(Order.OrderPlaced)
            def second(self, event: Any, models: Session) -> None:
                pass
