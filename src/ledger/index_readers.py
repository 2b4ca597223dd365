"""The indexer's reader processes: its shards' ``GetRecords``, past one core.

On one core the indexer (:class:`ledger.indexer.Indexer`) spends about half
its CPU in ``GetRecords``: the call, the parse of each answer of 1,000
records, and reading each record. With ``readers=N`` it hands that to N
processes, and keeps everything that must be one: the round's
checkpoints, reading parents before children, regrouping saves, version
checks, the batch encoding and the one transaction. Each round it sends
each reader some of the shards to read (each with its checkpoint, or the
iterator where an empty read stopped, and a share of the round's budget);
the reader reads them with the indexer's own shard reading
(:meth:`~ledger.indexer.Indexer._fetch_shard`, on its own streams client)
and sends back each record as a compact tuple (:func:`_row`), from which the
committer remakes the round's records (:func:`_records`).

The committer waits for all the readers of a round at once (a round waits
as long as its slowest reader). A reader that dies, or stalls (answers
nothing for ``timeout`` seconds more than a call under way may take through
its streams client's retries: :func:`call_budget`), loses nothing: its
shards' checkpoints are only ever moved by the committer's transaction, so
the committer kills it, starts another and gives it the same work, in the
same round (a round commits with every shard it read, or not at all). A
reader that fails :data:`RESTARTS` times in a row stops the run with
:class:`IndexReaderError`. An error the reader's calls raised (DynamoDB
Streams unavailable, once its client's retries are spent, say) is not a
failure of the reader: it is raised by the round, as it would be in process
(and waited out by the indexer's run loops, as in process), and nothing of
the round is committed.

A round may be given a hard deadline (the indexer's ``round_deadline``, a
``time.monotonic()``; the Lambda indexer sets it before each round): past
it the committer waits no longer, whatever a reader's call under way may
still take through its retries. It kills the readers still reading
(the next round starts others), commits nothing, and raises
:class:`IndexDeadlineError`, an ``OperationalError``. Without one (``ledger
index run``), a reader waiting out an outage is waited for, as above.

Processes are forked (``multiprocessing``'s ``fork`` start method) and talk
through pipes (``Pipe``) only: no queue, pool or semaphore, so no ``/dev/shm``
(AWS Lambda has none) and no resource tracker process; a forked reader
starts in milliseconds with the modules already loaded. A reader ignores
SIGINT (the committer stops it). :meth:`ReaderPool.close` (called by the
indexer's ``close``, by ``stop`` once the indexer's thread has ended, by
that thread as its run ends, and by context exit) ends them, killing what
does not end within a second. A reader whose committer died ends when it
next hears from its pipe: at once when idle, else when the call under way
ends (it starts no other), which its client's retries bound
(:func:`call_budget`: 506 s with a connection's default settings, when
DynamoDB Streams does not answer).

Python 3.12 and later warn (``DeprecationWarning``: "This process is
multi-threaded, use of fork() may lead to deadlocks in the child") when a
reader is forked while other threads run: the thread of
:meth:`~ledger.indexer.Indexer.start`, a test's fault proxy. The warning is
hidden by default, and under warnings-as-errors (pytest's
``filterwarnings = error``) CPython drops it, as the fork has happened:
nothing fails (checked on 3.12.1 and 3.13.0). A reader that deadlocked on
a lock another thread held at the fork would be a stalled one: killed and
replaced.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Final

from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.dynamodb.batches import BatchEntry
from ledger.index_rounds import _Record
from ledger.indexer import Indexer, _RoundBudget, _TrimmedError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

__all__ = [
    "RESTARTS",
    "IndexDeadlineError",
    "IndexReaderError",
    "ReaderPool",
    "call_budget",
]

logger = logging.getLogger("ledger.indexer")

RESTARTS: Final = 3
"""Failures in a row of one reader (death, stall) after which the run stops."""
_STOP_WAIT: Final = 1.0  # seconds a reader is given to end before it is killed
_CALLING: Final = 0
"""The tag of a reader's word that it begins (or ended) a call: no request's."""
_MOST_BACKOFF: Final = 20.0
"""Longest wait between two attempts of a call, in botocore's ``standard``
retry mode (``ExponentialBackoff``'s cap); an answer asking for more
(``x-amz-retry-after``) gets up to :data:`_MOST_RETRY_AFTER` more."""
_MOST_RETRY_AFTER: Final = 5.0

_Row = tuple[Any, ...]
"""A record as a reader sends it: ``(number, text)`` for a record with no
new event; ``(number, text, aggregate id, version, topic, state, save,
created)`` for an event (see :class:`~ledger.index_rounds._Record`)."""
Work = list[tuple[Mapping[str, Any], str | None, str | None]]
"""A reader's shards for a round: (the shard as listed, its checkpoint, the
iterator to go on from, or None: after the checkpoint)."""
Fetched = dict[str, tuple[list[_Record], str | None]]
"""Per shard read: its records after the checkpoint, in sequence order, and
the iterator after them (None: none, the shard is closed and read to its end)."""


class IndexReaderError(InterfaceError):
    """A reader process of the indexer kept dying or stalling: nothing was indexed."""


class IndexDeadlineError(OperationalError):
    """An indexer round ran out of time waiting for its readers: nothing was indexed.

    Raised past the indexer's ``round_deadline``: the readers still reading
    were killed, and the next round reads their shards again.
    """


class _CommitterGoneError(Exception):
    """A reader's committer is gone: its reads end (in the reader)."""


