"""Benchmark the ``indexed`` ordering: saves, the indexer, its cost, readers, rebuilds.

Everything runs against a DynamoDB Local this script starts (or ``--endpoint``),
every client with the same credentials (DynamoDB Local keeps one database per
access key). Every events table here has its DynamoDB stream of new images,
since the indexed ordering needs one: the raw baselines write to tables of
the same kind.

1. Saves/s of new 1-event Orders from 8 writer processes, contenders taking
   turns of ``--seconds`` (``--rounds`` rounds, each starting one later):
   ``indexed`` (``DYNAMODB_ORDERING=indexed``, with an :class:`Indexer`
   running all along in a process of its own, as ``ledger index run`` with
   ``--index-interval``), ``stream`` (the same saves, no indexer) and ``raw``
   (plain boto3 conditional ``PutItem`` of an item of the same size, no
   extra parameters). During the indexed turns: events indexed/s and lag
   (from a save returning to the indexer's commit holding it), p50/p99.
   First, unmeasured turns of ``--warmup`` seconds, every contender forward
   then reverse (the indexer's rounds back to back in the indexed ones),
   while DynamoDB Local's JVM compiles the paths of every call; the
   server's CPU per save is given turn by turn, to show what drift is left.
2. A backlog: the 8 writers save with the indexer stopped for
   ``--backlog-seconds``; then the indexer catches up, timed (events/s).
3. Index cost: write units per indexed event, from ledger's metering of the
   indexer process (the estimate by AWS's rules, transactions doubled, and
   what DynamoDB Local reported: it under-reports transactions), and the
   indexer's calls per round (DynamoDB Streams' counted by a client wrapper).
   What each call costs DynamoDB Local: ``bench_index_calls.py``.
4. A history of ``--events`` Order events (5 per Order, in saves of 95
   events from 4 threads), indexed; then reading it whole with
   ``select_notifications`` (1,000 per call), with ``ledger.feeds.IndexSource``
   (pages of 1,000; a consumer this fast gets no read-ahead thread) and with a plain
   boto3 Query loop (no Limit) over the same notifications table, each first
   in turn (rates, round trips, and this process's CPU per event); then
   rebuilding ``OrderProjector`` from the index (``SequenceHistory``) against
   a rebuild from a parallel Scan of the events table (``ScanHistory``).
5. Notification batch formats, in process: bytes per event of a batch of 98
   events in format 2 and format 3 (as written: compressed when smaller, and
   both ways), and the CPU per event to encode and decode it (``timeit``,
   best of 5), on Order events (5 per Order), new Orders (one event each)
   and random 200-byte states (which do not compress).

    python benchmarks/bench_indexed.py [--seconds 5] [--rounds 3] [--events 10000]

``--readers-only`` runs part 4's reads alone (seed, index, the three readers
in turns; no writers, rebuilds or formats), then each reader's own CPU per
event over the answers of one read recorded from DynamoDB (no server, no
network: what a shared machine's load leaves comparable between runs), and
writes ``results/readers.json``::

    python benchmarks/bench_indexed.py --readers-only [--read-rounds 15]

Round trips and capacity units are deterministic; wall times on a shared
2-core machine are not: compare a contender with the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
import timeit
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
from bench_scaleout import percentile, print_table, stage
from eventsourcing.persistence import StoredEvent

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import DynamoDBApplicationRecorder, measure, schema
from ledger.dynamodb.batches import (
    FORMAT,
    ROWS_FORMAT,
    BatchEntry,
    decode_batch,
    encode_batch,
)
from ledger.dynamodb.limits import item_size
from ledger.dynamodb.local import DynamoDBLocal
from ledger.feeds import IndexSource
from ledger.index_consumers import ROUND_INTERVAL
from ledger.indexer import Indexer, paced
from ledger.projections.dynamodb import DynamoDBView, open_view
from ledger.projections.history import History, ScanHistory, SequenceHistory
from ledger.projections.rebuild import rebuild
from projections.orders import OrderProjector

RESULTS = Path(__file__).parent / "results"
RAW = "raw"
WRITERS = 8
READ_LIMIT = 1000
"""Notifications per ``select_notifications`` call (as rebuilds read)."""
EVENTS_PER_ORDER = 5
SEED_SAVE = 95
"""Events per save when seeding a history: 19 whole Orders."""
CURRENCY = "EUR"
PRICE = Decimal("2.50")


def cpu_seconds(pid: int | None) -> float | None:
    """Return the CPU seconds (user + system) a process has used, from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime: fields 14 and 15 of stat(5), counted from the state (3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    """Return the 1, 5 and 15-minute load averages: how shared the machine was."""
    return [round(value, 2) for value in os.getloadavg()]


def app_env(endpoint: str, prefix: str, mode: str, *, create: bool) -> dict[str, str]:
    """Return an Orders application's settings in an ordering, with its stream."""
    return {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": prefix,
        "DYNAMODB_ORDERING": mode,
        "DYNAMODB_EVENTS_STREAM": "yes",
        "CREATE_TABLE": "yes" if create else "no",
    }


def open_app(endpoint: str, prefix: str, mode: str, *, create: bool = False) -> Orders:
    """Return an Orders application on existing (or, with ``create``, new) tables."""
    return Orders(env=app_env(endpoint, prefix, mode, create=create))


def plain_client(endpoint: str) -> Any:
    """A boto3 DynamoDB client as boto3 makes it: default config and credentials."""
    return boto3.client("dynamodb", endpoint_url=endpoint)


def raw_item(aggregate_id: str, event: StoredEvent) -> dict[str, Any]:
    """An events-table item as the indexed ordering stores a 1-event save."""
    return {
        schema.AGGREGATE_ID: {"S": aggregate_id},
        schema.VERSION: {"N": "1"},
        schema.TOPIC: {"S": event.topic},
        schema.STATE: {"B": event.state},
    }


def placed_event(app: Orders) -> StoredEvent:
    """Return a stored OrderPlaced with no items: the raw baseline's item."""
    order = Order.place(uuid.uuid4(), [], CURRENCY)
    return app.mapper.to_stored_event(order.collect_events()[0])


# --- writers and the indexer, each in processes of their own -------------------


def writer(
    connection: Connection,
    endpoint: str,
    prefixes: dict[str, str],
    placed: StoredEvent,
) -> None:
    """Make 1-event saves on command and report them (with ids and times)."""
    try:
        saves: dict[str, Callable[[], str]] = {}
        for contender, prefix in prefixes.items():
            if contender == RAW:
                client = plain_client(endpoint)

                def put(client: Any = client, table: str = prefix) -> str:
                    aggregate_id = str(uuid.uuid4())
                    client.put_item(
                        TableName=table,
                        Item=raw_item(aggregate_id, placed),
                        ConditionExpression="attribute_not_exists(aggregate_id)",
                    )
                    return aggregate_id

                saves[RAW] = put
            else:
                app = open_app(endpoint, prefix, contender)

                def place(app: Orders = app) -> str:
                    return str(app.place_order(uuid.uuid4(), [], CURRENCY))

                saves[contender] = place
        for save in saves.values():
            for _ in range(3):
                save()
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", None))
    while True:
        command, contender, start_at, seconds = connection.recv()
        if command == "stop":
            return
        save = saves[contender]
        latencies: list[float] = []
        saved: list[tuple[str, float]] = []
        errors = 0
        time.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        deadline = started + seconds
        now = started
        while now < deadline:
            try:
                saved.append((save(), time.time()))
            except Exception:  # noqa: BLE001 - counted; the run goes on
                errors += 1
            finished = time.perf_counter()
            latencies.append(finished - now)
            now = finished
        connection.send(
            (
                "done",
                {
                    "saves": len(saved),
                    "errors": errors,
                    "elapsed": now - started,
                    "latencies": latencies,
                    "saved": saved,
                },
            )
        )


class CountingStreams:
    """A DynamoDB Streams client that counts its calls by operation.

    ledger's metering counts the DynamoDB client's calls; the indexer's
    DescribeStream, GetShardIterator and GetRecords go to this one.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.client, name)
        operation = "".join(part.title() for part in name.split("_"))

        def counted(**params: Any) -> Any:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            return call(**params)

        return counted


def indexer_process(
    connection: Connection, endpoint: str, prefix: str, interval: float
) -> None:
    """Run an indexer on command; report its commits (time, positions) and cost."""
    from ledger.projections.streams import run_polls  # noqa: PLC0415

    try:
        app = open_app(endpoint, prefix, "indexed")
        commits: list[tuple[float, int, int]] = []
        streams = CountingStreams(
            app.recorder.connection.streams_client()  # type: ignore[attr-defined]
        )
        indexer = Indexer(
            app.recorder,  # type: ignore[arg-type]
            streams_client=streams,
            after_write=lambda r: commits.append((time.time(), r.start, r.stop - 1)),
        )
        rounds = [0]

        def poll() -> int:
            rounds[0] += 1
            return indexer.poll()
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", None))
    stop = threading.Event()
    thread: threading.Thread | None = None
    with ExitStack() as meters:
        meter = meters.enter_context(measure(app))
        while True:
            command = connection.recv()
            if command in ("start", "warm"):
                stop.clear()
                # "start": as `ledger index run` runs it, rounds paced; "warm":
                # rounds back to back, so that DynamoDB Local compiles the
                # paths of the indexer's calls (2 a second when paced) too.
                warm = command == "warm"
                thread = threading.Thread(
                    target=run_polls,
                    args=(poll if warm else paced(poll, ROUND_INTERVAL), stop),
                    kwargs={"interval": 0.01 if warm else interval},
                )
                thread.start()
                connection.send(("started", None))
            elif command == "stop":
                stop.set()
                if thread is not None:
                    thread.join()
                connection.send(("stopped", None))
            elif command == "catch_up":
                before = len(commits)
                begun = time.perf_counter()
                consumed = indexer.catch_up(timeout=3600)
                seconds = time.perf_counter() - begun
                indexed = sum(last - first + 1 for _, first, last in commits[before:])
                connection.send(("caught_up", (consumed, indexed, seconds)))
            elif command == "report":
                # Taken and reset before answering: the indexer may be running
                # (after the warm-up it is), and a commit made once the
                # answer is sent belongs to the next report.
                reported = commits[:]
                del commits[: len(reported)]
                rounds_done, rounds[0] = rounds[0], 0
                calls, streams.calls = streams.calls, {}
                report = {
                    "commits": reported,
                    "rounds": rounds_done,
                    "round_trips": meter.round_trips,
                    "calls": dict(meter.calls) | calls,
                    "estimated_wcu": meter.estimated_write_units,
                    "reported_wcu": meter.write_units,
                    "bytes_written": meter.bytes_written,
                    "reported_rcu": meter.read_units,
                }
                meters.close()  # counts afresh from here
                meter = meters.enter_context(measure(app))
                connection.send(("report", report))
            else:
                return


def ask(connection: Connection, message: Any) -> Any:
    """Send a command to a process and return its answer, raising its error."""
    connection.send(message)
    status, detail = connection.recv()
    if status == "error":
        raise RuntimeError(f"a process failed:\n{detail}")
    return detail


@contextmanager
def processes(
    endpoint: str,
    prefixes: dict[str, str],
    placed: StoredEvent,
    interval: float,
) -> Iterator[tuple[list[Connection], Connection, list[int]]]:
    """Start the writers and the indexer, each process with its own clients.

    Yields the writers' pipes, the indexer's, and every process id (the
    indexer's last).
    """
    context = multiprocessing.get_context("fork")
    pipes, started = [], []
    targets: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (writer, (endpoint, prefixes, placed)) for _ in range(WRITERS)
    ]
    targets.append((indexer_process, (endpoint, prefixes["indexed"], interval)))
    for target, args in targets:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=target, args=(child_end, *args), daemon=True)
        process.start()
        pipes.append(parent_end)
        started.append(process)
    try:
        for pipe in pipes:
            status, detail = pipe.recv()
            if status == "error":
                raise RuntimeError(f"a process failed to start:\n{detail}")
        yield pipes[:-1], pipes[-1], [p.pid for p in started if p.pid is not None]
    finally:
        for pipe in pipes[:-1]:
            with suppress(OSError):
                pipe.send(("stop", None, 0.0, 0.0))
        with suppress(OSError):
            pipes[-1].send("exit")
        for process in started:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def turn_cpu(server_pid: int | None, pids: list[int]) -> dict[str, float]:
    """Return the CPU seconds used so far by the server, the writers and the indexer."""
    writers = [cpu_seconds(pid) for pid in pids[:-1]]
    return {
        "server": cpu_seconds(server_pid) or 0.0,
        "writers": sum(spent or 0.0 for spent in writers),
        "indexer": cpu_seconds(pids[-1]) or 0.0,
    }


def run_turn(
    pipes: list[Connection], contender: str, seconds: float
) -> tuple[float, list[Any]]:
    """Start a turn of ``contender`` on every writer at once; return its reports."""
    start_at = time.time() + 0.3
    for pipe in pipes:
        pipe.send(("run", contender, start_at, seconds))
    return start_at, [pipe.recv()[1] for pipe in pipes]


def wait_for_head(app: Orders, head: int, timeout: float) -> None:
    """Poll until the index reaches ``head``, or raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (app.recorder.max_notification_id() or 0) < head:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the index did not reach position {head} in time")
        time.sleep(0.05)


def positions_of(app: Orders) -> dict[str, int]:
    """Map each indexed aggregate (all 1-event Orders here) to its position."""
    found: dict[str, int] = {}
    position = 0
    while True:
        page = app.recorder.select_notifications(position + 1, READ_LIMIT)
        if not page:
            return found
        for notification in page:
            found[str(notification.originator_id)] = notification.id
        position = page[-1].id


def run_writers(  # noqa: PLR0915 - one sequence of turns, read top to bottom
    endpoint: str,
    *,
    server_pid: int | None,
    seconds: float,
    rounds: int,
    backlog_seconds: float,
    interval: float,
    started: float,
    warmup: float = 6.0,
) -> dict[str, Any]:
    """Parts 1 to 3: the writers' turns, the indexer's lag, a backlog, the cost.

    ``server_pid``: DynamoDB Local's process, whose CPU each turn is charged
    with (None: not known, as with ``--endpoint``). ``warmup``: seconds of
    each unmeasured turn before the measured ones.
    """
    run_id = uuid.uuid4().hex[:6]
    modes = ["indexed", "stream"]
    prefixes = {mode: f"{mode}{run_id}_" for mode in modes}
    raw_table = f"raw{run_id}_events"
    prefixes[RAW] = raw_table
    for mode in modes:
        open_app(endpoint, prefixes[mode], mode, create=True).close()
    client = plain_client(endpoint)
    client.create_table(**schema.stream_table_definition(raw_table, with_stream=True))
    client.get_waiter("table_exists").wait(TableName=raw_table)
    indexed_app = open_app(endpoint, prefixes["indexed"], "indexed")
    placed = placed_event(indexed_app)
    contenders = [*modes, RAW]
    turns: dict[str, list[list[Any]]] = {c: [] for c in contenders}
    windows: list[tuple[float, float]] = []
    cpu = {c: {"server": 0.0, "writers": 0.0, "indexer": 0.0} for c in contenders}
    turn_server_cpu: dict[str, list[float]] = {c: [] for c in contenders}
    with processes(endpoint, prefixes, placed, interval) as (pipes, indexer, pids):
        ask(indexer, "start")
        # Each writer saved 3 indexed Orders when it started.
        indexed_total = 3 * len(pipes)
        # The JVM compiles DynamoDB Local's hot paths as it runs: its CPU per
        # save falls for tens of seconds. Unmeasured turns of every contender,
        # forward then reverse (the indexer's rounds back to back in the
        # indexed ones), so that the first measured turn (always indexed)
        # does not pay for that alone.
        for contender in [*contenders, *contenders[::-1]]:
            if contender == "indexed":
                ask(indexer, "stop")
                ask(indexer, "warm")
            _, reports = run_turn(pipes, contender, warmup)
            if contender == "indexed":
                indexed_total += sum(r["saves"] for r in reports)
                ask(indexer, "stop")
                ask(indexer, "start")
        ask(indexer, "report")  # the warm-up's rounds and calls are not counted
        stage("writers ready, server warmed up", started)
        for round_number in range(rounds):
            # Each round starts one contender later: over 3 rounds each takes
            # each place once, so drift left after the warm-up (it falls
            # fastest at first) is not charged to the contender always first.
            shift = round_number % len(contenders)
            order = contenders[shift:] + contenders[:shift]
            for contender in order:
                before = turn_cpu(server_pid, pids)
                start_at, reports = run_turn(pipes, contender, seconds)
                after = turn_cpu(server_pid, pids)
                for part, spent in after.items():
                    cpu[contender][part] += spent - before[part]
                saves = sum(r["saves"] for r in reports)
                turn_server_cpu[contender].append(
                    (after["server"] - before["server"]) / max(1, saves) * 1e3
                )
                turns[contender].append(reports)
                if contender == "indexed":
                    windows.append((start_at, start_at + seconds))
            stage(f"round {round_number + 1} of {rounds} done", started)
        indexed_saves = sum(r["saves"] for reports in turns["indexed"] for r in reports)
        indexed_total += indexed_saves
        wait_for_head(indexed_app, indexed_total, timeout=120)
        stage("the index holds every save", started)
        live = ask(indexer, "report")
        ask(indexer, "stop")
        # The backlog: saves with no indexer running, then one catch-up.
        _, backlog_reports = run_turn(pipes, "indexed", backlog_seconds)
        stage("backlog saved", started)
        consumed, indexed, catch_seconds = ask(indexer, "catch_up")
        backlog_cost = ask(indexer, "report")
        stage("backlog indexed", started)
    positions = positions_of(indexed_app)
    indexed_app.close()
    rows = throughput_rows(turns, contenders)
    for row in rows:
        saves = sum(r["saves"] for reports in turns[row["contender"]] for r in reports)
        for part, spent in cpu[row["contender"]].items():
            known = server_pid is not None or part != "server"
            row[f"{part}_cpu_ms_per_save"] = (
                round(spent / saves * 1e3, 3) if known and saves else None
            )
        row["turns_server_cpu_ms_per_save"] = (
            [round(ms, 3) for ms in turn_server_cpu[row["contender"]]]
            if server_pid is not None
            else None
        )
    lag, during = lag_figures(turns["indexed"], live["commits"], positions, windows)
    backlog_saves = sum(r["saves"] for r in backlog_reports)
    backlog_rate = backlog_saves / max(r["elapsed"] for r in backlog_reports)
    rate_8 = next(r["saves_per_s"] for r in rows if r["contender"] == "indexed")
    return {
        "event_item_bytes": item_size(raw_item(str(uuid.uuid4()), placed)),
        "event_state_bytes": len(placed.state),
        "throughput": rows,
        "indexer": {
            "indexed_saves_measured": indexed_saves,
            "lag": lag,
            "during_writers": during,
            "backlog": {
                "saves": backlog_saves,
                "saves_per_s_without_indexer": round(backlog_rate, 1),
                "records_consumed": consumed,
                "events_indexed": indexed,
                "seconds": round(catch_seconds, 2),
                "events_per_s": round(indexed / catch_seconds, 1),
                "vs_8_writer_rate": round(indexed / catch_seconds / rate_8, 2),
            },
        },
        "cost": [
            cost_row("live, during part 1", live),
            cost_row("backlog", backlog_cost),
        ],
    }


def throughput_rows(
    turns: dict[str, list[list[Any]]], contenders: list[str]
) -> list[dict[str, Any]]:
    """Return saves/s, latency and the ratio to raw of each contender."""
    rates: dict[str, float] = {}
    rows = []
    for contender in [RAW, *[c for c in contenders if c != RAW]]:
        runs = turns[contender]
        saves = sum(r["saves"] for reports in runs for r in reports)
        elapsed = sum(max(r["elapsed"] for r in reports) for reports in runs)
        per_turn = [
            sum(r["saves"] for r in reports) / max(r["elapsed"] for r in reports)
            for reports in runs
        ]
        latencies = [x for reports in runs for r in reports for x in r["latencies"]]
        rates[contender] = saves / elapsed
        rows.append(
            {
                "processes": WRITERS,
                "contender": contender,
                "saves": saves,
                "saves_per_s": round(rates[contender], 1),
                "turns_saves_per_s": [round(rate, 1) for rate in per_turn],
                "vs_raw": round(rates[contender] / rates[RAW], 2),
                "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                "errors": sum(r["errors"] for reports in runs for r in reports),
            }
        )
    return rows


def lag_figures(
    runs: list[list[Any]],
    commits: list[tuple[float, int, int]],
    positions: dict[str, int],
    windows: list[tuple[float, float]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Lag of each measured indexed save, and the indexer's rate in the turns."""
    committed_at: dict[int, float] = {}
    for when, first, last in commits:
        for position in range(first, last + 1):
            committed_at[position] = when
    lags = [
        committed_at[positions[aggregate_id]] - saved_at
        for reports in runs
        for r in reports
        for aggregate_id, saved_at in r["saved"]
    ]
    in_turns = [
        last - first + 1
        for when, first, last in commits
        if any(start <= when <= end for start, end in windows)
    ]
    turn_seconds = sum(end - start for start, end in windows)
    rounds_in_turns = len(in_turns)
    return (
        {
            "saves": len(lags),
            "p50_ms": round(percentile(lags, 50) * 1000, 1),
            "p99_ms": round(percentile(lags, 99) * 1000, 1),
            "max_ms": round(max(lags) * 1000, 1),
        },
        {
            "events_indexed": sum(in_turns),
            "seconds": round(turn_seconds, 2),
            "events_per_s": round(sum(in_turns) / turn_seconds, 1),
            "commits": rounds_in_turns,
            "events_per_commit": round(sum(in_turns) / max(1, rounds_in_turns), 1),
        },
    )


def cost_row(what: str, report: dict[str, Any]) -> dict[str, Any]:
    """Return what the indexer's writes cost per event indexed."""
    events = sum(last - first + 1 for _, first, last in report["commits"])
    commits = len(report["commits"])
    rounds = report.get("rounds", 0)
    return {
        "run": what,
        "events": events,
        "commits": commits,
        "rounds": rounds or None,
        "calls_per_round": {
            call: round(count / rounds, 2) for call, count in report["calls"].items()
        }
        if rounds
        else None,
        "events_per_commit": round(events / max(1, commits), 1),
        "estimated_wcu_per_event": round(report["estimated_wcu"] / max(1, events), 3),
        "reported_wcu_per_event": round(report["reported_wcu"] / max(1, events), 3),
        "round_trips_per_event": round(report["round_trips"] / max(1, events), 3),
        "bytes_written_per_event": round(report["bytes_written"] / max(1, events)),
        "calls": report["calls"],
    }


# --- a history: reading the index, rebuilding from it ----------------------------


def seed(app: Orders, events: int, threads: int = 4) -> None:
    """Store ``events`` Order events, 5 per Order, in saves of 95 (19 Orders).

    Saves go from several threads: each Order is whole in one save, so
    saves committing out of order never put an Order's versions out of order.
    """
    saves: list[list[StoredEvent]] = []
    stored: list[StoredEvent] = []
    for _ in range(events // EVENTS_PER_ORDER):
        order = Order.place(uuid.uuid4(), [], CURRENCY)
        for n in range(EVENTS_PER_ORDER - 2):
            order.add_item(f"p{n}", 1, PRICE)
        order.confirm()
        stored.extend(app.mapper.to_stored_event(e) for e in order.collect_events())
        if len(stored) == SEED_SAVE:
            saves.append(stored)
            stored = []
    if stored:
        saves.append(stored)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(app.recorder.insert_events, saves))


def ledger_read(app: Orders) -> int:
    """Read the whole index as a reader does, 1,000 positions a call."""
    count, position = 0, 0
    while True:
        page = app.recorder.select_notifications(start=position + 1, limit=READ_LIMIT)
        if not page:
            return count
        count += len(page)
        position = page[-1].id


def feed_read(app: Orders) -> int:
    """Read the whole index as a consumer does: ``IndexSource``, a page at a time.

    Counts the items without decoding their events, as the other readers do:
    a consumer that keeps up, so the pages are read in its own thread.
    """
    return sum(len(batch.items) for batch in IndexSource(app).batches(0))


def raw_read(
    client: Any, table: str, last_position: int, page_size: int
) -> tuple[int, int]:
    """A plain Query loop over the batch items, each decoded; (events, requests).

    ``page_size``: the table's positions per page (``recorder.page_size``).
    """
    count = requests = 0
    for page in range(schema.page_of(last_position, page_size) + 1):
        params: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "page = :p",
            "ExpressionAttributeValues": {":p": {"N": str(page)}},
            "ConsistentRead": True,
        }
        while True:
            response = client.query(**params)
            requests += 1
            for batch in response["Items"]:
                first = int(batch[schema.FIRST_POSITION]["N"])
                count += len(decode_batch(batch[schema.EVENTS]["B"], first))
            if "LastEvaluatedKey" not in response:
                break
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return count, requests


def compare_reads(
    app: Orders, client: Any, events: int, read_rounds: int
) -> dict[str, Any]:
    """Read the whole index ``read_rounds`` times with each reader, in turns.

    Returns each reader's rates, CPU per event and round trips per read.
    """
    head = events
    table = app.recorder.notifications_table_name
    readers: dict[str, Callable[[], tuple[int, int | None]]] = {
        "ledger": lambda: (ledger_read(app), None),
        RAW: lambda: raw_read(client, table, head, app.recorder.page_size),
        "feed": lambda: (feed_read(app), None),
    }
    rates: dict[str, list[float]] = {name: [] for name in readers}
    cpu: dict[str, list[float]] = {name: [] for name in readers}
    round_trips: dict[str, int] = {}
    for round_number in range(read_rounds):
        # Each contender first in turn: none always reads a cache warmed by another.
        names = list(readers)
        shift = round_number % len(names)
        for contender in names[shift:] + names[:shift]:
            # Unmetered, as users read: a meter asks DynamoDB for capacity.
            begun, cpu_begun = time.perf_counter(), time.process_time()
            count, requests = readers[contender]()
            elapsed = time.perf_counter() - begun
            cpu_spent = time.process_time() - cpu_begun
            if count != events:
                raise RuntimeError(f"{contender} read {count} of {events} events")
            rates[contender].append(count / elapsed)
            cpu[contender].append(cpu_spent / count * 1e6)
            if requests is not None:
                round_trips[contender] = requests
    for contender, read in readers.items():
        if contender not in round_trips:
            with measure(app) as read_meter:
                read()
            round_trips[contender] = read_meter.round_trips
    ledger_rate = statistics.median(rates["ledger"])
    raw_rate = statistics.median(rates[RAW])
    return {
        "ledger_events_per_s": round(ledger_rate),
        "raw_events_per_s": round(raw_rate),
        "ratio": round(ledger_rate / raw_rate, 2),
        "ledger_rates": [round(r) for r in rates["ledger"]],
        "raw_rates": [round(r) for r in rates[RAW]],
        "feed_events_per_s": round(statistics.median(rates["feed"])),
        "feed_ratio": round(statistics.median(rates["feed"]) / raw_rate, 2),
        "feed_rates": [round(r) for r in rates["feed"]],
        "feed_round_trips_per_read": round_trips["feed"],
        "ledger_round_trips_per_read": round_trips["ledger"],
        "raw_round_trips_per_read": round_trips[RAW],
        "cpu_us_per_event": {
            name: round(statistics.median(spent), 2) for name, spent in cpu.items()
        },
        "round_ratios": [
            round(ledger / raw, 2)
            for ledger, raw in zip(rates["ledger"], rates[RAW], strict=True)
        ],
    }


class RecordedAnswers:
    """A recorder's connection that keeps DynamoDB's answer to each request.

    Then answers the same requests from what it kept, without DynamoDB:
    the readers' own CPU per event, apart from the server's and the
    network's, which a shared machine's load makes a matter of chance.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.answers: dict[str, dict[str, Any]] = {}

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        key = repr((operation, sorted(params.items())))
        if self.connection is None:
            return self.answers[key]
        answer: dict[str, Any] = self.connection.call(operation, **params)
        self.answers[key] = answer
        return answer

    def replaying(self) -> RecordedAnswers:
        """Return a connection answering from these answers only."""
        replay = RecordedAnswers(None)
        replay.answers = self.answers
        return replay


def readers_cpu(app: Orders, events: int, rounds: int) -> dict[str, float]:
    """CPU µs per event of each reader over recorded answers (medians of rounds).

    One whole read by each reader is recorded from DynamoDB; each round then
    reads again from those answers with a new recorder, as the recorded one
    was. ``decoding`` is the batch items' decoding alone (all the raw loop
    does but parse DynamoDB's answers).
    """
    recorded = RecordedAnswers(app.recorder.connection)
    kind = DynamoDBApplicationRecorder

    def reader_app(connection: Any) -> Any:
        recorder = kind(
            connection,
            app.recorder.events_table_name,  # type: ignore[attr-defined]
            app.recorder.notifications_table_name,  # type: ignore[attr-defined]
        )
        return SimpleNamespace(name=app.name, mapper=app.mapper, recorder=recorder)

    ledger_read(reader_app(recorded))  # type: ignore[arg-type]
    feed_read(reader_app(recorded))  # type: ignore[arg-type]
    replay = recorded.replaying()
    batches = {
        item[schema.POSITION]["N"]: item
        for answer in recorded.answers.values()
        for item in answer.get("Items", [])
    }

    def decoding() -> int:
        return sum(
            len(
                decode_batch(
                    item[schema.EVENTS]["B"], int(item[schema.FIRST_POSITION]["N"])
                )
            )
            for item in batches.values()
        )

    readers: dict[str, Callable[[], int]] = {
        "decoding": decoding,
        "ledger": lambda: ledger_read(reader_app(replay)),  # type: ignore[arg-type]
        "feed": lambda: feed_read(reader_app(replay)),  # type: ignore[arg-type]
    }
    spent: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(rounds):
        for name, read in readers.items():
            begun = time.process_time()
            count = read()
            spent[name].append(time.process_time() - begun)
            if count != events:
                raise RuntimeError(f"{name} read {count} of {events} recorded events")
    return {
        name: round(statistics.median(times) / events * 1e6, 2)
        for name, times in spent.items()
    }


def run_readers(endpoint: str, events: int, read_rounds: int) -> dict[str, Any]:
    """Part 4's reads alone: seed a history, index it, read it with each reader."""
    started = time.perf_counter()
    app = open_app(endpoint, f"read{uuid.uuid4().hex[:6]}_", "indexed", create=True)
    seed(app, events)
    Indexer(app.recorder).catch_up(timeout=3600)  # type: ignore[arg-type]
    stage(f"readers: {events:,} events saved and indexed", started)
    load_before = load_average()
    reads = compare_reads(app, plain_client(endpoint), events, read_rounds)
    load_after = load_average()
    cpu = readers_cpu(app, events, max(read_rounds, 20))
    app.close()
    return {
        "events": events,
        "load_before": load_before,
        "load_after": load_after,
        "reads": reads,
        "replayed_cpu_us_per_event": cpu,
    }


def print_readers(results: dict[str, Any]) -> None:
    """Print the readers' figures of ``--readers-only`` and the target."""
    reads = results["reads"]
    print(
        f"\nload average before the reads: {results['load_before']}, "
        f"after: {results['load_after']}"
    )
    cpu = reads["cpu_us_per_event"]
    print_table(
        f"Reading {results['events']:,} indexed events whole "
        f"({len(reads['raw_rates'])} rounds, each reader first in turn)",
        [
            ("reader", "reader"),
            ("events/s (median)", "rate"),
            ("vs raw", "ratio"),
            ("rates", "rates"),
            ("CPU µs/event", "cpu"),
            ("round trips", "round_trips"),
        ],
        [
            {
                "reader": "select_notifications",
                "rate": reads["ledger_events_per_s"],
                "ratio": reads["ratio"],
                "rates": ", ".join(f"{r:,}" for r in reads["ledger_rates"]),
                "cpu": cpu["ledger"],
                "round_trips": reads["ledger_round_trips_per_read"],
            },
            {
                "reader": "IndexSource",
                "rate": reads["feed_events_per_s"],
                "ratio": reads["feed_ratio"],
                "rates": ", ".join(f"{r:,}" for r in reads["feed_rates"]),
                "cpu": cpu["feed"],
                "round_trips": reads["feed_round_trips_per_read"],
            },
            {
                "reader": "raw boto3 Query",
                "rate": reads["raw_events_per_s"],
                "ratio": 1.0,
                "rates": ", ".join(f"{r:,}" for r in reads["raw_rates"]),
                "cpu": cpu[RAW],
                "round_trips": reads["raw_round_trips_per_read"],
            },
        ],
    )
    replayed = results["replayed_cpu_us_per_event"]
    print(
        "\nOwn CPU µs/event over recorded answers (no server, no network): "
        f"select_notifications {replayed['ledger']}, IndexSource {replayed['feed']}, "
        f"decoding the batch items alone {replayed['decoding']}"
    )
    met = reads["ratio"] >= 0.5 and reads["feed_ratio"] >= 0.5
    print(
        f"\nreaders of the index >= 0.5x raw Query: {'met' if met else 'NOT met'} "
        f"(select_notifications {reads['ratio']:.2f}x, IndexSource "
        f"{reads['feed_ratio']:.2f}x)"
    )


def fresh_view(endpoint: str, prefix: str) -> DynamoDBView:
    """Open OrderProjector's view under its own prefix: each rebuild starts empty."""
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": f"{prefix}{uuid.uuid4().hex[:6]}_",
    }
    view: DynamoDBView = open_view(OrderProjector, env)
    return view


def run_history(
    endpoint: str, events: int, read_rounds: int, rebuild_rounds: int, started: float
) -> dict[str, Any]:
    """Part 4: seed a history, index it, read it, rebuild from it."""
    prefix = f"hist{uuid.uuid4().hex[:6]}_"
    app = open_app(endpoint, prefix, "indexed", create=True)
    begun = time.perf_counter()
    seed(app, events)
    seeded = time.perf_counter() - begun
    stage(f"history: {events:,} events saved", started)
    indexer = Indexer(app.recorder)  # type: ignore[arg-type]
    with measure(app) as meter:
        begun = time.perf_counter()
        indexer.catch_up(timeout=3600)
        indexing = time.perf_counter() - begun
    head = app.recorder.max_notification_id() or 0
    if head != events:
        raise RuntimeError(f"the index holds {head} of {events} events")
    stage("history: indexed", started)
    read_figures = compare_reads(app, plain_client(endpoint), events, read_rounds)
    stage("history: read", started)
    rebuilds: dict[str, list[dict[str, Any]]] = {"index": [], "scan": []}
    for round_number in range(rebuild_rounds):
        order = ("index", "scan") if round_number % 2 == 0 else ("scan", "index")
        for source in order:
            view = fresh_view(endpoint, f"{prefix}{source}")
            history: History = (
                SequenceHistory(app) if source == "index" else ScanHistory(app)
            )
            with measure(app) as reads, measure(view) as writes:
                result = rebuild(app, OrderProjector, view, history=history)
            if result.events != events:
                raise RuntimeError(f"{source} rebuild applied {result.events} events")
            rebuilds[source].append(
                {
                    "events_per_s": round(result.events_per_second),
                    "read_round_trips": reads.round_trips,
                    "write_round_trips": writes.round_trips,
                    "estimated_rcu": round(reads.estimated_read_units, 1),
                }
            )
        stage(f"history: rebuild round {round_number + 1} done", started)
    app.close()
    index_rate = round(statistics.median(r["events_per_s"] for r in rebuilds["index"]))
    scan_rate = round(statistics.median(r["events_per_s"] for r in rebuilds["scan"]))
    return {
        "events": events,
        "seeded_events_per_s": round(events / seeded),
        "catch_up": {
            "run": "history (95-event saves)",
            "events": events,
            "commits": meter.calls.get("TransactWriteItems", 0),
            "events_per_commit": round(
                events / max(1, meter.calls.get("TransactWriteItems", 0)), 1
            ),
            "events_per_s": round(events / indexing),
            "estimated_wcu_per_event": round(meter.estimated_write_units / events, 3),
            "reported_wcu_per_event": round(meter.write_units / events, 3),
            "round_trips_per_event": round(meter.round_trips / events, 3),
            "bytes_written_per_event": round(meter.bytes_written / events),
        },
        "reads": read_figures,
        "rebuild": {
            "index_events_per_s": index_rate,
            "scan_events_per_s": scan_rate,
            "ratio": round(index_rate / scan_rate, 2),
            "runs": rebuilds,
        },
    }


# --- batch formats ---------------------------------------------------------------

BATCH = 98
"""Events per batch item, as the indexer and the sequence ordering write them."""


def order_events(app: Orders) -> list[BatchEntry]:
    """A batch of Order events as the history saves them: 5 per Order."""
    entries: list[BatchEntry] = []
    while len(entries) < BATCH:
        order = Order.place(uuid.uuid4(), [], CURRENCY)
        for n in range(EVENTS_PER_ORDER - 2):
            order.add_item(f"p{n}", 1, PRICE)
        order.confirm()
        for event in order.collect_events():
            stored = app.mapper.to_stored_event(event)
            entries.append(
                BatchEntry(
                    str(stored.originator_id),
                    stored.originator_version,
                    stored.topic,
                    stored.state,
                )
            )
    return entries[:BATCH]


def run_formats(app: Orders) -> list[dict[str, Any]]:
    """Part 5: bytes and CPU per event of each batch format, on three mixes."""
    draw = random.Random(5)
    placed = [placed_event(app) for _ in range(BATCH)]
    mixes = {
        "Order events (5 per Order)": order_events(app),
        "new Orders (1 event each)": [
            BatchEntry(str(e.originator_id), 1, e.topic, e.state) for e in placed
        ],
        "random 200 B states": [
            BatchEntry(
                str(uuid.UUID(int=draw.getrandbits(128), version=4)),
                1,
                placed[0].topic,
                draw.randbytes(200),
            )
            for _ in range(BATCH)
        ],
    }
    layouts: dict[str, dict[str, Any]] = {
        "2": {"batch_format": ROWS_FORMAT},
        "3 (as written)": {"batch_format": FORMAT},
        "3 uncompressed": {"batch_format": FORMAT, "compress": False},
        "3 compressed": {"batch_format": FORMAT, "compress": True},
    }
    rows = []
    for mix, entries in mixes.items():
        for layout, options in layouts.items():
            blob = encode_batch(1, entries, **options)
            number = 200
            encode = min(
                timeit.repeat(
                    lambda e=entries, o=options: encode_batch(1, e, **o),
                    number=number,
                    repeat=5,
                )
            )
            decode = min(
                timeit.repeat(
                    lambda b=blob: decode_batch(b, 1), number=number, repeat=5
                )
            )
            rows.append(
                {
                    "events": mix,
                    "format": layout,
                    "state_bytes_per_event": round(
                        sum(len(e.state or b"") for e in entries) / BATCH
                    ),
                    "bytes_per_event": round(len(blob) / BATCH),
                    "encode_us_per_event": round(encode / number / BATCH * 1e6, 2),
                    "decode_us_per_event": round(decode / number / BATCH * 1e6, 2),
                }
            )
    return rows


# --- targets and tables --------------------------------------------------------


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the run's figures with the targets of the indexed ordering."""
    targets = []

    def add(target: str, measured: str, passed: bool) -> None:
        targets.append(
            {
                "target": target,
                "measured": measured,
                "result": "pass" if passed else "FAIL",
            }
        )

    indexed = next(r for r in results["throughput"] if r["contender"] == "indexed")
    add(
        "saves/s at 8 writers, indexer running >= 0.8x raw PutItem",
        f"{indexed['vs_raw']:.2f}x ({indexed['saves_per_s']:,.0f} saves/s)",
        indexed["vs_raw"] >= 0.8,
    )
    backlog = results["indexer"]["backlog"]
    add(
        "indexer throughput >= 2x the 8-writer save rate (catching up a backlog)",
        f"{backlog['vs_8_writer_rate']:.2f}x ({backlog['events_per_s']:,.0f} events/s)",
        backlog["vs_8_writer_rate"] >= 2,
    )
    live = results["cost"][0]
    add(
        "index cost <= 0.5 WCU per ~200-byte event (estimate, AWS's rules)",
        f"{live['estimated_wcu_per_event']:.3g} live ({live['events_per_commit']:g} "
        f"events/commit), {results['cost'][1]['estimated_wcu_per_event']:.3g} "
        "catching up",
        live["estimated_wcu_per_event"] <= 0.5,
    )
    reads = results["history"]["reads"]
    add(
        "readers of the index >= 0.5x raw Query (events/s)",
        f"{reads['ratio']:.2f}x ({reads['ledger_events_per_s']:,} events/s)",
        reads["ratio"] >= 0.5,
    )
    rebuilt = results["history"]["rebuild"]
    add(
        "rebuild from the index faster than from a Scan",
        f"{rebuilt['ratio']:.2f}x ({rebuilt['index_events_per_s']:,} vs "
        f"{rebuilt['scan_events_per_s']:,} events/s)",
        rebuilt["ratio"] > 1,
    )
    return targets


def print_results(results: dict[str, Any]) -> None:
    """Print every part as a Markdown table, then the targets."""
    print(
        f"\nload average before: {results['load_before']}, "
        f"after: {results['load_after']}"
    )
    print_table(
        f"1. Saves/s of 1-event Orders ({results['event_item_bytes']} B items, "
        f"{results['event_state_bytes']} B state), {WRITERS} writer processes, "
        f"{results['seconds']:g} s x {results['rounds']} turns each",
        [
            ("contender", "contender"),
            ("saves/s", "saves_per_s"),
            ("vs raw", "vs_raw"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("errors", "errors"),
            ("server CPU ms/save", "server_cpu_ms_per_save"),
            ("writers CPU ms/save", "writers_cpu_ms_per_save"),
            ("indexer CPU ms/save", "indexer_cpu_ms_per_save"),
        ],
        results["throughput"],
    )
    print_table(
        "Turn by turn (each round starts one contender later: drift shows here)",
        [
            ("contender", "contender"),
            ("saves/s by turn", "saves"),
            ("server CPU ms/save by turn", "server"),
        ],
        [
            {
                "contender": row["contender"],
                "saves": ", ".join(f"{x:,.0f}" for x in row["turns_saves_per_s"]),
                "server": ", ".join(
                    f"{x:.3f}" for x in row["turns_server_cpu_ms_per_save"] or []
                ),
            }
            for row in results["throughput"]
        ],
    )
    indexer = results["indexer"]
    print_table(
        "2. The indexer (its own process)",
        [("figure", "figure"), ("value", "value")],
        [
            {
                "figure": "events indexed/s during the indexed turns",
                "value": indexer["during_writers"]["events_per_s"],
            },
            {
                "figure": "events per commit during the turns",
                "value": indexer["during_writers"]["events_per_commit"],
            },
            {
                "figure": "lag p50 ms (save returned -> index commit)",
                "value": indexer["lag"]["p50_ms"],
            },
            {"figure": "lag p99 ms", "value": indexer["lag"]["p99_ms"]},
            {"figure": "lag max ms", "value": indexer["lag"]["max_ms"]},
            {
                "figure": "backlog events (8 writers, no indexer)",
                "value": indexer["backlog"]["events_indexed"],
            },
            {
                "figure": "backlog catch-up events/s",
                "value": indexer["backlog"]["events_per_s"],
            },
            {
                "figure": "catch-up vs the 8-writer indexed save rate",
                "value": indexer["backlog"]["vs_8_writer_rate"],
            },
            {
                "figure": "multi-event saves: catch-up events/s",
                "value": results["history"]["catch_up"]["events_per_s"],
            },
        ],
    )
    print_table(
        "3. Index cost (ledger's metering of the indexer)",
        [
            ("run", "run"),
            ("events", "events"),
            ("commits", "commits"),
            ("events/commit", "events_per_commit"),
            ("est. WCU/event", "estimated_wcu_per_event"),
            ("reported WCU/event", "reported_wcu_per_event"),
            ("round trips/event", "round_trips_per_event"),
            ("bytes/event", "bytes_written_per_event"),
        ],
        [*results["cost"], results["history"]["catch_up"]],
    )
    live = results["cost"][0]
    if live["calls_per_round"]:
        per_round = ", ".join(f"{n:g} {c}" for c, n in live["calls_per_round"].items())
        print(f"\nLive: {live['rounds']} rounds; calls per round: {per_round}")
    history = results["history"]
    print_table(
        f"4. A history of {history['events']:,} Order events, indexed",
        [
            ("figure", "figure"),
            ("index", "index"),
            ("baseline", "baseline"),
            ("ratio", "ratio"),
        ],
        [
            {
                "figure": "read events/s (select_notifications vs raw Query)",
                "index": history["reads"]["ledger_events_per_s"],
                "baseline": history["reads"]["raw_events_per_s"],
                "ratio": history["reads"]["ratio"],
            },
            {
                "figure": "read events/s (IndexSource vs raw Query)",
                "index": history["reads"]["feed_events_per_s"],
                "baseline": history["reads"]["raw_events_per_s"],
                "ratio": history["reads"]["feed_ratio"],
            },
            {
                "figure": "round trips per full read (select_notifications)",
                "index": history["reads"]["ledger_round_trips_per_read"],
                "baseline": history["reads"]["raw_round_trips_per_read"],
                "ratio": None,
            },
            {
                "figure": "round trips per full read (IndexSource)",
                "index": history["reads"]["feed_round_trips_per_read"],
                "baseline": history["reads"]["raw_round_trips_per_read"],
                "ratio": None,
            },
            {
                "figure": "CPU µs/event, this process (select_notifications)",
                "index": history["reads"]["cpu_us_per_event"]["ledger"],
                "baseline": history["reads"]["cpu_us_per_event"][RAW],
                "ratio": None,
            },
            {
                "figure": "CPU µs/event, this process (IndexSource)",
                "index": history["reads"]["cpu_us_per_event"]["feed"],
                "baseline": history["reads"]["cpu_us_per_event"][RAW],
                "ratio": None,
            },
            {
                "figure": "OrderProjector rebuild events/s (index vs Scan)",
                "index": history["rebuild"]["index_events_per_s"],
                "baseline": history["rebuild"]["scan_events_per_s"],
                "ratio": history["rebuild"]["ratio"],
            },
        ],
    )
    print_table(
        f"5. Notification batch formats ({BATCH} events a batch, in process)",
        [
            ("events", "events"),
            ("format", "format"),
            ("state B/event", "state_bytes_per_event"),
            ("batch B/event", "bytes_per_event"),
            ("encode µs/event", "encode_us_per_event"),
            ("decode µs/event", "decode_us_per_event"),
        ],
        results["formats"],
    )
    print_table(
        "Targets",
        [("target", "target"), ("measured", "measured"), ("result", "result")],
        results["targets"],
    )


@contextmanager
def server(endpoint: str | None) -> Iterator[tuple[str, int | None]]:
    """Yield the given endpoint, or a fresh DynamoDB Local's, and its process id."""
    if endpoint:
        yield endpoint, None
        return
    with DynamoDBLocal() as local:
        yield local.endpoint_url, local.pid


def main() -> None:
    """Run every part and write ``results/indexed.json``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per turn")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="turns per contender (3: each takes each place in the order once)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=6.0,
        help="seconds of each unmeasured turn (every contender, forward then reverse)",
    )
    parser.add_argument(
        "--backlog-seconds", type=float, default=5.0, help="saving with no indexer"
    )
    parser.add_argument(
        "--index-interval",
        type=float,
        default=1.0,
        help="indexer's wait when a round found nothing (ledger index run's default)",
    )
    parser.add_argument("--events", type=int, default=10_000, help="history size")
    parser.add_argument("--read-rounds", type=int, default=15)
    parser.add_argument("--rebuild-rounds", type=int, default=2)
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    parser.add_argument(
        "--readers-only",
        action="store_true",
        help="part 4's reads alone (writes results/readers.json unless --output)",
    )
    parser.add_argument("--output", help="under results/ (default: indexed.json)")
    args = parser.parse_args()
    # One set of credentials for every client, ledger's and boto3's alike.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    started = time.perf_counter()
    if args.readers_only:
        with server(args.endpoint) as (endpoint, _):
            readers = run_readers(endpoint, args.events, args.read_rounds)
        readers["command"] = "python benchmarks/bench_indexed.py " + " ".join(
            sys.argv[1:]
        )
        print_readers(readers)
        RESULTS.mkdir(parents=True, exist_ok=True)
        output = RESULTS / (args.output or "readers.json")
        output.write_text(json.dumps(readers, indent=2) + "\n")
        print(f"\nwrote {output}")
        return
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_indexed.py " + " ".join(sys.argv[1:]),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "index_interval": args.index_interval,
        "load_before": load_average(),
    }
    with server(args.endpoint) as (endpoint, server_pid):
        results |= run_writers(
            endpoint,
            server_pid=server_pid,
            seconds=args.seconds,
            rounds=args.rounds,
            backlog_seconds=args.backlog_seconds,
            interval=args.index_interval,
            started=started,
            warmup=args.warmup,
        )
    with server(args.endpoint) as (endpoint, _):
        results["history"] = run_history(
            endpoint, args.events, args.read_rounds, args.rebuild_rounds, started
        )
    formats_app = Orders(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    results["formats"] = run_formats(formats_app)
    results["load_after"] = load_average()
    results["targets"] = check_targets(results)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_results(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / (args.output or "indexed.json")
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['wall_seconds']:.0f} s; wrote {output}")


if __name__ == "__main__":
    main()
