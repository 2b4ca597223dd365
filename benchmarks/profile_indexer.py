"""Profile one indexer catching up a backlog: CPU per event, stage by stage.

Writes a backlog to an ``indexed`` Orders application's events table (with
no indexer running): ``--singles`` 1-event saves (plain ``BatchWriteItem``
of items as a 1-event save stores them) and ``--multis`` saves of 5 events
(``Orders.save``). Then, ``--runs`` times, a fresh notifications table is
indexed from the same stream by a new :class:`Indexer` (``catch_up``), and
this process's CPU (``time.process_time_ns``) is charged to stages:

* ``get_records``: boto3's ``GetRecords`` calls (request, signing, HTTP,
  the parse of the answer into Python values: ledger's parser's, see
  ``ledger.dynamodb.parsing``);
* ``decode``: ledger's reading of each record (``_record``) and the rest
  of reading a shard (``_read_shard`` less its calls);
* ``units``: regrouping saves and ordering units (``_units``, with
  ``_in_aggregate_order``) and fitting them to one transaction, less the
  batch encoding done to measure them;
* ``versions``: version order and checks (``_in_version_order``,
  ``_check_versions``, ``_not_indexed``);
* ``encode``: batch items (format 3, compressed), wherever encoded;
* ``transact``: the ``TransactWriteItems`` call (serialising, HTTP, parse);
* ``round_calls``: each round's DescribeStream, GetShardIterator and the
  GetItems of the head and the checkpoints (and a first round's checks);
* ``receive``: with reader processes (``--readers``), taking their answers:
  the pipe, unpickling the records' tuples and remaking the records
  (``Indexer._read_wave`` less the stages inside it);
* ``other``: the rest (the rounds' bookkeeping, metrics, these timers'
  own calls).

Figures are µs of this process's CPU per event indexed; DynamoDB Local's
own CPU is not counted; the timers' own ``process_time_ns`` calls cost
a few per call timed, not per event. Before the
runs, one GetRecords answer of 1,000 records is read again in process
(best of 5): ``json.loads`` of its body alone, botocore's parse of it with
its default timestamps and with the indexer's (UTC), ledger's parse of it
(``ledger.dynamodb.parsing``, UTC), and ledger's decoding of the parsed
records, in µs per record.

With ``--readers N`` (several values: the runs take turns, ``--readers 0
2`` alternates in-process reading with 2 reader processes) the shards are
read by N reader processes (``Indexer(readers=N)``): the figures above are
then the committer's own (its process only: ``time.process_time`` counts
no child's CPU), and each run adds the readers' CPU per event (each reader
process's ``time.process_time``, as it reports it with each answer) and
two ceilings, for a stream of N shards or more, each reader reading 1 / N
of the events: ``ceiling`` min(1e6 / committer µs, N * 1e6 / reader µs)
events/s, were the readers' reading overlapped with the committer's work;
and ``rounds_ceiling`` 1e6 / (committer µs + reader µs / N), as rounds
are built (the committer waits for the readers' answers, and the readers
for the next round's request). DynamoDB Local's stream has one shard, so
one reader reads here, and catching up is not faster in wall-clock time.

With ``--profile`` the last run is also profiled with cProfile (wall clock:
top functions by own time, then ledger's by cumulative time), saved to
``results/indexer_cpu.prof``: the committer only (each reader, forked with
the profiler on, turns it off as it starts, so its CPU figures are not the
profiler's)::

    python benchmarks/profile_indexer.py [--singles 20000] [--multis 400] [--runs 3]
        [--gc-freeze] [--readers 0 2]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import sys
import time
import timeit
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench_indexed import load_average, open_app, placed_event, raw_item
from botocore.parsers import ResponseParserFactory, create_parser

from aggregates.application import Orders
from aggregates.order import Order
from ledger import index_rounds, indexer
from ledger.dynamodb.indexed_recorders import DynamoDBIndexedApplicationRecorder
from ledger.dynamodb.local import DynamoDBLocal
from ledger.dynamodb.parsing import AnswerParserFactory
from ledger.indexer import Indexer, freeze_start_up

RESULTS = Path(__file__).parent / "results"
STAGES = (
    "get_records",
    "gc",
    "decode",
    "units",
    "versions",
    "encode",
    "transact",
    "round_calls",
    "receive",
    "other",
)


class Stages:
    """CPU nanoseconds charged to each stage; nested stages are not double-counted.

    The garbage collector's passes are charged to ``gc``, not to the stage
    whose allocation started them (mostly ``get_records``: its parse).
    """

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self._stack: list[tuple[str, int, int]] = []  # stage, start, inner time
        self._collecting = 0

    def collections(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` entry: charge each pass to ``gc``."""
        now = time.process_time_ns()
        if phase == "start":
            self._collecting = now
            return
        spent = now - self._collecting
        self.ns["gc"] += spent
        if self._stack:
            outer, outer_start, outer_inner = self._stack[-1]
            self._stack[-1] = (outer, outer_start, outer_inner + spent)

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """Return ``function``, its own CPU (less inner stages') charged to a stage."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._stack.append((stage, time.process_time_ns(), 0))
            try:
                return function(*args, **kwargs)
            finally:
                name, start, inner = self._stack.pop()
                spent = time.process_time_ns() - start
                self.ns[name] += spent - inner
                if self._stack:
                    outer, outer_start, outer_inner = self._stack[-1]
                    self._stack[-1] = (outer, outer_start, outer_inner + spent)

        return wrapper


@contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    """Replace ``target.name`` with ``value`` for the block (this script's timers)."""
    saved = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, saved)


