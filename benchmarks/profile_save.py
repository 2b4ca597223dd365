"""Profile one 1-event save end to end: client CPU per stage, beside raw boto3.

Two measurements, in one process, on a DynamoDB Local of its own (or
``--endpoint``), events tables without a DynamoDB stream:

1. **Stages in context** (``--rounds`` rounds of ``--saves`` saves per
   contender, contenders taking turns, the order shifted each round). Each
   contender does one more stage of a ``stream``-ordering save than the one
   before it, so the difference of two medians is what that stage costs
   with the round trip's effect on the CPU caches included:

   * ``raw``: bench_scaleout's raw save, a plain boto3 client's conditional
     ``PutItem`` of an item made from an event stored before timing;
   * ``raw + domain work``: apart from the chain, raw's save after the
     domain work a ledger save does (``Order.place``, ``collect_events``,
     the mapper's ``to_stored_event``), its item made from that event: what
     the ledger contenders cost with none of ledger's storage code;
   * ``ledger client``: the same item as raw's through ledger's connection
     (``DynamoDBConnection.call``: its botocore client, its after-attempt
     handler and answer parser, the error wrapper);
   * ``recorder``: ``insert_events`` of a ``StoredEvent`` (the item's
     building and checks added);
   * ``mapper + recorder``: ``to_stored_event`` of a domain event made
     before the round, then ``insert_events`` (the event's encoding added);
   * ``app.save``: ``Orders.save`` of an Order made before the round
     (eventsourcing's application and repository: collecting events,
     processing, ledger's save wrappers);
   * ``place_order``: the command as bench_scaleout's writers run it (the
     Order's creation, its event's creation and the keyed-command wrapper
     added).

   Client CPU is ``time.process_time`` of this process per save; DynamoDB
   Local's CPU is not counted. Wall time per save is printed beside it.

2. **Stages without the network** (``--loops`` tight loops, best of
   ``--repeat``): the domain event's creation, the mapper's encoding, the
   item's building, and botocore's request side for each client: the call
   with a ``before-send`` handler that answers at once (botocore's
   documented way to short-circuit sending), so serialising, validating,
   signing, the event hooks and the parse of an empty answer are measured
   without a socket. Within that call, handlers timing botocore's phases:
   ``provide-client-params`` to ``before-call`` (endpoint resolution,
   validation, serialisation), ``before-call`` to ``before-send`` (signing,
   preparing the request), ``before-send`` to ``needs-retry`` (the answer's
   parse), ``needs-retry`` to the return (after-call hooks).

With ``--profile`` the ``place_order`` contender is also run under cProfile
timing CPU (``time.process_time``; its own overhead inflates every figure,
so read it for shares, not microseconds), saved to
``results/save_cpu.prof``, and the top functions are printed.

    python benchmarks/profile_save.py [--rounds 15] [--saves 200] [--loops 3000]
        [--repeat 5] [--profile] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_scaleout import (
    CURRENCY,
    RawTable,
    create_raw_table,
    event_item,
    open_app,
    raw_client,
    server,
)
from botocore.awsrequest import AWSResponse
from eventsourcing.persistence import StoredEvent

from aggregates.order import Order
from ledger.dynamodb.recorders import EVENT_NOT_EXISTS

RESULTS = Path(__file__).parent / "results"
STAGE_BASE = {"raw + domain work": "raw", "ledger client": "raw"}
"""The contender a stage is measured from, where not the one before it."""


class Setup:
    """The applications, tables and clients every contender uses."""

    def __init__(self, endpoint: str) -> None:
        run_id = uuid.uuid4().hex[:6]
        self.app = open_app(endpoint, f"prof{run_id}_", "stream")
        self.raw_table = f"profraw{run_id}_events"
        create_raw_table(endpoint, self.raw_table)
        self.raw = RawTable(raw_client(endpoint), self.raw_table)
        self.connection = self.app.factory.connection  # type: ignore[attr-defined]
        self.recorder = self.app.recorder
        self.table = self.recorder.events_table_name
        self.placed = self.app.mapper.to_stored_event(
            Order.place(uuid.uuid4(), [], CURRENCY).collect_events()[0]
        )

    def close(self) -> None:
        self.app.close()
        self.raw.client.close()


def contenders(setup: Setup) -> dict[str, Callable[[int], Callable[[], object]]]:
    """Per contender: given a round's size, make what is untimed, return one save."""
    placed = setup.placed
    app, mapper, recorder = setup.app, setup.app.mapper, setup.recorder
    connection, table, raw = setup.connection, setup.table, setup.raw

    def raw_save(_: int) -> Callable[[], object]:
        return lambda: raw.put(event_item(str(uuid.uuid4()), 1, placed))

    def domain_then_raw(_: int) -> Callable[[], object]:
        def save() -> None:
            order = Order.place(uuid.uuid4(), [], CURRENCY)
            event = mapper.to_stored_event(order.collect_events()[0])
            raw.put(event_item(str(event.originator_id), 1, event))

        return save

    def client_save(_: int) -> Callable[[], object]:
        return lambda: connection.call(
            "put_item",
            TableName=table,
            Item=event_item(str(uuid.uuid4()), 1, placed),
            ConditionExpression=EVENT_NOT_EXISTS,
        )

    def recorder_save(_: int) -> Callable[[], object]:
        return lambda: recorder.insert_events(
            [StoredEvent(uuid.uuid4(), 1, placed.topic, placed.state)]
        )

    def mapper_save(saves: int) -> Callable[[], object]:
        events = iter(
            [
                Order.place(uuid.uuid4(), [], CURRENCY).collect_events()[0]
                for _ in range(saves)
            ]
        )
        return lambda: recorder.insert_events([mapper.to_stored_event(next(events))])

    def app_save(saves: int) -> Callable[[], object]:
        orders = iter([Order.place(uuid.uuid4(), [], CURRENCY) for _ in range(saves)])
        return lambda: app.save(next(orders))

    def command(_: int) -> Callable[[], object]:
        return lambda: app.place_order(uuid.uuid4(), [], CURRENCY)

    return {
        "raw": raw_save,
        "raw + domain work": domain_then_raw,
        "ledger client": client_save,
        "recorder": recorder_save,
        "mapper + recorder": mapper_save,
        "app.save": app_save,
        "place_order": command,
    }


