"""Benchmark ledger's own code against the maintained libraries that could replace it.

1. Import time of the deployed projector's Lambda handler module
   (``projections.orders``), then of each CloudWatch embedded-metric-format
   library imported after it (Powertools Metrics, aws-embedded-metrics): what
   each would add to a cold start. ``python -X importtime`` in a fresh
   process, best of ``--imports`` runs. A library that is not installed is
   reported as such.
2. Attribute maps: building and reading a four-attribute item (an event's
   key, version, topic and state) by hand against boto3's ``TypeSerializer``
   and ``TypeDeserializer`` (through :mod:`ledger.dynamodb.attributes`), in
   microseconds per item, best of 5.

    python benchmarks/bench_libraries.py [--imports 7]

No DynamoDB: nothing here makes a request. Wall times on a shared 2-core
machine vary from run to run (the load average is printed and kept): compare
rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import timeit
import uuid
from pathlib import Path
from typing import Any

from ledger.dynamodb.attributes import from_attributes, to_attributes

ROOT = Path(__file__).resolve().parent.parent
HANDLER = "projections.orders"
EMF_LIBRARIES = {
    "aws-lambda-powertools": "aws_lambda_powertools.metrics",
    "aws-embedded-metrics": "aws_embedded_metrics.logger.metrics_logger_factory",
}


def import_us(modules: list[str], runs: int) -> int | None:
    """Return the best cumulative import time of the last module, in µs."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    last = modules[-1]
    best = None
    for _ in range(runs):
        done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-X", "importtime", "-c", f"import {', '.join(modules)}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            return None
        for line in done.stderr.splitlines():
            found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
            if found and found.group(2) == last:
                taken = int(found.group(1))
                best = taken if best is None else min(best, taken)
    return best


def attribute_map_costs() -> dict[str, float]:
    """Return µs per item of building and reading an event item both ways."""
    item = {
        "aggregate_id": {"S": str(uuid.uuid4())},
        "version": {"N": "12"},
        "topic": {"S": "aggregates.order:Order.ItemAdded"},
        "state": {"B": b"x" * 300},
    }
    values = {"aggregate_id": str(uuid.uuid4()), "version": 12, "topic": "t"}

    def read_by_hand() -> Any:
        return (
            item["aggregate_id"]["S"],
            int(item["version"]["N"]),
            item["topic"]["S"],
            item["state"]["B"],
        )

    def read_by_deserializer() -> Any:
        read = from_attributes(item)
        return read["aggregate_id"], int(read["version"]), read["topic"], read["state"]

    def write_by_hand() -> Any:
        return {
            "aggregate_id": {"S": values["aggregate_id"]},
            "version": {"N": str(values["version"])},
            "topic": {"S": values["topic"]},
            "state": {"B": b"x"},
        }

    def write_by_serializer() -> Any:
        return to_attributes({**values, "state": b"x"})

    number = 100_000
    return {
        name: round(min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6, 2)
        for name, run in {
            "read by hand": read_by_hand,
            "read by TypeDeserializer": read_by_deserializer,
            "write by hand": write_by_hand,
            "write by TypeSerializer": write_by_serializer,
        }.items()
    }


def main() -> None:
    """Measure, print a table, write ``results/libraries.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=7, help="runs per import")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()

    handler_us = import_us([HANDLER], args.imports)
    imports: dict[str, int | None] = {HANDLER: handler_us}
    print(
        f"import {HANDLER}: {(handler_us or 0) / 1000:.0f} ms (best of {args.imports})"
    )
    for name, module in EMF_LIBRARIES.items():
        added = import_us([HANDLER, module], args.imports)
        imports[name] = added
        shown = "not installed" if added is None else f"+{added / 1000:.0f} ms"
        print(f"  then {module} ({name}): {shown}")

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"(load average {load}: compare rows of this run only)")
    costs = attribute_map_costs()
    print("\nattribute map of a 4-attribute event item, µs per item (best of 5):")
    for name, us in costs.items():
        print(f"  {name:<26} {us:6.2f}")

    results = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "load_average_1_5_15_min": [round(x, 1) for x in os.getloadavg()],
        "import_us": imports,
        "attribute_map_us": costs,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "libraries.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
