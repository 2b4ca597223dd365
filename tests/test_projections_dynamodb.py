"""Projections on DynamoDB Local: both feeds, rebuilds, crashes, dead letters."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import threading
import time
import uuid
from decimal import Decimal
from typing import Any, ClassVar

import botocore.exceptions
import pytest
from eventsourcing.persistence import DataError, ProgrammingError, Tracking
from eventsourcing.projection import ProjectionRunner
from eventsourcing.utils import register_topic
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregates.application import Orders
from aggregates.order import Order, OrderStatus
from aggregates.strategies import order_scripts
from ledger.dynamodb import ItemTooLargeError, TransactionTooLargeError, measure
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.client import translate_client_error
from ledger.projections import (
    AggregatePosition,
    DynamoDBView,
    Outcome,
    Projector,
    ReadModel,
    Session,
    event_loader,
    handles,
)
from ledger.projections.dynamodb import open_view
from ledger.projections.history import ScanHistory
from ledger.projections.rebuild import drop_version, rebuild, status
from ledger.projections.streams import (
    StreamPoller,
    decode_record,
    handle_stream_event,
    lambda_handler,
    process_records,
    sequence_number,
    stream_arn_of,
)
from ledger.projections.views import ItemWrite
from projections.orders import OrderProjector, get_order_summary
from tests.test_projections_core import ITEM, FlakyOrderProjector

DEADLINE = 30.0


class Crash(BaseException):
    """A simulated process death (not an Exception, so nothing catches it)."""


def read_model(view: DynamoDBView) -> dict[str, Any]:
    """Every read-model item's content, without revisions (they count writes).

    Positions per aggregate are left out: they are the feed's bookkeeping,
    kept by a version fed per aggregate and not by one fed in total order.
    """
    return {
        key: json.loads(item.body)
        for key, item in view.load_all().items()
        if AggregatePosition.key_of(key) is None
    }


def project_sequence(app: Orders, projector: OrderProjector) -> None:
    """Feed every notification to the projector, as the ProjectionRunner does."""
    for notification in app.recorder.select_notifications(start=1, limit=100_000):
        event = app.mapper.to_domain_event(notification)
        projector.process_event(event, Tracking(app.name, notification.id))


def stream_records(app: Orders) -> list[dict[str, Any]]:
    """The events table as a Lambda would receive it: INSERT records, per item."""
    connection = app.factory.connection
    items = list(connection.items("scan", TableName=app.recorder.events_table_name))
    # In sequence order; without a sequence (stream ordering), per aggregate.
    items.sort(
        key=lambda item: (
            int(item.get(store_schema.POSITION, {"N": "0"})["N"]),
            item[store_schema.AGGREGATE_ID]["S"],
            int(item[store_schema.VERSION]["N"]),
        )
    )
    records = []
    for number, item in enumerate(items, start=1):
        image = dict(item)
        image[store_schema.STATE] = {
            "B": base64.b64encode(item[store_schema.STATE]["B"]).decode()
        }
        records.append(
            {
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {
                        store_schema.AGGREGATE_ID: item[store_schema.AGGREGATE_ID],
                        store_schema.VERSION: item[store_schema.VERSION],
                    },
                    "NewImage": image,
                    "SequenceNumber": f"{number:021d}",
                },
            }
        )
    return records


def interleave(records: list[dict[str, Any]], rng: random.Random) -> list[dict]:
    """Shuffle records across aggregates, keeping each aggregate's own order."""
    queues: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        aggregate = record["dynamodb"]["Keys"][store_schema.AGGREGATE_ID]["S"]
        queues.setdefault(aggregate, []).append(record)
    out = []
    while queues:
        aggregate = rng.choice(sorted(queues))
        out.append(queues[aggregate].pop(0))
        if not queues[aggregate]:
            del queues[aggregate]
    return out


