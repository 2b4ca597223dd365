"""Benchmark projections: rebuild throughput beside raw reads and writes of its data.

Seeds N Order events (5 per order: placed, 3 items added, confirmed; each
order its own customer) straight into the events and notifications tables
(the application recorder, 98 events per transaction), in one of two shapes:

* ``grouped``: each order's 5 events consecutive;
* ``interleaved``: orders advance round-robin (every order placed, then each
  gets its first item, ... then each is confirmed), so consecutive events
  belong to different orders.

Then measures, in the same run and on the same server:

1. raw Scan of the events table (items/s), single-threaded and as a parallel
   Scan of as many segments as ``ScanHistory`` uses, and raw reading of the
   application sequence (events/s): what any rebuild must read;
2. rebuild (events/s) of OrderProjector into a fresh view from each source,
   the application sequence (``SequenceHistory``) and the events table by
   parallel Scan (``ScanHistory``), with round trips, read-model items
   written, estimated write units and flushes;
3. the final read-model item count, and items written per final item (1.0
   means each item was written once);
4. raw writes of the final items into scratch tables (items/s), without
   ledger: TransactWriteItems of 99 puts one at a time, as the rebuild sends
   them, and BatchWriteItem of 25 from 4 threads, the fastest unconditional
   writes. Reading an event at the source's raw rate plus writing its share
   of the items at the first rate is the fastest a rebuild that writes as
   ledger's does could go on this server ("bound", events/s); at the second
   rate, what a rebuild of parallel unfenced writes could reach ("parallel
   bound");
5. peak memory (max RSS) of a rebuild from each source, run in a fresh child
   process, beside the same child's RSS after imports and construction;
6. stream-batch handling (records/s) of 1,000-record Lambda-shaped batches.

The raw reads, both rebuilds (in turn, then in reverse turn) and the raw
writes run twice, alternately, and the best of each pair is reported
(DynamoDB Local gets faster as it warms up). Round trips, items written and
write units are deterministic for the sequence; for the Scan, flush
boundaries depend on the order the segments' pages arrive in.

    python benchmarks/bench_projections.py [--quick | --events N ...] [--endpoint URL]

Targets: a rebuild of an interleaved history writes at most 1.1 items per
final read-model item; a rebuild from the Scan runs at >= 0.5 of the raw
Scan (the faster of the two) at 100,000 events; a 100,000-event rebuild
peaks under 200 MiB.

Events tables here have no DynamoDB stream (``DYNAMODB_EVENTS_STREAM=no``:
nothing reads it; the stream batches are built from the sequence). Each size
and shape still runs on a DynamoDB Local of its own: DynamoDB Local slows
writes into a table with a stream once another table with a stream holds
records, about tenfold after one other table of 10,000 items, and dropping
that table does not help; a fresh server also keeps one run's tables and
warm-up out of the next. With ``--endpoint`` all runs share the given
server.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from decimal import Decimal
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from eventsourcing.persistence import StoredEvent

from aggregates.application import Orders
from aggregates.order import Order
from ledger.dynamodb import measure
from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.local import DynamoDBLocal
from ledger.dynamodb.schema import table_definition
from ledger.dynamodb.tables import ensure_table
from ledger.projections import event_loader
from ledger.projections import schema as view_schema
from ledger.projections.dynamodb import DynamoDBView, open_view
from ledger.projections.history import (
    DEFAULT_SEGMENTS,
    History,
    ScanHistory,
    SequenceHistory,
)
from ledger.projections.rebuild import rebuild
from ledger.projections.streams import process_records
from projections.orders import OrderProjector

RESULTS = Path(__file__).parent / "results"
EVENTS_PER_ORDER = 5
SHAPES = ("grouped", "interleaved")
SOURCES = ("sequence", "scan")
MAX_WRITTEN_PER_FINAL_ITEM = 1.1
MIN_SCAN_REBUILD_SHARE = 0.5
MAX_PEAK_MIB = 200
TARGET_EVENTS = 100_000
"""The size the throughput and memory targets are stated for."""


# Seeding ------------------------------------------------------------------------


def seed(app: Orders, events: int, shape: str) -> None:
    """Insert ``events`` Order events in the given shape, 98 per transaction."""
    histories: list[list[StoredEvent]] = []
    for _ in range(events // EVENTS_PER_ORDER):
        order = Order.place(uuid.uuid4(), [], "EUR")
        for n in range(3):
            order.add_item(f"p{n}", 1, Decimal("2.50"))
        order.confirm()
        histories.append(
            [app.mapper.to_stored_event(e) for e in order.collect_events()]
        )
    if shape == "grouped":
        stored = [event for history in histories for event in history]
    else:
        stored = [
            history[step] for step in range(EVENTS_PER_ORDER) for history in histories
        ]
    for start in range(0, len(stored), 98):
        app.recorder.insert_events(stored[start : start + 98])


# Raw reads ----------------------------------------------------------------------


def scan_rate(app: Orders, segments: int) -> float:
    """Scan the events table (strongly consistent, as ScanHistory); items/s."""
    connection = app.recorder.connection

    def scan_segment(segment: int) -> int:
        return sum(
            1
            for _ in connection.items(
                "scan",
                TableName=app.recorder.events_table_name,
                ConsistentRead=True,
                Segment=segment,
                TotalSegments=segments,
            )
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=segments) as pool:
        count = sum(pool.map(scan_segment, range(segments)))
    return count / (time.perf_counter() - started)


def sequence_rate(app: Orders) -> float:
    count, position, started = 0, 0, time.perf_counter()
    while True:
        batch = app.recorder.select_notifications(start=position + 1, limit=1000)
        if not batch:
            return count / (time.perf_counter() - started)
        count += len(batch)
        position = batch[-1].id


# Rebuilds -----------------------------------------------------------------------


def history(app: Orders, source: str) -> History:
    if source == "sequence":
        return SequenceHistory(app)
    # A sequence-mode application read as a stream-mode one's rebuild reads it.
    return ScanHistory(app)


def fresh_view(env: dict[str, str], name: str) -> DynamoDBView:
    """Open the projection's view under a table prefix of its own.

    Every rebuild starts from an empty active version, so no rebuild pays for
    catching up on the read model of the one before it.
    """
    prefix = f"{env['DYNAMODB_TABLE_PREFIX']}{name}{uuid.uuid4().hex[:6]}_"
    view: DynamoDBView = open_view(
        OrderProjector, {**env, "DYNAMODB_TABLE_PREFIX": prefix}
    )
    return view


def measured_rebuild(
    app: Orders, env: dict[str, str], source: str
) -> tuple[dict[str, Any], DynamoDBView]:
    """Rebuild into a fresh view, metered; return its numbers and the view."""
    view = fresh_view(env, source)
    with measure(app) as reads, measure(view) as writes:
        result = rebuild(app, OrderProjector, view, history=history(app, source))
    writes.add(reads)
    return {
        "events": result.events,
        "events_per_s": result.events_per_second,
        "round_trips": writes.round_trips,
        "items_written": result.items_written,
        "all_items_written": writes.items_written,
        "estimated_wcu": writes.estimated_write_units,
        "flushes": result.flushes,
    }, view


def read_model_items(view: DynamoDBView) -> list[dict[str, Any]]:
    """Return the active version's read-model items (tracking items left out)."""
    return [
        item
        for item in view.connection.items(
            "scan", TableName=view.table_name, ConsistentRead=True
        )
        if view_schema.BODY in item
    ]


