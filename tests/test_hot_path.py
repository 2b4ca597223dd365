"""The command's hot path: what a load and a save run, and what they skip."""

from __future__ import annotations

import logging
import uuid
import zlib
from decimal import Decimal
from typing import Any, ClassVar

import boto3
import eventsourcing.domain
import pytest
from botocore.awsrequest import HeadersDict
from botocore.session import get_session
from eventsourcing.application import project_aggregate as eventsourcing_projector
from eventsourcing.domain import (
    CanMutateAggregate,
    DomainEventProtocol,
    OriginatorIDError,
    OriginatorVersionError,
)
from eventsourcing.persistence import JSONTranscoder, ProgrammingError, StoredEvent
from eventsourcing.utils import get_topic
from faults import SERVER_ERROR, FaultProxy
from pydantic import BaseModel, PrivateAttr
from pydantic._internal import _model_construction as model_construction

from aggregates.application import Orders
from aggregates.order import Order
from aggregates.payment import Payment
from aggregates.payments import Payments
from ledger import persistence
from ledger.domain import Aggregate, DomainEvent, given_metadata, project_aggregate
from ledger.dynamodb import client as client_module
from ledger.dynamodb import recorders
from ledger.dynamodb.client import DynamoDBConnection, incomplete_answer
from ledger.dynamodb.limits import MAX_ITEM_BYTES, ItemTooLargeError, item_size
from ledger.metadata import metadata
from ledger.persistence import PydanticMapper
from ledger.snapshots import (
    EveryNEvents,
    MeteredEventStore,
    MeteredRepository,
    SnapshotStrategy,
)

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