def place_some_orders(app: Orders, count: int = 3) -> list[uuid.UUID]:
    customer = uuid.uuid4()
    ids = []
    for index in range(count):
        order_id = app.place_order(customer, [ITEM], "EUR")
        app.add_item(order_id, "fig", index + 1, Decimal(2))
        app.confirm(order_id)
        if index % 2:
            app.ship(order_id, f"AB{index:06d}")
        ids.append(order_id)
    return ids


def test_runner_catches_up_then_follows_live_events(orders, dynamodb_env):
    first = orders.place_order(uuid.uuid4(), [ITEM])
    with ProjectionRunner(
        application_class=Orders,
        projection_class=OrderProjector,
        view_class=DynamoDBView,
        env=dynamodb_env,
    ) as runner:
        runner.wait(orders.recorder.max_notification_id(), timeout=DEADLINE)
        orders.confirm(first)
        runner.wait(orders.recorder.max_notification_id(), timeout=DEADLINE)
        summary = get_order_summary(runner.view, first)
    assert summary is not None
    assert summary.status is OrderStatus.CONFIRMED


@settings(max_examples=4)
@given(scripts=st.lists(order_scripts(max_commands=4), min_size=1, max_size=3))
def test_rebuilt_read_model_equals_incrementally_built_one(dynamodb_env, scripts):
    env = {**dynamodb_env, "DYNAMODB_TABLE_PREFIX": f"h{uuid.uuid4().hex[:10]}_"}
    app = Orders(env=env)
    for script in scripts:
        script.run(app)
    live = open_view(OrderProjector, env)
    project_sequence(app, OrderProjector(live))

    result = rebuild(app, OrderProjector, live)

    assert result.table_version == 2
    assert read_model(live.at_version(2)) == read_model(live.at_version(1))
    app.close()


def test_rebuild_switches_readers_and_keeps_the_old_version_until_dropped(orders, view):
    [order_id] = place_some_orders(orders, 1)
    project_sequence(orders, OrderProjector(view))
    seen: list[int] = []

    rebuild(orders, OrderProjector, view, progress=lambda p: seen.append(p.position))

    now = status(view, orders)
    assert (now.active_version, now.versions, now.lag) == (2, [1, 2], 0)
    assert seen[-1] == orders.recorder.max_notification_id()
    assert get_order_summary(view, order_id) is not None
    assert drop_version(view, 1) is True


def test_stream_records_delivered_twice_in_any_interleaving_give_one_read_model(
    orders, dynamodb_env
):
    place_some_orders(orders, 4)
    records = stream_records(orders)
    in_order = open_view(OrderProjector, dynamodb_env)
    process_records(
        OrderProjector(in_order, event_loader(orders)), records, orders.mapper
    )
    other_env = {**dynamodb_env, "DYNAMODB_TABLE_PREFIX": f"s{uuid.uuid4().hex[:10]}_"}
    shuffled_view = open_view(OrderProjector, other_env)
    shuffled = OrderProjector(shuffled_view, event_loader(orders))
    rng = random.Random(3)

    for batch in (interleave(records, rng), interleave(records, rng)):
        assert process_records(shuffled, batch, orders.mapper) == []

    assert read_model(shuffled_view) == read_model(in_order)


def test_one_stream_batch_delivered_to_two_invocations_at_once_gives_one_read_model(
    orders, dynamodb_env
):
    place_some_orders(orders, 4)
    records = stream_records(orders)
    expected_view = open_view(OrderProjector, dynamodb_env)
    process_records(
        OrderProjector(expected_view, event_loader(orders)), records, orders.mapper
    )
    env = {**dynamodb_env, "DYNAMODB_TABLE_PREFIX": f"t{uuid.uuid4().hex[:10]}_"}
    view = open_view(OrderProjector, env)
    view.max_actions = 4  # many commits per batch, so the twins interleave
    start = threading.Barrier(2)
    failed: list[list[str]] = []

    def invocation() -> None:
        # Each invocation has its own projector and view, as two Lambdas would.
        own_view = open_view(OrderProjector, env)
        own_view.max_actions = 4
        projector = OrderProjector(own_view, event_loader(orders))
        start.wait()
        failed.append(process_records(projector, records, orders.mapper))

    twins = [threading.Thread(target=invocation) for _ in range(2)]
    for twin in twins:
        twin.start()
    for twin in twins:
        twin.join(timeout=60)
    # Whatever either reported failed is delivered again, as Lambda would.
    again = [r for r in records if sequence_number(r) in {n for f in failed for n in f}]
    if again:
        assert (
            process_records(
                OrderProjector(view, event_loader(orders)), again, orders.mapper
            )
            == []
        )

    assert len(failed) == 2
    assert read_model(view) == read_model(expected_view)


