"""The indexer's Lambda function with reader processes (``LEDGER_INDEX_READERS``).

Called as Lambda calls it (a schedule's event, a context with the time
left), against DynamoDB Local. Each invocation starts its readers with its
first round and ends them before it returns or raises, logging their
process ids (and the pool those of the readers it replaced): these tests
read those ids from the log and check the processes are gone.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import PersistenceError
from faults import DELAY, FaultProxy

from aggregates.application import Orders
from ledger import index_consumers, index_readers
from ledger.index_consumers import LEDGER_INDEX_READERS, indexer_handler
from ledger.index_readers import IndexDeadlineError, call_budget
from ledger.index_rounds import IndexOrderError
from ledger.indexer import READER_TIMEOUT, lambda_handler
from tests.indexed_support import stored
from tests.test_index_consumers import (
    DEADLINE,
    SCHEDULED,
    LambdaContext,
    indexed_env,
    indexed_orders,
    with_time_to_work,
)
from tests.test_index_readers import (
    events_of,
    gone,
    in_time,
    random_saves,
    readers_running,
)
from tests.test_indexed_guarantees import assert_indexed_once_in_order
from tests.test_indexed_shards import on_the_stream

__all__ = ["indexed_env", "indexed_orders"]  # fixtures used here

ENDED = "ended the indexer's reader processes"
INVOCATION = 12.0
"""Seconds an invocation has in the stall tests: the function's timeout
scaled down (its 10 s stop margin, and 2 s of rounds)."""
KILLED = "an indexer round ran out of time; killed its readers still reading"


@pytest.fixture
def ended_readers(caplog: pytest.LogCaptureFixture) -> Callable[[], list[list[int]]]:
    """Return, per invocation that ran readers so far, the readers it ended."""
    caplog.set_level(logging.INFO, logger=index_consumers.__name__)

    def ended() -> list[list[int]]:
        return [r.readers for r in caplog.records if r.getMessage() == ENDED]

    return ended


@pytest.fixture
def from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``lambda_handler`` builds the Orders indexer, as the deployed function does."""
    monkeypatch.setenv("LEDGER_APP", "aggregates.application:Orders")
    monkeypatch.delenv("LEDGER_INDEX_TOPIC_ARN", raising=False)
    index_consumers.reset()
    yield
    index_consumers.reset()


def invoke_until_indexed(
    handler: Callable[[Any, Any], dict[str, int]], events: int
) -> list[dict[str, int]]:
    """Invoke the handler until the head holds ``events`` (the stream may lag)."""
    deadline = time.monotonic() + DEADLINE
    results: list[dict[str, int]] = []
    while not results or results[-1]["head"] < events:
        assert time.monotonic() < deadline, results
        results.append(handler(SCHEDULED, with_time_to_work(0.5)))
    return results


