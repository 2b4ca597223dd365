"""Benchmark how ledger's saves scale out, per ordering mode, beside raw boto3.

Contenders: the ``Orders`` application with ``DYNAMODB_ORDERING=sequence``
(each save one transaction of the events, a notification batch and the
update of one sequence item), the same with ``DYNAMODB_ORDERING=stream`` (no
sequence: one conditional PutItem per 1-event save), plain boto3 making
the fewest calls that store the same items (no ``ReturnConsumedCapacity``, no
``ExpressionAttributeNames``, no item sizing), and, labelled apart, raw boto3
shaped like ledger's calls (``raw, ledger-shaped``: capacity asked for, the key
attribute named, every item sized). Part 1 runs on a DynamoDB Local
of its own, parts 2 to 4 on another; every events table is made without a
DynamoDB stream (``DYNAMODB_EVENTS_STREAM=no``: nothing here reads it, and
DynamoDB Local slows writes into stream tables). Contenders alternate within
each part.

1. Saves/s from 1, 2, 4 and 8 processes (``--processes``; each its own
   application or boto3 client, each creating new 1-event Orders):
   ``--seconds`` per cell, ``--rounds`` rounds (2). A round runs the
   sequence ordering's cell first, then an unmeasured second of raw's saves
   to let the server settle, then the others in mirrored turns (A B C D D C
   B A, the list turned by one each round): no contender runs straight
   after the contended cell, and each has the same mean place. Reported
   with p50/p99 latency per save, the client CPU
   per save (all writer processes' CPU over their saves; DynamoDB Local's
   not counted) and its ratio to raw's, each round's saves/s over raw's in
   the same round (lowest, median, highest), and, for the sequence mode,
   the lost races. A control, labelled apart: ``raw, after the domain
   work``, raw's save of a new Order's event made and encoded as ledger's
   save makes it (``Order.place``, the mapper), without ledger's storage
   code, the application or its client.
2. Cost per save of 1 and 10 events: round trips and capacity units.
3. One command (load a 10-event Order, add one item, save) beside a raw
   Query (ConsistentRead) and conditional PutItem: wall time and client CPU.
4. Reading the application sequence (sequence mode) beside a raw Query of
   its notification batch items, for histories of 1-event and 98-event saves.
5. Decoding a 10,000-event load without snapshots: events per second beside
   a raw loop (the Query's botocore parse, then ``model_validate_json`` of
   each state), by wall time (``vs raw``, the target's figure) and by this
   process's CPU (``vs raw, by CPU``: raw's CPU per event over the
   contender's), with the wall time the process spent not running
   (``waiting ms``: DynamoDB Local answering the Query's pages, and other
   processes on the cores).

Timed work runs as each contender runs by default: ledger with no meter open
(so without ``ReturnConsumedCapacity``); round trips and capacity units are
counted in untimed calls (ledger under ``measure``, raw ledger-shaped).

    python benchmarks/bench_scaleout.py [--quick] [--seconds 5] [--repeat 200]
        [--parts 1,2,3,4,5] [--processes 1,2,4,8] [--rounds 2]
        [--modes sequence,stream] [--endpoint URL]

Round trips and capacity units are deterministic; wall times on a shared
machine are not: compare a contender with the raw row of the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import botocore.config
import pydantic_core
from eventsourcing.persistence import JSONTranscoder, StoredEvent
from eventsourcing.utils import resolve_topic

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import DynamoDBFactory, measure, schema
from ledger.dynamodb.batches import decode_batch
from ledger.dynamodb.limits import item_size, read_units, write_units
from ledger.dynamodb.local import DynamoDBLocal
from ledger.dynamodb.tables import ensure_table
from ledger.persistence import CLASS_VERSION, PydanticMapper

RESULTS = Path(__file__).parent / "results"
PROCESS_COUNTS = (1, 2, 4, 8)
RAW = "raw"
RAW_SHAPED = "raw, ledger-shaped"
"""Raw boto3 with what ledger adds to each call: consumed capacity asked for,
the key attribute named, every item sized."""
RAW_DOMAIN = "raw, after the domain work"
"""Part 1's control, labelled apart: raw's ``PutItem`` of a new Order's event,
made and encoded as a ledger save makes it (``Order.place``, the mapper's
``to_stored_event``), with none of ledger's storage code."""
READ_LIMIT = 1000
"""Notifications per ``select_notifications`` call (as rebuilds and the CLI read)."""
SEQUENCE_RACE = "lost the race for the application sequence, retrying"
CONTENDED = ("sequence",)
"""Part 1's contenders run in a slot of their own: every save of theirs races
for one item, which leaves the server busy for whatever runs next."""
SETTLE = "settle"
SETTLE_SECONDS = 1.0
"""Part 1's unmeasured cell after the contended ones, before the fair turns."""
TRANSACTION_RETRY = "transaction cancelled, retrying"
WRITE_OPERATIONS = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems")
CURRENCY = "EUR"
PRICE = Decimal("2.50")
NINE_ITEMS = [{"product_id": f"p{n}", "quantity": 1, "price": PRICE} for n in range(9)]


def stage(what: str, started: float) -> None:
    """Say on stderr which stage finished, and when."""
    elapsed = time.perf_counter() - started
    print(f"[{elapsed:6.1f} s] {what}", file=sys.stderr, flush=True)


def stream_mode_available() -> bool:
    """Return whether this ledger has the ``DYNAMODB_ORDERING`` setting."""
    return hasattr(DynamoDBFactory, "DYNAMODB_ORDERING")


def percentile(values: list[float], q: float) -> float:
    """Return the nearest-rank ``q``-th percentile."""
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered) - 1, max(0, rank - 1))]


# --- the contenders -------------------------------------------------------------


def app_env(
    endpoint: str, prefix: str, mode: str, *, create: bool = True
) -> dict[str, str]:
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": prefix,
        "DYNAMODB_EVENTS_STREAM": "no",
        "CREATE_TABLE": "yes" if create else "no",
    }
    if stream_mode_available():
        env["DYNAMODB_ORDERING"] = mode
    return env


def open_app(endpoint: str, prefix: str, mode: str, *, create: bool = True) -> Orders:
    """Return an Orders application in the given ordering mode."""
    app = Orders(env=app_env(endpoint, prefix, mode, create=create))
    ordering = getattr(app.recorder, "ordering", "sequence")
    if ordering != mode:
        raise SystemExit(f"asked for ordering {mode!r}, the recorder has {ordering!r}")
    return app


