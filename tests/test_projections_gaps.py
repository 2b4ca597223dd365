"""Gap fills and redrives on DynamoDB Local: commits that fit, versions never skipped.

An audit projector writes one read-model item per event, so an aggregate
with many events needs many items: a gap fill or a redrive of it cannot be
one commit (DynamoDB takes 100 actions per transaction). And an event that
cannot be read from the events table is never passed over: its aggregate
waits behind it, parked, until a redrive can read it.
"""

from __future__ import annotations

import base64
import uuid
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic

from aggregates.application import Orders
from aggregates.order import Order
from ledger.domain import Aggregate
from ledger.dynamodb import TransactionTooLargeError, aggregate_tracking, measure
from ledger.dynamodb import schema as store_schema
from ledger.projections import (
    AggregatePosition,
    DynamoDBView,
    GapError,
    Outcome,
    Projector,
    ReadModel,
    Session,
    event_loader,
    handles,
)
from ledger.projections.dynamodb import open_view
from ledger.projections.followers import StreamFollower
from ledger.projections.streams import (
    decode_record,
    handle_stream_event,
    process_records,
)
from ledger.projections.views import ItemWrite
from tests.test_projections_dynamodb import Crash, stream_records
from tests.test_projections_followers import Invoice, Invoicing, deliver, invoices_of


class AuditLine(ReadModel):
    """One line per event applied, counting how often it was applied."""

    key_field: ClassVar[str] = "line_id"

    line_id: str
    topic: str
    times: int


class AuditProjector(Projector):
    """Writes an audit line per event; fails on ``broken_at`` while it is set."""

    name = "Audit"
    retry_delays = (0.0, 0.0)
    broken_at: int | None = None
    crash_at: int | None = None
    """A version at which the process dies, once (a crash mid-redrive)."""

    @handles(Aggregate.Event)
    def audit(self, event: Any, models: Session) -> None:
        version = event.originator_version
        if version == self.crash_at:
            self.crash_at = None
            raise Crash
        if version == self.broken_at:
            msg = "audit handler bug"
            raise RuntimeError(msg)
        line_id = f"{event.originator_id}/{version}"
        earlier = models.get(AuditLine, line_id)
        models.put(
            AuditLine(
                line_id=line_id,
                topic=get_topic(type(event)),
                times=1 if earlier is None else earlier.times + 1,
            )
        )


class WideProjector(AuditProjector):
    """Writes 120 audit lines for a confirmed order: more than one commit holds."""

    name = "Wide"

    @handles(Order.OrderConfirmed)
    def confirmed(self, event: Any, models: Session) -> None:
        for copy in range(120):
            line_id = f"{event.originator_id}/{event.originator_version}/{copy}"
            models.put(AuditLine(line_id=line_id, topic="copy", times=1))


@pytest.fixture
def audit_view(dynamodb_env: dict[str, str]) -> DynamoDBView:
    made: DynamoDBView = open_view(AuditProjector, dynamodb_env)
    return made


def long_order(app: Orders, events: int) -> uuid.UUID:
    """Place an order of ``events`` events (placed, then one item added per event)."""
    order_id = app.place_order(uuid.uuid4(), [], "EUR")
    order = app.get_order(order_id)
    for version in range(2, events + 1):
        order.add_item(f"p{version}", 1, Decimal(1))
        if version % 40 == 0:
            app.save(order)
    app.save(order)
    return order_id


def lines_of(view: DynamoDBView, order_id: uuid.UUID) -> dict[int, int]:
    """Each applied version of an order's audit, with how often it was applied."""
    lines = {}
    for key, item in view.load_all().items():
        line_id = AuditLine.key_of(key)
        if line_id is not None and line_id.startswith(f"{order_id}/"):
            line = AuditLine.model_validate_json(item.body)
            lines[int(line_id.split("/")[1])] = line.times
    return lines


def position_of(view: DynamoDBView, order_id: uuid.UUID) -> AggregatePosition:
    stored = view.load(AggregatePosition.storage_key(order_id))
    assert stored is not None
    return AggregatePosition.model_validate_json(stored.body)


def lambda_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