def sent_params(app: Orders) -> list[tuple[str, dict[str, Any]]]:
    """Record the operation and parameters of every call the app's client sends."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append((model.name, dict(params)))

    connection = app.recorder.connection  # type: ignore[attr-defined]
    connection.client.meta.events.register("provide-client-params.dynamodb", record)
    return sent


def test_loads_and_saves_name_the_key_attributes_in_place(
    dynamodb_env: dict[str, str],
) -> None:
    with Orders(env={**dynamodb_env, "DYNAMODB_ORDERING": "stream"}) as orders:
        order_id = orders.place_order(uuid.uuid4(), [], "EUR")
        sent = sent_params(orders)

        orders.add_item(order_id, "p1", 1, PRICE)

    assert [operation for operation, _ in sent] == ["Query", "PutItem"]
    for _, params in sent:
        assert "ExpressionAttributeNames" not in params
    assert "ScanIndexForward" not in sent[0][1]


def test_a_descending_load_still_reads_newest_first(orders: Orders) -> None:
    order = an_order()
    orders.save(order)

    newest = orders.recorder.select_events(order.id, desc=True, limit=2)

    assert [e.originator_version for e in newest] == [3, 2]


def test_a_command_makes_no_runtime_protocol_check(
    orders: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = orders.place_order(uuid.uuid4(), [], "EUR")
    checked: list[type] = []
    protocol_meta: Any = type(DomainEventProtocol)
    check = protocol_meta.__instancecheck__

    def counted(cls: type, instance: object) -> bool:
        checked.append(cls)
        return bool(check(cls, instance))

    monkeypatch.setattr(protocol_meta, "__instancecheck__", counted)

    orders.add_item(order_id, "p1", 1, PRICE)

    assert checked == []
    assert orders.get_order(order_id).lines["p1"].quantity == 1


def counted_protocol_checks(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """Record every runtime protocol ``isinstance`` check made from now on."""
    checked: list[type] = []
    protocol_meta: Any = type(DomainEventProtocol)
    check = protocol_meta.__instancecheck__

    def counted(cls: type, instance: object) -> bool:
        checked.append(cls)
        return bool(check(cls, instance))

    monkeypatch.setattr(protocol_meta, "__instancecheck__", counted)
    return checked


@pytest.mark.parametrize("idempotency_key", [None, "settle-1"])
def test_a_payments_command_makes_no_runtime_protocol_check(
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    idempotency_key: str | None,
) -> None:
    order_id = uuid.uuid4()
    with Payments(env=dynamodb_env) as payments:
        payments.request(order_id, PRICE, "EUR")
        checked = counted_protocol_checks(monkeypatch)

        payments.settle(order_id, approved=True, idempotency_key=idempotency_key)

        assert checked == []
        payment = payments.get_payment(order_id)
        assert payment is not None
        assert payment.version == 2


def test_a_save_still_takes_events_and_skips_none(orders: Orders) -> None:
    order = an_order()
    first, *others = order.collect_events()

    orders.save(first, None)
    orders.save(*others)

    assert orders.get_order(order.id).version == order.version


def test_an_application_without_strategies_remembers_no_load(orders: Orders) -> None:
    order_id = orders.place_order(uuid.uuid4(), [], "EUR")

    orders.get_order(order_id)

    assert orders.repository.pop_last_load(order_id) is None


def test_the_mapper_resolves_a_stored_topic_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    order = Order.place(uuid.uuid4(), [], "EUR")
    for product in ("p1", "p2", "p3"):
        order.add_item(product, 1, PRICE)
    pending = order.collect_events()
    stored = [mapper.to_stored_event(e) for e in pending]
    resolved: list[str] = []
    resolve = persistence.resolve_stored_topic

    def counted(topic: str) -> type[Any]:
        resolved.append(topic)
        return resolve(topic)

    monkeypatch.setattr(persistence, "resolve_stored_topic", counted)

    events = [mapper.to_domain_event(s) for s in stored * 2]

    assert sorted(resolved) == sorted({s.topic for s in stored})
    assert events == pending * 2


def handlers_called(client: Any, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the event handlers botocore calls for one ListTables call."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="botocore.hooks"):
        client.list_tables(Limit=1)
    return [r.getMessage() for r in caplog.records if "calling handler" in r.msg]


def plain_client(connection: DynamoDBConnection) -> Any:
    """Return a boto3 client of the connection's endpoint without ledger's handlers."""
    session = boto3.session.Session()
    placeholder = "local" if session.get_credentials() is None else None
    return session.client(
        "dynamodb",
        endpoint_url=connection.endpoint_url,
        region_name=connection.region_name,
        aws_access_key_id=placeholder,
        aws_secret_access_key=placeholder,
    )


def test_ledger_adds_one_handler_to_a_call_outside_meters(
    dynamodb_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = DynamoDBConnection(endpoint_url=dynamodb_endpoint)
    plain = plain_client(connection)

    added = len(handlers_called(connection.client, caplog)) - len(
        handlers_called(plain, caplog)
    )
    with connection.measure():
        added_metered = len(handlers_called(connection.client, caplog)) - len(
            handlers_called(plain, caplog)
        )
    added_after = len(handlers_called(connection.client, caplog)) - len(
        handlers_called(plain, caplog)
    )

    # One handler after each attempt (round trips, calls, incomplete and
    # lost answers); sizes and capacity only while a meter is open.
    assert (added, added_metered, added_after) == (1, 3, 1)
    connection.close()
    plain.close()


def test_calls_outside_meters_count_once_in_the_total(
    dynamodb_endpoint: str,
) -> None:
    connection = DynamoDBConnection(endpoint_url=dynamodb_endpoint)

    connection.call("list_tables", Limit=1)
    with connection.measure() as meter:
        connection.call("list_tables", Limit=1)
    connection.call("describe_limits")

    assert connection.total.calls == {"ListTables": 2, "DescribeLimits": 1}
    assert connection.total.round_trips == 3
    assert meter.calls == {"ListTables": 1}
    assert meter.round_trips == 1
    connection.close()


def test_a_retried_call_outside_meters_counts_once_in_the_total(
    dynamodb_endpoint: str,
) -> None:
    with FaultProxy(dynamodb_endpoint) as proxy:
        proxy.on("ListTables", fault=SERVER_ERROR)
        connection = DynamoDBConnection(endpoint_url=proxy.endpoint_url)

        connection.call("list_tables", Limit=1)

        assert connection.total.calls == {"ListTables": 1}
        assert connection.total.round_trips == 2
        connection.close()


def test_a_load_makes_no_stored_event(
    orders: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = an_order()
    orders.save(order)
    orders.get_order(order.id)  # the first load checks the aggregate's topic
    made: list[StoredEvent] = []
    init = StoredEvent.__init__

    def counted(self: StoredEvent, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(StoredEvent, "__init__", counted)

    loaded = orders.get_order(order.id)

    assert made == []
    assert vars(loaded) == vars(order)


class NotingMapper(PydanticMapper):
    """A mapper whose own ``to_domain_event`` notes each event it reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: list[int] = []

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        self.read.append(stored_event.originator_version)
        return super().to_domain_event(stored_event)