def call_budget(client: Any) -> float | None:
    """Return the longest one call of ``client`` may take before it raises, or None.

    What its settings allow (``client.meta.config``: None if it has none):
    every attempt its connect and read timeouts, and between attempts
    botocore's ``standard`` backoff at its longest (doubling from 1 s, at
    most 20 s, 5 s more when asked). 506 s with a ledger connection's
    defaults (10 attempts, 5 s to connect, 30 s to read).
    """
    config = getattr(getattr(client, "meta", None), "config", None)
    if config is None:
        return None
    retries = config.retries or {}
    attempts = retries.get("total_max_attempts")
    if attempts is None:  # retries after the first, or botocore's default (legacy)
        attempts = retries.get("max_attempts", 10) + 1
    per_attempt = (config.connect_timeout or 0.0) + (config.read_timeout or 0.0)
    backoff = sum(
        min(2.0**retry, _MOST_BACKOFF) + _MOST_RETRY_AFTER
        for retry in range(attempts - 1)
    )
    return float(attempts * per_attempt + backoff)


def _row(record: _Record) -> _Row:
    entry = record.entry
    if entry is None:
        return (record.number, record.text)
    return (
        record.number,
        record.text,
        entry.aggregate_id,
        entry.version,
        entry.topic,
        entry.state,
        record.save,
        record.created,
    )


def _records(shard_id: str, rows: list[_Row]) -> list[_Record]:
    """Return the records a reader sent as rows (run by the committer, for each)."""
    # BatchEntry made as the tuple it is: its NamedTuple constructor, a
    # Python function, cost half as much again per record.
    new = tuple.__new__
    return [
        _Record(shard_id, row[0], row[1], None, None)
        if len(row) == 2  # a record with no new event
        else _Record(
            shard_id, row[0], row[1], new(BatchEntry, row[2:6]), row[6], row[7]
        )
        for row in rows
    ]


class _Reader:
    """One reader process, and the committer's end of its pipe."""

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.cpu = 0.0
        """The process's CPU seconds reading, as of its last answer (its start,
        the fork and making its client, not counted)."""
        self.failure = ""
        """How it failed, if it did (for the error after too many failures)."""


