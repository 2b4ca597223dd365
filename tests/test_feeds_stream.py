"""The stream side of the reader interface: the stream poller and the Lambda handler.

The stream poller is run as every feed is (``ledger.feeds.Polling``): it
drains until a deadline, riding out DynamoDB being unavailable, and starts
and stops in a thread. Its consumers are the reader interface's, fed
batches (one shard's records each). Records pushed by Lambda go through one
handler (``ledger.feeds.stream_handler``) whatever consumes them: a
projector, an ``eventsourcing`` follower, the publisher. Each answers
Lambda's partial batch response from the first record it did not finish on.
DynamoDB faults go through ``tests/faults.py``'s proxy; EventBridge is moto's
server (``tests/test_publisher.py``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError
from faults import CUT, SERVER_ERROR, FaultProxy

from aggregates.application import Orders
from ledger.dynamodb import schema as store_schema
from ledger.feeds import Batch, Progress, StreamPoller, stream_handler
from ledger.feeds.stream import sequence_number
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.followers import StreamFollower
from ledger.projections.streams import ProjectionConsumer, lambda_handler
from ledger.publishing import Publisher
from projections.integration import OrderEvents
from projections.orders import OrderProjector, get_order_summary
from tests import test_projections_followers as follower_tests
from tests import test_publisher as publisher_tests
from tests.test_faults_feeds import LambdaContext, lambda_records
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import _aggregate
from tests.test_projections_followers import confirmed_orders, invoices_of
from tests.test_publisher import NO_WAITING, RefusingClient

DEADLINE = 30.0

# The follower tests' applications (stream ordering), and the publisher
# tests' local EventBridge, bus and environment.
stream_env = follower_tests.stream_env
leader = follower_tests.leader
invoicing = follower_tests.invoicing
eventbridge_endpoint = publisher_tests.eventbridge_endpoint
bus = publisher_tests.bus
publisher_env = publisher_tests.publisher_env


class ShardsInMemory:
    """Shard checkpoints kept in memory."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.numbers: dict[str, str] = {}

    def checkpoint(self, shard_id: str) -> str | None:
        return self.numbers.get(shard_id)

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        self.numbers[shard_id] = number


class Collector:
    """A stream consumer keeping what it is handed, and its checkpoints in memory."""

    name = "collector"

    def __init__(self, connection: Any) -> None:
        self.shard_checkpoints = ShardsInMemory(connection)
        self.pages: list[list[str]] = []

    @property
    def checkpoints(self) -> dict[str, str]:
        return self.shard_checkpoints.numbers

    def process(self, batch: Batch) -> Progress:
        self.pages.append([item.sequence_number for item in batch.items])
        return Progress(len(batch.items), batch.checkpoint)

    @property
    def seen(self) -> list[str]:
        return [number for page in self.pages for number in page]


class SlowCollector(Collector):
    """A collector whose first page takes until ``deadline`` (a long page)."""

    def __init__(self, connection: Any, deadline: float) -> None:
        super().__init__(connection)
        self.deadline = deadline

    def process(self, batch: Batch) -> Progress:
        while not self.pages and time.monotonic() < self.deadline:
            time.sleep(0.01)
        return super().process(batch)


