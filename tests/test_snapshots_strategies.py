"""Snapshot strategies: when each snapshots, and that snapshots never change a load."""

from __future__ import annotations

import logging
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from orders_support import make_orders, orders_env_fixture  # noqa: F401 - the orders_env fixture

from aggregates.order import Order, OrderState
from aggregates.strategies import order_scripts
from ledger.domain import Snapshot
from ledger.snapshots import (
    AfterLoadOfMoreThan,
    AppendStats,
    EveryNBytes,
    EveryNEvents,
    Never,
    SnapshottingApplication,
)
from ledger.testing import replay

POPO = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
APPLE = {"product_id": "apple", "quantity": 1, "price": Decimal("2.50")}


def snapshot_versions(orders, order_id):
    return [s.originator_version for s in orders.snapshots.get(order_id)]


def appended(first, last, stored_bytes=0, stored_bytes_before=0):
    return AppendStats(first, last, stored_bytes, stored_bytes_before)


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [(1, 2, False), (1, 3, True), (3, 3, True), (4, 5, False), (5, 7, True)],
)
def test_every_n_events_snapshots_when_a_save_reaches_a_multiple_of_n(
    first, last, expected
):
    assert EveryNEvents(3).after_save(appended(first, last)) is expected


def test_every_n_bytes_counts_the_bytes_read_at_load_and_the_bytes_appended():
    strategy = EveryNBytes(100)

    assert not strategy.after_save(
        appended(5, 5, stored_bytes=40, stored_bytes_before=59)
    )
    assert strategy.after_save(appended(5, 5, stored_bytes=40, stored_bytes_before=60))


def test_every_n_events_snapshots_the_order_at_each_multiple():
    with make_orders(POPO, snapshot_strategies={Order: EveryNEvents(2)}) as orders:
        order_id = orders.place_order(uuid4(), [APPLE])  # versions 1, 2
        orders.add_item(order_id, "fig", 1, Decimal(1))  # 3
        orders.confirm(order_id)  # 4

        assert snapshot_versions(orders, order_id) == [2, 4]


def test_every_n_bytes_snapshots_once_the_bytes_since_the_last_snapshot_reach_n():
    with make_orders(POPO, snapshot_strategies={Order: EveryNBytes(400)}) as orders:
        order_id = orders.place_order(uuid4(), [APPLE])
        sizes = [len(s.state) for s in orders.recorder.select_events(order_id)]
        while sum(sizes) < 400:
            orders.add_item(order_id, "apple", 1, Decimal("2.50"))
            sizes.append(len(orders.recorder.select_events(order_id)[-1].state))

        assert snapshot_versions(orders, order_id) == [len(sizes)]


def test_after_load_of_more_than_k_snapshots_right_after_a_long_load():
    strategies = {Order: AfterLoadOfMoreThan(3)}
    with make_orders(POPO, snapshot_strategies=strategies) as orders:
        order_id = orders.place_order(uuid4(), [APPLE])  # 2 events
        orders.add_item(order_id, "fig", 1, Decimal(1))  # loads 2, saves the 3rd
        orders.confirm(order_id)  # loads 3, saves the 4th
        assert snapshot_versions(orders, order_id) == []

        orders.get_order(order_id)  # loads 4 > 3

        assert snapshot_versions(orders, order_id) == [4]


def test_a_load_after_a_snapshot_reads_only_the_events_past_it():
    strategies = {Order: AfterLoadOfMoreThan(1)}
    with make_orders(POPO, snapshot_strategies=strategies) as orders:
        order_id = orders.place_order(uuid4(), [APPLE])
        orders.get_order(order_id)  # snapshots at 2
        orders.confirm(order_id)  # reads 0 events past the snapshot, saves 3

        orders.get_order(order_id)

        assert orders.repository.pop_last_load(order_id).events == 1


def test_never_takes_no_snapshot_and_needs_no_snapshot_store():
    with make_orders(POPO, snapshot_strategies={Order: Never()}) as orders:
        order_id = orders.place_order(uuid4(), [APPLE])
        orders.confirm(order_id)

        assert orders.snapshots is None


def test_a_strategy_for_an_aggregate_without_a_snapshot_class_is_rejected_at_once():
    class Plain(Order):
        Snapshot = None

    with pytest.raises(TypeError, match="has no nested Snapshot class"):
        make_orders(POPO, snapshot_strategies={Plain: EveryNEvents(1)})


class StaleOrderState(OrderState):
    """A state model that forgot an attribute: every snapshot of it fails."""


class StaleSnapshotOrder(Order):
    class Snapshot(Snapshot):
        state: StaleOrderState

    @classmethod
    def place_stale(cls) -> StaleSnapshotOrder:
        order = cls._create(cls.OrderPlaced, customer_id=uuid4(), currency="USD")
        order.gift_wrap = True  # an attribute the stale state model does not know
        return order


def test_a_failed_snapshot_does_not_fail_the_command_and_is_logged(caplog):
    app = SnapshottingApplication(
        env=POPO | {"MAPPER_TOPIC": "ledger.persistence:PydanticMapper"},
        snapshot_strategies={StaleSnapshotOrder: EveryNEvents(1)},
    )
    order = StaleSnapshotOrder.place_stale()

    with caplog.at_level(logging.ERROR, logger="ledger.snapshots"):
        app.save(order)

    assert app.repository.get(order.id).version == 1
    assert "Failed to snapshot StaleSnapshotOrder" in caplog.text


STRATEGIES = st.sampled_from(
    [
        EveryNEvents(1),
        EveryNEvents(3),
        EveryNBytes(200),
        AfterLoadOfMoreThan(2),
        Never(),
    ]
)


@given(script=order_scripts(), strategy=STRATEGIES)
def test_snapshot_plus_tail_equals_full_replay_at_every_version(
    orders_env, script, strategy
):
    with make_orders(orders_env, snapshot_strategies={Order: strategy}) as orders:
        order_id = script.run(orders)
        orders.get_order(order_id)  # a load, for the after-load strategy
        history = list(orders.events.get(order_id))

        for version in range(1, len(history) + 1):
            assert orders.repository.get(order_id, version=version) == replay(
                history[:version]
            )
        assert orders.get_order(order_id) == replay(history)
