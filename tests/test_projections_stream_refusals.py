"""The stream poller stops for a trimmed checkpoint only, not for a refused iterator.

DynamoDB Local keeps stream records as long as it runs, so the refusals DynamoDB
Streams gives once records pass their 24 hours are injected here by the fault
proxy (``REFUSE``), as AWS answers them; the rest is the real server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import ProgrammingError
from faults import REFUSE, FaultProxy

from aggregates.application import Orders
from ledger.projections import DynamoDBView, event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.streams import StreamPoller
from projections.orders import OrderProjector, get_order_summary
from tests.test_projections_core import ITEM

DEADLINE = 30.0
TRIMMED = REFUSE("TrimmedDataAccessException")


def poller_of(app: Orders, view: DynamoDBView) -> StreamPoller:
    """A stream poller (a worker) feeding the Order view from ``app``'s stream."""
    return StreamPoller(OrderProjector(view, event_loader(app)), app)


def poll_until_projected(
    poller: StreamPoller, view: DynamoDBView, order_id: uuid.UUID
) -> None:
    """Poll until the order is in the view, failing after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while get_order_summary(view, order_id) is None:
        assert time.monotonic() < deadline, f"not projected within {DEADLINE}s"
        poller.poll()


@pytest.fixture
def proxied(
    streamed: None, dynamodb_env: dict[str, str], dynamodb_endpoint: str
) -> Iterator[tuple[FaultProxy, Orders, DynamoDBView]]:
    """The proxy, and Orders and its Order view reaching DynamoDB through it."""
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {**dynamodb_env, "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url}
        app = Orders(env=env)
        yield proxy, app, open_view(OrderProjector, env)
        app.close()


def test_a_second_worker_goes_on_from_the_checkpoint_the_first_moved(
    streamed, orders, view
):
    idle = poller_of(orders, view)
    busy = poller_of(orders, view)
    assert idle.poll() == 0  # the shard is empty: it keeps where it stopped
    first = orders.place_order(uuid.uuid4(), [ITEM])
    poll_until_projected(busy, view, first)  # and checkpoints past it
    # The idle worker's kept iterator is refused as trimmed now (DynamoDB
    # Local's way with an iterator taken while its shard was empty), with a
    # live checkpoint: it reads from the checkpoint instead.

    assert idle.poll() == 0  # nothing after the checkpoint

    second = orders.place_order(uuid.uuid4(), [ITEM])
    poll_until_projected(idle, view, second)


def test_an_iterator_refused_as_trimmed_is_read_again_from_a_live_checkpoint(
    proxied,
):
    proxy, app, view = proxied
    poller = poller_of(app, view)
    poll_until_projected(poller, view, app.place_order(uuid.uuid4(), [ITEM]))
    # As AWS refuses an iterator once a record it points at passes 24 hours.
    refused = proxy.on("GetRecords", fault=TRIMMED)
    later = app.place_order(uuid.uuid4(), [ITEM])

    poll_until_projected(poller, view, later)

    assert refused.fired == 1


def test_a_checkpoint_the_stream_trimmed_stops_the_feed_saying_rebuild(proxied):
    proxy, app, view = proxied
    poller = poller_of(app, view)
    poll_until_projected(poller, view, app.place_order(uuid.uuid4(), [ITEM]))
    # The checkpoint itself is past the trim point: every read from it is refused.
    proxy.on("GetRecords", fault=TRIMMED, times=None)
    app.place_order(uuid.uuid4(), [ITEM])

    with pytest.raises(ProgrammingError, match="ledger projections rebuild"):
        poller.poll()


def close_a_shard_read_to_its_end(
    proxy: FaultProxy, app: Orders, view: DynamoDBView
) -> StreamPoller:
    """Read the stream's shard to its end, close it, and return a new worker.

    DynamoDB Local closes shards only with the stream (AWS also every few
    hours). Then, as AWS once the shard's records pass 24 hours, the checkpoint
    (its last record) is refused as trimmed.
    """
    poll_until_projected(
        poller_of(app, view), view, app.place_order(uuid.uuid4(), [ITEM])
    )
    restarted = poller_of(app, view)  # knows no shard finished yet
    app.recorder.connection.call(
        "update_table",
        TableName=app.recorder.events_table_name,
        StreamSpecification={"StreamEnabled": False},
    )
    proxy.on("GetShardIterator", fault=TRIMMED, times=None)
    return restarted


def test_a_closed_shard_read_to_its_end_is_not_read_again(proxied):
    restarted = close_a_shard_read_to_its_end(*proxied)

    assert restarted.poll() == 0


def test_the_backlog_of_a_closed_shard_read_to_its_end_counts_nothing(proxied):
    restarted = close_a_shard_read_to_its_end(*proxied)

    assert restarted.backlog() == 0