class ReaderPool:
    """The indexer's reader processes: started by its first round, ended by close.

    Not safe across threads: one indexer (and its pool) per thread.
    """

    def __init__(
        self,
        indexer: Indexer,
        count: int,
        *,
        timeout: float,
        make_client: Callable[[], Any],
    ) -> None:
        self.indexer = indexer
        self.count = count
        self.timeout = timeout
        """Seconds a reader may take over a round's reads before it is killed."""
        self.make_client = make_client
        """Makes a reader's streams client (in the reader's process)."""
        self._readers: list[_Reader | None] = [None] * count
        self._requests = 0
        """Requests made so far: each answer names the one it answers."""
        self.restarts = 0
        """Readers started again after one died, raised or stalled."""
        self._cpu_before: list[float] = [0.0] * count
        """CPU seconds of readers that were replaced (counted in :attr:`cpu`)."""

    @property
    def cpu(self) -> list[float]:
        """Each reader slot's CPU seconds so far (its replaced processes' included)."""
        return [
            before + (reader.cpu if reader is not None else 0.0)
            for before, reader in zip(self._cpu_before, self._readers, strict=True)
        ]

    def pids(self) -> list[int]:
        """Return the process ids of the readers running now."""
        return [
            r.process.pid
            for r in self._readers
            if r is not None and r.process.pid is not None
        ]

    def fetch(
        self,
        work: Sequence[Work],
        checkpoints: Mapping[str, str],
        limits: tuple[int, int],
    ) -> Fetched:
        """Have reader ``i`` read ``work[i]`` (at most ``limits`` records and bytes).

        Waits for every reader at once: a round waits as long as its slowest
        reader, not the sum of them. Past the indexer's ``round_deadline``
        (whatever a reader's call under way may still take), the readers
        still reading are killed and :class:`IndexDeadlineError` is raised.
        """
        self._requests += 1
        tag = self._requests
        pending = {slot: shards for slot, shards in enumerate(work) if shards}
        failures = dict.fromkeys(pending, 0)
        began = time.monotonic()
        if pending:
            self._check_deadline(pending, began)
        waits: dict[int, float] = {}  # per reader asked: when it is taken for stalled
        for slot, shards in pending.items():
            request = (tag, dict(checkpoints), shards, limits)
            waits[slot] = self._send(slot, request, failures)
        fetched: Fetched = {}
        while pending:
            by_connection: dict[Any, int] = {
                reader.connection: slot
                for slot in pending
                if (reader := self._readers[slot]) is not None
            }
            until = min(waits[slot] for slot in pending)
            deadline = self.indexer.round_deadline
            if deadline is not None:
                until = min(until, deadline)
            ready = wait(list(by_connection), max(0.0, until - time.monotonic()))
            for connection in ready:
                slot = by_connection[connection]
                answer = self._receive(slot, tag, waits)
                if answer is None:
                    continue  # not the answer yet
                del pending[slot]
                kind, value = answer
                if kind == "trimmed":
                    raise _TrimmedError(value)
                if kind == "error":
                    raise value
                for shard_id, rows, iterator in value:
                    fetched[shard_id] = (_records(shard_id, rows), iterator)
            if not pending:
                break
            self._check_deadline(pending, began)
            now = time.monotonic()
            for slot in [s for s in pending if waits[s] <= now]:
                reader = self._readers[slot]
                if reader is not None and not reader.failure:
                    reader.failure = (
                        f"answered nothing for {self.timeout:g} s after its "
                        "request (or its last call's retries)"
                    )
                    self._log_failure(slot, reader)
                failures[slot] += 1
                self._replace(slot, failures[slot])
                request = (tag, dict(checkpoints), pending[slot], limits)
                waits[slot] = self._send(slot, request, failures)
        return fetched

    def _check_deadline(self, pending: Mapping[int, Work], began: float) -> None:
        """Past the round's deadline, kill the readers in ``pending`` and raise."""
        deadline = self.indexer.round_deadline
        if deadline is None or time.monotonic() < deadline:
            return
        killed = []
        for slot in pending:
            reader = self._readers[slot]
            if reader is None:
                continue
            killed.append(reader.process.pid)
            self._end(reader, wait=0.0)
            self._cpu_before[slot] += reader.cpu
            self._readers[slot] = None
        if killed:
            logger.warning(
                "an indexer round ran out of time; killed its readers still reading",
                extra={"readers": killed},
            )
        shards = sorted(
            shard["ShardId"] for work in pending.values() for shard, *_ in work
        )
        raise IndexDeadlineError(
            f"A round of the indexer of {self.indexer.recorder.events_table_name!r} "
            f"ran out of time: {len(pending)} of its readers had not answered "
            f"{time.monotonic() - began:.1f} s after it asked them to read (shards "
            f"{', '.join(shards)}), at its deadline (the indexer's round_deadline). "
            "They were killed and nothing of the round was committed; the next "
            "round reads those shards again from their checkpoints. If it "
            "repeats, DynamoDB Streams is not answering GetRecords in time: "
            "check its health and the log, or give the round more time."
        )

    def _send(self, slot: int, request: Any, failures: dict[int, int]) -> float:
        """Send reader ``slot`` a request; return when it is taken for stalled."""
        while True:
            reader = self._readers[slot] or self._start(slot)
            try:
                reader.connection.send(request)
            except OSError:  # it died since its last answer
                failures[slot] += 1
                self._replace(slot, failures[slot])
            else:
                return time.monotonic() + self.timeout

    def _receive(
        self, slot: int, tag: int, waits: dict[int, float]
    ) -> tuple[str, Any] | None:
        """Return reader ``slot``'s answer to request ``tag``, if it sent it.

        None for another word (a call begun or ended, which moves when it is
        taken for stalled, in ``waits``; an earlier request's answer), and
        for its death (then its ``waits`` is now: it is replaced).
        """
        reader = self._readers[slot]
        assert reader is not None  # noqa: S101 - waited for, so running
        try:
            (answered, answer), reader.cpu = reader.connection.recv()
        except (EOFError, OSError):
            reader.process.join(_STOP_WAIT)
            reader.failure = f"died (exit code {reader.process.exitcode})"
            self._log_failure(slot, reader)
            waits[slot] = -float("inf")
            return None
        if answered == tag:
            return answer  # type: ignore[no-any-return]
        if answered == _CALLING:
            # A call begun (``answer``: how long its client's retries may
            # take) or ended (0): a reader waiting out DynamoDB Streams is
            # not stalled, and raises when its client does.
            waits[slot] = time.monotonic() + answer + self.timeout
        # Else an answer to an earlier request, left unread when a reader of
        # that round failed for good or the round was interrupted.
        return None

    def _log_failure(self, slot: int, reader: _Reader) -> None:
        logger.warning(
            "an indexer reader %s; starting another",
            reader.failure,
            extra={"reader": slot, "pid": reader.process.pid},
        )

    def _replace(self, slot: int, failures: int) -> None:
        reader = self._readers[slot]
        how = "its pipe closed"
        if reader is not None:
            how = reader.failure or how
            self._end(reader, wait=0.0)
            self._cpu_before[slot] += reader.cpu
            self._readers[slot] = None
        if failures >= RESTARTS:
            raise IndexReaderError(
                f"Reader process {slot} of the indexer of "
                f"{self.indexer.recorder.events_table_name!r} failed {failures} "
                f"times in a row (last: it {how}): nothing was indexed this "
                "round. Check the host's memory and the log, or run the indexer "
                "with fewer readers (readers=0 reads in process)."
            )
        self.restarts += 1
        self._start(slot)

    def _start(self, slot: int) -> _Reader:
        self.indexer._refuse_after_stop()  # none started once a run is to stop
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        others = [r.connection for r in self._readers if r is not None]
        process = context.Process(
            target=_serve,
            args=(self.indexer, theirs, [ours, *others], self.make_client),
            name=f"ledger-index-reader-{slot}",
            daemon=True,  # ended with the interpreter, whatever happens
        )
        # A Ctrl-C arriving during the fork would be raised in an at-fork hook
        # (logging's), which drops it: the run would go on. Held until then.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        theirs.close()  # the reader's end: its EOF is then the reader's death
        reader = self._readers[slot] = _Reader(process, ours)
        return reader

    def close(self) -> None:
        """End every reader: ask, wait a second, then kill what still runs."""
        readers = [r for r in self._readers if r is not None]
        self._readers = [None] * self.count
        for reader in readers:
            with contextlib.suppress(OSError):  # already gone
                reader.connection.send(None)
        for reader in readers:
            self._end(reader, wait=_STOP_WAIT)

    def _end(self, reader: _Reader, *, wait: float) -> None:
        reader.process.join(wait)
        if reader.process.is_alive():
            reader.process.kill()
            reader.process.join()
        reader.connection.close()
        reader.process.close()