def test_a_stream_batch_crashing_midway_then_redelivered_gives_the_same_model(
    orders, dynamodb_env, monkeypatch
):
    place_some_orders(orders, 4)
    records = stream_records(orders)
    expected_view = open_view(OrderProjector, dynamodb_env)
    process_records(
        OrderProjector(expected_view, event_loader(orders)), records, orders.mapper
    )
    env = {**dynamodb_env, "DYNAMODB_TABLE_PREFIX": f"c{uuid.uuid4().hex[:10]}_"}
    view = open_view(OrderProjector, env)
    view.max_actions = 4  # many commits per batch, so the crash can fall between
    projector = OrderProjector(view, event_loader(orders))
    real_call = view.connection.call
    calls = {"left": random.Random(11).randint(3, 12)}

    def crashing_call(operation: str, **params: Any) -> Any:
        calls["left"] -= 1
        if calls["left"] == 0:
            raise Crash
        return real_call(operation, **params)

    monkeypatch.setattr(view.connection, "call", crashing_call)
    with pytest.raises(Crash):
        process_records(projector, records, orders.mapper)
    monkeypatch.setattr(view.connection, "call", real_call)

    assert process_records(projector, records, orders.mapper) == []
    assert read_model(view) == read_model(expected_view)


def test_a_lambda_batch_parks_its_undecodable_record_and_applies_the_rest(orders, view):
    place_some_orders(orders, 2)
    records = stream_records(orders)
    bad = records[3]
    bad["dynamodb"]["NewImage"][store_schema.STATE] = {"B": "bm90IGFuIGV2ZW50"}
    other = bad["dynamodb"]["Keys"][store_schema.AGGREGATE_ID]["S"]
    batch = [
        r
        for r in records
        if r is bad or r["dynamodb"]["Keys"][store_schema.AGGREGATE_ID]["S"] != other
    ]
    projector = OrderProjector(view, event_loader(orders))

    response = handle_stream_event({"Records": batch}, projector, orders.mapper)

    assert response == {"batchItemFailures": []}
    [parked] = projector.parked()
    assert parked.aggregate_id == other
    assert parked.version == int(bad["dynamodb"]["Keys"][store_schema.VERSION]["N"])
    [healthy] = {_aggregate(r) for r in batch} - {other}
    assert get_order_summary(view, uuid.UUID(healthy)) is not None


def test_a_record_whose_missing_events_cannot_be_read_is_reported_with_later_ones(
    orders, view
):
    first, second = place_some_orders(orders, 2)
    records = stream_records(orders)
    of_first = [r for r in records if _aggregate(r) == str(first)]
    of_second = [r for r in records if _aggregate(r) == str(second)]
    projector = OrderProjector(view)  # no load_events: a gap cannot be filled

    failed = process_records(projector, of_first[1:] + of_second, orders.mapper)

    # From the first failed on: the second order's records are applied all
    # the same, and are duplicates when delivered again.
    assert failed == [r["dynamodb"]["SequenceNumber"] for r in of_first[1:] + of_second]
    assert get_order_summary(view, first) is None
    done = get_order_summary(view, second)
    assert done is not None
    assert done.status is OrderStatus.SHIPPED