def write_backlog(app: Orders, singles: int, multis: int) -> int:
    """Write the backlog; return the events written."""
    client = app.recorder.connection.client  # type: ignore[attr-defined]
    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    event = placed_event(app)

    def put(count: int) -> None:
        for start in range(0, count, 25):
            items = [
                {"PutRequest": {"Item": raw_item(str(uuid.uuid4()), event)}}
                for _ in range(min(25, count - start))
            ]
            while items:
                answer = client.batch_write_item(RequestItems={table: items})
                items = answer.get("UnprocessedItems", {}).get(table, [])

    def save_orders(count: int) -> None:
        for _ in range(count):
            order = Order.place(uuid.uuid4(), [], "EUR")
            for number in range(3):
                order.add_item(f"p{number}", 1, Decimal("2.50"))
            order.confirm()
            app.save(order)

    with ThreadPoolExecutor(4) as pool:
        parts = [pool.submit(put, singles // 4) for _ in range(4)]
        parts += [pool.submit(save_orders, multis // 4) for _ in range(4)]
        for part in parts:
            part.result()
    return (singles // 4) * 4 + (multis // 4) * 4 * 5


def catch_up(
    app: Orders,
    run: int,
    profiler: cProfile.Profile | None,
    *,
    freeze: bool = False,
    readers: int = 0,
) -> dict[str, Any]:
    """Index the whole stream into a fresh notifications table; return the stages."""
    recorder = app.recorder
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    fresh = DynamoDBIndexedApplicationRecorder(
        recorder.connection,
        recorder.events_table_name,
        f"{recorder.notifications_table_name}-run{run}",
    )
    fresh.batch_format = recorder.batch_format
    fresh.create_table()
    index = Indexer(fresh, readers=readers)
    if profiler is not None:
        unprofiled = index.reader_client

        def reader_client() -> Any:
            # Run in each reader, just forked with the profiler on: left on,
            # its hook would inflate the reader's CPU figures.
            profiler.disable()
            return unprofiled()

        index.reader_client = reader_client
    stages = Stages()
    client = index.client
    connection = fresh.connection
    # What checks that a round fits one commit (before and after it kept
    # the items it encodes).
    fitting = (
        "_commit_items" if hasattr(indexer, "_commit_items") else "_fits_one_commit"
    )
    with (
        patched(client, "get_records", stages.timed("get_records", client.get_records)),
        patched(connection, "call", _transact_timed(stages, connection.call)),
        # Timed per shard read, not per record: a timer around each record
        # cost about 1 µs of the figures it gave.
        patched(index, "_read_shard", stages.timed("decode", index._read_shard)),
        patched(index, "_read_wave", stages.timed("receive", index._read_wave)),
        patched(indexer, "_units", stages.timed("units", indexer._units)),
        patched(indexer, fitting, stages.timed("units", getattr(indexer, fitting))),
        patched(
            indexer,
            "_in_version_order",
            stages.timed("versions", indexer._in_version_order),
        ),
        patched(
            index,
            "_check_versions",
            stages.timed("versions", index._check_versions),
        ),
        patched(index, "_not_indexed", stages.timed("versions", index._not_indexed)),
        patched(index, "_shards", stages.timed("round_calls", index._shards)),
        patched(index, "_read_state", stages.timed("round_calls", index._read_state)),
        patched(index, "_iterator", stages.timed("round_calls", index._iterator)),
        patched(
            index,
            "_stream_holds_since",
            stages.timed("round_calls", index._stream_holds_since),
        ),
        patched(
            index_rounds,
            "batch_item",
            stages.timed("encode", index_rounds.batch_item),
        ),
    ):
        if freeze:
            freeze_start_up()  # as ledger index run does, the indexer made
        gc.callbacks.append(stages.collections)
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        cpu = time.process_time_ns()
        try:
            index.catch_up(timeout=3600)
        finally:
            cpu = time.process_time_ns() - cpu
            wall = time.perf_counter() - started
            if profiler is not None:
                profiler.disable()
            gc.callbacks.remove(stages.collections)
            pool = index._pool
            reader_cpu = [] if pool is None else pool.cpu
            index.close()
            if freeze:
                gc.unfreeze()  # the next run starts as this one did
                getattr(freeze_start_up, "cache_clear", lambda: None)()
    events = fresh.max_notification_id() or 0
    stages.ns["other"] = cpu - sum(stages.ns.values())
    committer_us = cpu / events / 1000
    used = [seconds for seconds in reader_cpu if seconds]
    reader_us = [round(seconds / events * 1e6, 2) for seconds in used]
    per_reader = sum(seconds for seconds in used) / events * 1e6 if used else None
    return {
        "readers": readers,
        "reader_cpu_us_per_event": reader_us,
        # Each of N readers reading 1 / N of the events (N shards or more).
        "ceiling_events_per_s": round(
            min(
                1e6 / committer_us,
                readers * 1e6 / per_reader if per_reader else float("inf"),
            )
        )
        if readers
        else round(1e6 / committer_us),
        "rounds_ceiling_events_per_s": round(
            1e6 / (committer_us + (per_reader or 0.0) / max(1, readers))
        ),
        "events": events,
        "seconds": round(wall, 2),
        "events_per_s": round(events / wall, 1),
        "cpu_us_per_event": round(cpu / events / 1000, 2),
        "stages_us_per_event": {
            stage: round(stages.ns[stage] / events / 1000, 2) for stage in STAGES
        },
    }


def parse_costs(app: Orders) -> dict[str, float]:
    """Return µs of CPU per record to read one GetRecords answer, step by step.

    The answer's HTTP body is kept (botocore's ``before-parse`` event), then
    read again in process, best of 5: ``json.loads`` alone, botocore's parse
    with its default timestamps (local time zone) and with those the indexer
    asks for (UTC), ledger's parse (what its clients read answers with),
    and ledger's decoding of the parsed records.
    """
    recorder = app.recorder
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    index = Indexer(recorder)
    client = recorder.connection.streams_client()
    kept: list[dict[str, Any]] = []

    def keep(response_dict: dict[str, Any], **_: Any) -> None:
        kept.append(dict(response_dict))

    client.meta.events.register("before-parse.dynamodb-streams.GetRecords", keep)
    shard_id = index._shards()[0]["ShardId"]
    iterator = client.get_shard_iterator(
        StreamArn=index.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = client.get_records(ShardIterator=iterator, Limit=1000)["Records"]
    answer = kept[-1]
    output = client.meta.service_model.operation_model("GetRecords").output_shape
    default_parser = create_parser("json")
    utc_parser = ResponseParserFactory()
    # As the indexer's streams client reads them (epoch seconds here).
    utc_parser.set_parser_defaults(
        timestamp_parser=lambda value: datetime.fromtimestamp(value, UTC)
    )
    utc = utc_parser.create_parser("json")
    parsed_utc = utc.parse(answer, output)["Records"]
    ledger_factory = AnswerParserFactory()
    ledger_factory.set_parser_defaults(
        timestamp_parser=lambda value: datetime.fromtimestamp(value, UTC)
    )
    assert ledger_factory.create_parser("json").parse(answer, output) == utc.parse(
        answer, output
    )
    steps: dict[str, Callable[[], object]] = {
        "json_loads": lambda: json.loads(answer["body"]),
        "botocore_parse": lambda: default_parser.parse(answer, output),
        "botocore_parse_utc": lambda: utc.parse(answer, output),
        # What ledger's streams clients read it with (ledger.dynamodb.parsing).
        "ledger_parse_utc": lambda: ledger_factory.create_parser("json").parse(
            answer, output
        ),
        "ledger_decode": lambda: [
            index_rounds._record(shard_id, r) for r in parsed_utc
        ],
    }
    costs = {
        name: round(
            min(timeit.repeat(step, number=3, repeat=5, timer=time.process_time))
            / 3
            / len(records)
            * 1e6,
            2,
        )
        for name, step in steps.items()
    }
    costs["records"] = len(records)
    return costs


def _transact_timed(stages: Stages, call: Callable[..., Any]) -> Callable[..., Any]:
    transact = stages.timed("transact", call)

    def routed(operation: str, **params: Any) -> Any:
        if operation == "transact_write_items":
            return transact(operation, **params)
        return call(operation, **params)

    return routed


def main() -> None:
    """Write the backlog, catch it up ``--runs`` times, print and write the stages."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--singles", type=int, default=20_000)
    parser.add_argument("--multis", type=int, default=400, help="saves of 5 events")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the last run")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="freeze the objects made before each catch-up, as `ledger index run` "
        "and the indexer's Lambda function do (ledger.indexer.freeze_start_up)",
    )
    parser.add_argument(
        "--readers",
        type=int,
        nargs="+",
        default=[0],
        help="reader processes (Indexer(readers=N)); several values: the runs "
        "take turns (0: the shards read in process)",
    )
    parser.add_argument("--output", help="under results/ (default: indexer_cpu.json)")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with DynamoDBLocal() as local:
        app = open_app(local.endpoint_url, "prof", "indexed", create=True)
        written = write_backlog(app, args.singles, args.multis)
        parse = parse_costs(app)
        print(json.dumps({"parse_us_per_record": parse}))
        runs = []
        profiler = None
        for run in range(args.runs):
            if args.profile and run == args.runs - 1:
                profiler = cProfile.Profile()
            result = catch_up(
                app,
                run,
                profiler,
                freeze=args.gc_freeze,
                readers=args.readers[run % len(args.readers)],
            )
            assert result["events"] == written, (result["events"], written)
            result["load"] = load_average()
            runs.append(result)
            print(json.dumps(result))
    print(
        f"\n{'stage':<12}" + "".join(f"{f'run {i + 1}':>10}" for i in range(len(runs)))
    )
    for stage in (*STAGES, "total"):
        values = [
            r["cpu_us_per_event"]
            if stage == "total"
            else r["stages_us_per_event"][stage]
            for r in runs
        ]
        print(f"{stage:<12}" + "".join(f"{v:>10.2f}" for v in values))
    print(f"{'events/s':<12}" + "".join(f"{r['events_per_s']:>10.0f}" for r in runs))
    print(f"{'readers':<12}" + "".join(f"{r['readers']:>10}" for r in runs))
    print(
        f"{'reader µs':<12}"
        + "".join(
            f"{sum(r['reader_cpu_us_per_event']):>10.2f}"
            if r["reader_cpu_us_per_event"]
            else f"{'-':>10}"
            for r in runs
        )
    )
    print(
        f"{'ceiling/s':<12}" + "".join(f"{r['ceiling_events_per_s']:>10}" for r in runs)
    )
    print(
        f"{'as built/s':<12}"
        + "".join(f"{r['rounds_ceiling_events_per_s']:>10}" for r in runs)
    )
    print(f"{'load':<12}" + "".join(f"{r['load'][0]:>10}" for r in runs))
    if profiler is not None:
        print()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("ledger/", 30)
        stats.dump_stats(RESULTS / "indexer_cpu.prof")
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / (args.output or "indexer_cpu.json")
    output.write_text(
        json.dumps(
            {
                "command": "python benchmarks/profile_indexer.py "
                + " ".join(sys.argv[1:]),
                "events": written,
                "parse_us_per_record": parse,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
