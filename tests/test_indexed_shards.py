"""The indexer across shards, racing indexers and lost answers, on DynamoDB Local.

DynamoDB Local gives a table's stream one shard that never splits: the
splits here are told by :class:`tests.indexed_support.ToldShards` (a parent
closed at a sequence number, children holding what comes after it), over
the real stream's records. The faults are the proxy's (``tests/faults.py``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError, StoredEvent
from eventsourcing.utils import Environment
from faults import CUT, LOSE_RESPONSE, Fault, FaultProxy

from ledger.dynamodb import (
    AmbiguousWriteError,
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
)
from ledger.dynamodb.batches import BatchEntry
from ledger.index_rounds import _Record
from ledger.indexer import Indexer, _units
from tests import indexed_support
from tests.indexed_support import (
    ToldShard,
    ToldShards,
    aggregate_of,
    index_until,
    indexed_env,
    stored,
)
from tests.test_indexed_guarantees import (
    assert_indexed_once_in_order,
    keep_polling,
    saves_across,
    stream_numbers,
)

factory = indexed_support.factory
recorder = indexed_support.recorder


def one_by_one(
    recorder: DynamoDBIndexedApplicationRecorder, aggregate: uuid.UUID, versions: range
) -> list[list[StoredEvent]]:
    """Save one event per save of ``aggregate``, at ``versions``; return the saves."""
    saves = [[stored(aggregate, version)] for version in versions]
    for save in saves:
        recorder.insert_events(save)
    return saves


def test_a_child_listed_first_waits_for_a_parent_longer_than_a_round(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """A child read before its parent is finished would index versions out of order.

    150 events of one aggregate, split after version 140: the parent holds
    more than a round reads (``batch_size=100``), the child is listed first
    and its TRIM_HORIZON starts after the split, so it has records to give
    from the first round on. Only the parents-first rule keeps versions 141
    to 150 back until the parent's 101 to 140 are indexed; reading parents
    first lets the child go in the round that reads its parent's end.
    """
    aggregate = uuid.uuid4()
    saves = one_by_one(recorder, aggregate, range(1, 151))
    split = on_the_stream(recorder, (str(aggregate), 150))[str(aggregate), 140]
    streams = parent_and_child(recorder, split)
    indexer = Indexer(recorder, batch_size=100, streams_client=streams)

    assert indexer.poll() == 100  # the parent's first 100: the child waits
    # The parent's last 40, read to its end, then in the same round the child.
    assert indexer.poll() == 50

    assert_indexed_once_in_order(recorder, saves)
    checkpoints = indexer._read_state().checkpoints
    assert checkpoints[streams.shard_id("parent")] == str(split)  # read to its end
    assert int(checkpoints[streams.shard_id("child")]) > split


def on_the_stream(
    recorder: DynamoDBIndexedApplicationRecorder, last: tuple[str, int]
) -> dict[Any, int]:
    """Wait until the event ``last`` is on the stream; return ``stream_numbers``."""
    deadline = time.monotonic() + 10.0
    while True:
        numbers = stream_numbers(recorder)
        if last in numbers:
            return numbers
        assert time.monotonic() < deadline, f"{last} never reached the stream"


def parity(record: Any) -> int:
    return uuid.UUID(aggregate_of(record)).int % 2


def of_parity(bit: int, count: int) -> list[uuid.UUID]:
    """Return ``count`` new aggregate ids whose integer value has parity ``bit``."""
    found: list[uuid.UUID] = []
    while len(found) < count:
        candidate = uuid.uuid4()
        if candidate.int % 2 == bit:
            found.append(candidate)
    return found


def even_and_odd_shards(recorder: DynamoDBIndexedApplicationRecorder) -> ToldShards:
    """The stream told as two sibling shards: aggregates of even and odd parity."""
    return ToldShards(
        recorder.connection.streams_client(),
        [
            ToldShard("even", lambda r: parity(r) == 0),
            ToldShard("odd", lambda r: parity(r) == 1),
        ],
    )


def parent_and_child(
    recorder: DynamoDBIndexedApplicationRecorder, split: int
) -> ToldShards:
    """The stream told as a parent ending at record ``split``, its child after it."""
    return ToldShards(
        recorder.connection.streams_client(),
        [
            ToldShard("child", parent="parent", after=split),
            ToldShard("parent", ending=split),
        ],
    )


def test_a_save_across_sibling_shards_comes_after_earlier_events_of_its_aggregates(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    """A save in two open shards is appended whole, after what precedes it in each.

    The odd shard holds ``odd`` version 1 before the save's ``odd`` version
    2; the even shard, listed first, begins with the save's other event. One
    round reads both: the save may not go before ``odd`` version 1, nor be
    split around it.
    """
    [even], [odd] = of_parity(0, 1), of_parity(1, 1)
    saves = [[stored(odd, 1)], [stored(even, 1), stored(odd, 2)], [stored(odd, 3)]]
    for save in saves:
        recorder.insert_events(save)
    streams = even_and_odd_shards(recorder)

    index_until(Indexer(recorder, streams_client=streams), recorder, saves[-1])

    assert_indexed_once_in_order(recorder, saves)


def test_units_across_shards_keep_each_aggregates_order() -> None:
    odd1 = _Record("odd", 1, "1", BatchEntry("o", 1, "t", b""), None)
    even1 = _Record("even", 2, "2", BatchEntry("e", 1, "t", b""), ("S", 0, 2))
    odd2 = _Record("odd", 3, "3", BatchEntry("o", 2, "t", b""), ("S", 1, 2))
    units = _units({"even": [even1], "odd": [odd1, odd2]}, None)
    assert units == [[odd1], [even1, odd2]]


class InStep(ToldShards):
    """Told shards whose DescribeStream (a round's first call) waits for the other's.

    So the two indexers begin each round together and read the same
    checkpoints: whenever there is something new, both try to commit it.
    """

    def __init__(
        self, client: Any, shards: list[ToldShard], rounds: threading.Barrier
    ) -> None:
        super().__init__(client, shards)
        self.rounds = rounds

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        self.rounds.wait()
        return super().describe_stream(**params)


def test_two_indexers_racing_over_two_open_sibling_shards_index_each_event_once(
    recorder: DynamoDBIndexedApplicationRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Saves spread over two open children of one split, two indexers racing.

    The children hold the records after the split by the parity of their
    aggregate id (as DynamoDB Streams spreads partition keys by hash), so a
    save of several aggregates has records in both, and each round of either
    indexer reads both. Saved in steps while the indexers race, round by round.
    """
    caplog.set_level(logging.INFO, logger="ledger.indexer")
    rng = random.Random(8)
    aggregates = of_parity(0, 3) + of_parity(1, 3)
    versions: dict[uuid.UUID, int] = defaultdict(int)
    saves = saves_across(recorder, aggregates, versions, 10, rng)
    last = saves[-1][-1]
    split = on_the_stream(recorder, (str(last.originator_id), last.originator_version))[
        str(last.originator_id), last.originator_version
    ]
    shards = [
        ToldShard("parent", ending=split),
        ToldShard("even", lambda r: parity(r) == 0, parent="parent", after=split),
        ToldShard("odd", lambda r: parity(r) == 1, parent="parent", after=split),
    ]
    stop = threading.Event()
    rounds = threading.Barrier(2, timeout=30.0)
    errors: list[BaseException] = []
    committed: list[range] = []

    def race() -> None:
        streams = InStep(recorder.connection.streams_client(), shards, rounds)
        indexer = Indexer(
            recorder, streams_client=streams, after_write=committed.append
        )
        try:
            while not stop.is_set():
                indexer.poll()
        except threading.BrokenBarrierError:
            if not stop.is_set():
                errors.append(AssertionError("a racer stopped racing"))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            rounds.abort()

    racers = [threading.Thread(target=race) for _ in range(2)]
    for racer in racers:
        racer.start()
    try:
        for _ in range(8):
            saves += saves_across(recorder, aggregates, versions, 5, rng)
            recorder.wait_indexed([e for s in saves for e in s], timeout=30)
    finally:
        stop.set()
        rounds.abort()
        for racer in racers:
            racer.join()

    assert errors == []
    assert_indexed_once_in_order(recorder, saves)
    assert any(len({parity_of(e) for e in save}) == 2 for save in saves[10:])
    # Each position was committed by one indexer, once; the other lost rounds.
    events = sum(len(save) for save in saves)
    assert sorted(p for r in committed for p in r) == list(range(1, events + 1))
    lost = [r for r in caplog.records if "another indexer advanced" in r.getMessage()]
    assert lost


def parity_of(event: StoredEvent) -> int:
    return event.originator_id.int % 2


ATTEMPTS = 3
"""DYNAMODB_MAX_ATTEMPTS of the indexer's connection: each request is sent at
most this often."""


@pytest.fixture
def proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture
def through_proxy(
    proxy: FaultProxy, table_prefix: str, recorder: DynamoDBIndexedApplicationRecorder
) -> Iterator[DynamoDBIndexedApplicationRecorder]:
    """The ``recorder``'s tables, through the proxy (``ATTEMPTS`` per request)."""
    env = {
        **indexed_env(proxy.endpoint_url, table_prefix),
        "DYNAMODB_MAX_ATTEMPTS": str(ATTEMPTS),
    }
    factory = DynamoDBFactory(Environment("ledger_test", env))
    made = factory.application_recorder()
    assert isinstance(made, DynamoDBIndexedApplicationRecorder)
    yield made
    factory.close()


@pytest.mark.parametrize(
    ("fault", "times"),
    [(LOSE_RESPONSE, 1), (LOSE_RESPONSE, None), (CUT, 1), (CUT, None)],
    ids=[
        "answer-lost-once",
        "answer-lost-every-attempt",
        "cut-once",
        "cut-every-attempt",
    ],
)
def test_a_commit_whose_answer_is_lost_or_cut_indexes_each_event_once(
    recorder: DynamoDBIndexedApplicationRecorder,
    through_proxy: DynamoDBIndexedApplicationRecorder,
    proxy: FaultProxy,
    fault: Fault,
    times: int | None,
) -> None:
    """The indexer's transaction through a faulty network, then the indexer goes on.

    A lost answer: the commit was applied and the indexer cannot tell
    (botocore sends it again, with the same ClientRequestToken; when every
    attempt's answer is lost, the round raises). A cut: it never reached
    DynamoDB. Either way, the same indexer's next rounds index every event
    once, in order, and what is saved after.
    """
    committed: list[range] = []
    indexer = Indexer(through_proxy, after_write=committed.append)
    rng = random.Random(9)
    aggregates = [uuid.uuid4() for _ in range(3)]
    versions: dict[uuid.UUID, int] = defaultdict(int)
    earlier = saves_across(recorder, aggregates, versions, 3, rng)
    index_until(indexer, recorder, [e for s in earlier for e in s])
    saves = saves_across(recorder, aggregates, versions, 5, rng)
    since = len(proxy.requests)
    rule = proxy.on("TransactWriteItems", fault=fault, times=times)

    if times is None:
        with pytest.raises(OperationalError) as raised:
            keep_polling(indexer)
        proxy.clear_rules()  # the network heals
        if fault == LOSE_RESPONSE:
            assert isinstance(raised.value, AmbiguousWriteError)
    else:
        index_until(indexer, recorder, [e for s in saves for e in s])
    later = saves_across(recorder, aggregates, versions, 5, rng)
    index_until(indexer, recorder, [e for s in later for e in s])
    indexer.poll()

    commits = [r for r in proxy.requests[since:] if r[0] == "TransactWriteItems"]
    assert rule.fired == (ATTEMPTS if times is None else 1)
    assert commits[: rule.fired] == [("TransactWriteItems", fault)] * rule.fired
    assert_indexed_once_in_order(recorder, earlier + saves + later)
    told = sorted(p for r in committed for p in r)
    before, during, after = (sum(map(len, part)) for part in (earlier, saves, later))
    total = before + during + after
    if times is None and fault == LOSE_RESPONSE:
        # Applied, but never answered: ``after_write`` hears of no commit of
        # ``saves``, only of the next, whose positions (and head) come after.
        unheard = range(before + 1, before + during + 1)
        assert told == [p for p in range(1, total + 1) if p not in unheard]
    else:
        assert told == list(range(1, total + 1))