def run_in_context(
    setup: Setup, rounds: int, saves: int
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Time each contender's saves, taking turns; return a row per contender."""
    makers = contenders(setup)
    names = list(makers)
    for name in names:  # warm up: the server's JIT and this process's caches
        save = makers[name](saves)
        for _ in range(saves):
            save()
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            save = makers[name](saves)
            began_cpu, began = time.process_time(), time.perf_counter()
            for _ in range(saves):
                save()
            cpu[name].append((time.process_time() - began_cpu) / saves * 1e6)
            wall[name].append((time.perf_counter() - began) / saves * 1e6)
    medians = {name: statistics.median(cpu[name]) for name in names}
    rows = []
    for index, name in enumerate(names):
        median = medians[name]
        base = STAGE_BASE.get(name, names[index - 1] if index else None)
        rows.append(
            {
                "contender": name,
                "cpu_us": round(median, 1),
                "cpu_vs_raw": round(median / medians["raw"], 3),
                "stage_of": base,
                "stage_us": None if base is None else round(median - medians[base], 1),
                "cpu_us_low": round(min(cpu[name]), 1),
                "cpu_us_high": round(max(cpu[name]), 1),
                "wall_us": round(statistics.median(wall[name]), 1),
            }
        )
    return rows, cpu


# --- 2. without the network ------------------------------------------------------


class Phases:
    """botocore handlers noting the CPU time of each phase of a call."""

    MARKS = ("provide-client-params", "before-call", "before-send", "needs-retry")

    def __init__(self, events: Any, *, answer: bool) -> None:
        self.times: dict[str, int] = {}
        self.totals: dict[str, int] = dict.fromkeys(self.MARKS, 0)
        self.calls = 0
        self.events = events
        self.handlers: list[tuple[str, Any]] = []
        for mark in self.MARKS:
            handler = self._marker(mark, answer=answer and mark == "before-send")
            events.register_first(f"{mark}.dynamodb", handler)
            self.handlers.append((f"{mark}.dynamodb", handler))

    def _marker(self, mark: str, *, answer: bool) -> Callable[..., Any]:
        times = self.times

        def note(**_: Any) -> Any:
            times[mark] = time.process_time_ns()
            if answer:
                return AWSResponse(
                    "http://local", 200, {"x-amz-crc32": "2745614147"}, _Raw()
                )
            return None

        return note

    def remove(self) -> None:
        for event, handler in self.handlers:
            self.events.unregister(event, handler)

    def add(self, ended: int) -> None:
        marks = [self.times[mark] for mark in self.MARKS] + [ended]
        for mark, start, end in zip(self.MARKS, marks, marks[1:], strict=False):
            self.totals[mark] += end - start
        self.calls += 1


class _Raw:
    """An HTTP body of ``{}``, as DynamoDB answers a PutItem."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b"{}"

    def read(self, *_: Any) -> bytes:
        return b"{}"


def best(loops: int, repeat: int, step: Callable[[], object]) -> float:
    """Return the best of ``repeat`` loops' CPU µs per step."""
    runs = []
    for _ in range(repeat):
        began = time.process_time_ns()
        for _ in range(loops):
            step()
        runs.append((time.process_time_ns() - began) / loops / 1000)
    return min(runs)


def run_offline(setup: Setup, loops: int, repeat: int) -> dict[str, Any]:
    """Time the stages of a save that need no round trip, in tight loops."""
    placed = setup.placed
    mapper, recorder = setup.app.mapper, setup.recorder
    stages: dict[str, float] = {}
    stages["Order.place + collect_events"] = best(
        loops,
        repeat,
        lambda: Order.place(uuid.uuid4(), [], CURRENCY).collect_events(),
    )
    events = [
        Order.place(uuid.uuid4(), [], CURRENCY).collect_events()[0]
        for _ in range(loops)
    ]
    stages["mapper.to_stored_event"] = best(
        1, repeat * loops, lambda: mapper.to_stored_event(events[0])
    )
    stored = StoredEvent(uuid.uuid4(), 1, placed.topic, placed.state)
    stages["recorder's item (_event_item)"] = best(
        loops, repeat, lambda: recorder._event_item(stored)
    )
    stages["raw's item (event_item)"] = best(
        loops, repeat, lambda: event_item(str(uuid.uuid4()), 1, placed)
    )
    item = event_item(str(uuid.uuid4()), 1, placed)
    params = {
        "TableName": setup.table,
        "Item": item,
        "ConditionExpression": EVENT_NOT_EXISTS,
    }
    clients = {
        "raw": setup.raw.client,
        "ledger client": setup.connection.client,
    }
    request_side: dict[str, dict[str, float]] = {}
    for name, client in clients.items():
        phases = Phases(client.meta.events, answer=True)
        try:
            for _ in range(loops):  # warm
                client.put_item(**params)
            runs = []
            for _ in range(repeat):
                phases.totals = dict.fromkeys(Phases.MARKS, 0)
                phases.calls = 0
                began = time.process_time_ns()
                for _ in range(loops):
                    client.put_item(**params)
                    phases.add(time.process_time_ns())
                total = (time.process_time_ns() - began) / loops / 1000
                runs.append((total, dict(phases.totals)))
            total, totals = min(runs, key=lambda run: run[0])
            request_side[name] = {
                "whole call": round(total, 1),
                **{
                    f"from {mark}": round(ns / loops / 1000, 1)
                    for mark, ns in totals.items()
                },
            }
        finally:
            phases.remove()
    return {
        "stages_us": {name: round(us, 2) for name, us in stages.items()},
        "botocore_us": request_side,
    }


def profile_command(setup: Setup, saves: int) -> str:
    """Profile ``place_order`` under cProfile timing CPU; return the top lines."""
    app = setup.app
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for _ in range(saves):
        app.place_order(uuid.uuid4(), [], CURRENCY)
    profile.disable()
    RESULTS.mkdir(parents=True, exist_ok=True)
    profile.dump_stats(RESULTS / "save_cpu.prof")
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| contender | CPU µs/save | vs raw | stage µs | over | low | high "
        "| wall µs/save |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        stage = "" if row["stage_us"] is None else f"{row['stage_us']:+.1f}"
        print(
            f"| {row['contender']} | {row['cpu_us']:.1f} | {row['cpu_vs_raw']:.3f} "
            f"| {stage} | {row['stage_of'] or ''} | {row['cpu_us_low']:.1f} "
            f"| {row['cpu_us_high']:.1f} "
            f"| {row['wall_us']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="rounds (15)")
    parser.add_argument("--saves", type=int, default=200, help="saves a round (200)")
    parser.add_argument("--loops", type=int, default=3000, help="tight loops (3000)")
    parser.add_argument("--repeat", type=int, default=5, help="best of (5)")
    parser.add_argument("--profile", action="store_true", help="also cProfile")
    parser.add_argument("--endpoint", help="a running DynamoDB (default: start Local)")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with server(args.endpoint) as endpoint:
        setup = Setup(endpoint)
        try:
            rows, _ = run_in_context(setup, args.rounds, args.saves)
            offline = run_offline(setup, args.loops, args.repeat)
            profile = profile_command(setup, args.saves * 5) if args.profile else ""
        finally:
            setup.close()
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(
        f"1. Stages in context: {args.rounds} rounds of {args.saves} saves, "
        "median CPU µs per save (low and high: the rounds' extremes)"
    )
    print_rows(rows)
    print(f"\n2. Without the network: best of {args.repeat} x {args.loops}, µs\n")
    for stage, us in offline["stages_us"].items():
        print(f"- {stage}: {us:.2f}")
    for name, phases in offline["botocore_us"].items():
        shown = ", ".join(f"{phase} {us:.1f}" for phase, us in phases.items())
        print(f"- botocore PutItem, {name}: {shown}")
    if profile:
        print("\ncProfile of place_order (CPU; inflated by the profiler):\n")
        print(profile)
    print(f"\nload average before {load_before}, after {load_after}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_save.json").write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "saves": args.saves,
                "in_context": rows,
                "offline": offline,
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
