"""Read models come out the same whichever ordering and feed built them."""

from __future__ import annotations

import random
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregates.application import Orders
from aggregates.strategies import order_scripts
from ledger.dynamodb import schema as store_schema
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import rebuild
from ledger.projections.streams import process_records
from projections.orders import OrderProjector
from tests.test_projections_dynamodb import interleave, read_model, stream_records


def copy_history(source: Orders, target: Orders) -> None:
    """Store the source's events, unchanged, in the target (one save per aggregate)."""
    connection = source.factory.connection
    table = source.recorder.events_table_name
    ids = {
        item[store_schema.AGGREGATE_ID]["S"]
        for item in connection.items("scan", TableName=table)
    }
    for originator_id in sorted(ids):
        events = source.recorder.select_events(uuid.UUID(originator_id))
        target.recorder.insert_events(events)


@settings(max_examples=5)
@given(
    scripts=st.lists(order_scripts(max_commands=5), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_stream_feed_stream_rebuild_and_sequence_rebuild_build_one_read_model(
    dynamodb_env, scripts, seed
):
    def env(ordering: str) -> dict[str, str]:
        prefix = f"o{uuid.uuid4().hex[:10]}_"
        return {
            **dynamodb_env,
            "DYNAMODB_TABLE_PREFIX": prefix,
            "DYNAMODB_ORDERING": ordering,
        }

    stream_env, sequence_env = env("stream"), env("sequence")
    streamed = Orders(env=stream_env)
    sequenced = Orders(env=sequence_env)
    for script in scripts:
        script.run(streamed)
    copy_history(streamed, sequenced)

    fed = open_view(OrderProjector, stream_env)
    records = interleave(stream_records(streamed), random.Random(seed))
    assert (
        process_records(
            OrderProjector(fed, event_loader(streamed)), records, streamed.mapper
        )
        == []
    )
    from_scan = rebuild(streamed, OrderProjector, open_view(OrderProjector, stream_env))
    from_sequence = rebuild(
        sequenced, OrderProjector, open_view(OrderProjector, sequence_env)
    )

    by_feed = read_model(fed.at_version(1))
    assert read_model(fed.at_version(from_scan.table_version)) == by_feed
    sequence_view = open_view(OrderProjector, sequence_env)
    assert read_model(sequence_view.at_version(from_sequence.table_version)) == by_feed
    streamed.close()
    sequenced.close()
