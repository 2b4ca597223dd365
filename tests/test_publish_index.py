"""The publisher's index mode: a consumer of the application sequence, run by a Runner.

The source is the one every index consumer reads (``IndexSource``): the
index of an ``indexed`` application, or the sequence a ``sequence``
application's saves write. These tests use the ``sequence`` ordering, whose
sequence is there as soon as a save returns (no indexer to run); the Lambda
handler on an indexed application is in ``tests/test_index_consumers.py``.
EventBridge is moto's server (``tests/test_publisher.py``); DynamoDB faults
go through ``tests/faults.py``'s proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from eventsourcing.persistence import OperationalError
from faults import CUT, DELAY, FaultProxy

from aggregates.application import Orders
from ledger.dynamodb import CorruptNotificationBatchError
from ledger.index_consumers import publication_handler
from ledger.projections.metrics import LAG, MemoryMetrics
from ledger.publishing import Publisher
from projections.integration import OrderEvents
from tests import test_publisher as publisher_tests
from tests.test_corrupt_batches import DAMAGE, damage_batch, three_orders
from tests.test_index_consumers import SCHEDULED, with_time_to_work
from tests.test_publisher import (
    NO_WAITING,
    PUBLISHED,
    RefusingClient,
    a_life_of_orders,
    expected_ids,
    ids,
)

DEADLINE = 30.0
EVENTS = 10
"""Events :func:`a_life_of_orders` saves: positions 1 to 10 of the sequence."""


# The publisher tests' fixtures: a local EventBridge, a bus, the environment.
eventbridge_endpoint = publisher_tests.eventbridge_endpoint
bus = publisher_tests.bus
publisher_env = publisher_tests.publisher_env


@pytest.fixture
def make_publisher(
    orders: Orders, publisher_env: dict[str, str]
) -> Callable[..., Publisher]:
    def make(application: Orders = orders, **env: str) -> Publisher:
        return Publisher(
            OrderEvents(),
            application,
            env={**publisher_env, **env},
            retry_delays=NO_WAITING,
        )

    return make


@pytest.fixture
def proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as made:
        yield made


@pytest.fixture
def through_proxy(publisher_env: dict[str, str], proxy: FaultProxy) -> Iterator[Orders]:
    """The Orders application with its DynamoDB requests through the proxy."""
    app = Orders(
        env={
            **publisher_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "1",
        }
    )
    yield app
    app.close()


def _writes_the_cursor(operation: str, _: int, body: bytes) -> bool:
    return operation == "PutItem" and b'"cursor"' in body


def _writes_a_dead_letter(operation: str, _: int, body: bytes) -> bool:
    return operation == "PutItem" and b'"dead_letter"' in body


def test_the_runner_records_the_publishers_lag_under_its_publication(
    orders, make_publisher, bus
):
    a_life_of_orders(orders)
    metrics = MemoryMetrics()
    runner = make_publisher().runner(page_size=4, metrics=metrics)

    assert runner.drain() == EVENTS

    # after each batch: the head, less the cursor
    assert metrics.values(LAG) == [6, 2, 0]
    assert {m.projection for m in metrics.measurements} == {OrderEvents.name}
    assert runner.lag == 0


def test_waiting_for_a_position_returns_once_it_is_published(
    orders, make_publisher, bus
):
    publisher = make_publisher()

    with publisher.runner(interval=0.05) as running:
        order_ids = a_life_of_orders(orders)  # saved while it runs
        running.wait(EVENTS, timeout=DEADLINE)

        assert publisher.position() == EVENTS
        assert sorted(ids(bus.received())) == sorted(expected_ids(order_ids))


def test_waiting_without_a_running_thread_publishes_up_to_the_position(
    orders, make_publisher, bus
):
    order_ids = a_life_of_orders(orders)

    make_publisher().runner().wait(EVENTS, timeout=DEADLINE)

    assert sorted(ids(bus.received())) == sorted(expected_ids(order_ids))


def test_a_drain_starts_no_batch_once_its_deadline_passed(
    orders, make_publisher, bus, eventbridge_endpoint
):
    a_life_of_orders(orders)
    with FaultProxy(eventbridge_endpoint) as slow_eventbridge:
        slow_eventbridge.on("PutEvents", fault=DELAY(1.5), times=None)
        publisher = make_publisher(
            EVENTBRIDGE_ENDPOINT_URL=slow_eventbridge.endpoint_url
        )

        done = publisher.follow_index(page_size=4, deadline=time.monotonic() + 1.0)

    # the first batch was started before the deadline; none after it
    assert done == 4
    assert publisher.position() == 4


def test_a_drain_rides_out_a_dynamodb_outage_and_publishes_everything_once(
    orders, through_proxy, make_publisher, proxy, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher(through_proxy)
    proxy.outage(1.5)
    refused = proxy.refused

    done = publisher.follow_index(deadline=time.monotonic() + DEADLINE)

    assert proxy.refused > refused  # it read during the outage, and waited
    assert done == EVENTS
    published = ids(bus.received())
    assert sorted(published) == sorted(expected_ids(order_ids))


def test_a_cursor_write_lost_after_put_events_publishes_the_batch_again(
    orders, through_proxy, make_publisher, proxy, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher(through_proxy)
    lost = proxy.on(_writes_the_cursor, fault=CUT)

    done = publisher.follow_index(deadline=time.monotonic() + DEADLINE)

    assert lost.fired == 1
    assert (done, publisher.position()) == (EVENTS, EVENTS)
    published = ids(bus.received())
    # at least once: the batch went out twice, with the same ids
    assert set(published) == expected_ids(order_ids)
    assert len(published) == 2 * PUBLISHED


def test_a_publisher_that_dies_before_its_cursor_moves_is_published_again_on_restart(
    orders, through_proxy, make_publisher, proxy, bus
):
    order_ids = a_life_of_orders(orders)
    dying = make_publisher(through_proxy)
    proxy.on(_writes_the_cursor, fault=CUT, times=None)

    with pytest.raises(OperationalError):
        dying.follow_index()  # no deadline: nothing rides the failure out

    first = ids(bus.received())
    proxy.clear_rules()
    restarted = make_publisher()

    assert restarted.follow_index() == EVENTS
    second = ids(bus.received())
    assert sorted(first) == sorted(second) == sorted(expected_ids(order_ids))


def test_entries_that_keep_failing_are_dead_lettered_and_the_cursor_goes_past_them(
    orders, make_publisher, bus
):
    order_ids = a_life_of_orders(orders)
    publisher = make_publisher()
    shipped = str(order_ids["shipped"])
    publisher.client = RefusingClient(
        publisher.client,
        lambda entry: "InternalFailure" if shipped in entry["Detail"] else None,
    )

    assert publisher.follow_index() == EVENTS

    letters = publisher.dead_letters()
    assert [(d.aggregate_id, d.version, d.attempts) for d in letters] == [
        (shipped, 1, len(NO_WAITING) + 1),
        (shipped, 3, len(NO_WAITING) + 1),
        (shipped, 3, len(NO_WAITING) + 1),
        (shipped, 4, len(NO_WAITING) + 1),
    ]
    assert len(bus.received()) == PUBLISHED - 4
    assert publisher.position() == EVENTS


def test_the_cursor_stops_before_an_event_whose_dead_letter_could_not_be_stored(
    orders, through_proxy, make_publisher, proxy, bus
):
    order_ids = a_life_of_orders(orders)
    cancelled = str(order_ids["cancelled"])
    publisher = make_publisher(through_proxy)
    publisher.client = RefusingClient(
        publisher.client,
        lambda entry: (
            "MalformedDetail" if entry["DetailType"] == "OrderCancelled.v1" else None
        ),
    )
    proxy.on(_writes_a_dead_letter, fault=CUT, times=None)

    done = publisher.follow_index()

    # positions 1-4: the shipped order; 5-6 the cancelled one's first two;
    # its cancellation (7) was refused for good, and its dead letter not stored
    assert (done, publisher.position()) == (6, 6)
    assert publisher.consumer.not_done == 1
    assert publisher.dead_letters() == []

    proxy.clear_rules()

    assert publisher.follow_index() == EVENTS - 6
    [letter] = publisher.dead_letters()
    assert (letter.aggregate_id, letter.version) == (cancelled, 3)
    assert publisher.consumer.not_done == 0


def test_follow_index_raises_at_a_batch_of_the_sequence_it_cannot_read(
    orders, make_publisher, bus
):
    three_orders(orders)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])
    publisher = make_publisher()

    with pytest.raises(CorruptNotificationBatchError) as raised:
        publisher.follow_index(page_size=2)

    assert raised.value.last_position == 4
    assert publisher.position() == 2  # the batch before it was published
    assert [e["detail-type"] for e in bus.received()] == ["OrderPlaced.v1"]


def test_a_publication_invocation_stopped_at_an_unreadable_batch_fails(
    orders, publisher_env, bus
):
    three_orders(orders)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])
    handler = publication_handler(OrderEvents, Orders, publisher_env)

    with pytest.raises(CorruptNotificationBatchError):
        handler(SCHEDULED, with_time_to_work(30))

    # the batch before it was published, and the cursor stays after it
    assert Publisher(OrderEvents(), orders, env=publisher_env).position() == 2
    assert [e["detail-type"] for e in bus.received()] == ["OrderPlaced.v1"]