def _aggregate(record: dict[str, Any]) -> str:
    aggregate_id: str = record["dynamodb"]["Keys"][store_schema.AGGREGATE_ID]["S"]
    return aggregate_id


def test_poison_event_on_the_stream_is_parked_and_redriven_after_the_fix(orders, view):
    poisoned = orders.place_order(uuid.uuid4(), [ITEM])
    orders.add_item(poisoned, "fig", 1, Decimal(1))
    orders.confirm(poisoned)
    healthy = orders.place_order(uuid.uuid4(), [ITEM])
    orders.confirm(healthy)
    projector = FlakyOrderProjector(view, event_loader(orders))

    failures = process_records(projector, stream_records(orders), orders.mapper)

    assert failures == []
    assert [p.aggregate_id for p in projector.parked()] == [str(poisoned)]
    assert status(view).parked == 1
    waiting = get_order_summary(view, poisoned)
    assert waiting is not None
    assert waiting.status is OrderStatus.CREATED
    done = get_order_summary(view, healthy)
    assert done is not None
    assert done.status is OrderStatus.CONFIRMED
    projector.broken = False
    projector.redrive()
    redriven = get_order_summary(view, poisoned)
    assert redriven is not None
    assert redriven.status is OrderStatus.CONFIRMED
    assert projector.parked() == []


def test_the_stream_poller_refuses_an_events_table_without_a_stream(orders, view):
    # The tests' events tables have no stream unless asked (conftest.NO_STREAM).
    with pytest.raises(ProgrammingError, match="has no DynamoDB stream"):
        StreamPoller(OrderProjector(view, event_loader(orders)), orders)


def test_the_stream_poller_applies_the_events_table_stream(streamed, orders, view):
    [order_id] = place_some_orders(orders, 1)
    poller = StreamPoller(OrderProjector(view, event_loader(orders)), orders)
    deadline = time.monotonic() + DEADLINE
    summary = None
    while time.monotonic() < deadline:
        poller.poll()
        summary = get_order_summary(view, order_id)
        if summary is not None and summary.status is OrderStatus.CONFIRMED:
            break
    assert summary is not None
    assert summary.status is OrderStatus.CONFIRMED


def store_an_undecodable_event(
    orders: Orders,
) -> tuple[uuid.UUID, uuid.UUID, Any, str]:
    """Store a healthy order, and an order whose item event cannot be decoded.

    The stuck order's two later events are an item added, stored under a
    topic no code knows yet (as if written by a newer release), and its
    confirmation. Returns (healthy, stuck, the item event as it should have
    been stored, the unknown topic).
    """
    [healthy] = place_some_orders(orders, 1)
    stuck = orders.place_order(uuid.uuid4(), [ITEM], "EUR")
    order = orders.repository.get(stuck)
    order.add_item("kiwi", 2, Decimal(3))
    order.confirm()
    unknown, confirmed = (
        orders.mapper.to_stored_event(e) for e in order.collect_events()
    )
    renamed = f"tests.renamed_{uuid.uuid4().hex}:ItemAdded"
    orders.recorder.insert_events(
        [dataclasses.replace(unknown, topic=renamed), confirmed]
    )
    return healthy, stuck, unknown, renamed


def test_the_stream_poller_parks_a_record_it_cannot_decode_and_goes_on(
    streamed, orders, view
):
    healthy, stuck, unknown, renamed = store_an_undecodable_event(orders)
    orders.ship(healthy, "ZZ000001")
    projector = OrderProjector(view, event_loader(orders))
    poller = StreamPoller(projector, orders)

    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        poller.poll()
        shipped = get_order_summary(view, healthy)
        if projector.parked() and shipped and shipped.status is OrderStatus.SHIPPED:
            break
    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version) == (
        str(stuck),
        unknown.originator_version,
    )
    assert parked.topic == renamed
    assert "decoding the stream record" in parked.error
    assert poller.poll() == 0  # checkpointed past it: the shard is not held up
    waiting = get_order_summary(view, stuck)
    assert waiting is not None
    assert (waiting.status, "kiwi" in waiting.lines) == (OrderStatus.CREATED, False)

    assert projector.redrive() == {str(stuck): Outcome.PARKED}  # not fixed yet
    [again] = projector.parked()
    assert again.attempts == 2

    register_topic(renamed, Order.ItemAdded)  # the fix: the old topic resolves
    assert projector.redrive() == {str(stuck): Outcome.APPLIED}
    fixed = get_order_summary(view, stuck)
    assert fixed is not None
    assert (fixed.status, "kiwi" in fixed.lines) == (OrderStatus.CONFIRMED, True)
    assert projector.parked() == []