def until(check: Callable[[], bool], what: str) -> None:
    """Wait for ``check`` to hold, failing with ``what`` after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.05)


def stream_holds(app: Orders, count: int) -> None:
    """Wait until the stream shows ``count`` records (DynamoDB Local's may lag)."""
    probe = Collector(app.factory.connection)
    poller = StreamPoller(probe, app)

    def read() -> bool:
        poller.poll()
        return len(probe.seen) >= count

    until(read, f"{count} records in the stream")


# --- the stream poller, run as every feed is ----------------------------------------


def projecting_through(
    proxy: FaultProxy, env: dict[str, str]
) -> tuple[Orders, StreamPoller]:
    """Orders and a stream poller of its order projector, both calling DynamoDB
    through ``proxy`` with one attempt per call, so each fault reaches them."""
    through_proxy = {
        **env,
        "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
        "DYNAMODB_MAX_ATTEMPTS": "1",
    }
    app = Orders(env=through_proxy)
    projector = OrderProjector(
        open_view(OrderProjector, through_proxy), event_loader(app)
    )
    return app, StreamPoller(projector, app, interval=0.2)


def test_a_stream_pollers_drain_rides_out_an_outage_within_its_deadline(
    streamed, dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)  # saves reach DynamoDB directly
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    readers = open_view(OrderProjector, dynamodb_env)
    with FaultProxy(dynamodb_endpoint) as proxy:
        app, poller = projecting_through(proxy, dynamodb_env)
        proxy.outage(1.5)
        started = time.monotonic()
        handled = poller.drain(deadline=time.monotonic() + 60)
        took = time.monotonic() - started
        # DynamoDB Local's stream may lag a write: drain again until it shows.
        while get_order_summary(readers, order_id) is None:
            assert time.monotonic() < started + DEADLINE, "the order not projected"
            handled += poller.drain(time.monotonic() + 60)
        app.close()

    assert took >= 1.0  # it waited for DynamoDB, then went on
    assert handled == 2
    writer.close()


def test_a_stream_pollers_drain_reads_no_page_after_its_deadline(streamed, orders):
    for _ in range(3):
        orders.place_order(uuid.uuid4(), [ITEM])  # two records each
    stream_holds(orders, 6)
    consumer = SlowCollector(orders.factory.connection, deadline=0.0)
    poller = StreamPoller(consumer, orders, batch_size=2)
    consumer.deadline = deadline = time.monotonic() + 2.0

    handled = poller.drain(deadline)

    assert handled == 2  # the first page took until the deadline: no other one
    assert len(consumer.pages) == 1
    assert list(consumer.checkpoints.values()) == [consumer.pages[0][-1]]
    assert poller.drain(time.monotonic() + 60) == 4  # the rest, from the checkpoint
    assert len(consumer.seen) == len(set(consumer.seen)) == 6


def test_a_started_stream_poller_feeds_its_consumer_until_stopped(streamed, orders):
    consumer = Collector(orders.factory.connection)
    poller = StreamPoller(consumer, orders, interval=0.05)

    with poller:
        thread_name = f"feed-{poller.name}"
        assert thread_name in {t.name for t in threading.enumerate()}
        with pytest.raises(RuntimeError, match="running already"):
            poller.start()
        orders.place_order(uuid.uuid4(), [ITEM])
        until(lambda: len(consumer.seen) == 2, "the two records")

    assert thread_name not in {t.name for t in threading.enumerate()}


def test_a_stream_pollers_drain_waits_out_a_consumer_whose_commit_failed(
    streamed, dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    stream_holds(writer, 2)
    readers = open_view(OrderProjector, dynamodb_env)
    with FaultProxy(dynamodb_endpoint) as proxy:
        app, poller = projecting_through(proxy, dynamodb_env)
        # Only the projector's commit meets DynamoDB unavailable: it reports
        # the records failed, and the poll finds nothing it could apply.
        commit = proxy.on("TransactWriteItems", fault=SERVER_ERROR, times=1)

        handled = poller.drain(deadline=time.monotonic() + DEADLINE)

        app.close()
    assert commit.fired == 1
    assert handled == 2  # not "caught up" at the failed poll: it polled again
    assert get_order_summary(readers, order_id) is not None
    writer.close()


class Refusing(Collector):
    """A consumer with a bug: it raises at its first records."""

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        self.called = threading.Event()

    def process(self, batch: Batch) -> Progress:
        self.called.set()
        raise ValueError("a consumer's bug")


def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseException]]:
    """The type of each error a thread dies of from now on, in order."""
    died: list[type[BaseException]] = []
    monkeypatch.setattr(
        threading, "excepthook", lambda args: died.append(args.exc_type)
    )
    return died


