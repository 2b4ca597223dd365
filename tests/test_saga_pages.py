"""A saga application commits a page of a leader's events once, not per event.

On a total order (``sequence`` or ``indexed`` leaders), a page of upstream
events is decided event by event and committed in one transaction: the
sagas' new events and one tracking position. The steps of a page of its own
sequence are sent, then one position committed, and the parked table is
asked once per page, not once per step. Exactly once must survive the
commit failing: cut, its answer lost, or the process dying midway through a
page, between the parts of a page too large for one transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from aggregates.fulfilment import Fact, OrderFulfilment
from aggregates.order import OrderStatus
from ledger.dynamodb import Meter, connection_of, measure
from ledger.sagas import PARKED_TABLE
from tests import test_saga_fulfilment as fulfilment_tests
from tests.faults import CUT, LOSE_RESPONSE, FaultProxy
from tests.test_saga_fulfilment import (
    TEA,
    Crash,
    Shop,
    events_of,
    on_hand,
    open_shop,
)

ORDERS = 10


@contextmanager
def requests_by_table(app: Any) -> Iterator[tuple[Meter, list[tuple[str, str]]]]:
    """Meter a block of ``app``'s work and note each call as (operation, table)."""
    calls: list[tuple[str, str]] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, params.get("TableName", "")))

    events = connection_of(app).client.meta.events
    events.register("provide-client-params.dynamodb", note)
    try:
        with measure(app) as meter:
            yield meter, calls
    finally:
        events.unregister("provide-client-params.dynamodb", note)


# The fulfilment tests' fixture: every application on one ordering, then the other.
shop_env = fulfilment_tests.shop_env


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[Shop]:
    made = open_shop(shop_env, {TEA: 1000})
    yield made
    made.close()


def confirmed(shop: Shop, count: int) -> list[uuid.UUID]:
    """Place and confirm ``count`` orders of one tea each; index them."""
    order_ids = [shop.place({TEA: 1}) for _ in range(count)]
    shop.index()
    return order_ids


def saga_events(shop: Shop, order_id: uuid.UUID) -> list[str]:
    return events_of(shop.fulfilment, shop.saga(order_id).id)


def test_a_page_of_upstream_events_is_committed_in_one_transaction(shop):
    order_ids = confirmed(shop, ORDERS)

    with measure(shop.fulfilment) as meter:
        shop.fulfilment.pull_and_process(shop.orders.name)

    assert meter.calls["TransactWriteItems"] == 1  # not one per order
    assert meter.calls["UpdateItem"] == 0  # the tracking is in it
    for order_id in order_ids:
        assert saga_events(shop, order_id) == ["Started", "ReserveStock"]
    tracking = shop.fulfilment.recorder.max_tracking_id(shop.orders.name)
    assert tracking == shop.orders.recorder.max_notification_id()


def test_the_steps_of_a_page_ask_the_parked_table_once_and_commit_once(shop):
    order_ids = confirmed(shop, ORDERS)
    shop.fulfilment.pull_and_process(shop.orders.name)
    shop.index()  # an indexed saga application's steps, in its own sequence
    parked = shop.fulfilment.parked_steps.table_name
    tracking_table = shop.fulfilment.recorder.tracking_table_name

    with requests_by_table(shop.fulfilment) as (_, calls):
        shop.fulfilment.pull_and_process(shop.fulfilment.name)

    assert calls.count(("Query", parked)) == 1  # not one per step
    assert calls.count(("UpdateItem", tracking_table)) == 1  # one position
    assert parked.endswith(PARKED_TABLE)
    for order_id in order_ids:
        assert shop.warehouse.get_reservation(order_id) is not None


def test_two_events_of_one_saga_in_one_page_decide_in_order(shop):
    # Confirmed, then cancelled, before the saga reads either: both in one
    # page. The cancellation must find the saga the confirmation began.
    order_id = shop.place({TEA: 1})
    shop.orders.cancel(order_id, "changed my mind")
    shop.index()

    with measure(shop.fulfilment) as meter:
        shop.fulfilment.pull_and_process(shop.orders.name)

    assert meter.calls["TransactWriteItems"] == 1
    assert Fact.ORDER_CANCELLED in shop.saga(order_id).facts
    shop.run()
    assert on_hand(shop, TEA) == 1000  # nothing stays reserved for it


class Raced(OrderFulfilment):
    """Lets another saga process save ``raced``'s saga while deciding its page.

    It does so when deciding an event of order ``at``, after ``raced``'s.
    """

    name = "OrderFulfilment"  # the same application
    raced: uuid.UUID | None = None
    at: uuid.UUID | None = None
    other: OrderFulfilment | None = None

    def react(self, domain_event: Any) -> Any:
        order_id = getattr(domain_event, "order_id", None)
        if self.raced is not None and self.other is not None and order_id == self.at:
            saga = self.other.fulfilment(self.raced)
            assert saga is not None
            saga.note("noted by another process")
            self.other.save(saga)
            self.raced = None
        return super().react(domain_event)