def _serve(
    indexer: Indexer,
    connection: Connection,
    inherited: list[Connection],
    make_client: Callable[[], Any],
) -> None:
    """Serve the committer, in a reader process: read the shards asked for, answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the committer stops readers
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held for the fork
    for other in inherited:
        # The committer's ends: held here, they would keep a reader alive
        # after its committer died (its pipe would never close).
        other.close()
    indexer.client = make_client()
    # What the fork brought is not walked by the collector's full passes,
    # which each page of records read would start (see freeze_start_up).
    gc.freeze()
    started = time.process_time()  # its start (making its client) not counted
    _tell_calls(indexer.client, connection, started)
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return  # the committer is gone
        if request is None:
            return
        tag, checkpoints, shards, limits = request
        answer: tuple[str, Any]
        try:
            answer = ("ok", _read(indexer, checkpoints, shards, limits))
        except Exception as error:  # noqa: BLE001 - sent to the committer, raised there
            answer = _failure(error)
        try:
            connection.send(((tag, answer), time.process_time() - started))
        except OSError:
            return


def _tell_calls(client: Any, connection: Connection, started: float) -> None:
    """Have the reader tell the committer when each call of ``client`` begins and ends.

    A call begun may take what the client's retries allow
    (:func:`call_budget`): through an outage, several minutes before it
    raises. Told so, the committer waits that long (and ``timeout`` more)
    before it takes the reader for stalled; the reader's error is then
    raised by the round, as in process, and waited out like it. A client
    without botocore's settings and events is not followed: the
    committer's ``timeout`` alone applies.
    """
    budget = call_budget(client)
    events = getattr(getattr(client, "meta", None), "events", None)
    if budget is None or events is None:
        return

    def tell(seconds: float) -> None:
        try:
            connection.send(((_CALLING, seconds), time.process_time() - started))
        except OSError as error:
            # The committer is gone: no further call (this one is ended by
            # the error, the round's reads with it).
            raise _CommitterGoneError from error

    events.register("before-call", lambda **_: tell(budget))
    events.register("after-call", lambda **_: tell(0.0))


def _read(
    indexer: Indexer,
    checkpoints: dict[str, str],
    shards: Work,
    limits: tuple[int, int],
) -> list[tuple[str, list[_Row], str | None]]:
    indexer.checkpoints.numbers = checkpoints
    budget = _RoundBudget(*limits)
    read = []
    for shard, checkpoint, iterator in shards:
        records, after = indexer._fetch_shard(shard, checkpoint, iterator, budget)
        read.append((shard["ShardId"], [_row(r) for r in records], after))
    return read


def _failure(error: Exception) -> tuple[str, Any]:
    if isinstance(error, _TrimmedError):
        return ("trimmed", str(error))
    error.add_note(f"(raised in the indexer's reader process {os.getpid()})")
    try:
        pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, just made
    except Exception:  # noqa: BLE001 - an error that cannot cross: its text does
        return (
            "error",
            IndexReaderError(
                f"A reader process of the indexer raised "
                f"{type(error).__name__}: {error}"
            ),
        )
    return ("error", error)
