"""The indexer with reader processes (``readers=N``), on DynamoDB Local.

The committer keeps the round (checkpoints, parents first, regrouping,
version checks, the transaction); reader processes read the shards. These
tests check that what it appends is what one process appends (each event
once, positions gap-free, versions in order, saves contiguous, across a told
shard split: see :class:`tests.indexed_support.ToldShards`), that a reader
killed, raising or stalling loses and repeats nothing, and that no reader
outlives its indexer. Faults in a reader are made by its streams client,
which the reader makes in its own process (``reader_client``): a marker
file says which reader process fails, once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from eventsourcing.persistence import OperationalError
from faults import DELAY, FaultProxy

from aggregates.application import Orders
from ledger import index_readers
from ledger.dynamodb import DynamoDBIndexedApplicationRecorder
from ledger.dynamodb.client import DynamoDBConnection
from ledger.feeds.polling import run_polls
from ledger.index_readers import RESTARTS, IndexDeadlineError, IndexReaderError
from ledger.indexer import Indexer
from tests import indexed_support
from tests.indexed_support import (
    ReorderingStreams,
    ToldShards,
    index_until,
    stored,
)
from tests.test_indexed_guarantees import assert_indexed_once_in_order, saves_across
from tests.test_indexed_shards import (
    even_and_odd_shards,
    of_parity,
    on_the_stream,
    one_by_one,
    parent_and_child,
)

factory = indexed_support.factory
recorder = indexed_support.recorder

ROOT = Path(__file__).parent.parent
RUN = ("index", "run", "--readers", "2", "--interval", "0.1")


def random_saves(
    recorder: DynamoDBIndexedApplicationRecorder, count: int, seed: int
) -> list[list[Any]]:
    """Save ``count`` saves of 1 to 4 events of 6 aggregates; return them."""
    aggregates = [uuid.uuid4() for _ in range(6)]
    return saves_across(
        recorder, aggregates, defaultdict(int), count, random.Random(seed)
    )


def events_of(saves: list[list[Any]]) -> list[Any]:
    return [event for save in saves for event in save]


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie whose parent died counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def readers_running() -> list[Any]:
    """This process's reader processes that have not ended (or were not reaped)."""
    return [
        process
        for process in multiprocessing.active_children()
        if process.name.startswith("ledger-index-reader")
    ]


