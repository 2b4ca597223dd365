"""What the indexer of ``DYNAMODB_ORDERING=indexed`` guarantees, on DynamoDB Local.

Each test saves through the indexed recorder, runs indexers on the events
table's real stream (some with the stream client's answers altered: records
shuffled, repeated, withheld), and checks the sequence the indexer wrote.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from aggregates.application import Orders
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder, schema
from ledger.dynamodb.batches import BatchEntry
from ledger.index_rounds import _Record
from ledger.indexer import Indexer, IndexOrderError, _units, paced
from ledger.projections import event_loader
from ledger.projections.dynamodb import open_view
from ledger.projections.rebuild import status
from ledger.projections.sequence import SequenceFeed
from projections.orders import OrderProjector, get_order_summary
from tests import indexed_support
from tests.indexed_support import (
    ReorderingStreams,
    all_notifications,
    checkpoints_item,
    index_until,
    repeated,
    stored,
)
from tests.test_corrupt_batches import damage_batch
from tests.test_projections_dynamodb import read_model
from tests.test_projections_orderings import copy_history

factory = indexed_support.factory
recorder = indexed_support.recorder


def random_saves(
    recorder: DynamoDBIndexedApplicationRecorder, count: int, seed: int
) -> list[list[StoredEvent]]:
    """Save ``count`` saves of 1 to 3 events of 4 aggregates; return them."""
    rng = random.Random(seed)
    aggregates = [uuid.uuid4() for _ in range(4)]
    return saves_across(recorder, aggregates, defaultdict(int), count, rng, most=3)


def saves_across(
    recorder: DynamoDBIndexedApplicationRecorder,
    aggregates: list[uuid.UUID],
    versions: dict[uuid.UUID, int],
    count: int,
    rng: random.Random,
    *,
    most: int = 4,
) -> list[list[StoredEvent]]:
    """Save ``count`` saves of 1 to ``most`` events of ``aggregates``, each
    aggregate's versions going on from ``versions``; return them."""
    saves = []
    for _ in range(count):
        save = []
        for _ in range(rng.randint(1, most)):
            aggregate = rng.choice(aggregates)
            versions[aggregate] += 1
            save.append(stored(aggregate, versions[aggregate]))
        recorder.insert_events(save)
        saves.append(save)
    return saves


def assert_indexed_once_in_order(
    recorder: DynamoDBIndexedApplicationRecorder, saves: list[list[StoredEvent]]
) -> None:
    """Gap-free positions, each event once, saves contiguous, versions in order."""
    notifications = list(all_notifications(recorder))
    assert [n.id for n in notifications] == list(range(1, len(notifications) + 1))
    keys = [(n.originator_id, n.originator_version) for n in notifications]
    saved = [(e.originator_id, e.originator_version) for s in saves for e in s]
    assert sorted(keys, key=str) == sorted(saved, key=str)
    assert len(set(keys)) == len(keys)
    position = {key: n.id for key, n in zip(keys, notifications, strict=True)}
    for save in saves:
        at = [position[e.originator_id, e.originator_version] for e in save]
        assert at == list(range(at[0], at[0] + len(save)))
    last: dict[Any, int] = {}
    for aggregate, version in keys:
        assert version == last.get(aggregate, 0) + 1
        last[aggregate] = version


def keep_polling(indexer: Indexer, rounds: int = 100) -> None:
    """Run rounds until one raises (the stream's records may come a little late)."""
    for _ in range(rounds):
        indexer.poll()


def altered(recorder: DynamoDBIndexedApplicationRecorder, alter: Any) -> Any:
    return ReorderingStreams(recorder.connection.streams_client(), alter)