def test_an_oversized_read_model_item_is_refused_before_sending(orders, view):
    with pytest.raises(ItemTooLargeError, match="Read-model item OrderSummary#big"):
        view.commit(
            [ItemWrite("OrderSummary#big", "x" * 410_000, 0)],
            Tracking(orders.name, 1),
        )

    assert view.max_tracking_id(orders.name) is None


class Bulky(ReadModel):
    """A read model of about 300 KB: fourteen of them pass 4 MB."""

    key_field: ClassVar[str] = "order_id"

    order_id: uuid.UUID
    padding: str


class BulkyProjector(Projector):
    name = "Bulky"

    @handles(Order.OrderPlaced)
    def placed(self, event: Any, models: Session) -> None:
        models.put(Bulky(order_id=event.originator_id, padding="x" * 300_000))


def test_batches_split_their_commits_under_four_megabytes(orders, dynamodb_env):
    order_ids = [orders.place_order(uuid.uuid4(), [ITEM]) for _ in range(20)]
    view = open_view(BulkyProjector, dynamodb_env)

    with measure(view) as meter:
        result = rebuild(orders, BulkyProjector, view)

    assert result.events == orders.recorder.max_notification_id()
    assert meter.calls["TransactWriteItems"] >= 2  # 20 x 300 KB is 6 MB
    rebuilt = view.at_version(result.table_version).load_all()
    assert {Bulky.storage_key(o) for o in order_ids} <= set(rebuilt)


def test_a_commit_over_four_megabytes_is_refused_before_sending(orders, view):
    writes = [ItemWrite(f"OrderSummary#{n}", "x" * 300_000, 0) for n in range(14)]

    with pytest.raises(TransactionTooLargeError, match="over DynamoDB's 4,194,304"):
        view.commit(writes, Tracking(orders.name, 1))

    assert view.max_tracking_id(orders.name) is None


def test_the_lambda_handler_applies_only_its_own_events_tables_records(
    orders, view, dynamodb_env
):
    [order_id] = place_some_orders(orders, 1)
    records = stream_records(orders)
    table = orders.recorder.events_table_name
    own = "arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-11-29T00:00"
    forged = [
        {**record, "eventSourceARN": own.format("Other_events")} for record in records
    ]
    genuine = [{**record, "eventSourceARN": own.format(table)} for record in records]
    handler = lambda_handler(OrderProjector, Orders, dynamodb_env)

    assert handler({"Records": forged}, None) == {"batchItemFailures": []}
    assert get_order_summary(view, order_id) is None
    assert handler({"Records": genuine}, None) == {"batchItemFailures": []}
    summary = get_order_summary(view, order_id)
    assert summary is not None
    assert summary.status is OrderStatus.CONFIRMED


def test_a_stream_record_that_is_no_event_item_is_refused_by_what_it_lacks(orders):
    place_some_orders(orders, 1)
    record = stream_records(orders)[0]
    del record["dynamodb"]["NewImage"][store_schema.TOPIC]

    with pytest.raises(DataError, match="lacks topic"):
        decode_record(record, orders.mapper)


