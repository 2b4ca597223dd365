"""Read-model type names, dead letters and the control table, on DynamoDB Local.

A read model is stored under its ``type_name`` (the class name unless set),
so a class renamed with its old type name keeps reading what was stored; two
classes of one type name in one view are refused; the view alone knows where
dead letters are kept; and the view's control table has one interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, ProgrammingError, Tracking

from aggregates.application import Orders
from aggregates.order import Order
from ledger.projections import (
    AggregatePosition,
    DynamoDBView,
    InMemoryView,
    ParkedEvent,
    Projector,
    ReadModel,
    ReadModelView,
    Session,
    handles,
)
from ledger.projections.dynamodb import open_view
from ledger.projections.views import parked_aggregate
from projections.orders import CustomerOrders, OrderSummary

ITEM = {"product_id": "tea", "quantity": 1, "price": Decimal(2)}


class Tally(ReadModel):
    """Orders placed: the read model as first released."""

    type_name = "Tally"

    id: str
    placed: int = 0


class PlacedOrders(ReadModel):
    """The same read model after its class was renamed from ``Tally``."""

    type_name = "Tally"

    id: str
    placed: int = 0


class TallyProjector(Projector):
    """Counts placed orders with ``Tally``."""

    name = "Tallies"

    @handles(Order.OrderPlaced)
    def placed(self, event: Any, models: Session) -> None:
        tally = models.get(Tally, "all") or Tally(id="all")
        models.put(tally.model_copy(update={"placed": tally.placed + 1}))


class BrokenProjector(Projector):
    """A handler that always fails: every event it sees is parked."""

    name = "Broken"
    retry_delays = ()

    @handles(Order.OrderPlaced)
    def placed(self, event: Any, models: Session) -> None:
        raise ValueError


def project(app: Orders, projector: Projector) -> None:
    """Feed every notification to the projector, as the ProjectionRunner does."""
    for notification in app.recorder.select_notifications(start=1, limit=1000):
        event = app.mapper.to_domain_event(notification)
        projector.process_event(event, Tracking(app.name, notification.id))


@pytest.fixture
def tallies(dynamodb_env: dict[str, str]) -> DynamoDBView:
    """The view of ``TallyProjector``, on this test's tables."""
    made: DynamoDBView = open_view(TallyProjector, dynamodb_env)
    return made


# Type names -------------------------------------------------------------------------


def test_a_renamed_class_with_the_old_type_name_reads_what_was_stored(
    orders: Orders, tallies: DynamoDBView, dynamodb_env: dict[str, str]
) -> None:
    orders.place_order(uuid4(), [ITEM])
    orders.place_order(uuid4(), [ITEM])
    project(orders, TallyProjector(tallies))
    reopened: DynamoDBView = open_view(TallyProjector, dynamodb_env)

    renamed = Session(reopened).get(PlacedOrders, "all")

    assert renamed == PlacedOrders(id="all", placed=2)
    assert set(reopened.load_all()) >= {"Tally#all"}


def test_the_type_name_defaults_to_the_class_name_so_stored_keys_stay() -> None:
    assert OrderSummary.storage_key("o1") == "OrderSummary#o1"
    assert CustomerOrders.storage_key("c1") == "CustomerOrders#c1"
    assert AggregatePosition.storage_key("a1") == "AggregatePosition#a1"
    assert ParkedEvent.storage_key("a1") == "ParkedEvent#a1"


def test_the_type_name_is_not_inherited() -> None:
    class Subtally(Tally):
        pass

    assert Subtally.type_name == "Subtally"


def test_two_classes_of_one_type_name_in_one_view_are_refused(
    tallies: DynamoDBView,
) -> None:
    session = Session(tallies)
    session.put(Tally(id="all", placed=1))

    with pytest.raises(ProgrammingError, match="type name 'Tally'"):
        session.get(PlacedOrders, "all")


