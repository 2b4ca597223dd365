"""Answers cut in half on the way: retried, never read as "nothing there".

botocore does not hold a body to its ``Content-Length``: an answer whose
connection closes halfway through its body reaches it as a whole answer, and
its JSON parser reads a body that is not JSON as an empty answer. It retries
one whose ``x-amz-crc32`` checksum does not match, for DynamoDB's own API
only (not DynamoDB Streams'), and after its last attempt returns even that
one as a success. ledger refuses every such answer (``DynamoDBConnection``):
botocore retries it, and after its last attempt the caller gets
``OperationalError``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from eventsourcing.persistence import OperationalError
from faults import TRUNCATE, TRUNCATE_UNCHECKED, FaultProxy

from aggregates.application import Orders
from ledger.dynamodb import AmbiguousWriteError
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.sequence import SequenceFeed
from ledger.projections.streams import StreamPoller, run_polls
from projections.orders import OrderProjector, get_order_summary
from tests.test_projections_core import ITEM

ATTEMPTS = 3
"""DYNAMODB_MAX_ATTEMPTS here: every request is tried at most this often."""
DEADLINE = 30.0
STREAMS_OPERATIONS = {"DescribeStream", "GetShardIterator", "GetRecords"}


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds, failing with ``what`` after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.05)


@pytest.fixture
def proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture
def writer(dynamodb_env: dict[str, str]) -> Iterator[Orders]:
    """The Orders application talking to DynamoDB directly."""
    made = Orders(env=dynamodb_env)
    yield made
    made.close()


@pytest.fixture
def through_proxy(dynamodb_env: dict[str, str], proxy: FaultProxy) -> dict[str, str]:
    """The environment of an application whose DynamoDB is behind the proxy."""
    return {
        **dynamodb_env,
        "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
        "DYNAMODB_MAX_ATTEMPTS": str(ATTEMPTS),
    }


@pytest.fixture
def app(through_proxy: dict[str, str]) -> Iterator[Orders]:
    """The Orders application behind the proxy."""
    made = Orders(env=through_proxy)
    yield made
    made.close()


def sent(proxy: FaultProxy, operation: str, since: int = 0) -> list[object]:
    """The faults applied to each request of ``operation`` after ``since``."""
    return [fault for op, fault in proxy.requests[since:] if op == operation]


def test_a_query_answer_cut_in_half_once_is_retried_and_the_order_loads(
    writer, app, proxy
):
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    since = len(proxy.requests)
    proxy.on("Query", fault=TRUNCATE_UNCHECKED)

    order = app.get_order(order_id)

    assert order.version == 2  # placed, item added
    assert sent(proxy, "Query", since)[:2] == [TRUNCATE_UNCHECKED, None]


def test_a_get_item_answer_cut_in_half_once_is_retried_not_read_as_no_item(
    writer, app, proxy
):
    writer.place_order(uuid.uuid4(), [ITEM])  # positions 1 and 2
    since = len(proxy.requests)
    proxy.on("GetItem", fault=TRUNCATE_UNCHECKED)

    head = app.recorder.max_notification_id()

    assert head == 2
    assert sent(proxy, "GetItem", since) == [TRUNCATE_UNCHECKED, None]


def test_query_answers_cut_on_every_attempt_are_an_operational_error(
    writer, app, proxy
):
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    since = len(proxy.requests)
    proxy.on("Query", fault=TRUNCATE, times=None)

    with pytest.raises(OperationalError, match="arrived incomplete"):
        app.get_order(order_id)

    assert sent(proxy, "Query", since) == [TRUNCATE] * ATTEMPTS  # retried


def test_get_item_answers_cut_on_every_attempt_are_an_operational_error_not_none(
    writer, app, proxy
):
    writer.place_order(uuid.uuid4(), [ITEM])
    since = len(proxy.requests)
    proxy.on("GetItem", fault=TRUNCATE, times=None)

    with pytest.raises(OperationalError, match="arrived incomplete"):
        app.recorder.max_notification_id()

    assert sent(proxy, "GetItem", since) == [TRUNCATE] * ATTEMPTS


def test_a_save_whose_answer_is_cut_once_is_applied_once(writer, app, proxy):
    since = len(proxy.requests)
    proxy.on("TransactWriteItems", fault=TRUNCATE)

    order_id = app.place_order(uuid.uuid4(), [ITEM])  # the caller sees success

    assert writer.get_order(order_id).version == 2
    assert writer.recorder.max_notification_id() == 2  # saved once, not twice
    assert sent(proxy, "TransactWriteItems", since)[0] == TRUNCATE


def test_the_sequence_feed_rides_out_cut_answers_and_catches_up(
    dynamodb_env, writer, through_proxy, proxy
):
    feeding = Orders(env=through_proxy)
    feed = SequenceFeed(
        OrderProjector(open_view(OrderProjector, through_proxy), event_loader(feeding)),
        feeding,
    )
    readers = open_view(OrderProjector, dynamodb_env)
    first = writer.place_order(uuid.uuid4(), [ITEM])
    cuts = proxy.on("Query", fault=TRUNCATE, times=None)
    stop = threading.Event()
    running = threading.Thread(
        target=run_polls,
        args=(feed.poll, stop),
        kwargs={"interval": 0.05, "max_backoff": 0.2},
    )
    running.start()
    try:
        eventually(lambda: cuts.fired >= 3 * ATTEMPTS, "polls with cut answers")
        assert running.is_alive()  # it waits, as through an outage
        proxy.clear_rules()
        eventually(lambda: get_order_summary(readers, first) is not None, "caught up")
    finally:
        stop.set()
        running.join(DEADLINE)
        feeding.close()


def test_the_stream_poller_rides_out_cut_answers_and_catches_up(
    streamed, dynamodb_env, writer, through_proxy, proxy
):
    feeding = Orders(env=through_proxy)
    poller = StreamPoller(
        OrderProjector(open_view(OrderProjector, through_proxy), event_loader(feeding)),
        feeding,
    )
    readers = open_view(OrderProjector, dynamodb_env)
    first = writer.place_order(uuid.uuid4(), [ITEM])
    cuts = proxy.on(
        lambda op, _index, _body: op in STREAMS_OPERATIONS,
        fault=TRUNCATE,
        times=None,
    )
    stop = threading.Event()
    running = threading.Thread(
        target=poller.run,
        args=(stop,),
        kwargs={"interval": 0.05, "max_backoff": 0.2},
    )
    running.start()
    try:
        eventually(lambda: cuts.fired >= 3 * ATTEMPTS, "polls with cut answers")
        assert running.is_alive()
        proxy.clear_rules()
        eventually(lambda: get_order_summary(readers, first) is not None, "caught up")
    finally:
        stop.set()
        running.join(DEADLINE)
        feeding.close()


def test_a_get_records_answer_cut_once_does_not_close_the_shard(
    streamed, dynamodb_env, writer, through_proxy, proxy
):
    feeding = Orders(env=through_proxy)
    poller = StreamPoller(
        OrderProjector(open_view(OrderProjector, through_proxy), event_loader(feeding)),
        feeding,
    )
    readers = open_view(OrderProjector, dynamodb_env)
    first = writer.place_order(uuid.uuid4(), [ITEM])
    cut = proxy.on("GetRecords", fault=TRUNCATE)

    def polled_and_projected() -> bool:
        poller.poll()
        return get_order_summary(readers, first) is not None

    try:
        # A cut answer read as empty with no next iterator would mark the
        # shard closed and read to its end: the order would never arrive.
        eventually(polled_and_projected, "the order, after a cut GetRecords answer")
        assert cut.fired == 1
    finally:
        feeding.close()


def test_a_save_whose_every_answer_is_cut_is_ambiguous_and_its_key_makes_it_once(
    writer, app, proxy
):
    customer = uuid.uuid4()
    proxy.on("TransactWriteItems", fault=TRUNCATE, times=None)

    with pytest.raises(AmbiguousWriteError, match="may have been applied"):
        app.place_order(customer, [ITEM], idempotency_key="request-9")
    proxy.clear_rules()
    order_id = app.place_order(customer, [ITEM], idempotency_key="request-9")

    assert writer.get_order(order_id).customer_id == customer
    assert writer.recorder.max_notification_id() == 2  # placed, item: once