def test_a_mapper_overriding_to_domain_event_still_reads_every_event(
    orders: Orders,
) -> None:
    order = an_order()
    orders.save(order)
    mapper = NotingMapper(transcoder=JSONTranscoder())
    store = MeteredEventStore(mapper=mapper, recorder=orders.recorder)

    events = list(store.get(order.id))

    assert mapper.read == [1, 2, 3]
    assert [e.originator_version for e in events] == [1, 2, 3]


def test_the_mapper_checks_an_aggregate_topic_once(
    orders: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = an_order(), an_order()
    orders.save(first, second)
    checked: list[str] = []
    check = persistence._resolve_aggregate_class

    def counted(topic: str, subject: str) -> type[Any]:
        checked.append(topic)
        return check(topic, subject)

    monkeypatch.setattr(persistence, "_resolve_aggregate_class", counted)

    orders.get_order(first.id)
    orders.get_order(second.id)
    orders.get_order(first.id)

    assert checked == [get_topic(Order)]


def test_a_save_describes_an_event_only_when_it_is_too_large(
    orders: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    described: list[str] = []
    check = recorders.check_item_size

    def counted(size: int, what: str, *args: Any) -> None:
        described.append(what)
        check(size, what, *args)

    monkeypatch.setattr(recorders, "check_item_size", counted)
    order = an_order()
    orders.save(order)
    too_large = StoredEvent(
        originator_id=order.id,
        originator_version=4,
        topic=get_topic(Order.OrderConfirmed),
        state=b"x" * 410_000,
    )

    with pytest.raises(ItemTooLargeError):
        orders.recorder.insert_events([too_large])

    assert len(described) == 1
    assert f"of aggregate {order.id} at version 4" in described[0]


def test_events_read_without_metadata_share_one_validation_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    order = Order.place(uuid.uuid4(), [], "EUR")
    order.add_item("p1", 1, PRICE)
    order.add_item("p2", 1, PRICE)
    with metadata(correlation_id="request-1"):
        order.add_item("p3", 1, PRICE)
    stored = [mapper.to_stored_event(e) for e in order.collect_events()]
    contexts: list[Any] = []
    post_init = DomainEvent.model_post_init

    def noted(self: DomainEvent, context: Any, /) -> None:
        contexts.append(context)
        post_init(self, context)

    monkeypatch.setattr(Order.ItemAdded, "model_post_init", noted)

    events = [mapper.to_domain_event(s) for s in stored]

    first, second, third = contexts
    assert first is second
    assert third is not first
    assert events[3].metadata.correlation_id == "request-1"
    assert events[1].metadata.correlation_id == f"{order.id}/2"


class NotedHeaders(HeadersDict):
    """botocore's headers of an answer, noting each header looked up."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.looked_up: list[str] = []
        super().__init__(headers)

    def __getitem__(self, name: str) -> str:
        self.looked_up.append(name.lower())
        value: str = super().__getitem__(name)
        return value


def query_model() -> Any:
    return get_session().get_service_model("dynamodb").operation_model("Query")


def test_an_answer_matching_its_checksum_is_whole_after_one_header() -> None:
    body = b'{"Items":[],"Count":0,"ScannedCount":0}'
    headers = NotedHeaders(
        {"Content-Length": str(len(body)), "x-amz-crc32": str(zlib.crc32(body))}
    )

    found = incomplete_answer(query_model(), headers, body)

    assert found is None
    assert headers.looked_up == ["x-amz-crc32"]


def test_an_answer_cut_short_still_says_how_much_of_it_arrived() -> None:
    body = b'{"Items":[],"Count":0,"ScannedCount":0}'
    headers = NotedHeaders(
        {"Content-Length": str(len(body)), "x-amz-crc32": str(zlib.crc32(body))}
    )

    found = incomplete_answer(query_model(), headers, body[:10])

    assert found == f"10 of its {len(body)} bytes arrived"


def private_attribute_setups(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each model whose private attributes pydantic sets up from now on."""
    set_up: list[object] = []
    init = model_construction.init_private_attributes

    def counted(self: Any, context: Any, /) -> None:
        set_up.append(self)
        init(self, context)

    monkeypatch.setattr(model_construction, "init_private_attributes", counted)
    return set_up


def test_an_event_read_without_metadata_skips_pydantics_private_attribute_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    order = an_order()
    pending = order.collect_events()
    stored = [mapper.to_stored_event(e) for e in pending]
    set_up = private_attribute_setups(monkeypatch)

    events = [mapper.to_domain_event(s) for s in stored]

    assert set_up == []
    assert events == pending
    assert [e.metadata for e in events] == [e.metadata for e in pending]


class Annotated(Aggregate.Event):
    """An event class with a private attribute of its own beside the metadata."""

    _note: str = PrivateAttr(default="unread")


def test_private_attributes_of_an_event_class_get_their_defaults_when_read() -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    with metadata(correlation_id="request-1"):
        annotated = Annotated(
            originator_id=uuid.uuid4(),
            originator_version=2,
            timestamp=Annotated.create_timestamp(),
        )
    plain = Annotated(
        originator_id=uuid.uuid4(),
        originator_version=2,
        timestamp=Annotated.create_timestamp(),
    )

    read = [
        mapper.to_domain_event(mapper.to_stored_event(e)) for e in (annotated, plain)
    ]

    assert [e._note for e in read] == ["unread", "unread"]
    assert read[0].metadata.correlation_id == "request-1"
    assert read[1].metadata == plain.metadata


def test_an_event_made_by_code_skips_pydantics_private_attribute_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_up = private_attribute_setups(monkeypatch)

    order = Order.place(uuid.uuid4(), [], "EUR")
    order.add_item("p2", 1, PRICE)
    with metadata(correlation_id="request-1"):
        order.add_item("p3", 1, PRICE)
    plain, in_context = order.collect_events()[-2:]

    assert set_up == []
    assert given_metadata(plain) is None
    assert in_context.metadata.correlation_id == "request-1"


def test_a_replayed_event_evolves_its_aggregate_without_eventsourcings_mutate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = an_order().collect_events()
    expected = eventsourcing_projector(None, events)
    called: list[object] = []
    base_mutate = CanMutateAggregate.mutate

    def counted(self: Any, aggregate: Any) -> Any:
        called.append(self)
        return base_mutate(self, aggregate)

    monkeypatch.setattr(CanMutateAggregate, "mutate", counted)

    replayed = project_aggregate(None, events)

    assert called == []
    assert replayed is not None
    assert expected is not None
    assert vars(replayed) == vars(expected)


class Audited(CanMutateAggregate[uuid.UUID]):
    """A mixin whose ``mutate`` comes after ``Aggregate.Event``'s."""

    mutated: ClassVar[list[object]] = []

    def mutate(self, aggregate: Any) -> Any:
        Audited.mutated.append(self)
        return super().mutate(aggregate)


class Audit(Aggregate):
    class Checked(Aggregate.Event, Audited):
        def apply(self, aggregate: Any) -> None:
            aggregate.checked = True


def test_an_event_class_with_a_mutate_past_ledgers_still_runs_it() -> None:
    audit = Audit()
    Audited.mutated.clear()

    audit.trigger_event(Audit.Checked)

    assert len(Audited.mutated) == 1
    assert audit.checked is True
    assert audit.version == 2


def test_a_replayed_event_of_another_aggregate_or_version_is_refused() -> None:
    first, *rest = an_order().collect_events()
    other = project_aggregate(None, [first])
    stranger = Order.place(uuid.uuid4(), [], "EUR")

    with pytest.raises(OriginatorIDError):
        project_aggregate(stranger, rest)
    with pytest.raises(OriginatorVersionError):
        project_aggregate(other, rest[1:])


def test_saving_an_event_reads_its_metadata_without_pydantics_getattr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapper = PydanticMapper(transcoder=JSONTranscoder())
    order = Order.place(uuid.uuid4(), [], "EUR")
    with metadata(correlation_id="request-1"):
        order.add_item("p2", 1, PRICE)
    events = order.collect_events()
    looked_up: list[str] = []
    getattr_of_models = BaseModel.__getattr__

    def counted(self: Any, item: str) -> Any:
        looked_up.append(item)
        return getattr_of_models(self, item)

    monkeypatch.setattr(BaseModel, "__getattr__", counted)

    stored = [mapper.to_stored_event(e) for e in events]

    assert looked_up == []
    assert b'"correlation_id":"request-1"' in stored[-1].state
    assert b"_meta" not in stored[0].state


def test_a_call_translates_errors_without_a_context_manager(
    dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = DynamoDBConnection(endpoint_url=dynamodb_endpoint)
    entered: list[bool] = []
    translate = client_module.translate_errors

    def counted(*, write: bool = False) -> Any:
        entered.append(write)
        return translate(write=write)

    monkeypatch.setattr(client_module, "translate_errors", counted)

    connection.call("list_tables", Limit=1)
    with pytest.raises(ProgrammingError, match="no-such-table"):
        connection.call("get_item", TableName="no-such-table", Key={"k": {"S": "1"}})

    assert entered == []
    connection.close()


def test_a_save_sizes_an_event_item_only_when_it_may_be_too_large(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stream ordering: a 1-event save is one PutItem, sized by nothing else.
    streamed_orders = Orders(env={**dynamodb_env, "DYNAMODB_ORDERING": "stream"})
    sized: list[int] = []

    def counted(item: Any) -> int:
        size = item_size(item)
        sized.append(size)
        return size

    monkeypatch.setattr(recorders, "item_size", counted)
    order = Order.place(uuid.uuid4(), [], "EUR")
    streamed_orders.save(order)
    near_the_limit = StoredEvent(
        originator_id=order.id,
        originator_version=2,
        topic=get_topic(Order.OrderConfirmed),
        state=b"x" * (MAX_ITEM_BYTES - 200),
    )

    streamed_orders.recorder.insert_events([near_the_limit])

    # The first event is far from the limit; the second is sized, and stored
    # (its exact size is under 400 KB).
    assert len(sized) == 1
    assert sized[0] <= MAX_ITEM_BYTES
    assert len(streamed_orders.recorder.select_events(order.id)) == 2
    streamed_orders.close()


def test_replay_gives_what_eventsourcings_own_mutate_gives_modified_on_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = an_order().collect_events()
    replayed = project_aggregate(None, events)

    # The reference: every event through eventsourcing's CanMutateAggregate.mutate.
    monkeypatch.setattr(Aggregate.Event, "_mutates_in_place", False)
    for cls in {type(event) for event in events}:
        monkeypatch.setattr(cls, "_mutates_in_place", False, raising=False)
    reference = project_aggregate(None, events)

    assert replayed is not None
    assert reference is not None
    assert replayed.modified_on == events[-1].timestamp
    assert vars(replayed) == vars(reference)


def test_an_aggregate_is_created_without_matching_fields_to_init_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    matched: list[object] = []
    match = eventsourcing.domain.filter_kwargs_for_method_params

    def counted(kwargs: dict[str, Any], method: Any) -> dict[str, Any]:
        matched.append(method)
        return match(kwargs, method)

    monkeypatch.setattr(
        eventsourcing.domain, "filter_kwargs_for_method_params", counted
    )

    order = Order.place(uuid.uuid4(), [], "EUR")
    loaded = project_aggregate(None, order.collect_events())

    assert matched == []
    assert loaded is not None
    assert loaded.version == 1


@pytest.mark.parametrize(
    "created",
    [
        lambda: Order.place(uuid.uuid4(), [], "EUR"),
        # A request: its aggregate also keeps what the reply will carry.
        lambda: Payment.request(uuid.uuid4(), Decimal("9.99"), "EUR"),
    ],
    ids=["order", "payment request"],
)
def test_a_created_aggregate_is_what_eventsourcings_mutate_makes(
    created: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with metadata(correlation_id="checkout-1", headers={"tenant": "t1"}):
        events = created().collect_events()

    made = project_aggregate(None, events)
    monkeypatch.setattr(type(events[0]), "_creates_in_place", False)
    reference = project_aggregate(None, events)

    assert made is not None
    assert reference is not None
    assert vars(made) == vars(reference)


class Greeted(Aggregate):
    """An aggregate with an ``__init__`` of its own."""

    class Started(Aggregate.Created):
        name: str

        def apply(self, aggregate: Any) -> None:
            aggregate.applied = True

    def __init__(self, name: str) -> None:
        self.greeting = f"hello {name}"


def test_an_aggregate_with_an_init_of_its_own_is_still_initialised_by_it() -> None:
    greeted = Greeted._create(Greeted.Started, name="ada")

    loaded = project_aggregate(None, greeted.collect_events())

    assert loaded is not None
    assert loaded.greeting == "hello ada"
    assert loaded.applied is True


def test_a_one_event_save_skips_the_checks_only_a_transaction_needs(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed_orders = Orders(env={**dynamodb_env, "DYNAMODB_ORDERING": "stream"})
    checked: list[str] = []
    recorder_class = type(streamed_orders.recorder)

    def refused(name: str) -> Any:
        def check(*_: Any, **__: Any) -> Any:
            checked.append(name)
            raise AssertionError(name)

        return check

    monkeypatch.setattr(recorder_class, "_check_unique", refused("_check_unique"))
    monkeypatch.setattr(recorder_class, "_key_action", refused("_key_action"))

    order_id = streamed_orders.place_order(uuid.uuid4(), [], "EUR")

    assert checked == []
    assert streamed_orders.get_order(order_id).version == 1
    streamed_orders.close()


class CountedLookups(dict[type[object], SnapshotStrategy]):
    """Strategies that count how often a class is looked up among them."""

    lookups = 0

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)


def test_a_save_finds_its_aggregate_classs_strategy_once() -> None:
    every_two = EveryNEvents(2)
    orders = Orders(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        snapshot_strategies={Order: every_two},
    )
    counted = CountedLookups(orders.strategies)
    orders.strategies = counted
    first = orders.place_order(uuid.uuid4(), [], "EUR")
    looked_up = counted.lookups

    second = orders.place_order(uuid.uuid4(), [], "EUR")
    orders.add_item(second, "apple", 1, Decimal("2.50"))

    assert looked_up > 0
    assert counted.lookups == looked_up
    assert orders.strategy_for(Order) is every_two
    assert orders.strategy_for(Payment).__class__.__name__ == "Never"
    assert orders.get_order(first).version == 1
    # The strategy found once still snapshots: version 2 is a multiple of 2.
    assert orders.snapshots is not None
    assert [s.originator_version for s in orders.snapshots.get(second)] == [2]


def test_an_applications_strategies_cannot_be_changed_once_it_is_made() -> None:
    """They are decided from at construction: a change would be ignored, so refused."""
    orders = Orders(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        snapshot_strategies={Order: EveryNEvents(2)},
    )

    with pytest.raises(TypeError):
        orders.strategies[Order] = EveryNEvents(5)  # type: ignore[index]
    assert orders.strategy_for(Order) == EveryNEvents(2)