def test_a_started_stream_poller_whose_thread_died_raises_its_error_when_stopped(
    streamed, orders, monkeypatch
):
    died = thread_deaths(monkeypatch)
    orders.place_order(uuid.uuid4(), [ITEM])
    consumer = Refusing(orders.factory.connection)
    poller = StreamPoller(consumer, orders, interval=0.05)

    with pytest.raises(ValueError, match="a consumer's bug"), poller:
        until(lambda: bool(died), "the poller's thread to die")

    assert died == [ValueError]
    poller.stop()  # raised once: stopping again says nothing
    assert consumer.checkpoints == {}


def test_a_stream_poller_whose_thread_died_starts_again(streamed, orders, monkeypatch):
    died = thread_deaths(monkeypatch)
    orders.place_order(uuid.uuid4(), [ITEM])
    refusing = Refusing(orders.factory.connection)
    poller = StreamPoller(refusing, orders, interval=0.05)
    poller.start()
    until(lambda: bool(died), "the poller's thread to die")
    poller.fed = consumer = Collector(orders.factory.connection)
    poller.consumer = consumer.shard_checkpoints

    poller.start()  # not "running already": the thread is dead

    until(lambda: len(consumer.seen) == 2, "the two records")
    poller.stop()  # the dead thread's error went with it (its thread's hook said it)
    assert died == [ValueError]


class Blocking(Collector):
    """A consumer whose records take until ``release`` is set."""

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        self.entered = threading.Event()
        self.release = threading.Event()

    def process(self, batch: Batch) -> Progress:
        self.entered.set()
        assert self.release.wait(DEADLINE), "never released"
        return super().process(batch)


def test_a_stream_poller_started_again_after_a_stop_timed_out_runs_one_thread(
    streamed, orders, caplog
):
    orders.place_order(uuid.uuid4(), [ITEM])
    consumer = Blocking(orders.factory.connection)
    poller = StreamPoller(consumer, orders, interval=0.05)
    name = f"feed-{poller.name}"

    def feeding() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == name]

    poller.start()
    [first] = feeding()
    until(consumer.entered.is_set, "the consumer to be handed the records")
    with caplog.at_level("WARNING", logger="ledger.feeds.polling"):
        poller.stop(timeout=0.1)  # the consumer is busy past it
    assert first.is_alive()
    assert "did not stop within 0.1s" in caplog.text

    poller.start()
    consumer.release.set()

    # The first thread's stop holds: it ends after its records, the second runs.
    until(lambda: not first.is_alive(), "the first thread to end")
    assert len(feeding()) == 1
    poller.stop()
    assert feeding() == []


# --- one Lambda handler for pushed stream records ------------------------------------


def test_a_projectors_stream_handler_reports_from_the_first_record_it_could_not_apply(
    orders, dynamodb_env
):
    first = orders.place_order(uuid.uuid4(), [ITEM])
    orders.confirm(first)
    second = orders.place_order(uuid.uuid4(), [ITEM])
    records = lambda_records(orders)
    of_first = [r for r in records if _aggregate(r) == str(first)]
    of_second = [r for r in records if _aggregate(r) == str(second)]

    def make() -> tuple[ProjectionConsumer, Orders]:
        # No event loader: the first order's missing version 1 cannot be read.
        projector = OrderProjector(open_view(OrderProjector, dynamodb_env))
        consumer = ProjectionConsumer(
            projector, orders.mapper, application_name=orders.name
        )
        return consumer, orders

    handler = stream_handler(make)
    batch = [of_first[1], of_second[0], *of_first[2:], *of_second[1:]]
    response = handler({"Records": batch}, LambdaContext(60))

    # Lambda delivers the shard again from the first record reported; the
    # second order's records after it were applied, and are then duplicates.
    assert response == {
        "batchItemFailures": [{"itemIdentifier": sequence_number(r)} for r in batch]
    }
    readers = open_view(OrderProjector, dynamodb_env)
    assert get_order_summary(readers, first) is None
    assert get_order_summary(readers, second) is not None


