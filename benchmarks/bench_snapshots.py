"""Benchmark ledger's snapshot strategies on Order histories in DynamoDB.

For each event size (small, about 200 B; large, about 4 KB), each strategy
(``Never``, ``EveryNEvents``, ``EveryNBytes``, ``AfterLoadOfMoreThan``) and
each history length (10, 100, 1,000, 10,000 events; ``--quick`` stops at
1,000) it builds one Order and measures loading it: median wall time, round
trips, read units, and how many events the load replayed past its snapshot.
Then, per size and strategy, it runs a steady stream of single-event commands
(load, add one item, save) on the 1,000-event Order and measures what each
command costs, write units above all, against ``Never``.

How histories are seeded (so it is quick, and still fair to each strategy):
the Order is placed and given items in saves of up to 98 events each (the
most one DynamoDB transaction holds), through the application, so the
strategy's ``after_save`` sees every save; then the last events come from
ordinary single-event commands, one snapshot cycle of them (or all but the
first event, for short histories), so every strategy, including the lazy
``AfterLoadOfMoreThan``, has snapshotted as it would in real use before the
loads are timed. Loads are timed at exactly the stated length, so the number
of events replayed past the snapshot depends on where that length falls in
the strategy's cycle: the table shows it, and the steady-state run shows the
whole cycle.

Order lines cycle over ten products, so the state (and a snapshot) stays
bounded: ten lines, about 1.6 KB small and 40 KB large.

    python benchmarks/bench_snapshots.py [--quick] [--repeat 20] [--endpoint URL]

Without --endpoint it starts DynamoDB Local on a free loopback port. Writes
benchmarks/results/snapshots.json and benchmarks/results/snapshots.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger.dynamodb import measure
from ledger.dynamodb.local import DynamoDBLocal
from ledger.snapshots import (
    AfterLoadOfMoreThan,
    EveryNBytes,
    EveryNEvents,
    Never,
    SnapshotStrategy,
)

RESULTS = Path(__file__).parent / "results"
LENGTHS = (10, 100, 1_000, 10_000)
QUICK_LENGTHS = (10, 100, 1_000)
STEADY_STATE_LENGTH = 1_000
"""The history length the steady-state command run starts from."""
EVENTS_PER_SAVE = 98
"""The most events one save holds: one transaction of 100 actions, less two."""
PRODUCTS = 10
"""Distinct products the items cycle over: the state stays ten lines."""
PRICE = Decimal("9.99")
# Product-id padding that makes a stored ItemAdded state about 150 B (an item
# of about 200 B with its key, topic and position) or about 4 KB.
SIZES = {"small": 60, "large": 3_900}
NEVER_COMMANDS = 10
"""Commands in Never's steady-state run: every one costs the same."""
MAX_LOAD_SECONDS = 5.0
"""Stop repeating a load after this long (at least three loads are timed)."""


def strategies() -> dict[str, SnapshotStrategy]:
    return {
        "Never": Never(),
        "EveryNEvents(100)": EveryNEvents(100),
        "EveryNBytes(32 KiB)": EveryNBytes(32 * 1024),
        "AfterLoadOfMoreThan(100)": AfterLoadOfMoreThan(100),
    }


def product_id(index: int, padding: int) -> str:
    return f"sku-{index % PRODUCTS:02d}-" + "x" * padding


def cycle_length(strategy: SnapshotStrategy, event_bytes: int) -> int:
    """Single-event commands from one snapshot to the next (0: never)."""
    if isinstance(strategy, EveryNEvents):
        return strategy.n
    if isinstance(strategy, EveryNBytes):
        return math.ceil(strategy.n / event_bytes)
    if isinstance(strategy, AfterLoadOfMoreThan):
        return strategy.k + 1
    return 0


@dataclass
class Seeded:
    order_id: uuid.UUID
    batch_saves: int
    commands: int