def test_a_handler_using_a_taken_type_name_stops_the_feed_and_parks_nothing(
    orders: Orders, tallies: DynamoDBView
) -> None:
    class Clashing(TallyProjector):
        @handles(Order.OrderPlaced)
        def placed(self, event: Any, models: Session) -> None:
            models.get(Tally, "all")
            models.get(PlacedOrders, "all")

    orders.place_order(uuid4(), [ITEM])

    with pytest.raises(ProgrammingError):
        project(orders, Clashing(tallies))
    assert tallies.parked_events() == []


@pytest.mark.parametrize("taken", ["Tracking", "AggregatePosition", "ParkedEvent"])
def test_a_type_name_ledger_uses_is_refused_at_class_definition(taken: str) -> None:
    with pytest.raises(TypeError, match="Set type_name"):
        type("Mine", (ReadModel,), {"type_name": taken, "__module__": __name__})


def test_a_type_name_with_the_key_separator_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match="without '#'"):

        class Ambiguous(ReadModel):
            type_name = "Order#Lines"


# Dead letters -------------------------------------------------------------------


@pytest.fixture(params=["dynamodb", "memory"])
def any_view(request: pytest.FixtureRequest) -> Iterator[ReadModelView]:
    """The projection's view on DynamoDB Local, and in memory."""
    if request.param == "memory":
        yield InMemoryView()
    else:
        env = request.getfixturevalue("dynamodb_env")
        yield open_view(BrokenProjector, env)


def test_parked_events_are_listed_by_the_view_oldest_first(
    orders: Orders, any_view: ReadModelView
) -> None:
    first = orders.place_order(uuid4(), [ITEM])
    second = orders.place_order(uuid4(), [ITEM])

    project(orders, BrokenProjector(any_view))

    parked = any_view.parked_events()
    assert [p.aggregate_id for p in parked] == [str(first), str(second)]
    assert [p.attempts for p in parked] == [1, 1]


def test_the_dynamodb_view_keeps_parked_events_apart_from_read_models(
    orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    view: DynamoDBView = open_view(BrokenProjector, dynamodb_env)
    order_id = orders.place_order(uuid4(), [ITEM])

    project(orders, BrokenProjector(view))

    key = ParkedEvent.storage_key(str(order_id))
    table, item_key = view.item_key(key)
    stored = view.connection.call("get_item", TableName=table, Key=item_key)
    assert (table, parked_aggregate(key)) == (view.parked_table_name, str(order_id))
    assert "Item" in stored
    assert key in view.load_all()


# The control table ------------------------------------------------------------------


def test_follow_active_moves_a_view_to_the_version_readers_switched_to(
    tallies: DynamoDBView, dynamodb_env: dict[str, str]
) -> None:
    assert tallies.table_version == 1
    other: DynamoDBView = open_view(TallyProjector, dynamodb_env)
    other.create_version_table(2)

    left = other.control.switch_active(2)
    tallies.follow_active()

    assert (left, tallies.table_version) == (1, 2)


def test_an_in_memory_view_has_nothing_to_follow() -> None:
    view = InMemoryView()

    view.follow_active()

    assert view.load_all() == {}


def test_a_second_rebuild_cannot_start_while_one_is_in_progress(
    tallies: DynamoDBView,
) -> None:
    tallies.control.start_rebuild(2)

    with pytest.raises(IntegrityError):
        tallies.control.start_rebuild(3)


def test_only_the_run_that_owns_a_rebuild_can_end_it(tallies: DynamoDBView) -> None:
    tallies.control.start_rebuild(2)
    tallies.control.take_over_rebuild(2, "first")
    tallies.control.take_over_rebuild(2, "second")

    with pytest.raises(IntegrityError):
        tallies.control.end_rebuild("first")
    tallies.control.end_rebuild("second")

    assert tallies.get_control("rebuild") is None


def test_shard_checkpoints_are_kept_and_cleared_by_the_view(
    tallies: DynamoDBView,
) -> None:
    tallies.control.save_shard_checkpoint("shard-1", "42")

    assert tallies.control.shard_checkpoint("shard-1") == "42"
    tallies.control.clear_shard_checkpoints()
    assert tallies.control.shard_checkpoint("shard-1") is None
