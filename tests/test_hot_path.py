"""The command's hot path: what a load and a save run, and what they skip."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from eventsourcing.application import project_aggregate as eventsourcing_projector
from eventsourcing.persistence import JSONTranscoder

from aggregates.application import Orders
from aggregates.order import Order
from ledger.domain import Aggregate, DomainEvent, given_metadata, project_aggregate
from ledger.metadata import metadata
from ledger.persistence import PydanticMapper
from ledger.snapshots import MeteredRepository

PRICE = Decimal("2.50")


def an_order() -> Order:
    order = Order.place(uuid.uuid4(), [], "EUR")
    order.add_item("p1", 2, PRICE)
    order.confirm()
    return order


def test_ledgers_projector_replays_as_eventsourcings_does() -> None:
    events = an_order().collect_events()

    replayed = project_aggregate(None, events)
    expected = eventsourcing_projector(None, events)

    assert replayed is not None
    assert expected is not None
    assert vars(replayed) == vars(expected)


def test_repositories_replay_with_ledgers_projector(orders: Orders) -> None:
    defaults = MeteredRepository.get.__kwdefaults__ or {}
    order = an_order()
    orders.save(order)

    assert defaults["projector_func"] is project_aggregate
    assert orders.get_order(order.id).version == order.version


def test_an_event_class_runs_one_post_init_wrapper() -> None:
    post_init = DomainEvent.model_post_init

    assert Order.ItemAdded.model_post_init is post_init
    assert Order.OrderPlaced.model_post_init is post_init


def test_a_post_init_of_its_own_still_runs_with_the_bases() -> None:
    calls: list[str] = []

    class Noted(Aggregate.Event):
        def model_post_init(self, context: Any, /) -> None:
            super().model_post_init(context)
            calls.append("own")

    with metadata(correlation_id="request-1"):
        noted = Noted(
            originator_id=uuid.uuid4(),
            originator_version=1,
            timestamp=Noted.create_timestamp(),
        )

    assert calls == ["own"]
    assert noted.metadata.correlation_id == "request-1"


def test_saving_an_event_of_default_metadata_does_not_build_it() -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    event = an_order().collect_events()[-1]

    stored = mapper.to_stored_event(event)

    assert given_metadata(event) is None
    assert b"_meta" not in stored.state
    assert mapper.to_domain_event(stored).metadata == event.metadata
