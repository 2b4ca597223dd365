"""A sixty-second DynamoDB outage: saves fail plainly and every feed comes back by
itself, missing nothing and applying nothing twice."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal

import pytest
from eventsourcing.persistence import OperationalError
from eventsourcing.projection import ProjectionRunner
from faults import FaultProxy

from aggregates.application import Orders
from aggregates.order import OrderStatus
from ledger.dynamodb import AmbiguousWriteError
from ledger.projections import DynamoDBView, event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.sequence import SequenceFeed
from ledger.projections.streams import StreamPoller, run_polls
from projections.orders import OrderProjector, get_order_summary, list_customer_orders
from tests.test_projections_core import ITEM

OUTAGE_SECONDS = 60.0
RECOVERY_DEADLINE = 90.0
"""Seconds each feed may take to catch up once DynamoDB is back (its backoff
may have grown to 30 s during the outage)."""


class SequenceViews(OrderProjector):
    """The Order read models, fed by ledger's sequence feed."""

    name = "SequenceViews"


class RunnerViews(OrderProjector):
    """The Order read models, fed by eventsourcing's ProjectionRunner."""

    name = "RunnerViews"


class StreamViews(OrderProjector):
    """The Order read models, fed by the stream poller."""

    name = "StreamViews"


FEEDS = (SequenceViews, RunnerViews, StreamViews)


def eventually(check, what: str, deadline: float) -> None:
    until = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < until, f"not within {deadline}s: {what}"
        time.sleep(0.1)


def projected_as_stored(view: DynamoDBView, orders: Orders, order_id) -> bool:
    """True if the view shows the order exactly as its events make it."""
    summary = get_order_summary(view, order_id)
    if summary is None:
        return False
    order = orders.get_order(order_id)
    lines = {p: (line.quantity, line.price) for p, line in summary.lines.items()}
    return summary.status is order.status and lines == {
        line.product_id: (line.quantity, line.price) for line in order.lines.values()
    }


@pytest.mark.slow
def test_saves_and_every_feed_ride_out_a_sixty_second_outage(
    streamed, dynamodb_env, dynamodb_endpoint
):
    direct = Orders(env=dynamodb_env)  # reaches DynamoDB without the proxy
    views = {feed: open_view(feed, dynamodb_env) for feed in FEEDS}
    customer = uuid.uuid4()
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {
            **dynamodb_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            "DYNAMODB_MAX_ATTEMPTS": "2",
            "DYNAMODB_POLL_INTERVAL": "0.05",
        }
        client = Orders(env=env)
        sequence_app, stream_app = Orders(env=env), Orders(env=env)
        sequence = SequenceFeed(
            SequenceViews(open_view(SequenceViews, env), event_loader(sequence_app)),
            sequence_app,
        )
        poller = StreamPoller(
            StreamViews(open_view(StreamViews, env), event_loader(stream_app)),
            stream_app,
        )
        stop = threading.Event()
        polls = {"interval": 0.05, "max_backoff": 1.0}
        threads = [
            threading.Thread(
                target=run_polls, args=(sequence.poll, stop), kwargs=polls
            ),
            threading.Thread(target=poller.run, args=(stop,), kwargs=polls),
        ]
        with ProjectionRunner(
            application_class=Orders,
            projection_class=RunnerViews,
            view_class=DynamoDBView,
            env=env,
        ):
            for thread in threads:
                thread.start()
            first = client.place_order(customer, [ITEM])
            for feed, view in views.items():
                eventually(
                    lambda view=view: get_order_summary(view, first) is not None,
                    f"{feed.name} sees the first order",
                    30,
                )

            proxy.outage(OUTAGE_SECONDS)
            refused_before = proxy.refused
            with pytest.raises(OperationalError) as refused:
                client.place_order(customer, [ITEM], idempotency_key="second")
            direct.add_item(first, "tea", 2, Decimal("1.50"))
            direct.confirm(first)
            during = direct.place_order(uuid.uuid4(), [ITEM])
            assert proxy.wait_until_up(OUTAGE_SECONDS + 10)

            assert all(thread.is_alive() for thread in threads)
            second = client.place_order(customer, [ITEM], idempotency_key="second")
            again = client.place_order(customer, [ITEM], idempotency_key="second")
            for feed, view in views.items():
                for order_id in (first, during, second):
                    eventually(
                        lambda view=view, order_id=order_id: projected_as_stored(
                            view, direct, order_id
                        ),
                        f"{feed.name} shows order {order_id} as stored",
                        RECOVERY_DEADLINE,
                    )
        stop.set()
        for thread in threads:
            thread.join(30)
        for app in (client, sequence_app, stream_app):
            app.close()

    # Nothing was sent during the outage: a plain failure, not an ambiguous one.
    assert not isinstance(refused.value, AmbiguousWriteError)
    assert proxy.refused > refused_before + 3  # every feed kept trying
    assert again == second
    assert direct.get_order(first).status is OrderStatus.CONFIRMED
    first_total = direct.get_order(first).total
    for feed, view in views.items():
        orders = list_customer_orders(view, customer)
        assert orders is not None, feed.name
        assert set(orders.order_ids) == {first, second}, feed.name
        assert orders.lifetime_value == {"USD": first_total}, feed.name
    direct.close()