def raw_write_rates(
    view: DynamoDBView, items: list[dict[str, Any]]
) -> tuple[float, float]:
    """Copy ``items`` into scratch tables without ledger; return items/s.

    First as the rebuild sends them, one TransactWriteItems of 99 puts at a
    time; then as fast as DynamoDB takes unconditional writes, BatchWriteItem
    of 25 from 4 threads (no transaction, no checks).
    """
    connection = view.connection
    tables = [f"{view.table_name}_raw{kind}" for kind in ("tx", "batch")]
    for table in tables:
        ensure_table(connection, table_definition(table, (view_schema.KEY, "S")))

    def transact(chunk: list[dict[str, Any]]) -> None:
        puts = [{"Put": {"TableName": tables[0], "Item": item}} for item in chunk]
        connection.call("transact_write_items", TransactItems=puts)

    def batch(chunk: list[dict[str, Any]]) -> None:
        requests = {tables[1]: [{"PutRequest": {"Item": item}} for item in chunk]}
        while requests:
            response = connection.call("batch_write_item", RequestItems=requests)
            requests = response.get("UnprocessedItems") or {}

    rates = []
    for write, size, threads in ((transact, 99, 1), (batch, 25, 4)):
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(write, chunks))
        rates.append(len(items) / (time.perf_counter() - started))
    return rates[0], rates[1]