def test_status_of_a_stream_fed_projection_counts_the_records_not_yet_applied(
    streamed, dynamodb_env
):
    env = {**dynamodb_env, "DYNAMODB_ORDERING": "stream"}
    app = Orders(env=env)
    view = open_view(OrderProjector, env)
    order_id = app.place_order(uuid.uuid4(), [ITEM])
    assert status(view, app).lag is None  # the local poller never ran
    poller = StreamPoller(OrderProjector(view, event_loader(app)), app)
    deadline = time.monotonic() + DEADLINE
    while get_order_summary(view, order_id) is None:
        assert time.monotonic() < deadline
        poller.poll()
    caught_up = status(view, app)

    app.confirm(order_id)
    app.ship(order_id, "AB000001")

    assert (caught_up.position, caught_up.head, caught_up.lag) == (None, None, 0)
    assert status(view, app).lag == 2
    app.close()


def test_a_checkpoint_past_the_streams_retention_stops_the_feed_saying_rebuild():
    # DynamoDB Local keeps stream records as long as it runs, so the error AWS
    # returns for a trimmed checkpoint is made here as botocore would raise it.
    trimmed = botocore.exceptions.ClientError(
        {"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"}},
        "GetShardIterator",
    )

    translated = translate_client_error(trimmed)

    assert isinstance(translated, ProgrammingError)  # not retried as an outage
    assert "ledger projections rebuild" in str(translated)


def test_a_rebuild_restarts_the_local_stream_feed_from_the_oldest_record(
    streamed, orders, view
):
    [order_id] = place_some_orders(orders, 1)
    poller = StreamPoller(OrderProjector(view, event_loader(orders)), orders)
    deadline = time.monotonic() + DEADLINE
    while get_order_summary(view, order_id) is None:
        assert time.monotonic() < deadline
        poller.poll()
    shards = [s["ShardId"] for s in poller._shards()]
    assert any(view.get_control(f"shard#{s}") for s in shards)

    # From the events table: a version rebuilt from the sequence keeps one
    # position, which the stream feed refuses.
    rebuild(orders, OrderProjector, view, history=ScanHistory(orders))

    assert not any(view.get_control(f"shard#{s}") for s in shards)
    again = StreamPoller(OrderProjector(view, event_loader(orders)), orders)
    assert again.poll() == 4  # read again from the start, applied once
    assert get_order_summary(view, order_id).status is OrderStatus.CONFIRMED


def test_with_a_stream_only_records_of_exactly_that_stream_are_applied(
    streamed, orders, view, dynamodb_env
):
    [order_id] = place_some_orders(orders, 1)
    real = stream_arn_of(orders)
    assert real is not None
    elsewhere = real.replace(real.split(":")[4], "999999999999", 1)  # account
    records = stream_records(orders)
    handler = lambda_handler(OrderProjector, Orders, dynamodb_env)

    handler({"Records": [{**r, "eventSourceARN": elsewhere} for r in records]}, None)
    assert get_order_summary(view, order_id) is None
    handler({"Records": [{**r, "eventSourceARN": real} for r in records]}, None)
    assert get_order_summary(view, order_id) is not None


def test_a_poller_that_read_an_empty_shard_reads_its_first_records_later(
    streamed, dynamodb_env, orders, view
):
    projector = OrderProjector(view, event_loader(orders))
    poller = StreamPoller(projector, orders)
    assert poller.poll() == 0  # the shard is empty: the poller keeps an iterator
    # Another application's stream takes the next record numbers, so that
    # iterator may be refused as trimmed (DynamoDB Local numbers records across
    # tables); nothing of the shard was read yet, so nothing may be lost.
    prefix = f"other{uuid.uuid4().hex[:8]}_"
    other = Orders(env={**dynamodb_env, "DYNAMODB_TABLE_PREFIX": prefix})
    for _ in range(3):
        other.place_order(uuid.uuid4(), [ITEM])
    first = orders.place_order(uuid.uuid4(), [ITEM])

    deadline = time.monotonic() + DEADLINE
    while get_order_summary(view, first) is None and time.monotonic() < deadline:
        poller.poll()

    assert get_order_summary(view, first) is not None
    other.close()