class Bench:
    """One application per strategy, each on tables of its own."""

    def __init__(self, endpoint: str, repeat: int) -> None:
        os.environ["PERSISTENCE_MODULE"] = "ledger.dynamodb"
        os.environ["DYNAMODB_ENDPOINT_URL"] = endpoint
        # Imported here: the Order domain reads no environment, but keep the
        # application's construction after the environment is set, visibly.
        from aggregates.application import Orders  # noqa: PLC0415
        from aggregates.order import Order  # noqa: PLC0415

        self.order_class = Order
        self.repeat = repeat
        run = uuid.uuid4().hex[:6]
        self.apps = {
            name: Orders(
                {"DYNAMODB_TABLE_PREFIX": f"snap{run}{index}_"},
                snapshot_strategies={Order: strategy},
            )
            for index, (name, strategy) in enumerate(strategies().items())
        }
        self.event_bytes = {size: self._event_bytes(pad) for size, pad in SIZES.items()}

    def _event_bytes(self, padding: int) -> int:
        """Stored size of one ItemAdded state: what EveryNBytes counts."""
        app = next(iter(self.apps.values()))
        order = self.order_class.place(uuid.uuid4())
        order.add_item(product_id(0, padding), 1, PRICE)
        item_added = order.collect_events()[-1]
        return len(app.mapper.to_stored_event(item_added).state)

    # Seeding

    def seed(self, app: Any, length: int, padding: int, tail: int) -> Seeded:
        """Build an Order of ``length`` events; the last ``tail`` are commands."""
        order = self.order_class.place(uuid.uuid4())
        batched = length - tail
        saves = 0
        index = 0
        pending = 1  # OrderPlaced
        while True:
            while pending < EVENTS_PER_SAVE and order.version < batched:
                order.add_item(product_id(index, padding), 1, PRICE)
                index += 1
                pending += 1
            app.save(order)
            saves += 1
            pending = 0
            if order.version >= batched:
                break
        for _ in range(tail):
            app.add_item(order.id, product_id(index, padding), 1, PRICE)
            index += 1
        return Seeded(order.id, saves, tail)

    # Measuring

    def time_loads(self, app: Any, order_id: uuid.UUID) -> dict[str, Any]:
        app.get_order(order_id)  # warm: and AfterLoadOfMoreThan's chance
        times: list[float] = []
        replayed: list[int] = []
        with measure(app) as meter:
            started = time.perf_counter()
            while len(times) < self.repeat and (
                len(times) < 3 or time.perf_counter() - started < MAX_LOAD_SECONDS
            ):
                began = time.perf_counter()
                order = app.repository.get(order_id)
                times.append((time.perf_counter() - began) * 1000)
                last = app.repository.pop_last_load(order_id)
                replayed.append(last.events if last else -1)
        loads = len(times)
        assert order.version > 0
        return {
            "loads_timed": loads,
            "load_median_ms": round(statistics.median(times), 2),
            "load_min_ms": round(min(times), 2),
            "round_trips_per_load": meter.round_trips / loads,
            "read_units_per_load": meter.read_units / loads,
            "estimated_read_units_per_load": meter.estimated_read_units / loads,
            "write_units_during_loads": meter.estimated_write_units,
            "events_replayed": statistics.median(replayed),
        }

    def stored_bytes(self, app: Any, order_id: uuid.UUID) -> dict[str, Any]:
        """Sizes of the Order's event and snapshot items, by DynamoDB's rules."""
        with measure(app) as events_meter:
            events = app.recorder.select_events(order_id)
        with measure(app) as snapshots_meter:
            snapshots = (
                app.snapshots.recorder.select_events(order_id)
                if (app.snapshots)
                else []
            )
        return {
            "events": len(events),
            "event_bytes": events_meter.bytes_read,
            "snapshots": len(snapshots),
            "snapshot_bytes": snapshots_meter.bytes_read,
            "latest_snapshot_bytes": len(snapshots[-1].state) if snapshots else 0,
            "stored_bytes": events_meter.bytes_read + snapshots_meter.bytes_read,
        }

    def snapshot_count(self, app: Any, order_id: uuid.UUID) -> int:
        if app.snapshots is None:
            return 0
        return len(app.snapshots.recorder.select_events(order_id))

    def steady_state(
        self, app: Any, order_id: uuid.UUID, padding: int, commands: int
    ) -> dict[str, Any]:
        """Run single-event commands; return what each cost, on average."""
        snapshots_before = self.snapshot_count(app, order_id)
        load_times: list[float] = []
        command_times: list[float] = []
        with measure(app) as meter:
            for index in range(commands):
                began = time.perf_counter()
                order = app.get_order(order_id)
                loaded = time.perf_counter()
                order.add_item(product_id(index, padding), 1, PRICE)
                app.save(order)
                ended = time.perf_counter()
                load_times.append((loaded - began) * 1000)
                command_times.append((ended - began) * 1000)
        snapshots = self.snapshot_count(app, order_id) - snapshots_before
        return {
            "commands": commands,
            "snapshots_taken": snapshots,
            "command_median_ms": round(statistics.median(command_times), 2),
            "load_median_ms": round(statistics.median(load_times), 2),
            "load_max_ms": round(max(load_times), 2),
            "round_trips_per_command": meter.round_trips / commands,
            "write_units_per_command": meter.write_units / commands,
            "estimated_write_units_per_command": meter.estimated_write_units / commands,
            "estimated_read_units_per_command": meter.estimated_read_units / commands,
            "bytes_written_per_command": meter.bytes_written / commands,
        }

    def warm_up(self) -> None:
        """Warm connections, tables and code paths so the first case is not cold."""
        for app in self.apps.values():
            for padding in SIZES.values():
                seeded = self.seed(app, 20, padding, 5)
                for _ in range(5):
                    app.get_order(seeded.order_id)

    def run(self, lengths: tuple[int, ...]) -> dict[str, Any]:
        self.warm_up()
        loads: list[dict[str, Any]] = []
        commands: list[dict[str, Any]] = []
        for size, padding in SIZES.items():
            event_bytes = self.event_bytes[size]
            for name, strategy in strategies().items():
                app = self.apps[name]
                cycle = cycle_length(strategy, event_bytes)
                for length in lengths:
                    began = time.perf_counter()
                    seeded = self.seed(app, length, padding, min(length - 1, cycle + 1))
                    seeding_s = time.perf_counter() - began
                    row = {
                        "size": size,
                        "strategy": name,
                        "length": length,
                        "seeding": {
                            "batch_saves": seeded.batch_saves,
                            "single_event_commands": seeded.commands,
                            "seconds": round(seeding_s, 1),
                        },
                        **self.time_loads(app, seeded.order_id),
                        **self.stored_bytes(app, seeded.order_id),
                    }
                    loads.append(row)
                    print_load(row)
                    if length == STEADY_STATE_LENGTH:
                        steady = self.steady_state(
                            app,
                            seeded.order_id,
                            padding,
                            2 * cycle if cycle else NEVER_COMMANDS,
                        )
                        commands.append({"size": size, "strategy": name, **steady})
        add_extra_over_never(commands)
        return {
            "event_state_bytes": self.event_bytes,
            "loads": loads,
            "commands": commands,
        }


