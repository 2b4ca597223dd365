"""Feeds through a DynamoDB outage: they wait, come back by themselves, miss nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from eventsourcing.projection import ProjectionRunner
from faults import CUT, FaultProxy

from aggregates.application import Orders
from aggregates.order import OrderStatus
from ledger.projections import DynamoDBView, event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import RebuildProgress, rebuild
from ledger.projections.streams import StreamPoller, lambda_handler
from projections.orders import OrderProjector, get_order_summary
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import stream_records

DEADLINE = 30.0


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds, failing with ``what`` after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.05)


def ride_out_an_outage(
    proxy: FaultProxy, writer: Orders, readers: DynamoDBView, first: uuid.UUID
) -> None:
    """Check ``first`` is projected, take DynamoDB away while orders change,
    bring it back, and check the feed applies everything by itself."""
    eventually(lambda: get_order_summary(readers, first) is not None, "first order")
    proxy.down()
    refused = proxy.refused
    second = writer.place_order(uuid.uuid4(), [ITEM])
    writer.confirm(first)
    eventually(lambda: proxy.refused > refused + 2, "reads during the outage")
    proxy.up()
    eventually(lambda: get_order_summary(readers, second) is not None, "second order")
    eventually(
        lambda: get_order_summary(readers, first).status is OrderStatus.CONFIRMED,
        "first order confirmed",
    )


def test_the_stream_poller_rides_out_an_outage_and_misses_nothing(
    streamed, dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)  # saves reach DynamoDB directly
    readers = open_view(OrderProjector, dynamodb_env)
    with FaultProxy(dynamodb_endpoint) as proxy:
        through_proxy = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "2",
        }
        app = Orders(env=through_proxy)
        projector = OrderProjector(
            open_view(OrderProjector, through_proxy), event_loader(app)
        )
        poller = StreamPoller(projector, app)
        stop = threading.Event()
        running = threading.Thread(
            target=poller.run,
            args=(stop,),
            kwargs={"interval": 0.05, "max_backoff": 0.5},
        )
        first = writer.place_order(uuid.uuid4(), [ITEM])
        running.start()
        try:
            ride_out_an_outage(proxy, writer, readers, first)
            assert running.is_alive()  # it waited the outage out
        finally:
            stop.set()
            running.join(DEADLINE)
        app.close()
    writer.close()


def test_the_projection_runner_rides_out_an_outage_and_misses_nothing(
    dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)  # saves reach DynamoDB directly
    readers = open_view(OrderProjector, dynamodb_env)
    first = writer.place_order(uuid.uuid4(), [ITEM])
    with FaultProxy(dynamodb_endpoint) as proxy:
        through_proxy = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "2",
            "DYNAMODB_POLL_INTERVAL": "0.05",
        }
        with ProjectionRunner(
            application_class=Orders,
            projection_class=OrderProjector,
            view_class=DynamoDBView,
            env=through_proxy,
        ):
            ride_out_an_outage(proxy, writer, readers, first)
    writer.close()


def test_a_runners_commits_failing_for_a_while_are_retried_not_fatal(
    dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)
    readers = open_view(OrderProjector, dynamodb_env)
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    with FaultProxy(dynamodb_endpoint) as proxy:
        through_proxy = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "2",
        }
        cuts = proxy.on("TransactWriteItems", fault=CUT, times=5)
        with ProjectionRunner(
            application_class=Orders,
            projection_class=OrderProjector,
            view_class=DynamoDBView,
            env=through_proxy,
        ):
            eventually(
                lambda: get_order_summary(readers, order_id) is not None, "the order"
            )
        assert cuts.fired == 5
    writer.close()


class LambdaContext:
    """The part of AWS Lambda's context object a handler reads: time left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


def lambda_records(app: Orders) -> list[dict]:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-11-29T00:00"
    source = arn.format(app.recorder.events_table_name)
    return [{**r, "eventSourceARN": source} for r in stream_records(app)]


def test_a_lambda_batch_waits_out_a_short_outage_within_its_time(
    dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)
    readers = open_view(OrderProjector, dynamodb_env)
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {**dynamodb_env, "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url}
        env["DYNAMODB_MAX_ATTEMPTS"] = "2"
        handler = lambda_handler(OrderProjector, Orders, env)
        handler({"Records": []}, LambdaContext(60))  # made while DynamoDB is up
        proxy.down()
        threading.Timer(1.0, proxy.up).start()

        response = handler({"Records": lambda_records(writer)}, LambdaContext(60))

    assert response == {"batchItemFailures": []}
    assert get_order_summary(readers, order_id) is not None
    writer.close()


def test_a_lambda_batch_out_of_time_in_an_outage_reports_every_record_failed(
    dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)
    readers = open_view(OrderProjector, dynamodb_env)
    order_id = writer.place_order(uuid.uuid4(), [ITEM])
    records = lambda_records(writer)
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {**dynamodb_env, "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url}
        env["DYNAMODB_MAX_ATTEMPTS"] = "2"
        handler = lambda_handler(OrderProjector, Orders, env)
        handler({"Records": []}, LambdaContext(60))
        proxy.down()

        response = handler({"Records": records}, LambdaContext(6))

    failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert failed == [r["dynamodb"]["SequenceNumber"] for r in records]
    assert get_order_summary(readers, order_id) is None  # Lambda delivers again
    writer.close()


def test_a_rebuild_resumes_by_itself_after_an_outage_and_misses_nothing(
    dynamodb_env, dynamodb_endpoint
):
    writer = Orders(env=dynamodb_env)
    placed = [writer.place_order(uuid.uuid4(), [ITEM]) for _ in range(30)]
    told: list[float] = []
    with FaultProxy(dynamodb_endpoint) as proxy:
        through_proxy = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "2",
        }
        app = Orders(env=through_proxy)
        view = open_view(OrderProjector, through_proxy)

        def go_down_once(progress: RebuildProgress) -> None:
            if not told and not proxy.is_down:
                proxy.outage(3.0)

        result = rebuild(
            app,
            OrderProjector,
            view,
            page_size=10,
            flush_events=20,
            progress=go_down_once,
            on_unavailable=lambda error, wait: told.append(wait),
        )
        app.close()

    assert told  # it met the outage, waited, and resumed
    assert result.switched
    readers = open_view(OrderProjector, dynamodb_env)
    assert all(get_order_summary(readers, order) is not None for order in placed)
    assert all(
        get_order_summary(readers, order).lines["apple"].quantity == 2
        for order in placed
    )
    writer.close()