# Peak memory --------------------------------------------------------------------


def memory_kib(field: str) -> int:
    """Return a memory figure of this process, KiB: ``VmRSS`` now, ``VmHWM`` peak.

    Read from /proc, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across
    ``execve``, so a spawned child would report the RSS of the parent it was
    forked from (here, the seeding process) as its own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def rebuild_in_child(env: dict[str, str], source: str) -> tuple[int, int]:
    """Run one rebuild in this (fresh) process; return RSS figures in KiB.

    First the RSS after imports and constructing the application and view,
    then the peak RSS of the process, over the rebuild.
    """
    app = Orders(env=env)
    view = fresh_view(env, f"mem{source}")
    baseline = memory_kib("VmRSS")
    rebuild(app, OrderProjector, view, history=history(app, source))
    peak = memory_kib("VmHWM")
    app.close()
    return baseline, peak


def rebuild_peak_memory(env: dict[str, str], source: str) -> tuple[float, float]:
    """Rebuild in a spawned child process; return its baseline and peak RSS, MiB."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        baseline, peak = pool.submit(rebuild_in_child, env, source).result()
    return baseline / 1024, peak / 1024


# Stream batches -----------------------------------------------------------------


def stream_rate(app: Orders, env: dict[str, str], records: int) -> float:
    items = [
        {
            "eventName": "INSERT",
            "dynamodb": {
                "Keys": {
                    store_schema.AGGREGATE_ID: {"S": str(notification.originator_id)}
                },
                "NewImage": {
                    store_schema.AGGREGATE_ID: {"S": str(notification.originator_id)},
                    store_schema.VERSION: {"N": str(notification.originator_version)},
                    store_schema.TOPIC: {"S": notification.topic},
                    store_schema.STATE: {
                        "B": base64.b64encode(notification.state).decode()
                    },
                },
                "SequenceNumber": f"{notification.id:021d}",
            },
        }
        for notification in app.recorder.select_notifications(start=1, limit=records)
    ]
    view = open_view(
        OrderProjector,
        {**env, "DYNAMODB_TABLE_PREFIX": f"stream{uuid.uuid4().hex[:6]}_"},
    )
    projector = OrderProjector(view, event_loader(app))
    started = time.perf_counter()
    for start in range(0, len(items), 1000):
        process_records(projector, items[start : start + 1000], app.mapper)
    return len(items) / (time.perf_counter() - started)


# One run -------------------------------------------------------------------------