def test_a_projectors_stream_handler_that_failed_to_make_itself_makes_itself_again(
    orders, dynamodb_env, dynamodb_endpoint
):
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    records = lambda_records(orders)
    readers = open_view(OrderProjector, dynamodb_env)  # the tables exist, as deployed
    described = f'"{orders.recorder.events_table_name}"'.encode()
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "1",
        }
        reads: list[bytes] = []

        def the_stream_arns_read(operation: str, index: int, body: bytes) -> bool:
            # The handler reads the events table's description once more than
            # making its application and view does: the stream's ARN, last.
            if operation == "DescribeTable" and described in body:
                reads.append(body)
                return len(reads) == making + 1
            return False

        making = -1  # counted first: what making the application and view reads
        cut = proxy.on(the_stream_arns_read, fault=CUT, times=1)
        Orders(env=env).close()
        open_view(OrderProjector, env)
        making, reads[:] = len(reads), []
        handler = lambda_handler(OrderProjector, Orders, env)
        with pytest.raises(OperationalError):
            handler({"Records": records}, LambdaContext(60))
        assert cut.fired == 1

        response = handler({"Records": records}, LambdaContext(60))

    assert response == {"batchItemFailures": []}
    assert get_order_summary(readers, order_id) is not None


def test_a_followers_stream_handler_reports_from_the_first_record_it_could_not_process(
    leader, invoicing
):
    first, _ = confirmed_orders(leader, 2)
    records = lambda_records(leader)
    of_first = [r for r in records if _aggregate(r) == str(first)]
    of_second = [r for r in records if r not in of_first]
    of_first[0]["dynamodb"]["NewImage"]["topic"] = {"S": "nowhere:Nothing"}
    follower = StreamFollower(invoicing, leader)

    response = follower.handle({"Records": of_first + of_second})

    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": sequence_number(r)} for r in of_first + of_second
        ]
    }
    assert len(invoices_of(invoicing)) == 1  # the second order's


def test_a_publishers_stream_handler_reports_the_record_it_could_not_finish(
    orders, publisher_env, bus, dynamodb_endpoint
):
    kept = orders.place_order(uuid.uuid4(), [ITEM])
    refused = orders.place_order(uuid.uuid4(), [ITEM])
    records = lambda_records(orders)
    [refused_placed] = [
        r
        for r in records
        if _aggregate(r) == str(refused)
        and r["dynamodb"]["NewImage"][store_schema.VERSION]["N"] == "1"
    ]
    with FaultProxy(dynamodb_endpoint) as proxy:
        app = Orders(
            env={
                **publisher_env,
                "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
                "DYNAMODB_MAX_ATTEMPTS": "1",
            }
        )

        def make() -> tuple[Publisher, Orders]:
            publisher = Publisher(
                OrderEvents(), app, env=publisher_env, retry_delays=NO_WAITING
            )
            # The bus refuses the second order's event for good, and its dead
            # letter cannot be stored: the record is not done.
            publisher.client = RefusingClient(
                publisher.client,
                lambda entry: (
                    "MalformedDetail" if str(refused) in entry["Detail"] else None
                ),
            )
            return publisher, app

        handler = stream_handler(make)
        handler({"Records": []}, LambdaContext(60))  # made while DynamoDB is up
        proxy.on("PutItem", fault=CUT, times=None)

        response = handler({"Records": records}, LambdaContext(60))
        app.close()

    # Every record from the first not done on: Lambda delivers the shard
    # again from there.
    after = records[records.index(refused_placed) :]
    assert response == {
        "batchItemFailures": [{"itemIdentifier": sequence_number(r)} for r in after]
    }
    published = [e["detail"]["order_id"] for e in bus.received()]
    assert published == [str(kept)]