def test_a_page_refused_by_a_conflict_is_decided_again_one_per_commit(shop, caplog):
    order_ids = confirmed(shop, 3)
    shop.run()  # reserved; each payment requested
    for order_id in order_ids:
        shop.answer(order_id, approved=True)
    shop.index()
    noted_before = events_of(shop.fulfilment, shop.saga(order_ids[1]).id).count("Noted")
    racing = shop.restarted(Raced)
    assert isinstance(racing.fulfilment, Raced)
    racing.fulfilment.raced = order_ids[1]
    racing.fulfilment.at = order_ids[2]
    racing.fulfilment.other = OrderFulfilment(env=shop.env)

    with caplog.at_level(logging.INFO, logger="ledger.sagas"):
        racing.fulfilment.pull_and_process(racing.payments.name)  # does not raise

    assert any("one per commit" in r.getMessage() for r in caplog.records)
    for order_id in order_ids:
        assert Fact.PAYMENT_CHARGED in racing.saga(order_id).facts
    assert "noted by another process" in racing.saga(order_ids[1]).facts
    noted = events_of(racing.fulfilment, racing.saga(order_ids[1]).id).count("Noted")
    assert noted == noted_before + 2  # the other process's fact, then the charge
    racing.fulfilment.other.close()
    racing.close()


class DiesMidPage(OrderFulfilment):
    """Dies while deciding the ``dies_at``-th upstream event it is given."""

    name = "OrderFulfilment"  # the same application
    dies_at = 0

    def react(self, domain_event: Any) -> Any:
        type(self).dies_at -= 1
        if type(self).dies_at == 0:
            raise Crash("mid page")
        return super().react(domain_event)


def assert_each_decided_once(shop: Shop, order_ids: list[uuid.UUID]) -> None:
    for order_id in order_ids:
        assert saga_events(shop, order_id)[:2] == ["Started", "ReserveStock"]
        assert saga_events(shop, order_id).count("ReserveStock") == 1


def test_a_process_dying_midway_through_a_page_commits_none_of_it(shop_env):
    shop = open_shop(shop_env, {TEA: 1000})
    order_ids = confirmed(shop, ORDERS)
    DiesMidPage.dies_at = ORDERS // 2
    dying = shop.restarted(DiesMidPage)

    with pytest.raises(Crash):
        dying.fulfilment.pull_and_process(dying.orders.name)

    assert dying.fulfilment.recorder.max_tracking_id(dying.orders.name) is None
    assert all(dying.fulfilment.fulfilment(o) is None for o in order_ids)
    again = dying.restarted()
    again.run()
    assert_each_decided_once(again, order_ids)
    assert on_hand(again, TEA) == 1000 - ORDERS
    again.close()


@pytest.fixture
def proxy(dynamodb_env: dict[str, str]) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_env["DYNAMODB_ENDPOINT_URL"]) as made:
        yield made


def through(proxy: FaultProxy, shop: Shop) -> Shop:
    """The same shop, its saga process restarted to reach DynamoDB through ``proxy``."""
    shop.env = {**shop.env, "ORDERFULFILMENT_DYNAMODB_ENDPOINT_URL": proxy.endpoint_url}
    return shop.restarted()


def finish(shop: Shop, order_ids: list[uuid.UUID]) -> None:
    """Run every saga to its end; check each order shipped, its stock taken once."""
    shop.run()
    assert_each_decided_once(shop, order_ids)
    for order_id in order_ids:
        shop.answer(order_id, approved=True)
    shop.run()
    assert on_hand(shop, TEA) == 1000 - len(order_ids)
    for order_id in order_ids:
        assert shop.orders.get_order(order_id).status is OrderStatus.SHIPPED


# Enough orders for two transactions (2 saga events each, at most 99 in one).
TWO_PARTS = 60


def test_a_page_whose_second_part_cannot_commit_keeps_the_first_only(shop_env, proxy):
    shop = open_shop(shop_env, {TEA: 1000})
    order_ids = confirmed(shop, TWO_PARTS)
    # Every commit after the first is cut: two attempts fail as plainly as
    # the default ten, without the backoffs between them.
    shop.env = {**shop.env, "ORDERFULFILMENT_DYNAMODB_MAX_ATTEMPTS": "2"}
    shop = through(proxy, shop)
    proxy.on("TransactWriteItems", fault=CUT, nth=2, times=None)

    with pytest.raises(OperationalError):
        shop.fulfilment.pull_and_process(shop.orders.name)

    committed = shop.fulfilment.recorder.max_tracking_id(shop.orders.name)
    assert committed is not None  # the first part, with its own last position
    assert committed < (shop.orders.recorder.max_notification_id() or 0)
    decided = [o for o in order_ids if shop.fulfilment.fulfilment(o) is not None]
    assert 1 < len(decided) < TWO_PARTS  # a part of many decisions, not one
    proxy.clear_rules()  # the network heals; the runner polls again
    finish(shop, order_ids)
    shop.close()


@pytest.mark.slow  # about 30 s: sixty sagas, twice
def test_a_page_commit_whose_answer_is_lost_applies_each_decision_once(shop_env, proxy):
    shop = open_shop(shop_env, {TEA: 1000})
    order_ids = confirmed(shop, TWO_PARTS)
    shop = through(proxy, shop)
    rule = proxy.on("TransactWriteItems", fault=LOSE_RESPONSE, nth=2)

    finish(shop, order_ids)  # the runner rides out the lost answer

    assert rule.fired == 1
    shop.close()