def stage(label: str, what: str, started: float) -> None:
    """Say on stderr which stage of which run finished, and when."""
    elapsed = time.perf_counter() - started
    print(f"[{label}] {what} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def run(endpoint: str, events: int, shape: str) -> dict[str, Any]:
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": f"b{uuid.uuid4().hex[:8]}_",
        "DYNAMODB_EVENTS_STREAM": "no",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    label = f"{events:,} {shape}"
    app = Orders(env=env)
    started = time.perf_counter()
    seed(app, events, shape)
    stage(label, "seeded", started)
    raw: dict[str, list[float]] = {"scan": [], "parallel_scan": [], "sequence": []}
    rebuilds: dict[str, list[dict[str, Any]]] = {source: [] for source in SOURCES}
    final: dict[str, int] = {}
    writes: dict[str, list[float]] = {"tx": [], "batch": []}
    for attempt in (1, 2):
        raw["scan"].append(scan_rate(app, 1))
        raw["parallel_scan"].append(scan_rate(app, DEFAULT_SEGMENTS))
        raw["sequence"].append(sequence_rate(app))
        stage(label, f"raw reads ({attempt} of 2)", started)
        views = {}
        for source in SOURCES if attempt == 1 else SOURCES[::-1]:
            numbers, views[source] = measured_rebuild(app, env, source)
            rebuilds[source].append(numbers)
            stage(label, f"rebuilt from the {source} ({attempt} of 2)", started)
        items = {source: read_model_items(view) for source, view in views.items()}
        for source, found in items.items():
            final[source] = len(found)
        sequential, parallel = raw_write_rates(views["sequence"], items["sequence"])
        writes["tx"].append(sequential)
        writes["batch"].append(parallel)
        stage(label, f"wrote the final items raw ({attempt} of 2)", started)
    memory = {}
    for source in SOURCES:
        memory[source] = rebuild_peak_memory(env, source)
        stage(label, f"peak memory of a rebuild from the {source}", started)
    streams = stream_rate(app, env, min(events, 5000))
    stage(label, "handled stream batches", started)
    app.close()
    return summarise(
        events=events,
        shape=shape,
        raw=raw,
        rebuilds=rebuilds,
        final=final,
        writes=writes,
        memory=memory,
        streams=streams,
    )


def summarise(
    *,
    events: int,
    shape: str,
    raw: dict[str, list[float]],
    rebuilds: dict[str, list[dict[str, Any]]],
    final: dict[str, int],
    writes: dict[str, list[float]],
    memory: dict[str, tuple[float, float]],
    streams: float,
) -> dict[str, Any]:
    """One flat row of a run's results: best of each pair, ratios, bounds."""
    scan, parallel_scan, sequence = (
        max(raw[kind]) for kind in ("scan", "parallel_scan", "sequence")
    )
    best_scan = max(scan, parallel_scan)
    tx_write, batch_write = max(writes["tx"]), max(writes["batch"])
    row: dict[str, Any] = {
        "events": events,
        "shape": shape,
        "scan_items_per_s": round(scan),
        "parallel_scan_items_per_s": round(parallel_scan),
        "scan_segments": DEFAULT_SEGMENTS,
        "sequence_events_per_s": round(sequence),
        "final_items": final["sequence"],
        "raw_write_items_per_s": round(tx_write),
        "raw_parallel_write_items_per_s": round(batch_write),
    }
    read_rates = {"sequence": sequence, "scan": parallel_scan}
    for source in SOURCES:
        best = max(rebuilds[source], key=lambda numbers: numbers["events_per_s"])
        rate = best["events_per_s"]
        # The server's time for one event: reading it at the source's raw rate,
        # plus writing its share of the items at each raw write rate.
        per_event = best["all_items_written"] / best["events"]
        bound = 1 / (1 / read_rates[source] + per_event / tx_write)
        parallel_bound = 1 / (1 / read_rates[source] + per_event / batch_write)
        baseline_mib, peak_mib = memory[source]
        row |= {
            f"{source}_rebuild_events_per_s": round(rate),
            f"{source}_rebuild_attempts_events_per_s": [
                round(numbers["events_per_s"]) for numbers in rebuilds[source]
            ],
            f"{source}_rebuild_vs_scan": round(rate / best_scan, 2),
            f"{source}_rebuild_vs_own_read": round(rate / read_rates[source], 2),
            f"{source}_bound_events_per_s": round(bound),
            f"{source}_rebuild_vs_bound": round(rate / bound, 2),
            f"{source}_parallel_bound_events_per_s": round(parallel_bound),
            f"{source}_round_trips": best["round_trips"],
            f"{source}_items_written": best["items_written"],
            f"{source}_all_items_written": best["all_items_written"],
            f"{source}_estimated_wcu": round(best["estimated_wcu"]),
            f"{source}_flushes": best["flushes"],
            f"{source}_final_items": final[source],
            f"{source}_written_per_final_item": round(
                best["items_written"] / final[source], 2
            ),
            f"{source}_baseline_rss_mib": round(baseline_mib, 1),
            f"{source}_peak_rss_mib": round(peak_mib, 1),
        }
    row["stream_records_per_s"] = round(streams)
    return row


# Targets, tables, plot ----------------------------------------------------------


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pass/fail rows: items written on interleaved data, Scan share, memory."""
    targets = []
    for row in rows:
        run_name = f"{row['events']:,} {row['shape']}"
        if row["shape"] == "interleaved":
            for source in SOURCES:
                value = row[f"{source}_written_per_final_item"]
                targets.append(
                    {
                        "target": f"items written / final items <= "
                        f"{MAX_WRITTEN_PER_FINAL_ITEM} (from the {source})",
                        "run": run_name,
                        "value": value,
                        "passed": value <= MAX_WRITTEN_PER_FINAL_ITEM,
                    }
                )
        if row["events"] != TARGET_EVENTS:
            continue
        value = row["scan_rebuild_vs_scan"]
        targets.append(
            {
                "target": f"Scan rebuild / raw Scan >= {MIN_SCAN_REBUILD_SHARE}",
                "run": run_name,
                "value": value,
                "passed": value >= MIN_SCAN_REBUILD_SHARE,
            }
        )
        for source in SOURCES:
            value = row[f"{source}_peak_rss_mib"]
            targets.append(
                {
                    "target": f"peak RSS < {MAX_PEAK_MIB} MiB (from the {source})",
                    "run": run_name,
                    "value": value,
                    "passed": value < MAX_PEAK_MIB,
                }
            )
    return targets


TABLE_ROWS = [
    ("raw Scan, 1 thread, items/s", "scan_items_per_s"),
    (f"raw Scan, {DEFAULT_SEGMENTS} segments, items/s", "parallel_scan_items_per_s"),
    ("raw sequence read, events/s", "sequence_events_per_s"),
    ("final read-model items", "final_items"),
    ("raw write, transactions of 99, items/s", "raw_write_items_per_s"),
    ("raw write, BatchWriteItem x 4, items/s", "raw_parallel_write_items_per_s"),
    *(
        row
        for source in SOURCES
        for row in (
            (f"{source}: rebuild, events/s", f"{source}_rebuild_events_per_s"),
            (f"{source}: rebuild / best raw Scan", f"{source}_rebuild_vs_scan"),
            (f"{source}: rebuild / raw read of it", f"{source}_rebuild_vs_own_read"),
            (f"{source}: bound, events/s", f"{source}_bound_events_per_s"),
            (f"{source}: rebuild / bound", f"{source}_rebuild_vs_bound"),
            (
                f"{source}: parallel bound, events/s",
                f"{source}_parallel_bound_events_per_s",
            ),
            (f"{source}: round trips", f"{source}_round_trips"),
            (f"{source}: read-model items written", f"{source}_items_written"),
            (f"{source}: items written / final", f"{source}_written_per_final_item"),
            (f"{source}: write units (estimated)", f"{source}_estimated_wcu"),
            (f"{source}: flushes", f"{source}_flushes"),
            (f"{source}: peak RSS, MiB", f"{source}_peak_rss_mib"),
            (f"{source}: RSS after imports, MiB", f"{source}_baseline_rss_mib"),
        )
    ),
    ("stream batches, records/s", "stream_records_per_s"),
]


def print_tables(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> None:
    width = max(len(label) for label, _ in TABLE_ROWS)
    headers = [f"{row['events']:,} {row['shape'][:5]}." for row in rows]
    print(f"{'':<{width}}", *(f"{header:>14}" for header in headers))
    for label, name in TABLE_ROWS:
        cells = (
            f"{row[name]:>14.2f}"
            if isinstance(row[name], float)
            else f"{row[name]:>14,}"
            for row in rows
        )
        print(f"{label:<{width}}", *cells)
    print()
    if not targets:
        print("targets: none apply to these runs")
    for target in targets:
        verdict = "PASS" if target["passed"] else "FAIL"
        print(
            f"{verdict}  {target['target']:<50} {target['run']:<20} {target['value']}"
        )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - only when plotting

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (rates, written) = plt.subplots(
        1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]}
    )
    names = [f"{row['events']:,}\n{row['shape']}" for row in rows]
    bars = [
        ("raw Scan, 1 thread", "scan_items_per_s"),
        (f"raw Scan, {DEFAULT_SEGMENTS} segments", "parallel_scan_items_per_s"),
        ("rebuild from the sequence", "sequence_rebuild_events_per_s"),
        ("rebuild from the Scan", "scan_rebuild_events_per_s"),
    ]
    width = 0.8 / len(bars)
    for index, (label, name) in enumerate(bars):
        xs = [
            group + (index - (len(bars) - 1) / 2) * width for group in range(len(rows))
        ]
        drawn = rates.bar(xs, [row[name] for row in rows], width, label=label)
        rates.bar_label(
            drawn, fmt="{:,.0f}", fontsize="x-small", rotation=90, padding=2
        )
    for group, row in enumerate(rows):
        half = MIN_SCAN_REBUILD_SHARE * max(
            row["scan_items_per_s"], row["parallel_scan_items_per_s"]
        )
        rates.hlines(half, group - 0.4, group + 0.4, colors="k", linestyles="dashed")
    rates.plot(
        [], [], "k--", label=f"{MIN_SCAN_REBUILD_SHARE} x best raw Scan (target)"
    )
    rates.set(
        xticks=range(len(rows)),
        xticklabels=names,
        ylabel="events/s (raw Scan: items/s)",
        title="Rebuild beside the raw Scan of the same events",
    )
    rates.margins(y=0.15)
    rates.legend(fontsize="small")
    for index, source in enumerate(SOURCES):
        xs = [group + (index - 0.5) * 0.4 for group in range(len(rows))]
        drawn = written.bar(
            xs,
            [row[f"{source}_written_per_final_item"] for row in rows],
            0.4,
            label=f"from the {source}",
            color=f"C{index + 2}",
        )
        written.bar_label(drawn, fmt="{:.2f}", fontsize="x-small")
    written.axhline(
        MAX_WRITTEN_PER_FINAL_ITEM, color="k", linestyle="dashed", label="target"
    )
    written.set(
        xticks=range(len(rows)),
        xticklabels=names,
        ylabel="read-model items written / final items",
        title="Writes per final item",
    )
    written.legend(fontsize="small")
    for axes in (rates, written):
        axes.grid(visible=True, axis="y", alpha=0.3)
    figure.suptitle("ledger rebuild of OrderProjector on DynamoDB Local (best of two)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 events only")
    parser.add_argument(
        "--events", type=int, nargs="+", help="sizes to run (default 10,000 100,000)"
    )
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    args = parser.parse_args()
    sizes = args.events or ([10_000] if args.quick else [10_000, TARGET_EVENTS])
    started = time.perf_counter()
    rows = []
    for size in sizes:
        for shape in SHAPES:
            if args.endpoint:
                rows.append(run(args.endpoint, size, shape))
            else:
                with DynamoDBLocal() as server:
                    rows.append(run(server.endpoint_url, size, shape))
    targets = check_targets(rows)
    seconds = round(time.perf_counter() - started)
    print_tables(rows, targets)
    command = shlex.join(["python", "benchmarks/bench_projections.py", *sys.argv[1:]])
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"command": command, "seconds": seconds, "runs": rows, "targets": targets}
    (RESULTS / "projections.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, RESULTS / "projections.png")
    print(f"\n{seconds} s; wrote results/projections.json and .png")


if __name__ == "__main__":
    main()