def raw_client(endpoint: str) -> Any:
    """A plain boto3 DynamoDB client, with ledger's retries and credentials.

    Credentials as ledger's own client takes them: the environment's when it
    has some, else placeholders (DynamoDB Local accepts any, and keeps one
    database per access key, so the tables ledger made must be seen with the
    same key).
    """
    session = boto3.session.Session()
    placeholder = "local" if session.get_credentials() is None else None
    return session.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        aws_access_key_id=placeholder,
        aws_secret_access_key=placeholder,
        config=botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 10},
            max_pool_connections=50,
        ),
    )


def create_raw_table(endpoint: str, name: str) -> None:
    """Create a table of the events table's key schema, without a stream."""
    factory = DynamoDBFactory({"DYNAMODB_ENDPOINT_URL": endpoint})
    ensure_table(
        factory.connection, schema.stream_table_definition(name, with_stream=False)
    )
    factory.close()


def event_item(aggregate_id: str, version: int, event: StoredEvent) -> dict[str, Any]:
    """An events-table item as ledger's stream mode stores it (no position)."""
    return {
        schema.AGGREGATE_ID: {"S": aggregate_id},
        schema.VERSION: {"N": str(version)},
        schema.TOPIC: {"S": event.topic},
        schema.STATE: {"B": event.state},
    }


class RawTable:
    """The fewest plain boto3 calls that store and read events.

    Plain: no ``ReturnConsumedCapacity``, no ``ExpressionAttributeNames``, no
    item sizing; only round trips are counted (an integer per call).
    ``ledger_shaped=True`` adds what ledger's client adds to each call (asks
    for consumed capacity, names the key attribute, sizes every item written
    and read): a separately labelled contender, and the source of the cost
    table's reported and estimated units.
    """

    def __init__(
        self, client: Any, table_name: str, *, ledger_shaped: bool = False
    ) -> None:
        self.client = client
        self.table_name = table_name
        self.ledger_shaped = ledger_shaped
        self.reset()

    def reset(self) -> None:
        self.round_trips = 0
        self.write_calls = 0
        self.read_units = 0.0
        self.write_units = 0.0
        self.estimated_read_units = 0.0
        self.estimated_write_units = 0.0
        self.items_written = 0
        self.bytes_written = 0

    def put(self, item: dict[str, Any]) -> None:
        """Conditional PutItem: no item with this key exists yet."""
        self.round_trips += 1
        self.write_calls += 1
        if not self.ledger_shaped:
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression=f"attribute_not_exists({schema.VERSION})",
            )
            return
        response = self.client.put_item(
            TableName=self.table_name,
            Item=item,
            ConditionExpression="attribute_not_exists(#key)",
            ExpressionAttributeNames={"#key": schema.VERSION},
            ReturnConsumedCapacity="TOTAL",
        )
        self._count_written([item_size(item)], transactional=False)
        self._count(response, write=True)

    def put_all(self, items: list[dict[str, Any]]) -> None:
        """One TransactWriteItems of conditional puts."""
        self.round_trips += 1
        self.write_calls += 1
        shaped = self.ledger_shaped
        condition = (
            {
                "ConditionExpression": "attribute_not_exists(#key)",
                "ExpressionAttributeNames": {"#key": schema.VERSION},
            }
            if shaped
            else {"ConditionExpression": f"attribute_not_exists({schema.VERSION})"}
        )
        actions = [
            {"Put": {"TableName": self.table_name, "Item": item, **condition}}
            for item in items
        ]
        if not shaped:
            self.client.transact_write_items(TransactItems=actions)
            return
        response = self.client.transact_write_items(
            TransactItems=actions, ReturnConsumedCapacity="TOTAL"
        )
        self._count_written([item_size(item) for item in items], transactional=True)
        self._count(response, write=True)

    def load(self, aggregate_id: str) -> list[dict[str, Any]]:
        """Strongly consistent Query of one aggregate's items, all pages."""
        params: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": f"{schema.AGGREGATE_ID} = :a",
            "ExpressionAttributeValues": {":a": {"S": aggregate_id}},
            "ConsistentRead": True,
        }
        if self.ledger_shaped:
            params["KeyConditionExpression"] = "#a = :a"
            params["ExpressionAttributeNames"] = {"#a": schema.AGGREGATE_ID}
        items: list[dict[str, Any]] = []
        while True:
            response = self.query(params)
            items.extend(response["Items"])
            if "LastEvaluatedKey" not in response:
                return items
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def query(self, params: dict[str, Any]) -> dict[str, Any]:
        """One Query request (one page), counted."""
        self.round_trips += 1
        if not self.ledger_shaped:
            plain: dict[str, Any] = self.client.query(**params)
            return plain
        response: dict[str, Any] = self.client.query(
            **params, ReturnConsumedCapacity="TOTAL"
        )
        self._count(response, write=False)
        return response

    def _count_written(self, sizes: list[int], *, transactional: bool) -> None:
        self.items_written += len(sizes)
        self.bytes_written += sum(sizes)
        self.estimated_write_units += sum(
            write_units(size, transactional=transactional) for size in sizes
        )

    def _count(self, response: dict[str, Any], *, write: bool) -> None:
        capacity = response.get("ConsumedCapacity")
        entries = capacity if isinstance(capacity, list) else [capacity or {}]
        units = sum(float(entry.get("CapacityUnits", 0) or 0) for entry in entries)
        if write:
            self.write_units += units
        else:
            self.read_units += units
            size = sum(item_size(item) for item in response.get("Items", []))
            self.estimated_read_units += read_units(size)


def sample_events(app: Orders) -> tuple[list[StoredEvent], StoredEvent]:
    """Return a 10-event Order's stored events, and one more ItemAdded."""
    order = Order.place(uuid.uuid4(), NINE_ITEMS, CURRENCY)
    order.add_item("extra", 1, PRICE)
    stored = [app.mapper.to_stored_event(e) for e in order.collect_events()]
    return stored[:10], stored[10]


# --- 1. saves/s from several processes -----------------------------------------