def add_extra_over_never(commands: list[dict[str, Any]]) -> None:
    never = {c["size"]: c for c in commands if c["strategy"] == "Never"}
    for row in commands:
        base = never[row["size"]]
        for key in ("write_units_per_command", "estimated_write_units_per_command"):
            row[f"extra_{key}"] = round(row[key] - base[key], 3)


def target(results: dict[str, Any], lengths: tuple[int, ...]) -> list[dict[str, Any]]:
    """The issue's target, per size and strategy: 10,000 events in <= 2 trips, <= 2x."""
    longest = max(lengths)
    verdicts = []
    for size in SIZES:
        for name in strategies():
            rows = {
                r["length"]: r
                for r in results["loads"]
                if r["size"] == size and r["strategy"] == name
            }
            short, long = rows[10], rows[longest]
            ratio = long["load_median_ms"] / short["load_median_ms"]
            verdicts.append(
                {
                    "size": size,
                    "strategy": name,
                    "length": longest,
                    "round_trips": long["round_trips_per_load"],
                    "ratio_to_10_events": round(ratio, 2),
                    "met": long["round_trips_per_load"] <= 2 and ratio <= 2,
                }
            )
    return verdicts


# Output


def print_load(row: dict[str, Any]) -> None:
    print(
        f"{row['size']:<6} {row['strategy']:<25} {row['length']:>7,} "
        f"{row['load_median_ms']:>9.2f} {row['round_trips_per_load']:>6.1f} "
        f"{row['read_units_per_load']:>7.1f} {row['events_replayed']:>8.0f} "
        f"{row['snapshots']:>5} {row['stored_bytes'] / 1024:>10,.0f} "
        f"{row['seeding']['seconds']:>6.1f}",
        flush=True,
    )


LOAD_HEADER = (
    f"{'size':<6} {'strategy':<25} {'events':>7} {'load ms':>9} {'trips':>6} "
    f"{'RCU':>7} {'replayed':>8} {'snaps':>5} {'stored KiB':>10} {'seed s':>6}"
)


