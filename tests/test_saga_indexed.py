"""A saga application in ``indexed`` ordering: its saves touch no hot item.

In ``sequence`` ordering every save of the saga application (a decision with
its tracking, a timeout fired) also writes its notification batch and the
sequence item: one item every save updates. Indexed, a save writes its
events (and tracking) only; the indexer appends the sequence later. The
fulfilment paths with every application indexed run in
``tests/test_saga_fulfilment.py`` (``shop_env``'s ``indexed`` variants).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from ledger.dynamodb import Meter, connection_of, measure
from ledger.sagas import SagaRunner
from tests.test_saga_fulfilment import INDEXED, LATER, TEA, Shop, open_shop


@contextmanager
def tables_written(app: Any) -> Iterator[tuple[Meter, list[str]]]:
    """Meter a block of ``app``'s work and name each table it writes, per item."""
    written: list[str] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "TransactWriteItems":
            for action in params["TransactItems"]:
                [(kind, body)] = action.items()
                if kind != "ConditionCheck":
                    written.append(body["TableName"])
        elif model.name in {"PutItem", "UpdateItem", "DeleteItem"}:
            written.append(params["TableName"])

    events = connection_of(app).client.meta.events
    events.register("provide-client-params.dynamodb", note)
    try:
        with measure(app) as meter:
            yield meter, written
    finally:
        events.unregister("provide-client-params.dynamodb", note)


@pytest.fixture(params=["sequence", "indexed"])
def shop(
    request: pytest.FixtureRequest,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Shop]:
    env = dynamodb_env
    if request.param == "indexed":
        for key, value in INDEXED.items():
            monkeypatch.setenv(key, value)
        env = {**dynamodb_env, **INDEXED}
    made = open_shop(env)
    yield made
    made.close()


def test_an_indexed_saga_application_s_saves_write_no_sequence_item(shop):
    recorder = shop.fulfilment.recorder
    indexed = recorder.ordering == "indexed"
    order_id = shop.place({TEA: 1})
    shop.index()  # the Orders index holds the confirmation, to be pulled

    with tables_written(shop.fulfilment) as (decision, decision_tables):
        shop.fulfilment.pull_and_process(shop.orders.name)  # decides: reserve
    decided = shop.saga(order_id).version  # events of that first save
    shop.run()  # reserved: the payment is requested, its timeout scheduled
    saga = shop.saga(order_id)
    with tables_written(shop.fulfilment) as (firing, firing_tables):
        assert shop.fulfilment.fire_timeout(
            saga.id, "payment", datetime.now(UTC) + LATER
        )
    fired = shop.saga(order_id).version - saga.version

    events, tracking = recorder.events_table_name, recorder.tracking_table_name
    if indexed:  # the events (and the tracking) only: no item every save shares
        assert sorted(decision_tables) == sorted([events] * decided + [tracking])
        assert firing_tables == [events] * fired
        assert decision.items_written == decided + 1
        assert firing.items_written == fired
    else:  # the same saves write the sequence's batch and head items too
        assert decision_tables.count(recorder.notifications_table_name) == 2
        assert firing_tables.count(recorder.notifications_table_name) == 2


def test_a_runner_indexes_an_indexed_saga_application_itself_by_default(
    dynamodb_env, monkeypatch
):
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    shop = open_shop({**dynamodb_env, **INDEXED})
    order_id = shop.place({TEA: 1})
    shop.index()  # the leaders' indexes hold the order; in a deployment, theirs
    runner = SagaRunner(shop.fulfilment, [shop.orders, shop.warehouse, shop.payments])

    runner.poll()  # decides, indexes the decision, sends the reservation

    [indexer] = runner.indexers
    assert indexer.recorder is shop.fulfilment.recorder
    assert shop.warehouse.get_reservation(order_id) is not None
    assert SagaRunner(shop.fulfilment, [], indexers=()).indexers == []
    shop.close()