def test_positions_are_gap_free_and_each_event_indexed_once(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    saves = random_saves(recorder, 30, seed=1)
    index_until(Indexer(recorder), recorder, [e for s in saves for e in s])
    assert_indexed_once_in_order(recorder, saves)


def test_redelivered_records_are_indexed_once(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    # Every page twice, and every shard read again from its start each round:
    # only the checkpoints and the drop of repeats keep them out.
    streams = altered(recorder, repeated)
    streams.from_start = True
    indexer = Indexer(recorder, streams_client=streams)
    first = random_saves(recorder, 10, seed=2)
    index_until(indexer, recorder, [e for s in first for e in s])
    second = random_saves(recorder, 10, seed=3)
    index_until(indexer, recorder, [e for s in second for e in s])
    indexer.poll()
    assert_indexed_once_in_order(recorder, first + second)


def test_shuffled_records_are_indexed_in_order_once(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    rng = random.Random(4)

    def shuffle(records: list[Any]) -> list[Any]:
        rng.shuffle(records)
        return records

    indexer = Indexer(recorder, streams_client=altered(recorder, shuffle))
    saves = []
    for seed in range(5):
        saves += random_saves(recorder, 6, seed=10 + seed)
        index_until(indexer, recorder, [e for s in saves for e in s])
    assert_indexed_once_in_order(recorder, saves)


def test_two_racing_indexers_index_each_event_once(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    stop = threading.Event()
    rounds: list[int] = []
    errors: list[BaseException] = []

    def race() -> None:
        indexer = Indexer(recorder)
        try:
            while not stop.is_set():
                rounds.append(indexer.poll())
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    racers = [threading.Thread(target=race) for _ in range(2)]
    for racer in racers:
        racer.start()
    try:
        saves = random_saves(recorder, 40, seed=5)
        recorder.wait_indexed([e for s in saves for e in s], timeout=60)
    finally:
        stop.set()
        for racer in racers:
            racer.join()
    assert errors == []
    assert_indexed_once_in_order(recorder, saves)


def test_a_crash_right_after_the_write_repeats_and_loses_nothing(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    class CrashError(Exception):
        pass

    def crash(positions: range) -> None:
        raise CrashError(positions)

    saves = random_saves(recorder, 10, seed=6)
    with pytest.raises(CrashError):
        keep_polling(Indexer(recorder, after_write=crash))
    # A new indexer (the crashed one's memory is gone) goes on from the index.
    more = random_saves(recorder, 5, seed=7)
    index_until(Indexer(recorder), recorder, [e for s in saves + more for e in s])
    assert_indexed_once_in_order(recorder, saves + more)


def test_a_save_is_held_back_until_all_its_records_have_arrived(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    save = [stored(first, 1), stored(second, 1)]
    recorder.insert_events(save)
    after = [stored(first, 2)]
    recorder.insert_events(after)
    hidden = {"on": True}

    def withhold_second(records: list[Any]) -> list[Any]:
        if not hidden["on"]:
            return records
        return [
            r
            for r in records
            if r["dynamodb"]["Keys"][schema.AGGREGATE_ID]["S"] != str(second)
        ]

    indexer = Indexer(recorder, streams_client=altered(recorder, withhold_second))
    indexer.poll()
    assert recorder.max_notification_id() is None  # held, with what follows it
    hidden["on"] = False
    index_until(indexer, recorder, save + after)
    assert_indexed_once_in_order(recorder, [save, after])


def test_interleaved_saves_are_each_appended_contiguously() -> None:
    a1 = _Record("s1", 1, "1", BatchEntry("a", 1, "t", b""), ("A", 0, 2))
    b1 = _Record("s1", 2, "2", BatchEntry("b", 1, "t", b""), ("B", 0, 2))
    a2 = _Record("s1", 3, "3", BatchEntry("c", 1, "t", b""), ("A", 1, 2))
    single = _Record("s2", 4, "4", BatchEntry("d", 1, "t", b""), None)
    b2 = _Record("s2", 5, "5", BatchEntry("e", 1, "t", b""), ("B", 1, 2))
    units = _units({"s1": [a1, b1, a2], "s2": [single, b2]}, None)
    assert units == [[a1, a2], [b1, b2], [single]]


def test_a_save_not_wholly_read_holds_back_what_follows_it_in_each_shard() -> None:
    a1 = _Record("s1", 1, "1", BatchEntry("a", 1, "t", b""), ("A", 0, 2))
    b1 = _Record("s1", 2, "2", BatchEntry("b", 1, "t", b""), ("B", 0, 2))
    before = _Record("s2", 3, "3", BatchEntry("d", 1, "t", b""), None)
    b2 = _Record("s2", 4, "4", BatchEntry("e", 1, "t", b""), ("B", 1, 2))
    assert _units({"s1": [a1, b1], "s2": [before, b2]}, None) == [[before]]


def test_a_version_gap_is_refused_not_skipped(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    aggregate = uuid.uuid4()
    recorder.insert_events([stored(aggregate, 1)])
    indexer = Indexer(recorder)
    index_until(indexer, recorder, [stored(aggregate, 1)])
    # Written past the recorder (which would refuse nothing here): version 3.
    recorder.insert_events([stored(aggregate, 3)])
    with pytest.raises(IndexOrderError, match=f"{aggregate} version 3"):
        keep_polling(indexer)
    assert recorder.max_notification_id() == 1


def test_sequence_feed_on_an_indexed_app_builds_the_sequence_ordering_read_model(
    dynamodb_env: dict[str, str], streamed: None
) -> None:
    def env(ordering: str) -> dict[str, str]:
        prefix = f"o{uuid.uuid4().hex[:10]}_"
        return {
            **dynamodb_env,
            "DYNAMODB_TABLE_PREFIX": prefix,
            "DYNAMODB_ORDERING": ordering,
        }

    source = Orders(env=env("stream"))
    customer = uuid.UUID(int=1)
    orders = [source.place_order(customer, [_item("apple", 2)]) for _ in range(3)]
    source.add_item(orders[0], "pear", 1, Decimal("0.50"))
    source.confirm(orders[0])
    source.ship(orders[0], "XX123456")
    source.cancel(orders[1], "changed my mind")
    source.add_item(orders[2], "fig", 3, Decimal("2.00"))

    def read_model_fed_by_sequence(ordering: str) -> dict[str, Any]:
        target_env = env(ordering)
        app = Orders(env=target_env)
        # The same events in both (one save per aggregate, several events each).
        copy_history(source, app)
        if ordering == "indexed":
            events = [e for o in orders for e in app.recorder.select_events(o)]
            index_until(Indexer(app.recorder), app.recorder, events)
        view = open_view(OrderProjector, target_env)
        feed = SequenceFeed(OrderProjector(view, event_loader(app)), app)
        while feed.poll():
            pass
        app.close()
        return read_model(view)

    by_indexed = read_model_fed_by_sequence("indexed")
    assert by_indexed == read_model_fed_by_sequence("sequence")
    assert by_indexed  # something was projected
    source.close()


def _item(product: str, quantity: int) -> dict[str, Any]:
    return {"product_id": product, "quantity": quantity, "price": Decimal("1.25")}


def test_a_projection_on_an_indexed_app_reports_its_position_and_lag(
    dynamodb_env: dict[str, str], streamed: None
) -> None:
    env = {**dynamodb_env, "DYNAMODB_ORDERING": "indexed"}
    app = Orders(env=env)
    placed = [app.place_order(uuid.UUID(int=1), [_item("fig", 1)]) for _ in range(2)]
    events = [e for o in placed for e in app.recorder.select_events(o)]
    index_until(Indexer(app.recorder), app.recorder, events)
    view = open_view(OrderProjector, env)

    before = status(view, app)
    feed = SequenceFeed(OrderProjector(view, event_loader(app)), app)
    while feed.poll():
        pass
    after = status(view, app)
    app.close()

    assert (before.position, before.head) == (None, len(events))
    assert (after.position, after.head) == (len(events), len(events))


def test_a_damaged_index_batch_is_never_skipped_past_its_events(
    dynamodb_env: dict[str, str], streamed: None
) -> None:
    env = {**dynamodb_env, "DYNAMODB_ORDERING": "indexed"}
    app = Orders(env=env)
    order_id = app.place_order(uuid.UUID(int=1), [_item("fig", 1)])
    events = list(app.recorder.select_events(order_id))
    index_until(Indexer(app.recorder), app.recorder, events)
    damage_batch(app, len(events), **{schema.EVENTS: {"B": b"\x07damaged"}})
    feed = SequenceFeed(
        OrderProjector(open_view(OrderProjector, env), event_loader(app)), app
    )
    feed.poll()
    assert feed.blocked is not None

    applied = feed.skip_batch(1)

    assert applied == len(events)  # its events applied, from the events table
    assert feed.position == len(events)
    assert get_order_summary(feed.projector.view, order_id) is not None
    app.close()


class SplitStreams(ReorderingStreams):
    """The real streams client, as if the stream's one shard had split at ``split``.

    DynamoDB Local never splits a shard, so the split is told here: the real
    shard is shown as a closed parent ending at sequence number ``split``
    and a child holding the records after it, each handed only its own.
    """

    def __init__(self, client: Any, split: int) -> None:
        super().__init__(client, lambda records: records)
        self.split = split
        self.parent: str | None = None

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        response: dict[str, Any] = self.client.describe_stream(**params)
        description = response["StreamDescription"]
        [shard] = description["Shards"]
        self.parent = shard["ShardId"]
        start = shard["SequenceNumberRange"]["StartingSequenceNumber"]
        description["Shards"] = [
            {
                "ShardId": self.parent,
                "SequenceNumberRange": {
                    "StartingSequenceNumber": start,
                    "EndingSequenceNumber": str(self.split),
                },
            },
            {
                "ShardId": f"{self.parent}-child",
                "ParentShardId": self.parent,
                "SequenceNumberRange": {"StartingSequenceNumber": str(self.split + 1)},
            },
        ]
        return response

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        shard_id = params["ShardId"]
        side = "child" if shard_id.endswith("-child") else "parent"
        params["ShardId"] = self.parent
        response = self.client.get_shard_iterator(**params)
        response["ShardIterator"] = f"{side}|{response['ShardIterator']}"
        return response

    def get_records(self, **params: Any) -> dict[str, Any]:
        side, _, iterator = params["ShardIterator"].partition("|")
        response: dict[str, Any] = self.client.get_records(
            **{**params, "ShardIterator": iterator}
        )
        records = response.get("Records", [])
        number = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
        if side == "parent":
            response["Records"] = [
                r for r, n in zip(records, number, strict=True) if n <= self.split
            ]
            if any(n >= self.split for n in number) or not records:
                response.pop("NextShardIterator", None)  # the parent is closed
                return response
        else:
            response["Records"] = [
                r for r, n in zip(records, number, strict=True) if n > self.split
            ]
        if response.get("NextShardIterator"):
            response["NextShardIterator"] = f"{side}|{response['NextShardIterator']}"
        return response


def stream_numbers(recorder: DynamoDBIndexedApplicationRecorder) -> dict[Any, int]:
    """Return each event's stream sequence number, by (aggregate id, version)."""
    client = recorder.connection.streams_client()
    arn = recorder.connection.call(
        "describe_table", TableName=recorder.events_table_name
    )["Table"]["LatestStreamArn"]
    [shard] = client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = client.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    numbers: dict[Any, int] = {}
    while iterator:
        page = client.get_records(ShardIterator=iterator)
        for record in page["Records"]:
            keys = record["dynamodb"]["Keys"]
            key = (keys[schema.AGGREGATE_ID]["S"], int(keys[schema.VERSION]["N"]))
            numbers[key] = int(record["dynamodb"]["SequenceNumber"])
        if not page["Records"]:
            break
        iterator = page.get("NextShardIterator")
    return numbers


def straddling_saves(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> tuple[list[list[StoredEvent]], int]:
    """Save a save between two others; return the three and a split inside it.

    The split is the save's first record's sequence number: a shard split
    there puts its second record in the child.
    """
    first, second, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    saves = [
        [stored(other, 1)],
        [stored(first, 1), stored(second, 1)],
        [stored(other, 2)],
    ]
    for save in saves:
        recorder.insert_events(save)
    return saves, stream_numbers(recorder)[str(first), 1]


def test_a_save_straddling_a_shard_split_is_indexed_whole(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    (before, straddling, after), split = straddling_saves(recorder)
    streams = SplitStreams(recorder.connection.streams_client(), split)
    indexer = Indexer(recorder, streams_client=streams)

    index_until(indexer, recorder, before + straddling + after, timeout=5.0)

    assert_indexed_once_in_order(recorder, [before, straddling, after])
    [parent, child] = streams.describe_stream(StreamArn=indexer.stream_arn)[
        "StreamDescription"
    ]["Shards"]
    checkpoints = indexer._read_state().checkpoints
    assert checkpoints[parent["ShardId"]] == str(split)  # read to its end
    assert int(checkpoints[child["ShardId"]]) > split
    indexer.poll()  # and nothing is indexed twice after
    assert_indexed_once_in_order(recorder, [before, straddling, after])


def test_a_child_shard_waits_whole_while_its_parent_holds_a_save_back() -> None:
    before = _Record("parent", 1, "1", BatchEntry("a", 1, "t", b""), None)
    held = _Record("parent", 2, "2", BatchEntry("b", 1, "t", b""), ("B", 0, 2))
    later = _Record("child", 3, "3", BatchEntry("a", 2, "t", b""), None)
    read = {"parent": [before, held], "child": [later]}
    assert _units(read, None, {"child": "parent"}) == [[before]]


class PageCounting(ReorderingStreams):
    """The real streams client, noting how many records each GetRecords returned."""

    def __init__(self, client: Any) -> None:
        super().__init__(client, lambda records: records)
        self.pages: list[int] = []

    def get_records(self, **params: Any) -> dict[str, Any]:
        response = super().get_records(**params)
        self.pages.append(len(response.get("Records", [])))
        return response


def test_a_round_reads_a_shard_up_to_its_first_short_page(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """Under steady writes, reading on after a short page fetched a few records a call.

    A short page is as far as the shard holds now: the next round goes on
    from there. What a round leaves is indexed by the next, once, in order.
    (DynamoDB Local gives a table one shard.)
    """
    streams = PageCounting(recorder.connection.streams_client())
    indexer = Indexer(recorder, streams_client=streams)
    saves: list[list[StoredEvent]] = []
    rounds: list[list[int]] = []
    for seed in range(3):
        saves += random_saves(recorder, 4, seed=seed)
        wanted = [e for save in saves for e in save]
        deadline = time.monotonic() + 20
        while True:
            streams.pages.clear()
            indexer.poll()
            rounds.append(list(streams.pages))
            try:
                recorder.wait_indexed(wanted, timeout=0)
                break
            except TimeoutError:
                assert time.monotonic() < deadline

    assert all(len(pages) == 1 for pages in rounds), rounds
    assert sum(page for pages in rounds for page in pages) == len(wanted)
    assert_indexed_once_in_order(recorder, saves)


def test_paced_rounds_last_their_interval_only_when_they_indexed() -> None:
    """`ledger index run`'s rounds: a busy one lasts its interval, an idle one not."""
    busy, idle = paced(lambda: 3, 0.3), paced(lambda: 0, 30.0)

    started = time.monotonic()
    assert busy() == 3
    waited = time.monotonic() - started
    started = time.monotonic()
    assert idle() == 0
    idled = time.monotonic() - started

    assert waited >= 0.3
    assert idled < 30.0


class EndOnEmptyPage(SplitStreams):
    """A split whose closed parent says so only on an empty page after its last records.

    The Streams API allows it: a null ``NextShardIterator`` is how a closed
    shard's end is told, and it may come with no records.
    """

    def get_records(self, **params: Any) -> dict[str, Any]:
        if params["ShardIterator"].startswith("parent-end|"):
            return {"Records": []}
        response = super().get_records(**params)
        side = params["ShardIterator"].partition("|")[0]
        if (
            side == "parent"
            and "NextShardIterator" not in response
            and response["Records"]
        ):
            response["NextShardIterator"] = "parent-end|x"
        return response


def test_a_closed_parent_is_read_to_an_end_told_on_an_empty_page(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    (before, straddling, after), split = straddling_saves(recorder)
    streams = EndOnEmptyPage(recorder.connection.streams_client(), split)
    indexer = Indexer(recorder, streams_client=streams)

    index_until(indexer, recorder, before + straddling + after, timeout=10.0)

    assert_indexed_once_in_order(recorder, [before, straddling, after])


class ParentGone(SplitStreams):
    """A split whose closed parent, once :attr:`gone`, has aged out of the listing."""

    gone = False

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        response = super().describe_stream(**params)
        if self.gone:
            shards = response["StreamDescription"]["Shards"]
            response["StreamDescription"]["Shards"] = [
                shard for shard in shards if shard["ShardId"] != self.parent
            ]
        return response


def test_a_parent_read_to_its_end_may_leave_the_stream_without_a_reindex(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    first, other = uuid.uuid4(), uuid.uuid4()
    before = [[stored(other, 1)], [stored(first, 1)]]
    for save in before:
        recorder.insert_events(save)
    split = stream_numbers(recorder)[str(first), 1]
    streams = ParentGone(recorder.connection.streams_client(), split)
    indexer = Indexer(recorder, streams_client=streams)
    index_until(indexer, recorder, [e for s in before for e in s])
    after = [[stored(other, 2)], [stored(first, 2)]]
    for save in after:
        recorder.insert_events(save)
    index_until(indexer, recorder, [e for s in after for e in s])

    streams.gone = True
    later = [[stored(other, 3)]]
    recorder.insert_events(later[0])
    index_until(indexer, recorder, later[0])

    assert schema.REINDEXED_AT not in checkpoints_item(recorder)  # never re-indexed
    assert_indexed_once_in_order(recorder, before + after + later)