def children_of(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (Linux's /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split()
        found += [int(child) for child in children]
    return found


def in_time(call: Callable[[], object], seconds: float) -> tuple[bool, list[object]]:
    """Run ``call`` in a thread: whether it ended within ``seconds``, and its outcome.

    The outcome: what it returned or raised. A call that outlives
    ``seconds`` (a round waiting on a hung reader) is freed by killing this
    process's readers until it ends, so that the test can report it.
    """
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # noqa: BLE001 - the test reports it
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    ended = not thread.is_alive()
    while thread.is_alive():
        for reader in readers_running():
            reader.kill()
        thread.join(0.1)
    return ended, outcome


@pytest.fixture
def indexers() -> Iterator[list[Indexer]]:
    """Indexers made by the test, closed after it (their readers ended)."""
    made: list[Indexer] = []
    yield made
    for indexer in made:
        indexer.close()


class FailingOnce(ReorderingStreams):
    """A reader's streams client whose first GetRecords fails, in one process only.

    The marker file is taken (removed) by the first reader to read a page:
    that reader then runs ``fault`` (kills itself, raises, stalls); the
    reader started in its place reads normally.
    """

    def __init__(
        self,
        client: Any,
        marker: Path,
        fault: Callable[[], None],
        shard: str = "",
    ) -> None:
        super().__init__(client, lambda records: records)
        self.marker = marker
        self.fault = fault
        self.shard = shard
        """Fail only reading this told shard (its iterators start with its name)."""

    def get_records(self, **params: Any) -> dict[str, Any]:
        if not params["ShardIterator"].startswith(self.shard):
            return super().get_records(**params)
        try:
            self.marker.unlink()
        except FileNotFoundError:
            return super().get_records(**params)
        self.fault()
        return super().get_records(**params)


def refused(records: list[Any]) -> list[Any]:
    raise AssertionError("the committer read records itself")


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def stall() -> None:
    time.sleep(600)  # the fault itself: a reader that stops answering


def refuse() -> None:
    raise botocore.exceptions.ClientError(
        {"Error": {"Code": "InternalServerError", "Message": "told to fail"}},
        "GetRecords",
    )


def failing_once(
    recorder: DynamoDBIndexedApplicationRecorder,
    marker: Path,
    fault: Callable[[], None],
) -> Callable[[], Any]:
    marker.touch()
    return lambda: FailingOnce(recorder.connection.streams_client(), marker, fault)


def reader_told_shards(
    recorder: DynamoDBIndexedApplicationRecorder, streams: ToldShards
) -> ToldShards:
    """A reader's own client showing the committer's told shards.

    Made in the reader, forked once the committer listed the shards (so
    ``streams.real``, the real shard's id, is known).
    """
    own = ToldShards(recorder.connection.streams_client(), list(streams.told.values()))
    own.real = streams.real
    return own


def test_with_two_readers_every_event_is_indexed_once_in_order(
    recorder: DynamoDBIndexedApplicationRecorder, indexers: list[Indexer]
) -> None:
    saves = random_saves(recorder, 60, seed=7)
    # The committer lists the shards; only the readers may read them.
    committer_reads = ReorderingStreams(recorder.connection.streams_client(), refused)
    indexer = Indexer(recorder, readers=2, streams_client=committer_reads)
    indexers.append(indexer)

    index_until(indexer, recorder, events_of(saves))

    assert_indexed_once_in_order(recorder, saves)
    assert indexer._pool is not None
    assert len(indexer._pool.pids()) == 1  # DynamoDB Local's stream: one shard
    assert indexer._pool.restarts == 0


def test_readers_read_a_split_shard_parents_first(
    recorder: DynamoDBIndexedApplicationRecorder, indexers: list[Indexer]
) -> None:
    """A child is given to a reader only once its parent is read to its end.

    As in ``test_a_child_listed_first_waits_for_a_parent_longer_than_a_round``:
    150 events of one aggregate split after version 140, rounds of 100. In
    the round that reads the parent's end, the child is read in the next
    wave of reads, after the parent's answer.
    """
    aggregate = uuid.uuid4()
    saves = one_by_one(recorder, aggregate, range(1, 151))
    split = on_the_stream(recorder, (str(aggregate), 150))[str(aggregate), 140]
    streams = parent_and_child(recorder, split)

    def told_shards() -> Any:
        return reader_told_shards(recorder, streams)

    indexer = Indexer(
        recorder,
        batch_size=100,
        streams_client=streams,
        readers=2,
        reader_client=told_shards,
    )
    indexers.append(indexer)

    assert indexer.poll() == 100  # the parent's first 100: the child waits
    assert indexer.poll() == 50  # the parent's end, then the child, one round

    assert_indexed_once_in_order(recorder, saves)
    checkpoints = indexer._read_state().checkpoints
    assert checkpoints[streams.shard_id("parent")] == str(split)
    assert int(checkpoints[streams.shard_id("child")]) > split


def test_a_save_across_shards_read_by_two_readers_is_appended_whole(
    recorder: DynamoDBIndexedApplicationRecorder, indexers: list[Indexer]
) -> None:
    """A save in two sibling shards, each read by its own reader, stays contiguous."""
    [even], [odd] = of_parity(0, 1), of_parity(1, 1)
    saves = [[stored(odd, 1)], [stored(even, 1), stored(odd, 2)], [stored(odd, 3)]]
    for save in saves:
        recorder.insert_events(save)
    streams = even_and_odd_shards(recorder)

    def told_shards() -> Any:
        return reader_told_shards(recorder, streams)

    indexer = Indexer(
        recorder, streams_client=streams, readers=2, reader_client=told_shards
    )
    indexers.append(indexer)

    index_until(indexer, recorder, events_of(saves))

    assert_indexed_once_in_order(recorder, saves)
    assert indexer._pool is not None
    assert len(indexer._pool.pids()) == 2  # one shard each


def test_a_reader_killed_between_rounds_is_replaced_and_nothing_is_lost(
    recorder: DynamoDBIndexedApplicationRecorder, indexers: list[Indexer]
) -> None:
    first = random_saves(recorder, 20, seed=1)
    indexer = Indexer(recorder, readers=2)
    indexers.append(indexer)
    index_until(indexer, recorder, events_of(first))
    assert indexer._pool is not None
    [killed] = indexer._pool.pids()  # DynamoDB Local's stream: one shard

    os.kill(killed, signal.SIGKILL)
    more = random_saves(recorder, 20, seed=2)
    index_until(indexer, recorder, events_of(more))

    assert_indexed_once_in_order(recorder, first + more)
    assert indexer._pool.restarts == 1
    assert killed not in indexer._pool.pids()


def test_a_reader_killed_reading_is_replaced_in_the_round(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    tmp_path: Path,
) -> None:
    """Killed in its GetRecords: the round reads its shards again, once."""
    saves = random_saves(recorder, 40, seed=3)
    client = failing_once(recorder, tmp_path / "fail", kill_myself)
    indexer = Indexer(recorder, readers=2, reader_client=client)
    indexers.append(indexer)

    index_until(indexer, recorder, events_of(saves))

    assert_indexed_once_in_order(recorder, saves)
    assert indexer._pool is not None
    assert indexer._pool.restarts == 1


def test_a_reader_that_stalls_is_killed_and_replaced(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    tmp_path: Path,
) -> None:
    saves = random_saves(recorder, 20, seed=4)
    client = failing_once(recorder, tmp_path / "fail", stall)
    indexer = Indexer(recorder, readers=1, reader_timeout=3.0, reader_client=client)
    indexers.append(indexer)
    index_until(indexer, recorder, events_of(saves))

    assert_indexed_once_in_order(recorder, saves)
    assert indexer._pool is not None
    assert indexer._pool.restarts == 1
    assert len(readers_running()) == 1  # the stalled one was killed


@pytest.mark.parametrize("readers", [0, 1])
def test_a_run_waits_out_an_outage_longer_than_the_reader_timeout(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    dynamodb_endpoint: str,
    readers: int,
) -> None:
    """With readers as without: each GetRecords held past its client's retries.

    Scaled down: the streams client has 4 attempts of 1 s reads (a call
    gives up after about 4 s, where the connection's defaults take minutes),
    the reader timeout is 3 s (where it is 2 minutes; 3 s, not less, so that
    a loaded machine's pauses are not taken for a stall). A reader waiting
    out its call is not killed for stalling: its error ends the round, the
    run waits and polls again, then indexes everything once.
    """
    saves = random_saves(recorder, 10, seed=8)
    with FaultProxy(dynamodb_endpoint) as proxy:
        through = DynamoDBConnection(
            endpoint_url=proxy.endpoint_url,
            max_attempts=4,
            connect_timeout=0.5,
            read_timeout=1.0,
        )
        proxy.on("GetRecords", fault=DELAY(2.0), times=None)
        indexer = Indexer(
            recorder,
            readers=readers,
            reader_timeout=3.0,
            reader_client=through.streams_client,
            streams_client=through.streams_client() if not readers else None,
        )
        indexers.append(indexer)
        stop = threading.Event()
        ended: list[BaseException] = []

        def run() -> None:
            try:
                run_polls(indexer.poll, stop, interval=0.1, max_backoff=0.5)
            except BaseException as error:  # noqa: BLE001 - the test reports it
                ended.append(error)

        loop = threading.Thread(target=run, daemon=True)
        loop.start()
        try:
            # Three rounds' calls held: longer than RESTARTS reader timeouts.
            deadline = time.monotonic() + 90
            while sum(op == "GetRecords" for op, _ in proxy.requests) < 12:
                assert not ended, f"the run stopped in the outage: {ended[0]!r}"
                assert time.monotonic() < deadline, "the outage was not reached"
                time.sleep(0.05)
            proxy.clear_rules()  # the outage ends
            deadline = time.monotonic() + 30
            while (recorder.max_notification_id() or 0) < len(events_of(saves)):
                assert not ended, f"the run stopped in the outage: {ended[0]!r}"
                assert time.monotonic() < deadline, "not indexed after the outage"
                time.sleep(0.05)
        finally:
            stop.set()
            loop.join(30)

    assert not ended
    assert_indexed_once_in_order(recorder, saves)
    if readers:
        assert indexer._pool is not None
        assert indexer._pool.restarts == 0  # none was taken for stalled


def test_a_round_waits_for_its_readers_at_once_not_one_after_the_other(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    tmp_path: Path,
) -> None:
    """Both readers of a round stall: the round waits one reader timeout, not two.

    Two told shards, one reader each; each reader's first read stalls (it
    answers nothing), so each is killed after ``reader_timeout`` and
    replaced. Waited for at once, the round takes about one timeout (5 s)
    and the replacements' reads; waited for in turn, two (about 10.7 s).
    """
    [even], [odd] = of_parity(0, 1), of_parity(1, 1)
    saves = [[stored(even, 1)], [stored(odd, 1)]]
    for save in saves:
        recorder.insert_events(save)
    on_the_stream(recorder, (str(odd), 1))
    streams = even_and_odd_shards(recorder)
    markers = tmp_path / "even", tmp_path / "odd"
    for marker in markers:
        marker.touch()

    def both_stall_once() -> Any:
        told = reader_told_shards(recorder, streams)
        even_stalls = FailingOnce(told, markers[0], stall, shard="even|")
        return FailingOnce(even_stalls, markers[1], stall, shard="odd|")

    timeout = 5.0
    indexer = Indexer(
        recorder,
        streams_client=streams,
        readers=2,
        reader_timeout=timeout,
        reader_client=both_stall_once,
    )
    indexers.append(indexer)

    began = time.monotonic()
    index_until(indexer, recorder, events_of(saves))
    took = time.monotonic() - began

    assert not any(marker.exists() for marker in markers)  # both stalled
    assert indexer._pool is not None
    assert indexer._pool.restarts == 2
    assert took < 1.6 * timeout, f"the round waited {took:.1f} s for its readers"
    assert_indexed_once_in_order(recorder, saves)


def test_a_round_past_its_deadline_kills_its_readers_and_commits_nothing(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    dynamodb_endpoint: str,
) -> None:
    """A reader hung in GetRecords is not waited for past the round's deadline.

    Every GetRecords is held 600 s, far longer than the reader's client
    waits for it (the connection's default settings: 10 attempts of 30 s
    reads, 506 s in all, which the committer would otherwise wait out as an
    outage). The round's deadline, 3 s ahead, ends it: the reader is
    killed, the round raises, nothing is indexed. The fault gone and no
    deadline, the next rounds index everything once.
    """
    saves = random_saves(recorder, 10, seed=9)
    last = saves[-1][-1]
    on_the_stream(recorder, (str(last.originator_id), last.originator_version))
    with FaultProxy(dynamodb_endpoint) as proxy:
        through = DynamoDBConnection(endpoint_url=proxy.endpoint_url)
        assert (index_readers.call_budget(through.streams_client()) or 0) > 500
        proxy.on("GetRecords", fault=DELAY(600), times=None)
        indexer = Indexer(recorder, readers=2, reader_client=through.streams_client)
        indexers.append(indexer)
        indexer.round_deadline = time.monotonic() + 3.0

        ended, outcome = in_time(indexer.poll, 3.0 + 5.0)

        assert ("GetRecords", DELAY(600)) in proxy.requests  # a reader was held
        assert ended, "the round outlived its deadline"
        [raised] = outcome
        assert isinstance(raised, IndexDeadlineError), raised
        assert isinstance(raised, OperationalError)
        assert "ran out of time" in str(raised)
        assert readers_running() == []  # the hung reader was killed
        assert not recorder.max_notification_id()  # nothing committed

        proxy.clear_rules()  # the fault gone
        indexer.round_deadline = None
        index_until(indexer, recorder, events_of(saves))

    assert_indexed_once_in_order(recorder, saves)


def test_a_reader_whose_committer_died_starts_no_other_call(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    dynamodb_endpoint: str,
) -> None:
    """Its pipe closed while a GetRecords is under way: that call is its last.

    1,100 records: a full first page of 1,000, which the reader would follow
    with another GetRecords. The first is held 1 s; meanwhile the
    committer's end of the pipe closes (as the committer's death closes it).
    """
    aggregates = [uuid.uuid4() for _ in range(11)]
    for aggregate in aggregates:
        recorder.insert_events([stored(aggregate, v) for v in range(1, 101)])
    on_the_stream(recorder, (str(aggregates[-1]), 100))
    with FaultProxy(dynamodb_endpoint) as proxy:
        through = DynamoDBConnection(endpoint_url=proxy.endpoint_url)
        proxy.on("GetRecords", fault=DELAY(1.0))
        indexer = Indexer(recorder, readers=1, reader_client=through.streams_client)
        indexers.append(indexer)
        pool = indexer._reader_pool()
        [shard] = indexer._shards()
        pool._send(0, (1, {}, [(shard, None, None)], (10_000, 10**9)), {0: 0})
        reader = pool._readers[0]
        assert reader is not None
        deadline = time.monotonic() + 20
        while ("GetRecords", DELAY(1.0)) not in proxy.requests:
            assert time.monotonic() < deadline, "the reader never read"
            time.sleep(0.02)

        reader.connection.close()  # the committer's end, as its death closes it
        reader.process.join(30)

        assert reader.process.exitcode == 0
        assert [op for op, _ in proxy.requests].count("GetRecords") == 1


def test_an_error_in_a_reader_is_raised_by_the_round_and_nothing_indexed(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    tmp_path: Path,
) -> None:
    """As in process: the round raises the reader's error; the next round reads."""
    saves = random_saves(recorder, 20, seed=5)
    on_the_stream(
        recorder, (str(saves[-1][-1].originator_id), saves[-1][-1].originator_version)
    )
    client = failing_once(recorder, tmp_path / "fail", refuse)
    indexer = Indexer(recorder, readers=1, reader_client=client)
    indexers.append(indexer)

    with pytest.raises(OperationalError) as raised:
        indexer.poll()

    assert "reader process" in "".join(getattr(raised.value, "__notes__", []))
    assert not recorder.max_notification_id()  # nothing committed
    index_until(indexer, recorder, events_of(saves))
    assert_indexed_once_in_order(recorder, saves)
    assert indexer._pool is not None
    assert indexer._pool.restarts == 0  # it raised, and lived on


def test_a_round_that_raised_leaves_no_answer_for_the_next(
    recorder: DynamoDBIndexedApplicationRecorder,
    indexers: list[Indexer],
    tmp_path: Path,
) -> None:
    """The even shard's reader raises; the odd one's answer must not serve later."""
    [even], [odd] = of_parity(0, 1), of_parity(1, 1)
    first = [[stored(even, 1)], [stored(odd, 1)]]
    for save in first:
        recorder.insert_events(save)
    on_the_stream(recorder, (str(odd), 1))
    streams = even_and_odd_shards(recorder)
    marker = tmp_path / "fail"
    marker.touch()

    def even_fails_once() -> Any:
        return FailingOnce(
            reader_told_shards(recorder, streams), marker, refuse, shard="even|"
        )

    indexer = Indexer(
        recorder, streams_client=streams, readers=2, reader_client=even_fails_once
    )
    indexers.append(indexer)

    with pytest.raises(OperationalError):
        indexer.poll()  # the odd shard's reader answered; its answer is unread
    index_until(indexer, recorder, events_of(first))
    more = [[stored(even, 2)], [stored(odd, 2)]]
    for save in more:
        recorder.insert_events(save)
    index_until(indexer, recorder, events_of(more))

    assert_indexed_once_in_order(recorder, first + more)


def test_readers_that_keep_dying_stop_the_run_with_a_clear_error(
    recorder: DynamoDBIndexedApplicationRecorder, indexers: list[Indexer]
) -> None:
    recorder.insert_events([stored(uuid.uuid4(), 1)])

    def dying() -> Any:
        kill_myself()

    indexer = Indexer(recorder, readers=1, reader_client=dying)
    indexers.append(indexer)

    with pytest.raises(IndexReaderError, match=f"failed {RESTARTS} times in a row"):
        indexer.poll()

    assert not recorder.max_notification_id()
    assert readers_running() == []  # the dead readers were reaped


def test_stop_ends_the_readers(
    recorder: DynamoDBIndexedApplicationRecorder,
) -> None:
    saves = random_saves(recorder, 10, seed=6)
    with Indexer(recorder, readers=2) as indexer:
        recorder.wait_indexed(events_of(saves), timeout=20)
        assert indexer._pool is not None
        readers = indexer._pool.pids()
        assert len(readers) == 1  # DynamoDB Local's stream: one shard

    assert all(gone(pid) for pid in readers)
    assert readers_running() == []


def slow_read() -> None:
    time.sleep(3)


def slow_read_then_death() -> None:
    time.sleep(3)
    kill_myself()


@pytest.mark.parametrize("fault", [slow_read, slow_read_then_death])
def test_a_round_outliving_stop_ends_its_readers_and_starts_none(
    recorder: DynamoDBIndexedApplicationRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[], None],
) -> None:
    """stop() leaves the readers to the thread using them, when it outlives stop.

    The round's first read takes 3 s; stop gives up after 0.2 s, and a
    second stop waits for the thread (it closes nothing under it). The round
    goes on with its reader (not closed under it) and commits, or, when the
    reader then dies, ends there (no reader is started after a stop was
    asked) committing nothing; either way the thread ends its readers as it
    ends, and raises nothing.
    """
    aggregate = uuid.uuid4()
    saves = one_by_one(recorder, aggregate, range(1, 21))
    split = on_the_stream(recorder, (str(aggregate), 20))[str(aggregate), 15]
    streams = parent_and_child(recorder, split)
    marker = tmp_path / "slow"
    marker.touch()

    def slow_parent() -> Any:
        return FailingOnce(
            reader_told_shards(recorder, streams),
            marker,
            fault,
            shard="parent|",
        )

    started: list[float] = []
    start = index_readers.ReaderPool._start

    def noted_start(pool: index_readers.ReaderPool, slot: int) -> Any:
        reader = start(pool, slot)
        started.append(time.monotonic())  # when a reader was started
        return reader

    monkeypatch.setattr(index_readers.ReaderPool, "_start", noted_start)
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: errors.append(a.exc_value))
    indexer = Indexer(
        recorder, streams_client=streams, readers=1, reader_client=slow_parent
    )
    streams.describe_stream(StreamArn=indexer.stream_arn)  # the real shard's id
    try:
        indexer.start()
        runner = indexer._thread
        assert runner is not None
        deadline = time.monotonic() + 20
        while marker.exists():  # the slow read has begun
            assert time.monotonic() < deadline, "the reader never read"
            time.sleep(0.02)
        indexer.stop(timeout=0.2)
        stopped = time.monotonic()
        assert runner.is_alive()  # the round outlived stop's timeout
        with pytest.raises(RuntimeError, match="still ending the round"):
            indexer.start()  # its readers are the lingering thread's

        indexer.stop(timeout=30)  # again, as the refusal advises: waits for it

        assert not runner.is_alive()
        assert errors == []
        assert readers_running() == []
        assert indexer._pool is None
        assert [when for when in started if when > stopped] == []
        if fault is slow_read:
            assert_indexed_once_in_order(recorder, saves)  # the round under way
        else:
            assert not recorder.max_notification_id()  # it ended, committing nothing
    finally:
        indexer.close()
        for process in readers_running():  # left by a failure: killed
            process.kill()