def print_commands(commands: list[dict[str, Any]]) -> None:
    header = (
        f"{'size':<6} {'strategy':<25} {'cmds':>5} {'snaps':>5} {'cmd ms':>7} "
        f"{'load ms':>8} {'max ms':>7} {'trips':>6} {'WCU':>6} {'est WCU':>8} "
        f"{'+est WCU':>8}"
    )
    print(header)
    print("-" * len(header))
    for c in commands:
        print(
            f"{c['size']:<6} {c['strategy']:<25} {c['commands']:>5} "
            f"{c['snapshots_taken']:>5} {c['command_median_ms']:>7.2f} "
            f"{c['load_median_ms']:>8.2f} {c['load_max_ms']:>7.2f} "
            f"{c['round_trips_per_command']:>6.2f} "
            f"{c['write_units_per_command']:>6.2f} "
            f"{c['estimated_write_units_per_command']:>8.2f} "
            f"{c['extra_estimated_write_units_per_command']:>8.2f}"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - only when plotting

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (latency, trips) = plt.subplots(1, 2, figsize=(12, 4.8))
    for index, name in enumerate(strategies()):
        color = f"C{index}"
        for size, style in (("small", "-"), ("large", "--")):
            rows = [
                r
                for r in results["loads"]
                if r["strategy"] == name and r["size"] == size
            ]
            lengths = [r["length"] for r in rows]
            label = f"{name}, {size}"
            latency.plot(
                lengths,
                [r["load_median_ms"] for r in rows],
                style,
                marker="o",
                color=color,
                label=label,
            )
            trips.plot(
                lengths,
                [r["round_trips_per_load"] for r in rows],
                style,
                marker="o",
                color=color,
                label=label,
            )
    latency.set(
        xscale="log",
        yscale="log",
        xlabel="events in the Order's history",
        ylabel="median load time (ms)",
        title="Load latency",
    )
    trips.set(
        xscale="log",
        xlabel="events in the Order's history",
        ylabel="round trips per load",
        title="Round trips per load",
    )
    for axes in (latency, trips):
        axes.grid(visible=True, which="both", alpha=0.3)
    trips.legend(fontsize="small")
    figure.suptitle(
        "ledger snapshot strategies on DynamoDB Local (small ~200 B: solid; "
        "large ~4 KB: dashed)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="stop at 1,000 events (not 10,000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=20, help="loads timed per case, at most (20)"
    )
    parser.add_argument(
        "--endpoint", help="DynamoDB endpoint (default: start DynamoDB Local)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help="directory for snapshots.json and snapshots.png (benchmarks/results)",
    )
    args = parser.parse_args()
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    began = time.perf_counter()
    print(LOAD_HEADER)
    print("-" * len(LOAD_HEADER))
    if args.endpoint:
        results = Bench(args.endpoint, args.repeat).run(lengths)
    else:
        with DynamoDBLocal() as server:
            results = Bench(server.endpoint_url, args.repeat).run(lengths)
    print(
        "\nload ms: median of repeated loads (after one untimed load); trips, "
        "RCU (reported by DynamoDB): per load; replayed: events read past the "
        "latest snapshot; snaps: snapshots stored; stored: event + snapshot "
        "items (notification copies not counted); seed s: time to build it.\n"
    )
    print_commands(results["commands"])
    print(
        "\nSteady state: single-event commands on the 1,000-event Order, two "
        "snapshot cycles (Never: 10). WCU: reported by DynamoDB Local (which "
        "under-reports transactions); est WCU: by AWS's rules; +est WCU: above "
        "Never's.\n"
    )
    verdicts = target(results, lengths)
    for v in verdicts:
        print(
            f"target {v['size']:<6} {v['strategy']:<25} {v['length']:,} events: "
            f"{v['round_trips']:.1f} trips, {v['ratio_to_10_events']:.2f}x the "
            f"10-event load: {'met' if v['met'] else 'NOT met'}"
        )
    results = {
        "lengths": list(lengths),
        "strategies": {name: repr(s) for name, s in strategies().items()},
        "seeding": (
            f"saves of up to {EVENTS_PER_SAVE} events through the application, "
            "then one snapshot cycle (+1) of single-event commands"
        ),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "seconds": round(time.perf_counter() - began),
        "target": verdicts,
        **results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    json_path = args.output / "snapshots.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    png_path = args.output / "snapshots.png"
    plot(results, png_path)
    print(f"\nwrote {json_path} and {png_path} in {results['seconds']} s")


if __name__ == "__main__":
    main()