class EventsTable:
    """Takes an event item out of an application's events table, and puts it back."""

    def __init__(self, app: Any) -> None:
        self.connection = app.factory.connection
        self.table = app.recorder.events_table_name
        self.taken: list[dict[str, Any]] = []

    def take(self, aggregate_id: uuid.UUID, version: int) -> None:
        key = {
            store_schema.AGGREGATE_ID: {"S": str(aggregate_id)},
            store_schema.VERSION: {"N": str(version)},
        }
        self.connection.call("delete_item", TableName=self.table, Key=key)
        self.taken.append(key)

    def put_back(self, records: list[dict[str, Any]]) -> None:
        """Put the taken items back from the stream records that carried them."""
        for record in records:
            keys = record["dynamodb"]["Keys"]
            if keys in self.taken:
                image = dict(record["dynamodb"]["NewImage"])
                state = base64.b64decode(image[store_schema.STATE]["B"])
                image[store_schema.STATE] = {"B": state}
                self.connection.call("put_item", TableName=self.table, Item=image)
        self.taken.clear()


# A gap longer than one commit ------------------------------------------------------


def test_a_first_record_after_a_long_gap_is_applied_in_commits_that_fit(
    orders, audit_view
):
    order_id = long_order(orders, 150)
    last = stream_records(orders)[-1]  # its first record in the feed: version 150
    projector = AuditProjector(audit_view, event_loader(orders))

    with measure(audit_view) as meter:
        response = handle_stream_event(lambda_event([last]), projector, orders.mapper)

    assert response == {"batchItemFailures": []}
    assert lines_of(audit_view, order_id) == dict.fromkeys(range(1, 151), 1)
    assert position_of(audit_view, order_id).version == 150
    assert meter.calls["TransactWriteItems"] >= 2  # 150 lines: two commits at least
    assert projector.parked() == []


def test_a_long_gap_behind_other_records_of_the_batch_is_applied_with_them(
    orders, audit_view
):
    short = orders.place_order(uuid.uuid4(), [], "EUR")
    long = long_order(orders, 150)
    records = stream_records(orders)
    first_of_short = next(r for r in records if str(short) in str(r["dynamodb"]))
    last_of_long = records[-1]
    projector = AuditProjector(audit_view, event_loader(orders))

    failed = process_records(projector, [first_of_short, last_of_long], orders.mapper)

    assert failed == []
    assert lines_of(audit_view, short) == {1: 1}
    assert lines_of(audit_view, long) == dict.fromkeys(range(1, 151), 1)


def test_a_redrive_of_a_long_backlog_is_applied_in_commits_that_fit(orders, audit_view):
    order_id = long_order(orders, 200)
    projector = AuditProjector(audit_view, event_loader(orders))
    projector.broken_at = 2
    assert process_records(projector, stream_records(orders), orders.mapper) == []
    assert position_of(audit_view, order_id).parked_version == 2
    projector.broken_at = None

    with measure(audit_view) as meter:
        outcomes = projector.redrive()

    assert outcomes == {str(order_id): Outcome.APPLIED}
    assert lines_of(audit_view, order_id) == dict.fromkeys(range(1, 201), 1)
    assert position_of(audit_view, order_id) == AggregatePosition(
        aggregate_id=str(order_id), version=200
    )
    assert projector.parked() == []
    assert meter.calls["TransactWriteItems"] >= 3  # 199 lines


def test_a_redrive_stopped_part_way_keeps_its_aggregate_parked_and_goes_on_later(
    orders, audit_view
):
    order_id = long_order(orders, 200)
    projector = AuditProjector(audit_view, event_loader(orders))
    projector.broken_at = 2
    assert process_records(projector, stream_records(orders), orders.mapper) == []
    projector.broken_at = None
    projector.crash_at = 180  # after the redrive committed its first parts

    with pytest.raises(Crash):
        projector.redrive()

    part_way = position_of(audit_view, order_id)
    assert 2 < part_way.version < 180
    assert part_way.parked_version == part_way.version + 1
    [still_parked] = projector.parked()
    assert (still_parked.aggregate_id, still_parked.version) == (
        str(order_id),
        part_way.version + 1,
    )
    assert "redrive" in still_parked.error
    assert projector.redrive() == {str(order_id): Outcome.APPLIED}
    assert lines_of(audit_view, order_id) == dict.fromkeys(range(1, 201), 1)
    assert projector.parked() == []