class EventCounter(logging.Handler):
    """Counts the recorder's retry records (lost races, cancelled transactions)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts = {SEQUENCE_RACE: 0, TRANSACTION_RETRY: 0}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in self.counts:
            self.counts[record.msg] += 1

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)


def savers(
    endpoint: str, prefixes: dict[str, str], placed: StoredEvent
) -> dict[str, Callable[[], object]]:
    """One 1-event save per contender: a new Order, or a raw item of its size.

    ``prefixes``: the table prefix of each ledger mode, and the raw table's name.
    """
    functions: dict[str, Callable[[], object]] = {}
    mapper = PydanticMapper(JSONTranscoder())
    for contender, prefix in prefixes.items():
        if contender == RAW_DOMAIN:
            control = RawTable(raw_client(endpoint), prefix)
            functions[contender] = lambda raw=control: raw.put(
                event_item_of(mapper, Order.place(uuid.uuid4(), [], CURRENCY))
            )
        elif contender in (RAW, RAW_SHAPED):
            raw = RawTable(
                raw_client(endpoint), prefix, ledger_shaped=contender == RAW_SHAPED
            )
            functions[contender] = lambda raw=raw: raw.put(
                event_item(str(uuid.uuid4()), 1, placed)
            )
        else:
            app = open_app(endpoint, prefix, contender, create=False)
            functions[contender] = lambda app=app: app.place_order(
                uuid.uuid4(), [], CURRENCY
            )
    return functions


def event_item_of(mapper: PydanticMapper, order: Order) -> dict[str, Any]:
    """The item of a new Order's one event, encoded by ledger's mapper."""
    event = mapper.to_stored_event(order.collect_events()[0])
    return event_item(str(event.originator_id), 1, event)


def worker(
    connection: Connection,
    endpoint: str,
    prefixes: dict[str, str],
    placed: StoredEvent,
) -> None:
    """Make saves on command, in a process of its own, and report them."""
    counter = EventCounter()
    ledger_logger = logging.getLogger("ledger.dynamodb")
    ledger_logger.setLevel(logging.INFO)
    ledger_logger.addHandler(counter)
    ledger_logger.propagate = False
    try:
        functions = savers(endpoint, prefixes, placed)
        for save in functions.values():
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
        save = functions[contender]
        counter.reset()
        latencies: list[float] = []
        errors = 0
        time.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds
        now = started
        while now < deadline:
            try:
                save()
            except Exception:  # noqa: BLE001 - counted; the run goes on
                errors += 1
            finished = time.perf_counter()
            latencies.append(finished - now)
            now = finished
        connection.send(
            (
                "done",
                {
                    "saves": len(latencies) - errors,
                    "errors": errors,
                    "elapsed": now - started,
                    "cpu": time.process_time() - cpu,
                    "latencies": latencies,
                    "lost_races": counter.counts[SEQUENCE_RACE],
                    "cancelled_retries": counter.counts[TRANSACTION_RETRY],
                },
            )
        )


@contextmanager
def workers(
    count: int, endpoint: str, prefixes: dict[str, str], placed: StoredEvent
) -> Iterator[list[Connection]]:
    """Start ``count`` worker processes, each with its own clients, warmed up."""
    context = multiprocessing.get_context("fork")
    pipes, processes = [], []
    for _ in range(count):
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=worker, args=(child_end, endpoint, prefixes, placed), daemon=True
        )
        process.start()
        pipes.append(parent_end)
        processes.append(process)
    try:
        for pipe in pipes:
            status, detail = pipe.recv()
            if status == "error":
                raise RuntimeError(f"a worker failed to start:\n{detail}")
        yield pipes
    finally:
        for pipe in pipes:
            with suppress(OSError):
                pipe.send(("stop", None, 0.0, 0.0))
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def round_order(modes: list[str], round_number: int) -> list[str]:
    """Return part 1's cells for one round, in turn: fair to every contender.

    The sequence ordering's cells, the most contended by far, run in a slot
    of their own at the start of the round, followed by an unmeasured
    settling cell (raw's saves), so no contender runs straight after them.
    The others then run in mirrored turns (A B C D D C B A): each runs
    twice a round, and every contender's mean place in the round is the
    same. The list turns by one each round, so each in turn opens and
    closes the round (next to the settling cell and the next round's
    contended cells).
    """
    fair = [RAW, *[m for m in modes if m not in CONTENDED], RAW_DOMAIN, RAW_SHAPED]
    turn = round_number % len(fair)
    fair = fair[turn:] + fair[:turn]
    contended = [m for m in modes if m in CONTENDED]
    settle = [SETTLE] if contended else []
    return [*contended, *settle, *fair, *fair[::-1]]


def merge_reports(first: list[Any], second: list[Any]) -> list[Any]:
    """Join two cells' worker reports (worker by worker) into one round's."""
    return [
        {name: one[name] + two[name] for name in one}
        for one, two in zip(first, second, strict=True)
    ]


def run_cell(pipes: list[Connection], contender: str, seconds: float) -> list[Any]:
    start_at = time.time() + 0.3
    for pipe in pipes:
        pipe.send(("run", contender, start_at, seconds))
    return [pipe.recv()[1] for pipe in pipes]


def run_throughput(
    endpoint: str,
    modes: list[str],
    seconds: float,
    rounds: int,
    started: float,
    *,
    process_counts: tuple[int, ...] = PROCESS_COUNTS,
) -> tuple[int, list[dict[str, Any]]]:
    run_id = uuid.uuid4().hex[:6]
    prefixes = {mode: f"{mode}{run_id}_" for mode in modes}
    prefixes[RAW] = prefixes[RAW_SHAPED] = prefixes[RAW_DOMAIN] = f"raw{run_id}_events"
    contenders = [*modes, RAW, RAW_SHAPED, RAW_DOMAIN]
    # Tables are made here, once, and every client of this process is closed
    # before the workers are forked: each worker makes its own.
    for mode in modes:
        open_app(endpoint, prefixes[mode], mode).close()
    create_raw_table(endpoint, prefixes[RAW])
    sample_app = open_app(endpoint, prefixes[modes[0]], modes[0], create=False)
    placed = sample_app.mapper.to_stored_event(
        Order.place(uuid.uuid4(), [], CURRENCY).collect_events()[0]
    )
    sample_app.close()
    cells: dict[tuple[int, str], list[Any]] = {}
    with workers(max(process_counts), endpoint, prefixes, placed) as pipes:
        # DynamoDB Local's JVM gets faster as it warms up: not measured.
        for contender in contenders:
            run_cell(pipes, contender, 1.0)
        stage("part 1: workers ready, server warmed up", started)
        for count in process_counts:
            for round_number in range(rounds):
                for contender in round_order(modes, round_number):
                    if contender == SETTLE:
                        run_cell(pipes[:count], RAW, SETTLE_SECONDS)
                        continue
                    reports = run_cell(pipes[:count], contender, seconds)
                    cell = cells.setdefault((count, contender), [])
                    if contender in CONTENDED or len(cell) <= round_number:
                        cell.append(reports)
                    else:  # a round's second cell: one round, both cells
                        cell[round_number] = merge_reports(cell[round_number], reports)
            stage(f"part 1: {count} process(es) done", started)
    rows = []
    for count in process_counts:
        raw_rate = raw_cpu = 0.0
        raw_rates: list[float] = []
        for contender in [RAW, RAW_SHAPED, RAW_DOMAIN, *modes]:
            runs = cells[(count, contender)]
            saves = sum(r["saves"] for reports in runs for r in reports)
            elapsed = sum(max(r["elapsed"] for r in reports) for reports in runs)
            latencies = [x for reports in runs for r in reports for x in r["latencies"]]
            rate = saves / elapsed
            # Each round's rate beside raw's in the same round: the spread
            # of the ratio as the machine's other load came and went.
            round_rates = [
                sum(r["saves"] for r in reports) / max(r["elapsed"] for r in reports)
                for reports in runs
            ]
            lost = sum(r["lost_races"] for reports in runs for r in reports)
            cpu = sum(r["cpu"] for reports in runs for r in reports)
            if contender == RAW:
                raw_rate, raw_cpu, raw_rates = rate, cpu / saves, round_rates
            round_ratios = sorted(
                mine / theirs
                for mine, theirs in zip(round_rates, raw_rates, strict=True)
            )
            rows.append(
                {
                    "processes": count,
                    "contender": contender,
                    "saves": saves,
                    "seconds": round(elapsed, 2),
                    "saves_per_s": round(rate, 1),
                    "vs_raw": round(rate / raw_rate, 2),
                    "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                    "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                    "cpu_ms_per_save": round(cpu / saves * 1000, 3),
                    "cpu_vs_raw": round(cpu / saves / raw_cpu, 3),
                    "vs_raw_low": round(round_ratios[0], 2),
                    "vs_raw_median": round(statistics.median(round_ratios), 2),
                    "vs_raw_high": round(round_ratios[-1], 2),
                    "lost_races": lost if contender == "sequence" else None,
                    "lost_races_per_save": (
                        round(lost / saves, 3) if contender == "sequence" else None
                    ),
                    "cancelled_retries": sum(
                        r["cancelled_retries"] for reports in runs for r in reports
                    ),
                    "errors": sum(r["errors"] for reports in runs for r in reports),
                }
            )
    return item_size(event_item(str(uuid.uuid4()), 1, placed)), rows


# --- 2. cost per save ------------------------------------------------------------


def run_costs(endpoint: str, modes: list[str], saves: int) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex[:6]
    apps = {mode: open_app(endpoint, f"cost{mode}{run_id}_", mode) for mode in modes}
    raw_name = f"costraw{run_id}_events"
    create_raw_table(endpoint, raw_name)
    # Untimed: the raw calls ask for consumed capacity, to be counted.
    raw = RawTable(raw_client(endpoint), raw_name, ledger_shaped=True)
    ten, _ = sample_events(apps[modes[0]])
    rows = []
    for size in (1, 10):
        items = NINE_ITEMS[: size - 1]
        for app in apps.values():  # warm up; not counted
            app.save(Order.place(uuid.uuid4(), items, CURRENCY))
        with ExitStack() as stack:
            meters = {m: stack.enter_context(measure(a)) for m, a in apps.items()}
            raw.reset()
            for index in range(saves):
                contenders = [*modes, RAW]
                shift = index % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    if contender == RAW:
                        aggregate_id = str(uuid.uuid4())
                        records = [
                            event_item(aggregate_id, v, e)
                            for v, e in enumerate(ten[:size], start=1)
                        ]
                        if size == 1:
                            raw.put(records[0])
                        else:
                            raw.put_all(records)
                    else:
                        order = Order.place(uuid.uuid4(), items, CURRENCY)
                        apps[contender].save(order)
        for contender in [*modes, RAW]:
            row: dict[str, Any] = {"events": size, "contender": contender}
            if contender == RAW:
                row |= {
                    "round_trips": raw.round_trips / saves,
                    "write_round_trips": raw.write_calls / saves,
                    "calls": "PutItem" if size == 1 else "TransactWriteItems",
                    "reported_wcu": raw.write_units / saves,
                    "estimated_wcu": raw.estimated_write_units / saves,
                    "items_written": raw.items_written / saves,
                    "bytes_written": raw.bytes_written / saves,
                }
            else:
                meter = meters[contender]
                row |= {
                    "round_trips": meter.round_trips / saves,
                    "write_round_trips": sum(meter.calls[op] for op in WRITE_OPERATIONS)
                    / saves,
                    "calls": ", ".join(sorted(meter.calls)),
                    "reported_wcu": meter.write_units / saves,
                    "estimated_wcu": meter.estimated_write_units / saves,
                    "items_written": meter.items_written / saves,
                    "bytes_written": meter.bytes_written / saves,
                }
            rows.append(row)
    for app in apps.values():
        app.close()
    return rows


# --- 3. one command ---------------------------------------------------------------


def run_commands(endpoint: str, modes: list[str], repeat: int) -> list[dict[str, Any]]:
    """Time one command per contender, taking turns; then count one untimed set."""
    run_id = uuid.uuid4().hex[:6]
    apps = {mode: open_app(endpoint, f"cmd{mode}{run_id}_", mode) for mode in modes}
    raw_name = f"cmdraw{run_id}_events"
    create_raw_table(endpoint, raw_name)
    client = raw_client(endpoint)
    raws = {
        RAW: RawTable(client, raw_name),
        RAW_SHAPED: RawTable(client, raw_name, ledger_shaped=True),
    }
    ten, added = sample_events(apps[modes[0]])
    warmup, counted = 10, 10
    contenders = [*modes, *raws]
    # A fresh 10-event Order per command, so every command loads 10 events.
    orders: dict[str, list[Any]] = {c: [] for c in contenders}
    for _ in range(warmup + repeat + counted):
        for mode, app in apps.items():
            order = Order.place(uuid.uuid4(), NINE_ITEMS, CURRENCY)
            app.save(order)
            orders[mode].append(order.id)
        for contender in raws:
            aggregate_id = str(uuid.uuid4())
            raws[RAW].put_all(
                [event_item(aggregate_id, v, e) for v, e in enumerate(ten, start=1)]
            )
            orders[contender].append(aggregate_id)

    def raw_command(raw: RawTable, aggregate_id: str) -> None:
        items = raw.load(aggregate_id)
        version = max(int(item[schema.VERSION]["N"]) for item in items)
        raw.put(event_item(aggregate_id, version + 1, added))

    def command(contender: str, index: int) -> tuple[float, float]:
        """Run one command; return its wall and client CPU milliseconds."""
        cpu, begun = time.process_time(), time.perf_counter()
        if contender in raws:
            raw_command(raws[contender], orders[contender][index])
        else:
            apps[contender].add_item(orders[contender][index], "extra", 1, PRICE)
        wall = time.perf_counter() - begun
        return wall * 1000, (time.process_time() - cpu) * 1000

    for index in range(warmup):
        for contender in contenders:
            command(contender, index)
    walls: dict[str, list[float]] = {c: [] for c in contenders}
    cpus: dict[str, list[float]] = {c: [] for c in contenders}
    # Timed as each runs by default: no meter open, so ledger does not ask
    # for consumed capacity (measure() would); the raw contenders as labelled.
    for index in range(warmup, warmup + repeat):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            wall, cpu = command(contender, index)
            walls[contender].append(wall)
            cpus[contender].append(cpu)
    # Counted, untimed: ledger under measure(), raw ledger-shaped.
    for raw in raws.values():
        raw.ledger_shaped = True
        raw.reset()
    with ExitStack() as stack:
        meters = {m: stack.enter_context(measure(a)) for m, a in apps.items()}
        for index in range(warmup + repeat, warmup + repeat + counted):
            for contender in contenders:
                command(contender, index)
    raws[RAW].ledger_shaped = False
    for app in apps.values():
        app.close()
    return command_rows(
        contenders, walls=walls, cpus=cpus, meters=meters, raws=raws, counted=counted
    )


def command_rows(
    contenders: list[str],
    *,
    walls: dict[str, list[float]],
    cpus: dict[str, list[float]],
    meters: dict[str, Any],
    raws: dict[str, RawTable],
    counted: int,
) -> list[dict[str, Any]]:
    """One row per contender of part 3: medians, CPU, and counted costs."""
    raw_ms = statistics.median(walls[RAW])
    raw_cpu = statistics.mean(cpus[RAW])
    rows = []
    for contender in contenders:
        median = statistics.median(walls[contender])
        cpu = statistics.mean(cpus[contender])
        if contender in raws:
            raw = raws[contender]
            trips, rcu, wcu = raw.round_trips, raw.read_units, raw.estimated_write_units
        else:
            meter = meters[contender]
            trips = meter.round_trips
            rcu, wcu = meter.read_units, meter.estimated_write_units
        rows.append(
            {
                "contender": contender,
                "median_ms": round(median, 2),
                "vs_raw": round(median / raw_ms, 2),
                "cpu_ms": round(cpu, 3),
                "cpu_vs_raw": round(cpu / raw_cpu, 2),
                "round_trips": trips / counted,
                "rcu": rcu / counted,
                "estimated_wcu": wcu / counted,
            }
        )
    return rows


# --- 4. reading the application sequence -----------------------------------------


def ledger_read(app: Orders) -> int:
    count, position = 0, 0
    while True:
        batch = app.recorder.select_notifications(start=position + 1, limit=READ_LIMIT)
        if not batch:
            return count
        count += len(batch)
        position = batch[-1].id


def raw_read(raw: RawTable, last_position: int, page_size: int) -> int:
    """Query every notification batch item (Limit as ledger's), decode each.

    ``page_size``: the table's positions per page (``recorder.page_size``).
    """
    notifications = []
    for page in range(schema.page_of(last_position, page_size) + 1):
        params: dict[str, Any] = {
            "TableName": raw.table_name,
            "KeyConditionExpression": f"{schema.PAGE} = :p",
            "ExpressionAttributeValues": {":p": {"N": str(page)}},
            "ConsistentRead": True,
            "Limit": READ_LIMIT,
        }
        while True:
            response = raw.query(params)
            for batch in response["Items"]:
                position = int(batch[schema.FIRST_POSITION]["N"])
                for entry in decode_batch(batch[schema.EVENTS]["B"], position):
                    notifications.append((position, *entry))
                    position += 1
            if "LastEvaluatedKey" not in response:
                break
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return len(notifications)


def seed_history(app: Orders, events: int, per_save: int) -> float:
    """Store ``events`` Order events (5 per order) in saves of ``per_save``."""
    stored: list[StoredEvent] = []
    while len(stored) < events:
        order = Order.place(uuid.uuid4(), NINE_ITEMS[:3], CURRENCY)
        order.confirm()
        stored.extend(app.mapper.to_stored_event(e) for e in order.collect_events())
    del stored[events:]
    begun = time.perf_counter()
    for start in range(0, events, per_save):
        app.recorder.insert_events(stored[start : start + per_save])
    return events / (time.perf_counter() - begun)


def run_reads(
    endpoint: str, events: int, rounds: int, started: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    run_id = uuid.uuid4().hex[:6]
    client = raw_client(endpoint)
    rows, small_reads = [], []
    for per_save in (1, 98):
        app = open_app(endpoint, f"read{per_save}x{run_id}_", "sequence")
        seeded = seed_history(app, events, per_save)
        stage(f"part 4: seeded {events:,} events in {per_save}-event saves", started)
        raw = RawTable(client, app.recorder.notifications_table_name)
        ledger_rates: list[float] = []
        raw_rates: list[float] = []
        # Timed as each runs by default: ledger without a meter open (so
        # without ReturnConsumedCapacity), raw plain. Counted afterwards,
        # untimed: ledger under measure(), raw ledger-shaped.
        for round_number in range(rounds):
            order = ("ledger", RAW) if round_number % 2 == 0 else (RAW, "ledger")
            for contender in order:
                begun = time.perf_counter()
                count = (
                    raw_read(raw, events, app.recorder.page_size)
                    if contender == RAW
                    else ledger_read(app)
                )
                rate = count / (time.perf_counter() - begun)
                (raw_rates if contender == RAW else ledger_rates).append(rate)
                if count != events:
                    raise RuntimeError(f"{contender} read {count} of {events} events")
        with measure(app) as meter:
            ledger_read(app)
        counted = RawTable(client, raw.table_name, ledger_shaped=True)
        raw_read(counted, events, app.recorder.page_size)
        raw_counts = (counted.round_trips, counted.read_units)
        raw_estimate = counted.estimated_read_units
        ledger_rate = statistics.median(ledger_rates)
        raw_rate = statistics.median(raw_rates)
        rows.append(
            {
                "events_per_save": per_save,
                "events": events,
                "seeded_events_per_s": round(seeded),
                "ledger_events_per_s": round(ledger_rate),
                "raw_events_per_s": round(raw_rate),
                "ratio": round(ledger_rate / raw_rate, 2),
                "ledger_round_trips": meter.round_trips,
                "raw_round_trips": raw_counts[0],
                "ledger_rcu": meter.read_units,
                "ledger_estimated_rcu": meter.estimated_read_units,
                "raw_rcu": raw_counts[1],
                "raw_estimated_rcu": raw_estimate,
            }
        )
        with measure(app) as small:
            got = app.recorder.select_notifications(start=1, limit=10)
        small_reads.append(
            {
                "events_per_save": per_save,
                "notifications": len(got),
                "round_trips": small.round_trips,
                "rcu": small.read_units,
                "estimated_rcu": small.estimated_read_units,
                "kib_read": round(small.bytes_read / 1024, 1),
            }
        )
        app.close()
        stage(f"part 4: read {per_save}-event-save history", started)
    return rows, small_reads


# --- 5. decoding a long load --------------------------------------------------


def seed_long_order(app: Orders, events: int) -> UUID:
    """Store one Order of ``events`` events (items over ten products), 100 a save."""
    order = Order.place(uuid.uuid4(), [], CURRENCY)
    for n in range(events - 1):
        order.add_item(f"p{n % 10}", 1, PRICE)
    stored = [app.mapper.to_stored_event(e) for e in order.collect_events()]
    for start in range(0, events, 100):
        app.recorder.insert_events(stored[start : start + 100])
    return order.id


def raw_decode(client: Any, table_name: str, aggregate_id: str) -> int:
    """Query an aggregate's items and validate each state straight from its bytes.

    The stored state lacks the originator id and version (the item's key
    holds them): they are spliced into the JSON object's end. (This Order's
    one event whose class is past version 1, the first, is validated from a
    dict without its stored ``class_version``.)
    """
    classes: dict[str, Any] = {}
    params: dict[str, Any] = {
        "TableName": table_name,
        "KeyConditionExpression": f"{schema.AGGREGATE_ID} = :a",
        "ExpressionAttributeValues": {":a": {"S": aggregate_id}},
        "ConsistentRead": True,
    }
    suffix = f',"originator_id":"{aggregate_id}","originator_version":'.encode()
    decoded = []
    while True:
        response = client.query(**params)
        for item in response["Items"]:
            topic = item[schema.TOPIC]["S"]
            event_class = classes.get(topic)
            if event_class is None:
                event_class = classes[topic] = resolve_topic(topic)
            state = item[schema.STATE]["B"]
            version = item[schema.VERSION]["N"]
            if event_class.class_version > 1:  # stored with its class_version key
                fields = pydantic_core.from_json(state)
                del fields[CLASS_VERSION]
                fields |= {"originator_id": aggregate_id, "originator_version": version}
                decoded.append(event_class.model_validate(fields))
                continue
            data = state[:-1] + suffix + version.encode() + b"}"
            decoded.append(event_class.model_validate_json(data))
        if "LastEvaluatedKey" not in response:
            return len(decoded)
        params["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def run_decode(
    endpoint: str, events: int, rounds: int, started: float
) -> list[dict[str, Any]]:
    """Events decoded per second in a load without snapshots, beside a raw loop."""
    app = open_app(endpoint, f"decode{uuid.uuid4().hex[:6]}_", "stream")
    order_id = seed_long_order(app, events)
    stage(f"part 5: seeded a {events:,}-event Order", started)
    client = raw_client(endpoint)
    table: str = getattr(app.recorder, "events_table_name")  # noqa: B009 - not on the base type
    contenders: dict[str, Callable[[], int]] = {
        "ledger: event store get (query, decode)": lambda: len(
            list(app.events.get(order_id))
        ),
        "ledger: repository get (query, decode, project)": lambda: (
            app.repository.get(order_id).version
        ),
        RAW: lambda: raw_decode(client, table, str(order_id)),
    }
    for run in contenders.values():  # warm up
        run()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    waits: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            cpu, begun = time.process_time(), time.perf_counter()
            count = contenders[name]()
            elapsed = time.perf_counter() - begun
            cpus[name].append(time.process_time() - cpu)
            # Wall time this process did not run: DynamoDB Local answering
            # the Query's pages, and the other processes on the cores.
            waits[name].append(elapsed - cpus[name][-1])
            if count != events:
                raise RuntimeError(f"{name} decoded {count} of {events} events")
            rates[name].append(count / elapsed)
    app.close()
    raw_rate = statistics.median(rates[RAW])
    raw_cpu = statistics.median(cpus[RAW])
    return [
        {
            "contender": name,
            "events": events,
            "events_per_s": round(statistics.median(rates[name])),
            "vs_raw": round(statistics.median(rates[name]) / raw_rate, 2),
            "vs_raw_low": round(min(rates[name]) / max(rates[RAW]), 2),
            "vs_raw_high": round(max(rates[name]) / min(rates[RAW]), 2),
            "cpu_us_per_event": round(statistics.median(cpus[name]) / events * 1e6, 2),
            # As vs_raw, by client CPU: raw's CPU per event over this one's.
            "cpu_vs_raw": round(raw_cpu / statistics.median(cpus[name]), 2),
            "wait_ms": round(statistics.median(waits[name]) * 1000, 1),
        }
        for name in names
    ]


# --- targets, tables, plot ----------------------------------------------------------


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []

    def add(target: str, measured: str, passed: bool | None) -> None:
        verdict = "n/a" if passed is None else ("pass" if passed else "FAIL")
        targets.append({"target": target, "measured": measured, "result": verdict})

    cost = find(results["cost"], contender="stream", events=1)
    if cost is None:
        add("stream: 1 WCU, 1 write round trip per 1-event save", "not run", None)
    else:
        add(
            "stream: 1 WCU, 1 write round trip per 1-event save",
            f"{cost['estimated_wcu']:g} est. WCU ({cost['reported_wcu']:g} "
            f"reported), {cost['write_round_trips']:g} write round trip(s)",
            cost["estimated_wcu"] <= 1
            and cost["reported_wcu"] <= 1
            and cost["write_round_trips"] == 1,
        )
    eight = find(results["throughput"], contender="stream", processes=8)
    if eight is None:
        add("stream saves/s at 8 processes >= 0.9x raw PutItem", "not run", None)
    else:
        add(
            "stream saves/s at 8 processes >= 0.9x raw PutItem",
            f"{eight['vs_raw']:.2f}x over the run ({eight['saves_per_s']:,.0f} "
            f"saves/s; rounds {eight['vs_raw_low']:.2f} to "
            f"{eight['vs_raw_high']:.2f}x, median {eight['vs_raw_median']:.2f}x; "
            "client CPU "
            f"per save {eight['cpu_vs_raw']:.2f}x raw's)",
            eight["vs_raw"] >= 0.9,
        )
    command = find(results["command"], contender="stream")
    if command is None:
        add("stream command <= 1.15x raw Query + PutItem", "not run", None)
    else:
        add(
            "stream command, wall, <= 1.15x raw Query + PutItem",
            f"{command['vs_raw']:.2f}x ({command['median_ms']:.2f} ms)",
            command["vs_raw"] <= 1.15,
        )
        add(
            "stream command, client CPU, <= 1.15x raw Query + PutItem",
            f"{command['cpu_vs_raw']:.2f}x ({command['cpu_ms']:.2f} ms)",
            command["cpu_vs_raw"] <= 1.15,
        )
    decode = results.get("decode") and results["decode"][0]
    if decode:
        add(
            f"decode of a {decode['events']:,}-event load >= 0.8x the raw loop",
            f"{decode['vs_raw']:.2f}x by wall ({decode['events_per_s']:,} events/s); "
            f"{decode['cpu_vs_raw']:.2f}x by client CPU",
            decode["vs_raw"] >= 0.8,
        )
    reads = find(results["reads"], events_per_save=98)
    if reads is not None:
        add(
            "sequence reads >= 0.5x raw Query, 98-event saves",
            f"{reads['ratio']:.2f}x ({reads['ledger_events_per_s']:,} events/s)",
            reads["ratio"] >= 0.5,
        )
    one = find(results["throughput"], contender="sequence", processes=1)
    if one is not None:
        add(
            "sequence at 1 writer not slower than before",
            f"{one['saves_per_s']:,.0f} saves/s, {one['vs_raw']:.2f}x raw "
            "(no earlier version in this run)",
            None,
        )
    return targets


def number(value: Any) -> str:
    """Format a table cell: thousands separated, three significant digits."""
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer() and abs(value) < 100:
        return f"{value:.3g}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def print_table(
    title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]
) -> None:
    """Print rows as a Markdown table: (header, key) per column (none: no table)."""
    if not rows:
        return
    cells = [[number(row.get(key)) for _, key in columns] for row in rows]
    widths = [
        max(len(header), *(len(line[i]) for line in cells))
        for i, (header, _) in enumerate(columns)
    ]
    numeric = [
        all(isinstance(row.get(key), int | float | None) for row in rows)
        for _, key in columns
    ]
    print(f"\n{title}\n")
    print(
        "| "
        + " | ".join(h.ljust(w) for (h, _), w in zip(columns, widths, strict=True))
        + " |"
    )
    print(
        "| "
        + " | ".join(
            "-" * (w - 1) + (":" if n else "-")
            for w, n in zip(widths, numeric, strict=True)
        )
        + " |"
    )
    for line in cells:
        print(
            "| "
            + " | ".join(
                c.rjust(w) if n else c.ljust(w)
                for c, w, n in zip(line, widths, numeric, strict=True)
            )
            + " |"
        )


def print_results(results: dict[str, Any]) -> None:
    print_table(
        f"1. Saves/s, new 1-event Orders ({results['event_item_bytes']} B items), "
        f"{results['seconds']:g} s cells, {results['rounds']} rounds (a cell of "
        "sequence, two of each other contender, a round); vs raw: over the run "
        "(the figure), rounds: each round's ratio",
        [
            ("processes", "processes"),
            ("contender", "contender"),
            ("saves/s", "saves_per_s"),
            ("vs raw", "vs_raw"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("CPU ms/save", "cpu_ms_per_save"),
            ("CPU vs raw", "cpu_vs_raw"),
            ("rounds vs raw: low", "vs_raw_low"),
            ("median", "vs_raw_median"),
            ("high", "vs_raw_high"),
            ("lost races", "lost_races"),
            ("lost races/save", "lost_races_per_save"),
            ("errors", "errors"),
        ],
        results["throughput"],
    )
    print_table(
        "2. Cost per save",
        [
            ("events", "events"),
            ("contender", "contender"),
            ("round trips", "round_trips"),
            ("write round trips", "write_round_trips"),
            ("calls", "calls"),
            ("est. WCU", "estimated_wcu"),
            ("reported WCU", "reported_wcu"),
            ("items", "items_written"),
            ("bytes", "bytes_written"),
        ],
        results["cost"],
    )
    print_table(
        "3. One command: load a 10-event Order, add one item, save",
        [
            ("contender", "contender"),
            ("median ms", "median_ms"),
            ("vs raw", "vs_raw"),
            ("CPU ms", "cpu_ms"),
            ("CPU vs raw", "cpu_vs_raw"),
            ("round trips", "round_trips"),
            ("RCU", "rcu"),
            ("est. WCU", "estimated_wcu"),
        ],
        results["command"],
    )
    print_table(
        f"4. Reading the application sequence (sequence mode), "
        f"limit={READ_LIMIT} per call",
        [
            ("events/save", "events_per_save"),
            ("events", "events"),
            ("ledger events/s", "ledger_events_per_s"),
            ("raw events/s", "raw_events_per_s"),
            ("ratio", "ratio"),
            ("ledger trips", "ledger_round_trips"),
            ("raw trips", "raw_round_trips"),
            ("ledger RCU", "ledger_rcu"),
            ("ledger est. RCU", "ledger_estimated_rcu"),
            ("raw RCU", "raw_rcu"),
        ],
        results["reads"],
    )
    print_table(
        "4b. select_notifications(start=1, limit=10)",
        [
            ("events/save", "events_per_save"),
            ("notifications", "notifications"),
            ("round trips", "round_trips"),
            ("RCU", "rcu"),
            ("est. RCU", "estimated_rcu"),
            ("KiB read", "kib_read"),
        ],
        results["small_reads"],
    )
    print_table(
        "5. Decoding a load without snapshots (one Order)",
        [
            ("contender", "contender"),
            ("events", "events"),
            ("events/s", "events_per_s"),
            ("vs raw", "vs_raw"),
            ("CPU us/event", "cpu_us_per_event"),
            ("vs raw, by CPU", "cpu_vs_raw"),
            ("waiting ms", "wait_ms"),
        ],
        results["decode"],
    )
    print_table(
        "Targets",
        [("target", "target"), ("measured", "measured"), ("result", "result")],
        results["targets"],
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - only when plotting

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (rates, tails) = plt.subplots(1, 2, figsize=(12, 4.8))
    contenders = list(dict.fromkeys(r["contender"] for r in results["throughput"]))
    labels = {
        "sequence": "ledger, DYNAMODB_ORDERING=sequence",
        "stream": "ledger, DYNAMODB_ORDERING=stream",
        RAW: "raw boto3 conditional PutItem",
        RAW_SHAPED: "raw boto3, ledger-shaped (capacity asked, names, sizing)",
        RAW_DOMAIN: "raw boto3 after the domain work (Order.place, the mapper)",
    }
    for contender in contenders:
        rows = [r for r in results["throughput"] if r["contender"] == contender]
        processes = [r["processes"] for r in rows]
        label = labels.get(contender, contender)
        rates.plot(processes, [r["saves_per_s"] for r in rows], marker="o", label=label)
        tails.plot(processes, [r["p99_ms"] for r in rows], marker="o", label=label)
    rates.set(
        xscale="log",
        xlabel="writer processes",
        ylabel="saves/s (all processes)",
        title="Throughput",
        ylim=(0, None),
    )
    tails.set(
        xscale="log",
        xlabel="writer processes",
        ylabel="p99 ms per save",
        yscale="log",
        title="p99 latency",
    )
    for axes in (rates, tails):
        axes.set_xticks(PROCESS_COUNTS, [str(n) for n in PROCESS_COUNTS])
        axes.minorticks_off()
        axes.grid(visible=True, alpha=0.3)
    handles, names = rates.get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=len(names))
    figure.suptitle(
        "1-event saves from several processes, DynamoDB Local on a shared 2-core "
        "machine"
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


@contextmanager
def server(endpoint: str | None) -> Iterator[str]:
    """Yield the given endpoint, or a fresh DynamoDB Local's."""
    if endpoint:
        yield endpoint
        return
    with DynamoDBLocal() as local:
        yield local.endpoint_url


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 s cells, 1,000 events: a smoke run"
    )
    parser.add_argument("--seconds", type=float, help="seconds per cell and round (5)")
    parser.add_argument(
        "--rounds", type=int, help="part 1: rounds, in mirrored turns (2)"
    )
    parser.add_argument(
        "--modes",
        default="sequence,stream",
        help="ledger's ordering modes to run (default: sequence,stream); "
        "stream alone leaves out the sequence mode's contended cells, which "
        "run first in each round of part 1, then an unmeasured settling cell",
    )
    parser.add_argument(
        "--processes",
        default=",".join(str(n) for n in PROCESS_COUNTS),
        help="part 1: writer process counts (default: 1,2,4,8)",
    )
    parser.add_argument("--repeat", type=int, help="commands per contender (200)")
    parser.add_argument("--events", type=int, help="events per history (20,000)")
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    parser.add_argument(
        "--parts", default="1,2,3,4,5", help="which parts to run (default: 1,2,3,4,5)"
    )
    parser.add_argument(
        "--decode-events", type=int, default=10_000, help="events in part 5 (10,000)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    parts = {int(part) for part in args.parts.split(",")}
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    repeat = args.repeat or (30 if args.quick else 200)
    events = args.events or (1_000 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 2)
    process_counts = tuple(int(n) for n in args.processes.split(","))
    read_rounds = 3 if args.quick else 5
    wanted = args.modes.split(",")
    modes = ["sequence"] if "sequence" in wanted else []
    if "stream" in wanted and stream_mode_available():
        modes.append("stream")
    elif "stream" in wanted:
        print(
            "DYNAMODB_ORDERING is not in this ledger: the stream mode is skipped",
            file=sys.stderr,
        )
    started = time.perf_counter()
    results: dict[str, Any] = {
        "seconds": seconds,
        "rounds": rounds,
        "repeat": repeat,
        "read_limit": READ_LIMIT,
        "modes": modes,
    }
    results["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    results |= {"throughput": [], "cost": [], "command": [], "reads": []}
    results |= {"small_reads": [], "decode": [], "event_item_bytes": 0}
    if 1 in parts:
        with server(args.endpoint) as endpoint:
            results["event_item_bytes"], results["throughput"] = run_throughput(
                endpoint, modes, seconds, rounds, started, process_counts=process_counts
            )
        stage("part 1: saves/s measured", started)
    # Parts 2 to 5 share a server: their tables are small or read-only, and
    # none has a stream.
    with server(args.endpoint) as endpoint:
        if 2 in parts:
            results["cost"] = run_costs(endpoint, modes, saves=10)
            stage("part 2: costs measured", started)
        if 3 in parts:
            results["command"] = run_commands(endpoint, modes, repeat)
            stage("part 3: commands measured", started)
        if 4 in parts:
            results["reads"], results["small_reads"] = run_reads(
                endpoint, events, read_rounds, started
            )
        if 5 in parts:
            results["decode"] = run_decode(
                endpoint, args.decode_events, read_rounds, started
            )
            stage("part 5: decoding measured", started)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = check_targets(results)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_results(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaleout.json").write_text(json.dumps(results, indent=2) + "\n")
    if results["throughput"]:
        plot(results, RESULTS / "scaleout.png")
    print(
        f"\nload average (1, 5, 15 min) before {results['load_average_before']}, "
        f"after {results['load_average_after']}"
    )
    print(f"{results['wall_seconds']:.0f} s; wrote results/scaleout.json and .png")


if __name__ == "__main__":
    main()