@pytest.fixture
def indexed(
    streamed: None, dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """This test's applications and `ledger` processes use the indexed ordering."""
    dynamodb_env["DYNAMODB_ORDERING"] = "indexed"
    monkeypatch.setenv("DYNAMODB_ORDERING", "indexed")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'src'}:{ROOT}")
    return dynamodb_env


def test_index_run_once_with_readers(indexed: dict[str, str], ledger: Any) -> None:
    orders = Orders()
    items = [{"product_id": "tea", "quantity": 2, "price": Decimal("4.50")}]
    placed = [orders.place_order(uuid.uuid4(), items) for _ in range(5)]
    saved = sum(len(orders.recorder.select_events(p)) for p in placed)

    ran = ledger("index", "run", "--once", "--readers", "2")

    assert ran.returncode == 0, ran.stderr
    assert f"indexed {saved} stream records; head at position {saved}" in ran.stdout


def test_index_run_leaves_no_reader_when_interrupted_or_killed(
    indexed: dict[str, str],
) -> None:
    """Ctrl-C (SIGINT) ends the readers with the run; so does the run's death."""
    orders = Orders()
    orders.place_order(
        uuid.uuid4(), [{"product_id": "tea", "quantity": 1, "price": Decimal("1")}]
    )
    env = {**os.environ, **indexed, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    for ending in (signal.SIGINT, signal.SIGKILL):
        run = subprocess.Popen(  # noqa: S603 - our own command, fixed argv
            [sys.executable, "-c", "from ledger.cli import main; main()", *RUN],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Ctrl-C's handler, even where this test runs with SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads run it
        )
        readers: list[int] = []
        try:
            deadline = time.monotonic() + 30
            while not (readers := children_of(run.pid)):
                assert time.monotonic() < deadline, "the readers never started"
            os.kill(run.pid, ending)
            run.wait(timeout=30)
            deadline = time.monotonic() + 10
            while not all(gone(pid) for pid in readers):
                assert time.monotonic() < deadline, f"readers left after {ending!r}"
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            for pid in readers:  # left by a failure: not by this test's run
                with contextlib.suppress(ProcessLookupError):
                    if not gone(pid):
                        os.kill(pid, signal.SIGKILL)


def test_twin_indexers_with_readers_index_each_event_once_through_a_kill(
    recorder: DynamoDBIndexedApplicationRecorder, indexers: list[Indexer]
) -> None:
    """Two indexers, a reader each, race on the one stream; one's reader is killed.

    Both read the same records and race to commit each round: one commits,
    the other reads the checkpoints again and drops what was indexed. A
    SIGKILL of one's reader between the two batches of saves is a reader
    replaced in its next round. Every event is indexed once, in order.
    """
    twins = [Indexer(recorder, readers=1) for _ in range(2)]
    indexers.extend(twins)
    stop = threading.Event()
    errors: list[BaseException] = []

    def race(indexer: Indexer) -> None:
        try:
            while not stop.is_set():
                indexer.poll()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    racers = [threading.Thread(target=race, args=(twin,)) for twin in twins]
    for racer in racers:
        racer.start()
    try:
        first = random_saves(recorder, 20, seed=31)
        recorder.wait_indexed(events_of(first), timeout=60)
        pool = twins[0]._pool
        assert pool is not None
        killed = pool.pids()
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        more = random_saves(recorder, 20, seed=32)
        recorder.wait_indexed(events_of(first + more), timeout=60)
    finally:
        stop.set()
        for racer in racers:
            racer.join(30)

    assert errors == []
    assert_indexed_once_in_order(recorder, first + more)
    assert all(pid not in pool.pids() for pid in killed)