def test_an_event_whose_handler_writes_more_than_one_commit_holds_is_parked(
    orders, dynamodb_env
):
    order_id = orders.place_order(
        uuid.uuid4(), [{"product_id": "a", "quantity": 1, "price": Decimal(1)}], "EUR"
    )
    orders.confirm(order_id)  # version 3
    view = open_view(WideProjector, dynamodb_env)
    projector = WideProjector(view, event_loader(orders))

    failed = process_records(projector, stream_records(orders), orders.mapper)

    assert failed == []
    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version) == (str(order_id), 3)
    assert parked.error.startswith("TransactionTooLargeError")
    assert "122 items" in parked.error
    assert position_of(view, order_id).version == 2


def test_a_commit_of_more_than_a_hundred_actions_is_refused_before_sending(
    orders, audit_view
):
    writes = [ItemWrite(f"AuditLine#{n}", "{}", 0) for n in range(99)]

    with (
        measure(audit_view) as meter,
        pytest.raises(TransactionTooLargeError, match="101 actions"),
    ):
        audit_view.commit(writes, Tracking(orders.name, 1))

    assert meter.calls.get("TransactWriteItems", 0) == 0
    assert audit_view.max_tracking_id(orders.name) is None


# A version that cannot be read -----------------------------------------------------


def four_events(app: Orders) -> uuid.UUID:
    """An order of four events: placed, two items added, confirmed."""
    order_id = app.place_order(uuid.uuid4(), [], "EUR")
    app.add_item(order_id, "apple", 1, Decimal(1))
    app.add_item(order_id, "fig", 1, Decimal(2))
    app.confirm(order_id)
    return order_id


def test_a_version_missing_from_the_events_table_is_parked_never_skipped(
    orders, audit_view
):
    order_id = four_events(orders)
    records = stream_records(orders)
    projector = AuditProjector(audit_view, event_loader(orders))
    assert process_records(projector, records[:1], orders.mapper) == []
    events_table = EventsTable(orders)
    events_table.take(order_id, 2)

    failed = process_records(projector, records[2:], orders.mapper)

    assert failed == []
    assert lines_of(audit_view, order_id) == {1: 1}
    assert position_of(audit_view, order_id).version == 1
    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version, parked.attempts) == (
        str(order_id),
        2,
        len(projector.retry_delays) + 1,
    )
    assert parked.error.startswith("GapError")
    assert "version 2 " in parked.error


def test_a_missing_version_is_applied_in_order_once_a_redrive_can_read_it(
    orders, audit_view
):
    order_id = four_events(orders)
    records = stream_records(orders)
    projector = AuditProjector(audit_view, event_loader(orders))
    process_records(projector, records[:1], orders.mapper)
    events_table = EventsTable(orders)
    events_table.take(order_id, 2)
    process_records(projector, records[2:], orders.mapper)
    assert projector.redrive() == {str(order_id): Outcome.PARKED}  # still missing
    events_table.put_back(records)

    outcomes = projector.redrive()
    late = process_records(projector, records[1:2], orders.mapper)  # v2's own record

    assert (outcomes, late) == ({str(order_id): Outcome.APPLIED}, [])
    assert lines_of(audit_view, order_id) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert position_of(audit_view, order_id) == AggregatePosition(
        aggregate_id=str(order_id), version=4
    )
    assert projector.parked() == []


def test_a_version_readable_at_a_retry_is_applied_without_parking(orders, audit_view):
    order_id = four_events(orders)
    records = stream_records(orders)
    events_table = EventsTable(orders)
    events_table.take(order_id, 2)  # not yet replicated to this region, say
    load = event_loader(orders)
    reads = []

    def replicated_after_the_first_read(aggregate_id: str, after: int, up_to: int):
        events = load(aggregate_id, after, up_to)
        reads.append([e.originator_version for e in events])
        events_table.put_back(records)
        return events

    projector = AuditProjector(audit_view, replicated_after_the_first_read)

    failed = process_records(projector, records[2:], orders.mapper)

    assert failed == []
    assert reads == [[1], [1, 2]]  # read again after a short wait
    assert lines_of(audit_view, order_id) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert projector.parked() == []