def invoke_until_it_raises(handler: Callable[[Any, Any], dict[str, int]]) -> None:
    """Invoke the handler until an invocation raises (the stream may lag)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        handler(SCHEDULED, with_time_to_work(0.5))


def test_the_lambda_indexer_with_two_readers_indexes_every_event_once(
    indexed_orders: Orders,
    from_the_environment: None,
    monkeypatch: pytest.MonkeyPatch,
    ended_readers: Callable[[], list[list[int]]],
) -> None:
    monkeypatch.setenv(LEDGER_INDEX_READERS, "2")
    recorder: Any = indexed_orders.recorder
    saves = random_saves(recorder, 60, seed=11)

    results = invoke_until_indexed(lambda_handler, len(events_of(saves)))

    assert_indexed_once_in_order(recorder, saves)
    assert sum(r["consumed"] for r in results) == len(events_of(saves))
    # Readers read: DynamoDB Local's stream has one shard, so one of the two.
    assert ended_readers()
    assert all(len(pids) == 1 for pids in ended_readers())


def test_each_invocation_ends_its_readers_and_the_next_starts_its_own(
    indexed_orders: Orders,
    indexed_env: dict[str, str],
    ended_readers: Callable[[], list[list[int]]],
) -> None:
    recorder: Any = indexed_orders.recorder
    handler = indexer_handler(
        Orders, {**indexed_env, LEDGER_INDEX_READERS: "2"}, idle_wait=0.05
    )
    first = random_saves(recorder, 10, seed=12)
    invoke_until_indexed(handler, len(events_of(first)))
    before = [pid for pids in ended_readers() for pid in pids]

    assert before
    assert all(gone(pid) for pid in before)
    assert readers_running() == []

    more = random_saves(recorder, 10, seed=13)
    invoke_until_indexed(handler, len(events_of(first + more)))
    after = [pid for pids in ended_readers() for pid in pids][len(before) :]

    assert after
    assert not set(after) & set(before)  # new readers, not the ones ended
    assert all(gone(pid) for pid in after)
    assert readers_running() == []
    assert_indexed_once_in_order(recorder, first + more)


def test_an_invocation_that_raises_ends_its_readers(
    indexed_orders: Orders,
    indexed_env: dict[str, str],
    ended_readers: Callable[[], list[list[int]]],
) -> None:
    recorder: Any = indexed_orders.recorder
    aggregate = uuid.uuid4()
    recorder.insert_events([stored(aggregate, 1)])
    recorder.insert_events([stored(aggregate, 3)])  # a gap: the indexer refuses it
    handler = indexer_handler(
        Orders, {**indexed_env, LEDGER_INDEX_READERS: "2"}, idle_wait=0.05
    )

    with pytest.raises(IndexOrderError):
        invoke_until_it_raises(handler)

    ended = [pid for pids in ended_readers() for pid in pids]
    assert ended
    assert all(gone(pid) for pid in ended)
    assert readers_running() == []


@pytest.mark.parametrize("setting", ["two", "-1", "1.5"])
def test_a_readers_setting_that_is_not_a_count_is_refused_when_the_handler_is_made(
    indexed_env: dict[str, str], setting: str
) -> None:
    with pytest.raises(OSError, match=f"Invalid {LEDGER_INDEX_READERS} '{setting}'"):
        indexer_handler(Orders, {**indexed_env, LEDGER_INDEX_READERS: setting})


def test_the_lambda_indexer_refuses_a_bad_readers_setting_at_every_invocation(
    indexed_env: dict[str, str],
    from_the_environment: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LEDGER_INDEX_READERS, "-2")

    # Each invocation fails (the function's errors alarm), none indexes.
    for _ in range(2):
        with pytest.raises(OSError, match="use a whole number of reader processes"):
            lambda_handler(SCHEDULED, with_time_to_work(0.5))


@pytest.mark.parametrize("setting", ["", "0"])
def test_no_readers_setting_or_0_reads_the_shards_in_the_function(
    indexed_orders: Orders,
    indexed_env: dict[str, str],
    ended_readers: Callable[[], list[list[int]]],
    setting: str,
) -> None:
    recorder: Any = indexed_orders.recorder
    saves = random_saves(recorder, 5, seed=14)
    handler = indexer_handler(
        Orders, {**indexed_env, LEDGER_INDEX_READERS: setting}, idle_wait=0.05
    )

    invoke_until_indexed(handler, len(events_of(saves)))

    assert_indexed_once_in_order(recorder, saves)
    assert ended_readers() == []


def test_a_stalled_reader_is_killed_and_the_invocation_ends_its_readers_in_time(
    indexed_orders: Orders,
    indexed_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=index_consumers.__name__)
    recorder: Any = indexed_orders.recorder
    aggregate = uuid.uuid4()
    recorder.insert_events([stored(aggregate, 1)])
    on_the_stream(recorder, (str(aggregate), 1))  # a round has a shard to read
    stalled = tmp_path / "stalled"

    def stall(*args: Any) -> None:
        stalled.touch()
        time.sleep(600)  # the fault itself: a reader that stops answering

    # Readers are forked: each reads with this.
    monkeypatch.setattr(index_readers, "_read", stall)
    handler = indexer_handler(
        Orders, {**indexed_env, LEDGER_INDEX_READERS: "2"}, idle_wait=0.05
    )
    context = LambdaContext(INVOCATION * 1000)

    ended, outcome = in_time(
        lambda: handler(SCHEDULED, context),
        context.get_remaining_time_in_millis() / 1000,
    )

    assert stalled.exists()  # a reader was asked to read, and stalled
    assert ended, "the invocation outlived Lambda's timeout, and its readers"
    [result] = outcome
    assert not isinstance(result, Exception) or isinstance(result, PersistenceError)
    logged = [r for r in caplog.records if r.name.startswith("ledger.index")]
    ended = [pid for r in logged if r.getMessage() == ENDED for pid in r.readers]
    replaced = [r.pid for r in logged if "starting another" in r.getMessage()]
    assert replaced  # the stalled readers' ids, logged as each is replaced
    assert all(gone(pid) for pid in ended + replaced)
    assert readers_running() == []


def test_a_reader_hung_in_get_records_ends_with_the_invocation_in_time(
    indexed_orders: Orders,
    indexed_env: dict[str, str],
    dynamodb_endpoint: str,
    caplog: pytest.LogCaptureFixture,
    ended_readers: Callable[[], list[list[int]]],
) -> None:
    """A GetRecords never answered: the round's deadline, not the call's retries.

    Every GetRecords is held 600 s. The reader's client, with the
    connection's default settings, would wait 506 s for it (the round would
    wait that out as an outage); the invocation has 12 s. The round stops at
    its deadline: the reader is killed, the invocation raises (nothing was
    indexed) before its time with no reader left. The next invocation, the
    fault gone, indexes everything once.
    """
    caplog.set_level(logging.INFO, logger="ledger.indexer")
    recorder: Any = indexed_orders.recorder
    assert (call_budget(recorder.connection.streams_client()) or 0) > 500
    saves = random_saves(recorder, 10, seed=16)
    last = saves[-1][-1]
    on_the_stream(recorder, (str(last.originator_id), last.originator_version))
    with FaultProxy(dynamodb_endpoint) as proxy:
        env = {
            **indexed_env,
            "DYNAMODB_ENDPOINT_URL": proxy.endpoint_url,
            LEDGER_INDEX_READERS: "2",
        }
        proxy.on("GetRecords", fault=DELAY(600), times=None)
        handler = indexer_handler(Orders, env, idle_wait=0.05)
        context = LambdaContext(INVOCATION * 1000)

        ended, outcome = in_time(
            lambda: handler(SCHEDULED, context),
            context.get_remaining_time_in_millis() / 1000,
        )

        assert ("GetRecords", DELAY(600)) in proxy.requests  # a reader was held
        assert ended, "the invocation outlived Lambda's timeout, and its readers"
        [raised] = outcome
        assert isinstance(raised, IndexDeadlineError), raised
        killed = [
            pid for r in caplog.records if r.getMessage() == KILLED for pid in r.readers
        ]
        assert killed  # the reader held in GetRecords
        ended_pids = [pid for pids in ended_readers() for pid in pids]
        assert all(gone(pid) for pid in killed + ended_pids)
        assert readers_running() == []
        assert not recorder.max_notification_id()

        proxy.clear_rules()  # the fault gone
        invoke_until_indexed(handler, len(events_of(saves)))

    assert_indexed_once_in_order(recorder, saves)


def test_an_invocation_without_an_end_gives_its_readers_the_full_timeout(
    indexed_orders: Orders,
    indexed_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timeout shrunk for an invocation's last rounds is not the next one's.

    The first invocation has seconds to work, so its rounds' readers get
    a timeout that fits them; the next has no end (``catch_up``): its
    readers get the indexer's own timeout, not the last one shrunk.
    """
    timeouts: list[float] = []
    made = index_readers.ReaderPool.__init__

    def noted(pool: index_readers.ReaderPool, *args: Any, **kwargs: Any) -> None:
        made(pool, *args, **kwargs)
        timeouts.append(pool.timeout)

    monkeypatch.setattr(index_readers.ReaderPool, "__init__", noted)
    recorder: Any = indexed_orders.recorder
    handler = indexer_handler(
        Orders, {**indexed_env, LEDGER_INDEX_READERS: "2"}, idle_wait=0.05
    )
    saves = random_saves(recorder, 5, seed=14)
    handler(SCHEDULED, with_time_to_work(8))
    shrunk = list(timeouts)
    handler(SCHEDULED, None)

    assert shrunk
    assert all(t < READER_TIMEOUT for t in shrunk)
    assert timeouts[len(shrunk) :] == [READER_TIMEOUT]
    assert_indexed_once_in_order(recorder, saves)