def built_per_aggregate(view: DynamoDBView) -> None:
    """Make ``view`` one built by a feed per aggregate: items, and no tracking."""
    earlier = AggregatePosition(aggregate_id="earlier", version=1)
    view.commit([ItemWrite(earlier.own_key(), earlier.model_dump_json(), 0)], None)


def test_sequence_feed_into_a_view_built_per_aggregate_parks_a_version_it_cannot_read(
    orders, audit_view
):
    # A view that keeps one position never meets a gap: the sequence has none.
    built_per_aggregate(audit_view)
    order_id = four_events(orders)
    notifications = orders.recorder.select_notifications(start=1, limit=10)
    projector = AuditProjector(audit_view, event_loader(orders))
    EventsTable(orders).take(order_id, 2)

    for notification in [notifications[0], *notifications[2:]]:
        event = orders.mapper.to_domain_event(notification)
        projector.process_event(event, Tracking(orders.name, notification.id))

    assert lines_of(audit_view, order_id) == {1: 1}
    assert [p.version for p in projector.parked()] == [2]
    assert audit_view.max_tracking_id(orders.name) == notifications[-1].id


def test_a_gap_error_names_the_aggregate_the_versions_and_what_to_do(
    orders, audit_view
):
    order_id = four_events(orders)
    EventsTable(orders).take(order_id, 2)
    EventsTable(orders).take(order_id, 3)
    projector = AuditProjector(audit_view, event_loader(orders))

    with pytest.raises(GapError) as raised:
        projector.load_in_order(str(order_id), 0, 4)

    message = str(raised.value)
    assert str(order_id) in message
    assert "versions 2 to 3" in message
    assert "redrive" in message


# The same through a follower -------------------------------------------------------


@pytest.fixture
def leader(dynamodb_env, monkeypatch):
    monkeypatch.setenv("DYNAMODB_ORDERING", "stream")
    app = Orders(env={**dynamodb_env, "DYNAMODB_ORDERING": "stream"})
    yield app
    app.close()


@pytest.fixture
def invoicing(dynamodb_env, monkeypatch):
    monkeypatch.setenv("DYNAMODB_ORDERING", "stream")
    app = Invoicing(env={**dynamodb_env, "DYNAMODB_ORDERING": "stream"})
    yield app
    app.close()


def processed_by(follower: StreamFollower, order_id: uuid.UUID) -> int:
    """The last version of an order the follower processed (its tracking)."""
    name = aggregate_tracking(follower.leader.name, order_id, 0).application_name
    return int(follower.recorder.max_tracking_id(name) or 0)


def test_a_follower_fails_a_record_behind_a_missing_version_until_it_can_be_read(
    leader, invoicing
):
    order_id = leader.place_order(uuid.uuid4(), [], "EUR")
    leader.add_item(order_id, "apple", 1, Decimal(1))
    leader.confirm(order_id)  # version 3 raises the invoice
    records = stream_records(leader)
    follower = StreamFollower(invoicing, leader)
    assert deliver(follower, records[:1]) == []
    events_table = EventsTable(leader)
    events_table.take(order_id, 2)

    failed = deliver(follower, records[2:])

    assert failed == [records[2]["dynamodb"]["SequenceNumber"]]
    assert processed_by(follower, order_id) == 1
    assert invoices_of(invoicing) == []  # version 3 was not processed past 2
    with pytest.raises(GapError, match="version 2 "):
        follower.process_event(decode_record(records[2], leader.mapper))
    events_table.put_back(records)
    assert deliver(follower, records[2:]) == []
    assert processed_by(follower, order_id) == 3
    invoice = invoicing.repository.get(Invoice.create_id(str(order_id)))
    assert invoice.version == 1


def test_a_follower_processes_a_long_gap_one_event_per_commit(leader, invoicing):
    order_id = long_order(leader, 150)
    leader.confirm(order_id)
    follower = StreamFollower(invoicing, leader)

    assert deliver(follower, stream_records(leader)[-1:]) == []

    assert processed_by(follower, order_id) == 151
    assert invoicing.repository.get(Invoice.create_id(str(order_id))).version == 1
